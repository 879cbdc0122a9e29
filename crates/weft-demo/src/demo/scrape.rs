//! Reading the sidecars' metrics: a small parser for the Prometheus /
//! OpenMetrics text lines the live view needs, counters summed over every
//! sidecar, and PromQL-style quantiles from histogram buckets.
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
/// `weft_config_generation`.
const CONFIG_GENERATION: &str = "weft_config_generation";

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

/// Counters summed over every sidecar of the mesh at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MeshCounters {
    /// Inbound numbers by local service label (`name.namespace`).
    pub(crate) services: BTreeMap<String, ServiceCounters>,
    /// Outbound requests by (backend service label, endpoint `IP:PORT`).
    pub(crate) endpoints: BTreeMap<(String, String), u64>,
    /// Lowest and highest config generation among the sidecars.
    pub(crate) generations: Option<(u64, u64)>,
}

impl MeshCounters {
    /// Adds one sidecar's exposition.
    pub(crate) fn add_exposition(&mut self, text: &str) {
        for s in samples(text) {
            // Counters are whole numbers; `as` saturates anything odd.
            let count = s.value as u64;
            match s.name {
                REQUESTS if s.label("direction") == Some("inbound") => {
                    let Some(service) = s.label("service") else {
                        continue;
                    };
                    let entry = self.services.entry(service.to_owned()).or_default();
                    entry.requests += count;
                    let code: u16 = s.label("code").and_then(|c| c.parse().ok()).unwrap_or(0);
                    if code < 500 {
                        entry.ok += count;
                    }
                }
                DURATION_BUCKET if s.label("direction") == Some("inbound") => {
                    let (Some(service), Some(le)) = (s.label("service"), s.label("le")) else {
                        continue;
                    };
                    let Ok(le) = le.parse::<f64>() else { continue };
                    let entry = self.services.entry(service.to_owned()).or_default();
                    entry.latency.add(le, count);
                }
                ENDPOINT_REQUESTS => {
                    let (Some(service), Some(endpoint)) = (s.label("service"), s.label("endpoint"))
                    else {
                        continue;
                    };
                    *self
                        .endpoints
                        .entry((service.to_owned(), endpoint.to_owned()))
                        .or_default() += count;
                }
                CONFIG_GENERATION => {
                    let g = count;
                    self.generations = Some(match self.generations {
                        None => (g, g),
                        Some((lo, hi)) => (lo.min(g), hi.max(g)),
                    });
                }
                _ => {}
            }
        }
    }

