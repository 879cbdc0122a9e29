//! The app's own control paths, on its main port under `/_weft/` (never
//! counted as traffic, never delayed, never failed):
//!
//! - `GET /_weft/fault`: the current faults as JSON;
//! - `POST /_weft/fault?latency=200ms&slow_share=0.02` or with a JSON body
//!   `{"latency": "200ms", "slow_share": 0.02}`: changes the fields given
//!   (the others keep their values) for every request that arrives after the
//!   answer; `for=5s` (`"for": "5s"`) puts the previous faults back after
//!   that long, unless another change came first;
//! - `DELETE /_weft/fault`: back to the faults the app started with;
//! - `GET /_weft/stats`: the counters (`requests`, `errors`, `biz_errors`,
//!   `slow`) as JSON.
//!
//! Fields: `latency`, `jitter`, `slow_latency` (durations: `"10ms"`, or a
//! number of milliseconds in JSON), `error_rate`, `slow_share`,
//! `biz_error_share` (0.0 to 1.0), `biz_error_header` (`NAME:VALUE`). A bad
//! field is a `400` naming it, and changes nothing.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::body::AppBody;
use super::fault::{BizErrorHeader, Faults};
use super::service::Shared;

/// Every control path starts with this; the app never routes it as traffic.
pub(super) const PREFIX: &str = "/_weft/";
const FAULT_PATH: &str = "/_weft/fault";
const STATS_PATH: &str = "/_weft/stats";
/// A fault change is a few fields; anything longer is a mistake.
const MAX_BODY: usize = 64 * 1024;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Answers a request for a path under [`PREFIX`].
pub(super) async fn answer(shared: Arc<Shared>, req: Request<Incoming>) -> Response<AppBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (path.as_str(), method) {
        (FAULT_PATH, Method::GET | Method::HEAD) => json_response(&shared, faults_json(&shared)),
        (FAULT_PATH, Method::POST | Method::PUT) => match change(&shared, req).await {
            Ok(faults) => json_response(&shared, faults),
            Err(why) => text_response(&shared, StatusCode::BAD_REQUEST, why),
        },
        (FAULT_PATH, Method::DELETE) => {
            let initial = shared.faults().initial();
            shared.faults().set((*initial).clone());
            tracing::info!(app = shared.name(), faults = ?initial, "faults reset");
            json_response(&shared, faults_json(&shared))
        }
        (FAULT_PATH, _) => {
            let mut response = text_response(
                &shared,
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET, POST or DELETE".into(),
            );
            response.headers_mut().insert(
                ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE"),
            );
            response
        }
        (STATS_PATH, _) => {
            let s = shared.stats();
            json_response(
                &shared,
                json!({
                    "requests": s.requests,
                    "errors": s.errors,
                    "biz_errors": s.biz_errors,
                    "slow": s.slow,
                    "last_deadline_ms": s.last_deadline_ms,
                }),
            )
        }
        _ => text_response(
            &shared,
            StatusCode::NOT_FOUND,
            format!("{path}: not a control path; the app has {FAULT_PATH} and {STATS_PATH}"),
        ),
    }
}

/// Applies a `POST`: query parameters first, then the JSON body.
async fn change(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Value, String> {
    let mut update = FaultUpdate::default();
    if let Some(query) = req.uri().query() {
        update.read_query(query)?;
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    if !body.iter().all(u8::is_ascii_whitespace) {
        update.read_json(&body)?;
    }
    let cell = shared.faults();
    let before = cell.current();
    let after = update.apply(&before)?;
    let generation = cell.set(after.clone());
    tracing::info!(app = shared.name(), faults = ?after, revert_after = ?update.revert_after, "faults changed");
    if let Some(after) = update.revert_after {
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if shared
                .faults()
                .set_if_unchanged(generation, (*before).clone())
            {
                tracing::info!(app = shared.name(), faults = ?before, "faults reverted");
            }
        });
    }
    Ok(faults_json(shared))
}

