use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weft_test_support::{HttpClient, TestResponse, wait_until};

use super::*;

mod faults;

async fn app(cfg: AppConfig) -> RunningApp {
    start(cfg).await.expect("starting the sample app")
}

async fn get(app: &RunningApp, path: &str) -> TestResponse {
    HttpClient::http1()
        .get(app.local_addr(), "app.test", path)
        .await
        .unwrap()
}

/// 1 MiB that is not one repeated byte, so a reordering would show.
fn mebibyte() -> Bytes {
    (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[tokio::test]
async fn answers_any_path_with_body_size_bytes_and_its_name() {
    let app = app(AppConfig {
        name: "catalog-v1".into(),
        body_size: 1000,
        ..Default::default()
    })
    .await;
    let response = get(&app, "/any/path?q=1").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body.len(), 1000);
    assert!(response.body.iter().all(|b| *b == b'x'));
    assert_eq!(response.header(APP_NAME_HEADER), Some("catalog-v1"));
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(response.header(DOWNSTREAM_HEADER), None);
}

#[tokio::test]
async fn echoes_a_mebibyte_post_over_http1_and_h2c() {
    let app = app(AppConfig::default()).await;
    let payload = mebibyte();
    for (client, version) in [
        (HttpClient::http1(), Version::HTTP_11),
        (HttpClient::h2c(), Version::HTTP_2),
    ] {
        let response = client
            .post(app.local_addr(), "app.test", "/upload", payload.clone())
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.version, version);
        assert_eq!(response.header(APP_NAME_HEADER), Some("app"));
        assert!(
            response.body == payload,
            "{version:?}: echo differs from the request body"
        );
    }
}

#[tokio::test]
async fn echoes_put_request_trailers_as_response_trailers() {
    let app = app(AppConfig::default()).await;
    let stream = tokio::net::TcpStream::connect(app.local_addr())
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(b"with trailers"))
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    let req = Request::put(format!("http://{}/echo", app.local_addr()))
        .body(body)
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("echoed trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "with trailers");
}

#[tokio::test]
async fn error_rate_injects_about_that_share_of_errors() {
    let app = app(AppConfig {
        name: "flaky".into(),
        error_rate: 0.3,
        ..Default::default()
    })
    .await;
    let client = HttpClient::http1();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = client.clone();
        let addr = app.local_addr();
        tasks.spawn(async move {
            let mut errors = 0u64;
            for _ in 0..100 {
                let response = client.get(addr, "flaky", "/").await.unwrap();
                if response.status == StatusCode::SERVICE_UNAVAILABLE {
                    assert_eq!(response.body, "injected error from flaky");
                    assert_eq!(response.header(APP_NAME_HEADER), Some("flaky"));
                    errors += 1;
                } else {
                    assert_eq!(response.status, StatusCode::OK);
                }
            }
            errors
        });
    }
    let errors: u64 = tasks.join_all().await.into_iter().sum();
    assert!(
        (240..=360).contains(&errors),
        "{errors} errors in 1000 requests at rate 0.3"
    );
    assert_eq!(
        app.stats(),
        AppStats {
            requests: 1000,
            errors,
            ..AppStats::default()
        }
    );
}

