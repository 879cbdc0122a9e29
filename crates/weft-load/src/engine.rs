//! Runs a [`LoadSpec`]: see the crate docs.
//!
//! The run gets its own runtime on its own threads (named `weft-load*`, so
//! their CPU can be told apart from a caller's), whatever runtime calls
//! [`run`]: a test or the demo can host the server under test in the same
//! process without the two sharing workers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;

use crate::conn::{Conn, RequestTemplate, exchange};
use crate::outcome::{ErrorKind, Failure, Outcome};
use crate::progress::ProgressLine;
use crate::report::{ClientHealth, Interval, Report};
use crate::schedule::{Phase, Schedule};
use crate::spec::{LoadSpec, ProgressMode, Protocol, RatePlan};
use crate::stats::{Stats, histogram, percentiles};

/// Why a run could not start (problems during a run are counted in the
/// report instead).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("cannot resolve `{host}`: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("{0}")]
    Preflight(String),
    #[error("cannot start the load generator: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Send or scheduler lag (p90) above which the tool, not the server, set
/// the pace.
const SATURATED_LAG: Duration = Duration::from_millis(5);
/// Share of the runtime workers' time busy above which the tool is CPU-bound.
const CPU_BOUND: f64 = 0.9;
/// The runtime workers' thread name (Linux keeps 15 bytes of it).
const WORKER_THREAD: &str = "weft-load-worker";

/// How long in-flight requests may finish after an interrupt.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// A request due at `intended`.
#[derive(Debug, Clone, Copy)]
struct Token {
    intended: Instant,
    phase: Phase,
}

/// What the workers share.
#[derive(Debug)]
struct Shared {
    template: RequestTemplate,
    stats: Stats,
    streams: usize,
    timeout: Duration,
    /// Max mode: 0 warmup, 1 measuring, 2 stop.
    max_phase: AtomicU8,
    /// Open loop: the schedule ended long ago; count what is left as expired.
    draining: AtomicBool,
    /// Interrupted: drop what is left uncounted.
    interrupted: AtomicBool,
}

/// Runs `spec` until its schedule ends or `stop` resolves (then the report
/// covers what ran and says `interrupted`).
pub async fn run(
    spec: LoadSpec,
    stop: impl Future<Output = ()> + Send,
) -> Result<Report, LoadError> {
    spec.validate()?;
    let addr = resolve(&spec.target.connect).await?;
    let threads = spec.threads;
    let interrupted = Arc::new(tokio::sync::Notify::new());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let notify = interrupted.clone();
    let thread = std::thread::Builder::new()
        .name("weft-load".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name(WORKER_THREAD)
                .enable_all()
                .build();
            let result = match rt {
                Ok(rt) => rt.block_on(run_inner(spec, addr, notify)),
                Err(e) => Err(LoadError::Runtime(e)),
            };
            let _ = tx.send(result);
        })
        .map_err(LoadError::Runtime)?;
    tokio::pin!(stop);
    let mut rx = rx;
    let result = tokio::select! {
        r = &mut rx => r,
        () = &mut stop => {
            interrupted.notify_one();
            rx.await
        }
    };
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    result.unwrap_or_else(|_| {
        Err(LoadError::Runtime(std::io::Error::other(
            "the load generator's thread ended without a result",
        )))
    })
}

async fn resolve(connect: &str) -> Result<SocketAddr, LoadError> {
    let host = connect
        .rsplit_once(':')
        .map_or(connect, |(h, _)| h)
        .to_owned();
    let mut addrs =
        tokio::net::lookup_host(connect)
            .await
            .map_err(|source| LoadError::Resolve {
                host: host.clone(),
                source,
            })?;
    addrs.next().ok_or_else(|| LoadError::Resolve {
        host,
        source: std::io::Error::other("no addresses"),
    })
}

