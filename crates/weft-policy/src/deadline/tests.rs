use proptest::prelude::*;

use super::*;
use crate::retry::FailedAttempt;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn grpc_kind(value: &str) -> DeadlineErrorKind {
    parse_grpc_timeout(value).unwrap_err().kind
}

fn ms_kind(value: &str) -> DeadlineErrorKind {
    parse_deadline_ms(value).unwrap_err().kind
}

#[test]
fn parses_every_grpc_unit() {
    let cases = [
        ("1H", Duration::from_secs(3600)),
        ("2M", Duration::from_secs(120)),
        ("3S", Duration::from_secs(3)),
        ("4m", ms(4)),
        ("5u", Duration::from_micros(5)),
        ("6n", Duration::from_nanos(6)),
        ("0n", Duration::ZERO),
        ("00000010m", ms(10)),
        ("99999999n", Duration::from_nanos(99_999_999)),
        ("99999999H", Duration::from_secs(99_999_999 * 3600)),
    ];
    for (value, want) in cases {
        assert_eq!(parse_grpc_timeout(value), Ok(want), "{value}");
    }
}

#[test]
fn trims_surrounding_whitespace_only() {
    assert_eq!(parse_grpc_timeout(" \t10S \t"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_deadline_ms("  250\t"), Ok(ms(250)));
    assert_eq!(
        grpc_kind("1 0S"),
        DeadlineErrorKind::InvalidCharacter { at: 1, found: b' ' }
    );
    assert_eq!(
        grpc_kind("10 S"),
        DeadlineErrorKind::InvalidCharacter { at: 2, found: b' ' }
    );
    assert_eq!(
        ms_kind("2 50"),
        DeadlineErrorKind::InvalidCharacter { at: 1, found: b' ' }
    );
}

#[test]
fn rejects_every_bad_grpc_timeout_with_its_reason() {
    use DeadlineErrorKind::*;
    let cases = [
        ("", Empty),
        ("   ", Empty),
        ("S", NoDigits),
        ("100", MissingUnit),
        ("10s", UnknownUnit(b's')),
        ("10h", UnknownUnit(b'h')),
        ("10x", UnknownUnit(b'x')),
        ("123456789S", TooManyDigits { digits: 9 }),
        ("000000001n", TooManyDigits { digits: 9 }),
        ("-5S", Sign),
        ("+5S", Sign),
        ("-", Sign),
        ("1.5S", InvalidCharacter { at: 1, found: b'.' }),
        ("5S,3S", InvalidCharacter { at: 1, found: b'S' }),
        ("1e3m", InvalidCharacter { at: 1, found: b'e' }),
    ];
    for (value, want) in cases {
        let err = parse_grpc_timeout(value).unwrap_err();
        assert_eq!(err.kind, want, "{value:?}");
        assert_eq!(err.header, DeadlineHeader::GrpcTimeout);
    }
}

#[test]
fn rejects_every_bad_millisecond_value_with_its_reason() {
    use DeadlineErrorKind::*;
    assert_eq!(ms_kind(""), Empty);
    assert_eq!(ms_kind("-1"), Sign);
    assert_eq!(ms_kind("+1"), Sign);
    assert_eq!(ms_kind("1.5"), InvalidCharacter { at: 1, found: b'.' });
    assert_eq!(ms_kind("100ms"), InvalidCharacter { at: 3, found: b'm' });
    assert_eq!(ms_kind("31536000001"), OutOfRange);
    assert_eq!(ms_kind(&"9".repeat(10_000)), OutOfRange);
    assert_eq!(parse_deadline_ms("31536000000"), Ok(ms(MAX_DEADLINE_MS)));
    assert_eq!(parse_deadline_ms("0"), Ok(Duration::ZERO));
    assert_eq!(parse_deadline_ms(&"0".repeat(1_000)), Ok(Duration::ZERO));
    let envoy = DeadlineHeader::EnvoyExpectedRqTimeoutMs
        .parse(b"12x")
        .unwrap_err();
    assert_eq!(envoy.header, DeadlineHeader::EnvoyExpectedRqTimeoutMs);
}

#[test]
fn errors_name_the_header_and_a_truncated_value() {
    let err = parse_grpc_timeout("10s").unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed grpc-timeout value \"10s\": unknown unit 's' \
         (expected one of H, M, S, m, u, n; case matters)"
    );
    let long = format!("{}S", "1".repeat(100));
    let err = parse_grpc_timeout(&long).unwrap_err();
    assert_eq!(err.value, format!("{}…", "1".repeat(MAX_SHOWN_VALUE)));
    assert!(err.to_string().contains("100 digits"), "{err}");

    let err = parse_deadline_ms("-3").unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed x-weft-deadline-ms value \"-3\": a sign is not allowed"
    );
    // Bytes that are not UTF-8 are shown escaped, never a panic.
    let err = DeadlineHeader::WeftDeadlineMs.parse(b"1\xff").unwrap_err();
    assert_eq!(
        err.kind,
        DeadlineErrorKind::InvalidCharacter { at: 1, found: 0xff }
    );
    assert!(err.to_string().contains("'\\xff' at byte 1"), "{err}");
}

