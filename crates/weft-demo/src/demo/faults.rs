//! The sample apps' faults, through each app's own control path
//! (`/_weft/fault` on its port, see [`crate::app`]): read at every refresh,
//! so the view shows what each endpoint is set to do next to what the mesh
//! makes of it, and changed by the demo's timed [`SCRIPT`], so a default
//! run also shows endpoints going bad and healing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::view::DemoEvent;

/// How long a control request may take: the apps answer these at once,
/// so only a stuck app takes longer, and the view must not wait for it.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);
const FAULT_PATH: &str = "/_weft/fault";

/// What one sample app is set to do (its `GET /_weft/fault`).
#[derive(Debug, Clone, PartialEq)]
pub struct AppFaults {
    pub latency: Duration,
    pub jitter: Duration,
    /// Share of requests answered `503`.
    pub error_rate: f64,
    /// Share of requests that wait `slow_latency` instead of `latency`.
    pub slow_share: f64,
    pub slow_latency: Duration,
    /// Share of requests answered `200` with a business-error header.
    pub biz_error_share: f64,
}

impl AppFaults {
    /// The faults a pod starts with.
    #[cfg(test)]
    pub(crate) fn of(pod: &super::mesh::PodSpec) -> Self {
        AppFaults {
            latency: pod.latency,
            jitter: pod.jitter,
            error_rate: pod.error_rate,
            slow_share: pod.slow_share,
            slow_latency: pod.slow_latency,
            biz_error_share: pod.biz_error_share,
        }
    }

    /// From the app's JSON (durations as `"20ms"`); `None` if a field is
    /// missing or malformed.
    fn from_json(v: &Value) -> Option<Self> {
        let duration = |name: &str| {
            v.get(name)?
                .as_str()
                .and_then(|s| weft_model::parse_duration(s).ok())
        };
        let share = |name: &str| v.get(name)?.as_f64();
        Some(AppFaults {
            latency: duration("latency")?,
            jitter: duration("jitter")?,
            error_rate: share("error_rate")?,
            slow_share: share("slow_share")?,
            slow_latency: duration("slow_latency")?,
            biz_error_share: share("biz_error_share")?,
        })
    }

    /// Short, for a table cell: the usual latency, then each fault that is
    /// on: `20ms`, `2ms, 2% at 80ms`, `2ms, biz 30%`, `4ms, err 2%`.
    pub fn describe(&self) -> String {
        let pct = |share: f64| format!("{}%", (share * 1000.0).round() / 10.0);
        let mut parts = vec![format!("{}ms", self.latency.as_millis())];
        if self.slow_share > 0.0 {
            parts.push(format!(
                "{} at {}ms",
                pct(self.slow_share),
                self.slow_latency.as_millis()
            ));
        }
        if self.biz_error_share > 0.0 {
            parts.push(format!("biz {}", pct(self.biz_error_share)));
        }
        if self.error_rate > 0.0 {
            parts.push(format!("err {}", pct(self.error_rate)));
        }
        parts.join(", ")
    }
}

/// A client for the apps' control paths (plain HTTP/1.1 to the app's own
/// port, not through a sidecar: this is not traffic).
#[derive(Debug, Clone)]
pub(crate) struct AppControl {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl AppControl {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        AppControl {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// The app's faults now, `None` when it does not answer.
    pub(crate) async fn faults(&self, app: SocketAddr) -> Option<AppFaults> {
        self.send(Method::GET, app, FAULT_PATH.to_owned())
            .await
            .ok()
    }

    /// Applies one script step's change; answers the faults now in force.
    pub(crate) async fn change(
        &self,
        app: SocketAddr,
        change: Option<&str>,
    ) -> anyhow::Result<AppFaults> {
        match change {
            Some(query) => {
                self.send(Method::POST, app, format!("{FAULT_PATH}?{query}"))
                    .await
            }
            None => self.send(Method::DELETE, app, FAULT_PATH.to_owned()).await,
        }
    }

