//! Incremental ADS, as Envoy (`DELTA_GRPC`) and the weft proxy see it.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::Code;

use weft_xds::TypeUrl;

use crate::support::*;

fn first(t: TypeUrl, id: &str, subscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node(id, "web")),
        type_url: t.as_str().into(),
        resource_names_subscribe: strings(subscribe),
        ..Default::default()
    }
}

fn version(t: TypeUrl, name: &str, rev: u32) -> String {
    res(t, name, rev).version
}

#[tokio::test]
async fn wildcard_cds_gets_everything_then_only_what_changed() {
    let h = Harness::start().await;
    let v1 = set(&[(CDS, "c1", 1), (CDS, "c2", 1), (CDS, "c3", 1)]);
    h.source.publish("web", &v1);
    let mut c = h.delta(first(CDS, "web-1", &[])).await;

    let r1 = c.recv().await;
    assert_eq!(r1.type_url, CDS.as_str());
    assert_eq!(
        delta_resources(&r1),
        [
            ("c1".into(), version(CDS, "c1", 1)),
            ("c2".into(), version(CDS, "c2", 1)),
            ("c3".into(), version(CDS, "c3", 1)),
        ]
    );
    assert_eq!(r1.system_version_info, v1.type_version(CDS));
    assert!(!r1.nonce.is_empty());
    assert_eq!(r1.control_plane.as_ref().unwrap().identifier, "weft");
    c.ack(&r1).await;

    // One changed cluster: only it is sent.
    h.source.publish(
        "web",
        &set(&[(CDS, "c1", 1), (CDS, "c2", 2), (CDS, "c3", 1)]),
    );
    let r2 = c.recv().await;
    assert_eq!(delta_resources(&r2), [("c2".into(), version(CDS, "c2", 2))]);
    assert!(r2.removed_resources.is_empty());
    c.ack(&r2).await;

    // A removed cluster: named in removed_resources, nothing else sent.
    let v3 = set(&[(CDS, "c1", 1), (CDS, "c2", 2)]);
    h.source.publish("web", &v3);
    let r3 = c.recv().await;
    assert!(r3.resources.is_empty());
    assert_eq!(r3.removed_resources, ["c3"]);
    c.ack(&r3).await;
    h.wait_for("the ACK in /status", |s| {
        s.streams().iter().any(|st| {
            st.types.get(&CDS).and_then(|t| t.acked_version.as_deref())
                == Some(v3.type_version(CDS).as_str())
        })
    })
    .await;
    let st = h.stream("web-1").unwrap();
    assert!(st.types[&CDS].wildcard);
    assert_eq!(st.transport.as_str(), "delta");
}

#[tokio::test]
async fn a_reconnect_with_current_versions_gets_nothing_resent() {
    let h = Harness::start().await;
    h.source.publish(
        "web",
        &set(&[(CDS, "c1", 1), (CDS, "c2", 1), (CDS, "c3", 2)]),
    );

    // Everything current: the first wildcard response is empty (it is still
    // sent, so a client can finish initializing).
    let mut req = first(CDS, "web-1", &[]);
    req.initial_resource_versions = HashMap::from([
        ("c1".to_string(), version(CDS, "c1", 1)),
        ("c2".to_string(), version(CDS, "c2", 1)),
        ("c3".to_string(), version(CDS, "c3", 2)),
    ]);
    let mut c = h.delta(req).await;
    let r = c.recv().await;
    assert!(
        r.resources.is_empty() && r.removed_resources.is_empty(),
        "{r:?}"
    );

    // Partly current: only the outdated one is sent, the vanished one removed.
    let mut req = first(CDS, "web-2", &[]);
    req.initial_resource_versions = HashMap::from([
        ("c1".to_string(), version(CDS, "c1", 1)),
        ("c2".to_string(), version(CDS, "c2", 1)),
        ("c3".to_string(), version(CDS, "c3", 1)),
        ("gone".to_string(), version(CDS, "gone", 1)),
    ]);
    let mut c = h.delta(req).await;
    let r = c.recv().await;
    assert_eq!(delta_resources(&r), [("c3".into(), version(CDS, "c3", 2))]);
    assert_eq!(r.removed_resources, ["gone"]);
}

#[tokio::test]
async fn eds_subscribe_and_unsubscribe_by_name() {
    let h = Harness::start().await;
    h.source.publish(
        "web",
        &set(&[(EDS, "e1", 1), (EDS, "e2", 1), (EDS, "e3", 1)]),
    );
    let mut c = h.delta(first(EDS, "web-1", &["e1"])).await;
    let r1 = c.recv().await;
    assert_eq!(delta_resources(&r1), [("e1".into(), version(EDS, "e1", 1))]);
    c.ack(&r1).await;

    // A name the set lacks is answered with "does not exist".
    c.subscribe(EDS, &["e2", "missing"], &[]).await;
    let r2 = c.recv().await;
    assert_eq!(delta_resources(&r2), [("e2".into(), version(EDS, "e2", 1))]);
    assert_eq!(r2.removed_resources, ["missing"]);
    c.ack(&r2).await;
    h.wait_for("three names in /status", |s| {
        s.streams()
            .iter()
            .any(|st| st.types.get(&EDS).is_some_and(|t| t.names == 3))
    })
    .await;

    // Unsubscribed: e1's changes no longer come; e2's do.
    c.subscribe(EDS, &[], &["e1"]).await;
    h.wait_for("the unsubscribe in /status", |s| {
        s.streams()
            .iter()
            .any(|st| st.types.get(&EDS).is_some_and(|t| t.names == 2))
    })
    .await;
    h.source.publish(
        "web",
        &set(&[(EDS, "e1", 2), (EDS, "e2", 1), (EDS, "e3", 1)]),
    );
    h.source.publish(
        "web",
        &set(&[(EDS, "e1", 3), (EDS, "e2", 2), (EDS, "e3", 2)]),
    );
    let r3 = c.recv().await;
    assert_eq!(delta_resources(&r3), [("e2".into(), version(EDS, "e2", 2))]);
    assert!(r3.removed_resources.is_empty());
}

