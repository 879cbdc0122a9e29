//! The view as plain text (no terminal control codes): a header, the
//! ingress lines, four tables (services as they answered, services as
//! their callers got them, flow control, endpoints), the control plane's
//! traffic view (as `weft top` renders it) and the recent events.

use std::fmt::Write as _;
use std::time::Duration;

use super::{CallSummary, EndpointShare, IngressRow, View, per_second};
use crate::demo::CHAIN_DEADLINE_MS;

/// Lines of a rejected config's errors shown; the rest is counted.
const MAX_ERROR_LINES: usize = 6;
/// Events shown while the demo runs (the final summary shows more).
const LIVE_EVENTS: usize = 4;
const FINAL_EVENTS: usize = 12;

/// The block of text for one refresh.
pub(crate) fn render(v: &View) -> String {
    let mut out = String::new();
    render_header(&mut out, v);
    render_services(&mut out, v);
    render_calls(&mut out, v);
    render_flow(&mut out, v);
    render_endpoints(&mut out, v);
    if let Some(t) = &v.traffic {
        out.push('\n');
        out.push_str(&t.render("TRAFFIC VIEW"));
    }
    render_events(&mut out, v);
    out.push_str(
        "SERVICE: as its own sidecars answered (success: not a 5xx). CALLS TO: as the callers'\n\
         sidecars answered them, after retries and backups (HEDGES sent, WON first); a business\n\
         error given up counts as failed. FLOW CONTROL: calls the callers' sidecars refused\n\
         (DROPPED 503, LIMITED 429) or CUT (504 deadline-exceeded: too little of the deadline\n\
         left to send them), and the flow policies in force. WEIGHT: effective / configured\n\
         weight at the callers. P50: the endpoint's own sidecar. APP: its app's latency and\n\
         injected faults. TRAFFIC VIEW: the control plane's golden metrics, read from every\n\
         sidecar each second (as `weft top` shows them).\n",
    );
    // Padding of empty last columns would only be trailing blanks.
    out.lines()
        .fold(String::with_capacity(out.len()), |mut block, line| {
            block.push_str(line.trim_end());
            block.push('\n');
            block
        })
}

fn render_header(out: &mut String, v: &View) {
    let what = if v.last {
        format!("final summary after {}", clock(v.elapsed))
    } else {
        format!(
            "{} elapsed, last {:.1}s",
            clock(v.elapsed),
            v.window.as_secs_f64()
        )
    };
    let _ = writeln!(
        out,
        "weft demo: {what}; {} req/s offered to frontend",
        v.rate
    );
    let generation = match v.generations {
        Some((lo, hi)) if lo == hi => format!("generation {hi}"),
        Some((lo, hi)) => format!("generations {lo}..{hi}, sidecars reloading"),
        None => "generation unknown".to_owned(),
    };
    let _ = writeln!(out, "config: {} ({generation})", v.config_file.display());
    if let Some(error) = &v.config_error {
        let _ = writeln!(
            out,
            "  newest change REJECTED, the last good config keeps serving:"
        );
        let lines: Vec<&str> = error
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        for line in lines.iter().take(MAX_ERROR_LINES) {
            let _ = writeln!(out, "    {line}");
        }
        if lines.len() > MAX_ERROR_LINES {
            let _ = writeln!(out, "    ({} more lines)", lines.len() - MAX_ERROR_LINES);
        }
    }
    if !v.last {
        let _ = writeln!(
            out,
            "  edit it (the 90/10 weights; delete the pricing-hedging TrafficPolicy) and watch traffic move"
        );
        if let Some(t) = &v.traffic {
            let _ = writeln!(
                out,
                "control plane: watch its traffic view in another terminal: weft top --control {}",
                t.control
            );
        }
    }
    out.push('\n');
    ingress_line(out, "frontend", &v.ingress, "");
    let deadline = format!("  (deadline {CHAIN_DEADLINE_MS}ms)");
    ingress_line(out, "checkout", &v.chain, &deadline);
}

