//! Slow and vanishing clients: neither may delay the others.

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use weft_xds::{DataPlane, Resource, ResourceSet};

use crate::support::*;

/// Three listeners of ~200 KB each: a few responses fill the HTTP/2 window
/// of a client that does not read.
fn big_set(rev: u32) -> ResourceSet {
    let mut s = ResourceSet::default();
    for name in ["a", "b", "c"] {
        let l = Listener {
            name: name.into(),
            stat_prefix: format!("rev-{rev}-{}", "x".repeat(200_000)),
            ..Default::default()
        };
        s.insert(Resource::new(LDS, name, &l));
    }
    s
}

fn lds_from(id: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node(id, "web")),
        ..sotw_req(LDS, &[])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_delay_the_others() {
    let h = Harness::start().await;
    h.source.publish("web", &big_set(0));
    // Same node group (one watch) as the fast client; it never reads.
    let mut slow = h.sotw(lds_from("slow")).await;
    let mut fast = h.sotw(lds_from("fast")).await;
    let r = fast.recv_type(LDS).await;
    fast.ack(&r, &[]).await;

    for rev in 1..=50 {
        let s = big_set(rev);
        h.source.publish("web", &s);
        let r = fast.recv_type(LDS).await;
        assert_eq!(r.version_info, s.type_version(LDS), "update {rev}");
        fast.ack(&r, &[]).await;
    }
    let latest = big_set(50).type_version(LDS);
    h.wait_for("the fast client's last ACK", |s| {
        s.streams().iter().any(|st| {
            st.node_id == "fast" && st.types[&LDS].acked_version.as_deref() == Some(latest.as_str())
        })
    })
    .await;
    let slow_status = h
        .stream("slow")
        .expect("the slow client is still connected");
    let slow_lds = &slow_status.types[&LDS];
    assert_eq!(slow_lds.acked_version, None);
    assert_ne!(
        slow_lds.sent.as_ref().map(|s| s.version.as_str()),
        Some(latest.as_str()),
        "the slow stream kept up: the test did not exercise a full queue"
    );

    // When the slow client finally reads, it finds a bounded backlog and
    // then the newest set: the updates it missed were coalesced.
    let mut read = 0;
    loop {
        let r = slow.recv_type(LDS).await;
        read += 1;
        if r.version_info == latest {
            break;
        }
    }
    assert!(
        read < 50,
        "the slow client got all {read} updates: nothing coalesced"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_mid_push_leaves_no_trace() {
    let h = Harness::start().await;
    h.source.publish("web", &big_set(0));
    let mut stay = h.sotw(lds_from("stay")).await;
    stay.recv_type(LDS).await;
    let gone = h.sotw(lds_from("gone")).await;
    h.wait_for("two streams", |s| s.streams().len() == 2).await;

    // Pushes pile up for the client that does not read...
    for rev in 1..=10 {
        h.source.publish("web", &big_set(rev));
        stay.recv_type(LDS).await;
    }
    // ...and it goes away in the middle of them.
    drop(gone);
    h.wait_for("the stream gone from /status", |s| {
        s.streams().iter().all(|st| st.node_id != "gone")
            && s.counters().streams_connected.get(&DataPlane::Envoy) == Some(&1)
    })
    .await;

    let s = big_set(11);
    h.source.publish("web", &s);
    let r = stay.recv_type(LDS).await;
    assert_eq!(r.version_info, s.type_version(LDS));
    assert_eq!(h.status.streams().len(), 1);
}
