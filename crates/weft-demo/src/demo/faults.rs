//! The sample apps' faults, through each app's own control path
//! (`/_weft/fault` on its port, see [`crate::app`]): read at every refresh,
//! so the view shows what each endpoint is set to do next to what the mesh
//! makes of it, and changed by the demo's timed script (`script`), so a
//! default run also shows endpoints going bad and healing.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::mesh::pod_named;

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