#[test]
fn formats_grpc_timeouts_exactly_when_it_can() {
    let cases = [
        (Duration::ZERO, "0n"),
        (Duration::from_nanos(1), "1n"),
        (Duration::from_nanos(1_500), "1500n"),
        (ms(50), "50m"),
        (Duration::from_secs(30), "30S"),
        (Duration::from_secs(120), "2M"),
        (Duration::from_secs(7200), "2H"),
        (Duration::from_nanos(99_999_999), "99999999n"),
        // 100_000_001 ns needs 9 digits: microseconds, rounded down, which
        // say exactly 100 ms.
        (Duration::from_nanos(100_000_001), "100m"),
        (Duration::from_nanos(100_001_001), "100001u"),
        (Duration::from_nanos(123_456_789_012), "123456m"),
        (Duration::MAX, "99999999H"),
    ];
    for (d, want) in cases {
        assert_eq!(format_grpc_timeout(d), want, "{d:?}");
    }
}

#[test]
fn formats_milliseconds_rounded_down_and_bounded() {
    assert_eq!(format_deadline_ms(Duration::from_micros(59_999)), "59");
    assert_eq!(format_deadline_ms(Duration::from_micros(999)), "0");
    assert_eq!(
        format_deadline_ms(Duration::MAX),
        MAX_DEADLINE_MS.to_string()
    );
    let envoy = DeadlineHeader::EnvoyExpectedRqTimeoutMs;
    assert_eq!(
        envoy.format(Duration::from_micros(300)),
        "1",
        "0 is 'none' to Envoy"
    );
    assert_eq!(envoy.format(ms(42)), "42");
}

