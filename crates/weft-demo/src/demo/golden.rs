//! The control plane's traffic view as a terminal shows it: golden metrics
//! (requests, RPS, success rate, p50/p90/p99) per Service and per caller
//! -> callee edge, read from `weft control`'s `GET /traffic` (SMI
//! TrafficMetrics JSON). `weft top` redraws it every interval and `weft
//! demo` shows it as a section of each refresh, so both read the same.
//!
//! Rendering is a pure function of a [`TrafficFrame`]; [`TrafficFrame::fetch`]
//! never fails: a control plane that is down or answers something else
//! gives a frame that says so, and the next refresh tries again. Fields of
//! the JSON this does not know are ignored; a top-level `source` (where
//! the control plane took the numbers from) shows in the status line.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// One fetch may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest answer body shown in an error.
const MAX_ERROR_BODY: usize = 120;

/// Why a refresh has no numbers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    /// No connection, or no answer in time.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// It answered, but not with a traffic view.
    #[error("answered {0}")]
    Answer(String),
}

/// One Service (all its callers) or one edge over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenRow {
    /// `name.namespace` of the callee.
    pub service: String,
    /// `name.namespace` of the caller, for an edge.
    pub caller: Option<String>,
    /// Successes plus failures in the window.
    pub requests: Option<f64>,
    pub rps: Option<f64>,
    /// 0..=1.
    pub success_rate: Option<f64>,
    /// Latency quantiles in milliseconds.
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A `/traffic` answer as tables: services and edges, busiest first.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficSnapshot {
    /// As the control plane names it (`30s`).
    pub window: String,
    pub services: Vec<GoldenRow>,
    pub edges: Vec<GoldenRow>,
    /// The answer's top-level `source`, in a few words.
    pub source: Option<String>,
    /// Services and edges without a request in the window, not listed
    /// (proxies may export zero counters for every Service they know).
    pub idle: usize,
}

impl TrafficSnapshot {
    /// Reads an SMI `TrafficMetricsList`; unknown fields are ignored.
    pub fn from_json(v: &Value) -> Result<TrafficSnapshot, FetchError> {
        let items = v["items"].as_array().ok_or_else(|| {
            FetchError::Answer("JSON without an \"items\" list: not a traffic view".to_owned())
        })?;
        let mut services = Vec::new();
        let mut edges = Vec::new();
        let mut idle = 0;
        for item in items {
            let row = row(item);
            if row.requests.is_some_and(|n| n <= 0.0) {
                idle += 1;
            } else if row.caller.is_some() {
                edges.push(row);
            } else {
                services.push(row);
            }
        }
        let busiest = |a: &GoldenRow, b: &GoldenRow| {
            let rps = |r: &GoldenRow| r.rps.unwrap_or(0.0);
            rps(b)
                .total_cmp(&rps(a))
                .then_with(|| a.service.cmp(&b.service))
                .then_with(|| a.caller.cmp(&b.caller))
        };
        services.sort_by(busiest);
        edges.sort_by(busiest);
        Ok(TrafficSnapshot {
            window: v["window"].as_str().unwrap_or("?").to_owned(),
            services,
            edges,
            source: describe_source(&v["source"]),
            idle,
        })
    }
}

fn row(item: &Value) -> GoldenRow {
    let metric = |name: &str| {
        item["metrics"]
            .as_array()
            .and_then(|m| m.iter().find(|x| x["name"] == name))
            .and_then(|x| x["value"].as_f64())
    };
    let requests = match (metric("success_count"), metric("failure_count")) {
        (None, None) => None,
        (s, f) => Some(s.unwrap_or(0.0) + f.unwrap_or(0.0)),
    };
    let edge = &item["edge"]["resource"];
    GoldenRow {
        service: qualified(&item["resource"]),
        caller: edge.is_object().then(|| qualified(edge)),
        requests,
        rps: metric("requests_per_second"),
        success_rate: metric("success_rate"),
        p50_ms: metric("p50_response_latency"),
        p90_ms: metric("p90_response_latency"),
        p99_ms: metric("p99_response_latency"),
    }
}

fn qualified(resource: &Value) -> String {
    format!(
        "{}.{}",
        resource["name"].as_str().unwrap_or("?"),
        resource["namespace"].as_str().unwrap_or("default")
    )
}

/// Where the control plane took the numbers from, and why not from the
/// configured Prometheus when they did not (`None`: a control plane older
/// than the field).
fn describe_source(source: &Value) -> Option<String> {
    let prometheus = source["prometheus"].as_str().unwrap_or("?");
    match (source["kind"].as_str(), source["fallback"].as_str()) {
        (Some("prometheus"), _) => Some(format!("Prometheus {prometheus}")),
        (Some("proxies"), Some(why)) => {
            Some(format!("proxies ({why}; fell back to direct scraping)"))
        }
        (Some("proxies"), None) => Some("proxies (direct scraping)".to_owned()),
        _ => None,
    }
}

