//! The demo's timed script: what changes while the default run goes on, so
//! that each capability is seen reacting, both ways. Two kinds of step:
//!
//! - a fault change on one pod's app, through its own control path (see
//!   `faults`): an endpoint turns slow or erroring, then heals;
//! - a flow-control change made exactly as a user would make it: the
//!   script writes, edits and finally removes `flow.yaml` in the demo's
//!   config directory (TrafficPolicies with a drop ratio, a local rate
//!   limit); the control plane notices the file and every sidecar follows.
//!
//! Each step, once applied, becomes an event of the view. The steps' times
//! are data ([`SCRIPT`] is the default run's); a test runs its own steps,
//! or the default ones one after the other when it says so ([`Pace`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use super::faults::AppControl;
use super::mesh::FLOW_FILE;
use super::view::DemoEvent;

/// What one step does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Action {
    /// A fault change on one pod's app.
    Fault {
        /// The pod's name (see `mesh::PODS`).
        pod: &'static str,
        /// The query of a `POST /_weft/fault`; `None` puts the faults the
        /// pod started with back (`DELETE`).
        change: Option<&'static str>,
    },
    /// Writes `flow.yaml` with this text (`{limit}` and `{raised}` filled
    /// in, see [`Rates`]); `None` removes it.
    Policy(Option<&'static str>),
}

/// One step of the script.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ScriptStep {
    /// After the traffic started.
    pub(crate) at: Duration,
    pub(crate) action: Action,
    /// What the view says about it (`{limit}` and `{raised}` filled in).
    pub(crate) what: &'static str,
}

impl ScriptStep {
    /// The event's text: `what`, and for a policy step the file touched.
    pub(crate) fn describe(&self, rates: Rates) -> String {
        let what = rates.fill(self.what);
        match self.action {
            Action::Fault { .. } => what,
            Action::Policy(Some(_)) => format!("{what} (wrote {FLOW_FILE})"),
            Action::Policy(None) => format!("{what} (removed {FLOW_FILE})"),
        }
    }
}

/// The rates a policy step's text refers to, from the rate the frontend
/// is offered: `{limit}` is below what pricing gets (60% of it), `{raised}`
/// well above (twice).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rates {
    pub(crate) limit: u32,
    pub(crate) raised: u32,
}

impl Rates {
    pub(crate) fn for_rate(rate: u32) -> Self {
        Rates {
            limit: (f64::from(rate) * 0.6).round().max(1.0) as u32,
            raised: rate.saturating_mul(2).max(2),
        }
    }

    fn fill(&self, text: &str) -> String {
        text.replace("{limit}", &self.limit.to_string())
            .replace("{raised}", &self.raised.to_string())
    }
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The drop ratio: a fifth of the calls to catalog refused by the callers'
/// sidecars (503, `weft-error: dropped`).
pub(crate) const DROP: &str = "\
# Written by the weft demo's script, as a user would (see demo.yaml).
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: catalog-flow}
spec:
  targetRefs: [{kind: HTTPRoute, name: catalog-split}]
  admission: {dropRatio: 0.2}
";

/// The drop ratio gone; a token bucket below the rate pricing gets (429,
/// `x-ratelimit-*`, `retry-after`).
pub(crate) const LIMIT: &str = "\
# Written by the weft demo's script, as a user would (see demo.yaml).
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: pricing-flow}
spec:
  targetRefs: [{kind: Service, name: pricing}]
  rateLimit:
    local:
      requestsPerSecond: {limit}
      burst: 5
";

/// The same bucket, raised above the rate pricing gets, with room for
/// bursts: calls to pricing follow catalog's answers, which bunch up behind
/// its slow ones, so a burst of 5 still refused a few at twice the rate
/// (seen on a loaded CI machine).
pub(crate) const RAISED: &str = "\
# Written by the weft demo's script, as a user would (see demo.yaml).
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: pricing-flow}
spec:
  targetRefs: [{kind: Service, name: pricing}]
  rateLimit:
    local:
      requestsPerSecond: {raised}
      burst: 50
";

