//! Merging the reports of every activator replica into one view per
//! function: windowed concurrency for the autoscaler, and per-instance
//! evidence of the last time anything was in flight on it.
//!
//! [`StatsStore`] is the only stateful piece of the core. It is fed reports
//! with the instant they were received, and answers [`FunctionView`]s, which
//! [`decide`] turns into a [`Decision`]. Whether an
//! activator is fresh, silent or forgotten depends on the function's request
//! timeout, so that classification happens in `decide`; the store keeps what
//! it needs (every activator's last report and the instant of it).

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    time::{Duration, Instant},
};

use crate::{
    decide::{Decision, Instance, ScalerMemory, Settings, decide},
    stats::{ActivatorReport, FunctionReport, StatsError},
};

/// Length of the stable window the autoscaler averages concurrency over.
pub const STABLE_WINDOW: Duration = Duration::from_secs(60);
/// Length of the panic window, for reacting to bursts.
pub const PANIC_WINDOW: Duration = Duration::from_secs(6);
/// Panic mode starts when the panic window wants this many times the ready
/// instances.
pub const PANIC_THRESHOLD: f64 = 2.0;
/// An activator that has not reported for longer is silent: it may carry
/// requests the operator cannot see.
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// A silent activator is forgotten once it has been silent for the
/// function's request timeout plus this margin; the margin covers the
/// activator's self-fencing delay (it stops placing requests once it cannot
/// report for [`STALE_AFTER`]) and how late an activator may learn that an
/// instance is draining.
pub const FORGET_MARGIN: Duration = Duration::from_secs(10);
/// Per-instance concurrency the autoscaler aims at (times `target`) when a
/// Function's `concurrency` is 0 (unlimited).
pub const SOFT_TARGET: f64 = 100.0;
/// How long the store keeps anything: the longest keep-alive (24h) plus the
/// longest request timeout (15m) and margins.
pub const RETAIN_FOR: Duration = Duration::from_secs(25 * 3600);

/// The autoscaler's constants. [`Tuning::default`] holds the documented
/// defaults; tests and future flags may change them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    pub stable_window: Duration,
    pub panic_window: Duration,
    pub panic_threshold: f64,
    pub stale_after: Duration,
    pub forget_margin: Duration,
    pub soft_target: f64,
    pub retain_for: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            stable_window: STABLE_WINDOW,
            panic_window: PANIC_WINDOW,
            panic_threshold: PANIC_THRESHOLD,
            stale_after: STALE_AFTER,
            forget_margin: FORGET_MARGIN,
            soft_target: SOFT_TARGET,
            retain_for: RETAIN_FOR,
        }
    }
}

/// A Function's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FunctionKey {
    pub namespace: String,
    pub name: String,
}

impl FunctionKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for FunctionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FunctionReport {
    /// The Function this report is about.
    pub fn key(&self) -> FunctionKey {
        FunctionKey::new(&self.namespace, &self.name)
    }
}

/// What [`StatsStore::ingest`] did with a report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ingested {
    /// False when the report was dropped as a duplicate or out of order.
    pub accepted: bool,
    /// Functions the report was about: decide them again.
    pub functions: Vec<FunctionKey>,
    /// Functions to decide right away: the report was a poke and they have
    /// requests waiting.
    pub poked: Vec<FunctionKey>,
}

/// One activator as a [`FunctionView`] shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivatorView {
    pub id: String,
    /// When its last report was received (or when the operator learned it
    /// exists, if it has not reported yet).
    pub last_seen: Instant,
    /// The function's entry in its last report; `None` when that report did
    /// not mention the function (nothing in flight or waiting there).
    pub function: Option<FunctionReport>,
}

/// Everything the store knows about one function at one instant: the input
/// of [`decide`].
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionView {
    pub tuning: Tuning,
    /// Until then, reaping is held: the operator has just started and not
    /// every activator has had the chance to report yet.
    pub observing_until: Option<Instant>,
    /// Average concurrency (in flight plus waiting) over the stable window,
    /// summed across fresh activators.
    pub stable: f64,
    /// The same over the panic window.
    pub panic: f64,
    /// Every activator the store remembers, fresh or not.
    pub activators: Vec<ActivatorView>,
    /// Per instance, the last instant anything was seen in flight on it,
    /// from every report ever received (within retention) — so an activator
    /// that stops listing an instance does not make it look idle for longer.
    pub last_active: BTreeMap<String, Instant>,
    /// When an activator last received a request for the function.
    pub last_request: Option<Instant>,
    /// What the autoscaler remembers between decisions (panic mode).
    pub memory: ScalerMemory,
}

