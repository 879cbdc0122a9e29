//! The search against a simulated server, the options, the report text and
//! the chart.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::report::{ClientHealth, Percentiles};

/// A noise-free server: below `capacity` its p99 is `base_ms / (1 - rho)`
/// (an M/M/1-like curve); beyond it the excess is refused and the rest waits
/// out the 10 s timeout. Time is simulated: a step costs its warmup +
/// duration + `overhead`, and nothing sleeps.
struct SimServer {
    capacity: f64,
    base_ms: f64,
    step: Duration,
    overhead: Duration,
    clock: Duration,
    /// The load generator saturates at and above this rate.
    client_limit: Option<f64>,
    /// Rates offered, in order.
    offered: Vec<f64>,
    target: String,
    stop: Option<watch::Receiver<bool>>,
    done: Arc<AtomicUsize>,
}

impl SimServer {
    fn new(capacity: f64, opts: &CapacityOptions) -> Self {
        SimServer {
            capacity,
            base_ms: 5.0,
            step: opts.step_warmup + opts.step_duration,
            overhead: Duration::ZERO,
            clock: Duration::ZERO,
            client_limit: None,
            offered: Vec::new(),
            target: "http://sim:8080/".to_owned(),
            stop: None,
            done: Arc::default(),
        }
    }

    fn report(&self, rate: f64) -> Report {
        let secs = self.step.as_secs_f64();
        let requests = (rate * secs).round() as u64;
        let (achieved, errors, p99) = if rate < self.capacity {
            (rate, 0, self.base_ms / (1.0 - rate / self.capacity))
        } else {
            let errors = (requests as f64 * (rate - self.capacity) / rate).round() as u64;
            (self.capacity, errors, 10_000.0)
        };
        let latency = Percentiles {
            p50: p99 / 3.0,
            p90: p99 / 1.5,
            p99,
            p999: p99 * 2.0,
            p9999: p99 * 2.5,
            max: p99 * 3.0,
            mean: p99 / 2.5,
            count: requests,
        };
        let saturated = self.client_limit.is_some_and(|l| rate >= l);
        Report {
            target: self.target.clone(),
            protocol: "http1".to_owned(),
            requested_rate: Some(rate),
            duration_s: secs,
            requests,
            errors,
            achieved_rate: if saturated { rate * 0.7 } else { achieved },
            latency_ms: latency,
            service_time_ms: latency,
            client: ClientHealth {
                saturated,
                ..ClientHealth::default()
            },
            ..Report::default()
        }
    }
}

impl StepRunner for SimServer {
    fn run_step(&mut self, rate: f64) -> impl Future<Output = Result<Report, LoadError>> + Send {
        self.offered.push(rate);
        self.clock += self.step + self.overhead;
        let mut report = self.report(rate);
        let stop = self.stop.clone();
        let done = self.done.clone();
        async move {
            // Give a concurrent stop signal a chance to arrive mid-step.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            if stop.is_some_and(|s| *s.borrow()) {
                report.interrupted = true;
            }
            done.fetch_add(1, Ordering::SeqCst);
            Ok(report)
        }
    }

    fn elapsed(&self) -> Duration {
        self.clock
    }

    fn interrupted(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| *s.borrow())
    }
}

fn opts(slo: &str) -> CapacityOptions {
    CapacityOptions::new(slo.parse().unwrap())
}

async fn search_sim(opts: &CapacityOptions, sim: &mut SimServer) -> CapacityReport {
    let mut lines = Vec::new();
    let report = search(opts, sim, &mut |s: &CapacityStep| {
        lines.push(s.progress_line())
    })
    .await
    .unwrap();
    assert_eq!(
        lines.len(),
        report.steps.len(),
        "one progress line per step"
    );
    report
}