/// The default run's script. The steady situations (a slow endpoint, an
/// erroring one, a long tail, a deadline chain that holds) show from the
/// first seconds; the script then heals the slow endpoint and the erroring
/// one and breaks them again, changes flow control online in between, and
/// slows the deadline chain's middle hop down for a while, so each
/// reaction is seen happening, both ways. Going bad is answered at once;
/// healing takes a while by design: the latency estimate forgets a slow
/// past over a few `decay`s (10 s each), a weight climbs back over
/// `recovery` (10 s). A policy change reaches every sidecar within a
/// second. Keep `weft demo --help` (`--no-script`) and the README in step.
pub(crate) const SCRIPT: &[ScriptStep] = &[
    ScriptStep {
        at: secs(15),
        action: Action::Fault {
            pod: "inventory-3",
            change: Some("latency=1ms&jitter=2ms"),
        },
        what: "inventory-3 is fast again (1ms): it gets traffic back as its slow past fades (<30s)",
    },
    ScriptStep {
        at: secs(20),
        action: Action::Policy(Some(DROP)),
        what: "dropRatio 0.2 on catalog (route catalog-split): the frontend's sidecar drops a fifth of its calls, 503 dropped",
    },
    ScriptStep {
        at: secs(28),
        action: Action::Policy(Some(LIMIT)),
        what: "drop ratio gone; rate limit {limit} req/s on pricing, below what it is offered: the excess is refused, 429",
    },
    ScriptStep {
        at: secs(36),
        action: Action::Policy(Some(RAISED)),
        what: "pricing's rate limit raised to {raised} req/s: nothing refused any more",
    },
    ScriptStep {
        at: secs(40),
        action: Action::Fault {
            pod: "catalog-v1-2",
            change: Some("biz_error_share=0"),
        },
        what: "catalog-v1-2 stops its business errors: its weight climbs back (~10s)",
    },
    ScriptStep {
        at: secs(45),
        action: Action::Policy(None),
        what: "flow policies removed",
    },
    ScriptStep {
        at: secs(48),
        action: Action::Fault {
            pod: "payments",
            change: Some("latency=110ms"),
        },
        what: "payments slows to 110ms: its calls to ledger no longer have the 60ms ledger needs of the 150ms deadline, its sidecar cuts them (504 deadline-exceeded)",
    },
    ScriptStep {
        at: secs(58),
        action: Action::Fault {
            pod: "payments",
            change: None,
        },
        what: "payments is fast again (3ms): the deadline chain completes",
    },
    ScriptStep {
        at: secs(60),
        action: Action::Fault {
            pod: "catalog-v1-2",
            change: None,
        },
        what: "catalog-v1-2 answers business errors again: its weight is cut at once",
    },
    ScriptStep {
        at: secs(70),
        action: Action::Fault {
            pod: "inventory-3",
            change: None,
        },
        what: "inventory-3 turns slow again (40ms): its share falls at once",
    },
];

/// When each step runs.
#[derive(Debug)]
pub(crate) enum Pace {
    /// At its time after the start.
    Timed,
    /// When a go arrives (one per step); tests step through the script
    /// as fast as the mesh reacts, without waiting on its clock.
    #[cfg_attr(not(test), expect(dead_code, reason = "only tests step"))]
    Stepped(UnboundedReceiver<()>),
}

