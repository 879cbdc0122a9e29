//! Golden metrics per Service and per edge (caller Service -> Service),
//! shaped after SMI Traffic Metrics (`metrics.smi-spec.io/v1alpha1`
//! `TrafficMetrics`), aggregated by the control plane from the proxies
//! themselves: every weft proxy that announced its admin address is
//! scraped each `interval`, and a window's numbers are the differences of
//! the counters across it. The caller is the scraped proxy's Service (a
//! sidecar's requests all come from its app), the callee the `service`
//! label of its outbound `weft_requests_total` and
//! `weft_request_duration_seconds`. A request failed as Linkerd counts it:
//! an HTTP one when answered 5xx (the proxy's own 503/504 included), a gRPC
//! one (non-empty `grpc_status` label) when its status is not OK (`0`),
//! whatever its HTTP code.
//!
//! With `--prometheus URL` the numbers come from that Prometheus instead
//! ([`crate::promql`]); the scraping goes on regardless, so that a failing
//! Prometheus is answered for at once from the proxies (the answer's
//! `source` says which, and why).
//!
//! Served at `GET /traffic?window=30s[&service=NAME]` on the admin port;
//! `weft stat SERVICE` prints it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use weft_xds::server::ServerStatus;

use crate::promql::TrafficSource;

/// How long the scrapes are kept: the longest window asked for.
pub const MAX_WINDOW: Duration = Duration::from_secs(300);
/// One scrape may take this long.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of one (caller, callee) pair in one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub requests: f64,
    pub failures: f64,
    /// Cumulative latency histogram: (upper bound in seconds, count).
    pub buckets: Vec<(f64, f64)>,
}

/// One proxy's outbound counters, by callee.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub by_callee: BTreeMap<String, Counts>,
    /// When the proxy started (`weft_start_time_seconds`, Unix time).
    pub started: Option<f64>,
}

/// A proxy first seen this soon after it started is counted from zero (its
/// start); one running longer (the control plane restarted, say) from its
/// first scrape, so its history is not taken for the window's traffic.
const FRESH: Duration = Duration::from_secs(30);

/// Parses weft's outbound request counters and latency buckets from a
/// proxy's Prometheus text.
pub fn parse(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for line in text.lines() {
        let (series, value) = match line.rsplit_once(' ') {
            Some((s, v)) if !line.starts_with('#') => (s, v),
            _ => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if series == "weft_start_time_seconds" {
            out.started = Some(value);
            continue;
        }
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        let label = |key: &str| label_value(labels, key);
        if label("direction").as_deref() != Some("outbound") {
            continue;
        }
        let Some(callee) = label("service") else {
            continue;
        };
        match name {
            "weft_requests_total" => {
                let c = out.by_callee.entry(callee).or_default();
                c.requests += value;
                if failed(label("code").as_deref(), label("grpc_status").as_deref()) {
                    c.failures += value;
                }
            }
            "weft_request_duration_seconds_bucket" => {
                let le = match label("le").as_deref() {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => match v.parse() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                let c = out.by_callee.entry(callee).or_default();
                match c.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, n)) => *n += value,
                    None => c.buckets.push((le, value)),
                }
            }
            _ => {}
        }
    }
    for c in out.by_callee.values_mut() {
        c.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// Whether requests answered `code` with gRPC status `grpc_status` failed:
/// a gRPC request (non-empty status) unless its status is OK, whatever its
/// HTTP code (a gRPC error travels in a 200); any other request when 5xx.
/// No `grpc_status` label (proxies older than it) reads as non-gRPC.
fn failed(code: Option<&str>, grpc_status: Option<&str>) -> bool {
    match grpc_status {
        Some(status) if !status.is_empty() => status != "0",
        _ => code.is_some_and(|c| c.starts_with('5')),
    }
}

/// The value of `key` in `a="x",b="y"` (escapes `\"` and `\\` undone).
fn label_value(labels: &str, key: &str) -> Option<String> {
    let mut rest = labels;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        if k.trim_start_matches(',') == key {
            return Some(value);
        }
        rest = after[end..].trim_start_matches(',');
    }
    None
}

