use std::sync::atomic::AtomicBool;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::google::protobuf::UInt64Value;
use futures_util::future::BoxFuture;
use tonic::Code as GrpcCode;

use super::*;

fn limit(descriptor: &str, n: u32, unit: RateLimitUnit, mode: FailureMode) -> GlobalRateLimit {
    GlobalRateLimit {
        requests_per_unit: n,
        unit,
        failure_mode: mode,
        descriptor: descriptor.to_string(),
        per_source: false,
    }
}

fn descriptor(key: &str, value: &str) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: vec![Entry {
            key: key.to_string(),
            value: value.to_string(),
        }],
        ..Default::default()
    }
}

fn request(policy: &str, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: "weft".to_string(),
        descriptors: vec![descriptor("weft-policy", policy)],
        hits_addend: hits,
    }
}

fn header<'r>(r: &'r RateLimitResponse, key: &str) -> Option<&'r str> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key == key)
        .map(|h| h.value.as_str())
}

fn ok(code: i32) -> bool {
    code == Code::Ok as i32
}

/// 10 per minute for `ns/ten`; 1000 s into a minute window that ends at 1020 s.
fn ten_per_minute() -> RateLimitServer {
    RateLimitServer::in_memory(Limits::from_iter([limit(
        "ns/ten",
        10,
        RateLimitUnit::Minute,
        FailureMode::Open,
    )]))
}

const NOW: Duration = Duration::from_millis(1_000_250);

#[tokio::test]
async fn single_hits_are_admitted_up_to_the_limit_then_refused_with_retry_after() {
    let server = ten_per_minute();
    let mut admitted = 0;
    for i in 0..15 {
        let r = server.decide_at(&request("ns/ten", 0), NOW).await.unwrap();
        let s = &r.statuses[0];
        if ok(r.overall_code) {
            admitted += 1;
            assert_eq!(s.limit_remaining, 9 - i);
            assert_eq!(s.quota.as_ref().unwrap().requests, 1);
            assert!(header(&r, "retry-after").is_none());
        } else {
            assert_eq!(s.code, Code::OverLimit as i32);
            assert_eq!(s.limit_remaining, 0);
            assert!(s.quota.is_none(), "nothing granted, no quota");
            // Window ends at 1020 s; 19.75 s left rounds up.
            assert_eq!(header(&r, "retry-after"), Some("20"));
        }
        let l = s.current_limit.as_ref().unwrap();
        assert_eq!((l.name.as_str(), l.requests_per_unit), ("ns/ten", 10));
        assert_eq!(l.unit, Unit::Minute as i32);
        let reset = s.duration_until_reset.unwrap();
        assert_eq!((reset.seconds, reset.nanos), (19, 750_000_000));
    }
    assert_eq!(admitted, 10);
    // The next window starts afresh.
    let next = server
        .decide_at(&request("ns/ten", 1), Duration::from_secs(1020))
        .await
        .unwrap();
    assert!(ok(next.overall_code));
}

#[tokio::test]
async fn a_lease_gets_what_is_left_even_when_over_the_limit() {
    let server = ten_per_minute();
    let first = server.decide_at(&request("ns/ten", 8), NOW).await.unwrap();
    assert!(ok(first.overall_code));
    let q = first.statuses[0].quota.as_ref().unwrap();
    assert_eq!((q.requests, q.id.as_str()), (8, "ns/ten"));
    let Some(ExpirationSpecifier::ValidUntil(until)) = q.expiration_specifier else {
        panic!("quota without valid_until: {q:?}");
    };
    assert_eq!(until.seconds, 1020);

    let second = server.decide_at(&request("ns/ten", 8), NOW).await.unwrap();
    assert_eq!(second.overall_code, Code::OverLimit as i32);
    assert_eq!(second.statuses[0].quota.as_ref().unwrap().requests, 2);

    let third = server.decide_at(&request("ns/ten", 8), NOW).await.unwrap();
    assert!(third.statuses[0].quota.is_none());
}

#[tokio::test]
async fn the_descriptors_own_hits_addend_wins_over_the_requests() {
    let server = ten_per_minute();
    let mut req = request("ns/ten", 2);
    req.descriptors[0].hits_addend = Some(UInt64Value { value: 6 });
    let r = server.decide_at(&req, NOW).await.unwrap();
    assert_eq!(r.statuses[0].quota.as_ref().unwrap().requests, 6);
    assert_eq!(r.statuses[0].limit_remaining, 4);
}

