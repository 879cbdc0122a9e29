//! The endpoints of one cluster: hard ejection of outliers, re-admission
//! into the recovery ramp, and panic mode.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::classify::Verdict;
use super::config::{ConfigError, HealthConfig};
use super::score::EndpointHealth;

/// Once in panic mode, the healthy share must climb this far above the
/// threshold to leave it, so that a share hovering at the threshold does
/// not flap in and out every evaluation.
const PANIC_EXIT_MARGIN: f64 = 0.05;

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EjectionReason {
    ConsecutiveFailures(u32),
    /// Success rate in the interval below the cluster's
    /// `mean - stdev_factor * stdev`.
    SuccessRate {
        rate: f64,
        threshold: f64,
    },
    /// Failure rate in the interval at or above the configured threshold.
    FailureRate {
        rate: f64,
        threshold: f64,
    },
}

impl EjectionReason {
    /// A label for metrics: `consecutive_failures`, `success_rate`,
    /// `failure_rate`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ConsecutiveFailures(_) => "consecutive_failures",
            Self::SuccessRate { .. } => "success_rate",
            Self::FailureRate { .. } => "failure_rate",
        }
    }
}

impl fmt::Display for EjectionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConsecutiveFailures(n) => write!(f, "{n} consecutive failures"),
            Self::SuccessRate { rate, threshold } => write!(
                f,
                "success rate {:.1}% below the cluster's threshold {:.1}%",
                rate * 100.0,
                threshold * 100.0
            ),
            Self::FailureRate { rate, threshold } => write!(
                f,
                "failure rate {:.1}% at or above {:.1}%",
                rate * 100.0,
                threshold * 100.0
            ),
        }
    }
}

/// A change worth a log line and a metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HealthEvent {
    Ejected {
        endpoint: usize,
        reason: EjectionReason,
        /// How long this ejection lasts: base x `times`, capped.
        duration: Duration,
        /// Ejections of this endpoint counted for the backoff, this one
        /// included.
        times: u32,
    },
    /// Back in rotation, at the floor of the recovery ramp.
    Readmitted {
        endpoint: usize,
    },
    /// Too little healthy weight left: every endpoint gets traffic.
    PanicEntered {
        healthy_share: f64,
    },
    PanicLeft {
        healthy_share: f64,
    },
}

impl HealthEvent {
    /// A label for metrics: `ejected`, `readmitted`, `panic_entered`,
    /// `panic_left`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ejected { .. } => "ejected",
            Self::Readmitted { .. } => "readmitted",
            Self::PanicEntered { .. } => "panic_entered",
            Self::PanicLeft { .. } => "panic_left",
        }
    }
}

impl fmt::Display for HealthEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ejected {
                endpoint,
                reason,
                duration,
                times,
            } => write!(
                f,
                "endpoint {endpoint} ejected for {duration:?} (ejection {times}): {reason}"
            ),
            Self::Readmitted { endpoint } => {
                write!(f, "endpoint {endpoint} readmitted into the recovery ramp")
            }
            Self::PanicEntered { healthy_share } => write!(
                f,
                "panic mode: healthy share {:.0}%, routing to every endpoint",
                healthy_share * 100.0
            ),
            Self::PanicLeft { healthy_share } => write!(
                f,
                "panic mode over: healthy share {:.0}%",
                healthy_share * 100.0
            ),
        }
    }
}

/// What [`ClusterHealth::record`] returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recorded {
    /// The endpoint's [`effective_multiplier`](ClusterHealth::effective_multiplier)
    /// after this attempt: hand it to the balancer.
    pub effective_multiplier: f64,
    /// An ejection for consecutive failures, made on the spot.
    pub event: Option<HealthEvent>,
}

/// One endpoint's state, for metrics and the admin page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointStatus {
    /// From the endpoint's score alone, in `[min_multiplier, 1]`.
    pub multiplier: f64,
    /// What the balancer gets: 0 while ejected, 1 in panic mode.
    pub effective_multiplier: f64,
    pub success_rate: f64,
    pub consecutive_failures: u32,
    pub ejected: bool,
    pub times_ejected: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Ejection {
    /// Set while ejected.
    until: Option<Duration>,
    /// Drives the backoff; one is forgiven per interval spent admitted.
    times: u32,
    admitted_since: Duration,
}

#[derive(Debug)]
struct ClusterState {
    ejections: Vec<Ejection>,
    next_interval: Duration,
}