#[tokio::test]
async fn search_finds_the_knee_within_the_precision_for_several_capacities() {
    let o = opts("p99<50ms,errors<0.1%");
    for capacity in [150.0, 250.0, 1000.0, 3333.0, 12_345.0, 98_765.0] {
        let mut sim = SimServer::new(capacity, &o);
        let r = search_sim(&o, &mut sim).await;
        // p99 = 5 / (1 - rho) < 50 exactly when rho < 0.9.
        let truth = 0.9 * capacity;
        let knee = r.knee_rate.unwrap();
        let fail = r.first_failing_rate.unwrap();
        assert_eq!(
            r.stop_reason,
            StopReason::Converged,
            "capacity {capacity}: {}",
            r.stop_detail
        );
        assert!(
            knee < truth && fail >= truth,
            "capacity {capacity}: {knee} .. {fail}"
        );
        assert!(fail / knee <= 1.05, "capacity {capacity}: {knee} .. {fail}");
        // Growth doubles from 100, then bisection: few steps, all distinct.
        assert_eq!(sim.offered[..2], [100.0, 200.0]);
        assert!(
            r.steps.len() <= 18,
            "capacity {capacity}: {} steps",
            r.steps.len()
        );
        assert!(
            r.steps.windows(2).all(|w| w[0].rate < w[1].rate),
            "sorted, no repeats"
        );
        assert!(r.elapsed_s <= 300.0);
        // Every pass is below every failure (a noise-free server).
        for s in &r.steps {
            assert_eq!(
                s.pass,
                s.rate <= knee,
                "capacity {capacity}: step {} req/s",
                s.rate
            );
        }
        assert_eq!(r.target, "http://sim:8080/");
    }
}

#[tokio::test]
async fn an_errors_only_slo_finds_where_errors_start() {
    let o = opts("errors<0.1%");
    let mut sim = SimServer::new(5000.0, &o);
    let r = search_sim(&o, &mut sim).await;
    let (knee, fail) = (r.knee_rate.unwrap(), r.first_failing_rate.unwrap());
    assert!(knee <= 5000.0 / 0.999 && fail > 5000.0, "{knee} .. {fail}");
    assert!(fail / knee <= 1.05);
    let failing = r.step_at(fail).unwrap();
    assert!(
        failing.reasons.iter().any(|x| x.starts_with("errors ")),
        "{:?}",
        failing.reasons
    );
}

#[tokio::test]
async fn a_failing_start_rate_ends_the_search_with_no_knee() {
    let o = opts("p99<50ms");
    let mut sim = SimServer::new(50.0, &o);
    let r = search_sim(&o, &mut sim).await;
    assert_eq!(sim.offered, vec![100.0]);
    assert_eq!(r.knee_rate, None);
    assert_eq!(r.first_failing_rate, Some(100.0));
    assert_eq!(r.stop_reason, StopReason::StartRateFails);
    assert!(r.stop_detail.contains("--start-rate"), "{}", r.stop_detail);
    let line = r.knee_line();
    assert!(line.starts_with("capacity: below 100 req/s"), "{line}");
    assert!(line.contains("p99 10000 ms > 50 ms"), "{line}");
}

#[tokio::test]
async fn max_rate_caps_growth_and_reports_a_lower_bound() {
    let mut o = opts("p99<50ms");
    o.max_rate = Some(1000.0);
    let mut sim = SimServer::new(1e6, &o);
    let r = search_sim(&o, &mut sim).await;
    assert_eq!(sim.offered, vec![100.0, 200.0, 400.0, 800.0, 1000.0]);
    assert_eq!(r.knee_rate, Some(1000.0));
    assert_eq!(r.first_failing_rate, None);
    assert_eq!(r.stop_reason, StopReason::MaxRate);
    assert!(
        r.knee_line()
            .starts_with("capacity: at least 1000 req/s meets p99<50ms"),
        "{}",
        r.knee_line()
    );
}

#[tokio::test]
async fn the_time_budget_stops_the_search_before_a_step_would_overrun() {
    let mut o = opts("p99<50ms");
    o.max_time = Duration::from_secs(60);
    let mut sim = SimServer::new(1e6, &o);
    let r = search_sim(&o, &mut sim).await;
    // 12 s steps: five fit in 60 s, the sixth would end at 72 s.
    assert_eq!(sim.offered, vec![100.0, 200.0, 400.0, 800.0, 1600.0]);
    assert_eq!(r.stop_reason, StopReason::TimeBudget);
    assert_eq!(r.elapsed_s, 60.0);
    assert!(r.stop_detail.contains("--max-time 1m") && r.stop_detail.contains("3200 req/s"));
    assert!(
        r.stop_detail.contains("at least 1600 req/s"),
        "{}",
        r.stop_detail
    );

    // Steps that take longer than planned (connect, drain) count too.
    let mut sim = SimServer::new(1e6, &o);
    sim.overhead = Duration::from_secs(3);
    let r = search_sim(&o, &mut sim).await;
    assert_eq!(r.steps.len(), 4, "15 s steps: four fit in 60 s");
    assert!(r.elapsed_s <= 60.0);
}