#[tokio::test]
async fn what_is_not_a_weft_limit_is_not_limited() {
    let server = ten_per_minute();
    let mut other_domain = request("ns/ten", 100);
    other_domain.domain = "edge".to_string();
    let unknown = request("ns/nope", 100);
    let mut wrong_key = request("ns/ten", 100);
    wrong_key.descriptors[0] = descriptor("generic_key", "ns/ten");
    let mut two_entries = request("ns/ten", 100);
    two_entries.descriptors[0]
        .entries
        .push(descriptor("path", "/").entries.remove(0));
    for req in [other_domain, unknown, wrong_key, two_entries] {
        let r = server.decide_at(&req, NOW).await.unwrap();
        assert!(ok(r.overall_code), "{req:?}");
        assert_eq!(r.statuses.len(), 1);
        assert!(r.statuses[0].current_limit.is_none(), "{req:?}");
        assert!(r.statuses[0].quota.is_none());
    }
    // None of them counted against ns/ten.
    let r = server.decide_at(&request("ns/ten", 10), NOW).await.unwrap();
    assert!(ok(r.overall_code));
}

#[tokio::test]
async fn empty_domain_or_descriptors_are_invalid_arguments() {
    let server = ten_per_minute();
    let mut no_domain = request("ns/ten", 1);
    no_domain.domain.clear();
    let e = server.decide_at(&no_domain, NOW).await.unwrap_err();
    assert_eq!(e.code(), GrpcCode::InvalidArgument);
    assert!(e.message().contains("domain"), "{}", e.message());

    let mut no_descriptors = request("ns/ten", 1);
    no_descriptors.descriptors.clear();
    let e = server.decide_at(&no_descriptors, NOW).await.unwrap_err();
    assert_eq!(e.code(), GrpcCode::InvalidArgument);
    assert!(e.message().contains("descriptor"), "{}", e.message());
}

#[tokio::test]
async fn overall_code_is_over_limit_when_any_descriptor_is() {
    let server = RateLimitServer::in_memory(Limits::from_iter([
        limit("ns/one", 1, RateLimitUnit::Second, FailureMode::Open),
        limit("ns/many", 100, RateLimitUnit::Hour, FailureMode::Open),
    ]));
    let both = RateLimitRequest {
        domain: "weft".to_string(),
        descriptors: vec![
            descriptor("weft-policy", "ns/many"),
            descriptor("weft-policy", "ns/one"),
        ],
        hits_addend: 1,
    };
    let first = server.decide_at(&both, NOW).await.unwrap();
    assert!(ok(first.overall_code));
    let second = server.decide_at(&both, NOW).await.unwrap();
    assert_eq!(second.overall_code, Code::OverLimit as i32);
    assert!(ok(second.statuses[0].code));
    assert_eq!(second.statuses[1].code, Code::OverLimit as i32);
    // 0.75 s left in the one-second window: at least 1.
    assert_eq!(header(&second, "retry-after"), Some("1"));
}

#[tokio::test]
async fn updated_limits_apply_to_the_next_call() {
    let server = ten_per_minute();
    server.update_limits(Limits::from_iter([limit(
        "ns/ten",
        2,
        RateLimitUnit::Minute,
        FailureMode::Open,
    )]));
    let r = server.decide_at(&request("ns/ten", 3), NOW).await.unwrap();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].quota.as_ref().unwrap().requests, 2);
    server.update_limits(Limits::default());
    let r = server.decide_at(&request("ns/ten", 3), NOW).await.unwrap();
    assert!(r.statuses[0].current_limit.is_none());
}

/// A store that fails while `down` is set.
#[derive(Default)]
struct FlakyStore {
    down: AtomicBool,
    memory: MemoryStore,
}

impl CounterStore for FlakyStore {
    fn kind(&self) -> &'static str {
        "flaky"
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        hits: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        if self.down.load(Ordering::SeqCst) {
            Box::pin(std::future::ready(Err(StoreError::Timeout(
                Duration::from_millis(100),
            ))))
        } else {
            self.memory.incr(key, hits, ttl)
        }
    }
}

