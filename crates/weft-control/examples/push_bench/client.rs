//! Simulated sidecars: delta-ADS clients that subscribe the way Envoy does
//! (wildcard CDS and LDS; EDS for the clusters CDS names, RDS for the route
//! configurations the listeners name), ACK every response and report each
//! ACK with its time. Many streams share one HTTP/2 connection.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Node as PbNode;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use weft_xds::{DataPlane, TypeUrl};

/// Envoy's default HTTP/2 windows (256 MiB): the server is never held back
/// by the client's flow control, as with a real Envoy.
const ENVOY_WINDOW: u32 = 256 * 1024 * 1024;

/// One simulated sidecar.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    /// `node.cluster`: `NAME.NAMESPACE` of its Service.
    pub cluster: String,
    pub kind: DataPlane,
}

/// What the clients report to the benchmark.
#[derive(Debug)]
pub enum Event {
    /// A response was received and ACKed.
    Ack {
        client: u32,
        type_url: TypeUrl,
        /// `system_version_info` of the response.
        version: String,
        /// Encoded size of the response.
        bytes: usize,
        /// When the ACK was handed to the stream.
        at: SystemTime,
    },
    /// The stream ended or failed.
    Closed { client: u32, why: String },
}

/// `connections` HTTP/2 connections to the ADS server.
pub async fn connect(addr: SocketAddr, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .initial_stream_window_size(ENVOY_WINDOW)
        .initial_connection_window_size(ENVOY_WINDOW)
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(endpoint.connect().await?);
    }
    Ok(channels)
}

/// Starts one stream per node, numbering them from `first`; client `i`
/// uses connection `i / per_connection`.
pub fn spawn(
    channels: &[Channel],
    per_connection: usize,
    first: usize,
    nodes: &[Node],
    events: &mpsc::UnboundedSender<Event>,
) -> Vec<JoinHandle<()>> {
    nodes
        .iter()
        .cloned()
        .enumerate()
        .map(|(k, node)| {
            let i = first + k;
            let channel = channels[(i / per_connection).min(channels.len() - 1)].clone();
            let events = events.clone();
            let client = i as u32;
            tokio::spawn(async move {
                let why = match run(client, node, channel, &events).await {
                    Ok(()) => "stream ended".to_string(),
                    Err(e) => format!("{e:#}"),
                };
                let _ = events.send(Event::Closed { client, why });
            })
        })
        .collect()
}

fn request(t: TypeUrl) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: t.as_str().to_string(),
        ..Default::default()
    }
}

async fn run(
    client: u32,
    node: Node,
    channel: Channel,
    events: &mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    // Envoy's order: CDS first (carrying the node, sent only once per
    // stream), then LDS, both legacy wildcard (no names).
    let mut first = request(TypeUrl::Cluster);
    first.node = Some(PbNode {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        user_agent_name: node.kind.as_str().to_string(),
        ..Default::default()
    });
    tx.send(first).await?;
    tx.send(request(TypeUrl::Listener)).await?;
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let mut responses = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut state = Subscriptions::default();
    while let Some(response) = responses.message().await? {
        let Some(t) = TypeUrl::parse(&response.type_url) else {
            anyhow::bail!("response of unexpected type {}", response.type_url);
        };
        let bytes = response.encoded_len();
        let follow_up = state.apply(t, &response);
        tx.send(DeltaDiscoveryRequest {
            response_nonce: response.nonce.clone(),
            ..request(t)
        })
        .await?;
        let at = SystemTime::now();
        let _ = events.send(Event::Ack {
            client,
            type_url: t,
            version: response.system_version_info,
            bytes,
            at,
        });
        if let Some(follow_up) = follow_up {
            tx.send(follow_up).await?;
        }
    }
    Ok(())
}

/// What the client holds of LDS and CDS (the names they reference), and the
/// RDS and EDS names it has subscribed to.
#[derive(Default)]
struct Subscriptions {
    /// Listener -> route configurations it names.
    listeners: HashMap<String, Vec<String>>,
    /// Cluster -> its EDS name (EDS clusters only).
    clusters: HashMap<String, Option<String>>,
    routes: BTreeSet<String>,
    endpoints: BTreeSet<String>,
}

impl Subscriptions {
    /// Takes in a response; returns the RDS or EDS (un)subscription the
    /// new listeners or clusters call for.
    fn apply(&mut self, t: TypeUrl, r: &DeltaDiscoveryResponse) -> Option<DeltaDiscoveryRequest> {
        match t {
            TypeUrl::Listener => {
                for name in &r.removed_resources {
                    self.listeners.remove(name);
                }
                for res in &r.resources {
                    let routes = res
                        .resource
                        .as_ref()
                        .and_then(|any| Listener::decode(any.value.as_slice()).ok())
                        .map(|l| route_names(&l))
                        .unwrap_or_default();
                    self.listeners.insert(res.name.clone(), routes);
                }
                let wanted = self.listeners.values().flatten().cloned().collect();
                resubscribe(TypeUrl::RouteConfiguration, &mut self.routes, wanted)
            }
            TypeUrl::Cluster => {
                for name in &r.removed_resources {
                    self.clusters.remove(name);
                }
                for res in &r.resources {
                    let eds = res
                        .resource
                        .as_ref()
                        .and_then(|any| Cluster::decode(any.value.as_slice()).ok())
                        .and_then(|c| eds_name(&c));
                    self.clusters.insert(res.name.clone(), eds);
                }
                let wanted = self.clusters.values().flatten().cloned().collect();
                resubscribe(TypeUrl::ClusterLoadAssignment, &mut self.endpoints, wanted)
            }
            TypeUrl::RouteConfiguration | TypeUrl::ClusterLoadAssignment => None,
        }
    }
}

/// The request that moves `current` to `wanted`, if they differ.
fn resubscribe(
    t: TypeUrl,
    current: &mut BTreeSet<String>,
    wanted: BTreeSet<String>,
) -> Option<DeltaDiscoveryRequest> {
    let subscribe: Vec<String> = wanted.difference(current).cloned().collect();
    let unsubscribe: Vec<String> = current.difference(&wanted).cloned().collect();
    if subscribe.is_empty() && unsubscribe.is_empty() {
        return None;
    }
    *current = wanted;
    Some(DeltaDiscoveryRequest {
        resource_names_subscribe: subscribe,
        resource_names_unsubscribe: unsubscribe,
        ..request(t)
    })
}

/// The RDS names of a listener's HTTP connection managers.
fn route_names(l: &Listener) -> Vec<String> {
    l.filter_chains
        .iter()
        .flat_map(|fc| &fc.filters)
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any))
                if any.type_url.ends_with(".HttpConnectionManager") =>
            {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}

/// The EDS name of an EDS cluster (its `service_name`, else its name).
fn eds_name(c: &Cluster) -> Option<String> {
    let eds = cluster::DiscoveryType::Eds as i32;
    if c.cluster_discovery_type != Some(cluster::ClusterDiscoveryType::Type(eds)) {
        return None;
    }
    match c.eds_cluster_config.as_ref().map(|e| &e.service_name) {
        Some(s) if !s.is_empty() => Some(s.clone()),
        _ => Some(c.name.clone()),
    }
}