#[tokio::test]
async fn the_time_budget_mid_bisection_reports_the_bracket() {
    let mut o = opts("p99<50ms");
    o.max_time = Duration::from_secs(12 * 7);
    let mut sim = SimServer::new(3333.0, &o);
    let r = search_sim(&o, &mut sim).await;
    assert_eq!(r.steps.len(), 7);
    assert_eq!(r.stop_reason, StopReason::TimeBudget);
    let (knee, fail) = (r.knee_rate.unwrap(), r.first_failing_rate.unwrap());
    assert!(knee < 3000.0 && fail >= 3000.0);
    assert!(
        r.stop_detail.contains("the knee lies between"),
        "{}",
        r.stop_detail
    );
    assert!(
        r.knee_line().starts_with("capacity: at least"),
        "{}",
        r.knee_line()
    );
}

#[tokio::test]
async fn a_saturated_client_stops_the_search_with_a_loud_warning() {
    let o = opts("p99<50ms");
    let mut sim = SimServer::new(1e6, &o);
    sim.client_limit = Some(1500.0);
    let r = search_sim(&o, &mut sim).await;
    assert_eq!(sim.offered, vec![100.0, 200.0, 400.0, 800.0, 1600.0]);
    assert_eq!(r.stop_reason, StopReason::ClientSaturated);
    assert_eq!(r.knee_rate, Some(800.0));
    assert_eq!(
        r.first_failing_rate, None,
        "a saturated step is not a server failure"
    );
    let last = r.step_at(1600.0).unwrap();
    assert!(last.inconclusive && !last.pass && last.reasons.is_empty());
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("CLIENT SATURATED at 1600 req/s")
                && w.contains("load generator, not the server")
                && w.contains("800 req/s"))
    );
    let text = r.human();
    assert!(text.contains("!!! CLIENT SATURATED"), "{text}");
    assert!(text.contains("capacity: at least 800 req/s"), "{text}");
}

#[tokio::test]
async fn short_steps_warn_that_high_percentiles_rest_on_few_samples() {
    let mut o = opts("p99.9<500ms,p50<100ms");
    o.step_duration = Duration::from_secs(1);
    o.step_warmup = Duration::ZERO;
    let mut sim = SimServer::new(3000.0, &o);
    let r = search_sim(&o, &mut sim).await;
    let few: Vec<_> = r
        .warnings
        .iter()
        .filter(|w| w.contains("estimated from"))
        .collect();
    assert_eq!(few.len(), 1, "{few:?}");
    assert!(few[0].starts_with("p99.9 at 100 req/s is estimated from 100 requests (under 10000"));
}

#[tokio::test]
async fn stop_interrupts_the_search_and_keeps_the_steps_before() {
    let o = opts("p99<50ms");
    let done = Arc::new(AtomicUsize::new(0));
    let seen = done.clone();
    let stop = async move {
        while seen.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
    };
    let r = drive(
        &o,
        |rx| {
            let mut sim = SimServer::new(1e6, &o);
            sim.stop = Some(rx);
            sim.done = done.clone();
            sim
        },
        stop,
        &mut |_: &CapacityStep| {},
    )
    .await
    .unwrap();
    assert_eq!(r.stop_reason, StopReason::Interrupted);
    assert_eq!(
        r.steps.len(),
        2,
        "{:?}",
        r.steps.iter().map(|s| s.rate).collect::<Vec<_>>()
    );
    assert_eq!(r.knee_rate, Some(200.0));
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("400 req/s was interrupted")),
        "{:?}",
        r.warnings
    );
}

#[tokio::test]
async fn a_step_error_after_the_first_ends_the_search_with_what_it_found() {
    struct Dies(SimServer);
    impl StepRunner for Dies {
        fn run_step(
            &mut self,
            rate: f64,
        ) -> impl Future<Output = Result<Report, LoadError>> + Send {
            let r = if rate > 300.0 {
                Err(LoadError::Preflight("connection refused".into()))
            } else {
                Ok(self.0.report(rate))
            };
            async move { r }
        }
        fn elapsed(&self) -> Duration {
            Duration::ZERO
        }
    }
    let o = opts("p99<50ms");
    let mut dies = Dies(SimServer::new(1e6, &o));
    let r = search(&o, &mut dies, &mut |_: &CapacityStep| {})
        .await
        .unwrap();
    assert_eq!(r.stop_reason, StopReason::StepFailed);
    assert_eq!(r.knee_rate, Some(200.0));
    assert!(
        r.stop_detail
            .contains("400 req/s could not run: connection refused")
    );

    let mut o2 = opts("p99<50ms");
    o2.start_rate = 1000.0;
    let e = search(&o2, &mut dies, &mut |_: &CapacityStep| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("connection refused"));
}

