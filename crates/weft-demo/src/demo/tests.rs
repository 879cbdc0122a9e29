//! The demo end to end, in-process: what a user watching it would notice.

use std::future::Future;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use tokio::sync::watch;
use weft_test_support::{HttpClient, wait_until};

use super::script::{Action, DROP, LIMIT, RAISED};
use super::*;

/// Runs the demo on the first free `127.<base>.x.y` range from `first`
/// (tests and a user's own demo run side by side; so may two checkouts).
/// `shutdown` gets the range's base.
async fn run_somewhere<F: Future<Output = ()>>(
    first: u8,
    opts: DemoOptions,
    shutdown: impl Fn(u8) -> F,
) -> (u8, DemoReport) {
    run_staged_somewhere(first, opts, |ip_base| {
        (Staging::default(), shutdown(ip_base))
    })
    .await
}

/// [`run_somewhere`], each attempt staged by `stage` (which also makes
/// the attempt's shutdown future).
async fn run_staged_somewhere<F: Future<Output = ()>>(
    first: u8,
    opts: DemoOptions,
    stage: impl Fn(u8) -> (Staging, F),
) -> (u8, DemoReport) {
    let start = first.wrapping_add((std::process::id() % 16) as u8 * 2);
    for i in 0..8 {
        let ip_base = start.wrapping_add(i * 32);
        let (staging, shutdown) = stage(ip_base);
        match run_staged(
            DemoOptions {
                ip_base,
                ..opts.clone()
            },
            staging,
            shutdown,
        )
        .await
        {
            Ok(report) => return (ip_base, report),
            Err(e) if in_use(&e) => eprintln!("127.{ip_base}.x.y is busy, trying another: {e:#}"),
            Err(e) => panic!("the demo failed: {e:#}"),
        }
    }
    panic!("no free 127.x range for the demo");
}

fn in_use(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == ErrorKind::AddrInUse)
}

/// The value of the first sample of `name` whose labels contain every
/// one of `labels` (`key="value"`), from a sidecar's `/metrics`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scrape::samples(text)
        .find(|s| {
            s.name == name
                && labels.iter().all(|want| {
                    s.labels
                        .iter()
                        .any(|(k, v)| format!("{k}=\"{v}\"") == *want)
                })
        })
        .map(|s| s.value)
}

