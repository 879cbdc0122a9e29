//! `weft control` serves the global rate-limit service on its xDS port,
//! follows config changes and shows the service's metrics.

use std::time::Duration;

use weft_control::{ControlOptions, StartError};
use weft_ratelimit::proto::{
    Code, Entry, RateLimitDescriptor, RateLimitRequest, RateLimitServiceClient,
};
use weft_test_support::{TempDir, http_get, wait_until};

fn config(limit: u32) -> String {
    format!(
        r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: catalog}}
spec:
  ports: [{{name: http, port: 8080, protocol: http}}]
  endpoints: [{{address: "127.0.0.1:9001"}}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: shared}}
spec:
  targetRefs: [{{kind: Service, name: catalog}}]
  rateLimit: {{global: {{requestsPerUnit: {limit}, unit: hour, failureMode: closed}}}}
"#
    )
}

fn request(hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: "weft".to_string(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "weft-policy".to_string(),
                value: "default/shared".to_string(),
            }],
            ..Default::default()
        }],
        hits_addend: hits,
    }
}

fn options(dir: &TempDir) -> ControlOptions {
    let mut opts = ControlOptions::new(dir.path());
    opts.xds = "127.0.0.1:0".parse().unwrap();
    opts.admin = "127.0.0.1:0".parse().unwrap();
    opts.reload_interval = Duration::from_millis(50);
    opts
}

#[tokio::test]
async fn the_xds_port_answers_rate_limit_calls_for_the_configs_limits() {
    let dir = TempDir::new("weft-control-rl").unwrap();
    std::fs::write(dir.join("mesh.yaml"), config(5)).unwrap();
    let running = weft_control::start(options(&dir)).await.unwrap();
    let mut client = RateLimitServiceClient::connect(format!("http://{}", running.xds_addr()))
        .await
        .unwrap();

    let first = client
        .should_rate_limit(request(4))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.overall_code, Code::Ok as i32);
    let second = client
        .should_rate_limit(request(4))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.overall_code, Code::OverLimit as i32);
    assert_eq!(second.statuses[0].quota.as_ref().unwrap().requests, 1);

    // A reload raises the limit; the count of this window stays.
    std::fs::write(dir.join("mesh.yaml"), config(100)).unwrap();
    let raised = wait_until("the raised limit", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let r = client
                .should_rate_limit(request(1))
                .await
                .ok()?
                .into_inner();
            let limit = r.statuses[0].current_limit.as_ref()?.requests_per_unit;
            (limit == 100).then_some(r)
        }
    })
    .await
    .unwrap();
    assert_eq!(raised.overall_code, Code::Ok as i32);
    // 8 counted before, and one per poll since.
    let remaining = raised.statuses[0].limit_remaining;
    assert!((1..=100 - 9).contains(&remaining), "{remaining}");

    let (_, _, body) = http_get(running.admin_addr(), "admin", "/metrics")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    // The refusal above, and any polls before the reload landed.
    let over_limit = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "weft_ratelimit_decisions_total{descriptor=\"default/shared\",decision=\"over_limit\"} ",
            )
        })
        .and_then(|n| n.parse::<u64>().ok());
    assert!(over_limit.is_some_and(|n| n >= 1), "{text}");
    assert!(text.contains("weft_control_config_generation"), "{text}");
    assert!(text.ends_with("# EOF\n"));
    running.shutdown().await;
}

#[tokio::test]
async fn a_bad_redis_url_is_a_startup_error() {
    let dir = TempDir::new("weft-control-rl").unwrap();
    std::fs::write(dir.join("mesh.yaml"), config(5)).unwrap();
    let mut opts = options(&dir);
    opts.redis = Some("localhost:6379".to_string());
    let Err(e) = weft_control::start(opts).await else {
        panic!("started with a bad Redis URL");
    };
    assert!(matches!(e, StartError::RateLimitStore(_)), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("invalid Redis URL localhost:6379"), "{msg}");
}