/// The health of every endpoint of one cluster, shared by the request path
/// (`record`, `effective_multiplier`) and a periodic task (`evaluate`).
///
/// Endpoints are indexed `0..len()`, in the order the balancer uses.
/// Concurrency: the request path touches one endpoint's small lock and two
/// atomic flags; the cluster lock is taken by `evaluate` and by a record
/// that trips the consecutive-failure rule. Lock order is always cluster,
/// then endpoint.
#[derive(Debug)]
pub struct ClusterHealth {
    config: HealthConfig,
    endpoints: Vec<EndpointHealth>,
    ejected: Vec<AtomicBool>,
    panic: AtomicBool,
    state: Mutex<ClusterState>,
}

impl ClusterHealth {
    /// `endpoints` fresh endpoints at full weight.
    pub fn new(config: HealthConfig, endpoints: usize) -> Result<Self, ConfigError> {
        config.validate()?;
        let fresh = (0..endpoints)
            .map(|_| (EndpointHealth::unchecked(config.score), Ejection::default()))
            .collect();
        Ok(Self::assemble(
            config,
            fresh,
            false,
            config.outlier.interval,
        ))
    }

    /// A new cluster for a changed endpoint list or config, keeping what is
    /// known: new endpoint `i` continues old endpoint `previous[i]` (score,
    /// ramp, ejection and backoff), or starts fresh when `None`. Publish it
    /// in place of `self` (e.g. with `arc-swap`); records that still reach
    /// the old one are lost, which costs nothing worth keeping.
    pub fn carry_over(
        &self,
        config: HealthConfig,
        previous: &[Option<usize>],
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let st = self.lock();
        let kept = previous
            .iter()
            .map(|p| match p.filter(|&i| i < self.endpoints.len()) {
                Some(i) => (self.endpoints[i].with_config(config.score), st.ejections[i]),
                None => (EndpointHealth::unchecked(config.score), Ejection::default()),
            })
            .collect();
        let panic = self.in_panic();
        Ok(Self::assemble(config, kept, panic, st.next_interval))
    }