    /// What happened between `earlier` and `self`. The generations are the
    /// later ones: they are a state, not a count.
    pub(crate) fn since(&self, earlier: &MeshCounters) -> MeshCounters {
        let services = self
            .services
            .iter()
            .map(|(name, now)| {
                let before = earlier.services.get(name).cloned().unwrap_or_default();
                let delta = ServiceCounters {
                    requests: now.requests.saturating_sub(before.requests),
                    ok: now.ok.saturating_sub(before.ok),
                    latency: now.latency.since(&before.latency),
                };
                (name.clone(), delta)
            })
            .collect();
        let endpoints = self
            .endpoints
            .iter()
            .map(|(key, now)| {
                let before = earlier.endpoints.get(key).copied().unwrap_or(0);
                (key.clone(), now.saturating_sub(before))
            })
            .collect();
        MeshCounters {
            services,
            endpoints,
            generations: self.generations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIDECAR: &str = r#"# HELP weft_requests HTTP requests handled.
# TYPE weft_requests counter
weft_requests_total{direction="inbound",service="catalog-v2.default",route="inbound",code="200",error=""} 98
weft_requests_total{direction="inbound",service="catalog-v2.default",route="inbound",code="503",error=""} 2
weft_requests_total{direction="outbound",service="inventory.default",route="default",code="502",error="connect"} 7
# TYPE weft_request_duration_seconds histogram
weft_request_duration_seconds_sum{direction="inbound",service="catalog-v2.default"} 0.5
weft_request_duration_seconds_count{direction="inbound",service="catalog-v2.default"} 100
weft_request_duration_seconds_bucket{le="0.001",direction="inbound",service="catalog-v2.default"} 10
weft_request_duration_seconds_bucket{le="0.005",direction="inbound",service="catalog-v2.default"} 90
weft_request_duration_seconds_bucket{le="+Inf",direction="inbound",service="catalog-v2.default"} 100
weft_request_duration_seconds_bucket{le="0.001",direction="outbound",service="inventory.default"} 7
weft_endpoint_requests_total{service="inventory.default",endpoint="127.0.3.1:15006"} 49
weft_endpoint_requests_total{service="inventory.default",endpoint="127.0.3.2:15006"} 49
weft_config_generation 2
# EOF
"#;

    #[test]
    fn parses_names_labels_values_and_escapes() {
        let line = r#"m_total{a="x",b="say \"hi\"\\\n",c=""} 1.5e3 1700000000 # {trace="1"} 1"#;
        let s = parse_line(line).unwrap();
        assert_eq!(s.name, "m_total");
        assert_eq!(s.label("a"), Some("x"));
        assert_eq!(s.label("b"), Some("say \"hi\"\\\n"));
        assert_eq!(s.label("c"), Some(""));
        assert_eq!(s.value, 1500.0);
        let bare = parse_line("weft_config_generation 3").unwrap();
        assert_eq!(
            (bare.name, bare.labels.len(), bare.value),
            ("weft_config_generation", 0, 3.0)
        );
        assert_eq!(
            parse_line(r#"x{le="+Inf"} +Inf"#).unwrap().value,
            f64::INFINITY
        );
        for junk in [
            "# TYPE x counter",
            "",
            "x{a=\"unterminated} 1",
            "x{a=\"1\"}",
            "x notanumber",
        ] {
            assert_eq!(parse_line(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn sums_inbound_service_numbers_and_endpoint_counts_across_sidecars() {
        let mut mesh = MeshCounters::default();
        mesh.add_exposition(SIDECAR);
        mesh.add_exposition(
            &SIDECAR.replace("weft_config_generation 2", "weft_config_generation 3"),
        );
        assert_eq!(
            mesh.services.len(),
            1,
            "outbound series are not services: {mesh:?}"
        );
        let v2 = &mesh.services["catalog-v2.default"];
        assert_eq!((v2.requests, v2.ok), (200, 196));
        assert_eq!(
            v2.latency,
            Buckets(vec![(0.001, 20), (0.005, 180), (f64::INFINITY, 200)])
        );
        let key = ("inventory.default".to_owned(), "127.0.3.2:15006".to_owned());
        assert_eq!(mesh.endpoints[&key], 98);
        assert_eq!(mesh.generations, Some((2, 3)));
    }

    #[test]
    fn deltas_subtract_counters_and_buckets() {
        let mut before = MeshCounters::default();
        before.add_exposition(SIDECAR);
        let mut after = MeshCounters::default();
        after.add_exposition(SIDECAR);
        after.add_exposition(SIDECAR);
        let delta = after.since(&before);
        assert_eq!(delta.services["catalog-v2.default"].requests, 100);
        assert_eq!(delta.services["catalog-v2.default"].latency.count(), 100);
        assert!(delta.endpoints.values().all(|c| *c == 49));
        assert_eq!(
            after.since(&after).services["catalog-v2.default"]
                .latency
                .quantile(0.5),
            None
        );
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_promql() {
        // 10 in (0, 1ms], 80 in (1ms, 5ms], 10 above 5ms.
        let b = Buckets(vec![(0.001, 10), (0.005, 90), (f64::INFINITY, 100)]);
        let close = |got: Option<f64>, want: f64| {
            let got = got.unwrap();
            assert!((got - want).abs() < 1e-12, "got {got}, want {want}");
        };
        close(b.quantile(0.05), 0.0005); // rank 5 of 10 in the first bucket, from 0
        close(b.quantile(0.5), 0.003); // rank 50: 40 of 80 into (1ms, 5ms]
        close(b.quantile(0.9), 0.005);
        close(b.quantile(0.99), 0.005); // in +Inf: the highest finite bound
        assert_eq!(Buckets::default().quantile(0.5), None);
        assert_eq!(b.quantile(1.5), None);
        // Empty leading buckets do not pull the estimate down to 0.
        let late = Buckets(vec![(0.001, 0), (0.002, 0), (0.004, 4), (f64::INFINITY, 4)]);
        close(late.quantile(0.0), 0.002);
        close(late.quantile(0.5), 0.003);
    }

    #[test]
    fn buckets_merge_by_bound() {
        let mut b = Buckets::default();
        b.add(f64::INFINITY, 3);
        b.add(0.01, 1);
        b.add(0.005, 1);
        b.add(0.01, 1);
        assert_eq!(b, Buckets(vec![(0.005, 1), (0.01, 2), (f64::INFINITY, 3)]));
    }
}
