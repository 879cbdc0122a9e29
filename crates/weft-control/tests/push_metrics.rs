//! `weft control`'s push metrics over real delta ADS streams (the weft xDS
//! client, as `weft proxy --xds` runs it): a config change is observed in
//! `weft_xds_push_ack_seconds` once per stream that ACKs it, with a value
//! no longer than the test saw the change take; a NACKed push is counted as
//! a NACK and not observed. Also what `/sd/prometheus` lists.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weft_control::{ControlOptions, RunningControl};
use weft_test_support::{TempDir, http_get, wait_until};
use weft_xds::client::{ClientOptions, ClientStatus, ConfigSink};
use weft_xds::{Resource, ResourceSet};

const WAIT: Duration = Duration::from_secs(20);

fn config(catalog_endpoint: &str) -> String {
    format!(
        r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: catalog}}
spec:
  ports: [{{name: http, port: 8080, protocol: http}}]
  endpoints: [{{address: "{catalog_endpoint}"}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: frontend}}
spec:
  ports: [{{name: http, port: 8080, protocol: http}}]
  endpoints: [{{address: "127.0.0.1:9100"}}]
"#
    )
}

async fn control(dir: &TempDir) -> RunningControl {
    let mut opts = ControlOptions::new(dir.path());
    opts.xds = "127.0.0.1:0".parse().unwrap();
    opts.admin = "127.0.0.1:0".parse().unwrap();
    opts.reload_interval = Duration::from_millis(20);
    weft_control::start(opts).await.unwrap()
}

/// Accepts everything until told to reject.
#[derive(Clone, Default)]
struct Sink {
    reject: Arc<AtomicBool>,
}

impl ConfigSink for Sink {
    fn check(&mut self, r: &Arc<Resource>) -> Result<(), String> {
        if self.reject.load(Ordering::Relaxed) {
            Err(format!("{} refused by the test", r.name))
        } else {
            Ok(())
        }
    }
    fn publish(&mut self, _: &ResourceSet, _: bool) -> Result<(), String> {
        Ok(())
    }
}

/// A weft xDS client of Service `frontend`, until `stop` turns true.
fn client(
    xds: SocketAddr,
    node: &str,
    admin: Option<&str>,
    sink: Sink,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut opts = ClientOptions::new(xds.to_string(), node, "frontend");
    opts.admin = admin.map(str::to_string);
    let status = Arc::new(ClientStatus::new(&opts));
    tokio::spawn(weft_xds::client::run(opts, sink, status, stop))
}