fn json_response(shared: &Shared, value: Value) -> Response<AppBody> {
    let mut body = serde_json::to_vec(&value).unwrap_or_default();
    body.push(b'\n');
    let mut response = shared.response(StatusCode::OK, AppBody::full(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_JSON);
    response
}

fn text_response(shared: &Shared, status: StatusCode, text: String) -> Response<AppBody> {
    shared.response(status, AppBody::full(text + "\n"))
}

fn faults_json(shared: &Shared) -> Value {
    to_json(&shared.faults().current())
}

/// The faults in the shape a `POST` takes, so a `GET`'s answer can be sent back.
fn to_json(f: &Faults) -> Value {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    json!({
        "latency": ms(f.latency),
        "jitter": ms(f.jitter),
        "error_rate": f.error_rate,
        "slow_share": f.slow_share,
        "slow_latency": ms(f.slow_latency),
        "biz_error_share": f.biz_error_share,
        "biz_error_header": f.biz_error_header.to_string(),
    })
}

/// A field's value as it arrived: query parameters are text, JSON may
/// give numbers.
enum Raw<'a> {
    Text(Cow<'a, str>),
    Number(f64),
}

/// The fields one change sets; `None` keeps the current value.
#[derive(Debug, Default, PartialEq)]
pub(super) struct FaultUpdate {
    latency: Option<Duration>,
    jitter: Option<Duration>,
    error_rate: Option<f64>,
    slow_share: Option<f64>,
    slow_latency: Option<Duration>,
    biz_error_share: Option<f64>,
    biz_error_header: Option<BizErrorHeader>,
    /// `for`: how long the change lasts.
    revert_after: Option<Duration>,
}

impl FaultUpdate {
    /// `a=1&b=2`, percent-decoded (`+` is a space).
    pub(super) fn read_query(&mut self, query: &str) -> Result<(), String> {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            let value = percent_decode(value)?;
            self.set(&key, Raw::Text(value))?;
        }
        Ok(())
    }

    /// A JSON object of fields.
    pub(super) fn read_json(&mut self, body: &[u8]) -> Result<(), String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("the body must be a JSON object of fields".into());
        };
        for (key, value) in &fields {
            let raw = match value {
                Value::String(s) => Raw::Text(Cow::Borrowed(s)),
                Value::Number(n) => Raw::Number(n.as_f64().unwrap_or(f64::NAN)),
                other => return Err(format!("{key}: {other} is neither a string nor a number")),
            };
            self.set(key, raw)?;
        }
        Ok(())
    }

    fn set(&mut self, key: &str, raw: Raw<'_>) -> Result<(), String> {
        let named = |e: String| format!("{key}: {e}");
        match key {
            "latency" => self.latency = Some(duration(raw).map_err(named)?),
            "jitter" => self.jitter = Some(duration(raw).map_err(named)?),
            "slow_latency" => self.slow_latency = Some(duration(raw).map_err(named)?),
            "for" => self.revert_after = Some(duration(raw).map_err(named)?),
            "error_rate" => self.error_rate = Some(share(raw).map_err(named)?),
            "slow_share" => self.slow_share = Some(share(raw).map_err(named)?),
            "biz_error_share" => self.biz_error_share = Some(share(raw).map_err(named)?),
            "biz_error_header" => {
                let Raw::Text(text) = raw else {
                    return Err(named("want NAME:VALUE, e.g. x-biz-code:5003".into()));
                };
                self.biz_error_header = Some(text.parse().map_err(|e| named(format!("{e}")))?);
            }
            _ => {
                return Err(format!(
                    "{key:?} is not a fault field; use latency, jitter, error_rate, slow_share, \
                     slow_latency, biz_error_share, biz_error_header or for"
                ));
            }
        }
        Ok(())
    }

    /// `faults` with this change applied, or why not.
    pub(super) fn apply(&self, faults: &Faults) -> Result<Faults, String> {
        let f = Faults {
            latency: self.latency.unwrap_or(faults.latency),
            jitter: self.jitter.unwrap_or(faults.jitter),
            error_rate: self.error_rate.unwrap_or(faults.error_rate),
            slow_share: self.slow_share.unwrap_or(faults.slow_share),
            slow_latency: self.slow_latency.unwrap_or(faults.slow_latency),
            biz_error_share: self.biz_error_share.unwrap_or(faults.biz_error_share),
            biz_error_header: self
                .biz_error_header
                .clone()
                .unwrap_or_else(|| faults.biz_error_header.clone()),
        };
        f.check()?;
        Ok(f)
    }
}

