//! Reading the sidecars' metrics: a small parser for the Prometheus /
//! OpenMetrics text lines the live view needs, counters summed over every
//! sidecar (requests and latency both ways, per-endpoint requests, retries,
//! backups, requests refused by flow control or cut by a deadline, health
//! events), the endpoint weight gauges combined across the
//! callers that hold them, and PromQL-style quantiles from histogram
//! buckets.
//!
//! The view is computed from what the sidecars export, not from private
//! counters, so it shows what a Prometheus scraping the same mesh would.

use std::collections::BTreeMap;

/// `weft_requests_total{direction,service,route,code,error}`.
const REQUESTS: &str = "weft_requests_total";
/// `weft_request_duration_seconds_bucket{direction,service,le}`.
const DURATION_BUCKET: &str = "weft_request_duration_seconds_bucket";
/// `weft_endpoint_requests_total{service,endpoint}`.
const ENDPOINT_REQUESTS: &str = "weft_endpoint_requests_total";
/// `weft_endpoint_weight_ratio{service,endpoint}`: effective weight /
/// configured, 0 when ejected (a gauge, per caller sidecar).
const WEIGHT_RATIO: &str = "weft_endpoint_weight_ratio";
/// `weft_endpoint_ejected{service,endpoint}`: 1 while ejected.
const EJECTED: &str = "weft_endpoint_ejected";
/// `weft_endpoint_health_events_total{service,endpoint,event}`.
const HEALTH_EVENTS: &str = "weft_endpoint_health_events_total";
/// `weft_retries_total{service,route}`.
const RETRIES: &str = "weft_retries_total";
/// `weft_retries_given_up_total{service,route,reason}`.
const RETRIES_GIVEN_UP: &str = "weft_retries_given_up_total";
/// `weft_hedges_total{service,route,reason=sent|won|cancelled}`.
const HEDGES: &str = "weft_hedges_total";
/// `weft_hedges_suppressed_total{service,route,reason}`.
const HEDGES_SUPPRESSED: &str = "weft_hedges_suppressed_total";
/// `weft_hedge_delay_seconds{service,route}`: the current hedge delay.
const HEDGE_DELAY: &str = "weft_hedge_delay_seconds";
/// `weft_admission_refused_total{service,route,reason}`: requests a
/// route's flow control refused (`dropped`, `rate_limited`, `denied`; the
/// `*_dry_run` reasons only counted).
const ADMISSION_REFUSED: &str = "weft_admission_refused_total";
/// `weft_config_generation`.
const CONFIG_GENERATION: &str = "weft_config_generation";
/// The `error` label of a request the proxy answered 504 itself because
/// the caller's deadline left no time to send it.
const DEADLINE_EXCEEDED: &str = "deadline-exceeded";

/// One sample line: `name{label="value",...} value [timestamp] [# exemplar]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample<'a> {
    pub(crate) name: &'a str,
    pub(crate) labels: Vec<(&'a str, String)>,
    pub(crate) value: f64,
}

impl Sample<'_> {
    pub(crate) fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The sample lines of an exposition; comments, blank and malformed lines
/// are skipped (the view shows what it can rather than nothing).
pub(crate) fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(parse_line)
}

fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = parse_labels(inner, &mut labels)?;
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Vec<(&'a str, String)>) -> Option<&'a str> {
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some(rest);
        }
        let (name, after) = s.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.trim(), value));
        s = &after[end + 1..];
    }
}

/// Cumulative histogram buckets `(upper bound, count <= bound)`, sorted by
/// bound, `+Inf` last.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Buckets(pub(crate) Vec<(f64, u64)>);

impl Buckets {
    /// Adds `count` to the bucket with bound `le` (sidecars share bounds, so
    /// summing per bound merges their histograms).
    pub(crate) fn add(&mut self, le: f64, count: u64) {
        match self.0.iter().position(|(b, _)| *b >= le) {
            Some(i) if self.0[i].0 == le => self.0[i].1 += count,
            Some(i) => self.0.insert(i, (le, count)),
            None => self.0.push((le, count)),
        }
    }