/// What the script acts on.
#[derive(Debug, Clone)]
pub(crate) struct Stage {
    /// Each pod's name and app address.
    pub(crate) apps: Vec<(&'static str, SocketAddr)>,
    pub(crate) control: AppControl,
    /// The demo's config directory.
    pub(crate) dir: PathBuf,
    pub(crate) rates: Rates,
}

/// Runs `script` from `start`, sending each step's event once applied.
pub(crate) async fn run_script(
    script: &'static [ScriptStep],
    start: Instant,
    stage: Stage,
    mut pace: Pace,
    events: UnboundedSender<DemoEvent>,
) {
    for step in script {
        match &mut pace {
            Pace::Timed => tokio::time::sleep_until(start + step.at).await,
            Pace::Stepped(go) => {
                if go.recv().await.is_none() {
                    return;
                }
            }
        }
        let Some(what) = apply(step, &stage).await else {
            continue;
        };
        let at = start.elapsed();
        if events.send(DemoEvent { at, what }).is_err() {
            return;
        }
    }
}

/// Applies one step; `None` for a pod the mesh does not have (skipped).
async fn apply(step: &ScriptStep, stage: &Stage) -> Option<String> {
    match step.action {
        Action::Fault { pod, change } => {
            let &(_, app) = stage.apps.iter().find(|(name, _)| *name == pod)?;
            Some(match stage.control.change(app, change).await {
                Ok(_) => step.describe(stage.rates),
                Err(e) => format!("could not change {pod}'s faults: {e:#}"),
            })
        }
        Action::Policy(text) => {
            let path = stage.dir.join(FLOW_FILE);
            let done = match text {
                Some(text) => write_atomically(&path, &stage.rates.fill(text)),
                None => std::fs::remove_file(&path),
            };
            Some(match done {
                Ok(()) => step.describe(stage.rates),
                Err(e) => format!("could not change {}: {e}", path.display()),
            })
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename, as
/// config tools do: the control plane never reads half a file (the
/// temporary name is not `*.yaml`, so it is not read at all).
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("flow");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The first step after `elapsed`, to announce it.
pub(crate) fn next_step(script: &[ScriptStep], elapsed: Duration) -> Option<&ScriptStep> {
    script.iter().find(|s| s.at > elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::mesh::{CONFIG_FILE, EXAMPLE_CONFIG, PODS, pod_named};

    #[test]
    fn the_script_names_pods_and_runs_in_order_within_a_few_minutes() {
        for step in SCRIPT {
            if let Action::Fault { pod, .. } = step.action {
                assert!(pod_named(pod).is_some(), "{step:?}");
            }
        }
        assert!(SCRIPT.windows(2).all(|w| w[0].at < w[1].at));
        // The default run shows its steady situations first.
        assert!(SCRIPT[0].at >= secs(10));
        assert!(SCRIPT.last().unwrap().at <= secs(90));
        assert_eq!(next_step(SCRIPT, secs(0)), Some(&SCRIPT[0]));
        assert_eq!(next_step(SCRIPT, secs(15)), Some(&SCRIPT[1]));
        assert_eq!(next_step(SCRIPT, secs(71)), None);
        // Every pod it changes is put back as it started, and the flow
        // policies it writes are removed again.
        for step in SCRIPT {
            let undone = match step.action {
                Action::Fault {
                    pod,
                    change: Some(_),
                } => SCRIPT.iter().any(|later| {
                    later.at > step.at && later.action == Action::Fault { pod, change: None }
                }),
                Action::Policy(Some(_)) => SCRIPT
                    .iter()
                    .any(|later| later.at > step.at && later.action == Action::Policy(None)),
                _ => true,
            };
            assert!(undone, "{step:?}");
        }
        assert!(PODS.iter().any(|p| matches!(
            SCRIPT[0].action,
            Action::Fault { pod, .. } if pod == p.name
        )));
    }

    /// Each policy the script writes is valid next to the example config,
    /// at the default rate and at the smallest, and says what its event
    /// says.
    #[test]
    fn every_policy_the_script_writes_validates_with_the_example_config() {
        use weft_model::{PolicyScope, PolicyTargetKind};
        for rate in [1, 50] {
            let rates = Rates::for_rate(rate);
            assert!(
                rates.limit < rate.max(2) && rates.raised > rate,
                "{rates:?}"
            );
            for step in SCRIPT {
                let Action::Policy(Some(text)) = step.action else {
                    continue;
                };
                let flow = rates.fill(text);
                let both = format!("{EXAMPLE_CONFIG}\n---\n{flow}");
                let config = weft_model::load_str(&both, CONFIG_FILE)
                    .unwrap_or_else(|e| panic!("{step:?}: {e}"));
                let scope = |service, route| PolicyScope {
                    namespace: "default",
                    service,
                    port_name: Some("http"),
                    route,
                };
                let route = Some((PolicyTargetKind::HTTPRoute, "catalog-split", None));
                let catalog = config.effective_policy(scope("catalog-v1", route)).sections;
                let pricing = config.effective_policy(scope("pricing", None)).sections;
                // The example's own policies still hold beside them.
                assert!(catalog.retry.is_some() && pricing.hedging.is_some());
                let described = step.describe(rates);
                match (catalog.admission, pricing.rate_limit) {
                    (Some(a), None) => {
                        assert_eq!(a.drop_ratio, 0.2);
                        assert!(described.starts_with("dropRatio 0.2 on catalog"));
                    }
                    (None, Some(r)) => {
                        let rps = r.local.unwrap().requests_per_second;
                        assert!(described.contains(&format!(" {rps} req/s")), "{described}");
                    }
                    other => panic!("{step:?}: {other:?}"),
                }
                assert!(described.ends_with("(wrote flow.yaml)"), "{described}");
            }
        }
    }

    /// The script against a real app and a real directory: each step at
    /// its time, reported as an event; a step the app refuses is reported
    /// as such; a step for a pod the mesh does not have is skipped; a
    /// policy step writes, then removes, the file.
    #[tokio::test]
    async fn the_script_applies_each_step_in_turn_and_reports_it() {
        const STEPS: &[ScriptStep] = &[
            ScriptStep {
                at: Duration::ZERO,
                action: Action::Fault {
                    pod: "inventory-3",
                    change: Some("latency=7ms"),
                },
                what: "inventory-3 slows down",
            },
            ScriptStep {
                at: Duration::from_millis(20),
                action: Action::Fault {
                    pod: "nobody",
                    change: None,
                },
                what: "skipped",
            },
            ScriptStep {
                at: Duration::from_millis(30),
                action: Action::Fault {
                    pod: "inventory-3",
                    change: Some("latency=soon"),
                },
                what: "refused",
            },
            ScriptStep {
                at: Duration::from_millis(35),
                action: Action::Policy(Some("limit: {limit}\n")),
                what: "limited to {limit}",
            },
            ScriptStep {
                at: Duration::from_millis(40),
                action: Action::Fault {
                    pod: "inventory-3",
                    change: None,
                },
                what: "inventory-3 heals",
            },
        ];
        let app = crate::app::start(crate::app::AppConfig {
            latency: Duration::from_millis(1),
            ..Default::default()
        })
        .await
        .unwrap();
        let dir = weft_test_support::TempDir::new("weft-demo-script").unwrap();
        let control = AppControl::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let stage = Stage {
            apps: vec![("inventory-3", app.local_addr())],
            control: control.clone(),
            dir: dir.path().to_path_buf(),
            rates: Rates::for_rate(50),
        };
        run_script(STEPS, start, stage, Pace::Timed, tx).await;
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        let whats: Vec<_> = events.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(whats.len(), 4, "{events:?}");
        assert_eq!(whats[0], "inventory-3 slows down");
        assert!(
            whats[1].starts_with("could not change inventory-3's faults: ")
                && whats[1].contains("400"),
            "{events:?}"
        );
        assert_eq!(whats[2], "limited to 30 (wrote flow.yaml)");
        assert_eq!(
            std::fs::read_to_string(dir.join(FLOW_FILE)).unwrap(),
            "limit: 30\n"
        );
        assert_eq!(whats[3], "inventory-3 heals");
        assert!(events[3].at >= Duration::from_millis(40), "{events:?}");
        let now = control.faults(app.local_addr()).await.unwrap();
        assert_eq!(now.latency, Duration::from_millis(1), "healed: {now:?}");

        // Stepped: nothing happens before the go; a closed channel ends it.
        const REMOVE: &[ScriptStep] = &[ScriptStep {
            at: Duration::from_secs(3600),
            action: Action::Policy(None),
            what: "gone",
        }];
        let (go, gone) = tokio::sync::mpsc::unbounded_channel();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stage = Stage {
            apps: Vec::new(),
            control,
            dir: dir.path().to_path_buf(),
            rates: Rates::for_rate(50),
        };
        let script = tokio::spawn(run_script(
            REMOVE,
            Instant::now(),
            stage,
            Pace::Stepped(gone),
            tx,
        ));
        go.send(()).unwrap();
        let e = rx.recv().await.unwrap();
        assert_eq!(e.what, "gone (removed flow.yaml)");
        assert!(!dir.join(FLOW_FILE).exists());
        script.await.unwrap();
        app.shutdown().await;
    }
}