/// Ends the run once the frontend's sidecar has seen each governance
/// capability act (a backup won on pricing; catalog-v1-2 weighted well
/// down) and a few seconds of traffic are in, or after a generous bound
/// on a slow machine (the report's assertions then say what was missing).
async fn until_governance_acted(ip_base: u8) {
    let admin = SocketAddr::from((Ipv4Addr::new(127, ip_base, 1, 1), mesh::ADMIN_PORT));
    let erroring = format!("endpoint=\"127.{ip_base}.2.3:15006\"");
    let client = HttpClient::http1().with_timeout(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let acted = wait_until("governance acting", Duration::from_secs(40), || async {
        if started.elapsed() < Duration::from_secs(4) {
            return Err("warming up".to_owned());
        }
        let r = client
            .get(admin, "admin", "/metrics")
            .await
            .map_err(|e| format!("{e:#}"))?;
        let text = String::from_utf8_lossy(&r.body);
        let won = metric(
            &text,
            "weft_hedges_total",
            &["service=\"pricing.default\"", "reason=\"won\""],
        )
        .unwrap_or(0.0);
        let ratio = metric(
            &text,
            "weft_endpoint_weight_ratio",
            &["service=\"catalog-v1.default\"", &erroring],
        );
        match ratio {
            Some(r) if won >= 1.0 && r < 0.3 => Ok(()),
            _ => Err(format!("hedges won {won}, catalog-v1-2 weight {ratio:?}")),
        }
    })
    .await;
    if let Err(e) = acted {
        eprintln!("{e:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_shows_the_canary_split_and_each_governance_capability_acting() {
    let opts = DemoOptions {
        rate: 100,
        plain: true,
        // The script would heal the slow endpoint at 15 s.
        script: false,
        ..DemoOptions::default()
    };
    let (_, report) = run_somewhere(101, opts, until_governance_acted).await;

    assert!(
        report.requests >= 200,
        "at least 4 s at 100 req/s: {report:#?}"
    );
    for service in [
        "frontend",
        "catalog-v1",
        "catalog-v2",
        "inventory",
        "pricing",
    ] {
        let s = report
            .service(service)
            .unwrap_or_else(|| panic!("no {service}: {report:#?}"));
        assert!(s.requests > 0 && s.p50.is_some() && s.p99 >= s.p50, "{s:?}");
    }
    // The canary split holds; catalog-v1's two endpoints share its 90%.
    let v2 = report.share("catalog", "catalog-v2");
    assert!(
        (0.05..=0.15).contains(&v2),
        "catalog-v2 share {v2}: {report:#?}"
    );
    assert!((report.share("catalog", "catalog-v1") + v2 - 1.0).abs() < 1e-9);

    // A slow endpoint loses its traffic (an even split would give it a third).
    let slow = report.share("inventory", "inventory-3");
    assert!(slow < 0.15, "inventory-3 share {slow}: {report:#?}");
    for fast in ["inventory-1", "inventory-2"] {
        let e = report.endpoint(fast).unwrap();
        assert!(e.requests > 0, "an unmeasured endpoint is probed: {e:?}");
    }

    // An endpoint answering business errors is weighted down (round robin
    // would give it half of catalog-v1's traffic) and retries hide them.
    let erroring = report.endpoint("catalog-v1-2").unwrap();
    let weight = erroring.weight_ratio.unwrap_or(1.0);
    assert!(
        weight < 0.5 || erroring.ejected,
        "catalog-v1-2 weight {weight}: {erroring:?}"
    );
    let of_v1 = erroring.share / report.share("catalog", "catalog-v1");
    assert!(
        of_v1 < 0.4,
        "catalog-v1-2 took {of_v1} of catalog-v1's traffic"
    );
    let catalog = report.calls_to("catalog").unwrap();
    assert!(catalog.retries > 0, "{catalog:?}");
    let success = catalog.success_rate().unwrap();
    assert!(success >= 0.99, "callers' success {success}: {catalog:?}");
    let success = report.success_rate().unwrap();
    assert!(success >= 0.99, "ingress success {success}: {report:#?}");

    // Backups trim pricing's tail.
    let pricing = report.calls_to("pricing").unwrap();
    assert!(
        pricing.hedges_won > 0 && pricing.hedges_sent >= pricing.hedges_won,
        "{pricing:?}"
    );
    assert!(
        !report.config_dir.exists(),
        "the temporary config directory is removed"
    );

    // The control plane's own traffic view, as `weft top` shows it, saw
    // the same mesh: the services called and who called them.
    let traffic = report.traffic.as_ref().expect("the control plane's view");
    let shown = traffic.render("TRAFFIC VIEW");
    let view = traffic
        .snapshot
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}: {shown}"));
    for service in ["catalog", "inventory", "pricing", "payments", "ledger"] {
        let service = format!("{service}.default");
        assert!(
            view.services
                .iter()
                .any(|r| r.service == service && r.requests.unwrap_or(0.0) > 0.0),
            "no {service}: {shown}"
        );
    }
    for edge in [
        "frontend.default -> catalog.default",
        "frontend.default -> pricing.default",
        "catalog-v1.default -> inventory.default",
        "checkout.default -> payments.default",
    ] {
        assert!(
            shown.lines().any(|l| l.starts_with(edge)),
            "no {edge}: {shown}"
        );
    }
    let catalog = view
        .services
        .iter()
        .find(|r| r.service == "catalog.default")
        .unwrap();
    assert!(
        catalog.success_rate.unwrap_or(0.0) >= 0.99,
        "retries hide catalog-v1-2's errors from callers: {shown}"
    );
}

/// A user's session: start with a config dir, move all catalog traffic to
/// the canary by editing the file, press Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_edit_moves_traffic_and_ctrl_c_frees_every_port() {
    let dir = std::env::temp_dir().join(format!("weft-demo-test-{}", std::process::id()));
    let opts = DemoOptions {
        duration: None,
        rate: 50,
        config_dir: Some(dir.clone()),
        refresh: Duration::from_millis(500),
        plain: true,
        ..DemoOptions::default()
    };
    let file = dir.join("demo.yaml");
    let session = |_| {
        let file = file.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let config = std::fs::read_to_string(&file).unwrap();
            let all_to_v2 = config
                .replace(
                    "{name: catalog-v1, weight: 90}",
                    "{name: catalog-v1, weight: 0}",
                )
                .replace(
                    "{name: catalog-v2, weight: 10}",
                    "{name: catalog-v2, weight: 100}",
                );
            assert_ne!(all_to_v2, config, "the example config changed shape");
            std::fs::write(&file, all_to_v2).unwrap();
            tokio::time::sleep(Duration::from_millis(2300)).await; // then Ctrl-C
        }
    };
    let started = std::time::Instant::now();
    let (ip_base, report) = run_somewhere(102, opts, session).await;

    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(report.requests > 0 && report.ok > 0, "{report:#?}");
    assert!(
        report
            .events
            .iter()
            .any(|e| e.what == "config generation 2 applied by every sidecar"),
        "the edit shows as an event: {:#?}",
        report.events
    );
    // 10% for 0.7 s plus the reload delay, then 100% for the rest.
    let v2 = report.share("catalog", "catalog-v2");
    assert!(
        v2 > 0.4,
        "catalog-v2 share {v2} after the edit: {report:#?}"
    );
    for pod in PODS {
        for port in [
            mesh::APP_PORT,
            mesh::ADMIN_PORT,
            mesh::OUTBOUND_PORT,
            mesh::INBOUND_PORT,
        ] {
            let addr = SocketAddr::from((pod.ip(ip_base), port));
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr} still taken: {e}"));
        }
    }
    let frontend = Ipv4Addr::new(127, ip_base, 1, 1);
    let config = std::fs::read_to_string(&file).unwrap();
    assert!(
        config.contains(&format!("address: {frontend}:15006")),
        "{config}"
    );
    assert!(dir.exists(), "a directory the user named is kept");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The first view (from now on) that `ok` accepts, within `bound`; panics