    /// Observations since `earlier`, bucket by bucket.
    pub(crate) fn since(&self, earlier: &Buckets) -> Buckets {
        let before = |le: f64| {
            earlier
                .0
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0, |(_, c)| *c)
        };
        Buckets(
            self.0
                .iter()
                .map(|&(le, c)| (le, c.saturating_sub(before(le))))
                .collect(),
        )
    }

    /// All observations (the `+Inf` bucket).
    pub(crate) fn count(&self) -> u64 {
        self.0.last().map_or(0, |(_, c)| *c)
    }

    /// The `q` quantile (0..=1) in the buckets' unit, as PromQL's
    /// `histogram_quantile` estimates it: find the bucket holding rank
    /// `q * count` and interpolate linearly inside it, from 0 for the first
    /// bucket. A rank in the `+Inf` bucket answers the highest finite bound.
    /// `None` without observations.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(upper, cumulative) in &self.0 {
            if cumulative as f64 >= rank && cumulative > below {
                if upper.is_infinite() {
                    return Some(lower);
                }
                let inside = (cumulative - below) as f64;
                return Some(lower + (upper - lower) * (rank - below as f64) / inside);
            }
            (lower, below) = (upper, cumulative);
        }
        Some(lower)
    }
}

/// What the sidecars of one service received (their inbound direction).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ServiceCounters {
    pub(crate) requests: u64,
    /// Answers other than 5xx, the usual mesh definition of success.
    pub(crate) ok: u64,
    /// Seconds from request received to response headers sent.
    pub(crate) latency: Buckets,
}

impl ServiceCounters {
    fn since(&self, earlier: &ServiceCounters) -> ServiceCounters {
        ServiceCounters {
            requests: self.requests.saturating_sub(earlier.requests),
            ok: self.ok.saturating_sub(earlier.ok),
            latency: self.latency.since(&earlier.latency),
        }
    }
}

/// What the callers' sidecars got from one addressed service (their
/// outbound direction), and what its TrafficPolicy did for them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CallerCounters {
    /// Answers (and the proxies' own errors) handed back to the callers.
    pub(crate) requests: u64,
    /// Of those, 5xx.
    pub(crate) server_errors: u64,
    /// Seconds from request received to response headers sent, retries
    /// and backups included.
    pub(crate) latency: Buckets,
    pub(crate) retries: u64,
    /// Failures (as the policy's failureCodes define them, business errors
    /// included) answered to the caller because no retry was left.
    pub(crate) given_up: u64,
    pub(crate) hedges_sent: u64,
    /// Backups that answered first.
    pub(crate) hedges_won: u64,
    pub(crate) hedges_suppressed: u64,
    /// The current hedge delay: the longest of the callers' (a state).
    pub(crate) hedge_delay: Option<f64>,
    /// Refused by the drop ratio (503 `dropped`).
    pub(crate) dropped: u64,
    /// Refused by the local rate limit (429 `rate-limited`).
    pub(crate) rate_limited: u64,
    /// Refused because the caller is denied (403 `denied`).
    pub(crate) denied: u64,
    /// Answered 504 `deadline-exceeded` without being sent, by the
    /// endpoint (`IP:PORT`) of the caller's sidecar that cut them.
    pub(crate) cut_at: BTreeMap<String, u64>,
}

impl CallerCounters {
    fn since(&self, earlier: &CallerCounters) -> CallerCounters {
        CallerCounters {
            requests: self.requests.saturating_sub(earlier.requests),
            server_errors: self.server_errors.saturating_sub(earlier.server_errors),
            latency: self.latency.since(&earlier.latency),
            retries: self.retries.saturating_sub(earlier.retries),
            given_up: self.given_up.saturating_sub(earlier.given_up),
            hedges_sent: self.hedges_sent.saturating_sub(earlier.hedges_sent),
            hedges_won: self.hedges_won.saturating_sub(earlier.hedges_won),
            hedges_suppressed: self
                .hedges_suppressed
                .saturating_sub(earlier.hedges_suppressed),
            hedge_delay: self.hedge_delay,
            dropped: self.dropped.saturating_sub(earlier.dropped),
            rate_limited: self.rate_limited.saturating_sub(earlier.rate_limited),
            denied: self.denied.saturating_sub(earlier.denied),
            cut_at: self
                .cut_at
                .iter()
                .map(|(at, n)| {
                    let before = earlier.cut_at.get(at).copied().unwrap_or(0);
                    (at.clone(), n.saturating_sub(before))
                })
                .collect(),
        }
    }

    /// Requests cut by a deadline, wherever.
    pub(crate) fn cut(&self) -> u64 {
        self.cut_at.values().sum()
    }
}

