//! The client task: streams, requests, ACK/NACK, subscriptions, publishing
//! and reconnecting (see the module doc of [`client`](super)).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{Node, node};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::cache::{Missing, ResourceCache};
use super::{ClientOptions, ClientStatus, ConfigSink};
use crate::node::ADMIN_METADATA_KEY;
use crate::resource::TypeUrl;

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of every NACK.
const INVALID_ARGUMENT: i32 = 3;

type Requests = mpsc::UnboundedSender<DeltaDiscoveryRequest>;

/// How a stream ended.
enum Ended {
    Stopped,
    Failed {
        error: String,
        /// The stream delivered at least one response (resets the backoff).
        served: bool,
    },
}

pub(super) struct Client<S> {
    opts: ClientOptions,
    sink: S,
    status: Arc<ClientStatus>,
    stop: watch::Receiver<bool>,
    cache: ResourceCache,
    /// Named subscriptions (RDS, EDS) sent on the current stream.
    subscribed: BTreeMap<TypeUrl, BTreeSet<String>>,
    /// The cache changed since the last publish.
    dirty: bool,
    /// When to publish even though references are missing.
    deadline: Option<Instant>,
    /// Missing names already waited for once; they do not hold back
    /// publishing again until they arrive.
    overdue: BTreeSet<Missing>,
}

impl<S: ConfigSink> Client<S> {
    pub(super) fn new(
        opts: ClientOptions,
        sink: S,
        status: Arc<ClientStatus>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Client {
            opts,
            sink,
            status,
            stop,
            cache: ResourceCache::default(),
            subscribed: BTreeMap::new(),
            dirty: false,
            deadline: None,
            overdue: BTreeSet::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            match self.stream().await {
                Ended::Stopped => return,
                Ended::Failed { error, served } => {
                    tracing::warn!(server = %self.opts.server, %error, "xDS stream down; serving the last config and reconnecting");
                    self.status.disconnected(error);
                    if served {
                        attempt = 0;
                    }
                    let delay = self.opts.backoff.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    if self.idle(delay).await {
                        return;
                    }
                    self.status.reconnecting();
                }
            }
        }
    }

