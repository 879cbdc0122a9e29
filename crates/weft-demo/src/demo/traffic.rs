//! The traffic driver: `rate` GETs per second into a pod's sidecar inbound
//! listener (the frontend's; the deadline chain's entry), as an ingress
//! would send them, sent by `weft load`'s engine ([`weft_load::run`]).
//!
//! Open loop on a fixed schedule: request `n` is due at `start + n / rate`
//! whatever happened to earlier ones, so a slow mesh shows as latency rather
//! than as a quietly lower rate. Latency is measured from the due time
//! (coordinated omission corrected), so neither the mesh's stalls nor the
//! driver's own delays are hidden. A request that waits longer than
//! [`REQUEST_TIMEOUT`] for a free connection is counted late and not sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weft_load::{LoadSpec, RatePlan};

use super::scrape::Buckets;

/// A request unanswered after this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// "Until stopped": longer than any demo runs.
const FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Latency bucket bounds (seconds), the same as the sidecars' histograms.
const BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What the driver has done so far; read while it runs (the load engine
/// updates it once a second).
#[derive(Debug)]
pub(crate) struct TrafficStats {
    live: Arc<weft_load::Live>,
    /// Due but never sent (known when the driver stops).
    late: AtomicU64,
}

/// A copy of [`TrafficStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TrafficCounters {
    pub(crate) sent: u64,
    /// Finished: answered, failed or timed out.
    pub(crate) done: u64,
    /// Answered with a 2xx or 3xx.
    pub(crate) ok: u64,
    pub(crate) late: u64,
    /// Of answered and failed requests (seconds, cumulative).
    pub(crate) latency: Buckets,
}

impl TrafficCounters {
    pub(crate) fn since(&self, earlier: &TrafficCounters) -> TrafficCounters {
        TrafficCounters {
            sent: self.sent.saturating_sub(earlier.sent),
            done: self.done.saturating_sub(earlier.done),
            ok: self.ok.saturating_sub(earlier.ok),
            late: self.late.saturating_sub(earlier.late),
            latency: self.latency.since(&earlier.latency),
        }
    }
}

/// Cumulative bucket counts (seconds) of a nanosecond histogram.
fn buckets(h: &weft_load::Histogram<u64>) -> Buckets {
    let mut out: Vec<(f64, u64)> = BOUNDS
        .iter()
        .map(|le| (*le, h.count_between(0, (*le * 1e9) as u64)))
        .collect();
    out.push((f64::INFINITY, h.len()));
    Buckets(out)
}

impl TrafficStats {
    pub(crate) fn snapshot(&self) -> TrafficCounters {
        let s = self.live.snapshot();
        TrafficCounters {
            sent: s.sent,
            done: s.completed,
            ok: s.completed.saturating_sub(s.errors),
            late: self.late.load(Ordering::Relaxed),
            latency: buckets(&s.latency),
        }
    }
}

/// The running driver.
pub(crate) struct Driver {
    pub(crate) stats: Arc<TrafficStats>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<weft_load::Report, weft_load::LoadError>>,
}

/// Where the driver sends its requests.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The frontend sidecar's inbound listener.
    pub(crate) addr: SocketAddr,
    /// `Host` of every request.
    pub(crate) host: &'static str,
    pub(crate) path: &'static str,
    /// More headers on every request (a deadline).
    pub(crate) headers: &'static [(&'static str, &'static str)],
}

impl Driver {
    /// Starts sending `rate` requests per second (at least 1).
    pub(crate) fn start(target: Target, rate: u32) -> anyhow::Result<Driver> {
        let mut spec = LoadSpec::new(format!("http://{}{}", target.addr, target.path).parse()?);
        spec.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_static(target.host),
        );
        for (name, value) in target.headers {
            spec.headers.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        spec.rate = RatePlan::Steps(vec![f64::from(rate.max(1))]);
        spec.duration = FOREVER;
        spec.warmup = Duration::ZERO;
        // Enough connections for a second of backlog at a few ms each.
        spec.connections = (rate as usize / 50).clamp(16, 256);
        spec.timeout = REQUEST_TIMEOUT;
        spec.threads = 1;
        let live = Arc::new(weft_load::Live::new());
        spec.live = Some(live.clone());
        let stats = Arc::new(TrafficStats {
            live,
            late: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(weft_load::run(spec, async move {
            let _ = stopped.await;
        }));
        Ok(Driver { stats, stop, task })
    }

    /// Stops sending and waits (a little) for the answers still due.
    pub(crate) async fn stop(self) -> TrafficCounters {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(report)) => {
                let late = report
                    .error_counts
                    .get("expired_in_queue")
                    .copied()
                    .unwrap_or(0);
                self.stats.late.store(late, Ordering::Relaxed);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "demo traffic could not run"),
            Err(e) => tracing::warn!(error = %e, "demo traffic driver failed"),
        }
        self.stats.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let mut h = weft_load::Histogram::<u64>::new(3).unwrap();
        h.auto(true);
        h.record(500_000).unwrap(); // exactly a bound: that bucket
        h.record(4_000_000).unwrap();
        h.record(60_000_000_000).unwrap();
        let b = buckets(&h);
        assert_eq!(b.0[0], (0.0005, 1));
        assert_eq!(b.0[4], (0.005, 2));
        assert_eq!(b.0.last(), Some(&(f64::INFINITY, 3)));
    }
}
