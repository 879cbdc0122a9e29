//! The latency-vs-rate chart of a capacity search, as a self-contained SVG
//! file any browser opens: one line per percentile (p50, p90, p99, p99.9)
//! over the offered rate, the SLO's latency bounds as dashed lines, and the
//! knee as a vertical marker.

use std::fmt::Write as _;

use super::report::CapacityReport;
use super::slo::{Slo, fmt_latency, trim_number};
use crate::report::{Percentiles, fmt_rate};

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
/// The plot area inside the margins (the legend sits right of it).
const LEFT: f64 = 70.0;
const RIGHT: f64 = 650.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 420.0;

/// Reads one percentile.
type Read = fn(&Percentiles) -> f64;

/// The plotted percentiles: name, colour, and how to read them.
const SERIES: [(&str, &str, Read); 4] = [
    ("p50", "#1b9e77", |p| p.p50),
    ("p90", "#7570b3", |p| p.p90),
    ("p99", "#d95f02", |p| p.p99),
    ("p99.9", "#e7298a", |p| p.p999),
];

/// The chart of `report` as an SVG document.
pub fn svg(report: &CapacityReport) -> String {
    let limits = report
        .slo
        .parse::<Slo>()
        .map(|s| s.latency_limits())
        .unwrap_or_default();
    let x = XAxis::new(report);
    let y = YAxis::new(report, &limits);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    title(&mut s, report);
    let _ = writeln!(s, r#"<g class="plot" data-y-scale="{}">"#, y.scale_name());
    axes(&mut s, &x, &y);
    slo_lines(&mut s, &y, &limits);
    knee_line(&mut s, report, &x);
    series(&mut s, report, &x, &y);
    let _ = writeln!(s, "</g>");
    legend(&mut s);
    let _ = writeln!(s, "</svg>");
    s
}

fn title(s: &mut String, report: &CapacityReport) {
    let target = if report.target.is_empty() {
        "(no step ran)"
    } else {
        &report.target
    };
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">weft capacity: {}</text>"#,
        escape(target)
    );
    let knee = match report.knee_rate {
        Some(k) => format!("knee {} req/s", fmt_rate(k)),
        None => "no rate met the SLO".to_owned(),
    };
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="44" fill="#444">SLO {}; {}; latency from intended send</text>"##,
        escape(&report.slo),
        escape(&knee)
    );
}

/// Offered rate, linear from 0.
struct XAxis {
    max: f64,
    step: f64,
}

impl XAxis {
    fn new(report: &CapacityReport) -> Self {
        let top = report
            .steps
            .iter()
            .map(|s| s.rate)
            .fold(0.0, f64::max)
            .max(1.0);
        let step = nice_step(top * 1.05 / 8.0);
        XAxis {
            max: (top * 1.05 / step).ceil() * step,
            step,
        }
    }

    fn px(&self, rate: f64) -> f64 {
        LEFT + (rate / self.max).clamp(0.0, 1.0) * (RIGHT - LEFT)
    }
}

/// Latency in ms: logarithmic when the values span more than two decades.
struct YAxis {
    log: bool,
    min: f64,
    max: f64,
    ticks: Vec<f64>,
}

impl YAxis {
    fn new(report: &CapacityReport, limits: &[(String, f64)]) -> Self {
        let values: Vec<f64> = report
            .steps
            .iter()
            .flat_map(|st| SERIES.iter().map(|(_, _, f)| f(&st.step.latency_ms)))
            .chain(limits.iter().map(|(_, l)| *l))
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(0.0, f64::max);
        if values.is_empty() {
            return YAxis::linear(1.0);
        }
        if hi / lo > 100.0 {
            YAxis::logarithmic(lo, hi)
        } else {
            YAxis::linear(hi)
        }
    }

    fn linear(hi: f64) -> Self {
        let step = nice_step(hi * 1.05 / 6.0);
        let max = (hi * 1.05 / step).ceil() * step;
        let n = (max / step).round() as usize;
        YAxis {
            log: false,
            min: 0.0,
            max,
            ticks: (0..=n).map(|i| i as f64 * step).collect(),
        }
    }

    fn logarithmic(lo: f64, hi: f64) -> Self {
        let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        let mults: &[f64] = if d1 - d0 <= 3 {
            &[1.0, 2.0, 5.0]
        } else {
            &[1.0]
        };
        let ticks = (d0..=d1)
            .flat_map(|d| mults.iter().map(move |m| m * 10f64.powi(d)))
            .filter(|t| *t <= 10f64.powi(d1) * 1.0001)
            .collect();
        YAxis {
            log: true,
            min: 10f64.powi(d0),
            max: 10f64.powi(d1),
            ticks,
        }
    }

