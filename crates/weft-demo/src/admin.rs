//! Admin endpoints of the sample app and the demo (`/ready`, `/live`,
//! `/metrics`), served by the proxy's admin server.

use std::fmt::Write;

use weft_admin::AdminEndpoints;

use crate::app::AppStats;

/// Writes one OpenMetrics counter family with a single sample.
pub(crate) fn counter(out: &mut String, name: &str, help: &str, labels: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name}_total{{{labels}}} {value}");
}

/// The sample app's counters.
pub struct AppAdmin {
    pub(crate) name: String,
    pub(crate) stats: Box<dyn Fn() -> AppStats + Send + Sync>,
}

impl AdminEndpoints for AppAdmin {
    fn ready(&self) -> bool {
        true
    }
    fn metrics(&self) -> String {
        let s = (self.stats)();
        let labels = format!("app=\"{}\"", self.name.replace(['"', '\\', '\n'], "_"));
        let mut out = String::new();
        counter(
            &mut out,
            "weft_app_requests",
            "Requests received",
            &labels,
            s.requests,
        );
        counter(
            &mut out,
            "weft_app_errors",
            "Injected errors and failed downstream calls",
            &labels,
            s.errors,
        );
        out.push_str("# EOF\n");
        out
    }
}