fn ingress_line(out: &mut String, to: &str, i: &IngressRow, note: &str) {
    let _ = writeln!(
        out,
        "ingress -> {to:<9} {:.1} req/s  ok {}  p50 {}  p99 {}  late {}{note}",
        i.rps,
        percent((i.done > 0).then(|| i.ok as f64 / i.done as f64)),
        latency(i.p50),
        latency(i.p99),
        i.late
    );
}

/// Per addressed service with a flow policy in force or calls refused in
/// the window: the calls refused by reason, the policy, and where a
/// deadline cut calls short (with what their target received meanwhile).
fn render_flow(out: &mut String, v: &View) {
    let refused = |service: &str| v.calls.iter().find(|c| c.service == service);
    let mut names: Vec<&str> = v.flow.iter().map(|f| f.service.as_str()).collect();
    for c in v.calls.iter().filter(|c| c.refused() > 0) {
        names.push(&c.service);
    }
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<14}{:>9}{:>9}{:>9}{:>9}  POLICY IN FORCE",
        "FLOW CONTROL", "REFUSED", "DROPPED", "LIMITED", "CUT"
    );
    let count = |n: u64| {
        if n == 0 {
            "-".to_owned()
        } else {
            n.to_string()
        }
    };
    for name in &names {
        let policies: Vec<String> = v
            .flow
            .iter()
            .filter(|f| f.service == *name)
            .map(|f| format!("{}: {}", f.name, f.what))
            .collect();
        let policy = if policies.is_empty() {
            "-".to_owned()
        } else {
            policies.join("; ")
        };
        let (share, dropped, limited, cut) = match refused(name) {
            Some(c) if c.refused() > 0 => (
                format!("{:.1}%", c.share_of(c.refused()) * 100.0),
                count(c.dropped),
                count(c.rate_limited),
                count(c.cut),
            ),
            _ => (
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ),
        };
        let _ = writeln!(
            out,
            "{name:<14}{share:>9}{dropped:>9}{limited:>9}{cut:>9}  {policy}"
        );
    }
    for c in v.calls.iter().filter(|c| c.cut > 0) {
        let at = c
            .cut_at
            .iter()
            .map(|p| {
                if p.ends_with('s') {
                    format!("{p}'")
                } else {
                    format!("{p}'s")
                }
            })
            .collect::<Vec<_>>()
            .join(" and ");
        let received = v
            .services
            .iter()
            .find(|s| s.service == c.service)
            .map_or(0, |s| s.requests);
        let _ = writeln!(
            out,
            "  {} calls to {} cut at {at} sidecar, never sent (504 deadline-exceeded); {} received {received}",
            c.cut, c.service, c.service
        );
    }
}

fn render_services(out: &mut String, v: &View) {
    let _ = writeln!(
        out,
        "\n{:<14}{:>9}{:>10}{:>9}{:>9}",
        "SERVICE", "RPS", "SUCCESS", "P50", "P99"
    );
    for s in &v.services {
        let _ = writeln!(
            out,
            "{:<14}{:>9.1}{:>10}{:>9}{:>9}",
            s.service,
            s.rps,
            percent(s.success_rate()),
            latency(s.p50),
            latency(s.p99)
        );
    }
}

fn render_calls(out: &mut String, v: &View) {
    if v.calls.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<14}{:>9}{:>10}{:>9}{:>9}{:>9}{:>8}{:>6}",
        "CALLS TO", "RPS", "SUCCESS", "P50", "P99", "RETRIES", "HEDGES", "WON"
    );
    let count = |n: u64| {
        if n == 0 {
            "-".to_owned()
        } else {
            n.to_string()
        }
    };
    for c in &v.calls {
        let _ = writeln!(
            out,
            "{:<14}{:>9.1}{:>10}{:>9}{:>9}{:>9}{:>8}{:>6}",
            c.service,
            c.rps,
            percent(c.success_rate()),
            latency(c.p50),
            latency(c.p99),
            count(c.retries),
            count(c.hedges_sent),
            count(c.hedges_won)
        );
    }
    for c in &v.calls {
        if let Some(note) = tail_note(c, &v.endpoints) {
            let _ = writeln!(out, "  {note}");
        }
    }
}

