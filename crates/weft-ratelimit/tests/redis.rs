//! Counting in a real `redis-server`: replicas share one limit, and a dead
//! Redis makes each limit's failureMode decide until it is back. These tests
//! fail (not skip) without redis-server: scripts/setup.sh installs it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use weft_model::{FailureMode, RateLimitUnit};
use weft_ratelimit::proto::Code;
use weft_ratelimit::{DEGRADED_HEADER, Limits, RateLimitServer, RedisStore, STORE_UNAVAILABLE};
use weft_test_support::{RedisServer, wait_until};

async fn redis() -> RedisServer {
    RedisServer::start()
        .await
        .expect("these tests need a real redis-server")
}

#[tokio::test]
async fn two_replicas_sharing_redis_count_one_limit() {
    let redis = redis().await;
    let limits = || {
        Limits::from_iter([limit(
            "ns/shared",
            10,
            RateLimitUnit::Minute,
            FailureMode::Closed,
        )])
    };
    // A generous timeout: this test is about counting, not about slow stores.
    let replica = || {
        let store = RedisStore::open(&redis.url())
            .unwrap()
            .with_timeout(Duration::from_secs(5));
        RateLimitServer::new(limits(), Arc::new(store))
    };
    let (a, b) = (replica(), replica());
    let (served_a, served_b) = (serve(a.clone()).await, serve(b.clone()).await);
    let (client_a, client_b) = (client(served_a.addr).await, client(served_b.addr).await);

    let answers = in_one_window(60, Duration::from_secs(5), || {
        let (mut ca, mut cb) = (client_a.clone(), client_b.clone());
        async move {
            let mut answers = Vec::new();
            for i in 0..20 {
                let c = if i % 2 == 0 { &mut ca } else { &mut cb };
                answers.push(ask(c, request("ns/shared", 1)).await);
            }
            answers
        }
    })
    .await;
    for r in &answers {
        assert!(header(r, DEGRADED_HEADER).is_none(), "store failed: {r:?}");
    }
    let total: u32 = answers.iter().map(granted).sum();
    assert_eq!(total, 10, "{answers:#?}");
    assert_eq!(answers.iter().filter(|r| is_ok(r)).count(), 10);
    // Both replicas refused some: the count really was shared.
    for (name, server) in [("a", &a), ("b", &b)] {
        let text = metrics_of(server);
        let over = metric(
            &text,
            "weft_ratelimit_decisions_total{descriptor=\"ns/shared\",decision=\"over_limit\"}",
        );
        assert!(over.is_some_and(|n| n >= 1.0), "replica {name}:\n{text}");
    }
}

#[tokio::test]
async fn a_dead_redis_fails_open_or_closed_and_counting_resumes_when_it_returns() {
    let mut redis = redis().await;
    let store = RedisStore::open(&redis.url()).unwrap();
    let server = RateLimitServer::new(
        Limits::from_iter([
            limit("ns/open", 1000, RateLimitUnit::Hour, FailureMode::Open),
            limit("ns/closed", 1000, RateLimitUnit::Hour, FailureMode::Closed),
        ]),
        Arc::new(store),
    );
    let served = serve(server.clone()).await;
    let client = client(served.addr).await;
    let degraded = |r: &weft_ratelimit::proto::RateLimitResponse| {
        header(r, DEGRADED_HEADER) == Some(STORE_UNAVAILABLE)
    };
    let counted = || {
        let mut client = client.clone();
        async move {
            let r = ask(&mut client, request("ns/closed", 1)).await;
            (is_ok(&r) && !degraded(&r)).then_some(r)
        }
    };
    wait_until(
        "a first answer counted in Redis",
        Duration::from_secs(10),
        counted,
    )
    .await
    .unwrap();

    redis.kill();
    let open = wait_until("the store failure to show", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let r = ask(&mut client, request("ns/open", 3)).await;
            degraded(&r).then_some(r)
        }
    })
    .await
    .unwrap();
    assert!(is_ok(&open), "fail open admits: {open:?}");
    assert_eq!(granted(&open), 3, "lease clients keep going");

    let closed = ask(&mut client.clone(), request("ns/closed", 1)).await;
    assert_eq!(closed.overall_code, Code::OverLimit as i32);
    assert!(degraded(&closed));
    assert_eq!(granted(&closed), 0);

    let text = metrics_of(&server);
    assert_eq!(
        metric(&text, "weft_ratelimit_store_up"),
        Some(0.0),
        "{text}"
    );
    assert!(
        metric(&text, "weft_ratelimit_store_errors_total{store=\"redis\"}")
            .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "weft_ratelimit_decisions_total{descriptor=\"ns/closed\",decision=\"failed_closed\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );

    // Back on the same port (empty): decisions come from Redis again.
    redis.restart().await.unwrap();
    let back = wait_until(
        "decisions counted in Redis again",
        Duration::from_secs(15),
        counted,
    )
    .await
    .unwrap();
    // The restarted Redis starts from zero: this window counts from there.
    assert!(back.statuses[0].limit_remaining >= 998, "{back:?}");
    let text = metrics_of(&server);
    assert_eq!(
        metric(&text, "weft_ratelimit_store_up"),
        Some(1.0),
        "{text}"
    );
    assert!(server.store_up());
}
