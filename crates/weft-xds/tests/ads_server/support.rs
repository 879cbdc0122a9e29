//! A loopback ADS server with a snapshot source the test controls, tonic
//! clients playing the data plane, and resource fixtures.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;
use tonic::transport::Channel;
use weft_xds::server::{AdsServer, ServerStatus, SnapshotSource, StreamStatus};
use weft_xds::{NodeInfo, Resource, ResourceSet, TypeUrl};

/// Bound for anything the test waits for (generous: CI machines are slow).
pub const WAIT: Duration = Duration::from_secs(20);

pub const LDS: TypeUrl = TypeUrl::Listener;
pub const RDS: TypeUrl = TypeUrl::RouteConfiguration;
pub const CDS: TypeUrl = TypeUrl::Cluster;
pub const EDS: TypeUrl = TypeUrl::ClusterLoadAssignment;

/// One watch per node cluster, like the control plane's node groups.
#[derive(Default)]
pub struct FakeSource {
    groups: Mutex<HashMap<String, watch::Sender<Arc<ResourceSet>>>>,
}

impl FakeSource {
    fn group(&self, cluster: &str) -> watch::Sender<Arc<ResourceSet>> {
        self.groups
            .lock()
            .unwrap()
            .entry(cluster.to_string())
            .or_insert_with(|| watch::channel(Arc::default()).0)
            .clone()
    }

    /// Makes `set` the resources of every node of `cluster`.
    pub fn publish(&self, cluster: &str, set: &ResourceSet) {
        self.group(cluster).send_replace(Arc::new(set.clone()));
    }
}

impl SnapshotSource for FakeSource {
    fn watch(&self, node: &NodeInfo) -> watch::Receiver<Arc<ResourceSet>> {
        self.group(&node.cluster).subscribe()
    }
}

pub struct Harness {
    pub source: Arc<FakeSource>,
    pub status: Arc<ServerStatus>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Harness {
    pub async fn start() -> Harness {
        let source = Arc::new(FakeSource::default());
        let status = Arc::new(ServerStatus::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = AdsServer::new(source.clone(), status.clone()).into_service();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Harness {
            source,
            status,
            addr,
            server,
        }
    }

    pub async fn client(&self) -> AggregatedDiscoveryServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        AggregatedDiscoveryServiceClient::new(channel)
    }

    /// Opens a SotW stream whose first request is `first`.
    pub async fn sotw(&self, first: DiscoveryRequest) -> Sotw {
        let (tx, rx) = mpsc::channel(64);
        tx.send(first).await.unwrap();
        let mut client = self.client().await;
        let rx = within(client.stream_aggregated_resources(ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        Sotw { tx, rx }
    }

    /// Opens a delta stream whose first request is `first`.
    pub async fn delta(&self, first: DeltaDiscoveryRequest) -> Delta {
        let (tx, rx) = mpsc::channel(64);
        tx.send(first).await.unwrap();
        let mut client = self.client().await;
        let rx = within(client.delta_aggregated_resources(ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        Delta { tx, rx }
    }

    /// The status entry of the stream of node `id`, if connected.
    pub fn stream(&self, id: &str) -> Option<StreamStatus> {
        self.status.streams().into_iter().find(|s| s.node_id == id)
    }

    /// Polls the server status until `cond` holds (bounded by [`WAIT`]).
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&ServerStatus) -> bool) {
        let poll = async {
            while !cond(&self.status) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(WAIT, poll).await.is_err() {
            panic!(
                "timed out waiting for {what}; status: {:#}",
                self.status.to_json()
            );
        }
    }
}

/// Runs `f` bounded by [`WAIT`].
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("timed out waiting for the server")
}

pub fn node(id: &str, cluster: &str) -> Node {
    Node {
        id: id.into(),
        cluster: cluster.into(),
        user_agent_name: "envoy".into(),
        ..Default::default()
    }
}

pub fn rpc_error(message: &str) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: 3,
        message: message.into(),
        details: vec![],
    })
}