#[test]
fn options_name_the_flag_at_fault() {
    let ok = opts("p99<50ms");
    assert_eq!(ok.validate(), Ok(()));
    let with = |f: &dyn Fn(&mut CapacityOptions)| {
        let mut o = ok.clone();
        f(&mut o);
        o.validate().unwrap_err().to_string()
    };
    assert!(with(&|o| o.start_rate = 0.0).contains("--start-rate"));
    assert!(with(&|o| o.start_rate = f64::NAN).contains("--start-rate"));
    assert!(with(&|o| o.start_rate = 2e7).contains("--start-rate 20000000 req/s is above"));
    assert_eq!(
        with(&|o| o.max_rate = Some(50.0)),
        "--max-rate 50 req/s is below --start-rate 100 req/s"
    );
    assert!(with(&|o| o.max_rate = Some(-1.0)).contains("--max-rate must be"));
    assert!(with(&|o| o.growth = 1.0).contains("growth factor must be greater than 1"));
    assert!(with(&|o| o.precision = 0.0).contains("--precision"));
    assert!(with(&|o| o.precision = 1.0).contains("--precision"));
    assert_eq!(
        with(&|o| o.step_duration = Duration::ZERO),
        "--step-duration must be greater than 0"
    );
    assert_eq!(
        with(&|o| o.max_time = Duration::from_secs(5)),
        "--max-time 5s is shorter than one step (2s --step-warmup + 10s --step-duration)"
    );
}

#[test]
fn chart_paths_are_checked_before_the_search() {
    let dir = std::env::temp_dir().join(format!("weft-capacity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = check_chart_path(&dir.join("knee.png"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("knee.png") && e.contains(".svg"), "{e}");
    let missing = dir.join("no/such/dir/knee.svg");
    let e = check_chart_path(&missing).unwrap_err().to_string();
    assert!(
        e.contains("no/such/dir/knee.svg") && e.contains("cannot be written"),
        "{e}"
    );
    let good = dir.join("knee.svg");
    assert!(check_chart_path(&good).unwrap(), "created");
    assert!(!check_chart_path(&good).unwrap(), "existed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bisection_rates_are_round_and_well_inside_the_interval() {
    assert_eq!(search::between(100.0, 200.0), 140.0);
    assert_eq!(search::between(1600.0, 3200.0), 2300.0);
    assert_eq!(search::between(2300.0, 3200.0), 2700.0);
    for (lo, hi) in [
        (1.0, 1.06),
        (2987.0, 3141.0),
        (0.5, 0.9),
        (99_000.0, 100_001.0),
    ] {
        let m = search::between(lo, hi);
        assert!(m > lo && m < hi, "{lo} {m} {hi}");
    }
}

#[tokio::test]
async fn the_human_text_leads_with_the_knee_then_the_table() {
    let o = opts("p99<50ms,errors<0.1%");
    let mut sim = SimServer::new(1000.0, &o);
    let r = search_sim(&o, &mut sim).await;
    let text = r.human();
    let first = text.lines().next().unwrap();
    let knee = crate::report::fmt_rate(r.knee_rate.unwrap());
    let fail = crate::report::fmt_rate(r.first_failing_rate.unwrap());
    assert!(
        first.starts_with(&format!(
            "capacity: {knee} req/s meets p99<50ms,errors<0.1% ({fail} req/s does not: p99 "
        )),
        "{first}"
    );
    assert!(text.contains("requested"), "{text}");
    let rows: Vec<_> = text
        .lines()
        .filter(|l| l.contains("PASS") || l.contains("FAIL"))
        .collect();
    assert_eq!(rows.len(), r.steps.len());
    assert_eq!(text.lines().filter(|l| l.ends_with("<- knee")).count(), 1);

    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains(r#""stop_reason":"converged""#));
    // Floats may move by an ulp through JSON; the rest is exact.
    let back: CapacityReport = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (back.knee_rate, back.first_failing_rate, back.stop_reason),
        (r.knee_rate, r.first_failing_rate, r.stop_reason)
    );
    assert_eq!(
        (back.steps.len(), &back.stop_detail, &back.slo),
        (r.steps.len(), &r.stop_detail, &r.slo)
    );
}

#[test]
fn progress_lines_say_rate_latency_errors_and_verdict() {
    let mut sim = SimServer::new(1000.0, &opts("p99<50ms"));
    let step = sim.report(800.0).as_step();
    let s = CapacityStep {
        rate: 800.0,
        order: 3,
        pass: true,
        inconclusive: false,
        reasons: vec![],
        step,
    };
    assert_eq!(
        s.progress_line(),
        "step 3: 800 req/s -> p99 25.0 ms, errors 0.00%: PASS"
    );
    sim.capacity = 10.0;
    let failing = CapacityStep {
        pass: false,
        reasons: vec!["p99 10000 ms > 50 ms".into()],
        step: sim.report(800.0).as_step(),
        ..s
    };
    assert_eq!(
        failing.progress_line(),
        "step 3: 800 req/s -> p99 10000 ms, errors 98.75%: FAIL (p99 10000 ms > 50 ms)"
    );
}

/// Checks that tags nest and close, attribute and text content carry no raw
/// `<` or stray `&`: enough for a browser's XML parser.
fn assert_well_formed(svg: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        assert_entities(&rest[..open]);
        let close = rest[open..].find('>').expect("unclosed tag") + open;
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "raw < inside tag `{tag}`");
        assert_entities(tag);
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap().to_owned());
        }
        rest = &rest[close + 1..];
    }
    assert!(rest.trim().is_empty());
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