    fn scale_name(&self) -> &'static str {
        if self.log { "log" } else { "linear" }
    }

    fn px(&self, ms: f64) -> f64 {
        let f = if self.log {
            let v = ms.max(self.min);
            (v.log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            (ms - self.min) / (self.max - self.min)
        };
        let f = if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        };
        BOTTOM - f * (BOTTOM - TOP)
    }
}

fn axes(s: &mut String, x: &XAxis, y: &YAxis) {
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let n = (x.max / x.step).round() as usize;
    for i in 0..=n {
        let rate = i as f64 * x.step;
        let px = x.px(rate);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{BOTTOM}" stroke="#eee"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            BOTTOM + 16.0,
            trim_number(rate)
        );
    }
    for &t in &y.ticks {
        let py = y.px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{RIGHT}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 6.0,
            py + 4.0,
            trim_number(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">offered rate (req/s)</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 40.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">latency (ms{})</text>"#,
        (TOP + BOTTOM) / 2.0,
        if y.log { ", log scale" } else { "" }
    );
}

fn slo_lines(s: &mut String, y: &YAxis, limits: &[(String, f64)]) {
    for (label, ms) in limits {
        let py = y.px(*ms);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{RIGHT}" y2="{py:.1}" stroke="#c00" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" text-anchor="end" fill="#c00">SLO {}</text>"##,
            RIGHT - 4.0,
            py - 4.0,
            escape(label)
        );
    }
}

fn knee_line(s: &mut String, report: &CapacityReport, x: &XAxis) {
    let Some(knee) = report.knee_rate else {
        return;
    };
    let px = x.px(knee);
    let _ = writeln!(
        s,
        r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{BOTTOM}" stroke="#333" stroke-width="1.5" stroke-dasharray="2 3"/><text x="{:.1}" y="{}" fill="#333">knee {} req/s</text>"##,
        px + 4.0,
        TOP + 14.0,
        fmt_rate(knee)
    );
}

fn series(s: &mut String, report: &CapacityReport, x: &XAxis, y: &YAxis) {
    if report.steps.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">no step ran</text>"#,
            (LEFT + RIGHT) / 2.0,
            (TOP + BOTTOM) / 2.0
        );
        return;
    }
    for (name, colour, value) in SERIES {
        let points: Vec<String> = report
            .steps
            .iter()
            .map(|st| {
                format!(
                    "{:.1},{:.1}",
                    x.px(st.rate),
                    y.px(value(&st.step.latency_ms))
                )
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline class="{name}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for st in &report.steps {
            let v = value(&st.step.latency_ms);
            // Filled: the step passed; hollow: it failed or was inconclusive.
            let fill = if st.pass { colour } else { "white" };
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{fill}" stroke="{colour}" stroke-width="1.5"><title>{}</title></circle>"#,
                x.px(st.rate),
                y.px(v),
                escape(&format!(
                    "{} req/s: {name} {} ms, {}",
                    fmt_rate(st.rate),
                    fmt_latency(v),
                    st.verdict()
                ))
            );
        }
    }
}

fn legend(s: &mut String) {
    let x = RIGHT + 20.0;
    for (i, (name, colour, _)) in SERIES.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#,
            x + 24.0,
            x + 30.0,
            y + 4.0
        );
    }
    let y = TOP + 100.0;
    let _ = writeln!(
        s,
        r##"<circle cx="{}" cy="{y}" r="3.5" fill="#555" stroke="#555"/><text x="{}" y="{}">PASS</text>"##,
        x + 12.0,
        x + 30.0,
        y + 4.0
    );
    let _ = writeln!(
        s,
        r##"<circle cx="{}" cy="{}" r="3.5" fill="white" stroke="#555" stroke-width="1.5"/><text x="{}" y="{}">FAIL</text>"##,
        x + 12.0,
        y + 20.0,
        x + 30.0,
        y + 24.0
    );
    let _ = writeln!(
        s,
        r##"<line x1="{x}" y1="{}" x2="{}" y2="{}" stroke="#c00" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{}" y="{}">SLO bound</text>"##,
        y + 40.0,
        x + 24.0,
        y + 40.0,
        x + 30.0,
        y + 44.0
    );
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#333" stroke-width="1.5" stroke-dasharray="2 3"/><text x="{}" y="{}">knee</text>"##,
        x + 12.0,
        y + 52.0,
        x + 12.0,
        y + 68.0,
        x + 30.0,
        y + 64.0
    );
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Text safe inside an XML element or attribute.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}
