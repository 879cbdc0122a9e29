//! The traffic view read from a Prometheus (`weft control --prometheus
//! URL`) instead of from the proxies: instant queries on its HTTP API
//! (`/api/v1/query`) over the series the proxies export, grouped per callee
//! Service and per caller -> callee edge. The caller is the `weft_service`
//! label `/sd/prometheus` puts on every proxy target, the callee the
//! `service` label of the outbound series, as in direct scraping.
//!
//! A failing Prometheus is not fatal: [`PrometheusSource`] remembers that it
//! fails (logged once when it starts and once when it recovers, counted on
//! `/metrics`) and `/traffic` answers from direct scraping meanwhile.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::traffic::{TrafficTable, qualified};

/// One query may take this long.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A Prometheus base URL: `http://HOST:PORT[/PATH]` (the path when it is
/// served under a prefix, `--web.route-prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusUrl {
    /// `HOST:PORT`.
    authority: String,
    /// Empty or `/prefix` (no trailing slash).
    path: String,
}

/// Why a `--prometheus` value is not a Prometheus base URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{url:?} is not a Prometheus base URL ({why}); give http://HOST:PORT[/PATH], e.g. http://127.0.0.1:9090"
)]
pub struct BadPrometheusUrl {
    pub url: String,
    pub why: &'static str,
}

impl FromStr for PrometheusUrl {
    type Err = BadPrometheusUrl;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |why| BadPrometheusUrl {
            url: url.to_string(),
            why,
        };
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => return Err(bad("https is not supported")),
            Some(_) => return Err(bad("the scheme must be http")),
            None => return Err(bad("no http:// scheme")),
        };
        if rest.contains(['?', '#', '@']) || rest.contains(char::is_whitespace) {
            return Err(bad("no query, fragment, user or spaces allowed"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.is_empty() || host == "[]" {
            return Err(bad("no host"));
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(bad("an IPv6 host goes in brackets"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        }
        let parsed = PrometheusUrl {
            authority: authority.to_string(),
            path: path.trim_end_matches('/').to_string(),
        };
        // Whatever hyper would refuse to request is refused now.
        parsed
            .api("vector(1)")
            .parse::<hyper::Uri>()
            .map_err(|_| bad("not a valid URL"))?;
        Ok(parsed)
    }
}

impl fmt::Display for PrometheusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

impl PrometheusUrl {
    /// The instant-query URL of `promql`.
    fn api(&self, promql: &str) -> String {
        format!(
            "http://{}{}/api/v1/query?query={}",
            self.authority,
            self.path,
            percent_encode(promql)
        )
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Why a query gave no numbers; its `Display` is what `/traffic` and the
/// log say.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("query failed ({kind}): {error}")]
    Api { kind: String, error: String },
    #[error("unparsable answer: {0}")]
    Unparsable(String),
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    /// `NaN` as Prometheus gives it (`histogram_quantile` over no requests).
    pub value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// An `/api/v1/query` answer (HTTP status and body) as its instant vector.
/// Prometheus answers a bad or failed query with a non-200 status *and* a
/// JSON `"status": "error"` body; its error is the more telling one.
pub fn parse_vector(http_status: u16, body: &[u8]) -> Result<Vec<Sample>, QueryError> {
    let excerpt = || {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        match text.char_indices().nth(200) {
            Some((i, _)) => format!("{}...", &text[..i]),
            None => text.to_string(),
        }
    };
    let json: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) if !(200..300).contains(&http_status) => {
            return Err(QueryError::Status {
                status: http_status,
                body: excerpt(),
            });
        }
        Err(e) => return Err(QueryError::Unparsable(format!("{e}: {}", excerpt()))),
    };
    match json["status"].as_str() {
        Some("success") if (200..300).contains(&http_status) => {}
        Some("error") => {
            return Err(QueryError::Api {
                kind: json["errorType"].as_str().unwrap_or("unknown").to_string(),
                error: json["error"].as_str().unwrap_or("").to_string(),
            });
        }
        _ if !(200..300).contains(&http_status) => {
            return Err(QueryError::Status {
                status: http_status,
                body: excerpt(),
            });
        }
        _ => return Err(QueryError::Unparsable(format!("no status: {}", excerpt()))),
    }
    let data = &json["data"];
    if data["resultType"] != "vector" {
        return Err(QueryError::Unparsable(format!(
            "resultType {} where a vector was expected",
            data["resultType"]
        )));
    }
    let results = data["result"]
        .as_array()
        .ok_or_else(|| QueryError::Unparsable("no result array".into()))?;
    results
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .ok_or_else(|| QueryError::Unparsable(format!("no metric in {r}")))?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = r["value"][1]
                .as_str()
                .and_then(sample_value)
                .ok_or_else(|| QueryError::Unparsable(format!("no value in {r}")))?;
            Ok(Sample { labels, value })
        })
        .collect()
}

/// A sample value as the API spells it: a decimal, `NaN`, `+Inf`, `-Inf`.
fn sample_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        s => s.parse().ok(),
    }
}