    /// Waits `delay` (publishing on the warm deadline meanwhile); `true`
    /// when asked to stop.
    async fn idle(&mut self, delay: std::time::Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            let deadline = self.deadline;
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return false,
                _ = sleep_until(deadline), if deadline.is_some() => self.warm_timeout(),
                r = self.stop.changed() => if r.is_err() || *self.stop.borrow() { return true },
            }
        }
    }

    /// One stream, from connect to failure (or stop).
    async fn stream(&mut self) -> Ended {
        if *self.stop.borrow() {
            return Ended::Stopped;
        }
        let failed = |error: String| Ended::Failed {
            error,
            served: false,
        };
        let channel = match connect(&self.opts).await {
            Ok(c) => c,
            Err(e) => return failed(e),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribed.clear();
        self.open(&tx);
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let mut responses = match client
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return failed(format!("ADS stream refused: {status}")),
        };
        self.status.connected();
        tracing::info!(server = %self.opts.server, node = %self.opts.node_id, cluster = %self.opts.cluster, "xDS stream open (delta ADS)");
        let mut served = false;
        loop {
            let deadline = self.deadline;
            tokio::select! {
                msg = responses.message() => match msg {
                    Ok(Some(response)) => {
                        served = true;
                        self.on_response(response, &tx);
                    }
                    Ok(None) => return Ended::Failed { error: "the server ended the stream".into(), served },
                    Err(status) => return Ended::Failed { error: format!("stream failed: {status}"), served },
                },
                _ = sleep_until(deadline), if deadline.is_some() => self.warm_timeout(),
                r = self.stop.changed() => if r.is_err() || *self.stop.borrow() { return Ended::Stopped },
            }
        }
    }

    /// The first requests of a stream: the node, wildcard LDS and CDS with
    /// what the cache holds, then the named subscriptions.
    fn open(&mut self, tx: &Requests) {
        let node = Node {
            id: self.opts.node_id.clone(),
            cluster: self.opts.cluster.clone(),
            user_agent_name: self.opts.user_agent.clone(),
            user_agent_version_type: Some(node::UserAgentVersionType::UserAgentVersion(
                self.opts.user_agent_version.clone(),
            )),
            metadata: self.opts.admin.as_ref().map(|addr| Struct {
                fields: [(
                    ADMIN_METADATA_KEY.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(addr.clone())),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        };
        for (i, t) in [TypeUrl::Listener, TypeUrl::Cluster]
            .into_iter()
            .enumerate()
        {
            let _ = tx.send(DeltaDiscoveryRequest {
                node: (i == 0).then(|| node.clone()),
                type_url: t.as_str().into(),
                resource_names_subscribe: vec!["*".into()],
                initial_resource_versions: self.cache.versions(t),
                ..Default::default()
            });
        }
        self.follow_references(tx);
    }

    /// Keeps the RDS and EDS subscriptions equal to what the cache wants.
    fn follow_references(&mut self, tx: &Requests) {
        for t in [TypeUrl::RouteConfiguration, TypeUrl::ClusterLoadAssignment] {
            let wanted = self.cache.wanted(t);
            let first = !self.subscribed.contains_key(&t);
            let current = self.subscribed.entry(t).or_default();
            let subscribe: Vec<String> = wanted.difference(current).cloned().collect();
            let unsubscribe: Vec<String> = current.difference(&wanted).cloned().collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            let initial_resource_versions = if first {
                self.cache.versions(t)
            } else {
                Default::default()
            };
            let _ = tx.send(DeltaDiscoveryRequest {
                type_url: t.as_str().into(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                initial_resource_versions,
                ..Default::default()
            });
            *current = wanted;
        }
    }

    fn on_response(&mut self, response: DeltaDiscoveryResponse, tx: &Requests) {
        let Some(t) = TypeUrl::parse(&response.type_url) else {
            let message = format!("weft did not subscribe to {:?}", response.type_url);
            tracing::warn!(%message, "rejecting an xDS response");
            let _ = tx.send(nack(&response, message));
            return;
        };
        let sink = &mut self.sink;
        match self.cache.apply(t, &response, |r| sink.check(r)) {
            Err(message) => {
                tracing::warn!(
                    type_url = %t,
                    version = %response.system_version_info,
                    %message,
                    "rejecting xDS update (NACK); the last good config keeps serving"
                );
                self.status
                    .nacked(t, &response.system_version_info, &response.nonce, &message);
                let _ = tx.send(nack(&response, message));
            }
            Ok(applied) => {
                self.dirty |= applied.changed;
                self.follow_references(tx);
                self.dirty |= self.cache.forget_unwanted();
                self.publish_if_consistent();
                let count = self.cache.counts().get(&t).copied().unwrap_or(0);
                self.status.acked(t, &response.system_version_info, count);
                let _ = tx.send(DeltaDiscoveryRequest {
                    type_url: response.type_url,
                    response_nonce: response.nonce,
                    ..Default::default()
                });
            }
        }
    }

    fn publish_if_consistent(&mut self) {
        if !self.dirty {
            return;
        }
        let missing = self.cache.missing();
        self.overdue.retain(|m| missing.contains(m));
        let waiting: Vec<&Missing> = missing
            .iter()
            .filter(|m| !self.overdue.contains(m))
            .collect();
        if waiting.is_empty() {
            self.publish(true);
            return;
        }
        self.status
            .waiting_for(waiting.iter().map(|m| describe(m)).collect());
        if self.deadline.is_none() {
            tracing::debug!(missing = ?waiting, "waiting for referenced resources before publishing");
            self.deadline = Some(Instant::now() + self.opts.warm_timeout);
        }
    }

    fn warm_timeout(&mut self) {
        self.deadline = None;
        if !self.dirty {
            return;
        }
        let missing = self.cache.missing();
        let names: Vec<String> = missing.iter().map(describe).collect();
        tracing::warn!(
            missing = ?names,
            "publishing config without resources it references (not received in {:?}); their routes answer 404/503 until they arrive",
            self.opts.warm_timeout
        );
        self.overdue.extend(missing);
        self.publish(false);
    }

    fn publish(&mut self, complete: bool) {
        self.dirty = false;
        self.deadline = None;
        let result = self.sink.publish(self.cache.set(), complete);
        if let Err(e) = &result {
            tracing::error!(error = %e, "the data plane could not apply a config; it keeps the previous one");
        }
        self.status.waiting_for(Vec::new());
        self.status.published(result);
    }
}

fn describe((t, name): &Missing) -> String {
    format!("{} {name}", super::cache::kind(*t))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn nack(response: &DeltaDiscoveryResponse, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: INVALID_ARGUMENT,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

async fn connect(opts: &ClientOptions) -> Result<Channel, String> {
    let uri = if opts.server.contains("://") {
        opts.server.clone()
    } else {
        format!("http://{}", opts.server)
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| format!("bad xDS server address {:?}: {e}", opts.server))?
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        // A control plane that vanishes without closing the connection
        // (host down, network partition) is noticed within ~40 s.
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true);
    endpoint.connect().await.map_err(|e| {
        let mut s = format!("cannot connect to {}: {e}", opts.server);
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            s.push_str(&format!(": {inner}"));
            src = inner.source();
        }
        s
    })
}