/// A SotW client stream.
pub struct Sotw {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    pub async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        within(self.rx.message())
            .await
            .expect("stream failed")
            .expect("stream ended")
    }

    /// The next response, which must be of type `t`.
    pub async fn recv_type(&mut self, t: TypeUrl) -> DiscoveryResponse {
        let r = self.recv().await;
        assert_eq!(
            r.type_url,
            t.as_str(),
            "unexpected response: {}",
            describe(&r)
        );
        r
    }

    /// ACKs `r`, keeping the subscription `names`.
    pub async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            version_info: r.version_info.clone(),
            resource_names: strings(names),
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    /// Proves every earlier request has been handled: asks for `t` afresh
    /// (explicit wildcard, empty nonce) and expects that response next. A
    /// response an earlier request caused would arrive first.
    pub async fn barrier(&mut self, t: TypeUrl) -> DiscoveryResponse {
        self.send(sotw_req(t, &["*"])).await;
        self.recv_type(t).await
    }
}

/// A first (or subscription) SotW request: empty nonce.
pub fn sotw_req(t: TypeUrl, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: strings(names),
        type_url: t.as_str().into(),
        ..Default::default()
    }
}

/// A delta client stream.
pub struct Delta {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    pub async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        within(self.rx.message())
            .await
            .expect("stream failed")
            .expect("stream ended")
    }

    pub async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn subscribe(&self, t: TypeUrl, subscribe: &[&str], unsubscribe: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names_subscribe: strings(subscribe),
            resource_names_unsubscribe: strings(unsubscribe),
            ..Default::default()
        })
        .await;
    }
}

/// Names and versions of a delta response's resources, by name.
pub fn delta_resources(r: &DeltaDiscoveryResponse) -> Vec<(String, String)> {
    let mut v: Vec<_> = r
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    v.sort();
    v
}

pub fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A resource of type `t` named `name`; `rev` changes its content.
pub fn res(t: TypeUrl, name: &str, rev: u32) -> Resource {
    let tag = format!("rev-{rev}");
    match t {
        LDS => Resource::new(
            t,
            name,
            &Listener {
                name: name.into(),
                stat_prefix: tag,
                ..Default::default()
            },
        ),
        RDS => Resource::new(
            t,
            name,
            &RouteConfiguration {
                name: name.into(),
                internal_only_headers: vec![tag],
                ..Default::default()
            },
        ),
        CDS => Resource::new(
            t,
            name,
            &Cluster {
                name: name.into(),
                alt_stat_name: tag,
                ..Default::default()
            },
        ),
        EDS => Resource::new(
            t,
            name,
            &ClusterLoadAssignment {
                cluster_name: name.into(),
                endpoints: vec![LocalityLbEndpoints {
                    priority: rev,
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
    }
}

/// A set from (type, name, rev) triples.
pub fn set(items: &[(TypeUrl, &str, u32)]) -> ResourceSet {
    let mut s = ResourceSet::default();
    for (t, name, rev) in items {
        s.insert(res(*t, name, *rev));
    }
    s
}

/// The names of a SotW response's resources, decoded from the bytes sent.
pub fn names(r: &DiscoveryResponse) -> Vec<String> {
    let mut v: Vec<String> = r.resources.iter().map(resource_name).collect();
    v.sort();
    v
}

fn resource_name(any: &Any) -> String {
    let bytes = any.value.as_slice();
    match TypeUrl::parse(&any.type_url).expect("a type weft serves") {
        LDS => Listener::decode(bytes).unwrap().name,
        RDS => RouteConfiguration::decode(bytes).unwrap().name,
        CDS => Cluster::decode(bytes).unwrap().name,
        EDS => ClusterLoadAssignment::decode(bytes).unwrap().cluster_name,
    }
}

fn describe(r: &DiscoveryResponse) -> String {
    format!(
        "{} version {} names {:?}",
        r.type_url,
        r.version_info,
        names(r)
    )
}