/// How the callers' sidecars weigh one endpoint now (gauges: a state, not
/// a count). Each caller has its own view; the mean is weighted by how much
/// each caller sent to the endpoint's service, so a sidecar that never
/// calls it (and so holds it at full weight) does not dilute the others.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct EndpointHealth {
    weighted_sum: f64,
    weights: f64,
    sum: f64,
    callers: u32,
    /// Callers that eject it now.
    pub(crate) ejected_by: u32,
}

impl EndpointHealth {
    fn add(&mut self, ratio: f64, caller_requests: u64) {
        self.weighted_sum += ratio * caller_requests as f64;
        self.weights += caller_requests as f64;
        self.sum += ratio;
        self.callers += 1;
    }

    /// Effective weight / configured weight (1 = full, 0 = ejected), as
    /// the callers hold it; `None` if no sidecar reports it.
    pub(crate) fn weight_ratio(&self) -> Option<f64> {
        if self.weights > 0.0 {
            Some(self.weighted_sum / self.weights)
        } else {
            (self.callers > 0).then(|| self.sum / f64::from(self.callers))
        }
    }
}

/// (service label, endpoint `IP:PORT`).
pub(crate) type EndpointKey = (String, String);

/// Counters summed over every sidecar of the mesh at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MeshCounters {
    /// Inbound numbers by local service label (`name.namespace`).
    pub(crate) services: BTreeMap<String, ServiceCounters>,
    /// Outbound numbers by addressed service label.
    pub(crate) callers: BTreeMap<String, CallerCounters>,
    /// Outbound requests by (backend service label, endpoint `IP:PORT`).
    pub(crate) endpoints: BTreeMap<EndpointKey, u64>,
    /// What each endpoint's own sidecar answered (inbound), by endpoint.
    pub(crate) pods: BTreeMap<String, ServiceCounters>,
    /// How callers weigh each endpoint now.
    pub(crate) health: BTreeMap<EndpointKey, EndpointHealth>,
    /// Ejections, re-admissions, ...: (service, endpoint, event) -> count.
    pub(crate) health_events: BTreeMap<(String, String, String), u64>,
    /// Lowest and highest config generation among the sidecars.
    pub(crate) generations: Option<(u64, u64)>,
}

/// One sidecar's weight gauges, combined once its whole exposition is read.
#[derive(Default)]
struct SidecarGauges {
    ratios: Vec<(EndpointKey, f64)>,
    ejected: Vec<EndpointKey>,
    /// This sidecar's requests to each service's endpoints.
    sent: BTreeMap<String, u64>,
}

impl MeshCounters {
    /// Adds one sidecar's exposition; `endpoint` is the `IP:PORT` its
    /// inbound listener serves as, when it is an endpoint of the mesh.
    pub(crate) fn add_exposition(&mut self, text: &str, endpoint: Option<&str>) {
        let mut gauges = SidecarGauges::default();
        for s in samples(text) {
            let Some(service) = s.label("service") else {
                if s.name == CONFIG_GENERATION {
                    // A whole number; `as` saturates anything odd.
                    let g = s.value as u64;
                    self.generations = Some(match self.generations {
                        None => (g, g),
                        Some((lo, hi)) => (lo.min(g), hi.max(g)),
                    });
                }
                continue;
            };
            match s.name {
                REQUESTS | DURATION_BUCKET => self.add_traffic(&s, service, endpoint),
                ENDPOINT_REQUESTS | WEIGHT_RATIO | EJECTED | HEALTH_EVENTS => {
                    self.add_endpoint(&s, service, &mut gauges);
                }
                RETRIES | RETRIES_GIVEN_UP | HEDGES | HEDGES_SUPPRESSED | HEDGE_DELAY
                | ADMISSION_REFUSED => {
                    self.add_policy(&s, service);
                }
                _ => {}
            }
        }
        for (key, ratio) in gauges.ratios {
            let sent = gauges.sent.get(&key.0).copied().unwrap_or(0);
            self.health.entry(key).or_default().add(ratio, sent);
        }
        for key in gauges.ejected {
            self.health.entry(key).or_default().ejected_by += 1;
        }
    }

