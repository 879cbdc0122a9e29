//! Incremental ADS (`DeltaAggregatedResources`): per type, the server
//! tracks what the client subscribed to and which version of each resource
//! it has, and sends only the difference: changed resources in `resources`,
//! vanished ones in `removed_resources`.
//!
//! Subscriptions are deltas themselves, so they are applied from every
//! request, also one whose nonce is stale; only the ACK/NACK meaning of a
//! stale nonce is ignored. A subscribed name the set does not have is sent
//! once in `removed_resources` (the spec's "does not exist" signal).
//!
//! NACK: the client keeps what it had, so the entries the rejected response
//! changed are restored, and the rejected content is remembered so it is
//! not sent again; a different version (a fix, or a revert to another
//! version) is.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as PbResource,
};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::status::{ServerStatus, StreamHandle, Transport};
use super::{
    Nonces, SnapshotSource, StreamClosed, Subscription, UnknownTypes, control_plane, first_request,
    send,
};
use crate::node::NodeInfo;
use crate::resource::{Resource, ResourceSet, TypeUrl};

type Tx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// What the client holds of one resource: `Some(version)`, or `None` when
/// it was told the resource does not exist (or was removed) while still
/// subscribed by name.
type Held = Option<String>;

/// Serves one delta stream until the client goes away.
pub(super) async fn run<S: SnapshotSource>(
    source: Arc<S>,
    status: Arc<ServerStatus>,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: Tx,
) {
    let Some((node, admin, first)) = first_request(&mut requests, &tx, |r| r.node.as_ref()).await
    else {
        return;
    };
    let mut watch = source.watch(&node);
    let current = watch.borrow_and_update().clone();
    let handle = status.open_stream(&node, admin, Transport::Delta);
    tracing::info!(node = %node.id, cluster = %node.cluster, kind = node.kind.as_str(), "ADS stream opened (delta)");
    let mut stream = DeltaStream {
        nonces: Nonces::new(handle.stream_id()),
        node,
        current,
        handle,
        types: BTreeMap::new(),
        unknown: UnknownTypes::default(),
        tx,
    };
    let _ = super::serve(&mut stream, first, requests, &mut watch, &*source).await;
    tracing::info!(node = %stream.node.id, "ADS stream closed (delta)");
}

#[derive(Default)]
struct TypeState {
    sub: Subscription,
    /// What the client has (or has been sent and not rejected).
    client: HashMap<String, Held>,
    /// Content the client rejected, per name; not sent again.
    rejected: HashMap<String, Held>,
    /// The last response, until the client ACKs or NACKs it.
    pending: Option<Pending>,
    sent_version: String,
}

/// The last response: what it changed in `client`, to undo on NACK.
struct Pending {
    nonce: String,
    /// (name, entry before the response, what the response said)
    changes: Vec<(String, Option<Held>, Held)>,
}

struct DeltaStream {
    node: NodeInfo,
    current: Arc<ResourceSet>,
    handle: StreamHandle,
    nonces: Nonces,
    types: BTreeMap<TypeUrl, TypeState>,
    unknown: UnknownTypes,
    tx: Tx,
}

impl DeltaStream {
    async fn handle_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), StreamClosed> {
        let Some(t) = TypeUrl::parse(&req.type_url) else {
            self.handle.unknown_type();
            self.unknown.seen(&self.node, &req.type_url);
            return Ok(());
        };
        let first = !self.types.contains_key(&t);
        let state = self.types.entry(t).or_default();

        if !req.response_nonce.is_empty() {
            let latest = state.pending.as_ref().map(|p| p.nonce.as_str());
            if latest == Some(req.response_nonce.as_str()) {
                let pending = state.pending.take();
                match &req.error_detail {
                    Some(error) => {
                        tracing::warn!(
                            node = %self.node.id,
                            cluster = %self.node.cluster,
                            %t,
                            rejected_version = %state.sent_version,
                            message = %error.message,
                            "client rejected config (NACK)"
                        );
                        if let Some(p) = pending {
                            state.undo(p);
                        }
                        self.handle.nacked(
                            t,
                            &state.sent_version,
                            &req.response_nonce,
                            &error.message,
                        );
                    }
                    None => self.handle.acked(t, &state.sent_version),
                }
            } else {
                tracing::debug!(node = %self.node.id, %t, nonce = %req.response_nonce, "stale or unknown nonce; not an ACK/NACK");
            }
        }

        let resubscribed = state.apply_subscription(t, first, req);
        self.handle
            .subscribed(t, state.sub.wildcard, state.sub.names.len());
        // A pure ACK/NACK needs no response: changes of the set are pushed
        // from on_set, and a NACK leaves nothing new to send.
        if first || resubscribed {
            self.respond(t, first, None).await?;
        }
        Ok(())
    }

    async fn apply_set(
        &mut self,
        set: Arc<ResourceSet>,
        published: Option<Instant>,
    ) -> Result<(), StreamClosed> {
        let old = std::mem::replace(&mut self.current, set);
        if Arc::ptr_eq(&old, &self.current) {
            return Ok(());
        }
        let due: Vec<TypeUrl> = self
            .types
            .iter()
            .filter(|(t, s)| !s.sub.is_empty() && !s.sub.unchanged(&old, &self.current, **t))
            .map(|(t, _)| *t)
            .collect();
        for t in due {
            self.respond(t, false, published).await?;
        }
        Ok(())
    }

    /// Sends what the client of type `t` lacks, if anything. The first
    /// wildcard request is always answered (even empty) so a client with an
    /// empty config can finish initializing.
    /// `push`: when the config change that is why was published.
    async fn respond(
        &mut self,
        t: TypeUrl,
        first: bool,
        push: Option<Instant>,
    ) -> Result<(), StreamClosed> {
        let Some(state) = self.types.get_mut(&t) else {
            return Ok(());
        };
        let (changed, removed) = state.diff(&self.current, t);
        if changed.is_empty() && removed.is_empty() && !(first && state.sub.wildcard) {
            return Ok(());
        }
        let nonce = self.nonces.next();
        let version = self.current.type_version(t);
        state.record_sent(&nonce, &changed, &removed);
        state.sent_version = version.clone();
        let response = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources: changed
                .iter()
                .map(|r| PbResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: t.as_str().to_string(),
            removed_resources: removed,
            nonce: nonce.clone(),
            control_plane: control_plane(),
            ..Default::default()
        };
        self.handle.sent(
            t,
            &version,
            &nonce,
            response.resources.len(),
            response.encoded_len(),
            push,
        );
        send(&self.tx, response).await
    }
}