impl Default for FunctionView {
    /// A view with no stats at all.
    fn default() -> Self {
        Self {
            tuning: Tuning::default(),
            observing_until: None,
            stable: 0.0,
            panic: 0.0,
            activators: Vec::new(),
            last_active: BTreeMap::new(),
            last_request: None,
            memory: ScalerMemory::default(),
        }
    }
}

/// The time a report covers, ending when it was received.
#[derive(Clone, Copy, Debug)]
struct Span {
    end: Instant,
    length: Duration,
}

impl Span {
    /// How much of the span lies in `[from, to]`.
    fn overlap(&self, from: Instant, to: Instant) -> Duration {
        let start = self.end.checked_sub(self.length).unwrap_or(from).max(from);
        self.end.min(to).saturating_duration_since(start)
    }
}

#[derive(Clone, Debug)]
struct Sample {
    activator: String,
    span: Span,
    concurrency: f64,
}

#[derive(Clone, Debug)]
struct ActivatorState {
    last_seen: Instant,
    sequence: Option<u64>,
    latest: BTreeMap<FunctionKey, FunctionReport>,
}

#[derive(Clone, Debug, Default)]
struct FunctionState {
    samples: VecDeque<Sample>,
    last_active: BTreeMap<String, Instant>,
    last_request: Option<Instant>,
    memory: ScalerMemory,
}

impl FunctionState {
    fn is_empty(&self) -> bool {
        self.samples.is_empty()
            && self.last_active.is_empty()
            && self.last_request.is_none()
            && self.memory == ScalerMemory::default()
    }
}

/// The merged stats of every activator replica.
#[derive(Clone, Debug)]
pub struct StatsStore {
    tuning: Tuning,
    started: Instant,
    activators: BTreeMap<String, ActivatorState>,
    functions: BTreeMap<FunctionKey, FunctionState>,
}

impl StatsStore {
    /// An empty store, created at `now` (the operator's start). Reaping is
    /// held for `stale_after` from then, until every live activator has had
    /// the chance to report.
    pub fn new(tuning: Tuning, now: Instant) -> Self {
        Self {
            tuning,
            started: now,
            activators: BTreeMap::new(),
            functions: BTreeMap::new(),
        }
    }

    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// Takes in a report received at `received`. Drops it (`accepted:
    /// false`) when its sequence is not above the last accepted one of the
    /// same activator, unless it is 0 (the activator restarted).
    pub fn ingest(
        &mut self,
        report: ActivatorReport,
        received: Instant,
    ) -> Result<Ingested, StatsError> {
        report.validate()?;
        let keys: Vec<FunctionKey> = report.functions.iter().map(FunctionReport::key).collect();
        let state = self
            .activators
            .entry(report.activator.clone())
            .or_insert_with(|| ActivatorState {
                last_seen: received,
                sequence: None,
                latest: BTreeMap::new(),
            });
        if let Some(last) = state.sequence
            && report.sequence <= last
            && report.sequence != 0
        {
            return Ok(Ingested {
                accepted: false,
                functions: keys,
                poked: Vec::new(),
            });
        }
        // Callers may race; time never goes back for one activator.
        let received = received.max(state.last_seen);
        let span = Span {
            end: received,
            length: Duration::from_millis(report.interval_ms),
        };
        state.last_seen = received;
        state.sequence = Some(report.sequence);
        state.latest.clear();

        let mut poked = Vec::new();
        for function in report.functions {
            let key = function.key();
            let entry = self.functions.entry(key.clone()).or_default();
            entry.samples.push_back(Sample {
                activator: report.activator.clone(),
                span,
                concurrency: function.concurrency,
            });
            if function.requests > 0 {
                entry.last_request = Some(received);
            }
            for instance in &function.instances {
                let active = match instance.idle_for_ms {
                    _ if instance.is_busy() => Some(received),
                    Some(idle) => received.checked_sub(Duration::from_millis(idle)),
                    None => None,
                };
                if let Some(active) = active {
                    let last = entry
                        .last_active
                        .entry(instance.pod.clone())
                        .or_insert(active);
                    *last = (*last).max(active);
                }
            }
            if report.poke && function.waiting > 0 {
                poked.push(key.clone());
            }
            state.latest.insert(key, function);
        }
        if report.leaving {
            // It has nothing in flight any more: no reason to wait for it.
            self.activators.remove(&report.activator);
        }
        self.prune(received);
        Ok(Ingested {
            accepted: true,
            functions: keys,
            poked,
        })
    }