fn assert_entities(text: &str) {
    for (i, _) in text.match_indices('&') {
        let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity),
            "stray & in `{text}`"
        );
    }
}

fn polyline_points(svg: &str, class: &str) -> usize {
    let start = svg.find(&format!(r#"<polyline class="{class}""#)).unwrap();
    let line = &svg[start..start + svg[start..].find("/>").unwrap()];
    let points = line
        .split("points=\"")
        .nth(1)
        .unwrap()
        .trim_end_matches('"');
    points.split_whitespace().count()
}

#[tokio::test]
async fn the_chart_is_an_svg_with_one_line_per_percentile_and_escaped_text() {
    let o = opts("p99<50ms,p99.9<=200ms");
    let mut sim = SimServer::new(3333.0, &o);
    sim.target = "http://sim:8080/a?x=1&y=<2>".to_owned();
    let r = search_sim(&o, &mut sim).await;
    let svg = chart::svg(&r);
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_well_formed(&svg);
    assert_eq!(svg.matches("<polyline").count(), 4);
    for class in ["p50", "p90", "p99", "p99.9"] {
        assert_eq!(polyline_points(&svg, class), r.steps.len(), "{class}");
    }
    assert_eq!(
        svg.matches("<circle").count(),
        4 * r.steps.len() + 2,
        "markers + legend"
    );
    assert!(svg.contains("x=1&amp;y=&lt;2&gt;"));
    assert!(svg.contains("SLO p99 &lt; 50 ms") && svg.contains("SLO p99.9 &lt;= 200 ms"));
    assert_eq!(
        svg.matches(r#"stroke-dasharray="6 4""#).count(),
        2 + 1,
        "two SLO bounds + legend"
    );
    let knee = crate::report::fmt_rate(r.knee_rate.unwrap());
    assert!(svg.contains(&format!("knee {knee} req/s")));
    // 1.6 ms at 100 req/s up to 20 s of timeouts beyond capacity: log scale.
    assert!(svg.contains(r#"data-y-scale="log""#));
}

#[tokio::test]
async fn the_chart_is_linear_for_a_narrow_range_and_survives_no_steps() {
    let o = opts("p99<50ms");
    let mut sim = SimServer::new(1e6, &o);
    let mut capped = o.clone();
    capped.max_rate = Some(800.0);
    let r = search_sim(&capped, &mut sim).await;
    let svg = chart::svg(&r);
    assert_well_formed(&svg);
    assert!(svg.contains(r#"data-y-scale="linear""#));
    assert_eq!(polyline_points(&svg, "p99"), 4);

    let empty = CapacityReport {
        steps: vec![],
        knee_rate: None,
        target: String::new(),
        ..r
    };
    let svg = chart::svg(&empty);
    assert_well_formed(&svg);
    assert_eq!(svg.matches("<polyline").count(), 0);
    assert!(svg.contains("no step ran"));
}

#[test]
fn the_capacity_run_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let spec = LoadSpec::new("http://127.0.0.1:1/".parse().unwrap());
    // Built, never polled: the engine is not run by unit tests.
    let fut = run(opts("p99<50ms"), spec, async {});
    assert_send(&fut);
}
