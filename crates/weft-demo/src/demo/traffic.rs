//! The traffic driver: `rate` GETs per second into the frontend's sidecar
//! inbound listener, as an ingress would send them.
//!
//! Open loop on a fixed schedule: request `n` is due at `start + n / rate`
//! whatever happened to earlier ones, so a slow mesh shows as latency rather
//! than as a quietly lower rate. A request that cannot leave within
//! [`LATE_AFTER`] of its due time (the driver fell behind, or too many are
//! already in flight) is counted late and not sent. Latency is measured from
//! the due time, so the driver's own delays are charged, not hidden.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::scrape::Buckets;

/// How far behind its due time a request may still be sent.
const LATE_AFTER: Duration = Duration::from_millis(10);
/// Requests in flight at most; beyond this, due requests count as late.
const MAX_IN_FLIGHT: usize = 1024;
/// A request unanswered after this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stopping waits for in-flight requests before abandoning them.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Latency bucket bounds (seconds), the same as the sidecars' histograms.
const BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What the driver has done so far; read while it runs.
#[derive(Debug)]
pub(crate) struct TrafficStats {
    sent: AtomicU64,
    /// Finished: answered, failed or timed out.
    done: AtomicU64,
    /// Answered, not 5xx.
    ok: AtomicU64,
    /// Due but not sent on time.
    late: AtomicU64,
    /// Per bucket (not cumulative), `+Inf` last.
    latency: Vec<AtomicU64>,
}

/// A copy of [`TrafficStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TrafficCounters {
    pub(crate) sent: u64,
    pub(crate) done: u64,
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

impl TrafficStats {
    fn new() -> Self {
        TrafficStats {
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            late: AtomicU64::new(0),
            latency: (0..=BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = BOUNDS.partition_point(|b| *b < secs);
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TrafficCounters {
        let mut cumulative = 0;
        let bounds = BOUNDS.iter().copied().chain([f64::INFINITY]);
        let latency = bounds
            .zip(&self.latency)
            .map(|(le, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (le, cumulative)
            })
            .collect();
        TrafficCounters {
            sent: self.sent.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
            latency: Buckets(latency),
        }
    }
}

/// The running driver.
pub(crate) struct Driver {
    pub(crate) stats: Arc<TrafficStats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Where the driver sends its requests.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The frontend sidecar's inbound listener.
    pub(crate) addr: SocketAddr,
    /// `Host` of every request.
    pub(crate) host: &'static str,
    pub(crate) path: &'static str,
}

impl Driver {
    /// Starts sending `rate` requests per second (at least 1).
    pub(crate) fn start(target: Target, rate: u32) -> anyhow::Result<Driver> {
        let request = Prepared {
            uri: format!("http://{}{}", target.addr, target.path).parse()?,
            host: HeaderValue::from_static(target.host),
        };
        let stats = Arc::new(TrafficStats::new());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(drive(request, rate.max(1), stats.clone(), stopped));
        Ok(Driver { stats, stop, task })
    }

    /// Stops sending and waits (a little) for the answers still due.
    pub(crate) async fn stop(self) -> TrafficCounters {
        self.stop.send_replace(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "demo traffic driver failed");
        }
        self.stats.snapshot()
    }
}

struct Prepared {
    uri: Uri,
    host: HeaderValue,
}

async fn drive(
    request: Prepared,
    rate: u32,
    stats: Arc<TrafficStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let request = Arc::new(request);
    let mut in_flight = JoinSet::new();
    let start = Instant::now();
    let mut n: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(n as f64 / f64::from(rate));
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.changed() => break,
            }
        } else {
            // Behind schedule: catch up, but give the runtime its turns.
            tokio::task::consume_budget().await;
            if *stop.borrow() {
                break;
            }
        }
        n += 1;
        // Reap finished requests so the set holds only those in flight.
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= MAX_IN_FLIGHT || due.elapsed() > LATE_AFTER {
            stats.late.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        stats.sent.fetch_add(1, Ordering::Relaxed);
        let (client, request, stats) = (client.clone(), request.clone(), stats.clone());
        in_flight.spawn(async move {
            let ok = tokio::time::timeout(REQUEST_TIMEOUT, send(&client, &request))
                .await
                .unwrap_or(false);
            stats.observe(due.elapsed());
            if ok {
                stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            stats.done.fetch_add(1, Ordering::Relaxed);
        });
    }
    if tokio::time::timeout(STOP_GRACE, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            in_flight = in_flight.len(),
            "demo traffic: requests still unanswered at stop; abandoning them"
        );
    }
    in_flight.shutdown().await;
}

/// One GET; `true` when it was answered with anything but a 5xx.
async fn send(client: &Client<HttpConnector, Empty<Bytes>>, request: &Prepared) -> bool {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = request.uri.clone();
    req.headers_mut().insert(HOST, request.host.clone());
    let Ok(response) = client.request(req).await else {
        return false;
    };
    let ok = !response.status().is_server_error();
    // Read the body so the connection goes back to the pool.
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return false;
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let stats = TrafficStats::new();
        stats.observe(Duration::from_micros(500)); // exactly a bound: that bucket
        stats.observe(Duration::from_millis(4));
        stats.observe(Duration::from_secs(60));
        let b = stats.snapshot().latency;
        assert_eq!(b.0[0], (0.0005, 1));
        assert_eq!(b.0[4], (0.005, 2));
        assert_eq!(b.0.last(), Some(&(f64::INFINITY, 3)));
    }
}
