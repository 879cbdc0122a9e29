use super::*;

fn begun(log: &AccessLog, path: &str) -> Begun {
    let uri: Uri = path.parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("catalog"));
    headers.insert("user-agent", HeaderValue::from_static("curl/8 \"quoted\""));
    log.begin(
        (&Method::GET, &uri, &headers, Version::HTTP_11),
        ([127, 0, 0, 1], 40000).into(),
    )
}

fn entry(begun: Begun, code: u16, grpc_status: &'static str, error: &'static str) -> Entry {
    Entry {
        begun,
        labels: RequestLabels {
            direction: crate::metrics::Direction::Outbound,
            source: "frontend.default".into(),
            service: "catalog.default".into(),
            route: "catalog.default/0".into(),
            code,
            grpc_status,
            error,
        },
        end: BodyEnd::Complete,
        upstream: Some("127.0.0.1:8080".into()),
        bytes_sent: 12,
        headers_after: Duration::from_micros(1500),
        duration: Duration::from_micros(2500),
    }
}

fn start(dir: &std::path::Path, sampling: f64, fields: Vec<Field>) -> (AccessLog, PathBuf) {
    let path = dir.join("access.log");
    let opts = AccessLogOptions {
        target: Target::File(path.clone()),
        fields,
        sampling,
    };
    (
        AccessLog::start(&opts, &mut Registry::default()).unwrap(),
        path,
    )
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A fresh directory, removed when dropped.
fn temp_dir(name: &str) -> weft_test_support::TempDir {
    weft_test_support::TempDir::new(&format!("weft-access-log-{name}")).unwrap()
}

#[test]
fn field_lists_parse_in_order_and_name_what_is_wrong() {
    assert_eq!(
        Field::parse_list("response_code, path,start_time").unwrap(),
        vec![Field::ResponseCode, Field::Path, Field::StartTime]
    );
    let e = Field::parse_list("path,statuz").unwrap_err();
    assert!(
        e.contains("\"statuz\"") && e.contains("response_code"),
        "{e}"
    );
    let e = Field::parse_list("path,path").unwrap_err();
    assert!(e.contains("twice"), "{e}");
    assert!(Field::parse_list("path,,method").is_err());
    // Every field has a distinct name.
    let names: std::collections::HashSet<_> = Field::ALL.iter().map(|f| f.name()).collect();
    assert_eq!(names.len(), Field::ALL.len());
}

#[test]
fn a_line_is_one_json_object_with_every_field_escaped() {
    let dir = temp_dir("json");
    let (log, _) = start(dir.path(), 1.0, Field::ALL.to_vec());
    let mut b = begun(&log, "/search?q=%22x%22&s=\\n");
    b.trace_id([0xab; 16]);
    let mut out = String::new();
    entry(b, 503, "14", "connect-failed").write_json(&Field::ALL, &mut out);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), Field::ALL.len());
    assert_eq!(v["path"], "/search?q=%22x%22&s=\\n");
    assert_eq!(v["user_agent"], "curl/8 \"quoted\"");
    assert_eq!(v["authority"], "catalog");
    assert_eq!(v["response_code"], 503);
    assert_eq!(v["grpc_status"], 14);
    assert_eq!(v["error"], "connect-failed");
    assert_eq!(v["trace_id"], "ab".repeat(16));
    assert_eq!(v["request_id"], serde_json::Value::Null);
    assert_eq!(v["headers_ms"], 1.5);
    assert_eq!(v["duration_ms"], 2.5);
    assert_eq!(v["downstream_remote_address"], "127.0.0.1:40000");
    assert!(v["start_time"].as_str().unwrap().ends_with('Z'));
    // The fields come in the order asked.
    let order = [Field::Path, Field::Method];
    let mut out = String::new();
    entry(begun(&log, "/"), 200, "", "").write_json(&order, &mut out);
    assert_eq!(out, r#"{"path":"/","method":"GET"}"#);
}

#[test]
fn successes_are_sampled_and_failures_always_written() {
    let dir = temp_dir("sampling");
    let (log, path) = start(
        dir.path(),
        0.0,
        vec![Field::ResponseCode, Field::GrpcStatus, Field::Error],
    );
    for _ in 0..50 {
        log.log(entry(begun(&log, "/"), 200, "", ""));
        log.log(entry(begun(&log, "/"), 200, "0", ""));
        log.log(entry(begun(&log, "/"), 404, "", ""));
    }
    log.log(entry(begun(&log, "/"), 500, "", ""));
    log.log(entry(begun(&log, "/"), 200, "14", ""));
    log.log(entry(begun(&log, "/"), 429, "", "rate-limited"));
    assert!(log.flush(Duration::from_secs(5)));
    let got = lines(&path);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0]["response_code"], 500);
    assert_eq!(got[1]["grpc_status"], 14);
    assert_eq!(got[2]["error"], "rate-limited");

    let dir = temp_dir("all");
    let (log, path) = start(dir.path(), 1.0, vec![Field::ResponseCode]);
    for _ in 0..1000 {
        log.log(entry(begun(&log, "/"), 200, "", ""));
    }
    assert!(log.flush(Duration::from_secs(5)));
    assert_eq!(lines(&path).len(), 1000);
}

#[test]
fn a_reopen_moves_to_a_new_file_at_the_same_path() {
    let dir = temp_dir("reopen");
    let (log, path) = start(dir.path(), 1.0, vec![Field::Path]);
    log.log(entry(begun(&log, "/before"), 200, "", ""));
    assert!(log.flush(Duration::from_secs(5)));
    let rotated = dir.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen();
    // The writer reopens before its next batch (or within its idle tick).
    log.log(entry(begun(&log, "/after"), 200, "", ""));
    assert!(log.flush(Duration::from_secs(5)));
    assert_eq!(
        lines(&rotated),
        vec![serde_json::json!({"path": "/before"})]
    );
    assert_eq!(lines(&path), vec![serde_json::json!({"path": "/after"})]);
}

#[test]
fn bad_options_are_named() {
    let mut r = Registry::default();
    let opts = |target, sampling, fields| AccessLogOptions {
        target,
        fields,
        sampling,
    };
    let e = AccessLog::start(&opts(Target::Stdout, 1.5, Field::ALL.to_vec()), &mut r)
        .err()
        .unwrap();
    assert!(e.to_string().contains("--access-log-sampling"), "{e}");
    let e = AccessLog::start(&opts(Target::Stdout, 1.0, vec![]), &mut r)
        .err()
        .unwrap();
    assert!(e.to_string().contains("--access-log-fields"), "{e}");
    let e = AccessLog::start(
        &opts(
            Target::File("/nonexistent-dir/access.log".into()),
            1.0,
            Field::ALL.to_vec(),
        ),
        &mut r,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("/nonexistent-dir/access.log"), "{e}");
}