/// The unit [`format_grpc_timeout`] must be precise to: the finest whose
/// count of `d` fits in 8 digits.
fn finest_fitting_unit(d: Duration) -> Duration {
    [
        Duration::from_nanos(1),
        Duration::from_micros(1),
        ms(1),
        Duration::from_secs(1),
        Duration::from_secs(60),
        Duration::from_secs(3600),
    ]
    .into_iter()
    .find(|unit| d.as_nanos() / unit.as_nanos() < 100_000_000)
    .unwrap_or(Duration::MAX)
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..200_000_000).prop_map(Duration::from_nanos),
        (0u64..u64::MAX).prop_map(Duration::from_nanos),
        (0u64..400_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

proptest! {
    #[test]
    fn grpc_round_trip_never_gains_and_loses_under_one_unit(d in any_duration()) {
        let text = format_grpc_timeout(d);
        prop_assert!(text.len() <= GRPC_TIMEOUT_MAX_DIGITS + 1, "{}", text);
        let back = parse_grpc_timeout(&text).unwrap();
        prop_assert!(back <= d, "{:?} -> {} -> {:?}", d, text, back);
        prop_assert!(d - back < finest_fitting_unit(d), "{:?} -> {} -> {:?}", d, text, back);
        // Formatting what was parsed says the same again.
        prop_assert_eq!(format_grpc_timeout(back), text);
    }

    #[test]
    fn millisecond_round_trip_never_gains(d in any_duration()) {
        let back = parse_deadline_ms(&format_deadline_ms(d)).unwrap();
        prop_assert!(back <= d);
        if d <= ms(MAX_DEADLINE_MS) {
            prop_assert!(d - back < ms(1));
        }
    }

    #[test]
    fn any_eight_digits_and_a_unit_parse_and_nine_do_not(
        n in 0u64..100_000_000,
        unit in prop::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n']),
    ) {
        let (short, eight, nine) = (format!("{n}{unit}"), format!("{n:08}{unit}"), format!("{n:09}{unit}"));
        prop_assert!(parse_grpc_timeout(&short).is_ok());
        prop_assert!(parse_grpc_timeout(&eight).is_ok());
        prop_assert_eq!(
            grpc_kind(&nine),
            DeadlineErrorKind::TooManyDigits { digits: 9 }
        );
    }

    #[test]
    fn no_input_panics_and_every_value_accepted_is_well_formed(
        bytes in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        for header in DeadlineHeader::ALL {
            if let Err(e) = header.parse(&bytes) {
                prop_assert_eq!(e.header, header);
                prop_assert!(e.value.chars().count() <= MAX_SHOWN_VALUE + 1);
                prop_assert!(!e.to_string().is_empty());
            }
        }
        if parse_grpc_timeout_bytes_ok(&bytes) {
            let t = trim_ows(&bytes);
            let (unit, digits) = t.split_last().unwrap();
            prop_assert!(b"HMSmun".contains(unit));
            prop_assert!((1..=8).contains(&digits.len()));
            prop_assert!(digits.iter().all(u8::is_ascii_digit));
        }
    }
}

fn parse_grpc_timeout_bytes_ok(bytes: &[u8]) -> bool {
    DeadlineHeader::GrpcTimeout.parse(bytes).is_ok()
}

#[test]
fn the_earliest_valid_caller_deadline_wins() {
    let read = CallerDeadline::from_pairs([
        ("Grpc-Timeout", "2S"),
        ("x-weft-deadline-ms", "1500"),
        ("X-Envoy-Expected-Rq-Timeout-Ms", "1800"),
        ("content-type", "application/grpc"),
    ]);
    assert_eq!(
        read.deadline,
        Some(CallerDeadline {
            remaining: ms(1500),
            source: DeadlineHeader::WeftDeadlineMs
        })
    );
    assert!(read.malformed.is_empty());

    // Ties go to grpc-timeout, whatever the order of the headers.
    let read =
        CallerDeadline::from_pairs([("x-weft-deadline-ms", "100"), ("grpc-timeout", "100m")]);
    assert_eq!(
        read.deadline.map(|d| d.source),
        Some(DeadlineHeader::GrpcTimeout)
    );

    // A repeated header: each value counts.
    let read =
        CallerDeadline::from_pairs([("x-weft-deadline-ms", "300"), ("x-weft-deadline-ms", "200")]);
    assert_eq!(read.deadline.map(|d| d.remaining), Some(ms(200)));
}

#[test]
fn malformed_headers_are_reported_and_the_valid_ones_still_used() {
    let read = CallerDeadline::from_pairs([
        ("grpc-timeout", "123456789m"),
        ("x-weft-deadline-ms", "soon"),
        ("x-envoy-expected-rq-timeout-ms", "900"),
    ]);
    assert_eq!(
        read.deadline,
        Some(CallerDeadline {
            remaining: ms(900),
            source: DeadlineHeader::EnvoyExpectedRqTimeoutMs
        })
    );
    let bad: Vec<_> = read.malformed.iter().map(|e| (e.header, e.kind)).collect();
    assert_eq!(
        bad,
        [
            (
                DeadlineHeader::GrpcTimeout,
                DeadlineErrorKind::TooManyDigits { digits: 9 }
            ),
            (
                DeadlineHeader::WeftDeadlineMs,
                DeadlineErrorKind::InvalidCharacter { at: 0, found: b's' }
            ),
        ]
    );

    let read = CallerDeadline::from_pairs([("grpc-timeout", "1x")]);
    assert_eq!(read.deadline, None);
    assert_eq!(read.malformed.len(), 1);
}

#[test]
fn envoy_zero_means_no_deadline_but_weft_zero_means_expired() {
    let read = CallerDeadline::from_pairs([("x-envoy-expected-rq-timeout-ms", "0")]);
    assert_eq!(read, ReadDeadline::default());

    let read = CallerDeadline::from_pairs([("x-weft-deadline-ms", "0")]);
    let caller = read.deadline.unwrap();
    let d = Deadline::effective(ms(10), Some(ms(500)), Some(caller)).unwrap();
    assert!(d.expired(ms(10)));
    assert_eq!(d.remaining(ms(10)), None);
}

#[test]
fn read_takes_an_accessor() {
    let headers = [("grpc-timeout", "250m"), ("x-weft-deadline-ms", "300")];
    let get = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let read = CallerDeadline::read(get);
    assert_eq!(
        read.deadline,
        Some(CallerDeadline {
            remaining: ms(250),
            source: DeadlineHeader::GrpcTimeout
        })
    );
    let none = CallerDeadline::read(|_| None::<&[u8]>);
    assert_eq!(none, ReadDeadline::default());
}

#[test]
fn the_effective_deadline_is_the_shorter_of_route_and_caller() {
    let caller = |ms_left| CallerDeadline {
        remaining: ms(ms_left),
        source: DeadlineHeader::GrpcTimeout,
    };
    let d = Deadline::effective(ms(1000), Some(ms(300)), Some(caller(200))).unwrap();
    assert_eq!(
        (d.budget(), d.source()),
        (ms(200), DeadlineSource::Caller(DeadlineHeader::GrpcTimeout))
    );
    assert_eq!(d.at(), ms(1200));

    let d = Deadline::effective(ms(0), Some(ms(300)), Some(caller(900))).unwrap();
    assert_eq!((d.budget(), d.source()), (ms(300), DeadlineSource::Route));
    let d = Deadline::effective(ms(0), Some(ms(300)), Some(caller(300))).unwrap();
    assert_eq!(d.source(), DeadlineSource::Route, "the route wins ties");

    let d = Deadline::effective(ms(0), None, Some(caller(50))).unwrap();
    assert_eq!(d.budget(), ms(50));
    let d = Deadline::effective(ms(0), Some(ms(70)), None).unwrap();
    assert_eq!(d.source(), DeadlineSource::Route);
    assert_eq!(Deadline::effective(ms(0), None, None), None);
}

#[test]
fn remaining_counts_down_and_expires() {
    let d = Deadline::new(ms(100), ms(50), DeadlineSource::Route);
    assert_eq!(d.remaining(ms(100)), Some(ms(50)));
    assert_eq!(d.remaining(ms(149)), Some(ms(1)));
    assert!(!d.expired(ms(149)));
    assert_eq!(d.remaining(ms(150)), None);
    assert!(d.expired(ms(150)));
    assert!(d.expired(ms(10_000)));
    // A clock read taken before the request arrived is not an error.
    assert_eq!(d.remaining(ms(90)), Some(ms(60)));
    // Near the end of time the deadline saturates instead of overflowing.
    let far = Deadline::new(Duration::MAX - ms(1), ms(10), DeadlineSource::Route);
    assert_eq!(far.at(), Duration::MAX);
    assert!(!far.expired(Duration::MAX - ms(1)));
}

#[test]
fn attempts_get_what_is_left_minus_the_margin() {
    let d = Deadline::new(ms(0), ms(100), DeadlineSource::Route);
    assert_eq!(d.for_attempt(ms(0), ms(2)), Ok(ms(98)));
    assert_eq!(d.for_attempt(ms(97), ms(2)), Ok(ms(1)));
    assert_eq!(d.for_attempt(ms(97), Duration::ZERO), Ok(ms(3)));
    let err = d.for_attempt(ms(98), ms(2)).unwrap_err();
    assert_eq!(
        err,
        Expired {
            limit: DeadlineSource::Route,
            left: ms(2),
            margin: ms(2)
        }
    );
    let err = d.for_attempt(ms(120), ms(2)).unwrap_err();
    assert_eq!(err.left, Duration::ZERO);
    assert_eq!(
        err.to_string(),
        "deadline exceeded: 0ns left of the route timeout, margin 2ms"
    );
    assert_eq!(
        d.for_attempt(ms(100), Duration::ZERO).unwrap_err().left,
        Duration::ZERO
    );
    assert_eq!(Expired::CODE, "deadline-exceeded");
}

#[test]
fn retries_hedges_and_backoff_all_spend_the_same_budget() {
    let margin = ms(1);
    let d = Deadline::new(ms(0), ms(100), DeadlineSource::Route);
    // The first attempt at 0, a hedge at 10, the first attempt fails at 30
    // and is retried after 20 ms of backoff.
    assert_eq!(d.for_attempt(ms(0), margin), Ok(ms(99)));
    assert_eq!(d.for_attempt(ms(10), margin), Ok(ms(89)));
    assert_eq!(d.for_attempt(ms(50), margin), Ok(ms(49)));
    // The retry policy sees the same clock: a 60 ms backoff at 50 ms would
    // end after the deadline.
    let failed = FailedAttempt {
        attempts: 2,
        retriable: true,
        remaining_deadline: d.remaining(ms(50)),
    };
    assert!(failed.remaining_deadline.is_some_and(|left| left <= ms(60)));
}

/// One proxy hop: a request arrives at `arrival` with `headers`; the route
/// allows `route`.
fn hop(arrival: Duration, headers: &[(&str, String)], route: Duration) -> Deadline {
    let read = CallerDeadline::from_pairs(headers.iter().map(|(n, v)| (*n, v.as_str())));
    assert!(read.malformed.is_empty(), "{:?}", read.malformed);
    Deadline::effective(arrival, Some(route), read.deadline).unwrap()
}

#[test]
fn a_budget_shrinks_along_a_three_hop_chain() {
    let margin = ms(1);
    // Hop 1: the edge gives the request 100 ms; 40 ms go by before it calls
    // hop 2 (over gRPC).
    let edge = hop(ms(1_000), &[], ms(100));
    let sent = edge.for_attempt(ms(1_040), margin).unwrap();
    let grpc = vec![(GRPC_TIMEOUT, format_grpc_timeout(sent))];
    assert_eq!(grpc[0].1, "59m");

    // Hop 2 (its own clock, its own route timeout of 1 s) sees at most 60 ms.
    let second = hop(ms(5_000), &grpc, Duration::from_secs(1));
    assert!(second.budget() <= ms(60));
    assert_eq!(
        second.source(),
        DeadlineSource::Caller(DeadlineHeader::GrpcTimeout)
    );
    // It hands 59 ms - margin to its app as x-weft-deadline-ms; the app
    // copies it onto its call to hop 3 after 50 ms of work.
    let to_app = second.for_attempt(ms(5_000), margin).unwrap();
    let http = vec![(WEFT_DEADLINE_MS, format_deadline_ms(to_app))];
    assert_eq!(http[0].1, "58");
    let outbound = hop(ms(5_001), &http, Duration::from_secs(1));
    let sent = outbound.for_attempt(ms(5_050), margin).unwrap();
    assert!(sent <= ms(8), "{sent:?}");

    // Hop 3 spends its budget; its next attempt fails fast.
    let third = hop(
        ms(9_000),
        &[(WEFT_DEADLINE_MS, format_deadline_ms(sent))],
        Duration::from_secs(1),
    );
    assert!(third.for_attempt(ms(9_003), margin).is_ok());
    let expired = third.for_attempt(ms(9_010), margin).unwrap_err();
    assert_eq!(
        expired.limit,
        DeadlineSource::Caller(DeadlineHeader::WeftDeadlineMs)
    );
    assert!(third.expired(ms(9_010)));

    // And the first hop, had it waited 100 ms, would not have called at all.
    assert!(edge.for_attempt(ms(1_100), margin).is_err());
}

proptest! {
    #[test]
    fn an_attempt_never_gets_more_than_is_left(
        start in 0u64..1_000_000,
        budget in 0u64..100_000,
        elapsed in 0u64..200_000,
        margin in 0u64..50,
    ) {
        let d = Deadline::new(ms(start), ms(budget), DeadlineSource::Route);
        let now = ms(start + elapsed);
        match d.for_attempt(now, ms(margin)) {
            Ok(t) => {
                prop_assert!(!t.is_zero());
                prop_assert_eq!(t + ms(margin) + ms(elapsed), ms(budget));
                prop_assert_eq!(d.remaining(now), Some(t + ms(margin)));
            }
            Err(e) => {
                prop_assert!(elapsed + margin >= budget);
                prop_assert!(e.left <= ms(margin));
            }
        }
        prop_assert_eq!(d.expired(now), elapsed >= budget);
        prop_assert_eq!(d.remaining(now).is_none(), d.expired(now));
    }

    #[test]
    fn the_caller_deadline_is_the_minimum_of_the_valid_headers(
        grpc in prop::option::of(0u64..10_000),
        weft in prop::option::of(0u64..10_000),
        envoy in prop::option::of(1u64..10_000),
    ) {
        let mut pairs = Vec::new();
        if let Some(g) = grpc { pairs.push((GRPC_TIMEOUT, format!("{g}m"))); }
        if let Some(w) = weft { pairs.push((WEFT_DEADLINE_MS, w.to_string())); }
        if let Some(e) = envoy { pairs.push((ENVOY_EXPECTED_RQ_TIMEOUT_MS, e.to_string())); }
        let read = CallerDeadline::from_pairs(pairs.iter().map(|(n, v)| (*n, v.as_str())));
        let want = [grpc, weft, envoy].into_iter().flatten().min().map(ms);
        prop_assert_eq!(read.deadline.map(|d| d.remaining), want);
        prop_assert!(read.malformed.is_empty());
    }
}