/// with the last view shown otherwise.
async fn view_where(
    views: &mut watch::Receiver<Option<View>>,
    what: &str,
    bound: Duration,
    ok: impl Fn(&View) -> bool,
) -> View {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(v) = views.borrow_and_update().as_ref().filter(|v| ok(v)) {
            return v.clone();
        }
        if !matches!(
            tokio::time::timeout_at(deadline, views.changed()).await,
            Ok(Ok(()))
        ) {
            let last = views.borrow().as_ref().map(view::render);
            panic!(
                "{what}: not within {bound:?}; the last view:\n{}",
                last.unwrap_or_default()
            );
        }
    }
}

fn calls<'a>(v: &'a View, service: &str) -> &'a CallSummary {
    v.calls
        .iter()
        .find(|c| c.service == service)
        .unwrap_or_else(|| panic!("no calls to {service}:\n{}", view::render(v)))
}

/// A sample app's request count (`/_weft/stats`).
async fn app_requests(addr: SocketAddr) -> u64 {
    let r = HttpClient::http1()
        .get(addr, "app", "/_weft/stats")
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    stats["requests"].as_u64().unwrap()
}

/// The calls to ledger that payments' sidecar cut, from its own metrics.
async fn cut_at_payments(admin: SocketAddr) -> f64 {
    let r = HttpClient::http1()
        .get(admin, "admin", "/metrics")
        .await
        .unwrap();
    metric(
        &r.text(),
        "weft_requests_total",
        &[
            "direction=\"outbound\"",
            "service=\"ledger.default\"",
            "error=\"deadline-exceeded\"",
        ],
    )
    .unwrap_or(0.0)
}

