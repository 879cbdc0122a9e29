//! The ADS server engine: serves each connected node its [`ResourceSet`]
//! over `StreamAggregatedResources` (state of the world, [`sotw`]) and
//! `DeltaAggregatedResources` (incremental, [`delta`]), tracks ACKs and NACKs
//! per stream, and reports both in [`ServerStatus`].
//!
//! Shape of a stream: one task per stream owns all of its protocol state (no
//! shared locks). It waits on two things: the next request from the client
//! and a change of the node's `watch` channel. Responses go out through a
//! bounded channel (capacity [`STREAM_QUEUE`]) that tonic drains; a client
//! that stops reading fills its own queue and only its own task waits, while
//! its `watch` keeps only the newest set (pending updates coalesce).
//!
//! Pipelining: like go-control-plane, a new version of a type is sent as soon
//! as the set changes, without waiting for the ACK of the previous one. The
//! queue bound and the watch coalescing already keep a slow client from
//! being flooded, and not waiting keeps push latency at one round trip.
//!
//! Versions: `version_info` (SotW) and `system_version_info` (delta) are
//! [`ResourceSet::type_version`] of the node's whole set of that type, also
//! for named subscriptions (as go-control-plane uses the snapshot version),
//! so an ACKed version maps back to one config generation. Whether to push is
//! decided by comparing the subscribed resources' own versions, so a change
//! to a resource a client did not subscribe to sends it nothing.

mod delta;
mod sotw;
mod status;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::node::NodeInfo;
use crate::resource::{Resource, ResourceSet, TypeUrl};

pub use status::{
    AckHook, Counters, Nack, Sent, ServerStatus, StreamStatus, Transport, TypeStatus,
};

/// Responses queued per stream before its task waits for the client to read.
pub const STREAM_QUEUE: usize = 8;

/// `control_plane.identifier` in every response.
pub const CONTROL_PLANE_ID: &str = "weft";

/// Where the server gets each node's resources. The control plane groups
/// nodes (same kind + cluster share one watch), so a change wakes only the
/// streams whose set changed.
pub trait SnapshotSource: Send + Sync + 'static {
    fn watch(&self, node: &NodeInfo) -> watch::Receiver<Arc<ResourceSet>>;

    /// When the newest change was published, read by a stream woken by its
    /// watch: the start of `weft_xds_push_ack_seconds`. It must be updated
    /// before the watches are woken. `None`: push latency is not measured.
    fn published_at(&self) -> Option<Instant> {
        None
    }
}

/// The ADS service (both transports).
pub struct AdsServer<S: SnapshotSource> {
    source: Arc<S>,
    status: Arc<ServerStatus>,
}