impl Counts {
    /// `self - earlier` (a counter that went down restarted: all of `self`).
    fn since(&self, earlier: Option<&Counts>) -> Counts {
        let Some(e) = earlier else {
            return self.clone();
        };
        if self.requests < e.requests {
            return self.clone();
        }
        Counts {
            requests: self.requests - e.requests,
            failures: (self.failures - e.failures).max(0.0),
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| {
                    let before = e
                        .buckets
                        .iter()
                        .find(|(b, _)| b == le)
                        .map_or(0.0, |(_, n)| *n);
                    (*le, (n - before).max(0.0))
                })
                .collect(),
        }
    }

    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.failures += other.failures;
        for (le, n) in &other.buckets {
            match self.buckets.iter_mut().find(|(b, _)| b == le) {
                Some((_, m)) => *m += n,
                None => self.buckets.push((*le, *n)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// The `q` quantile in seconds, interpolated inside its bucket as
    /// Prometheus's `histogram_quantile` does; `None` without requests.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map(|(_, n)| *n)?;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let within = (rank - prev.1) / (n - prev.1).max(f64::MIN_POSITIVE);
                return Some(prev.0 + (le - prev.0) * within.clamp(0.0, 1.0));
            }
            prev = (le, n);
        }
        Some(prev.0)
    }
}

#[derive(Debug)]
struct Target {
    /// The scraped proxy's Service.
    service: String,
    samples: VecDeque<(Instant, Scrape)>,
}

/// The scrapes kept for the windows.
#[derive(Debug, Default)]
pub struct TrafficView {
    targets: Mutex<HashMap<String, Target>>,
}

impl TrafficView {
    /// Records a scrape of `target` (the proxy of `service`) taken at `at`.
    pub fn record(&self, target: &str, service: &str, at: Instant, scrape: Scrape) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let t = targets.entry(target.to_string()).or_insert_with(|| Target {
            service: service.to_string(),
            samples: VecDeque::new(),
        });
        t.service = service.to_string();
        if t.samples.is_empty()
            && let Some(age) = scrape.started.and_then(|s| {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()?
                    .as_secs_f64();
                Duration::try_from_secs_f64(now - s).ok()
            })
            && age < FRESH
        {
            // Its counters were zero when it started.
            t.samples
                .push_back((at.checked_sub(age).unwrap_or(at), Scrape::default()));
        }
        t.samples.push_back((at, scrape));
        while t
            .samples
            .front()
            .is_some_and(|(s, _)| at.saturating_duration_since(*s) > MAX_WINDOW)
        {
            t.samples.pop_front();
        }
    }

    /// Forgets targets not in `live`.
    pub fn retain(&self, live: &[String]) {
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(k));
    }

    /// (caller, callee) -> counts over the last `window` before `now`:
    /// the newest scrape less the last one taken at or before the window's
    /// start, or less the first scrape when all came inside the window;
    /// a proxy scraped once counts from zero (it just connected).
    pub fn edges(&self, window: Duration, now: Instant) -> BTreeMap<(String, String), Counts> {
        let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<(String, String), Counts> = BTreeMap::new();
        for t in targets.values() {
            let Some((_, newest)) = t.samples.back() else {
                continue;
            };
            let from = now.checked_sub(window);
            let before = t
                .samples
                .iter()
                .rev()
                .find(|(at, _)| from.is_some_and(|f| *at <= f))
                .map(|(_, s)| s);
            let baseline = match before {
                Some(b) => Some(b),
                None if t.samples.len() > 1 => t.samples.front().map(|(_, s)| s),
                None => None,
            };
            for (callee, counts) in &newest.by_callee {
                let delta = counts.since(baseline.and_then(|b| b.by_callee.get(callee)));
                out.entry((t.service.clone(), callee.clone()))
                    .or_default()
                    .add(&delta);
            }
        }
        out
    }

    /// The numbers per callee (all callers) and per edge over the last
    /// `window`.
    pub fn table(&self, window: Duration) -> TrafficTable {
        let edges = self.edges(window, Instant::now());
        let mut by_callee: BTreeMap<String, Counts> = BTreeMap::new();
        for ((_, callee), c) in &edges {
            by_callee.entry(callee.clone()).or_default().add(c);
        }
        TrafficTable {
            services: by_callee
                .iter()
                .map(|(s, c)| (s.clone(), Golden::from(c)))
                .collect(),
            edges: edges
                .iter()
                .map(|(e, c)| (e.clone(), Golden::from(c)))
                .collect(),
        }
    }
}

/// A window's golden numbers of one Service or edge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Golden {
    /// Requests (Prometheus' `increase()` extrapolates: not always whole).
    pub requests: f64,
    pub failures: f64,
    /// p50, p90, p99 in seconds; `None` without requests.
    pub latency: [Option<f64>; 3],
}

impl From<&Counts> for Golden {
    fn from(c: &Counts) -> Self {
        Golden {
            requests: c.requests,
            failures: c.failures,
            latency: [c.quantile(0.5), c.quantile(0.9), c.quantile(0.99)],
        }
    }
}

/// A window's numbers, from either source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficTable {
    /// By callee Service (`name.namespace`), all callers.
    pub services: BTreeMap<String, Golden>,
    /// By (caller, callee).
    pub edges: BTreeMap<(String, String), Golden>,
}