    /// Tells the store an activator replica exists (the operator saw its pod)
    /// before it has reported. If it never reports, it counts as silent from
    /// `now` on, which holds reaping until it is forgotten: a replica the
    /// operator cannot hear may be serving requests. Does nothing for an
    /// activator the store already knows.
    pub fn expect_activator(&mut self, id: impl Into<String>, now: Instant) {
        self.activators
            .entry(id.into())
            .or_insert_with(|| ActivatorState {
                last_seen: now,
                sequence: None,
                latest: BTreeMap::new(),
            });
    }

    /// Every activator the store remembers, with when it last reported.
    pub fn activators(&self) -> impl Iterator<Item = (&str, Instant)> {
        self.activators
            .iter()
            .map(|(id, state)| (id.as_str(), state.last_seen))
    }

    /// Drops everything known about a deleted Function.
    pub fn forget_function(&mut self, key: &FunctionKey) {
        self.functions.remove(key);
        for state in self.activators.values_mut() {
            state.latest.remove(key);
        }
    }

    /// When an activator last received a request for the function.
    pub fn last_request(&self, key: &FunctionKey) -> Option<Instant> {
        self.functions.get(key).and_then(|f| f.last_request)
    }

    /// Stores what the autoscaler remembers for the function until its next
    /// decision (normally [`Decision::memory`]).
    pub fn remember(&mut self, key: &FunctionKey, memory: ScalerMemory) {
        if memory == ScalerMemory::default() && !self.functions.contains_key(key) {
            return;
        }
        self.functions.entry(key.clone()).or_default().memory = memory;
    }

    /// The function as seen at `now`.
    pub fn view(&self, key: &FunctionKey, now: Instant) -> FunctionView {
        let function = self.functions.get(key);
        FunctionView {
            tuning: self.tuning,
            observing_until: Some(self.started + self.tuning.stale_after),
            stable: self.window_average(key, self.tuning.stable_window, now),
            panic: self.window_average(key, self.tuning.panic_window, now),
            activators: self
                .activators
                .iter()
                .map(|(id, state)| ActivatorView {
                    id: id.clone(),
                    last_seen: state.last_seen,
                    function: state.latest.get(key).cloned(),
                })
                .collect(),
            last_active: function.map(|f| f.last_active.clone()).unwrap_or_default(),
            last_request: function.and_then(|f| f.last_request),
            memory: function.map(|f| f.memory.clone()).unwrap_or_default(),
        }
    }

    /// [`view`](Self::view), [`decide`], then [`remember`](Self::remember)
    /// the decision's memory: one autoscaler step for one function.
    pub fn decide(
        &mut self,
        key: &FunctionKey,
        settings: &Settings,
        pool: &[Instance],
        now: Instant,
    ) -> Decision {
        let view = self.view(key, now);
        let decision = decide(settings, pool, &view, now);
        self.remember(key, decision.memory.clone());
        decision
    }

    /// Average concurrency of the function over the last `window`, summed
    /// across fresh activators. Each activator's average covers the window
    /// ending at its own last report (so report lag does not dilute it):
    /// the request-seconds its reports put in the window, divided by the
    /// window's length — a report without the function, or no report at
    /// all, counts as 0, so an activator that just joined adds only the
    /// share it carried. The window is clipped at the store's creation,
    /// before which nothing is known. Silent activators are left out: a
    /// dead one's load has moved to the others.
    fn window_average(&self, key: &FunctionKey, window: Duration, now: Instant) -> f64 {
        let Some(function) = self.functions.get(key) else {
            return 0.0;
        };
        let mut total = 0.0;
        for (id, state) in &self.activators {
            if now.saturating_duration_since(state.last_seen) > self.tuning.stale_after {
                continue;
            }
            let end = state.last_seen;
            let start = end
                .checked_sub(window)
                .map_or(self.started, |start| start.max(self.started));
            let length = end.saturating_duration_since(start).as_secs_f64();
            if length <= 0.0 {
                continue;
            }
            let weighted: f64 = function
                .samples
                .iter()
                .filter(|sample| &sample.activator == id)
                .map(|sample| sample.concurrency * sample.span.overlap(start, end).as_secs_f64())
                .sum();
            total += weighted / length;
        }
        total
    }

