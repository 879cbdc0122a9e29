//! State-of-the-world ADS, as Envoy and proxyless gRPC see it.

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Code;
use weft_xds::server::CONTROL_PLANE_ID;

use crate::support::*;

fn with_node(mut req: DiscoveryRequest, id: &str, cluster: &str) -> DiscoveryRequest {
    req.node = Some(node(id, cluster));
    req
}

#[tokio::test]
async fn lds_wildcard_gets_every_listener_and_follows_changes() {
    let h = Harness::start().await;
    let v1 = set(&[(LDS, "a", 1), (LDS, "b", 1), (CDS, "c", 1)]);
    h.source.publish("web", &v1);
    let mut c = h.sotw(with_node(sotw_req(LDS, &[]), "web-1", "web")).await;

    let r1 = c.recv_type(LDS).await;
    assert_eq!(names(&r1), ["a", "b"]);
    assert_eq!(r1.version_info, v1.type_version(LDS));
    assert!(!r1.nonce.is_empty());
    assert_eq!(
        r1.control_plane.as_ref().unwrap().identifier,
        CONTROL_PLANE_ID
    );

    c.ack(&r1, &[]).await;
    h.wait_for("the ACK in /status", |s| {
        s.streams().iter().any(|st| {
            st.types.get(&LDS).and_then(|t| t.acked_version.as_deref()) == Some(&r1.version_info)
        })
    })
    .await;
    assert_eq!(h.status.counters().acks, 1);

    // A changed listener: a new version with the whole set.
    let v2 = set(&[(LDS, "a", 2), (LDS, "b", 1), (CDS, "c", 1)]);
    h.source.publish("web", &v2);
    let r2 = c.recv_type(LDS).await;
    assert_eq!(names(&r2), ["a", "b"]);
    assert_eq!(r2.version_info, v2.type_version(LDS));
    assert_ne!(r2.nonce, r1.nonce);
    c.ack(&r2, &[]).await;

    // A removed listener: SotW says so by leaving it out.
    let v3 = set(&[(LDS, "a", 2), (CDS, "c", 1)]);
    h.source.publish("web", &v3);
    let r3 = c.recv_type(LDS).await;
    assert_eq!(names(&r3), ["a"]);
    c.ack(&r3, &[]).await;

    // A change to a type the client did not ask for pushes nothing: the
    // next response is the barrier's, and the next LDS one is news.
    h.source
        .publish("web", &set(&[(LDS, "a", 2), (CDS, "c", 2)]));
    c.barrier(RDS).await;
    let v4 = set(&[(LDS, "a", 4), (CDS, "c", 2)]);
    h.source.publish("web", &v4);
    let r4 = c.recv_type(LDS).await;
    assert_eq!(
        r4.version_info,
        v4.type_version(LDS),
        "pushed LDS for a CDS change"
    );

    // A reconnect with the version it has still gets an answer (Envoy waits
    // for one), on its own stream.
    let mut again = h.sotw(reconnect(&r4, "web-2", "web")).await;
    let r = again.recv_type(LDS).await;
    assert_eq!(r.version_info, r4.version_info);
    assert_eq!(names(&r), ["a"]);
}

/// A reconnect request: node, the version it has, empty nonce.
fn reconnect(had: &DiscoveryResponse, id: &str, cluster: &str) -> DiscoveryRequest {
    let mut req = with_node(sotw_req(LDS, &[]), id, cluster);
    req.version_info = had.version_info.clone();
    req
}

#[tokio::test]
async fn rds_by_name_gets_only_the_named_routes() {
    let h = Harness::start().await;
    h.source.publish(
        "web",
        &set(&[(RDS, "r1", 1), (RDS, "r2", 1), (RDS, "r3", 1)]),
    );
    let mut c = h
        .sotw(with_node(sotw_req(RDS, &["r1", "r3"]), "web-1", "web"))
        .await;
    let r1 = c.recv_type(RDS).await;
    assert_eq!(names(&r1), ["r1", "r3"]);
    c.ack(&r1, &["r1", "r3"]).await;

    // r2 is not subscribed: changing it pushes nothing.
    h.source.publish(
        "web",
        &set(&[(RDS, "r1", 1), (RDS, "r2", 2), (RDS, "r3", 1)]),
    );
    c.barrier(CDS).await;

    // A new subscription is answered with the new subset.
    c.ack(&r1, &["r2"]).await;
    let r2 = c.recv_type(RDS).await;
    assert_eq!(names(&r2), ["r2"]);
    h.wait_for("the subscription in /status", |s| {
        s.streams().iter().any(|st| {
            st.types
                .get(&RDS)
                .is_some_and(|t| t.names == 1 && !t.wildcard)
        })
    })
    .await;
}