#[tokio::test]
async fn a_nack_keeps_the_clients_versions_and_a_fix_is_sent() {
    let h = Harness::start().await;
    h.source.publish("web", &set(&[(CDS, "c1", 1)]));
    let mut c = h.delta(first(CDS, "web-1", &[])).await;
    let good = c.recv().await;
    c.ack(&good).await;

    h.source.publish("web", &set(&[(CDS, "c1", 2)]));
    let bad = c.recv().await;
    c.send(DeltaDiscoveryRequest {
        type_url: CDS.as_str().into(),
        response_nonce: bad.nonce.clone(),
        error_detail: rpc_error("cluster c1: bad lb policy"),
        ..Default::default()
    })
    .await;
    h.wait_for("the NACK in /status", |s| {
        s.streams().iter().any(|st| {
            st.types[&CDS]
                .last_nack
                .as_ref()
                .is_some_and(|n| n.message == "cluster c1: bad lb policy")
        })
    })
    .await;
    assert_eq!(h.status.counters().nacks, 1);

    // Another cluster appears: only it is sent, not the rejected c1 again.
    h.source
        .publish("web", &set(&[(CDS, "c1", 2), (CDS, "c2", 1)]));
    let r = c.recv().await;
    assert_eq!(delta_resources(&r), [("c2".into(), version(CDS, "c2", 1))]);
    c.ack(&r).await;

    // The fix is sent.
    h.source
        .publish("web", &set(&[(CDS, "c1", 3), (CDS, "c2", 1)]));
    let r = c.recv().await;
    assert_eq!(delta_resources(&r), [("c1".into(), version(CDS, "c1", 3))]);
}

#[tokio::test]
async fn delta_rejects_a_stream_without_node_and_ignores_unknown_types() {
    let h = Harness::start().await;
    h.source
        .publish("web", &set(&[(CDS, "c1", 1), (LDS, "l1", 1)]));
    let mut bad = h
        .delta(DeltaDiscoveryRequest {
            type_url: CDS.as_str().into(),
            ..Default::default()
        })
        .await;
    let err = within(bad.rx.message()).await.expect_err("an error status");
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut c = h.delta(first(CDS, "web-1", &[])).await;
    c.recv().await;
    c.send(DeltaDiscoveryRequest {
        type_url: "type.googleapis.com/envoy.nope.v3.Thing".into(),
        resource_names_subscribe: strings(&["x"]),
        ..Default::default()
    })
    .await;
    c.subscribe(LDS, &["l1"], &[]).await;
    let r = c.recv().await;
    assert_eq!(r.type_url, LDS.as_str());
    assert_eq!(delta_resources(&r), [("l1".into(), version(LDS, "l1", 1))]);
    assert_eq!(h.status.counters().unknown_type_requests, 1);
}

#[tokio::test]
async fn garbage_names_are_answered_as_missing_and_the_stream_goes_on() {
    let h = Harness::start().await;
    h.source.publish("web", &set(&[(EDS, "c1", 1)]));
    let garbage = [
        "",
        "\u{0}\u{1}",
        "../../etc/passwd",
        &"x".repeat(10_000),
        "c1\n",
    ];
    let mut c = h.delta(first(EDS, "web-g", &garbage)).await;
    let r = c.recv().await;
    // Nothing by those names exists: nothing is sent but their absence.
    assert!(delta_resources(&r).is_empty(), "{:?}", delta_resources(&r));
    for g in garbage.iter().filter(|g| !g.is_empty()) {
        assert!(
            r.removed_resources.iter().any(|n| n == g),
            "{g:?} not reported missing"
        );
    }
    c.ack(&r).await;
    // The same stream still works for a real name.
    c.subscribe(EDS, &["c1"], &[]).await;
    let r = c.recv().await;
    assert_eq!(delta_resources(&r), [("c1".into(), version(EDS, "c1", 1))]);
}

#[tokio::test]
async fn a_client_that_never_acks_still_gets_every_new_version() {
    let h = Harness::start().await;
    h.source.publish("web", &set(&[(CDS, "c1", 1)]));
    let mut c = h.delta(first(CDS, "web-silent", &[])).await;
    let mut last = c.recv().await;
    for rev in 2..=5 {
        h.source.publish("web", &set(&[(CDS, "c1", rev)]));
        last = c.recv().await;
        assert_eq!(
            delta_resources(&last),
            [("c1".into(), version(CDS, "c1", rev))]
        );
    }
    // Never ACKed: the status says so, and the stream is still served.
    let s = h.stream("web-silent").expect("stream listed");
    assert_eq!(s.types[&CDS].acked_version, None, "{s:?}");
    assert!(!last.nonce.is_empty());
}