impl TrafficTable {
    /// The SMI-shaped list: one item per callee (all callers), then one
    /// per edge; `service` keeps only those about that Service (as callee
    /// or caller; `name` or `name.namespace`). `source` says where the
    /// numbers came from (a field of weft's own beside SMI's).
    pub fn to_json(
        &self,
        window: Duration,
        service: Option<&str>,
        source: &TrafficSource,
    ) -> serde_json::Value {
        let wanted =
            |s: &str| service.is_none_or(|want| s == want || s.split('.').next() == Some(want));
        let timestamp = weft_admin::rfc3339(SystemTime::now());
        let window_s = format!("{}s", window.as_secs());
        let mut items = Vec::new();
        for (callee, g) in self.services.iter().filter(|(s, _)| wanted(s)) {
            items.push(item(callee, None, g, window, &timestamp, &window_s));
        }
        for ((caller, callee), g) in self
            .edges
            .iter()
            .filter(|((a, b), _)| wanted(a) || wanted(b))
        {
            items.push(item(callee, Some(caller), g, window, &timestamp, &window_s));
        }
        serde_json::json!({
            "kind": "TrafficMetricsList",
            "apiVersion": "metrics.smi-spec.io/v1alpha1",
            "window": window_s,
            "source": source.to_json(),
            "items": items,
        })
    }
}

fn resource(service: &str) -> serde_json::Value {
    let (name, namespace) = service.split_once('.').unwrap_or((service, "default"));
    serde_json::json!({"kind": "Service", "name": name, "namespace": namespace})
}

fn item(
    callee: &str,
    caller: Option<&str>,
    c: &Golden,
    window: Duration,
    timestamp: &str,
    window_s: &str,
) -> serde_json::Value {
    let ms = |i: usize| c.latency[i].map(|s| (s * 1000.0 * 1000.0).round() / 1000.0);
    let secs = window.as_secs_f64().max(1e-9);
    serde_json::json!({
        "kind": "TrafficMetrics",
        "apiVersion": "metrics.smi-spec.io/v1alpha1",
        "resource": resource(callee),
        "edge": caller.map(|from| serde_json::json!({"direction": "from", "resource": resource(from)})),
        "timestamp": timestamp,
        "window": window_s,
        "metrics": [
            {"name": "p99_response_latency", "unit": "ms", "value": ms(2)},
            {"name": "p90_response_latency", "unit": "ms", "value": ms(1)},
            {"name": "p50_response_latency", "unit": "ms", "value": ms(0)},
            {"name": "success_count", "value": c.requests - c.failures},
            {"name": "failure_count", "value": c.failures},
            {"name": "requests_per_second", "value": c.requests / secs},
            {"name": "success_rate", "value": if c.requests > 0.0 { Some((c.requests - c.failures) / c.requests) } else { None }},
        ],
    })
}

/// Scrapes every weft proxy with an announced admin address each
/// `interval` until `stop`.
pub async fn scrape_loop(
    view: Arc<TrafficView>,
    status: Arc<ServerStatus>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    loop {
        let targets: Vec<(String, String)> = {
            let mut seen = BTreeMap::new();
            for s in status.streams() {
                if s.kind != weft_xds::DataPlane::Weft {
                    continue;
                }
                if let Some(admin) = s.admin {
                    seen.insert(admin, qualified(&s.cluster));
                }
            }
            seen.into_iter().collect()
        };
        let live: Vec<String> = targets.iter().map(|(t, _)| t.clone()).collect();
        let scrapes =
            futures_util::future::join_all(targets.into_iter().map(|(target, service)| {
                let client = client.clone();
                async move {
                    let uri = format!("http://{target}/metrics");
                    let get = async {
                        let resp = client.get(uri.parse().ok()?).await.ok()?;
                        let body = resp.into_body().collect().await.ok()?.to_bytes();
                        Some(String::from_utf8_lossy(&body).into_owned())
                    };
                    let text = tokio::time::timeout(SCRAPE_TIMEOUT, get)
                        .await
                        .ok()
                        .flatten();
                    (target, service, text)
                }
            }))
            .await;
        let at = Instant::now();
        for (target, service, text) in scrapes {
            match text {
                Some(t) => view.record(&target, &service, at, parse(&t)),
                None => tracing::debug!(%target, "traffic scrape failed"),
            }
        }
        view.retain(&live);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// `name` as `name.default`; `name.namespace` as is.
pub(crate) fn qualified(service: &str) -> String {
    if service.contains('.') {
        service.to_string()
    } else {
        format!("{service}.{}", weft_model::DEFAULT_NAMESPACE)
    }
}

#[cfg(test)]
mod tests;