#[tokio::test]
async fn a_nack_is_recorded_and_the_rejected_version_is_not_resent() {
    let h = Harness::start().await;
    h.source.publish("web", &set(&[(LDS, "a", 1)]));
    let mut c = h.sotw(with_node(sotw_req(LDS, &[]), "web-1", "web")).await;
    let good = c.recv_type(LDS).await;
    c.ack(&good, &[]).await;
    // An ACK that arrives after a newer response is stale: wait for it.
    h.wait_for("the ACK", |s| {
        s.streams()
            .iter()
            .any(|st| st.types[&LDS].acked_version.is_some())
    })
    .await;

    h.source.publish("web", &set(&[(LDS, "a", 2)]));
    let bad = c.recv_type(LDS).await;
    c.send(DiscoveryRequest {
        version_info: good.version_info.clone(),
        type_url: LDS.as_str().into(),
        response_nonce: bad.nonce.clone(),
        error_detail: rpc_error("listener a: unknown filter"),
        ..Default::default()
    })
    .await;
    h.wait_for("the NACK in /status", |s| {
        s.streams().iter().any(|st| {
            st.types
                .get(&LDS)
                .and_then(|t| t.last_nack.as_ref())
                .is_some_and(|n| {
                    n.message == "listener a: unknown filter"
                        && n.version == bad.version_info
                        && n.nonce == bad.nonce
                })
        })
    })
    .await;
    assert_eq!(h.status.counters().nacks, 1);
    let st = h.stream("web-1").unwrap();
    assert_eq!(
        st.types[&LDS].acked_version.as_deref(),
        Some(good.version_info.as_str()),
        "the last ACKed version is what the client runs"
    );
    let json = h.status.to_json();
    assert_eq!(
        json["streams"][0]["types"]["LDS"]["last_nack"]["message"],
        "listener a: unknown filter"
    );

    // The set changes elsewhere (CDS): the rejected listeners are not sent
    // again; the barrier's response comes first, then the fix.
    h.source
        .publish("web", &set(&[(LDS, "a", 2), (CDS, "c", 1)]));
    c.barrier(RDS).await;

    // A fix is sent.
    let fixed_set = set(&[(LDS, "a", 3), (CDS, "c", 1)]);
    h.source.publish("web", &fixed_set);
    let fixed = c.recv_type(LDS).await;
    assert_eq!(
        fixed.version_info,
        fixed_set.type_version(LDS),
        "resent the rejected version"
    );
    c.ack(&fixed, &[]).await;
    h.wait_for("the fix ACKed", |s| {
        s.streams()
            .iter()
            .any(|st| st.types[&LDS].acked_version.as_deref() == Some(fixed.version_info.as_str()))
    })
    .await;
}

#[tokio::test]
async fn a_stale_nonce_is_ignored() {
    let h = Harness::start().await;
    h.source
        .publish("web", &set(&[(LDS, "a", 1), (LDS, "b", 1)]));
    let mut c = h.sotw(with_node(sotw_req(LDS, &[]), "web-1", "web")).await;
    let r1 = c.recv_type(LDS).await;
    h.source
        .publish("web", &set(&[(LDS, "a", 2), (LDS, "b", 1)]));
    let r2 = c.recv_type(LDS).await;

    // An ACK of the older response, even with a new subscription, is stale.
    c.ack(&r1, &["a"]).await;
    c.barrier(CDS).await;
    let st = h.stream("web-1").unwrap();
    assert_eq!(st.types[&LDS].acked_version, None, "stale ACK recorded");
    assert!(
        st.types[&LDS].wildcard,
        "stale request changed the subscription"
    );

    c.ack(&r2, &[]).await;
    h.wait_for("the ACK of the latest", |s| {
        s.streams()
            .iter()
            .any(|st| st.types[&LDS].acked_version.as_deref() == Some(r2.version_info.as_str()))
    })
    .await;
}

#[tokio::test]
async fn an_unknown_type_gets_no_response_and_the_stream_goes_on() {
    let h = Harness::start().await;
    h.source
        .publish("web", &set(&[(LDS, "a", 1), (CDS, "c", 1)]));
    let mut c = h.sotw(with_node(sotw_req(LDS, &[]), "web-1", "web")).await;
    c.recv_type(LDS).await;

    let mut unknown = sotw_req(LDS, &[]);
    unknown.type_url =
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into();
    c.send(unknown.clone()).await;
    unknown.type_url = "not a type url at all".into();
    c.send(unknown).await;

    // Other types still work, and nothing came for the unknown ones.
    let r = c.barrier(CDS).await;
    assert_eq!(names(&r), ["c"]);
    assert_eq!(h.status.counters().unknown_type_requests, 2);
    h.source
        .publish("web", &set(&[(LDS, "a", 2), (CDS, "c", 1)]));
    c.recv_type(LDS).await;
}

#[tokio::test]
async fn a_stream_whose_first_request_has_no_node_is_rejected() {
    let h = Harness::start().await;
    h.source.publish("web", &set(&[(LDS, "a", 1)]));
    let mut c = h.sotw(sotw_req(LDS, &[])).await;
    let err = within(c.rx.message()).await.expect_err("an error status");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(h.status.streams().is_empty());

    // The node may come only once: later requests need not repeat it.
    let mut ok = h.sotw(with_node(sotw_req(LDS, &[]), "web-1", "web")).await;
    let r = ok.recv_type(LDS).await;
    ok.ack(&r, &[]).await;
    ok.send(sotw_req(CDS, &[])).await;
    ok.recv_type(CDS).await;
}
