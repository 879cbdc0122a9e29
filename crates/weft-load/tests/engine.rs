//! `weft_load::run` against the sample app in the same process (the load
//! generator runs on its own threads): accuracy, coordinated omission,
//! protocols, rate plans and bad targets.

use std::future::pending;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use weft_demo::app::{self, AppConfig, RunningApp, Stall};
use weft_load::{LoadError, LoadSpec, Protocol, RatePlan, run};

async fn app(cfg: AppConfig) -> RunningApp {
    app::start(cfg).await.expect("sample app starts")
}

fn spec(app: &RunningApp, path: &str) -> LoadSpec {
    let mut s = LoadSpec::new(
        format!("http://{}{path}", app.local_addr())
            .parse()
            .unwrap(),
    );
    s.warmup = Duration::from_millis(300);
    s.duration = Duration::from_secs(2);
    s.threads = 2;
    s
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_delay_shows_as_the_median_within_a_millisecond() {
    let app = app(AppConfig {
        latency: ms(10),
        ..AppConfig::default()
    })
    .await;
    let mut s = spec(&app, "/");
    s.rate = RatePlan::Steps(vec![200.0]);
    s.duration = Duration::from_secs(3);
    let r = run(s, pending()).await.unwrap();
    eprintln!("{r}");
    assert_eq!(r.requests, 600, "every scheduled request is counted");
    assert_eq!(r.errors, 0, "{:?}", r.error_counts);
    assert_eq!(r.status_counts.get("200"), Some(&600));
    for (name, p) in [
        ("latency", r.latency_ms),
        ("service time", r.service_time_ms),
    ] {
        assert!(
            (10.0..=11.0).contains(&p.p50),
            "{name} p50 {} ms is not within 1 ms of the 10 ms delay",
            p.p50
        );
    }
    assert!((r.achieved_rate - 200.0).abs() < 5.0, "{}", r.achieved_rate);
    assert!(!r.client.saturated, "{:?}", r.client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_stall_shows_in_latency_but_not_in_service_time() {
    // The app stalls every response for 1 s, 4 s into a 10 s run at a fixed
    // rate. A closed-loop tool sees 8 slow requests (one per connection); a
    // user arriving at 500/s sees ~10% of requests delayed by up to 1 s.
    let app = app(AppConfig {
        latency: ms(1),
        stall: Some(Stall {
            after: ms(4300),
            length: Duration::from_secs(1),
        }),
        ..AppConfig::default()
    })
    .await;
    let mut s = spec(&app, "/");
    s.rate = RatePlan::Steps(vec![500.0]);
    s.duration = Duration::from_secs(10);
    let r = run(s, pending()).await.unwrap();
    eprintln!("{r}");
    assert_eq!(r.errors, 0, "{:?}", r.error_counts);
    assert_eq!(r.requests, 5000);
    assert!(
        r.latency_ms.p99 > 500.0,
        "corrected p99 {} ms hides the 1 s stall",
        r.latency_ms.p99
    );
    assert!(r.latency_ms.max > 900.0, "max {}", r.latency_ms.max);
    assert!(
        r.service_time_ms.p99 < 50.0,
        "service time p99 {} ms should not see the stall (only one request per connection waited)",
        r.service_time_ms.p99
    );
    assert!(
        r.service_time_ms.max > 900.0,
        "the requests in flight did wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_rate_steps_report_each_step() {
    let app = app(AppConfig::default()).await;
    let mut s = spec(&app, "/");
    s.protocol = Protocol::Http2;
    s.connections = 2;
    s.duration = Duration::from_secs(1);
    s.rate = RatePlan::Steps(vec![100.0, 200.0, 400.0]);
    let r = run(s, pending()).await.unwrap();
    assert_eq!(r.protocol, "http2");
    assert_eq!(r.steps.len(), 3);
    let counts: Vec<u64> = r.steps.iter().map(|s| s.requests).collect();
    assert_eq!(counts, vec![100, 200, 400]);
    assert_eq!(r.requests, 700);
    assert_eq!(r.errors, 0, "{:?} {:?}", r.error_counts, r.error_examples);
    assert_eq!(r.requested_rate.map(|x| x.round()), Some(233.0));
    assert!(
        (r.steps[2].achieved_rate - 400.0).abs() < 10.0,
        "{:?}",
        r.steps[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_counted_and_non_2xx_are_errors() {
    let app = app(AppConfig {
        error_rate: 0.25,
        error_status: 503,
        ..AppConfig::default()
    })
    .await;
    let mut s = spec(&app, "/");
    s.rate = RatePlan::Steps(vec![1000.0]);
    let r = run(s, pending()).await.unwrap();
    let e503 = r.status_counts.get("503").copied().unwrap_or(0);
    let ok = r.status_counts.get("200").copied().unwrap_or(0);
    assert_eq!(ok + e503, 2000);
    assert_eq!(r.errors, e503);
    assert_eq!(r.error_counts.get("http_status"), Some(&e503));
    assert!((400..600).contains(&e503), "{e503} of 2000 at 25%");
    // The first second began inside the 300 ms warm-up, the next ones after.
    assert!(
        r.timeline[0].warmup && !r.timeline[1].warmup,
        "{:?}",
        r.timeline
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rate_runs_closed_loop_without_a_schedule() {
    let app = app(AppConfig::default()).await;
    let mut s = spec(&app, "/");
    s.rate = RatePlan::Max;
    s.duration = Duration::from_secs(1);
    s.connections = 4;
    let r = run(s, pending()).await.unwrap();
    assert_eq!(r.requested_rate, None);
    assert_eq!(r.errors, 0);
    assert!(r.requests > 500, "only {} requests in 1 s", r.requests);
    assert!((r.duration_s - 1.0).abs() < 0.2, "{}", r.duration_s);
    assert_eq!(r.latency_ms.count, r.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_sends_more_at_its_end_than_at_its_start() {
    let app = app(AppConfig::default()).await;
    let mut s = spec(&app, "/");
    s.warmup = Duration::ZERO;
    s.duration = Duration::from_secs(3);
    s.rate = RatePlan::Ramp {
        from: 50.0,
        to: 450.0,
    };
    let r = run(s, pending()).await.unwrap();
    assert_eq!(r.requests, 750);
    let first = r.timeline.first().unwrap().completed;
    let last = r.timeline.get(2).unwrap().completed;
    assert!(
        first < 150 && last > 300,
        "first second {first}, third {last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_keeps_the_results_of_what_ran() {
    let app = app(AppConfig::default()).await;
    let mut s = spec(&app, "/");
    s.duration = Duration::from_secs(30);
    s.rate = RatePlan::Steps(vec![200.0]);
    let started = std::time::Instant::now();
    let r = run(s, tokio::time::sleep(Duration::from_millis(1300)))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(r.interrupted);
    assert!((r.duration_s - 1.0).abs() < 0.15, "{}", r.duration_s);
    assert!((150..=250).contains(&r.requests), "{}", r.requests);
    assert_eq!(r.errors, 0);
}

#[tokio::test]
async fn a_refused_target_is_a_clear_error_before_anything_runs() {
    let port = weft_test_support::free_port();
    let s = LoadSpec::new(format!("http://127.0.0.1:{port}/").parse().unwrap());
    let e = run(s, pending()).await.unwrap_err();
    assert!(matches!(e, LoadError::Connect { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&port.to_string()) && text.contains("refused"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unresolvable_host_is_named() {
    let s = LoadSpec::new("http://no-such-host.invalid:80/".parse().unwrap());
    let e = run(s, pending()).await.unwrap_err();
    assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_mid_response_is_counted_and_the_run_goes_on() {
    // Promises 100 bytes, sends 10, closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if sock.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
            });
        }
    });
    let mut s = LoadSpec::new(format!("http://{addr}/").parse().unwrap());
    s.warmup = Duration::ZERO;
    s.duration = Duration::from_secs(1);
    s.rate = RatePlan::Steps(vec![100.0]);
    s.connections = 2;
    let r = run(s, pending()).await.unwrap();
    assert_eq!(r.requests, 100);
    assert_eq!(r.errors, 100);
    assert_eq!(
        r.error_counts.get("closed_mid_response"),
        Some(&100),
        "{:?} {:?}",
        r.error_counts,
        r.error_examples
    );
    assert!(r.human().contains("closed_mid_response"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_times_requests_out_and_expires_queued_ones() {
    let app = app(AppConfig {
        latency: Duration::from_secs(5),
        ..AppConfig::default()
    })
    .await;
    let mut s = spec(&app, "/");
    s.warmup = Duration::ZERO;
    s.duration = Duration::from_secs(1);
    s.connections = 2;
    s.timeout = ms(300);
    s.rate = RatePlan::Steps(vec![50.0]);
    let r = run(s, pending()).await.unwrap();
    assert_eq!(r.requests, 50);
    assert_eq!(r.errors, 50);
    let timeouts = r.error_counts.get("timeout").copied().unwrap_or(0);
    let expired = r.error_counts.get("expired_in_queue").copied().unwrap_or(0);
    assert_eq!(timeouts + expired, 50, "{:?}", r.error_counts);
    assert!(timeouts >= 4 && expired > 0, "{:?}", r.error_counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_generator_short_of_cpu_says_so() {
    // Asked for 10M requests/s: beyond what the pacer can even hand out
    // (well over 100 ns a request on a debug build), whatever the machine
    // and whatever else runs on it.
    let app = app(AppConfig::default()).await;
    let mut s = spec(&app, "/");
    s.threads = 1;
    s.connections = 64;
    s.warmup = Duration::ZERO;
    s.duration = Duration::from_secs(1);
    s.timeout = Duration::from_millis(500);
    s.rate = RatePlan::Steps(vec![10_000_000.0]);
    let r = run(s, pending()).await.unwrap();
    eprintln!("{r}");
    assert!(r.client.saturated, "{:?}", r.client);
    assert!(r.human().contains("CLIENT SATURATED"));
    assert!(r.achieved_rate < 10_000_000.0);
    assert_eq!(r.requests, 10_000_000, "every due request is accounted for");
}