/// `"200ms"`, `"1s"`, or a number of milliseconds.
fn duration(raw: Raw<'_>) -> Result<Duration, String> {
    match raw {
        Raw::Text(text) => weft_model::parse_duration(&text).map_err(|e| e.to_string()),
        Raw::Number(ms) if ms.is_finite() && (0.0..1e9).contains(&ms) => {
            Ok(Duration::from_secs_f64(ms / 1000.0))
        }
        Raw::Number(ms) => Err(format!("{ms} is not a number of milliseconds")),
    }
}

/// A share within `0.0..=1.0`.
fn share(raw: Raw<'_>) -> Result<f64, String> {
    let value = match raw {
        Raw::Number(n) => n,
        Raw::Text(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))?,
    };
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not a share between 0.0 and 1.0"))
    }
}

/// `%XX` and `+` decoded; the result must be UTF-8.
fn percent_decode(s: &str) -> Result<Cow<'_, str>, String> {
    if !s.contains(['%', '+']) {
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("{s:?}: bad percent-encoding"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| format!("{s:?}: not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Faults {
        Faults {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            error_rate: 0.0,
            slow_share: 0.0,
            slow_latency: Duration::ZERO,
            biz_error_share: 0.0,
            biz_error_header: BizErrorHeader::default(),
        }
    }

    fn from_query(q: &str) -> Result<Faults, String> {
        let mut u = FaultUpdate::default();
        u.read_query(q)?;
        u.apply(&base())
    }

    fn from_json(body: &str) -> Result<Faults, String> {
        let mut u = FaultUpdate::default();
        u.read_json(body.as_bytes())?;
        u.apply(&base())
    }

    #[test]
    fn a_query_sets_the_fields_it_names_and_keeps_the_rest() {
        let f =
            from_query("slow_share=0.02&slow_latency=100ms&biz_error_header=x-err%3A42").unwrap();
        assert_eq!(f.slow_share, 0.02);
        assert_eq!(f.slow_latency, Duration::from_millis(100));
        assert_eq!(f.biz_error_header.to_string(), "x-err:42");
        assert_eq!(f.latency, Duration::from_millis(1), "kept");
    }

    #[test]
    fn json_takes_strings_or_numbers() {
        let f = from_json(
            r#"{"latency": "200ms", "jitter": 2, "error_rate": "0.1",
                "biz_error_share": 0.5, "biz_error_header": "x-biz-code:5100"}"#,
        )
        .unwrap();
        assert_eq!(f.latency, Duration::from_millis(200));
        assert_eq!(f.jitter, Duration::from_millis(2));
        assert_eq!(f.error_rate, 0.1);
        assert_eq!(f.biz_error_share, 0.5);
        assert_eq!(f.biz_error_header.value, "5100");
    }

    #[test]
    fn what_get_shows_can_be_posted_back() {
        let mut shown = base();
        shown.slow_share = 0.25;
        shown.slow_latency = Duration::from_millis(30);
        let body = to_json(&shown).to_string();
        assert_eq!(from_json(&body).unwrap(), shown);
    }

    #[test]
    fn for_is_the_revert_delay() {
        let mut u = FaultUpdate::default();
        u.read_query("latency=200ms&for=3s").unwrap();
        assert_eq!(u.revert_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn errors_name_the_field() {
        for (query, field) in [
            ("slow_share=1.5", "slow_share: 1.5 is not a share"),
            ("biz_error_share=-1", "biz_error_share: -1"),
            ("error_rate=lots", "error_rate: \"lots\" is not a number"),
            ("latency=10", "latency: invalid duration"),
            (
                "biz_error_header=x-biz-code",
                "biz_error_header: \"x-biz-code\"",
            ),
            ("slowshare=0.1", "\"slowshare\" is not a fault field"),
            ("latency=%zz", "bad percent-encoding"),
        ] {
            let err = from_query(query).unwrap_err();
            assert!(err.contains(field), "{query}: {err}");
        }
        for (body, field) in [
            (r#"{"slow_share": 2}"#, "slow_share: 2 is not a share"),
            (r#"{"latency": true}"#, "latency: true is neither"),
            (
                r#"{"latency": -5}"#,
                "latency: -5 is not a number of milliseconds",
            ),
            (
                r#"{"biz_error_header": 5003}"#,
                "biz_error_header: want NAME:VALUE",
            ),
            ("[1]", "a JSON object"),
            ("{", "not JSON"),
        ] {
            let err = from_json(body).unwrap_err();
            assert!(err.contains(field), "{body}: {err}");
        }
    }
}