    async fn send(
        &self,
        method: Method,
        app: SocketAddr,
        path: String,
    ) -> anyhow::Result<AppFaults> {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{app}{path}"))
            .body(Empty::new())?;
        let exchange = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::ensure!(
                status.is_success(),
                "{status}: {}",
                String::from_utf8_lossy(&body).trim()
            );
            let json: Value = serde_json::from_slice(&body)?;
            AppFaults::from_json(&json).context("unexpected fault JSON")
        };
        tokio::time::timeout(CONTROL_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {CONTROL_TIMEOUT:?}"))?
            .with_context(|| format!("{path} on the app at {app}"))
    }
}

/// One step of the timed script: a fault change on one pod's app.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ScriptStep {
    /// After the traffic started.
    pub(crate) at: Duration,
    /// The pod's name (see `mesh::PODS`).
    pub(crate) pod: &'static str,
    /// The query of a `POST /_weft/fault`; `None` puts the faults the pod
    /// started with back (`DELETE`).
    pub(crate) change: Option<&'static str>,
    /// What the view says about it.
    pub(crate) what: &'static str,
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The default run's script. The steady situations (a slow endpoint, an
/// erroring one, a long tail) show from the first seconds; the script then
/// heals the slow endpoint and the erroring one and breaks them again, so
/// each reaction is seen happening, both ways. Going bad is answered at
/// once; healing takes a while by design: the latency estimate forgets a
/// slow past over a few `decay`s (10 s each), a weight climbs back over
/// `recovery` (10 s).
pub(crate) const SCRIPT: &[ScriptStep] = &[
    ScriptStep {
        at: secs(15),
        pod: "inventory-3",
        change: Some("latency=1ms&jitter=2ms"),
        what: "inventory-3 is fast again (1ms): it gets traffic back as its slow past fades (<30s)",
    },
    ScriptStep {
        at: secs(40),
        pod: "catalog-v1-2",
        change: Some("biz_error_share=0"),
        what: "catalog-v1-2 stops its business errors: its weight climbs back (~10s)",
    },
    ScriptStep {
        at: secs(60),
        pod: "catalog-v1-2",
        change: None,
        what: "catalog-v1-2 answers business errors again: its weight is cut at once",
    },
    ScriptStep {
        at: secs(70),
        pod: "inventory-3",
        change: None,
        what: "inventory-3 turns slow again (40ms): its share falls at once",
    },
];

/// Runs `script` from `start`, sending each step's event once applied.
pub(crate) async fn run_script(
    script: &'static [ScriptStep],
    start: Instant,
    apps: Vec<(&'static str, SocketAddr)>,
    control: AppControl,
    events: UnboundedSender<DemoEvent>,
) {
    for step in script {
        tokio::time::sleep_until(start + step.at).await;
        let Some(&(_, app)) = apps.iter().find(|(name, _)| *name == step.pod) else {
            continue;
        };
        let what = match control.change(app, step.change).await {
            Ok(_) => step.what.to_owned(),
            Err(e) => format!("could not change {}'s faults: {e:#}", step.pod),
        };
        let at = start.elapsed();
        if events.send(DemoEvent { at, what }).is_err() {
            return;
        }
    }
}

/// The first step after `elapsed`, to announce it.
pub(crate) fn next_step(script: &[ScriptStep], elapsed: Duration) -> Option<&ScriptStep> {
    script.iter().find(|s| s.at > elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::mesh::{PODS, pod_named};

    #[test]
    fn faults_read_like_the_app_writes_them_and_describe_briefly() {
        let json = serde_json::json!({
            "latency": "2ms", "jitter": "1ms", "error_rate": 0.0,
            "slow_share": 0.02, "slow_latency": "80ms",
            "biz_error_share": 0.3, "biz_error_header": "x-biz-code:5003",
        });
        let f = AppFaults::from_json(&json).unwrap();
        assert_eq!(f.slow_latency, Duration::from_millis(80));
        assert_eq!(f.describe(), "2ms, 2% at 80ms, biz 30%");
        assert_eq!(
            AppFaults::from_json(&serde_json::json!({"latency": 3})),
            None
        );
        let canary = AppFaults::of(pod_named("catalog-v2").unwrap());
        assert_eq!(canary.describe(), "4ms, err 2%");
        assert_eq!(
            AppFaults::of(pod_named("inventory-3").unwrap()).describe(),
            "40ms"
        );
    }

    #[test]
    fn the_script_names_pods_and_runs_in_order_within_a_few_minutes() {
        for step in SCRIPT {
            assert!(pod_named(step.pod).is_some(), "{step:?}");
        }
        assert!(SCRIPT.windows(2).all(|w| w[0].at < w[1].at));
        // The default run shows its steady situations first.
        assert!(SCRIPT[0].at >= secs(10));
        assert!(SCRIPT.last().unwrap().at <= secs(90));
        assert_eq!(next_step(SCRIPT, secs(0)), Some(&SCRIPT[0]));
        assert_eq!(next_step(SCRIPT, secs(15)), Some(&SCRIPT[1]));
        assert_eq!(next_step(SCRIPT, secs(71)), None);
        // Every pod it changes is put back as it started.
        for step in SCRIPT.iter().filter(|s| s.change.is_some()) {
            assert!(
                SCRIPT.iter().any(|later| later.at > step.at
                    && later.pod == step.pod
                    && later.change.is_none()),
                "{step:?}"
            );
        }
        assert!(PODS.iter().any(|p| p.name == SCRIPT[0].pod));
    }

    /// The script against a real app: each step at its time, reported as an
    /// event; a step the app refuses is reported as such; a step for a pod
    /// the mesh does not have is skipped.
    #[tokio::test]
    async fn the_script_applies_each_step_in_turn_and_reports_it() {
        const STEPS: &[ScriptStep] = &[
            ScriptStep {
                at: Duration::ZERO,
                pod: "inventory-3",
                change: Some("latency=7ms"),
                what: "inventory-3 slows down",
            },
            ScriptStep {
                at: Duration::from_millis(20),
                pod: "nobody",
                change: None,
                what: "skipped",
            },
            ScriptStep {
                at: Duration::from_millis(30),
                pod: "inventory-3",
                change: Some("latency=soon"),
                what: "refused",
            },
            ScriptStep {
                at: Duration::from_millis(40),
                pod: "inventory-3",
                change: None,
                what: "inventory-3 heals",
            },
        ];
        let app = crate::app::start(crate::app::AppConfig {
            latency: Duration::from_millis(1),
            ..Default::default()
        })
        .await
        .unwrap();
        let control = AppControl::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let apps = vec![("inventory-3", app.local_addr())];
        run_script(STEPS, start, apps, control.clone(), tx).await;
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        let whats: Vec<_> = events.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(whats.len(), 3, "{events:?}");
        assert_eq!(whats[0], "inventory-3 slows down");
        assert!(
            whats[1].starts_with("could not change inventory-3's faults: ")
                && whats[1].contains("400"),
            "{events:?}"
        );
        assert_eq!(whats[2], "inventory-3 heals");
        assert!(events[2].at >= Duration::from_millis(40), "{events:?}");
        let now = control.faults(app.local_addr()).await.unwrap();
        assert_eq!(now.latency, Duration::from_millis(1), "healed: {now:?}");
        app.shutdown().await;
    }

    /// The script's requests against a real app: a change, then the
    /// pod's own faults back.
    #[tokio::test]
    async fn a_step_changes_an_apps_faults_and_a_reset_restores_them() {
        let app = crate::app::start(crate::app::AppConfig {
            latency: Duration::from_millis(1),
            ..Default::default()
        })
        .await
        .unwrap();
        let control = AppControl::new();
        let addr = app.local_addr();
        let changed = control
            .change(addr, Some("latency=30ms&biz_error_share=0.5"))
            .await
            .unwrap();
        assert_eq!(changed.latency, Duration::from_millis(30));
        assert_eq!(control.faults(addr).await, Some(changed));
        let reset = control.change(addr, None).await.unwrap();
        assert_eq!(reset.latency, Duration::from_millis(1));
        assert_eq!(reset.biz_error_share, 0.0);
        let err = control
            .change(addr, Some("latency=fast"))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("400"), "{err:#}");
        app.shutdown().await;
        assert_eq!(control.faults(addr).await, None, "a gone app reads as None");
    }
}