impl<S: SnapshotSource> AdsServer<S> {
    pub fn new(source: Arc<S>, status: Arc<ServerStatus>) -> Self {
        AdsServer { source, status }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<S: SnapshotSource> AggregatedDiscoveryService for AdsServer<S> {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(sotw::run(
            self.source.clone(),
            self.status.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(delta::run(
            self.source.clone(),
            self.status.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The client went away (its response stream was dropped) or the stream
/// ended: the stream task stops.
#[derive(Debug)]
struct StreamClosed;

/// One ADS stream's protocol (state of the world or delta); [`serve`] runs
/// the event loop both share.
trait AdsStream {
    type Request;
    fn node_id(&self) -> &str;
    /// Resolves when the client dropped its response stream.
    fn sender_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static;
    async fn on_request(&mut self, req: Self::Request) -> Result<(), StreamClosed>;
    /// The node's set changed; `published` is when (see
    /// [`SnapshotSource::published_at`]).
    async fn on_set(
        &mut self,
        set: Arc<ResourceSet>,
        published: Option<Instant>,
    ) -> Result<(), StreamClosed>;
}

/// Handles the first request, then client requests and snapshot changes as
/// they come, until the client goes away.
async fn serve<S: AdsStream>(
    stream: &mut S,
    first: S::Request,
    mut requests: Streaming<S::Request>,
    watch: &mut watch::Receiver<Arc<ResourceSet>>,
    source: &impl SnapshotSource,
) -> Result<(), StreamClosed> {
    stream.on_request(first).await?;
    let mut watching = true;
    let closed = stream.sender_closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            msg = requests.message() => match msg {
                Ok(Some(req)) => stream.on_request(req).await?,
                Ok(None) => return Ok(()),
                Err(status) => {
                    tracing::debug!(node = %stream.node_id(), %status, "ADS stream broken");
                    return Ok(());
                }
            },
            changed = watch.changed(), if watching => match changed {
                Ok(()) => {
                    let set = watch.borrow_and_update().clone();
                    stream.on_set(set, source.published_at()).await?;
                }
                // The source dropped this node's watch: keep serving the
                // last set rather than cutting the client off.
                Err(_) => watching = false,
            },
            () = &mut closed => return Ok(()),
        }
    }
}

/// The rejection for a stream whose first request carries no node.
fn missing_node() -> Status {
    Status::invalid_argument(
        "the first request on an ADS stream must carry `node` (weft needs its id and cluster)",
    )
}

fn control_plane() -> Option<ControlPlane> {
    Some(ControlPlane {
        identifier: CONTROL_PLANE_ID.to_string(),
    })
}

/// Fresh nonces for one stream: `<stream id>-<n>`, unique per server process.
struct Nonces {
    stream_id: u64,
    next: u64,
}

impl Nonces {
    fn new(stream_id: u64) -> Nonces {
        Nonces { stream_id, next: 0 }
    }

    fn next(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", self.stream_id, self.next)
    }
}

/// What a client asked for of one type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Subscription {
    /// Everything of the type (legacy wildcard or `"*"`).
    wildcard: bool,
    /// Explicitly named resources (without `"*"`).
    names: BTreeSet<String>,
}

impl Subscription {
    fn is_empty(&self) -> bool {
        !self.wildcard && self.names.is_empty()
    }

    /// The subscribed resources the set has, ordered by name.
    fn selected<'a>(&self, set: &'a ResourceSet, t: TypeUrl) -> Vec<&'a Arc<Resource>> {
        if self.wildcard {
            set.of(t).collect()
        } else {
            self.names.iter().filter_map(|n| set.get(t, n)).collect()
        }
    }

    /// Whether the subscribed content of `t` is the same in both sets (same
    /// names, same resource versions). Pointer equality first: the control
    /// plane shares unchanged resources between sets, so this is cheap.
    fn unchanged(&self, old: &ResourceSet, new: &ResourceSet, t: TypeUrl) -> bool {
        fn same(a: Option<&Arc<Resource>>, b: Option<&Arc<Resource>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.version == b.version,
                _ => false,
            }
        }
        if self.wildcard {
            let empty = BTreeMap::new();
            let a = old.by_type.get(&t).unwrap_or(&empty);
            let b = new.by_type.get(&t).unwrap_or(&empty);
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, ra), (kb, rb))| ka == kb && same(Some(ra), Some(rb)))
        } else {
            self.names
                .iter()
                .all(|n| same(old.get(t, n), new.get(t, n)))
        }
    }
}

/// Logs the first few distinct unknown type URLs of a stream (a client
/// sending garbage must not flood the log or grow memory without bound).
#[derive(Default)]
struct UnknownTypes {
    logged: HashSet<String>,
}

impl UnknownTypes {
    const MAX_LOGGED: usize = 16;

    fn seen(&mut self, node: &NodeInfo, type_url: &str) {
        if self.logged.len() < Self::MAX_LOGGED && self.logged.insert(type_url.to_string()) {
            tracing::warn!(
                node = %node.id,
                cluster = %node.cluster,
                type_url,
                "ADS request for a resource type weft does not serve; ignoring it"
            );
        }
    }
}

/// Reads the first request of a stream, the node it names and the admin
/// address it announces. A stream whose first request has no node is
/// answered with `INVALID_ARGUMENT` (clients send the node only once, so
/// the server could never learn it).
async fn first_request<Req, Resp>(
    requests: &mut Streaming<Req>,
    tx: &mpsc::Sender<Result<Resp, Status>>,
    node_of: fn(&Req) -> Option<&Node>,
) -> Option<(NodeInfo, Option<String>, Req)> {
    let first = match requests.message().await {
        Ok(Some(first)) => first,
        Ok(None) => return None,
        Err(status) => {
            tracing::debug!(%status, "ADS stream ended before its first request");
            return None;
        }
    };
    match node_of(&first) {
        Some(node) => Some((
            NodeInfo::from_node(node),
            crate::node::announced_admin(node),
            first,
        )),
        None => {
            tracing::warn!("ADS stream without node in its first request; rejecting it");
            let _ = tx.send(Err(missing_node())).await;
            None
        }
    }
}

/// Sends one response; `Err` when the client is gone.
async fn send<T>(tx: &mpsc::Sender<Result<T, Status>>, response: T) -> Result<(), StreamClosed> {
    tx.send(Ok(response)).await.map_err(|_| StreamClosed)
}
