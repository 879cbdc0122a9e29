//! Flow control changed online (issue 6): a TrafficPolicy written to, or
//! removed from, the control plane's config directory takes effect in
//! every proxy following it over xDS within a second, and the requests
//! already admitted when it lands complete (none lost).
//!
//! Three sidecars of three caller Services send steady traffic to one
//! destination, `catalog`; the test records every answer with the time
//! its request was sent, and takes a proxy's switch time as the send time
//! of its first request answered the new way (a fast request every 5 ms:
//! that is the resolution).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use weft_test_support::{HttpClient, wait_until};

/// What the issue asks: every affected proxy within this of the write.
const SWITCH_BOUND: Duration = Duration::from_secs(1);
/// How long the test waits for a switch at all (a miss then reports the
/// time measured instead of a timeout).
const GIVE_UP: Duration = Duration::from_secs(10);
/// The latency of the slow requests kept in flight across a change.
const SLOW: &str = "/delay/300";

/// One answer through a caller's sidecar.
#[derive(Debug, Clone)]
struct Outcome {
    sent: Instant,
    done: Instant,
    /// `None`: no answer (a lost request).
    status: Option<u16>,
    error: Option<String>,
}

impl Outcome {
    fn refused(&self, how: &str) -> bool {
        self.error.as_deref() == Some(how)
    }
}

/// Steady traffic through one caller's sidecar: a fast GET every 5 ms, and
/// a slow one (300 ms at the app) started every 50 ms on its own task.
struct Caller {
    name: &'static str,
    proxy: Proxy,
    fast: Arc<Mutex<Vec<Outcome>>>,
    slow: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn send(client: &HttpClient, via: SocketAddr, path: &str) -> Outcome {
    let sent = Instant::now();
    let r = client.get(via, "catalog", path).await;
    let done = Instant::now();
    match r {
        Ok(r) => Outcome {
            sent,
            done,
            status: Some(r.status.as_u16()),
            error: r.header("weft-error").map(str::to_owned),
        },
        Err(e) => Outcome {
            sent,
            done,
            status: None,
            error: Some(format!("{e:#}")),
        },
    }
}

impl Caller {
    fn start(name: &'static str, proxy: Proxy, stop: &Arc<AtomicBool>) -> Caller {
        let fast = Arc::<Mutex<Vec<Outcome>>>::default();
        let slow = Arc::<Mutex<Vec<Outcome>>>::default();
        let via = proxy.outbound;
        let fast_task = {
            let (stop, log) = (stop.clone(), fast.clone());
            tokio::spawn(async move {
                let client = HttpClient::http1().with_timeout(Duration::from_secs(5));
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let o = send(&client, via, "/").await;
                    log.lock().unwrap().push(o);
                }
            })
        };
        let slow_task = {
            let (stop, log) = (stop.clone(), slow.clone());
            tokio::spawn(async move {
                let client = HttpClient::http1().with_timeout(Duration::from_secs(5));
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                let mut in_flight = tokio::task::JoinSet::new();
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (client, log) = (client.clone(), log.clone());
                    in_flight.spawn(async move {
                        let o = send(&client, via, SLOW).await;
                        log.lock().unwrap().push(o);
                    });
                }
                // Every request started is answered (or counted lost).
                while in_flight.join_next().await.is_some() {}
            })
        };
        Caller {
            name,
            proxy,
            fast,
            slow,
            tasks: vec![fast_task, slow_task],
        }
    }

    /// The send time of the first fast request sent after `since` whose
    /// answer `is_new` accepts.
    fn first_after(&self, since: Instant, is_new: impl Fn(&Outcome) -> bool) -> Option<Instant> {
        self.fast
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.sent >= since && is_new(o))
            .map(|o| o.sent)
            .min()
    }

    fn fast_ok(&self) -> usize {
        let log = self.fast.lock().unwrap();
        log.iter().filter(|o| o.status == Some(200)).count()
    }
}