/// One refresh: what was asked of which control plane, when, and what it
/// answered.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficFrame {
    /// The control plane's admin address.
    pub control: SocketAddr,
    pub window: Duration,
    pub at: SystemTime,
    pub snapshot: Result<TrafficSnapshot, FetchError>,
}

impl TrafficFrame {
    /// `GET /traffic?window=W[&service=S]` from `control` now.
    pub async fn fetch(control: SocketAddr, window: Duration, service: Option<&str>) -> Self {
        let snapshot = fetch(control, window, service).await;
        TrafficFrame {
            control,
            window,
            at: SystemTime::now(),
            snapshot,
        }
    }

    /// The status line (headed `title`), then the services table and the
    /// edges table; no blank lines, so that a blank line can separate
    /// frames.
    pub fn render(&self, title: &str) -> String {
        let mut out = String::new();
        let at = clock(self.at);
        match &self.snapshot {
            Ok(s) => {
                let _ = write!(
                    out,
                    "{title}  control plane {}  window {}  at {at}  {} services, {} edges",
                    self.control,
                    s.window,
                    s.services.len(),
                    s.edges.len()
                );
                if s.idle > 0 {
                    let _ = write!(out, " ({} idle not shown)", s.idle);
                }
                if let Some(source) = &s.source {
                    let _ = write!(out, "  source: {source}");
                }
                out.push('\n');
                render_tables(&mut out, s);
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{title}  control plane {} {e} (retrying)  at {at}",
                    self.control
                );
            }
        }
        out
    }
}

impl TrafficSnapshot {
    /// The services and edges tables, then where the numbers came from
    /// (`weft stat`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        render_tables(&mut out, self);
        let _ = writeln!(out, "window {}", self.window);
        if let Some(source) = &self.source {
            let _ = writeln!(out, "source: {source}");
        }
        out
    }
}

fn render_tables(out: &mut String, s: &TrafficSnapshot) {
    let edge_name =
        |r: &GoldenRow| format!("{} -> {}", r.caller.as_deref().unwrap_or("?"), r.service);
    let width = s
        .services
        .iter()
        .map(|r| r.service.len())
        .chain(s.edges.iter().map(|r| edge_name(r).len()))
        .chain([24])
        .max()
        .unwrap_or(24);
    let header = |out: &mut String, what: &str| {
        let _ = writeln!(
            out,
            "{what:<width$} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
            "REQUESTS", "RPS", "SUCCESS", "P50 ms", "P90 ms", "P99 ms"
        );
    };
    let line = |out: &mut String, name: &str, r: &GoldenRow| {
        let num =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        let _ = writeln!(
            out,
            "{name:<width$} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
            num(r.requests, 0),
            num(r.rps, 2),
            r.success_rate
                .map_or("-".to_owned(), |v| format!("{:.2}%", v * 100.0)),
            num(r.p50_ms, 2),
            num(r.p90_ms, 2),
            num(r.p99_ms, 2),
        );
    };
    header(out, "SERVICE");
    for r in &s.services {
        line(out, &r.service, r);
    }
    if s.services.is_empty() {
        out.push_str("  (no traffic in the window: are weft proxies connected, with admin addresses announced?)\n");
    }
    header(out, "EDGE (CALLER -> CALLEE)");
    for r in &s.edges {
        line(out, &edge_name(r), r);
    }
    if s.edges.is_empty() {
        out.push_str("  (none)\n");
    }
}

/// `HH:MM:SSZ` (UTC).
fn clock(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!(
        "{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `GET /traffic` from the control plane's admin port, as tables.
async fn fetch(
    control: SocketAddr,
    window: Duration,
    service: Option<&str>,
) -> Result<TrafficSnapshot, FetchError> {
    TrafficSnapshot::from_json(&fetch_json(control, window, service).await?)
}

/// `GET /traffic` from the control plane's admin port: the SMI JSON.
pub async fn fetch_json(
    control: SocketAddr,
    window: Duration,
    service: Option<&str>,
) -> Result<Value, FetchError> {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut uri = format!("http://{control}/traffic?window={}s", window.as_secs());
    if let Some(s) = service {
        uri.push_str("&service=");
        uri.push_str(&query_escape(s));
    }
    let uri: hyper::Uri = uri
        .parse()
        .map_err(|e| FetchError::Answer(format!("nothing: bad request URI {uri}: {e}")))?;
    let get = async {
        let resp = client
            .get(uri)
            .await
            .map_err(|e| FetchError::Unreachable(innermost(&e)))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| FetchError::Unreachable(format!("answer cut short: {}", innermost(&e))))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            return Err(FetchError::Answer(format!(
                "{status}: {}",
                shorten(text.trim())
            )));
        }
        serde_json::from_str::<Value>(&text).map_err(|e| {
            FetchError::Answer(format!(
                "something that is not JSON ({e}): {}",
                shorten(text.trim())
            ))
        })
    };
    tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .map_err(|_| FetchError::Unreachable(format!("no answer within {FETCH_TIMEOUT:?}")))?
}