    fn assemble(
        config: HealthConfig,
        endpoints: Vec<(EndpointHealth, Ejection)>,
        panic: bool,
        next_interval: Duration,
    ) -> Self {
        let (endpoints, ejections): (Vec<_>, Vec<_>) = endpoints.into_iter().unzip();
        let ejected = ejections
            .iter()
            .map(|e| AtomicBool::new(e.until.is_some()))
            .collect();
        Self {
            config,
            endpoints,
            ejected,
            panic: AtomicBool::new(panic),
            state: Mutex::new(ClusterState {
                ejections,
                next_interval,
            }),
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The endpoint's own score state. Panics if `endpoint >= len()`.
    pub fn endpoint(&self, endpoint: usize) -> &EndpointHealth {
        &self.endpoints[endpoint]
    }

    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one classified attempt to `endpoint` (request path). Ejects
    /// the endpoint at once when it reaches the consecutive-failure limit
    /// and the ejection cap allows. Panics if `endpoint >= len()`.
    pub fn record(&self, endpoint: usize, now: Duration, verdict: &Verdict) -> Recorded {
        // The endpoint lock is released before the cluster lock is taken.
        let (_, consecutive) = self.endpoints[endpoint].record_counting(now, verdict);
        let tripped = verdict.is_failure()
            && self
                .config
                .outlier
                .consecutive_failures
                .is_some_and(|limit| consecutive >= limit)
            && !self.is_ejected(endpoint);
        let event = if tripped {
            let reason = EjectionReason::ConsecutiveFailures(consecutive);
            self.try_eject(&mut self.lock(), endpoint, now, reason)
        } else {
            None
        };
        Recorded {
            effective_multiplier: self.effective_multiplier(endpoint, now),
            event,
        }
    }

    /// The multiplier for the balancer: 0 while ejected, 1 for every
    /// endpoint in panic mode, else the endpoint's score multiplier.
    /// Panics if `endpoint >= len()`.
    pub fn effective_multiplier(&self, endpoint: usize, now: Duration) -> f64 {
        if self.in_panic() {
            1.0
        } else if self.is_ejected(endpoint) {
            0.0
        } else {
            self.endpoints[endpoint].weight_multiplier(now)
        }
    }

    pub fn is_ejected(&self, endpoint: usize) -> bool {
        self.ejected[endpoint].load(Ordering::Relaxed)
    }

    pub fn in_panic(&self) -> bool {
        self.panic.load(Ordering::Relaxed)
    }

    /// How many endpoints are ejected now.
    pub fn ejected_count(&self) -> usize {
        self.ejected
            .iter()
            .filter(|e| e.load(Ordering::Relaxed))
            .count()
    }

    /// The most endpoints that may be ejected at once.
    pub fn max_ejected(&self) -> usize {
        let n = self.len();
        let pct = self.config.outlier.max_ejection_percent as usize;
        let cap = n * pct / 100;
        if pct > 0 && n >= 2 { cap.max(1) } else { cap }
    }

    /// One endpoint's state for metrics. Panics if `endpoint >= len()`.
    pub fn status(&self, endpoint: usize, now: Duration) -> EndpointStatus {
        let e = &self.endpoints[endpoint];
        EndpointStatus {
            multiplier: e.weight_multiplier(now),
            effective_multiplier: self.effective_multiplier(endpoint, now),
            success_rate: e.success_rate(now),
            consecutive_failures: e.consecutive_failures(),
            ejected: self.is_ejected(endpoint),
            times_ejected: self.lock().ejections[endpoint].times,
        }
    }

    /// The periodic step; call it from one task every 100 ms to 1 s.
    /// Re-admits endpoints whose ejection is over, runs the success-rate and
    /// failure-rate rules once per `outlier.interval`, updates the cluster's
    /// baseline failure rate, and enters or leaves panic mode. Afterwards,
    /// push every endpoint's `effective_multiplier` to the balancer: ramps
    /// move with time.
    pub fn evaluate(&self, now: Duration) -> Vec<HealthEvent> {
        let mut events = Vec::new();
        let mut st = self.lock();
        self.readmit_due(&mut st, now, &mut events);
        if now >= st.next_interval {
            st.next_interval = now.saturating_add(self.config.outlier.interval);
            self.forgive_backoff(&mut st, now);
            self.eject_outliers(&mut st, now, &mut events);
        }
        drop(st);
        self.update_baseline(now);
        self.update_panic(now, &mut events);
        events
    }

    /// Failures that every endpoint shows (a dependency's errors, bad
    /// requests that the config counts) are no reason to move traffic: each
    /// endpoint is cut only for failures beyond the best one's rate.
    fn update_baseline(&self, now: Duration) {
        let best = (0..self.len())
            .filter(|&i| !self.is_ejected(i))
            .map(|i| self.endpoints[i].failure_rate_at(now))
            .fold(f64::INFINITY, f64::min);
        let best = if best.is_finite() { best } else { 0.0 };
        for e in &self.endpoints {
            e.set_baseline(best);
        }
    }

    fn readmit_due(&self, st: &mut ClusterState, now: Duration, events: &mut Vec<HealthEvent>) {
        for (i, ej) in st.ejections.iter_mut().enumerate() {
            if ej.until.is_some_and(|until| until <= now) {
                ej.until = None;
                ej.admitted_since = now;
                self.endpoints[i].restart_ramp(now);
                self.ejected[i].store(false, Ordering::Relaxed);
                events.push(HealthEvent::Readmitted { endpoint: i });
            }
        }
    }

    /// Envoy forgives one ejection per interval an endpoint stays in.
    fn forgive_backoff(&self, st: &mut ClusterState, now: Duration) {
        let interval = self.config.outlier.interval;
        for ej in &mut st.ejections {
            if ej.until.is_none()
                && ej.times > 0
                && now >= ej.admitted_since.saturating_add(interval)
            {
                ej.times -= 1;
                ej.admitted_since = now;
            }
        }
    }

    fn eject_outliers(&self, st: &mut ClusterState, now: Duration, events: &mut Vec<HealthEvent>) {
        let windows: Vec<(u64, u64)> = self.endpoints.iter().map(|e| e.take_window()).collect();
        let mut candidates = Vec::new();
        if let Some(rule) = &self.config.outlier.success_rate {
            candidates.extend(success_rate_outliers(&windows, rule));
        }
        if let Some(rule) = &self.config.outlier.failure_rate {
            candidates.extend(failure_rate_outliers(&windows, rule));
        }
        // When the cap stops some ejections, the worst endpoints go first.
        candidates.sort_by(|a, b| success_of(windows[a.0]).total_cmp(&success_of(windows[b.0])));
        for (i, reason) in candidates {
            if let Some(event) = self.try_eject(st, i, now, reason) {
                events.push(event);
            }
        }
    }

    fn try_eject(
        &self,
        st: &mut ClusterState,
        endpoint: usize,
        now: Duration,
        reason: EjectionReason,
    ) -> Option<HealthEvent> {
        let ejected = st.ejections.iter().filter(|e| e.until.is_some()).count();
        if st.ejections[endpoint].until.is_some() || ejected >= self.max_ejected() {
            return None;
        }
        let o = &self.config.outlier;
        let ej = &mut st.ejections[endpoint];
        ej.times = ej.times.saturating_add(1);
        let duration = o
            .base_ejection_time
            .saturating_mul(ej.times)
            .min(o.max_ejection_time);
        ej.until = Some(now.saturating_add(duration));
        self.ejected[endpoint].store(true, Ordering::Relaxed);
        Some(HealthEvent::Ejected {
            endpoint,
            reason,
            duration,
            times: ej.times,
        })
    }

    /// The routable weight left, relative to every endpoint at the best
    /// one's multiplier: 1 when all are alike (however bad), near 1/3 when
    /// two of three are ejected or at the floor.
    pub fn healthy_share(&self, now: Duration) -> f64 {
        if self.is_empty() {
            return 1.0;
        }
        let multipliers: Vec<f64> = (0..self.len())
            .filter(|&i| !self.is_ejected(i))
            .map(|i| self.endpoints[i].weight_multiplier(now))
            .collect();
        let best = multipliers.iter().copied().fold(0.0, f64::max);
        if best <= 0.0 {
            return 0.0;
        }
        multipliers.iter().sum::<f64>() / (best * self.len() as f64)
    }

    fn update_panic(&self, now: Duration, events: &mut Vec<HealthEvent>) {
        let threshold = self.config.outlier.panic_threshold;
        let share = self.healthy_share(now);
        let was = self.in_panic();
        let is = if was {
            share < (threshold + PANIC_EXIT_MARGIN).min(1.0)
        } else {
            share < threshold
        };
        if is != was {
            self.panic.store(is, Ordering::Relaxed);
            events.push(if is {
                HealthEvent::PanicEntered {
                    healthy_share: share,
                }
            } else {
                HealthEvent::PanicLeft {
                    healthy_share: share,
                }
            });
        }
    }
}

fn success_of((requests, failures): (u64, u64)) -> f64 {
    if requests == 0 {
        1.0
    } else {
        1.0 - failures as f64 / requests as f64
    }
}

/// Envoy's success-rate rule over one interval's counts.
fn success_rate_outliers(
    windows: &[(u64, u64)],
    rule: &super::config::SuccessRateRule,
) -> Vec<(usize, EjectionReason)> {
    let judged: Vec<(usize, f64)> = windows
        .iter()
        .enumerate()
        .filter(|(_, w)| w.0 >= rule.min_requests)
        .map(|(i, &w)| (i, success_of(w)))
        .collect();
    if judged.len() < rule.min_hosts {
        return Vec::new();
    }
    let n = judged.len() as f64;
    let mean = judged.iter().map(|(_, r)| r).sum::<f64>() / n;
    let var = judged.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - rule.stdev_factor * var.sqrt();
    judged
        .into_iter()
        // An endpoint without failures is never an outlier, whatever the
        // rounding of the mean.
        .filter(|&(i, rate)| rate < threshold && windows[i].1 > 0)
        .map(|(i, rate)| (i, EjectionReason::SuccessRate { rate, threshold }))
        .collect()
}

/// Envoy's failure-percentage rule over one interval's counts.
fn failure_rate_outliers(
    windows: &[(u64, u64)],
    rule: &super::config::FailureRateRule,
) -> Vec<(usize, EjectionReason)> {
    let judged: Vec<(usize, f64)> = windows
        .iter()
        .enumerate()
        .filter(|(_, w)| w.0 >= rule.min_requests)
        .map(|(i, &w)| (i, 1.0 - success_of(w)))
        .collect();
    if judged.len() < rule.min_hosts {
        return Vec::new();
    }
    let threshold = rule.threshold;
    judged
        .into_iter()
        .filter(|&(_, rate)| rate >= threshold && rate > 0.0)
        .map(|(i, rate)| (i, EjectionReason::FailureRate { rate, threshold }))
        .collect()
}