    /// Requests and latency: inbound by local service (and by pod), outbound
    /// by addressed service.
    fn add_traffic(&mut self, s: &Sample<'_>, service: &str, endpoint: Option<&str>) {
        // Counters are whole numbers; `as` saturates anything odd.
        let count = s.value as u64;
        let code = || {
            s.label("code")
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0)
        };
        let le = || s.label("le").and_then(|l| l.parse::<f64>().ok());
        if s.label("direction") != Some("inbound") {
            let entry = self.callers.entry(service.to_owned()).or_default();
            if s.name == REQUESTS {
                entry.requests += count;
                if code() >= 500 {
                    entry.server_errors += count;
                }
                if s.label("error") == Some(DEADLINE_EXCEEDED) {
                    let at = endpoint.unwrap_or_default().to_owned();
                    *entry.cut_at.entry(at).or_default() += count;
                }
            } else if let Some(le) = le() {
                entry.latency.add(le, count);
            }
            return;
        }
        let add = |entry: &mut ServiceCounters| {
            if s.name == REQUESTS {
                entry.requests += count;
                if code() < 500 {
                    entry.ok += count;
                }
            } else if let Some(le) = le() {
                entry.latency.add(le, count);
            }
        };
        add(self.services.entry(service.to_owned()).or_default());
        if let Some(pod) = endpoint {
            add(self.pods.entry(pod.to_owned()).or_default());
        }
    }

    /// Per-endpoint requests (also this sidecar's, to weigh its gauges),
    /// weight and ejection gauges, health events.
    fn add_endpoint(&mut self, s: &Sample<'_>, service: &str, gauges: &mut SidecarGauges) {
        let Some(ep) = s.label("endpoint") else {
            return;
        };
        let count = s.value as u64;
        let key = (service.to_owned(), ep.to_owned());
        match s.name {
            ENDPOINT_REQUESTS => {
                *gauges.sent.entry(service.to_owned()).or_default() += count;
                *self.endpoints.entry(key).or_default() += count;
            }
            WEIGHT_RATIO if s.value.is_finite() => gauges.ratios.push((key, s.value)),
            EJECTED if s.value > 0.0 => gauges.ejected.push(key),
            HEALTH_EVENTS => {
                if let Some(event) = s.label("event") {
                    *self
                        .health_events
                        .entry((key.0, key.1, event.to_owned()))
                        .or_default() += count;
                }
            }
            _ => {}
        }
    }

    /// Retries, backups and flow control, summed over the addressed
    /// service's routes.
    fn add_policy(&mut self, s: &Sample<'_>, service: &str) {
        let count = s.value as u64;
        let entry = self.callers.entry(service.to_owned()).or_default();
        match (s.name, s.label("reason")) {
            (RETRIES, _) => entry.retries += count,
            (RETRIES_GIVEN_UP, _) => entry.given_up += count,
            (HEDGES, Some("sent")) => entry.hedges_sent += count,
            (HEDGES, Some("won")) => entry.hedges_won += count,
            (HEDGES_SUPPRESSED, _) => entry.hedges_suppressed += count,
            (ADMISSION_REFUSED, Some("dropped")) => entry.dropped += count,
            (ADMISSION_REFUSED, Some("rate_limited")) => entry.rate_limited += count,
            (ADMISSION_REFUSED, Some("denied")) => entry.denied += count,
            (HEDGE_DELAY, _) if s.value.is_finite() => {
                entry.hedge_delay = Some(entry.hedge_delay.unwrap_or(0.0).max(s.value));
            }
            _ => {}
        }
    }

    /// What happened between `earlier` and `self`. Gauges (weights, hedge
    /// delays, generations) are the later ones: they are a state, not a
    /// count.
    pub(crate) fn since(&self, earlier: &MeshCounters) -> MeshCounters {
        fn delta<K: Ord + Clone, V: Default>(
            now: &BTreeMap<K, V>,
            earlier: &BTreeMap<K, V>,
            since: impl Fn(&V, &V) -> V,
        ) -> BTreeMap<K, V> {
            let none = V::default();
            now.iter()
                .map(|(k, v)| (k.clone(), since(v, earlier.get(k).unwrap_or(&none))))
                .collect()
        }
        let count = |a: &u64, b: &u64| a.saturating_sub(*b);
        MeshCounters {
            services: delta(&self.services, &earlier.services, ServiceCounters::since),
            callers: delta(&self.callers, &earlier.callers, CallerCounters::since),
            endpoints: delta(&self.endpoints, &earlier.endpoints, count),
            pods: delta(&self.pods, &earlier.pods, ServiceCounters::since),
            health: self.health.clone(),
            health_events: delta(&self.health_events, &earlier.health_events, count),
            generations: self.generations,
        }
    }
}

#[cfg(test)]
mod tests;