/// Steps through the default script as fast as the mesh follows, checking
/// after each flow step what a user watching the view would see.
async fn step_through_the_script(
    ip_base: u8,
    go: tokio::sync::mpsc::UnboundedSender<()>,
    mut views: watch::Receiver<Option<View>>,
    opts: DemoOptions,
) {
    const BOUND: Duration = Duration::from_secs(20);
    let rates = script::Rates::for_rate(opts.rate);
    let payments = mesh::pod_named("payments").unwrap();
    let ledger = mesh::pod_named("ledger").unwrap();
    let payments_admin = payments.addr(ip_base, mesh::ADMIN_PORT);
    let ledger_app = ledger.addr(ip_base, mesh::APP_PORT);
    // Traffic through the whole mesh first, the deadline chain completing.
    view_where(&mut views, "the chain completing", BOUND, |v| {
        v.chain.ok > 0 && calls(v, "ledger").cut == 0
    })
    .await;
    for step in SCRIPT {
        let before = views.borrow().clone().expect("a view before any step");
        let generation = before.generations.map_or(0, |(_, hi)| hi);
        go.send(()).unwrap();
        let event = step.describe(rates);
        view_where(&mut views, &event, BOUND, |v| {
            v.events.iter().any(|e| e.what == event)
        })
        .await;
        let Action::Policy(policy) = step.action else {
            if step.action
                == (Action::Fault {
                    pod: "payments",
                    change: Some("latency=110ms"),
                })
            {
                let settle = opts.window + opts.refresh;
                the_deadline_cuts_the_slow_chain(&mut views, payments_admin, ledger_app, settle)
                    .await;
            }
            continue;
        };
        // Served by the control plane and applied by every sidecar...
        let name = |v: &View, policy: &str| v.flow.iter().any(|f| f.name == policy);
        let in_force = view_where(&mut views, "every sidecar on the new config", BOUND, |v| {
            v.generations
                .is_some_and(|(lo, hi)| lo == hi && hi > generation)
                && match policy {
                    Some(text) if text == DROP => name(v, "catalog-flow"),
                    Some(_) => name(v, "pricing-flow") && !name(v, "catalog-flow"),
                    None => !name(v, "pricing-flow"),
                }
        })
        .await;
        // ...and a whole window of traffic under it.
        let since = in_force.elapsed + opts.window + opts.refresh;
        let v = view_where(&mut views, "a window under the change", BOUND, |v| {
            v.elapsed >= since
        })
        .await;
        let (catalog, pricing) = (calls(&v, "catalog"), calls(&v, "pricing"));
        let shown = view::render(&v);
        match policy {
            Some(text) if text == DROP => {
                let share = catalog.share_of(catalog.dropped);
                assert!(
                    catalog.requests >= 100 && (0.12..=0.28).contains(&share),
                    "about 20% of the calls to catalog dropped: {catalog:?}\n{shown}"
                );
                assert_eq!(catalog.refused(), catalog.dropped, "{shown}");
            }
            Some(text) if text == LIMIT => {
                assert_eq!(catalog.dropped, 0, "the drop ratio is gone: {shown}");
                // pricing gets the whole rate; the bucket lets 60% through.
                let share = pricing.share_of(pricing.rate_limited);
                assert!(
                    (0.2..=0.6).contains(&share),
                    "about 40% of the calls to pricing limited: {pricing:?}\n{shown}"
                );
                assert!(shown.contains("pricing-flow: rateLimit"), "{shown}");
            }
            Some(text) => {
                assert_eq!(text, RAISED);
                assert!(pricing.requests > 0 && pricing.rate_limited == 0, "{shown}");
            }
            None => {
                assert!(
                    catalog.refused() + pricing.refused() == 0
                        && v.flow.iter().all(|f| f.name == "ledger-deadline"),
                    "{shown}"
                );
            }
        }
    }
    // The script healed payments: the chain completes again.
    view_where(&mut views, "the chain completing again", BOUND, |v| {
        v.chain.ok > 0 && calls(v, "ledger").cut == 0
    })
    .await;
}