async fn metrics(control: &RunningControl) -> String {
    let (_, _, body) = http_get(control.admin_addr(), "admin", "/metrics")
        .await
        .unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The sum of the samples named exactly `name` (any labels) whose line
/// contains every one of `parts`.
fn sample(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_config_change_is_observed_once_per_acking_stream_and_a_nack_not_at_all() {
    let dir = TempDir::new("weft-control-push").unwrap();
    std::fs::write(dir.join("mesh.yaml"), config("127.0.0.1:9001")).unwrap();
    let control = control(&dir).await;
    let xds = control.xds_addr();
    let (stop_tx, stop) = watch::channel(false);
    let refusing = Sink::default();
    let clients = [
        client(xds, "frontend-1", None, Sink::default(), stop.clone()),
        client(xds, "frontend-2", None, Sink::default(), stop.clone()),
        client(xds, "frontend-3", None, refusing.clone(), stop.clone()),
    ];

    // Connected, and every stream ACKed its initial config (no change yet:
    // nothing observed).
    wait_until("three streams with their config ACKed", WAIT, || async {
        let streams = control.status().streams();
        let settled = streams.len() == 3
            && streams
                .iter()
                .all(|s| s.types.values().all(|t| t.acked_version.is_some()) && s.types.len() == 4);
        settled.then_some(())
    })
    .await
    .unwrap();
    let text = metrics(&control).await;
    let connected = r#"weft_xds_streams_connected{kind="weft",transport="delta"} 3"#;
    assert!(text.lines().any(|l| l == connected), "{text}");
    assert_eq!(
        sample(&text, "weft_xds_push_ack_seconds_count", &[]),
        0.0,
        "{text}"
    );

    // An endpoint change: two streams ACK it, one rejects it.
    refusing.reject.store(true, Ordering::Relaxed);
    let changed_at = Instant::now();
    std::fs::write(dir.join("mesh.yaml"), config("127.0.0.1:9002")).unwrap();
    let text = wait_until("two ACKed pushes and one NACK", WAIT, || async {
        let text = metrics(&control).await;
        let acked = sample(&text, "weft_xds_push_ack_seconds_count", &[]);
        let nacks = sample(&text, "weft_xds_nacks_total", &[]);
        (acked >= 2.0 && nacks >= 1.0).then_some(text)
    })
    .await
    .unwrap();
    let took = changed_at.elapsed().as_secs_f64();

    let count = r#"weft_xds_push_ack_seconds_count{kind="weft"} 2"#;
    assert!(text.lines().any(|l| l == count), "{text}");
    assert_eq!(
        sample(
            &text,
            "weft_xds_push_ack_seconds_count",
            &["kind=\"envoy\""]
        ),
        0.0
    );
    let sum = sample(&text, "weft_xds_push_ack_seconds_sum", &["kind=\"weft\""]);
    assert!(
        sum > 0.0 && sum <= 2.0 * took,
        "two observations summing to {sum} s, the change took at most {took} s"
    );
    // Bucket bounds from 1 ms to 10 s, and both observations in +Inf.
    for bucket in [r#"le="0.001""#, r#"le="10.0""#] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("weft_xds_push_ack_seconds_bucket") && l.contains(bucket)),
            "bucket {bucket} missing in\n{text}"
        );
    }
    let inf = r#"weft_xds_push_ack_seconds_bucket{le="+Inf",kind="weft"} 2"#;
    assert!(text.lines().any(|l| l == inf), "{text}");
    let nacked = control
        .status()
        .streams()
        .into_iter()
        .find(|s| s.node_id == "frontend-3")
        .unwrap();
    assert!(nacked.types.values().any(|t| t.last_nack.is_some()));

    stop_tx.send_replace(true);
    for c in clients {
        c.await.unwrap();
    }
    control.shutdown().await;
}

#[tokio::test]
async fn prometheus_discovery_lists_nodes_that_announce_their_admin_and_the_control_plane() {
    let dir = TempDir::new("weft-control-sd").unwrap();
    std::fs::write(dir.join("mesh.yaml"), config("127.0.0.1:9001")).unwrap();
    let control = control(&dir).await;
    let xds = control.xds_addr();
    let (stop_a, stop) = watch::channel(false);
    let a = client(
        xds,
        "frontend-a",
        Some("127.0.0.1:15901"),
        Sink::default(),
        stop,
    );
    let (stop_b, stop) = watch::channel(false);
    let b = client(
        xds,
        "frontend-b",
        Some("127.0.0.1:15902"),
        Sink::default(),
        stop,
    );
    let (stop_c, stop) = watch::channel(false);
    let silent = client(xds, "frontend-c", None, Sink::default(), stop);

    let sd = || async {
        let (status, _, body) = http_get(control.admin_addr(), "admin", "/sd/prometheus")
            .await
            .unwrap();
        assert_eq!(status, 200);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    let groups = wait_until("both announcing nodes listed", WAIT, || async {
        let v = sd().await;
        (v.as_array()?.len() == 3 && control.status().streams().len() == 3).then_some(v)
    })
    .await
    .unwrap();
    let expected = serde_json::json!([
        {"targets": [control.admin_addr().to_string()], "labels": {
            "weft_node": "weft-control", "weft_service": "weft-control",
            "weft_kind": "control", "__metrics_path__": "/metrics"}},
        {"targets": ["127.0.0.1:15901"], "labels": {
            "weft_node": "frontend-a", "weft_service": "frontend",
            "weft_kind": "weft", "__metrics_path__": "/metrics"}},
        {"targets": ["127.0.0.1:15902"], "labels": {
            "weft_node": "frontend-b", "weft_service": "frontend",
            "weft_kind": "weft", "__metrics_path__": "/metrics"}},
    ]);
    assert_eq!(groups, expected);

    stop_a.send_replace(true);
    a.await.unwrap();
    let groups = wait_until("the stopped node gone", WAIT, || async {
        let v = sd().await;
        (v.as_array()?.len() == 2).then_some(v)
    })
    .await
    .unwrap();
    assert_eq!(groups[1]["labels"]["weft_node"], "frontend-b");

    stop_b.send_replace(true);
    stop_c.send_replace(true);
    b.await.unwrap();
    silent.await.unwrap();
    control.shutdown().await;
}