#[tokio::test]
async fn a_failed_store_applies_each_limits_failure_mode_and_says_so() {
    let store = Arc::new(FlakyStore::default());
    let server = RateLimitServer::new(
        Limits::from_iter([
            limit("ns/open", 5, RateLimitUnit::Minute, FailureMode::Open),
            limit("ns/closed", 5, RateLimitUnit::Minute, FailureMode::Closed),
        ]),
        store.clone(),
    );
    store.down.store(true, Ordering::SeqCst);

    let open = server.decide_at(&request("ns/open", 7), NOW).await.unwrap();
    assert!(ok(open.overall_code));
    assert_eq!(open.statuses[0].quota.as_ref().unwrap().requests, 7);
    assert_eq!(header(&open, DEGRADED_HEADER), Some(STORE_UNAVAILABLE));

    let closed = server
        .decide_at(&request("ns/closed", 1), NOW)
        .await
        .unwrap();
    assert_eq!(closed.overall_code, Code::OverLimit as i32);
    assert!(closed.statuses[0].quota.is_none());
    assert_eq!(header(&closed, DEGRADED_HEADER), Some(STORE_UNAVAILABLE));
    assert!(header(&closed, "retry-after").is_some());
    assert!(!server.store_up());

    let mut text = String::new();
    server.encode_metrics(&mut text);
    for line in [
        "weft_ratelimit_store_up 0",
        "weft_ratelimit_store_errors_total{store=\"flaky\"} 2",
        "weft_ratelimit_decisions_total{descriptor=\"ns/open\",decision=\"failed_open\"} 1",
        "weft_ratelimit_decisions_total{descriptor=\"ns/closed\",decision=\"failed_closed\"} 1",
        "weft_ratelimit_hits_total{descriptor=\"ns/open\",decision=\"failed_open\"} 7",
    ] {
        assert!(text.contains(line), "want {line:?} in\n{text}");
    }

    store.down.store(false, Ordering::SeqCst);
    let back = server
        .decide_at(&request("ns/closed", 1), NOW)
        .await
        .unwrap();
    assert!(ok(back.overall_code));
    assert!(header(&back, DEGRADED_HEADER).is_none());
    assert!(server.store_up());
    let mut text = String::new();
    server.encode_metrics(&mut text);
    assert!(text.contains("weft_ratelimit_store_up 1"), "{text}");
}

#[tokio::test]
async fn decisions_are_counted_by_descriptor() {
    let server = ten_per_minute();
    for _ in 0..12 {
        server
            .should_rate_limit(&request("ns/ten", 1))
            .await
            .unwrap();
    }
    server.should_rate_limit(&request("ns/x", 3)).await.unwrap();
    let mut text = String::new();
    server.encode_metrics(&mut text);
    for line in [
        "weft_ratelimit_decisions_total{descriptor=\"ns/ten\",decision=\"ok\"} 10",
        "weft_ratelimit_decisions_total{descriptor=\"ns/ten\",decision=\"over_limit\"} 2",
        "weft_ratelimit_decisions_total{descriptor=\"unknown\",decision=\"unknown\"} 1",
        "weft_ratelimit_hits_total{descriptor=\"unknown\",decision=\"unknown\"} 3",
        "weft_ratelimit_request_seconds_count 13",
        "weft_ratelimit_store_up 1",
    ] {
        assert!(text.contains(line), "want {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn a_per_source_limit_counts_each_calling_service_apart() {
    let mut l = limit("ns/each", 3, RateLimitUnit::Minute, FailureMode::Open);
    l.per_source = true;
    let server = RateLimitServer::in_memory(Limits::from_iter([l]));
    let from = |source: Option<&str>| {
        let mut d = descriptor("weft-policy", "ns/each");
        if let Some(s) = source {
            d.entries.push(Entry {
                key: "source_cluster".into(),
                value: s.into(),
            });
        }
        RateLimitRequest {
            domain: "weft".into(),
            descriptors: vec![d],
            hits_addend: 1,
        }
    };
    let mut granted = std::collections::BTreeMap::new();
    // Envoy sends its node's cluster (`frontend`), weft its Service
    // (`frontend.default`): one caller.
    for source in [
        Some("frontend"),
        Some("frontend.default"),
        Some("checkout.shop"),
        None,
    ] {
        for _ in 0..3 {
            let r = server.decide_at(&from(source), NOW).await.unwrap();
            if ok(r.overall_code) {
                *granted
                    .entry(source.map_or("none", |s| s.split('.').next().unwrap()))
                    .or_insert(0) += 1;
            }
        }
    }
    assert_eq!(granted["frontend"], 3, "{granted:?}");
    assert_eq!(granted["checkout"], 3, "{granted:?}");
    assert_eq!(granted["none"], 3, "{granted:?}");
    // A shared limit ignores the caller.
    let shared = ten_per_minute();
    let mut n = 0;
    for s in ["a", "b", "c", "d"] {
        for _ in 0..3 {
            let mut req = request("ns/ten", 1);
            req.descriptors[0].entries.push(Entry {
                key: "source_cluster".into(),
                value: s.into(),
            });
            n += u32::from(ok(shared.decide_at(&req, NOW).await.unwrap().overall_code));
        }
    }
    assert_eq!(n, 10);
}