async fn run_inner(
    spec: LoadSpec,
    addr: SocketAddr,
    interrupt: Arc<tokio::sync::Notify>,
) -> Result<Report, LoadError> {
    let template = RequestTemplate::new(&spec, addr);
    preflight(&spec, &template).await?;
    let step_rates: Vec<Option<f64>> = match &spec.rate {
        RatePlan::Max => vec![None],
        RatePlan::Steps(r) => r.iter().map(|r| Some(*r)).collect(),
        RatePlan::Ramp { .. } => vec![None],
    };
    let shared = Arc::new(Shared {
        stats: Stats::new(spec.threads * 2, step_rates.len()),
        streams: if template.is_multiplexed() {
            spec.streams
        } else {
            1
        },
        template,
        timeout: spec.timeout,
        max_phase: AtomicU8::new(0),
        draining: AtomicBool::new(false),
        interrupted: AtomicBool::new(false),
    });

    // Every connection opens before the clock starts.
    let mut conns = Vec::with_capacity(spec.connections);
    let mut first_failure = None;
    let opens: Vec<_> = (0..spec.connections)
        .map(|_| {
            let shared = shared.clone();
            tokio::spawn(async move { Conn::open(&shared.template).await })
        })
        .collect();
    for o in opens {
        match o.await {
            Ok(Ok(c)) => conns.push(Some(c)),
            Ok(Err(f)) => {
                first_failure.get_or_insert(f);
                conns.push(None);
            }
            Err(e) => {
                first_failure.get_or_insert(Failure::new(ErrorKind::Other, e.to_string()));
                conns.push(None);
            }
        }
    }
    if conns.iter().all(Option::is_none) {
        return Err(LoadError::Connect {
            addr: addr.to_string(),
            message: first_failure.map_or_else(|| "no connection".into(), |f| f.message),
        });
    }

    let cpu_start = cpu_seconds("weft-load");
    let schedule = Schedule::new(&spec.rate, spec.duration, spec.warmup);
    let start = Instant::now();
    let (token_tx, token_rx) = async_channel::unbounded::<Token>();
    let stop_pacer = Arc::new(AtomicBool::new(false));
    // Beyond this many queued, a request would wait past the timeout anyway.
    let peak_rate = match &spec.rate {
        RatePlan::Max => 0.0,
        RatePlan::Steps(r) => r.iter().copied().fold(0.0, f64::max),
        RatePlan::Ramp { from, to } => from.max(*to),
    };
    let queue_cap =
        ((peak_rate * spec.timeout.as_secs_f64() * 2.0) as usize).clamp(10_000, 2_000_000);
    let pacer = schedule.clone().map(|s| {
        let tx = token_tx.clone();
        let stop = stop_pacer.clone();
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("weft-load-pacer".into())
            .spawn(move || pace(s, start, &tx, &stop, &shared, queue_cap))
    });
    drop(token_tx);
    let pacer = match pacer {
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => return Err(LoadError::Runtime(e)),
        None => None,
    };

    let probe = tokio::spawn(scheduler_probe(shared.clone()));
    let mut workers = tokio::task::JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let shared = shared.clone();
        let rx = (pacer.is_some()).then(|| token_rx.clone());
        workers.spawn(worker(shared, i, conn, rx));
    }
    drop(token_rx);

    // The clock: phases (max mode), the live line, the end.
    let total = spec.warmup + spec.duration * step_rates.len().max(1) as u32;
    let total = match &spec.rate {
        RatePlan::Ramp { .. } => spec.warmup + spec.duration,
        _ => total,
    };
    let measure_start_offset = spec.warmup;
    let mut progress = (spec.progress == ProgressMode::Stderr).then(ProgressLine::new);
    if let Some(live) = &spec.live {
        live.set_running(true, step_rates.first().copied().flatten());
    }
    let mut timeline = Timeline {
        start,
        measure_from: measure_start_offset,
        sent: 0,
        errors: 0,
        entries: Vec::new(),
    };
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::from_std(start) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut was_interrupted = false;
    let mut interrupted_at = None;
    let mut max_measure = (None, None);
    let schedule_end = start + total;
    let mut drain_deadline = None;
    // Runtime workers' CPU at the start and end of the measured window.
    let mut busy_from: Option<(Instant, f64)> = None;
    let mut busy_to: Option<(Instant, f64)> = None;
    loop {
        let now = Instant::now();
        if busy_from.is_none() && now >= start + measure_start_offset {
            busy_from = cpu_seconds(WORKER_THREAD).map(|c| (now, c));
        }
        if busy_to.is_none() && now >= schedule_end && !was_interrupted {
            busy_to = cpu_seconds(WORKER_THREAD).map(|c| (now, c));
        }
        // Max mode phases.
        if pacer.is_none() {
            let phase = shared.max_phase.load(Ordering::Relaxed);
            if phase == 0 && now >= start + measure_start_offset {
                shared.max_phase.store(1, Ordering::Relaxed);
                max_measure.0 = Some(now);
            }
            if phase <= 1 && now >= schedule_end {
                shared.max_phase.store(2, Ordering::Relaxed);
                max_measure.1 = Some(now);
            }
        }
        if now >= schedule_end && drain_deadline.is_none() {
            drain_deadline = Some(now + spec.timeout + Duration::from_millis(500));
        }
        if let Some(d) = drain_deadline
            && now >= d
        {
            shared.draining.store(true, Ordering::Relaxed);
        }
        // The next moment something changes here: the measured window opens
        // or closes, or the drain runs out. Between them only the ticker
        // and the workers wake the loop.
        let wake = [
            Some(start + measure_start_offset),
            Some(schedule_end),
            drain_deadline,
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min();
        tokio::select! {
            _ = ticker.tick() => {
                let iv = timeline.record(&shared.stats, spec.live.as_deref());
                if let Some(p) = &mut progress {
                    let t = Duration::from_secs_f64(iv.t);
                    let rate = current_rate(&spec.rate, &step_rates, t, spec.warmup, spec.duration);
                    p.show(&iv, total, timeline.sent, timeline.errors, rate);
                }
            }
            r = workers.join_next() => {
                if r.is_none() {
                    break;
                }
            }
            () = sleep_until(wake) => {}
            () = interrupt.notified(), if !was_interrupted => {
                was_interrupted = true;
                interrupted_at = Some(Instant::now());
                stop_pacer.store(true, Ordering::Relaxed);
                shared.interrupted.store(true, Ordering::Relaxed);
                shared.max_phase.store(2, Ordering::Relaxed);
                if max_measure.0.is_some() && max_measure.1.is_none() {
                    max_measure.1 = interrupted_at;
                }
                drain_deadline = Some(Instant::now() + INTERRUPT_GRACE);
            }
        }
        if was_interrupted
            && let Some(d) = drain_deadline
            && Instant::now() >= d
        {
            workers.abort_all();
        }
    }
    shared.max_phase.store(2, Ordering::Relaxed);
    let scheduler_lag = probe.await.unwrap_or_else(|_| histogram());
    // The last, partial second.
    timeline.record(&shared.stats, spec.live.as_deref());
    if timeline
        .entries
        .last()
        .is_some_and(|iv| iv.completed == 0 && iv.sent == 0)
    {
        timeline.entries.pop();
    }
    let pacer_lag = match pacer {
        Some(h) => tokio::task::spawn_blocking(move || h.join().ok())
            .await
            .ok()
            .flatten(),
        None => None,
    };
    if let Some(p) = &mut progress {
        p.finish();
    }
    if let Some(live) = &spec.live {
        live.set_running(false, None);
    }
    let cpu = cpu_seconds("weft-load").zip(cpu_start).map(|(b, a)| b - a);
    if busy_to.is_none() {
        busy_to = cpu_seconds(WORKER_THREAD).map(|c| (Instant::now(), c));
    }
    // Share of the runtime workers' time spent running, while measuring.
    let worker_busy = match (busy_from, busy_to) {
        (Some((t0, c0)), Some((t1, c1))) if t1 > t0 + Duration::from_millis(200) => {
            Some((c1 - c0) / ((t1 - t0).as_secs_f64() * spec.threads as f64))
        }
        _ => None,
    };

    // The measured window.
    let measure_from = start + measure_start_offset;
    let window = |from: Instant, len: Duration| -> Duration {
        match interrupted_at {
            Some(at) if at < from + len => at.saturating_duration_since(from),
            _ => len,
        }
    };
    let m = shared.stats.merged();
    let mut steps = Vec::new();
    let measured: Duration;
    match &spec.rate {
        RatePlan::Max => {
            measured = match max_measure {
                (Some(a), Some(b)) => b - a,
                _ => Duration::ZERO,
            };
            steps.push(m.steps[0].report(None, measured));
        }
        RatePlan::Steps(rates) => {
            let sched = schedule.as_ref().expect("steps have a schedule");
            let mut sum = Duration::ZERO;
            for (i, r) in rates.iter().enumerate() {
                let (off, len) = sched.step_window(i).unwrap_or_default();
                let w = window(start + off, len);
                sum += w;
                steps.push(m.steps[i].report(Some(*r), w));
            }
            measured = sum;
        }
        RatePlan::Ramp { .. } => {
            measured = window(measure_from, spec.duration);
        }
    }
    let total_report = m.total.report(None, measured);
    let requested_rate = match &spec.rate {
        RatePlan::Max => None,
        RatePlan::Steps(rates) => {
            let n: f64 = rates.iter().map(|r| r * spec.duration.as_secs_f64()).sum();
            Some(n / (spec.duration.as_secs_f64() * rates.len() as f64))
        }
        RatePlan::Ramp { from, to } => Some((from + to) / 2.0),
    };

    // Was the tool the bottleneck?
    let send_lag_ms = percentiles(&m.send_lag);
    let pacer_lag_ms = pacer_lag
        .as_ref()
        .map(|p| percentiles(&p.lag))
        .unwrap_or_default();
    let overflowed = pacer_lag.as_ref().map_or(0, |p| p.overflowed);
    let scheduler_lag_ms = percentiles(&scheduler_lag);
    let mut warnings = Vec::new();
    let limit = SATURATED_LAG.as_secs_f64() * 1e3;
    // Saturated: late for one request in ten or more, or stalled long
    // enough to move the mean. A hiccup (another process taking the CPU for
    // a moment) only delays the tail: a warning.
    let late = |p: &crate::report::Percentiles| p.count > 0 && (p.p90 > limit || p.mean > limit);
    let lagging = late(&send_lag_ms) || late(&pacer_lag_ms) || late(&scheduler_lag_ms);
    // Threads busy (nearly) all the time cannot send on time: whatever the
    // lag shows so far, the schedule is kept only by luck.
    let cpu_bound = worker_busy.is_some_and(|b| b >= CPU_BOUND);
    let closed_loop = spec.rate == RatePlan::Max;
    let saturated = !closed_loop && (lagging || cpu_bound);
    if closed_loop && cpu_bound {
        warnings.push(format!(
            "the load generator's threads were {:.0}% busy: the achieved rate may be its own limit rather than \
             the server's (give it more --threads / cores to check)",
            worker_busy.unwrap_or(0.0) * 100.0
        ));
    } else if cpu_bound && !lagging {
        warnings.push(format!(
            "the load generator's threads were {:.0}% busy while measuring: it cannot keep to the schedule with \
             any margin, so its own delay is in the latencies (lower --rate or --connections, or give it more \
             --threads / cores)",
            worker_busy.unwrap_or(0.0) * 100.0
        ));
    }
    if lagging {
        warnings.push(format!(
            "the load generator fell behind its schedule (p90 / mean, ms: send lag with a free connection {} / {}, \
             pacer {} / {}, runtime {} / {}): it is short of CPU and every latency above includes its delay \
             (lower --rate or --connections, or give it more --threads / cores)",
            crate::report::fmt_ms(send_lag_ms.p90),
            crate::report::fmt_ms(send_lag_ms.mean),
            crate::report::fmt_ms(pacer_lag_ms.p90),
            crate::report::fmt_ms(pacer_lag_ms.mean),
            crate::report::fmt_ms(scheduler_lag_ms.p90),
            crate::report::fmt_ms(scheduler_lag_ms.mean),
        ));
    } else if !saturated && (send_lag_ms.p99 > limit || scheduler_lag_ms.p99 > limit) {
        warnings.push(format!(
            "the load generator was late by over {} ms for about 1% of requests (send lag p99 {} ms, scheduler lag \
             p99 {} ms), e.g. while another process held the CPU: the highest percentiles may include its delay",
            crate::report::fmt_ms(limit),
            crate::report::fmt_ms(send_lag_ms.p99),
            crate::report::fmt_ms(scheduler_lag_ms.p99)
        ));
    }
    if overflowed > 0 {
        warnings.push(format!(
            "{overflowed} requests found {queue_cap} already waiting for a connection and were counted as \
             expired_in_queue without being queued"
        ));
    }
    let threads = spec.threads + usize::from(pacer_lag.is_some());
    let cpu_percent = cpu.map_or(0.0, |c| {
        let wall = start.elapsed().as_secs_f64();
        if wall > 0.0 { c / wall * 100.0 } else { 0.0 }
    });
    if total_report.requests > 0 && m.queued_long * 10 > total_report.requests {
        warnings.push(format!(
            "{:.0}% of requests waited more than 1 ms for a free connection (all {} busy): their latency includes \
             that wait, as a real arrival at this rate would see it; raise --connections to measure the server alone",
            m.queued_long as f64 * 100.0 / total_report.requests as f64,
            spec.connections
        ));
    }
    if total_report.requests > 0 && total_report.errors == total_report.requests {
        warnings.push("every request failed: see error_counts".to_owned());
    }

    Ok(Report {
        target: spec.target.to_string(),
        protocol: spec.protocol.name().to_owned(),
        grpc_method: match &spec.protocol {
            Protocol::Grpc { method } => Some(method.clone()),
            _ => None,
        },
        connections: spec.connections,
        requested_rate,
        duration_s: measured.as_secs_f64(),
        warmup_s: spec.warmup.as_secs_f64(),
        requests: total_report.requests,
        errors: total_report.errors,
        achieved_rate: total_report.achieved_rate,
        status_counts: total_report.status_counts,
        grpc_status_counts: total_report.grpc_status_counts,
        error_counts: total_report.error_counts,
        error_examples: m.total.examples(),
        latency_ms: total_report.latency_ms,
        service_time_ms: total_report.service_time_ms,
        client: ClientHealth {
            saturated,
            send_lag_ms,
            pacer_lag_ms,
            scheduler_lag_ms,
            cpu_percent,
            worker_busy_percent: worker_busy.unwrap_or(0.0) * 100.0,
            threads,
            warnings,
        },
        steps,
        timeline: timeline.entries,
        interrupted: was_interrupted,
    })
}