impl TypeState {
    /// Applies a request's subscription changes; `true` if the client
    /// subscribed to something (which deserves a response).
    fn apply_subscription(&mut self, t: TypeUrl, first: bool, req: DeltaDiscoveryRequest) -> bool {
        if first {
            // A reconnecting client tells what it already has.
            for (name, version) in req.initial_resource_versions {
                self.client.insert(name, Some(version));
            }
            // Legacy wildcard: the first LDS/CDS request names nothing.
            if t.is_wildcard_capable() && req.resource_names_subscribe.is_empty() {
                self.sub.wildcard = true;
            }
        }
        let subscribed = !req.resource_names_subscribe.is_empty();
        for name in req.resource_names_subscribe {
            if name == "*" {
                self.sub.wildcard = true;
                continue;
            }
            // A (re)subscription asks for the resource again, unless the
            // client just told us it has it.
            if !(first && self.client.contains_key(&name)) {
                self.client.remove(&name);
                self.rejected.remove(&name);
            }
            self.sub.names.insert(name);
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                self.sub.wildcard = false;
                let names = &self.sub.names;
                self.client.retain(|n, _| names.contains(n));
                self.rejected.retain(|n, _| names.contains(n));
                continue;
            }
            self.sub.names.remove(&name);
            if !self.sub.wildcard {
                self.client.remove(&name);
                self.rejected.remove(&name);
            }
        }
        subscribed
    }

    /// What the client lacks: subscribed resources whose version differs
    /// from the one it holds, and names it holds (or asked for and was
    /// never told about) that the set no longer has. Content the client
    /// rejected is left out.
    fn diff(&self, set: &ResourceSet, t: TypeUrl) -> (Vec<Arc<Resource>>, Vec<String>) {
        let mut changed = Vec::new();
        for r in self.sub.selected(set, t) {
            let held = matches!(self.client.get(&r.name), Some(Some(v)) if *v == r.version);
            let rejected = matches!(self.rejected.get(&r.name), Some(Some(v)) if *v == r.version);
            if !held && !rejected {
                changed.push(r.clone());
            }
        }
        let removal_rejected = |n: &str| matches!(self.rejected.get(n), Some(None));
        let mut removed: Vec<String> = self
            .client
            .iter()
            .filter(|(n, held)| held.is_some() && set.get(t, n).is_none() && !removal_rejected(n))
            .map(|(n, _)| n.clone())
            .collect();
        removed.extend(
            self.sub
                .names
                .iter()
                .filter(|n| {
                    !self.client.contains_key(*n) && set.get(t, n).is_none() && !removal_rejected(n)
                })
                .cloned(),
        );
        removed.sort();
        (changed, removed)
    }

    /// Records a response as held by the client (until a NACK says no).
    fn record_sent(&mut self, nonce: &str, changed: &[Arc<Resource>], removed: &[String]) {
        let mut changes = Vec::with_capacity(changed.len() + removed.len());
        for r in changed {
            let held = Some(r.version.clone());
            let before = self.client.insert(r.name.clone(), held.clone());
            self.rejected.remove(&r.name);
            changes.push((r.name.clone(), before, held));
        }
        for name in removed {
            // Named subscriptions remember "does not exist" so it is said
            // once; wildcard-only entries are simply forgotten.
            let before = if self.sub.names.contains(name) {
                self.client.insert(name.clone(), None)
            } else {
                self.client.remove(name)
            };
            self.rejected.remove(name);
            changes.push((name.clone(), before, None));
        }
        self.pending = Some(Pending {
            nonce: nonce.to_string(),
            changes,
        });
    }

    /// The client rejected the pending response: it still holds what it
    /// held before, and the rejected content is not sent again.
    fn undo(&mut self, pending: Pending) {
        for (name, before, sent) in pending.changes {
            match before {
                Some(held) => self.client.insert(name.clone(), held),
                None => self.client.remove(&name),
            };
            self.rejected.insert(name, sent);
        }
    }
}

impl super::AdsStream for DeltaStream {
    type Request = DeltaDiscoveryRequest;

    fn node_id(&self) -> &str {
        &self.node.id
    }
    fn sender_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tx = self.tx.clone();
        async move { tx.closed().await }
    }
    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), StreamClosed> {
        self.handle_request(req).await
    }
    async fn on_set(
        &mut self,
        set: Arc<ResourceSet>,
        published: Option<Instant>,
    ) -> Result<(), StreamClosed> {
        self.apply_set(set, published).await
    }
}
