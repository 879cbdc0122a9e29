use super::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn vector(results: &str) -> String {
    format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{results}]}}}}"#)
}

fn sample(labels: &str, value: &str) -> String {
    format!(r#"{{"metric":{{{labels}}},"value":[1764201600.123,"{value}"]}}"#)
}

#[test]
fn urls_are_http_host_port_and_an_optional_path() {
    for (given, shown) in [
        ("http://127.0.0.1:9090", "http://127.0.0.1:9090"),
        (
            "http://prometheus.monitoring:9090/",
            "http://prometheus.monitoring:9090",
        ),
        ("http://[::1]:9090/prom/", "http://[::1]:9090/prom"),
    ] {
        let url: PrometheusUrl = given.parse().unwrap();
        assert_eq!(url.to_string(), shown);
    }
    let url: PrometheusUrl = "http://[::1]:9090/prom".parse().unwrap();
    assert_eq!(
        url.api("sum(up) by (job)"),
        "http://[::1]:9090/prom/api/v1/query?query=sum%28up%29%20by%20%28job%29"
    );
    for (bad, why) in [
        ("127.0.0.1:9090", "no http:// scheme"),
        ("https://127.0.0.1:9090", "https"),
        ("ftp://127.0.0.1:9090", "scheme"),
        ("http://127.0.0.1", "no port"),
        ("http://:9090", "no host"),
        ("http://127.0.0.1:0", "port"),
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:http", "port"),
        ("http://::1:9090", "brackets"),
        ("http://127.0.0.1:9090/?x=1", "query"),
        ("http://user@127.0.0.1:9090", "user"),
        ("", "scheme"),
    ] {
        let e = bad.parse::<PrometheusUrl>().unwrap_err();
        assert!(e.why.contains(why), "{bad:?}: {e}");
        assert!(e.to_string().contains("http://HOST:PORT"), "{e}");
    }
}

#[test]
fn vectors_parse_with_their_labels_and_nan() {
    let body = vector(
        &[
            sample(
                r#""weft_service":"frontend","service":"catalog.default""#,
                "40.5",
            ),
            sample(r#""service":"catalog.default""#, "NaN"),
            sample(r#""service":"x""#, "+Inf"),
        ]
        .join(","),
    );
    let got = parse_vector(200, body.as_bytes()).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].label("weft_service"), "frontend");
    assert_eq!(got[0].label("service"), "catalog.default");
    assert_eq!(got[0].label("absent"), "");
    assert_eq!(got[0].value, 40.5);
    assert!(got[1].value.is_nan());
    assert_eq!(got[2].value, f64::INFINITY);
    assert_eq!(parse_vector(200, vector("").as_bytes()).unwrap(), []);
}

#[test]
fn failed_queries_say_why() {
    // A bad query: 400 with Prometheus' own error.
    let e = parse_vector(
        400,
        br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#,
    )
    .unwrap_err();
    assert_eq!(
        e,
        QueryError::Api {
            kind: "bad_data".into(),
            error: "parse error at char 5".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "query failed (bad_data): parse error at char 5"
    );
    // An error status even in a 200.
    assert!(matches!(
        parse_vector(
            200,
            br#"{"status":"error","errorType":"timeout","error":"query timed out"}"#
        ),
        Err(QueryError::Api { .. })
    ));
    // Not Prometheus: a proxy's 502 page, a 404 at a wrong path.
    assert_eq!(
        parse_vector(502, b"<html>Bad Gateway</html>\n").unwrap_err(),
        QueryError::Status {
            status: 502,
            body: "<html>Bad Gateway</html>".into()
        }
    );
    assert!(matches!(
        parse_vector(404, b"404 page not found"),
        Err(QueryError::Status { status: 404, .. })
    ));
    for body in [
        &b"not json"[..],
        br#"{"data":{}}"#,
        br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
        br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"many"]}]}}"#,
    ] {
        assert!(
            matches!(parse_vector(200, body), Err(QueryError::Unparsable(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn queries_count_grpc_failures_by_status_and_http_ones_by_code() {
    let q = queries(Duration::from_secs(30));
    assert_eq!(q.len(), 8);
    assert_eq!(
        q[0],
        r#"sum by (weft_service, service) (increase(weft_requests_total{direction="outbound",weft_service!=""}[30s]))"#
    );
    assert!(q[1].contains(r#"grpc_status="",code=~"5..""#), "{}", q[1]);
    assert!(q[1].contains(r#"grpc_status!~"0|""#), "{}", q[1]);
    assert!(
        q[2].starts_with("histogram_quantile(0.5, sum by (weft_service, service, le)"),
        "{}",
        q[2]
    );
    assert!(
        q[7].starts_with("histogram_quantile(0.99, sum by (service, le)"),
        "{}",
        q[7]
    );
}

/// Answers in [`queries`]' order: two edges into catalog, checkout's
/// latency NaN (histogram_quantile over buckets that did not move).
fn answers() -> Vec<Vec<Sample>> {
    let s = |caller: Option<&str>, value: f64| {
        let mut labels = BTreeMap::from([("service".to_string(), "catalog.default".to_string())]);
        if let Some(c) = caller {
            labels.insert("weft_service".into(), c.into());
        }
        Sample { labels, value }
    };
    let edges = |f: f64, c: f64| vec![s(Some("frontend"), f), s(Some("checkout.shop"), c)];
    vec![
        // A series Prometheus found outside /sd/prometheus: no caller.
        [edges(40.5, 5.0), vec![s(None, 7.0)]].concat(),
        vec![s(Some("frontend"), 10.0)],
        edges(0.002, f64::NAN),
        edges(0.009, f64::NAN),
        edges(0.0099, f64::NAN),
        vec![s(None, 0.003)],
        vec![s(None, 0.01)],
        vec![s(None, f64::NAN)],
    ]
}

#[test]
fn answers_become_services_and_edges() {
    let t = table(&answers());
    let frontend = &t.edges[&(
        "frontend.default".to_string(),
        "catalog.default".to_string(),
    )];
    assert_eq!((frontend.requests, frontend.failures), (40.5, 10.0));
    assert_eq!(frontend.latency, [Some(0.002), Some(0.009), Some(0.0099)]);
    let checkout = &t.edges[&("checkout.shop".to_string(), "catalog.default".to_string())];
    assert_eq!((checkout.requests, checkout.failures), (5.0, 0.0));
    assert_eq!(checkout.latency, [None; 3]);
    assert_eq!(t.edges.len(), 2, "no edge without a caller");
    let catalog = &t.services["catalog.default"];
    assert_eq!((catalog.requests, catalog.failures), (45.5, 10.0));
    assert_eq!(catalog.latency, [Some(0.003), Some(0.01), None]);

    let json = t.to_json(
        Duration::from_secs(10),
        None,
        &TrafficSource::Prometheus("http://127.0.0.1:9090".parse().unwrap()),
    );
    assert_eq!(
        json["source"],
        serde_json::json!({"kind": "prometheus", "prometheus": "http://127.0.0.1:9090"})
    );
    let item = &json["items"][0];
    let metric = |name: &str| {
        item["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(metric("requests_per_second"), 4.55);
    assert_eq!(metric("success_count"), 35.5);
    assert_eq!(metric("p50_response_latency"), 3.0);
    assert_eq!(metric("p99_response_latency"), serde_json::Value::Null);
}

#[test]
fn failures_fall_back_and_are_logged_and_counted_once_per_outage() {
    let none = PrometheusSource::new(None);
    assert_eq!(
        none.record(Ok(())).to_json(),
        serde_json::json!({"kind": "proxies", "prometheus": null})
    );
    let url: PrometheusUrl = "http://127.0.0.1:9".parse().unwrap();
    let p = PrometheusSource::new(Some(url.clone()));
    let metrics = |p: &PrometheusSource| {
        let mut out = String::new();
        p.encode(&mut out);
        out
    };
    assert!(
        metrics(&p).contains(r#"weft_traffic_source{kind="prometheus"} 1"#),
        "{}",
        metrics(&p)
    );
    let refused = QueryError::Connect("connection refused".into());
    for _ in 0..2 {
        let source = p.record(Err(&refused));
        assert_eq!(
            source.to_json(),
            serde_json::json!({
                "kind": "proxies",
                "prometheus": "http://127.0.0.1:9",
                "fallback": "Prometheus http://127.0.0.1:9 failed: connection refused",
            })
        );
    }
    let text = metrics(&p);
    assert!(
        text.contains("weft_traffic_prometheus_errors_total 2"),
        "{text}"
    );
    assert!(
        text.contains(r#"weft_traffic_source{kind="proxies"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"weft_traffic_source{kind="prometheus"} 0"#),
        "{text}"
    );
    assert!(p.failing.lock().unwrap().is_some());
    assert_eq!(p.record(Ok(())), TrafficSource::Prometheus(url));
    assert!(p.failing.lock().unwrap().is_none());
    assert!(metrics(&p).contains(r#"weft_traffic_source{kind="prometheus"} 1"#));
}

/// A Prometheus stand-in on loopback: answers every query with what
/// `answer(decoded query)` gives, `None` meaning never (a hung server).
async fn fake_prometheus(
    answer: impl Fn(&str) -> Option<(u16, String)> + Send + Sync + 'static,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let target = head.split(' ').nth(1).unwrap_or_default();
                let query = percent_decode(target.split_once("query=").map_or("", |(_, q)| q));
                let Some((status, body)) = answer(&query) else {
                    // Hold the connection open without answering.
                    let _ = conn.read(&mut buf).await;
                    std::future::pending::<()>().await;
                    return;
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn a_window_is_read_from_the_api_and_each_failure_named() {
    let ok = fake_prometheus(|q| {
        let value = if q.starts_with("histogram_quantile") {
            "0.004"
        } else if q.contains("grpc_status") {
            "1"
        } else {
            "3"
        };
        let labels = if q.contains("by (service") {
            r#""service":"catalog.default""#
        } else {
            r#""weft_service":"frontend","service":"catalog.default""#
        };
        Some((200, vector(&sample(labels, value))))
    })
    .await;
    let url: PrometheusUrl = format!("http://{ok}").parse().unwrap();
    let t = query_table(&url, Duration::from_secs(30)).await.unwrap();
    let g = &t.services["catalog.default"];
    assert_eq!((g.requests, g.failures), (3.0, 1.0));
    assert_eq!(g.latency, [Some(0.004); 3]);
    assert_eq!(t.edges.len(), 1);

    let bad = fake_prometheus(|_| {
        Some((
            422,
            r#"{"status":"error","errorType":"execution","error":"many-to-many matching not allowed"}"#
                .to_string(),
        ))
    })
    .await;
    let e = query_table(
        &format!("http://{bad}").parse().unwrap(),
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "query failed (execution): many-to-many matching not allowed"
    );

    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let e = query_table(
        &format!("http://{closed}").parse().unwrap(),
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert_eq!(e, QueryError::Connect("connection refused".into()));

    let hung = fake_prometheus(|_| None).await;
    let e = query_table(
        &format!("http://{hung}").parse().unwrap(),
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert_eq!(e, QueryError::Timeout(QUERY_TIMEOUT));
}

/// The admin route is synchronous: [`wait_for`] runs the queries from
/// inside `weft control`'s multi-thread runtime, and from outside any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_callers_wait_on_a_multi_thread_runtime() {
    let ok = fake_prometheus(|_| Some((200, vector("")))).await;
    let url: PrometheusUrl = format!("http://{ok}").parse().unwrap();
    let t = wait_for(query_table(&url, Duration::from_secs(5))).unwrap();
    assert_eq!(t, TrafficTable::default());
}

#[test]
fn synchronous_callers_wait_outside_a_runtime() {
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ok = server.block_on(fake_prometheus(|_| Some((200, vector("")))));
    let url: PrometheusUrl = format!("http://{ok}").parse().unwrap();
    let t = wait_for(query_table(&url, Duration::from_secs(5))).unwrap();
    assert_eq!(t, TrafficTable::default());
}
