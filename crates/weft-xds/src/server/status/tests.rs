//! The status registry and the `weft_xds_*` metrics, without a server.

use super::*;
use envoy_types::pb::envoy::config::core::v3::Node;

fn node(id: &str, ua: &str) -> NodeInfo {
    NodeInfo::from_node(&Node {
        id: id.into(),
        cluster: "web".into(),
        user_agent_name: ua.into(),
        ..Default::default()
    })
}

#[test]
fn a_stream_shows_while_connected_and_counts_stay() {
    let status = Arc::new(ServerStatus::new());
    let acks = Arc::new(Mutex::new(Vec::new()));
    let seen = acks.clone();
    assert!(status.set_ack_hook(move |id, t, v| {
        seen.lock()
            .unwrap()
            .push((id.to_string(), t, v.to_string()))
    }));
    let mut grpc = status.open_stream(&node("g-1", "gRPC Python"), None, Transport::Sotw);
    grpc.subscribed(TypeUrl::Listener, false, 1);
    grpc.sent(TypeUrl::Listener, "v1", "1-1", 1, 100, None);
    grpc.acked(TypeUrl::Listener, "v1");
    grpc.sent(TypeUrl::Listener, "v2", "1-2", 1, 120, None);
    grpc.nacked(TypeUrl::Listener, "v2", "1-2", "bad listener");
    grpc.unknown_type();
    let envoy = status.open_stream(
        &node("e-1", "envoy"),
        Some("10.0.0.7:15000".into()),
        Transport::Delta,
    );

    let c = status.counters();
    assert_eq!(c.streams_connected[&DataPlane::Grpc], 1);
    assert_eq!(c.streams_connected[&DataPlane::Envoy], 1);
    assert_eq!(
        (c.responses_sent, c.bytes_sent, c.acks, c.nacks),
        (2, 220, 1, 1)
    );
    assert_eq!(
        *acks.lock().unwrap(),
        [("g-1".to_string(), TypeUrl::Listener, "v1".to_string())]
    );

    let json = status.to_json();
    let lds = &json["streams"][0]["types"]["LDS"];
    assert_eq!(json["streams"][0]["transport"], "sotw");
    assert_eq!(json["streams"][0]["kind"], "grpc");
    assert_eq!(lds["acked_version"], "v1");
    assert_eq!(lds["sent"]["nonce"], "1-2");
    assert_eq!(lds["last_nack"]["message"], "bad listener");
    assert_eq!(json["counters"]["unknown_type_requests"], 1);
    assert_eq!(json["streams"][0]["admin"], Value::Null);
    assert_eq!(json["streams"][1]["admin"], "10.0.0.7:15000");

    let mut text = String::new();
    status.render_metrics(&mut text);
    for line in [
        "weft_xds_streams_connected{kind=\"grpc\",transport=\"sotw\"} 1",
        "weft_xds_responses_sent_total{type=\"LDS\"} 2",
        "weft_xds_sent_bytes_total{type=\"LDS\"} 220",
        "weft_xds_nacks_total{type=\"LDS\"} 1",
        "weft_xds_unknown_type_requests_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
    assert!(!text.contains("# EOF"));

    drop(grpc);
    drop(envoy);
    assert!(status.streams().is_empty());
    let c = status.counters();
    assert_eq!(c.streams_connected[&DataPlane::Grpc], 0);
    assert_eq!(c.responses_sent, 2, "totals outlive the streams");
}

fn push_ack_count(status: &ServerStatus, kind: &str) -> u64 {
    let mut text = String::new();
    status.render_metrics(&mut text);
    let prefix = format!("weft_xds_push_ack_seconds_count{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{prefix} missing in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_push_is_observed_once_when_every_type_it_carried_is_acked() {
    let status = Arc::new(ServerStatus::new());
    let mut s = status.open_stream(&node("w-1", "weft"), None, Transport::Delta);
    // The initial responses are no config change.
    s.sent(TypeUrl::Cluster, "c0", "1-1", 1, 10, None);
    s.acked(TypeUrl::Cluster, "c0");
    assert_eq!(push_ack_count(&status, "weft"), 0);

    let published = Instant::now();
    s.sent(TypeUrl::Cluster, "c1", "1-2", 1, 10, Some(published));
    s.sent(
        TypeUrl::ClusterLoadAssignment,
        "e1",
        "1-3",
        1,
        10,
        Some(published),
    );
    s.acked(TypeUrl::Cluster, "c1");
    assert_eq!(push_ack_count(&status, "weft"), 0, "EDS still unacked");
    // A newer EDS response supersedes the one carrying the change.
    s.sent(TypeUrl::ClusterLoadAssignment, "e2", "1-4", 1, 10, None);
    s.acked(TypeUrl::ClusterLoadAssignment, "e1");
    assert_eq!(push_ack_count(&status, "weft"), 0, "an older version");
    s.acked(TypeUrl::ClusterLoadAssignment, "e2");
    assert_eq!(push_ack_count(&status, "weft"), 1);
    s.acked(TypeUrl::ClusterLoadAssignment, "e2");
    assert_eq!(push_ack_count(&status, "weft"), 1, "observed once");

    // NACKed: counted as a NACK, not observed, even if ACKed later.
    s.sent(TypeUrl::Cluster, "c3", "1-5", 1, 10, Some(Instant::now()));
    s.nacked(TypeUrl::Cluster, "c3", "1-5", "no");
    s.acked(TypeUrl::Cluster, "c3");
    assert_eq!(push_ack_count(&status, "weft"), 1);
    assert_eq!(push_ack_count(&status, "envoy"), 0);
    assert_eq!(status.counters().nacks, 1);
}