fn flow_policy(spec: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: catalog-flow}}\nspec:\n  targetRefs: [{{kind: Service, name: catalog}}]\n{spec}"
    )
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// When the control plane started pushing its newest generation (Unix
/// seconds), from its metrics.
async fn published_at(admin: SocketAddr) -> f64 {
    let text = HttpClient::http1()
        .get(admin, "admin", "/metrics")
        .await
        .unwrap()
        .text();
    text.lines()
        .filter(|l| l.starts_with("weft_control_config_last_publish_timestamp_seconds"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(0.0)
}

/// When one proxy answered the new way.
#[derive(Debug, Clone, Copy)]
struct Switch {
    caller: &'static str,
    /// The send time of its first request answered the new way.
    at: Instant,
    /// After the write.
    after: Duration,
}

/// Makes a change with `write`, then waits for each caller's first
/// request answered the new way; returns each caller's switch, printed
/// with the time the control plane took to publish the change.
async fn switch_times(
    what: &str,
    callers: &[Caller],
    control_admin: SocketAddr,
    write: impl FnOnce(),
    is_new: impl Fn(&Outcome) -> bool + Copy,
) -> Vec<Switch> {
    write();
    let (written, written_unix) = (Instant::now(), unix_now());
    let mut switches = Vec::new();
    for c in callers {
        let at = wait_until(&format!("{what}: {}", c.name), GIVE_UP, || async {
            c.first_after(written, is_new)
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        switches.push(Switch {
            caller: c.name,
            at,
            after: at.saturating_duration_since(written),
        });
    }
    let published = published_at(control_admin).await - written_unix;
    eprintln!(
        "{what}: control plane published after {:.0} ms; proxies switched after {}",
        published * 1000.0,
        describe(&switches)
    );
    switches
}

fn describe(switches: &[Switch]) -> String {
    switches
        .iter()
        .map(|s| format!("{} {} ms", s.caller, s.after.as_millis()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn assert_within_bound(what: &str, switches: &[Switch]) {
    assert!(
        switches.iter().all(|s| s.after <= SWITCH_BOUND),
        "{what}: every proxy within {SWITCH_BOUND:?} of the write: {}",
        describe(switches)
    );
}

/// Waits until every proxy runs the control plane's newest generation.
async fn converged(control: &ControlPlane, callers: &[Caller]) {
    let generation = |text: &str, name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .next()
            .unwrap_or(0.0)
    };
    wait_until("every proxy on the newest config", GIVE_UP, || async {
        let cp = HttpClient::http1()
            .get(control.admin, "admin", "/metrics")
            .await
            .ok()?
            .text();
        let want = generation(&cp, "weft_control_config_generation");
        for c in callers {
            let text = c.proxy.admin_get("/metrics").await;
            if generation(&text, "weft_config_generation") < want {
                return None;
            }
        }
        Some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_reaches_every_proxy_within_a_second_without_losing_requests() {
    let catalog = app("catalog", &[]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(catalog.addr, 1)], None),
    )]);
    let cp = control_plane(dir.path()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for name in ["web", "batch", "mobile"] {
        let proxy = xds_sidecar(cp.xds, &format!("{name}-1"), name).await;
        callers.push(Caller::start(name, proxy, &stop));
    }
    wait_until("traffic flowing through every proxy", GIVE_UP, || async {
        callers.iter().all(|c| c.fast_ok() >= 50)
    })
    .await
    .unwrap();

    // Every caller refused: a drop ratio of 1.
    let drop = switch_times(
        "dropRatio 1.0 written",
        &callers,
        cp.admin,
        || {
            replace_file(
                dir.path(),
                "flow.yaml",
                &flow_policy("  admission: {dropRatio: 1.0}\n"),
            )
        },
        |o| o.status == Some(503) && o.refused("dropped"),
    )
    .await;
    // Admitted again once the policy is gone.
    let admit = switch_times(
        "flow.yaml removed",
        &callers,
        cp.admin,
        || std::fs::remove_file(dir.join("flow.yaml")).unwrap(),
        |o| o.status == Some(200),
    )
    .await;

    // A local rate limit far above the traffic, then lowered below it.
    replace_file(
        dir.path(),
        "flow.yaml",
        &flow_policy("  rateLimit: {local: {requestsPerSecond: 100000, burst: 1000}}\n"),
    );
    converged(&cp, &callers).await;
    let limit = switch_times(
        "rate limit lowered to 5/s",
        &callers,
        cp.admin,
        || {
            replace_file(
                dir.path(),
                "flow.yaml",
                &flow_policy("  rateLimit: {local: {requestsPerSecond: 5, burst: 1}}\n"),
            )
        },
        |o| o.status == Some(429) && o.refused("rate-limited"),
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    for c in &mut callers {
        for t in c.tasks.drain(..) {
            t.await.unwrap();
        }
    }
    assert_within_bound("dropRatio 1.0 written", &drop);
    assert_within_bound("flow.yaml removed", &admit);
    assert_within_bound("rate limit lowered", &limit);

    // No request lost: every answer is the upstream's or the policy's.
    for c in &callers {
        for o in c
            .fast
            .lock()
            .unwrap()
            .iter()
            .chain(c.slow.lock().unwrap().iter())
        {
            let expected = match o.status {
                Some(200) => o.error.is_none(),
                Some(503) => o.refused("dropped"),
                Some(429) => o.refused("rate-limited"),
                _ => false,
            };
            assert!(expected, "{}: {o:?}", c.name);
        }
    }
    // Slow requests admitted before a proxy switched to dropping and
    // still in flight when it did complete with 200. (25 ms before the
    // switch seen: the proxy's own switch is a little earlier, by up to
    // a fast request's period.)
    for (c, switch) in callers.iter().zip(&drop) {
        let slow = c.slow.lock().unwrap();
        let across: Vec<&Outcome> = slow
            .iter()
            .filter(|o| o.sent + Duration::from_millis(25) < switch.at && o.done > switch.at)
            .collect();
        assert!(
            !across.is_empty() && across.iter().all(|o| o.status == Some(200)),
            "{}: slow requests in flight across the switch: {across:?}",
            c.name
        );
        eprintln!(
            "{}: {} slow requests in flight across the switch to dropping, all answered 200",
            c.name,
            across.len()
        );
    }
}
