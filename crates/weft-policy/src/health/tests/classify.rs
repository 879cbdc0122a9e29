use std::time::Duration;

use crate::health::*;

const MS: Duration = Duration::from_millis(5);

fn classifier(codes: FailureCodes) -> Classifier {
    Classifier::new(&codes).unwrap()
}

fn verdict(c: &Classifier, obs: Observation<'_>) -> Verdict {
    c.classify(&obs)
}

fn ranges(specs: &[&str]) -> Vec<StatusRange> {
    specs.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn defaults_fail_5xx_connection_failures_resets_timeouts_and_server_grpc_codes() {
    let c = classifier(FailureCodes::default());
    for status in [500, 503, 599] {
        assert_eq!(
            verdict(&c, Observation::response(status, MS)),
            Verdict::Failure(FailureReason::HttpStatus(status))
        );
    }
    for status in [200, 204, 302, 404, 429] {
        assert_eq!(
            verdict(&c, Observation::response(status, MS)),
            Verdict::Success
        );
    }
    let local = [
        (Outcome::ConnectFailed, FailureReason::ConnectFailure),
        (Outcome::Reset, FailureReason::Reset),
        (Outcome::TimedOut, FailureReason::Timeout),
    ];
    for (outcome, reason) in local {
        assert_eq!(
            verdict(&c, Observation::of(outcome, MS)),
            Verdict::Failure(reason)
        );
    }
    let grpc = |code| verdict(&c, Observation::response(200, MS).with_grpc_status(code));
    for code in [
        GrpcCode::UNKNOWN,
        GrpcCode::DEADLINE_EXCEEDED,
        GrpcCode::INTERNAL,
        GrpcCode::UNAVAILABLE,
        GrpcCode::DATA_LOSS,
    ] {
        assert_eq!(
            grpc(code),
            Verdict::Failure(FailureReason::GrpcStatus(code))
        );
    }
    // Codes that say the request, not the server, was wrong.
    for code in [
        GrpcCode::OK,
        GrpcCode::NOT_FOUND,
        GrpcCode::INVALID_ARGUMENT,
        GrpcCode::PERMISSION_DENIED,
    ] {
        assert_eq!(grpc(code), Verdict::Success);
    }
    assert_eq!(c.header_name(), None);
}

#[test]
fn http_rules_take_single_codes_classes_and_ranges() {
    let c = classifier(FailureCodes {
        http: ranges(&["429", "502-504", "4xx"]),
        ..FailureCodes::none()
    });
    let failed = |s| verdict(&c, Observation::response(s, MS)).is_failure();
    assert!(failed(429) && failed(400) && failed(499));
    assert!(failed(502) && failed(503) && failed(504));
    assert!(!failed(500) && !failed(501) && !failed(505) && !failed(200));
    // Statuses outside 100-599 (a broken upstream) fall through.
    assert!(!failed(0) && !failed(999) && !failed(u16::MAX));
}

#[test]
fn grpc_status_is_read_from_trailers_or_a_trailers_only_response() {
    let c = classifier(FailureCodes {
        grpc: vec!["UNAVAILABLE".parse().unwrap(), "4".parse().unwrap()],
        ..FailureCodes::none()
    });
    // A normal response: HEADERS (no grpc-status), DATA, trailers.
    let normal = GrpcCode::from_response(None, Some("14"));
    // Trailers-only: the one HEADERS frame carries grpc-status.
    let trailers_only = GrpcCode::from_response(Some("4"), None);
    assert_eq!(normal, Some(GrpcCode::UNAVAILABLE));
    assert_eq!(trailers_only, Some(GrpcCode::DEADLINE_EXCEEDED));
    for code in [normal, trailers_only] {
        let obs = Observation::response(200, MS).with_grpc_status(code.unwrap());
        assert_eq!(
            verdict(&c, obs),
            Verdict::Failure(FailureReason::GrpcStatus(code.unwrap()))
        );
    }
    let ok = GrpcCode::from_response(None, Some("0")).unwrap();
    assert_eq!(
        verdict(&c, Observation::response(200, MS).with_grpc_status(ok)),
        Verdict::Success
    );
    // Not gRPC at all.
    assert_eq!(GrpcCode::from_response(None, None), None);
    // Values gRPC clients read as UNKNOWN.
    assert_eq!(GrpcCode::from_wire("17"), GrpcCode::UNKNOWN);
    assert_eq!(GrpcCode::from_wire("fail"), GrpcCode::UNKNOWN);
    assert_eq!(GrpcCode::from_wire(" 13 "), GrpcCode::INTERNAL);
}

#[test]
fn business_code_matches_in_headers_and_in_trailers() {
    let header = HeaderRule::parse("X-Biz-Code", &["5003", "6000-6099", "E_STOCK"]).unwrap();
    assert_eq!(
        header.name(),
        "x-biz-code",
        "stored lowercase, as HTTP/2 sends it"
    );
    let c = classifier(FailureCodes {
        header: Some(header),
        ..FailureCodes::none()
    });
    assert_eq!(c.header_name(), Some("x-biz-code"));
    let in_header = |v| verdict(&c, Observation::response(200, MS).with_header_code(v));
    let in_trailer = |v| verdict(&c, Observation::response(200, MS).with_trailer_code(v));
    let header_failure = Verdict::Failure(FailureReason::BusinessCode(CodePlace::Header));
    let trailer_failure = Verdict::Failure(FailureReason::BusinessCode(CodePlace::Trailer));
    for v in ["5003", " 5003 ", "05003", "6000", "6042", "6099", "E_STOCK"] {
        assert_eq!(in_header(v), header_failure, "{v:?} in headers");
        assert_eq!(in_trailer(v), trailer_failure, "{v:?} in trailers");
    }
    for v in ["0", "5004", "5999", "6100", "e_stock", "", "5003x"] {
        assert_eq!(in_header(v), Verdict::Success, "{v:?}");
        assert_eq!(in_trailer(v), Verdict::Success, "{v:?}");
    }
    // A success code in the headers does not hide a failure in trailers.
    let both = Observation::response(200, MS)
        .with_header_code("0")
        .with_trailer_code("5003");
    assert_eq!(verdict(&c, both), trailer_failure);
}

#[test]
fn latency_threshold_fails_slow_responses_that_otherwise_succeed() {
    let c = classifier(FailureCodes {
        latency_above: Some(Duration::from_millis(250)),
        ..FailureCodes::default()
    });
    let at = |ms| verdict(&c, Observation::response(200, Duration::from_millis(ms)));
    assert_eq!(at(250), Verdict::Success);
    assert_eq!(at(251), Verdict::Failure(FailureReason::Latency));
    // A slow 503 is reported as the 503.
    let slow_503 = Observation::response(503, Duration::from_secs(2));
    assert_eq!(
        verdict(&c, slow_503),
        Verdict::Failure(FailureReason::HttpStatus(503))
    );
}

#[test]
fn disabled_connection_rules_ignore_the_attempt_rather_than_count_a_success() {
    let c = classifier(FailureCodes::none());
    for outcome in [Outcome::ConnectFailed, Outcome::Reset, Outcome::TimedOut] {
        assert_eq!(verdict(&c, Observation::of(outcome, MS)), Verdict::Ignored);
    }
    assert_eq!(
        verdict(&c, Observation::response(500, MS)),
        Verdict::Success
    );
}

#[test]
fn the_first_matching_rule_names_the_reason() {
    let c = classifier(FailureCodes {
        header: Some(HeaderRule::parse("x-biz-code", &["1"]).unwrap()),
        latency_above: Some(Duration::from_millis(1)),
        ..FailureCodes::default()
    });
    let everything = Observation::response(503, Duration::from_secs(1))
        .with_grpc_status(GrpcCode::UNAVAILABLE)
        .with_header_code("1");
    assert_eq!(
        verdict(&c, everything),
        Verdict::Failure(FailureReason::HttpStatus(503))
    );
    let grpc_and_code = Observation {
        outcome: Outcome::Response { status: 200 },
        ..everything
    };
    assert_eq!(
        verdict(&c, grpc_and_code),
        Verdict::Failure(FailureReason::GrpcStatus(GrpcCode::UNAVAILABLE))
    );
    let labels: Vec<_> = [
        FailureReason::ConnectFailure,
        FailureReason::Reset,
        FailureReason::Timeout,
        FailureReason::HttpStatus(500),
        FailureReason::GrpcStatus(GrpcCode::INTERNAL),
        FailureReason::BusinessCode(CodePlace::Trailer),
        FailureReason::Latency,
    ]
    .iter()
    .map(FailureReason::as_str)
    .collect();
    assert_eq!(
        labels,
        [
            "connect_failure",
            "reset",
            "timeout",
            "http_status",
            "grpc_status",
            "business_code",
            "latency"
        ]
    );
}

#[test]
fn codes_parse_from_the_forms_users_write() {
    let r: StatusRange = "5xx".parse().unwrap();
    assert_eq!((r.lo(), r.hi()), (500, 599));
    assert_eq!("5XX".parse::<StatusRange>().unwrap(), r);
    assert_eq!("500-599".parse::<StatusRange>().unwrap(), r);
    assert_eq!(
        " 429 ".parse::<StatusRange>().unwrap(),
        StatusRange::single(429).unwrap()
    );
    for s in ["5xx", "429", "500-504"] {
        assert_eq!(
            s.parse::<StatusRange>().unwrap().to_string(),
            s,
            "round trip"
        );
    }
    for s in ["UNAVAILABLE", "unavailable", "Unavailable", "14"] {
        assert_eq!(s.parse::<GrpcCode>().unwrap(), GrpcCode::UNAVAILABLE, "{s}");
    }
    for s in [
        "DEADLINE_EXCEEDED",
        "DeadlineExceeded",
        "deadline-exceeded",
        "4",
    ] {
        assert_eq!(
            s.parse::<GrpcCode>().unwrap(),
            GrpcCode::DEADLINE_EXCEEDED,
            "{s}"
        );
    }
    assert_eq!("CANCELED".parse::<GrpcCode>().unwrap(), GrpcCode::CANCELLED);
    assert_eq!(GrpcCode::UNAVAILABLE.to_string(), "UNAVAILABLE");
    let m = |s: &str| s.parse::<CodeMatcher>().unwrap();
    assert_eq!(m("5003"), CodeMatcher::Code(5003));
    assert_eq!(m("-1"), CodeMatcher::Code(-1));
    assert_eq!(m("5000-5099"), CodeMatcher::Range(5000, 5099));
    assert_eq!(m("-5-5"), CodeMatcher::Range(-5, 5));
    assert_eq!(m("ERR-7"), CodeMatcher::Text("ERR-7".into()));
    assert_eq!(m("é-1"), CodeMatcher::Text("é-1".into()));
}

#[test]
fn parse_errors_name_the_input_and_the_problem() {
    let err = |r: Result<StatusRange, CodeParseError>| r.unwrap_err().to_string();
    assert_eq!(
        err("6xx".parse()),
        r#"invalid HTTP status "6xx": class must be 1xx to 5xx"#
    );
    assert_eq!(
        err("99".parse()),
        r#"invalid HTTP status "99": status codes are 100 to 599"#
    );
    assert_eq!(
        err("504-500".parse()),
        r#"invalid HTTP status "504-500": range starts above its end"#
    );
    assert!(err("fivexx".parse()).contains("expected a status (429), a class (5xx)"));
    assert!(err("".parse()).contains(r#""""#));

    let grpc = |s: &str| s.parse::<GrpcCode>().unwrap_err().to_string();
    assert_eq!(grpc("17"), r#"invalid gRPC status "17": codes are 0 to 16"#);
    assert_eq!(
        grpc("UNAVAILBLE"),
        r#"invalid gRPC status "UNAVAILBLE": expected a code name (UNAVAILABLE) or number (14)"#
    );

    let code = |s: &str| s.parse::<CodeMatcher>().unwrap_err().to_string();
    assert_eq!(code("  "), r#"invalid business code "  ": empty code"#);
    assert_eq!(
        code("9-1"),
        r#"invalid business code "9-1": range starts above its end"#
    );
    assert!(code("a\nb").contains("control characters"));

    let rule = |name: &str, codes: &[&str]| HeaderRule::parse(name, codes).unwrap_err();
    assert!(
        rule("x biz", &["1"])
            .to_string()
            .starts_with(r#"invalid header name "x biz""#)
    );
    assert!(rule("", &["1"]).to_string().contains("HTTP field name"));
    assert_eq!(
        rule("x-biz-code", &[]).to_string(),
        r#"invalid header rule "x-biz-code": lists no failure codes"#
    );
    assert_eq!(
        rule("x-biz-code", &["1", "7-3"]).input(),
        "7-3",
        "the bad entry is named"
    );
}

#[test]
fn failure_codes_that_would_fail_everything_are_rejected() {
    let ok_code = FailureCodes {
        grpc: vec![GrpcCode::OK],
        ..FailureCodes::default()
    };
    let err = Classifier::new(&ok_code).unwrap_err();
    assert_eq!(err.field(), "error_codes.grpc");
    assert!(
        err.to_string().contains("OK (0) cannot be a failure code"),
        "{err}"
    );
    let zero_latency = FailureCodes {
        latency_above: Some(Duration::ZERO),
        ..FailureCodes::default()
    };
    let err = Classifier::new(&zero_latency).unwrap_err();
    assert_eq!(
        err.to_string(),
        "error_codes.latency_above: must be > 0: every response would count as a failure"
    );
}