/// The queries of one window (`[30s]`), in the order [`table`] reads them.
pub fn queries(window: Duration) -> Vec<String> {
    let w = format!("{}s", window.as_secs().max(1));
    let edge = "weft_service, service";
    // Only series with a known caller, so that a Service's latency covers
    // the same requests as its counts.
    let requests = r#"weft_requests_total{direction="outbound",weft_service!=""}"#;
    let buckets = r#"weft_request_duration_seconds_bucket{direction="outbound",weft_service!=""}"#;
    let mut out = vec![
        format!("sum by ({edge}) (increase({requests}[{w}]))"),
        // Linkerd's rule: an HTTP request failed when it was answered 5xx, a
        // gRPC one (non-empty `grpc_status`; an absent label reads as empty)
        // when its status is not OK, whatever its HTTP code. The two sides
        // of `or` never hold the same series (their grpc_status differ).
        format!(
            "sum by ({edge}) (increase(weft_requests_total{{direction=\"outbound\",weft_service!=\"\",grpc_status=\"\",code=~\"5..\"}}[{w}]) \
             or increase(weft_requests_total{{direction=\"outbound\",weft_service!=\"\",grpc_status!~\"0|\"}}[{w}]))"
        ),
    ];
    for by in [edge, "service"] {
        for q in QUANTILES {
            out.push(format!(
                "histogram_quantile({q}, sum by ({by}, le) (increase({buckets}[{w}])))"
            ));
        }
    }
    out
}

/// p50, p90, p99, in [`Golden::latency`]'s order.
const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// The answers to [`queries`] (in their order) as the traffic table. A
/// series without the `weft_service` label (a proxy Prometheus found some
/// other way than `/sd/prometheus`) has no known caller and is left out.
pub fn table(answers: &[Vec<Sample>]) -> TrafficTable {
    let answer = |i: usize| answers.get(i).map_or(&[][..], Vec::as_slice);
    let edge_of = |s: &Sample| {
        let (caller, callee) = (s.label("weft_service"), s.label("service"));
        (!caller.is_empty() && !callee.is_empty()).then(|| (qualified(caller), callee.to_string()))
    };
    // Extrapolation never makes a count infinite, but a broken series
    // must not poison a sum.
    let count = |v: f64| if v.is_finite() { v } else { 0.0 };
    let mut t = TrafficTable::default();
    for s in answer(0) {
        if let Some(e) = edge_of(s) {
            t.edges.entry(e).or_default().requests += count(s.value);
        }
    }
    for s in answer(1) {
        if let Some(g) = edge_of(s).and_then(|e| t.edges.get_mut(&e)) {
            g.failures += count(s.value);
        }
    }
    // A Service's counts are the sums of its edges'.
    for ((_, callee), g) in &t.edges {
        let s = t.services.entry(callee.clone()).or_default();
        s.requests += g.requests;
        s.failures += g.failures;
    }
    for (q, _) in QUANTILES.iter().enumerate() {
        // No requests in the window: histogram_quantile says NaN.
        let latency = |s: &Sample| s.value.is_finite().then_some(s.value);
        for s in answer(2 + q) {
            if let Some(g) = edge_of(s).and_then(|e| t.edges.get_mut(&e)) {
                g.latency[q] = latency(s);
            }
        }
        for s in answer(2 + QUANTILES.len() + q) {
            if let Some(g) = t.services.get_mut(s.label("service")) {
                g.latency[q] = latency(s);
            }
        }
    }
    t
}

/// Asks `url` the window's [`queries`] (concurrently, each within
/// [`QUERY_TIMEOUT`]); the first failure fails them all.
pub async fn query_table(
    url: &PrometheusUrl,
    window: Duration,
) -> Result<TrafficTable, QueryError> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(QUERY_TIMEOUT));
    let client: Client<_, Empty<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let answers =
        futures_util::future::try_join_all(queries(window).iter().map(|q| query(&client, url, q)))
            .await?;
    Ok(table(&answers))
}

async fn query(
    client: &Client<HttpConnector, Empty<bytes::Bytes>>,
    url: &PrometheusUrl,
    promql: &str,
) -> Result<Vec<Sample>, QueryError> {
    let uri: hyper::Uri = url
        .api(promql)
        .parse()
        .map_err(|e| QueryError::Unparsable(format!("query URL: {e}")))?;
    let ask = async {
        let resp = client.get(uri).await.map_err(connect_error)?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| QueryError::Connect(format!("reading the answer: {e}")))?
            .to_bytes();
        parse_vector(status, &body)
    };
    tokio::time::timeout(QUERY_TIMEOUT, ask)
        .await
        .map_err(|_| QueryError::Timeout(QUERY_TIMEOUT))?
}