/// For a service whose apps answer a share of requests slowly: what that
/// tail would do to its callers' p99, and what backups made of it.
fn tail_note(c: &CallSummary, endpoints: &[EndpointShare]) -> Option<String> {
    let mut slow_share = 0.0;
    let mut slow_latency: Option<Duration> = None;
    for e in endpoints.iter().filter(|e| e.service == c.service) {
        let Some(app) = e.app.as_ref().filter(|a| a.slow_share > 0.0) else {
            continue;
        };
        slow_share += e.share * app.slow_share;
        slow_latency = Some(slow_latency.map_or(app.slow_latency, |l| l.min(app.slow_latency)));
    }
    let slow_latency = slow_latency?;
    // Over 1% slow: without backups the 99th percentile is a slow answer.
    if slow_share <= 0.01 {
        return None;
    }
    let p99 = c.p99?;
    let slow = format!("{}ms", slow_latency.as_millis());
    let tail = format!(
        "{}: {} of answers take {slow} at the app",
        c.service,
        share(slow_share),
    );
    // Bucket interpolation puts an uncut tail a little below the slow
    // latency; a cut one is far below.
    if p99 * 2 > slow_latency {
        return Some(format!(
            "{tail}, so callers' p99 is {}: nothing cuts that tail",
            latency(Some(p99))
        ));
    }
    let after = c
        .hedge_delay
        .map(|d| format!(" after {}", latency(Some(d))))
        .unwrap_or_default();
    Some(format!(
        "{tail}; backups{after} cut callers' p99 to {} (>= {slow} without)",
        latency(Some(p99)),
    ))
}

fn render_endpoints(out: &mut String, v: &View) {
    let _ = writeln!(
        out,
        "\n{:<12}{:<12}{:<16}{:>6}{:>7}{:>7}{:>8}{:>8}  APP",
        "TRAFFIC TO", "BACKEND", "ENDPOINT", "SHARE", "RPS", "SPLIT", "WEIGHT", "P50"
    );
    let (mut previous, mut previous_backend) = (None, None);
    for e in &v.endpoints {
        // The addressed service once per group, as a heading; the backend
        // once per run of its endpoints.
        let same_group = previous == Some(&e.service);
        let service = if same_group { "" } else { &e.service };
        previous = Some(&e.service);
        let backend = if same_group && previous_backend == Some(&e.backend) {
            ""
        } else {
            &e.backend
        };
        previous_backend = Some(&e.backend);
        let split = e.weight.map(|w| w.to_string()).unwrap_or_default();
        let weight = match (e.ejected, e.weight_ratio) {
            (true, _) => "EJECTED".to_owned(),
            (false, Some(r)) => format!("{:.0}%", r * 100.0),
            (false, None) => "-".to_owned(),
        };
        let app = e.app.as_ref().map(|a| a.describe()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<12}{:<12}{:<16}{:>5.1}%{:>7.1}{:>7}{:>8}{:>8}  {app}",
            service,
            backend,
            e.name.as_deref().unwrap_or(&e.endpoint),
            e.share * 100.0,
            per_second(e.requests, v.window),
            split,
            weight,
            latency(e.p50),
        );
    }
}

fn render_events(out: &mut String, v: &View) {
    let keep = if v.last { FINAL_EVENTS } else { LIVE_EVENTS };
    if v.events.is_empty() && v.next.is_none() {
        out.push('\n');
        return;
    }
    out.push_str("\nEVENTS\n");
    if v.events.len() > keep {
        let _ = writeln!(out, "  ({} earlier)", v.events.len() - keep);
    }
    for e in v.events.iter().skip(v.events.len().saturating_sub(keep)) {
        let _ = writeln!(out, "  {:>5}  {}", clock(e.at), e.what);
    }
    if let Some(next) = &v.next {
        let _ = writeln!(out, "  next at {}: {}", clock(next.at), next.what);
    }
    out.push('\n');
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{:.2}%", r * 100.0))
}

/// `2%`, `2.5%`: a share to a tenth of a percent, without a trailing `.0`.
fn share(ratio: f64) -> String {
    format!("{}%", (ratio * 1000.0).round() / 10.0)
}

fn latency(d: Option<Duration>) -> String {
    let Some(d) = d else { return "-".to_owned() };
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 100.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