/// With payments slowed past what the deadline leaves for ledger: cuts at
/// payments' sidecar, and ledger's app gets none of the cut calls.
async fn the_deadline_cuts_the_slow_chain(
    views: &mut watch::Receiver<Option<View>>,
    payments_admin: SocketAddr,
    ledger_app: SocketAddr,
    settle: Duration,
) {
    const BOUND: Duration = Duration::from_secs(20);
    let v = view_where(views, "calls to ledger cut", BOUND, |v| {
        calls(v, "ledger").cut > 0
    })
    .await;
    let shown = view::render(&v);
    assert!(
        shown.contains(
            "calls to ledger cut at payments' sidecar, never sent (504 deadline-exceeded)"
        ),
        "{shown}"
    );
    assert_eq!(calls(&v, "ledger").cut_at, ["payments"], "{shown}");
    // From now on every request is slow at payments: none may reach ledger.
    let (cut, reached) = (
        cut_at_payments(payments_admin).await,
        app_requests(ledger_app).await,
    );
    assert!(cut >= 1.0);
    wait_until("20 more calls cut", BOUND, || async {
        cut_at_payments(payments_admin).await >= cut + 20.0
    })
    .await
    .unwrap();
    assert_eq!(
        app_requests(ledger_app).await,
        reached,
        "ledger's app got none of the cut calls"
    );
    // The view says so too: a whole window of cuts, nothing received.
    let since = v.elapsed + settle;
    let v = view_where(views, "a window of cuts", BOUND, |v| v.elapsed >= since).await;
    // (The sidecars' numbers: the driver's own are a second behind.)
    let service = |name: &str| v.services.iter().find(|s| s.service == name);
    let checkout = service("checkout").expect("checkout answers");
    assert!(
        checkout.requests > 0
            && checkout.ok == 0
            && calls(&v, "ledger").cut > 0
            && service("ledger").is_none_or(|s| s.requests == 0),
        "{}",
        view::render(&v)
    );
}

/// The default script's flow-control steps, stepped through as fast as the
/// mesh follows (each step when the previous one has been seen acting):
/// the drop ratio written to flow.yaml drops about a fifth of the calls to
/// catalog, the rate limit below the offered rate refuses pricing's excess
/// and stops once raised, and payments slowed past the deadline's budget
/// has its calls to ledger cut, ledger's app getting none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_changes_flow_control_online_and_a_deadline_cuts_a_slow_chain() {
    let opts = DemoOptions {
        rate: 100,
        plain: true,
        refresh: Duration::from_millis(250),
        window: Duration::from_secs(3),
        ..DemoOptions::default()
    };
    let started = std::time::Instant::now();
    let (_, report) = run_staged_somewhere(103, opts.clone(), |ip_base| {
        let (go, pace) = tokio::sync::mpsc::unbounded_channel();
        let (views, seen) = watch::channel(None);
        let staging = Staging {
            script: SCRIPT,
            pace: script::Pace::Stepped(pace),
            views: Some(views),
        };
        (
            staging,
            step_through_the_script(ip_base, go, seen, opts.clone()),
        )
    })
    .await;
    eprintln!("stepped through the script in {:?}", started.elapsed());
    // Every step is an event, in order, the flow steps naming the file.
    let rates = script::Rates::for_rate(100);
    let whats: Vec<String> = report.events.iter().map(|e| e.what.clone()).collect();
    let mut at = 0;
    for step in SCRIPT {
        let want = step.describe(rates);
        at += whats[at..]
            .iter()
            .position(|w| *w == want)
            .unwrap_or_else(|| panic!("no event {want:?} after {at}: {whats:#?}"));
    }
    assert!(
        whats
            .iter()
            .any(|w| w.starts_with("dropRatio 0.2 on catalog") && w.ends_with("(wrote flow.yaml)"))
    );
    assert!(whats.iter().any(|w| w.ends_with("(removed flow.yaml)")));
    assert!(report.chain_requests > 0 && report.chain_ok < report.chain_requests);
}
