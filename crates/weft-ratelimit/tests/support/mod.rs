//! Shared by the integration tests: a gRPC client, in-process servers on
//! loopback, and window-boundary care.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use weft_model::{FailureMode, GlobalRateLimit, RateLimitUnit};
use weft_ratelimit::RateLimitServer;
use weft_ratelimit::proto::{
    Code, Entry, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, RateLimitServiceClient,
};

pub type Client = RateLimitServiceClient<Channel>;

pub fn limit(descriptor: &str, n: u32, unit: RateLimitUnit, mode: FailureMode) -> GlobalRateLimit {
    GlobalRateLimit {
        requests_per_unit: n,
        unit,
        failure_mode: mode,
        descriptor: descriptor.to_string(),
        per_source: false,
    }
}

pub fn request(policy: &str, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: "weft".to_string(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "weft-policy".to_string(),
                value: policy.to_string(),
            }],
            ..Default::default()
        }],
        hits_addend: hits,
    }
}

/// A server answering on a loopback port until the handle is aborted.
pub struct Served {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(server: RateLimitServer) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    Served { addr, task }
}

pub async fn client(addr: SocketAddr) -> Client {
    weft_test_support::wait_until(
        "the rate-limit service to accept",
        Duration::from_secs(10),
        || RateLimitServiceClient::connect(format!("http://{addr}")),
    )
    .await
    .unwrap()
}

pub async fn ask(client: &mut Client, req: RateLimitRequest) -> RateLimitResponse {
    client.should_rate_limit(req).await.unwrap().into_inner()
}

pub fn is_ok(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::Ok as i32
}

pub fn header<'r>(r: &'r RateLimitResponse, key: &str) -> Option<&'r str> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key == key)
        .map(|h| h.value.as_str())
}

pub fn granted(r: &RateLimitResponse) -> u32 {
    r.statuses[0].quota.as_ref().map_or(0, |q| q.requests)
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// The window index of `unit_secs` now.
pub fn window(unit_secs: u64) -> u64 {
    now().as_secs() / unit_secs
}

/// Runs `round` inside one window of `unit_secs`: waits until at least
/// `need` is left in the current window, and runs the round again (fresh
/// window, fresh counters) if the window changed during it anyway.
pub async fn in_one_window<T, F, Fut>(unit_secs: u64, need: Duration, mut round: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    for _ in 0..5 {
        weft_test_support::wait_until(
            "enough time left in the window",
            Duration::from_secs(unit_secs + 5),
            || {
                let n = now();
                let end = Duration::from_secs((n.as_secs() / unit_secs + 1) * unit_secs);
                std::future::ready(end - n >= need)
            },
        )
        .await
        .unwrap();
        let before = window(unit_secs);
        let out = round().await;
        if window(unit_secs) == before {
            return out;
        }
    }
    panic!("five rounds in a row crossed a {unit_secs}s window boundary");
}

/// A metric's value in OpenMetrics text (first line starting with `series `).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub fn metrics_of(server: &RateLimitServer) -> String {
    let mut out = String::new();
    server.encode_metrics(&mut out);
    out
}
