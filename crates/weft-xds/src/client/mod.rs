//! The ADS client engine (incremental / delta xDS): what a data plane runs
//! to take its config from a control plane.
//!
//! One task owns everything (no shared locks): it opens a
//! `DeltaAggregatedResources` stream, sends the node on the first request,
//! subscribes to every Listener and Cluster (wildcard), then to the
//! RouteConfigurations the listeners name and the ClusterLoadAssignments of
//! the EDS clusters, as Envoy does, and keeps the subscriptions following
//! the listeners and clusters.
//!
//! Each response is accepted whole or rejected whole ([`cache`]): every
//! resource must decode and pass the data plane's [`ConfigSink::check`].
//! Accepted responses are ACKed, rejected ones NACKed with an `error_detail`
//! naming each resource and its problem; a rejected update changes nothing,
//! so the last good config keeps serving.
//!
//! # Publishing consistent sets
//!
//! The data plane gets the whole set ([`ConfigSink::publish`]) once it is
//! consistent: LDS and CDS have answered and every RouteConfiguration a
//! listener names, every cluster a route or listener sends to, and the
//! assignment of every EDS cluster is present (or the server said it does
//! not exist). Updates usually arrive in a burst (a new Service: routes,
//! then its cluster, then its endpoints), so the client waits for the rest,
//! up to [`ClientOptions::warm_timeout`]. When that passes, the set is
//! published as it is, with the gaps as the data plane treats them (weft:
//! no routes -> 404, a missing cluster or assignment -> no endpoints, 503),
//! and names already waited for do not hold back later updates.
//!
//! # Control plane down
//!
//! The stream is re-opened with exponential backoff (from
//! [`Backoff::min`] doubling to [`Backoff::max`], each wait drawn from its
//! upper half so restarting sidecars do not reconnect in lockstep). The new
//! stream sends `initial_resource_versions` of everything cached, so the
//! server sends only what changed meanwhile. The data plane keeps serving
//! the last published set throughout.

mod cache;
mod deps;
mod session;
mod status;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::resource::{Resource, ResourceSet};

pub use cache::{Applied, Missing, ResourceCache};
pub use status::{ClientStatus, SentNack, TypeStatus};

/// Where the client connects and who it says it is.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The ADS server: `HOST:PORT` (plaintext gRPC) or an `http://` URI.
    pub server: String,
    /// `node.id`: this instance.
    pub node_id: String,
    /// `node.cluster`: the Service this data plane serves (`NAME` or
    /// `NAME.NAMESPACE`).
    pub cluster: String,
    /// `node.user_agent_name` (the control plane picks the config form by it).
    pub user_agent: String,
    /// `node.user_agent_version`.
    pub user_agent_version: String,
    pub backoff: Backoff,
    /// How long a published set may wait for resources it references.
    pub warm_timeout: Duration,
    /// TCP connect timeout to the server.
    pub connect_timeout: Duration,
    /// The data plane's admin (metrics) address, `HOST:PORT`, announced in
    /// `node.metadata` under [`crate::node::ADMIN_METADATA_KEY`] so the control plane
    /// can list it for Prometheus discovery. See [`announce_address`].
    pub admin: Option<String>,
}

impl ClientOptions {
    /// A weft node: `user_agent_name: weft`, default timings.
    pub fn new(
        server: impl Into<String>,
        node_id: impl Into<String>,
        cluster: impl Into<String>,
    ) -> Self {
        ClientOptions {
            server: server.into(),
            node_id: node_id.into(),
            cluster: cluster.into(),
            user_agent: "weft".into(),
            user_agent_version: env!("CARGO_PKG_VERSION").into(),
            backoff: Backoff::default(),
            warm_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            admin: None,
        }
    }
}

/// The address to announce for a listener bound to `bound`, as seen from
/// the control plane at `server` (`HOST:PORT` or an `http://` URI). A
/// specific address is announced as it is. A wildcard bind (`0.0.0.0`,
/// `[::]`) announces the local address of the interface that routes to the
/// control plane (a connected UDP socket: no packet is sent): whoever runs
/// next to the control plane, like its Prometheus, can reach that one.
/// Falls back to loopback when the server cannot be resolved.
pub async fn announce_address(bound: SocketAddr, server: &str) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let ip = route_source(server, bound.is_ipv6())
        .await
        .unwrap_or(if bound.is_ipv6() {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        });
    SocketAddr::new(ip, bound.port()).to_string()
}

/// The local address the kernel would send from to reach `server`.
async fn route_source(server: &str, v6: bool) -> Option<IpAddr> {
    let authority = server
        .split_once("://")
        .map_or(server, |(_, rest)| rest)
        .split('/')
        .next()?;
    let target = tokio::net::lookup_host(authority)
        .await
        .ok()?
        .find(|a| a.is_ipv6() == v6)?;
    let any: SocketAddr = if v6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(any).await.ok()?;
    socket.connect(target).await.ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Reconnect waits: `min` doubling per failed attempt up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait before reconnect attempt `attempt` (0 = first retry): a
    /// random point in the upper half of `min * 2^attempt`, capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let half = base / 2;
        half + half.mul_f64(random_unit())
    }
}

/// A random number in [0, 1): std's per-process random hash keys, so no
/// RNG dependency for one jitter draw per reconnect.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The data plane behind the client.
pub trait ConfigSink: Send {
    /// Whether the data plane can apply `resource` (new or changed). An
    /// error rejects the whole response carrying it; say what and why.
    fn check(&mut self, resource: &Arc<Resource>) -> Result<(), String>;

    /// Serve `set` from now on. `complete` is false when the set was
    /// published after [`ClientOptions::warm_timeout`] with references
    /// missing. An error is logged and shown; the previous config stays.
    fn publish(&mut self, set: &ResourceSet, complete: bool) -> Result<(), String>;
}

/// Runs the client until `stop` turns true (or its sender is dropped).
pub async fn run<S: ConfigSink>(
    opts: ClientOptions,
    sink: S,
    status: Arc<ClientStatus>,
    stop: watch::Receiver<bool>,
) {
    session::Client::new(opts, sink, status, stop).run().await
}
