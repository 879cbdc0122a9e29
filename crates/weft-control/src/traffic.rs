//! Golden metrics per Service and per edge (caller Service -> Service),
//! shaped after SMI Traffic Metrics (`metrics.smi-spec.io/v1alpha1`
//! `TrafficMetrics`), aggregated by the control plane from the proxies
//! themselves: every weft proxy that announced its admin address is
//! scraped each `interval`, and a window's numbers are the differences of
//! the counters across it. The caller is the scraped proxy's Service (a
//! sidecar's requests all come from its app), the callee the `service`
//! label of its outbound `weft_requests_total` and
//! `weft_request_duration_seconds`. Failures are 5xx answers (the proxy's
//! own 503/504 included), as in the dashboard's success rate.
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
                if label("code").is_some_and(|code| code.starts_with('5')) {
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

    /// The SMI-shaped list: one item per callee (all callers), then one
    /// per edge; `service` keeps only those about that Service (as callee
    /// or caller; `name` or `name.namespace`).
    pub fn traffic_json(&self, window: Duration, service: Option<&str>) -> serde_json::Value {
        let edges = self.edges(window, Instant::now());
        let mut by_callee: BTreeMap<String, Counts> = BTreeMap::new();
        for ((_, callee), c) in &edges {
            by_callee.entry(callee.clone()).or_default().add(c);
        }
        let wanted =
            |s: &str| service.is_none_or(|want| s == want || s.split('.').next() == Some(want));
        let timestamp = humantime_now();
        let window_s = format!("{}s", window.as_secs());
        let mut items = Vec::new();
        for (callee, c) in by_callee.iter().filter(|(s, _)| wanted(s)) {
            items.push(item(callee, None, c, window, &timestamp, &window_s));
        }
        for ((caller, callee), c) in edges.iter().filter(|((a, b), _)| wanted(a) || wanted(b)) {
            items.push(item(callee, Some(caller), c, window, &timestamp, &window_s));
        }
        serde_json::json!({
            "kind": "TrafficMetricsList",
            "apiVersion": "metrics.smi-spec.io/v1alpha1",
            "window": window_s,
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
    c: &Counts,
    window: Duration,
    timestamp: &str,
    window_s: &str,
) -> serde_json::Value {
    let ms = |q: f64| {
        c.quantile(q)
            .map(|s| (s * 1000.0 * 1000.0).round() / 1000.0)
    };
    let secs = window.as_secs_f64().max(1e-9);
    serde_json::json!({
        "kind": "TrafficMetrics",
        "apiVersion": "metrics.smi-spec.io/v1alpha1",
        "resource": resource(callee),
        "edge": caller.map(|from| serde_json::json!({"direction": "from", "resource": resource(from)})),
        "timestamp": timestamp,
        "window": window_s,
        "metrics": [
            {"name": "p99_response_latency", "unit": "ms", "value": ms(0.99)},
            {"name": "p90_response_latency", "unit": "ms", "value": ms(0.90)},
            {"name": "p50_response_latency", "unit": "ms", "value": ms(0.50)},
            {"name": "success_count", "value": c.requests - c.failures},
            {"name": "failure_count", "value": c.failures},
            {"name": "requests_per_second", "value": c.requests / secs},
            {"name": "success_rate", "value": if c.requests > 0.0 { Some((c.requests - c.failures) / c.requests) } else { None }},
        ],
    })
}

/// Seconds since the Unix epoch, as an RFC 3339-ish UTC string.
fn humantime_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 -> (year, month, day) (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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

fn qualified(service: &str) -> String {
    if service.contains('.') {
        service.to_string()
    } else {
        format!("{service}.{}", weft_model::DEFAULT_NAMESPACE)
    }
}

/// `GET /traffic` from the control plane at `admin` (for `weft stat`).
pub async fn fetch(
    admin: std::net::SocketAddr,
    window: Duration,
    service: Option<&str>,
) -> Result<serde_json::Value, String> {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut uri = format!("http://{admin}/traffic?window={}s", window.as_secs());
    if let Some(s) = service {
        uri.push_str("&service=");
        uri.push_str(s);
    }
    let uri: hyper::Uri = uri.parse().map_err(|e| format!("{uri}: {e}"))?;
    let get = async {
        let resp = client
            .get(uri.clone())
            .await
            .map_err(|e| format!("control plane admin {admin}: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("control plane admin {admin}: {e}"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            return Err(format!("{uri}: {status}: {}", text.trim()));
        }
        serde_json::from_str(&text).map_err(|e| format!("{uri}: not JSON: {e}"))
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, get)
        .await
        .map_err(|_| format!("control plane admin {admin}: no answer within {SCRAPE_TIMEOUT:?}"))?
}

/// A table of a `/traffic` answer: one line per Service, then its callers
/// (`<- caller`), with RPS, success rate and p50/p90/p99.
pub fn render(traffic: &serde_json::Value) -> String {
    let metric = |item: &serde_json::Value, name: &str| {
        item["metrics"]
            .as_array()
            .and_then(|m| m.iter().find(|x| x["name"] == name))
            .and_then(|x| x["value"].as_f64())
    };
    let mut out = format!(
        "{:<36} {:>9} {:>8} {:>9} {:>9} {:>9}   window {}\n",
        "SERVICE",
        "RPS",
        "SUCCESS",
        "P50 ms",
        "P90 ms",
        "P99 ms",
        traffic["window"].as_str().unwrap_or("?")
    );
    let items = traffic["items"].as_array().cloned().unwrap_or_default();
    let name = |r: &serde_json::Value| {
        format!(
            "{}.{}",
            r["name"].as_str().unwrap_or("?"),
            r["namespace"].as_str().unwrap_or("?")
        )
    };
    let num =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let mut rows: Vec<(String, String, &serde_json::Value)> = items
        .iter()
        .map(|i| {
            let callee = name(&i["resource"]);
            let caller = if i["edge"].is_null() {
                String::new()
            } else {
                name(&i["edge"]["resource"])
            };
            (callee, caller, i)
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    for (callee, caller, i) in rows {
        let label = if caller.is_empty() {
            callee
        } else {
            format!("  <- {caller}")
        };
        out.push_str(&format!(
            "{label:<36} {:>9} {:>8} {:>9} {:>9} {:>9}\n",
            num(metric(i, "requests_per_second"), 1),
            metric(i, "success_rate").map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0)),
            num(metric(i, "p50_response_latency"), 2),
            num(metric(i, "p90_response_latency"), 2),
            num(metric(i, "p99_response_latency"), 2),
        ));
    }
    if items.is_empty() {
        out.push_str("(no traffic in the window: are weft proxies connected, with admin addresses announced?)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP weft_requests Requests.
# TYPE weft_requests counter
weft_requests_total{direction="outbound",service="catalog.default",route="r/0",code="200",error=""} 30
weft_requests_total{direction="outbound",service="catalog.default",route="r/0",code="500",error=""} 10
weft_requests_total{direction="inbound",service="frontend.default",route="",code="200",error=""} 99
weft_request_duration_seconds_bucket{direction="outbound",service="catalog.default",le="0.001"} 10
weft_request_duration_seconds_bucket{direction="outbound",service="catalog.default",le="0.01"} 36
weft_request_duration_seconds_bucket{direction="outbound",service="catalog.default",le="+Inf"} 40
"#;

    #[test]
    fn parses_outbound_counters_and_buckets() {
        let s = parse(TEXT);
        let c = &s.by_callee["catalog.default"];
        assert_eq!((c.requests, c.failures), (40.0, 10.0));
        assert_eq!(
            c.buckets,
            [(0.001, 10.0), (0.01, 36.0), (f64::INFINITY, 40.0)]
        );
        assert!(
            !s.by_callee.contains_key("frontend.default"),
            "inbound is not an edge"
        );
        // p50: rank 20 in (0.001, 0.01]: 10 of 26 into it.
        let p50 = c.quantile(0.5).unwrap();
        assert!((p50 - (0.001 + 0.009 * 10.0 / 26.0)).abs() < 1e-9, "{p50}");
        assert_eq!(label_value(r#"a="x\"y",b="z""#, "b").as_deref(), Some("z"));
        assert_eq!(
            label_value(r#"a="x\"y",b="z""#, "a").as_deref(),
            Some("x\"y")
        );
    }

    #[test]
    fn windows_are_differences_and_restarts_count_from_zero() {
        let view = TrafficView::default();
        let t0 = Instant::now();
        view.record("p1", "frontend.default", t0, parse(TEXT));
        let later = TEXT.replace("} 30", "} 50").replace("} 40\n", "} 60\n");
        view.record(
            "p1",
            "frontend.default",
            t0 + Duration::from_secs(5),
            parse(&later),
        );
        let e = view.edges(Duration::from_secs(10), t0 + Duration::from_secs(5));
        let c = &e[&(
            "frontend.default".to_string(),
            "catalog.default".to_string(),
        )];
        assert_eq!((c.requests, c.failures), (20.0, 0.0));
        // A proxy whose counters went down restarted.
        view.record(
            "p1",
            "frontend.default",
            t0 + Duration::from_secs(6),
            parse(TEXT),
        );
        let e = view.edges(Duration::from_secs(1), t0 + Duration::from_secs(6));
        let c = &e[&(
            "frontend.default".to_string(),
            "catalog.default".to_string(),
        )];
        assert_eq!(c.requests, 40.0);
        let json = view.traffic_json(Duration::from_secs(10), Some("catalog"));
        assert_eq!(json["items"][0]["resource"]["name"], "catalog");
        assert_eq!(json["items"][1]["edge"]["resource"]["name"], "frontend");
        assert_eq!(civil(0), (1970, 1, 1));

        // A proxy that started a moment ago counts from zero even if its
        // first scrape came after traffic; one running for long from its
        // first scrape.
        for (age, want) in [(5.0, 40.0), (3600.0, 0.0)] {
            let view = TrafficView::default();
            let started = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
                - age;
            let text = format!("{TEXT}weft_start_time_seconds {started}\n");
            let first = parse(&text);
            assert_eq!(first.started, Some(started));
            view.record("p", "frontend.default", t0, first);
            view.record(
                "p",
                "frontend.default",
                t0 + Duration::from_secs(1),
                parse(&text),
            );
            let e = view.edges(Duration::from_secs(60), t0 + Duration::from_secs(1));
            let c = &e[&(
                "frontend.default".to_string(),
                "catalog.default".to_string(),
            )];
            assert_eq!(c.requests, want, "started {age} s ago");
        }
        assert_eq!(civil(20_419), (2025, 11, 27));
    }
}
