//! The long tail, business errors and faults changed at runtime, seen by a
//! client of the app.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use weft_test_support::{HttpClient, TestResponse, wait_until};

use super::{app, get};
use crate::app::{APP_NAME_HEADER, AppConfig, AppStats, BizErrorHeader, RunningApp, start};

/// `count` GETs of `/` from 10 concurrent clients; each response with how
/// long it took.
async fn many_gets(app: &RunningApp, count: usize) -> Vec<(TestResponse, Duration)> {
    let client = HttpClient::http1();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = client.clone();
        let addr = app.local_addr();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for _ in 0..count / 10 {
                let started = Instant::now();
                let response = client.get(addr, "app.test", "/").await.unwrap();
                out.push((response, started.elapsed()));
            }
            out
        });
    }
    tasks.join_all().await.into_iter().flatten().collect()
}

/// A control request: `METHOD /_weft/fault...` with `body`.
async fn control(app: &RunningApp, method: Method, path: &str, body: &str) -> TestResponse {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app.test")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    HttpClient::http1()
        .send_to(app.local_addr(), req)
        .await
        .unwrap()
}

fn json(response: &TestResponse) -> serde_json::Value {
    assert_eq!(response.header("content-type"), Some("application/json"));
    serde_json::from_slice(&response.body).unwrap()
}

#[tokio::test]
async fn slow_share_sends_that_share_to_the_slow_latency() {
    let app = app(AppConfig {
        slow_share: 0.2,
        slow_latency: Duration::from_millis(30),
        ..Default::default()
    })
    .await;
    let answers = many_gets(&app, 500).await;
    assert!(answers.iter().all(|(r, _)| r.status == StatusCode::OK));
    let slow = app.stats().slow;
    // Binomial(500, 0.2): 100, sd 9; +- 5 sd.
    assert!((55..=145).contains(&slow), "{slow} of 500 slow at 0.2");
    let took_long = answers
        .iter()
        .filter(|(_, took)| *took >= Duration::from_millis(30))
        .count() as u64;
    assert!(
        took_long >= slow,
        "{slow} drew the slow latency but only {took_long} took 30 ms or more"
    );
}

#[tokio::test]
async fn biz_error_share_answers_200_with_the_header_for_that_share() {
    let app = app(AppConfig {
        name: "catalog".into(),
        biz_error_share: 0.3,
        biz_error_header: "x-biz-code:5003".parse().unwrap(),
        ..Default::default()
    })
    .await;
    let answers = many_gets(&app, 1000).await;
    let mut marked = 0u64;
    for (response, _) in &answers {
        assert_eq!(response.status, StatusCode::OK, "a business error is a 200");
        assert_eq!(response.header(APP_NAME_HEADER), Some("catalog"));
        assert_eq!(response.body.len(), 16, "the normal body");
        if let Some(code) = response.header("x-biz-code") {
            assert_eq!(code, "5003");
            marked += 1;
        }
    }
    assert!(
        (240..=360).contains(&marked),
        "{marked} business errors in 1000 requests at 0.3"
    );
    assert_eq!(
        app.stats(),
        AppStats {
            requests: 1000,
            biz_errors: marked,
            ..AppStats::default()
        }
    );
}

#[tokio::test]
async fn biz_errors_reach_h2c_clients_and_delayed_answers_too() {
    let app = app(AppConfig {
        latency: Duration::from_millis(2),
        biz_error_share: 1.0,
        biz_error_header: BizErrorHeader::default(),
        ..Default::default()
    })
    .await;
    let response = HttpClient::h2c()
        .get(app.local_addr(), "app.test", "/")
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-biz-code"), Some("5003"));
}

#[tokio::test]
async fn a_fault_change_takes_effect_for_the_next_request_and_delete_resets() {
    let app = app(AppConfig::default()).await;
    let shown = json(&control(&app, Method::GET, "/_weft/fault", "").await);
    assert_eq!(shown["latency"], "0ms", "{shown}");
    assert_eq!(shown["biz_error_header"], "x-biz-code:5003", "{shown}");
    assert_eq!(get(&app, "/").await.header("x-biz-code"), None);

    // Query parameters.
    let changed = control(
        &app,
        Method::POST,
        "/_weft/fault?biz_error_share=1&biz_error_header=x-err:42",
        "",
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text());
    assert_eq!(json(&changed)["biz_error_share"], 1.0);
    assert_eq!(get(&app, "/").await.header("x-err"), Some("42"));

    // A JSON body; the fields not named keep their values.
    let changed = control(&app, Method::POST, "/_weft/fault", r#"{"latency": "40ms"}"#).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text());
    let started = Instant::now();
    let response = get(&app, "/").await;
    assert!(
        started.elapsed() >= Duration::from_millis(40),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.header("x-err"), Some("42"), "biz_error_share kept");

    let reset = json(&control(&app, Method::DELETE, "/_weft/fault", "").await);
    assert_eq!(reset["latency"], "0ms", "{reset}");
    assert_eq!(reset["biz_error_share"], 0.0, "{reset}");
    assert_eq!(get(&app, "/").await.header("x-err"), None);

    // Control requests are not traffic.
    assert_eq!(app.stats().requests, 4);
    let stats = json(&control(&app, Method::GET, "/_weft/stats", "").await);
    assert_eq!(stats["requests"], 4, "{stats}");
    assert_eq!(stats["biz_errors"], 2, "{stats}");
}

#[tokio::test]
async fn a_bad_change_is_rejected_naming_the_field_and_changes_nothing() {
    let app = app(AppConfig::default()).await;
    for (method, path, body, field) in [
        (
            Method::POST,
            "/_weft/fault?slow_share=1.5",
            "",
            "slow_share",
        ),
        (
            Method::POST,
            "/_weft/fault?latency=0ms&error_rate=2",
            "",
            "error_rate",
        ),
        (
            Method::POST,
            "/_weft/fault",
            r#"{"biz_error_header": "nocolon"}"#,
            "biz_error_header",
        ),
        (Method::POST, "/_weft/fault", r#"{"sloww": 1}"#, "sloww"),
    ] {
        let response = control(&app, method, path, body).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert!(response.text().contains(field), "{}", response.text());
    }
    let shown = json(&control(&app, Method::GET, "/_weft/fault", "").await);
    assert_eq!(shown["slow_share"], 0.0, "{shown}");
    assert_eq!(shown["error_rate"], 0.0, "{shown}");
    assert_eq!(
        control(&app, Method::PATCH, "/_weft/fault", "")
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        control(&app, Method::GET, "/_weft/nothing", "")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_timed_change_reverts_by_itself() {
    let app = app(AppConfig::default()).await;
    let changed = control(
        &app,
        Method::POST,
        "/_weft/fault?biz_error_share=1&for=200ms",
        "",
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text());
    assert_eq!(get(&app, "/").await.header("x-biz-code"), Some("5003"));
    wait_until(
        "the business errors to stop",
        Duration::from_secs(5),
        || async { get(&app, "/").await.header("x-biz-code").is_none() },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn rejects_shares_outside_zero_to_one_naming_them() {
    for (cfg, field) in [
        (
            AppConfig {
                slow_share: 1.01,
                ..Default::default()
            },
            "slow_share",
        ),
        (
            AppConfig {
                biz_error_share: -0.5,
                ..Default::default()
            },
            "biz_error_share",
        ),
    ] {
        let Err(err) = start(cfg).await else {
            panic!("{field} out of range was accepted");
        };
        assert!(err.to_string().contains(field), "{err}");
    }
}
