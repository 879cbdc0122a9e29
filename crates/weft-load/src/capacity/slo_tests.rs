//! SLO parsing and verdicts.

use super::*;

fn err(s: &str) -> String {
    s.parse::<Slo>().unwrap_err().to_string()
}

fn step(rate: f64, achieved: f64, requests: u64, errors: u64, p99: f64) -> StepReport {
    let p = Percentiles {
        p50: p99 / 4.0,
        p90: p99 / 2.0,
        p99,
        p999: p99 * 2.0,
        p9999: p99 * 3.0,
        max: p99 * 4.0,
        mean: p99 / 3.0,
        count: requests - errors,
    };
    StepReport {
        rate: Some(rate),
        duration_s: 10.0,
        requests,
        errors,
        achieved_rate: achieved,
        latency_ms: p,
        service_time_ms: Percentiles {
            p99: p99 / 2.0,
            ..p
        },
        ..StepReport::default()
    }
}

#[test]
fn clauses_parse_into_metrics_limits_and_canonical_text() {
    let slo: Slo = " P99 < 50ms , errors<0.1%,p99.9<=200 ms,max<1s,p50<=500us,service_p99<20ms"
        .parse()
        .unwrap();
    assert_eq!(
        slo.to_string(),
        "p99<50ms,errors<0.1%,p99.9<=200ms,max<1s,p50<=500us,service_p99<20ms"
    );
    let c = slo.clauses();
    assert_eq!(c.len(), 6);
    assert_eq!(c[0].metric, Metric::Latency(99.0));
    assert_eq!(c[0].comparison, Comparison::Below);
    assert_eq!(c[0].limit, 50.0);
    assert_eq!(c[1].metric, Metric::Errors);
    assert!((c[1].limit - 0.001).abs() < 1e-12);
    assert_eq!(c[2].metric, Metric::Latency(99.9));
    assert_eq!(c[2].comparison, Comparison::AtMost);
    assert_eq!(c[3].metric, Metric::Latency(100.0));
    assert_eq!(c[3].limit, 1000.0);
    assert!((c[4].limit - 0.5).abs() < 1e-12);
    assert_eq!(c[5].metric, Metric::ServiceTime(99.0));
    // Ratios, aliases, and the canonical text parses back to the same SLO.
    let slo: Slo = "errors<0.001,p999<1s,p9999<2s".parse().unwrap();
    assert!((slo.clauses()[0].limit - 0.001).abs() < 1e-12);
    assert_eq!(slo.to_string(), "errors<0.001,p99.9<1s,p99.99<2s");
    assert_eq!(slo.to_string().parse::<Slo>().unwrap(), slo);
    assert!("errors<=0%".parse::<Slo>().is_ok());
}

#[test]
fn bad_slo_text_names_what_is_wrong() {
    assert_eq!(err(""), SloError::Empty.to_string());
    assert!(err("  ").contains("empty"));
    let e = err("p95<50ms");
    assert!(
        e.contains("`p95`") && e.contains("p99.9") && e.contains("max"),
        "{e}"
    );
    let e = err("latency<50ms");
    assert!(e.contains("unknown metric `latency`"), "{e}");
    let e = err("p99<50");
    assert!(
        e.contains("`p99<50`") && e.contains("no unit") && e.contains("50ms"),
        "{e}"
    );
    let e = err("p99<50m");
    assert!(e.contains("unknown unit `m`"), "{e}");
    let e = err("p99>50ms");
    assert!(e.contains("comparison `>`") && e.contains("`<`"), "{e}");
    assert!(err("p99>=50ms").contains("`>=`"));
    assert!(err("p99=50ms").contains("`=`"));
    assert!(err("p99 50ms").contains("no comparison"));
    assert!(err("p99<").contains("no limit"));
    assert!(err("p99<fast").contains("`fast` is not a number"));
    assert!(err("p99<1.2.3ms").contains("not a number"));
    assert!(err("p99<0ms").contains("greater than 0"));
    assert!(err("p99<-5ms").contains("greater than 0"));
    assert!(err("p99<5%").contains("unknown unit `%`"));
    let e = err("errors<5");
    assert!(e.contains("above 100%") && e.contains("`5%`"), "{e}");
    assert!(err("errors<101%").contains("above 100%"));
    assert!(err("errors<0.1ms").contains("not in `ms`"));
    assert!(err("errors<0%").contains("errors<=0%"));
    let e = err("p99<50ms,,errors<1%");
    assert!(e.contains("clause 2 is empty"), "{e}");
    assert!(err("p99<50ms,").contains("clause 2 is empty"));
    assert!(err("p99<50ms,p99<60ms").contains("`p99` twice"));
    assert!(err("service_p42<1ms").contains("`p42`"));
}

#[test]
fn check_passes_within_bounds_and_gives_reasons_for_each_violation() {
    let slo: Slo = "p99<50ms,errors<0.1%".parse().unwrap();
    let ok = slo.check(&step(1000.0, 999.0, 10_000, 5, 49.9));
    assert_eq!(
        ok,
        Verdict {
            pass: true,
            reasons: vec![]
        }
    );

    let bad = slo.check(&step(4000.0, 3990.0, 40_000, 400, 62.1));
    assert!(!bad.pass);
    assert_eq!(
        bad.reasons,
        vec!["p99 62.1 ms > 50 ms", "errors 1.00% > 0.1%"]
    );

    // `<` fails at the limit itself, `<=` passes.
    let at = step(1000.0, 1000.0, 10_000, 0, 50.0);
    assert_eq!(slo.check(&at).reasons, vec!["p99 50.0 ms >= 50 ms"]);
    let le: Slo = "p99<=50ms".parse().unwrap();
    assert!(le.check(&at).pass);

    // Other percentiles and service time read their own fields.
    let s: Slo = "max<150ms,service_p99<20ms".parse().unwrap();
    let v = s.check(&step(1000.0, 1000.0, 10_000, 0, 40.0));
    assert_eq!(
        v.reasons,
        vec!["max 160 ms > 150 ms", "service p99 20.0 ms >= 20 ms"]
    );
}

#[test]
fn check_fails_a_step_that_could_not_take_the_offered_load() {
    let slo: Slo = "p99<50ms".parse().unwrap();
    let v = slo.check(&step(4000.0, 3100.0, 31_000, 0, 10.0));
    assert!(!v.pass);
    assert_eq!(v.reasons.len(), 1);
    assert!(
        v.reasons[0].contains("achieved 3100 req/s") && v.reasons[0].contains("4000 req/s offered")
    );
    assert!(slo.check(&step(4000.0, 3601.0, 36_010, 0, 10.0)).pass);

    // Nothing answered: zero percentiles must not pass a latency bound.
    let mut none = step(1000.0, 1000.0, 10_000, 10_000, 0.0);
    none.latency_ms.count = 0;
    let v = slo.check(&none);
    assert_eq!(v.reasons, vec!["p99: no responses to measure latency on"]);
    let empty = StepReport {
        rate: Some(10.0),
        ..StepReport::default()
    };
    assert!(
        slo.check(&empty)
            .reasons
            .iter()
            .any(|r| r.contains("no requests"))
    );
}
