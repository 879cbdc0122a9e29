//! State-of-the-world ADS (`StreamAggregatedResources`): every response
//! carries all the subscribed resources of its type, and for LDS/CDS a
//! resource missing from a response is a removal.
//!
//! Nonces follow the xDS spec: a request whose `response_nonce` is not the
//! last one sent for its type is stale and ignored entirely (its
//! subscription too: the client sends a fresh request after it sees the
//! latest response). A request with an empty nonce is an initial request (a
//! new subscription, or a reconnect carrying the version the client has) and
//! is always answered: Envoy and gRPC wait for a response to it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::status::{ServerStatus, StreamHandle, Transport};
use super::{
    Nonces, SnapshotSource, StreamClosed, Subscription, UnknownTypes, control_plane, first_request,
    send,
};
use crate::node::NodeInfo;
use crate::resource::{ResourceSet, TypeUrl};

type Tx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

/// Serves one SotW stream until the client goes away.
pub(super) async fn run<S: SnapshotSource>(
    source: Arc<S>,
    status: Arc<ServerStatus>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: Tx,
) {
    let Some((node, admin, first)) = first_request(&mut requests, &tx, |r| r.node.as_ref()).await
    else {
        return;
    };
    let mut watch = source.watch(&node);
    let current = watch.borrow_and_update().clone();
    let handle = status.open_stream(&node, admin, Transport::Sotw);
    tracing::info!(node = %node.id, cluster = %node.cluster, kind = node.kind.as_str(), "ADS stream opened (sotw)");
    let mut stream = SotwStream {
        nonces: Nonces::new(handle.stream_id()),
        node,
        current,
        handle,
        types: BTreeMap::new(),
        unknown: UnknownTypes::default(),
        tx,
    };
    let _ = super::serve(&mut stream, first, requests, &mut watch, &*source).await;
    tracing::info!(node = %stream.node.id, "ADS stream closed (sotw)");
}

/// Per type: what the client asked for and what it was last sent.
#[derive(Default)]
struct TypeState {
    sub: Subscription,
    /// Still in the legacy wildcard mode (the client has never named a
    /// resource of this type); once it has, an empty list means "nothing".
    legacy_wildcard: bool,
    /// The nonce of the last response; `None` before the first.
    nonce: Option<String>,
    sent_version: String,
}

struct SotwStream {
    node: NodeInfo,
    /// The set every response is built from; replaced on a watch change.
    current: Arc<ResourceSet>,
    handle: StreamHandle,
    nonces: Nonces,
    types: BTreeMap<TypeUrl, TypeState>,
    unknown: UnknownTypes,
    tx: Tx,
}

impl SotwStream {
    async fn handle_request(&mut self, req: DiscoveryRequest) -> Result<(), StreamClosed> {
        let Some(t) = TypeUrl::parse(&req.type_url) else {
            self.handle.unknown_type();
            self.unknown.seen(&self.node, &req.type_url);
            return Ok(());
        };
        let nonce = req.response_nonce.as_str();
        let last_nonce = self.types.get(&t).and_then(|s| s.nonce.as_deref());
        if !nonce.is_empty() && last_nonce.is_some() && last_nonce != Some(nonce) {
            tracing::debug!(node = %self.node.id, %t, nonce, "stale nonce; ignoring the request");
            return Ok(());
        }
        if !nonce.is_empty() && last_nonce == Some(nonce) {
            self.on_reply(t, &req);
        }

        let prev = self.types.get(&t);
        let (sub, legacy_wildcard) =
            subscription(t, &req.resource_names, prev.map(|p| p.legacy_wildcard));
        let changed = prev.is_none_or(|p| p.sub != sub);
        self.handle.subscribed(t, sub.wildcard, sub.names.len());
        let state = self.types.entry(t).or_default();
        state.sub = sub;
        state.legacy_wildcard = legacy_wildcard;
        if (changed || nonce.is_empty()) && !state.sub.is_empty() {
            self.respond(t, None).await?;
        }
        Ok(())
    }

    /// An ACK or NACK of the last response of type `t`.
    fn on_reply(&mut self, t: TypeUrl, req: &DiscoveryRequest) {
        let Some(state) = self.types.get(&t) else {
            return;
        };
        match &req.error_detail {
            Some(error) => {
                tracing::warn!(
                    node = %self.node.id,
                    cluster = %self.node.cluster,
                    %t,
                    rejected_version = %state.sent_version,
                    kept_version = %req.version_info,
                    message = %error.message,
                    "client rejected config (NACK)"
                );
                // Not resent: the next response of this type goes out when
                // the subscribed content changes (a fix) or the
                // subscription does.
                self.handle
                    .nacked(t, &state.sent_version, &req.response_nonce, &error.message);
            }
            None => self.handle.acked(t, &req.version_info),
        }
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
            self.respond(t, published).await?;
        }
        Ok(())
    }

    /// Sends the subscribed resources of `t` from the current set; `push`
    /// when a config change published then is why.
    async fn respond(&mut self, t: TypeUrl, push: Option<Instant>) -> Result<(), StreamClosed> {
        let Some(state) = self.types.get_mut(&t) else {
            return Ok(());
        };
        let resources: Vec<_> = state
            .sub
            .selected(&self.current, t)
            .into_iter()
            .map(|r| r.body.clone())
            .collect();
        let version = self.current.type_version(t);
        let nonce = self.nonces.next();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            type_url: t.as_str().to_string(),
            nonce: nonce.clone(),
            control_plane: control_plane(),
            resources,
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
        state.nonce = Some(nonce);
        state.sent_version = version;
        send(&self.tx, response).await
    }
}

/// The subscription a request's `resource_names` asks for, and whether the
/// type is (still) in legacy wildcard mode. Per the xDS spec, an empty list
/// is a wildcard for LDS/CDS only until the client has named something;
/// `"*"` is an explicit wildcard.
fn subscription(
    t: TypeUrl,
    names: &[String],
    prev_legacy_wildcard: Option<bool>,
) -> (Subscription, bool) {
    let mut names: BTreeSet<String> = names.iter().cloned().collect();
    let star = names.remove("*");
    let legacy = t.is_wildcard_capable()
        && !star
        && names.is_empty()
        && prev_legacy_wildcard.unwrap_or(true);
    (
        Subscription {
            wildcard: star || legacy,
            names,
        },
        legacy,
    )
}

impl super::AdsStream for SotwStream {
    type Request = DiscoveryRequest;

    fn node_id(&self) -> &str {
        &self.node.id
    }
    fn sender_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tx = self.tx.clone();
        async move { tx.closed().await }
    }
    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), StreamClosed> {
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

#[cfg(test)]
mod unit {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_names_are_a_wildcard_only_for_lds_cds_until_something_is_named() {
        let (s, legacy) = subscription(TypeUrl::Listener, &[], None);
        assert!(s.wildcard && legacy);
        let (s, _) = subscription(TypeUrl::RouteConfiguration, &[], None);
        assert!(s.is_empty());
        let (s, legacy) = subscription(TypeUrl::Cluster, &names(&["a"]), Some(true));
        assert!(!s.wildcard && !legacy && s.names.contains("a"));
        // After naming, an empty list unsubscribes from everything.
        let (s, _) = subscription(TypeUrl::Cluster, &[], Some(false));
        assert!(s.is_empty());
        let (s, _) = subscription(TypeUrl::Cluster, &names(&["*", "a"]), Some(false));
        assert!(s.wildcard && s.names.len() == 1);
    }
}