/// The innermost cause (`connection refused`), not hyper's `client error
/// (Connect)`.
fn connect_error(e: hyper_util::client::legacy::Error) -> QueryError {
    let mut cause: &dyn std::error::Error = &e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let text = match cause.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused".to_string()
        }
        Some(io) if io.kind() == std::io::ErrorKind::TimedOut => "connect timed out".to_string(),
        _ => cause.to_string(),
    };
    QueryError::Connect(text)
}

/// Runs `f` to its end from synchronous code (the admin port's routes are
/// synchronous): on a multi-thread runtime (`weft control`'s) the worker
/// hands its other tasks to the others while it waits; anywhere else on a
/// thread and runtime of its own. Each query ends within
/// [`QUERY_TIMEOUT`], so this does.
pub(crate) fn wait_for<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(f))
        }
        _ => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a current-thread runtime builds")
                        .block_on(f)
                })
                .join()
                .expect("the query thread does not panic")
        }),
    }
}

/// The configured Prometheus, whether it answers, and the
/// `weft_traffic_*` metrics about where `/traffic` got its numbers.
pub struct PrometheusSource {
    url: Option<PrometheusUrl>,
    /// Why the last query failed, while Prometheus fails.
    failing: Mutex<Option<String>>,
    registry: Registry,
    errors: Counter,
    source: Family<[(&'static str, &'static str); 1], Gauge>,
}

/// Where a `/traffic` answer came from.
#[derive(Debug, Clone, PartialEq)]
pub enum TrafficSource {
    Prometheus(PrometheusUrl),
    /// Direct scraping; `fallback` says why the configured Prometheus was
    /// not used.
    Proxies {
        prometheus: Option<PrometheusUrl>,
        fallback: Option<String>,
    },
}

impl TrafficSource {
    /// The `"source"` field of `/traffic`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            TrafficSource::Prometheus(url) => {
                serde_json::json!({"kind": "prometheus", "prometheus": url.to_string()})
            }
            TrafficSource::Proxies {
                prometheus,
                fallback,
            } => {
                let mut v = serde_json::json!({
                    "kind": "proxies",
                    "prometheus": prometheus.as_ref().map(ToString::to_string),
                });
                if let Some(why) = fallback {
                    v["fallback"] = why.clone().into();
                }
                v
            }
        }
    }
}

impl PrometheusSource {
    /// `url` is `--prometheus`; `None` reads the proxies only.
    pub fn new(url: Option<PrometheusUrl>) -> Self {
        let mut registry = Registry::with_prefix("weft_traffic");
        let errors = Counter::default();
        registry.register(
            "prometheus_errors",
            "Traffic-view queries to --prometheus that failed (answered from direct scraping instead)",
            errors.clone(),
        );
        let source = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        registry.register(
            "source",
            "1 for where the last /traffic answer came from (prometheus or proxies; before any, the configured one)",
            source.clone(),
        );
        let this = Self {
            url,
            failing: Mutex::new(None),
            registry,
            errors,
            source,
        };
        this.set_source(this.url.is_some());
        this
    }

    pub fn url(&self) -> Option<&PrometheusUrl> {
        self.url.as_ref()
    }

    fn set_source(&self, prometheus: bool) {
        self.source
            .get_or_create(&[("kind", "prometheus")])
            .set(i64::from(prometheus));
        self.source
            .get_or_create(&[("kind", "proxies")])
            .set(i64::from(!prometheus));
    }

    /// Notes the outcome of a window's queries: counts a failure, logs when
    /// Prometheus starts failing and when it answers again, and says where
    /// the answer comes from.
    pub fn record(&self, outcome: Result<(), &QueryError>) -> TrafficSource {
        let Some(url) = &self.url else {
            self.set_source(false);
            return TrafficSource::Proxies {
                prometheus: None,
                fallback: None,
            };
        };
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                if let Some(was) = failing.take() {
                    tracing::info!(prometheus = %url, failed = %was, "Prometheus answers again; the traffic view reads it");
                }
                self.set_source(true);
                TrafficSource::Prometheus(url.clone())
            }
            Err(e) => {
                self.errors.inc();
                let why = e.to_string();
                if failing.is_none() {
                    tracing::warn!(prometheus = %url, error = %why, "Prometheus fails; the traffic view falls back to direct scraping of the proxies");
                }
                *failing = Some(why.clone());
                self.set_source(false);
                TrafficSource::Proxies {
                    prometheus: Some(url.clone()),
                    fallback: Some(format!("Prometheus {url} failed: {why}")),
                }
            }
        }
    }

    /// OpenMetrics text of the `weft_traffic_*` metrics, without `# EOF`.
    pub fn encode(&self, out: &mut String) {
        prometheus_client::encoding::text::encode_registry(out, &self.registry)
            .expect("writing to a String cannot fail");
    }
}

#[cfg(test)]
mod tests;