/// The deepest cause (`Connection refused (os error 111)`), which says more
/// than the client's own `client error (Connect)`.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn shorten(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    if first.len() <= MAX_ERROR_BODY && !text.contains('\n') {
        return first.to_owned();
    }
    let mut end = MAX_ERROR_BODY.min(first.len());
    while !first.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &first[..end])
}

/// Percent-escapes everything but unreserved characters.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(callee: &str, caller: Option<&str>, ok: f64, failed: f64, rps: f64) -> Value {
        let resource = |name: &str| serde_json::json!({"kind": "Service", "name": name, "namespace": "default"});
        serde_json::json!({
            "kind": "TrafficMetrics",
            "resource": resource(callee),
            "edge": caller.map(|c| serde_json::json!({"direction": "from", "resource": resource(c)})),
            "newField": [1, 2],
            "metrics": [
                {"name": "p99_response_latency", "unit": "ms", "value": 9.5},
                {"name": "p90_response_latency", "unit": "ms", "value": 4.25},
                {"name": "p50_response_latency", "unit": "ms", "value": null},
                {"name": "success_count", "value": ok},
                {"name": "failure_count", "value": failed},
                {"name": "requests_per_second", "value": rps},
                {"name": "success_rate", "value": ok / (ok + failed)},
            ],
        })
    }

    fn frame(snapshot: Result<TrafficSnapshot, FetchError>) -> TrafficFrame {
        TrafficFrame {
            control: "127.0.0.1:15011".parse().unwrap(),
            window: Duration::from_secs(60),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 3_723),
            snapshot,
        }
    }

    #[test]
    fn services_and_edges_are_tabled_busiest_first() {
        let json = serde_json::json!({
            "kind": "TrafficMetricsList",
            "window": "60s",
            "source": {"kind": "prometheus", "prometheus": "http://127.0.0.1:9090"},
            "items": [
                item("frontend", None, 0.0, 0.0, 0.0),
                item("catalog", None, 55.0, 10.0, 65.0 / 60.0),
                item("pricing", None, 120.0, 0.0, 2.0),
                item("catalog", Some("checkout"), 5.0, 0.0, 5.0 / 60.0),
                item("catalog", Some("frontend"), 50.0, 10.0, 1.0),
            ],
        });
        let s = TrafficSnapshot::from_json(&json).unwrap();
        let text = frame(Ok(s)).render("weft top");
        let expected = "\
weft top  control plane 127.0.0.1:15011  window 60s  at 01:02:03Z  2 services, 2 edges (1 idle not shown)  source: Prometheus http://127.0.0.1:9090
SERVICE                              REQUESTS       RPS  SUCCESS   P50 ms   P90 ms   P99 ms
pricing.default                           120      2.00  100.00%        -     4.25     9.50
catalog.default                            65      1.08   84.62%        -     4.25     9.50
EDGE (CALLER -> CALLEE)              REQUESTS       RPS  SUCCESS   P50 ms   P90 ms   P99 ms
frontend.default -> catalog.default        60      1.00   83.33%        -     4.25     9.50
checkout.default -> catalog.default         5      0.08  100.00%        -     4.25     9.50
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn an_empty_view_and_errors_say_what_is_missing() {
        let empty = serde_json::json!({"window": "30s", "items": []});
        let text = frame(TrafficSnapshot::from_json(&empty)).render("weft top");
        assert!(text.contains("0 services, 0 edges"), "{text}");
        assert!(text.contains("(no traffic in the window"), "{text}");
        assert!(!text.contains("source:"), "{text}");

        let garbage = TrafficSnapshot::from_json(&serde_json::json!({"hello": 1}));
        let text = frame(garbage).render("weft top");
        assert_eq!(
            text,
            "weft top  control plane 127.0.0.1:15011 answered JSON without an \"items\" list: not a traffic view (retrying)  at 01:02:03Z\n"
        );
        let down = frame(Err(FetchError::Unreachable(
            "Connection refused (os error 111)".into(),
        )));
        assert!(
            down.render("t").contains(
                "control plane 127.0.0.1:15011 unreachable: Connection refused (os error 111) (retrying)"
            ),
            "{}",
            down.render("t")
        );
        assert_eq!(query_escape("a b&c.d"), "a%20b%26c.d");
        assert_eq!(shorten("line\nmore"), "line...");
    }

    #[tokio::test]
    async fn a_control_plane_that_is_not_there_gives_a_frame_not_an_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = port.local_addr().unwrap();
        drop(port);
        let f = TrafficFrame::fetch(addr, Duration::from_secs(30), Some("catalog")).await;
        assert!(
            matches!(&f.snapshot, Err(FetchError::Unreachable(why)) if why.to_lowercase().contains("refused")),
            "{f:?}"
        );
    }
}