    fn prune(&mut self, now: Instant) {
        let tuning = self.tuning;
        let keep_from = |window: Duration| now.checked_sub(window);
        let window_start = keep_from(tuning.stable_window);
        let retain_start = keep_from(tuning.retain_for);
        self.activators
            .retain(|_, state| retain_start.is_none_or(|start| state.last_seen >= start));
        for function in self.functions.values_mut() {
            if let Some(start) = window_start {
                while function
                    .samples
                    .front()
                    .is_some_and(|sample| sample.span.end < start)
                {
                    function.samples.pop_front();
                }
            }
            if let Some(start) = retain_start {
                function.last_active.retain(|_, active| *active >= start);
                if function.last_request.is_some_and(|at| at < start) {
                    function.last_request = None;
                }
            }
        }
        self.functions.retain(|_, function| !function.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::ManualClock, stats::InstanceReport};

    use crate::clock::Clock;

    fn key() -> FunctionKey {
        FunctionKey::new("default", "hello")
    }

    fn report(activator: &str, sequence: u64, concurrency: f64) -> ActivatorReport {
        let mut report = ActivatorReport::new(activator, sequence, 1000);
        let mut function = FunctionReport::new("default", "hello");
        function.concurrency = concurrency;
        report.functions.push(function);
        report
    }

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn windows_sum_activators_and_average_over_time() {
        let clock = ManualClock::new();
        let mut store = StatsStore::new(Tuning::default(), clock.now());
        // Two activators, each reporting every second: a at 2.0, b at 1.0.
        for seq in 1..=60 {
            clock.advance(Duration::from_secs(1));
            store.ingest(report("a", seq, 2.0), clock.now()).unwrap();
            store.ingest(report("b", seq, 1.0), clock.now()).unwrap();
        }
        let view = store.view(&key(), clock.now());
        assert!(approx(view.stable, 3.0), "{}", view.stable);
        assert!(approx(view.panic, 3.0), "{}", view.panic);

        // A burst on a for the last 6 seconds moves the panic window fully
        // and the stable window by a tenth of it.
        for seq in 61..=66 {
            clock.advance(Duration::from_secs(1));
            store.ingest(report("a", seq, 12.0), clock.now()).unwrap();
            store.ingest(report("b", seq, 1.0), clock.now()).unwrap();
        }
        let view = store.view(&key(), clock.now());
        assert!(approx(view.panic, 13.0), "{}", view.panic);
        assert!(
            approx(view.stable, 2.0 * 0.9 + 12.0 * 0.1 + 1.0),
            "{}",
            view.stable
        );
    }

    #[test]
    fn a_report_without_the_function_counts_as_zero() {
        let clock = ManualClock::new();
        let mut store = StatsStore::new(Tuning::default(), clock.now());
        for seq in 1..=30 {
            clock.advance(Duration::from_secs(1));
            store.ingest(report("a", seq, 4.0), clock.now()).unwrap();
        }
        for seq in 31..=60 {
            clock.advance(Duration::from_secs(1));
            store
                .ingest(ActivatorReport::new("a", seq, 1000), clock.now())
                .unwrap();
        }
        let view = store.view(&key(), clock.now());
        assert!(approx(view.stable, 2.0), "{}", view.stable);
        assert!(approx(view.panic, 0.0), "{}", view.panic);
    }

    #[test]
    fn silent_activators_leave_the_windows() {
        let clock = ManualClock::new();
        let mut store = StatsStore::new(Tuning::default(), clock.now());
        clock.advance(Duration::from_secs(1));
        store.ingest(report("a", 1, 5.0), clock.now()).unwrap();
        clock.advance(Duration::from_secs(3));
        assert!(approx(store.view(&key(), clock.now()).stable, 5.0));
        clock.advance(Duration::from_millis(1));
        assert!(approx(store.view(&key(), clock.now()).stable, 0.0));
    }

    #[test]
    fn old_sequences_are_dropped_and_zero_means_restart() {
        let clock = ManualClock::new();
        let mut store = StatsStore::new(Tuning::default(), clock.now());
        assert!(
            store
                .ingest(report("a", 5, 1.0), clock.now())
                .unwrap()
                .accepted
        );
        assert!(
            !store
                .ingest(report("a", 5, 9.0), clock.now())
                .unwrap()
                .accepted
        );
        assert!(
            !store
                .ingest(report("a", 4, 9.0), clock.now())
                .unwrap()
                .accepted
        );
        assert!(
            store
                .ingest(report("a", 6, 1.0), clock.now())
                .unwrap()
                .accepted
        );
        assert!(
            store
                .ingest(report("a", 0, 1.0), clock.now())
                .unwrap()
                .accepted
        );
        assert!(
            store
                .ingest(report("a", 1, 1.0), clock.now())
                .unwrap()
                .accepted
        );
    }

    #[test]
    fn invalid_reports_are_refused() {
        let clock = ManualClock::new();
        let mut store = StatsStore::new(Tuning::default(), clock.now());
        let mut bad = report("a", 1, 1.0);
        bad.version = 2;
        assert_eq!(
            store.ingest(bad, clock.now()),
            Err(StatsError::UnsupportedVersion { version: 2 })
        );
        assert_eq!(store.activators().count(), 0);
    }

    #[test]
    fn last_active_keeps_the_latest_evidence() {
        let clock = ManualClock::new();
        let mut store = StatsStore::new(Tuning::default(), clock.now());
        clock.advance(Duration::from_secs(100));
        let t0 = clock.now();
        let mut r = report("a", 1, 0.0);
        r.functions[0].instances = vec![InstanceReport::idle("p", 10_000)];
        store.ingest(r, t0).unwrap();
        assert_eq!(
            store.view(&key(), t0).last_active["p"],
            t0 - Duration::from_secs(10)
        );
        // b says busy: active at its receive time.
        clock.advance(Duration::from_secs(1));
        let mut r = report("b", 1, 1.0);
        r.functions[0].instances = vec![InstanceReport::busy("p", 1)];
        store.ingest(r, clock.now()).unwrap();
        assert_eq!(
            store.view(&key(), clock.now()).last_active["p"],
            clock.now()
        );
        // a no longer lists it: the evidence stays.
        clock.advance(Duration::from_secs(1));
        store.ingest(report("a", 2, 0.0), clock.now()).unwrap();
        assert_eq!(
            store.view(&key(), clock.now()).last_active["p"],
            t0 + Duration::from_secs(1)
        );
    }

    #[test]
    fn pokes_name_functions_with_waiting_requests() {
        let clock = ManualClock::new();
        let mut store = StatsStore::new(Tuning::default(), clock.now());
        let mut r = report("a", 1, 0.0);
        r.poke = true;
        let mut other = FunctionReport::new("default", "other");
        other.waiting = 1;
        r.functions.push(other);
        let ingested = store.ingest(r, clock.now()).unwrap();
        assert_eq!(ingested.functions.len(), 2);
        assert_eq!(ingested.poked, vec![FunctionKey::new("default", "other")]);
    }

    #[test]
    fn leaving_activators_are_forgotten_and_state_is_pruned() {
        let clock = ManualClock::new();
        let mut store = StatsStore::new(Tuning::default(), clock.now());
        store.ingest(report("a", 1, 1.0), clock.now()).unwrap();
        store.expect_activator("b", clock.now());
        store.expect_activator("a", clock.now() + Duration::from_secs(9));
        assert_eq!(store.activators().count(), 2);
        assert_eq!(
            store
                .activators()
                .find(|(id, _)| *id == "a")
                .map(|(_, at)| at),
            Some(clock.now()),
            "expecting a known activator changes nothing"
        );
        let mut bye = ActivatorReport::new("a", 2, 1000);
        bye.leaving = true;
        store.ingest(bye, clock.now()).unwrap();
        assert_eq!(
            store.activators().map(|(id, _)| id).collect::<Vec<_>>(),
            ["b"]
        );

        clock.advance(RETAIN_FOR + Duration::from_secs(1));
        store
            .ingest(ActivatorReport::new("c", 1, 1000), clock.now())
            .unwrap();
        assert_eq!(
            store.activators().map(|(id, _)| id).collect::<Vec<_>>(),
            ["c"]
        );
        assert!(store.functions.is_empty(), "{:?}", store.functions);
    }
}