#[tokio::test]
async fn error_status_is_configurable() {
    let app = app(AppConfig {
        error_rate: 1.0,
        error_status: 500,
        ..Default::default()
    })
    .await;
    assert_eq!(
        get(&app, "/").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn status_path_answers_that_status() {
    let app = app(AppConfig::default()).await;
    assert_eq!(
        get(&app, "/status/418").await.status,
        StatusCode::IM_A_TEAPOT
    );
    assert_eq!(
        get(&app, "/status/teapot").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(app.stats().errors, 0, "asked-for statuses are not errors");
}

#[tokio::test]
async fn headers_path_shows_what_arrived() {
    let app = app(AppConfig::default()).await;
    for client in [HttpClient::http1(), HttpClient::h2c()] {
        let req = Request::get("/headers")
            .header("host", "catalog.shop")
            .header("x-custom", "forty-two")
            .body(Full::default())
            .unwrap();
        let response = client.send_to(app.local_addr(), req).await.unwrap();
        assert_eq!(response.header("content-type"), Some("application/json"));
        let seen: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(seen["x-custom"], "forty-two", "{seen}");
        // Over h2c the host travels as :authority.
        assert_eq!(seen["host"], "catalog.shop", "{seen}");
        let version = format!("{:?}", response.version);
        assert_eq!(
            response.header(REQUEST_VERSION_HEADER),
            Some(version.as_str())
        );
    }
}

#[tokio::test]
async fn stream_path_sends_numbered_chunks() {
    let app = app(AppConfig::default()).await;
    let response = get(&app, "/stream/3").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body, "chunk-0\nchunk-1\nchunk-2\n");
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
}

#[tokio::test]
async fn latency_delays_every_request() {
    let app = app(AppConfig {
        latency: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let started = Instant::now();
    assert_eq!(get(&app, "/").await.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn delay_path_waits_that_long() {
    let app = app(AppConfig::default()).await;
    let started = Instant::now();
    assert_eq!(get(&app, "/delay/40").await.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(40),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn calls_report_who_answered_downstream() {
    let b = app(AppConfig {
        name: "B".into(),
        ..Default::default()
    })
    .await;
    let c = app(AppConfig {
        name: "C".into(),
        ..Default::default()
    })
    .await;
    let a = app(AppConfig {
        name: "A".into(),
        calls: vec![
            Call::direct(b.local_addr(), "/items"),
            Call::direct(c.local_addr(), "/"),
        ],
        ..Default::default()
    })
    .await;
    for _ in 0..2 {
        let response = get(&a, "/").await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.header(APP_NAME_HEADER), Some("A"));
        assert_eq!(response.header(DOWNSTREAM_HEADER), Some("B,C"));
    }
    assert_eq!(b.stats().requests, 2);
}

#[tokio::test]
async fn calls_send_the_configured_host_to_the_via_address() {
    // A stand-in outbound proxy that keeps the request head it received.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let via = proxy.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut stream, _) = proxy.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nx-app-name: catalog-v2\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8(head).unwrap().to_ascii_lowercase()
    });
    let a = app(AppConfig {
        name: "frontend".into(),
        calls: vec![format!("catalog.shop/items?page=2@{via}").parse().unwrap()],
        ..Default::default()
    })
    .await;
    let response = get(&a, "/").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header(DOWNSTREAM_HEADER), Some("catalog-v2"));
    let head = seen.await.unwrap();
    assert!(head.starts_with("get /items?page=2 http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: catalog.shop\r\n"), "{head}");
}

#[tokio::test]
async fn a_failing_call_turns_into_502_naming_it() {
    let b = app(AppConfig {
        name: "B".into(),
        ..Default::default()
    })
    .await;
    let failing = Call::direct(b.local_addr(), "/status/503");
    let a = app(AppConfig {
        name: "A".into(),
        calls: vec![failing.clone()],
        ..Default::default()
    })
    .await;
    let response = get(&a, "/").await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    let text = response.text();
    assert!(
        text.contains(&failing.to_string()) && text.contains("503"),
        "{text}"
    );
    assert_eq!(response.header(DOWNSTREAM_HEADER), Some("B"));
    assert_eq!(a.stats().errors, 1);

    b.shutdown().await;
    let response = get(&a, "/").await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    assert!(response.text().contains("failed"), "{}", response.text());
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_closes_the_port() {
    let app = app(AppConfig::default()).await;
    let addr = app.local_addr();
    let in_flight = tokio::spawn(async move {
        HttpClient::http1()
            .get(addr, "app.test", "/delay/200")
            .await
    });
    wait_until(
        "the slow request to arrive",
        Duration::from_secs(5),
        || async { app.stats().requests == 1 },
    )
    .await
    .unwrap();
    app.shutdown().await;
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn rejects_an_error_rate_outside_zero_to_one() {
    let Err(err) = start(AppConfig {
        error_rate: 1.5,
        ..Default::default()
    })
    .await
    else {
        panic!("an error rate of 1.5 was accepted");
    };
    assert!(err.to_string().contains("error_rate"), "{err}");
}