/// One [`Interval`] a second, and the running totals of the live line.
struct Timeline {
    start: Instant,
    measure_from: Duration,
    /// Requests sent so far, and failed so far.
    sent: u64,
    errors: u64,
    entries: Vec<Interval>,
}

impl Timeline {
    /// Closes the current interval: appends it, feeds `live`, returns it.
    fn record(&mut self, stats: &Stats, live: Option<&crate::progress::Live>) -> Interval {
        let snap = stats.take_interval();
        let sent = stats.sent.load(Ordering::Relaxed);
        let t = self.start.elapsed();
        // An interval belongs to the warm-up when it began before the
        // measured window (the tick ending the first second fires just after
        // it).
        let began = self
            .entries
            .last()
            .map_or(Duration::ZERO, |iv| Duration::from_secs_f64(iv.t));
        let iv = Interval {
            t: t.as_secs_f64(),
            warmup: began < self.measure_from,
            sent: sent - self.sent,
            completed: snap.completed,
            errors: snap.errors,
            p50_ms: snap.p50_ms,
            p99_ms: snap.p99_ms,
            max_ms: snap.max_ms,
        };
        self.sent = sent;
        self.errors += snap.errors;
        if let Some(live) = live {
            live.add(&iv, &snap.latency);
        }
        self.entries.push(iv.clone());
        iv
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// The offered rate at `t` since the start, for the live line.
fn current_rate(
    plan: &RatePlan,
    rates: &[Option<f64>],
    t: Duration,
    warmup: Duration,
    duration: Duration,
) -> Option<f64> {
    match plan {
        RatePlan::Max => None,
        RatePlan::Steps(_) => {
            let i = t.saturating_sub(warmup).as_secs_f64() / duration.as_secs_f64();
            rates
                .get((i as usize).min(rates.len() - 1))
                .copied()
                .flatten()
        }
        RatePlan::Ramp { from, to } => {
            let x = (t.saturating_sub(warmup).as_secs_f64() / duration.as_secs_f64()).min(1.0);
            Some(from + (to - from) * x)
        }
    }
}

/// gRPC: one call before the run, so that a method the server does not
/// have is an error up front rather than a run of UNIMPLEMENTED.
async fn preflight(spec: &LoadSpec, t: &RequestTemplate) -> Result<(), LoadError> {
    let Protocol::Grpc { method } = &spec.protocol else {
        return Ok(());
    };
    let mut conn = Conn::open(t).await.map_err(|f| LoadError::Connect {
        addr: t.addr.to_string(),
        message: f.message,
    })?;
    let _ = conn.usable().await;
    let Some(sender) = conn.take_sender() else {
        return Ok(());
    };
    let (o, _) = exchange(sender, t).await;
    match (o.grpc, &o.failure) {
        (Some(12), Some(f)) => Err(LoadError::Preflight(format!(
            "the server at {} has no gRPC method `{method}` ({})",
            t.addr, f.message
        ))),
        (None, Some(f)) if matches!(f.kind, ErrorKind::HttpStatus | ErrorKind::Protocol) => {
            Err(LoadError::Preflight(format!(
                "{} does not answer gRPC for `{method}`: {}",
                t.addr, f.message
            )))
        }
        _ => Ok(()),
    }
}

/// Measures how late the runtime wakes a task whose timer is due, every
/// 10 ms until the run ends (phase 2). tokio's timer itself adds up
/// to ~1 ms; more means the threads are busy.
async fn scheduler_probe(shared: Arc<Shared>) -> Histogram<u64> {
    let mut lag = histogram();
    const EVERY: Duration = Duration::from_millis(10);
    loop {
        if shared.interrupted.load(Ordering::Relaxed) || shared.draining.load(Ordering::Relaxed) {
            break;
        }
        let due = tokio::time::Instant::now() + EVERY;
        tokio::time::sleep_until(due).await;
        let late = tokio::time::Instant::now().saturating_duration_since(due);
        if shared.max_phase.load(Ordering::Relaxed) == 2 {
            break;
        }
        let _ = lag.record(u64::try_from(late.as_nanos()).unwrap_or(u64::MAX).max(1));
    }
    lag
}

/// The pacer's own lateness, and how many due requests found the queue
/// full.
#[derive(Debug)]
struct PacerLag {
    lag: Histogram<u64>,
    overflowed: u64,
}

/// Walks the schedule on its own thread, handing out each request when it
/// is due. Sleeps with the OS timer (tens of µs), not tokio's (1 ms).
fn pace(
    schedule: Schedule,
    start: Instant,
    tx: &async_channel::Sender<Token>,
    stop: &AtomicBool,
    shared: &Shared,
    queue_cap: usize,
) -> PacerLag {
    let mut lag = histogram();
    let mut overflowed = 0;
    for due in schedule {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let intended = start + due.at;
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        if due.phase != Phase::Warmup {
            let late = Instant::now().saturating_duration_since(intended);
            let _ = lag.record(u64::try_from(late.as_nanos()).unwrap_or(u64::MAX).max(1));
        }
        if tx.len() >= queue_cap {
            // The oldest queued request is already past the timeout: this
            // one would expire too. Count it without queueing it, so a run
            // far beyond what the tool or the server can take does not
            // grow the queue without bound.
            overflowed += 1;
            let o = Outcome::failed(
                Failure::new(
                    ErrorKind::ExpiredInQueue,
                    format!("{queue_cap} requests already waiting"),
                ),
                None,
            );
            shared.stats.record(0, due.phase, shared.timeout, &o);
            continue;
        }
        if tx
            .try_send(Token {
                intended,
                phase: due.phase,
            })
            .is_err()
        {
            break;
        }
    }
    PacerLag { lag, overflowed }
}

/// One connection's loop: take due requests (or, for `max`, make them),
/// send, record.
async fn worker(
    shared: Arc<Shared>,
    index: usize,
    mut conn: Option<Conn>,
    rx: Option<async_channel::Receiver<Token>>,
) {
    let shard = index % shared.stats.shard_count();
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        let room = in_flight.len() < shared.streams;
        let idle = in_flight.is_empty();
        tokio::select! {
            biased;
            Some((token, outcome, sender)) = in_flight.next(), if !idle => {
                finish(&shared, shard, token, &outcome, &mut conn, sender);
            }
            token = next_token(&shared, rx.as_ref(), shard, idle), if open && room => {
                let Some(token) = token else {
                    open = false;
                    continue;
                };
                if token.intended.elapsed() > shared.timeout {
                    let o = Outcome::failed(Failure::new(ErrorKind::ExpiredInQueue, format!(
                        "waited more than {:?} for a free connection", shared.timeout)), None);
                    shared.stats.record(shard, token.phase, token.intended.elapsed(), &o);
                    // A long run of expired requests must not hog the thread.
                    tokio::task::consume_budget().await;
                    continue;
                }
                // A usable connection, opened again if it broke.
                let usable = match &mut conn {
                    Some(c) => c.usable().await,
                    None => false,
                };
                if !usable {
                    conn = None;
                    match Conn::open(&shared.template).await {
                        Ok(c) => conn = Some(c),
                        Err(f) => {
                            let o = Outcome::failed(f, None);
                            shared.stats.record(shard, token.phase, token.intended.elapsed(), &o);
                            if rx.is_none() {
                                // Closed loop against a dead target: do not spin.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            continue;
                        }
                    }
                }
                let Some(sender) = conn.as_mut().and_then(Conn::take_sender) else {
                    continue;
                };
                shared.stats.sent.fetch_add(1, Ordering::Relaxed);
                let shared2 = shared.clone();
                in_flight.push(async move {
                    let (o, sender) = exchange(sender, &shared2.template).await;
                    (token, o, sender)
                });
            }
            else => break,
        }
    }
}

/// Records a finished request; drops a connection that cannot be reused.
fn finish(
    shared: &Shared,
    shard: usize,
    token: Token,
    outcome: &Outcome,
    conn: &mut Option<Conn>,
    sender: Option<crate::conn::Sender>,
) {
    shared
        .stats
        .record(shard, token.phase, token.intended.elapsed(), outcome);
    let cut_short = outcome
        .failure
        .as_ref()
        .is_some_and(|f| !matches!(f.kind, ErrorKind::HttpStatus | ErrorKind::GrpcStatus));
    match (sender, conn.as_mut()) {
        (Some(s), Some(c)) if !cut_short || shared.template.is_multiplexed() => c.give_back(s),
        // An HTTP/1 exchange cut short leaves the connection in an unknown
        // state: open a new one for the next request.
        _ if !shared.template.is_multiplexed() => *conn = None,
        _ => {}
    }
}

/// The next request to send: from the pacer, or made now in max mode.
/// `None` when there will be no more.
async fn next_token(
    shared: &Shared,
    rx: Option<&async_channel::Receiver<Token>>,
    shard: usize,
    idle: bool,
) -> Option<Token> {
    if shared.interrupted.load(Ordering::Relaxed) {
        return None;
    }
    let Some(rx) = rx else {
        return match shared.max_phase.load(Ordering::Relaxed) {
            0 => Some(Token {
                intended: Instant::now(),
                phase: Phase::Warmup,
            }),
            1 => Some(Token {
                intended: Instant::now(),
                phase: Phase::Step(0),
            }),
            _ => None,
        };
    };
    loop {
        let waiting_since = Instant::now();
        let token = rx.recv().await.ok()?;
        if shared.interrupted.load(Ordering::Relaxed) {
            return None;
        }
        if shared.draining.load(Ordering::Relaxed) {
            let o = Outcome::failed(
                Failure::new(ErrorKind::ExpiredInQueue, "still queued when the run ended"),
                None,
            );
            shared
                .stats
                .record(shard, token.phase, token.intended.elapsed(), &o);
            continue;
        }
        let now = Instant::now();
        if token.intended >= waiting_since && idle {
            // A free connection was waiting for this request: any delay is
            // the tool's own.
            shared
                .stats
                .record_send_lag(shard, token.phase, now - token.intended);
        } else {
            shared.stats.record_queued(
                shard,
                token.phase,
                now.saturating_duration_since(token.intended),
            );
        }
        return Some(token);
    }
}

/// CPU seconds used so far by this process's threads whose name starts
/// with `prefix` (cut to the 15 bytes Linux keeps), from /proc; `None`
/// where /proc is not readable.
fn cpu_seconds(prefix: &str) -> Option<f64> {
    let prefix = format!("({}", &prefix[..prefix.len().min(15)]);
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(entry) = entry else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... utime(14) stime(15); comm may hold spaces.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.contains(&prefix) {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        ticks += utime + stime;
    }
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}
