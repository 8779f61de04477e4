//! [`Autoscaler`]: the one owner of the autoscaler's state of every
//! Function — the merged stats of every activator replica (windowed
//! concurrency, per-instance last activity, last request) and the scaler's
//! memory between decisions (panic mode).
//!
//! It is fed reports with the instant they were received, builds a
//! [`FunctionView`] per Function, hands it to [`decide()`] and stores what the
//! [`Decision`] remembers. Whether an activator is fresh, silent or
//! forgotten depends on the Function's request timeout, so that
//! classification happens in `decide`; the autoscaler keeps what it needs
//! (every activator's last report and the instant of it).
//!
//! Lifecycle: a Function's state is created by the first report or decision
//! that concerns it and dropped by [`Autoscaler::forget_function`] (the
//! controller calls it when the Function is deleted), or once nothing about
//! it is left within [`crate::view::RETAIN_FOR`].

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use crate::{
    decide::{Decision, Instance, Settings, decide},
    stats::{ActivatorReport, FunctionReport, StatsError},
    view::{ActivatorView, FunctionKey, FunctionView, ScalerMemory, Tuning},
};

/// How far an idle instance's last activity, as two reports imply it, may
/// differ before it counts as moved: the reports' transit times differ by
/// a few milliseconds, and an expiry shown to users moves in whole seconds.
const ACTIVITY_JITTER: Duration = Duration::from_secs(1);

/// What [`Autoscaler::ingest`] did with a report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ingested {
    /// False when the report was dropped as a duplicate or out of order.
    pub accepted: bool,
    /// Functions whose numbers moved (see [`moved`]): decide them again.
    /// An idle Function an activator keeps reporting the same way is not
    /// here, so reports of 1000 idle Functions wake none of them; what
    /// changes with time alone (an expiry, a silent activator) each
    /// decision's `next_wakeup` covers.
    pub functions: Vec<FunctionKey>,
    /// Functions to decide right away: the report was a poke and they have
    /// requests waiting.
    pub poked: Vec<FunctionKey>,
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

/// Epochs of earlier processes of one activator remembered, so a late
/// report of one of them is refused instead of taken for a restart.
const RETIRED_EPOCHS: usize = 8;

/// What the autoscaler knows of one activator replica (by id).
#[derive(Clone, Debug)]
struct ActivatorState {
    last_seen: Instant,
    /// The process whose reports are accepted; `None` until the first one.
    epoch: Option<u64>,
    /// The last sequence accepted within `epoch`.
    sequence: Option<u64>,
    /// Earlier epochs, newest last.
    retired: VecDeque<u64>,
    /// It said goodbye (`leaving`): left out of every view, kept only to
    /// refuse late reports of the same epoch.
    left: bool,
    latest: BTreeMap<FunctionKey, FunctionReport>,
}

impl ActivatorState {
    fn new(now: Instant) -> Self {
        Self {
            last_seen: now,
            epoch: None,
            sequence: None,
            retired: VecDeque::new(),
            left: false,
            latest: BTreeMap::new(),
        }
    }

    /// Whether to take in a report of `epoch` and `sequence`: anything of
    /// a new epoch (the activator restarted: its first reports may have been
    /// lost), and within the current epoch only what is newer than the last
    /// report accepted (not a duplicate nor a late one). Reports of retired
    /// epochs are late and refused.
    fn accepts(&self, epoch: u64, sequence: u64) -> bool {
        match self.epoch {
            Some(current) if current == epoch => self.sequence.is_none_or(|last| sequence > last),
            _ => !self.retired.contains(&epoch),
        }
    }

    /// Starts a new epoch: the previous process is gone, and with it every
    /// request it had in flight. Returns the instances it last reported
    /// busy, by Function.
    fn restart(&mut self, epoch: u64) -> Vec<(FunctionKey, String)> {
        let mut ended = Vec::new();
        if let Some(old) = self.epoch.replace(epoch) {
            self.retired.push_back(old);
            while self.retired.len() > RETIRED_EPOCHS {
                self.retired.pop_front();
            }
            for (key, function) in &self.latest {
                for instance in function.instances.iter().filter(|i| i.is_busy()) {
                    ended.push((key.clone(), instance.pod.clone()));
                }
            }
        }
        self.sequence = None;
        self.left = false;
        ended
    }
}

#[derive(Clone, Debug, Default)]
struct FunctionState {
    samples: VecDeque<Sample>,
    last_active: BTreeMap<String, Instant>,
    last_request: Option<Instant>,
    memory: ScalerMemory,
}

impl FunctionState {
    /// Evidence that something was in flight on `pod` at `at`; the latest
    /// evidence wins.
    fn saw_active(&mut self, pod: &str, at: Instant) {
        let last = self.last_active.entry(pod.to_owned()).or_insert(at);
        *last = (*last).max(at);
    }

    fn is_empty(&self) -> bool {
        self.samples.is_empty()
            && self.last_active.is_empty()
            && self.last_request.is_none()
            && self.memory == ScalerMemory::default()
    }
}

/// Whether an activator's report of a Function (received at `received`)
/// says anything its previous one (received at `previous_seen`) did not:
/// requests arrived, waiting or windowed concurrency is (or was) non-zero,
/// an instance appeared, went, changed its in-flight count, started
/// count, draining or exhausted flag, or its last activity here moved by more than [`ACTIVITY_JITTER`].
fn moved(
    before: Option<&FunctionReport>,
    previous_seen: Instant,
    now: &FunctionReport,
    received: Instant,
) -> bool {
    let Some(before) = before else {
        return true;
    };
    if now.requests > 0
        // Requests waiting wake every report, not just the one where
        // their count changed: a wake-up lost on the way (a full queue, or
        // the controller's cache not holding the Function yet) must not
        // leave them waiting for an instance nobody decides to make.
        || now.waiting > 0
        || before.waiting > 0
        || now.concurrency > 0.0
        || before.concurrency > 0.0
        || now.instances.len() != before.instances.len()
    {
        return true;
    }
    let active = |at: Instant, idle: Option<u64>| {
        idle.and_then(|ms| at.checked_sub(Duration::from_millis(ms)))
    };
    now.instances.iter().any(|instance| {
        let Some(old) = before.instances.iter().find(|i| i.pod == instance.pod) else {
            return true;
        };
        if old.in_flight != instance.in_flight
            || old.draining != instance.draining
            || old.started != instance.started
            || old.exhausted != instance.exhausted
        {
            return true;
        }
        match (
            active(previous_seen, old.idle_for_ms),
            active(received, instance.idle_for_ms),
        ) {
            (Some(a), Some(b)) => a.max(b) - a.min(b) > ACTIVITY_JITTER,
            (a, b) => a.is_some() != b.is_some(),
        }
    })
}

/// The autoscaler's state of every Function, and what it knows of every
/// activator replica.
#[derive(Clone, Debug)]
pub struct Autoscaler {
    tuning: Tuning,
    started: Instant,
    activators: BTreeMap<String, ActivatorState>,
    functions: BTreeMap<FunctionKey, FunctionState>,
}

impl Autoscaler {
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
    /// false`) when it is a duplicate or late: not above the last sequence
    /// accepted from the same epoch, or of an epoch the activator has left
    /// behind. A report of a new epoch (the activator restarted) replaces
    /// what was known of the activator's previous process; the idle clocks
    /// of instances live on, since they belong to the instance, not to the
    /// activator.
    pub fn ingest(
        &mut self,
        report: ActivatorReport,
        received: Instant,
    ) -> Result<Ingested, StatsError> {
        report.validate()?;
        let state = self
            .activators
            .entry(report.activator.clone())
            .or_insert_with(|| ActivatorState::new(received));
        if !state.accepts(report.epoch, report.sequence) {
            return Ok(Ingested::default());
        }
        // Callers may race; time never goes back for one activator.
        let received = received.max(state.last_seen);
        let previous_seen = state.last_seen;
        // A new process, a first report, a goodbye: every Function it
        // mentions (or mentioned) may decide differently.
        let everything =
            state.epoch != Some(report.epoch) || state.sequence.is_none() || report.leaving;
        if state.epoch != Some(report.epoch) {
            // Requests the old process had in flight ended by now at the
            // latest: that is the last activity known of their instances.
            for (key, pod) in state.restart(report.epoch) {
                self.functions
                    .entry(key)
                    .or_default()
                    .saw_active(&pod, received);
            }
        }
        let span = Span {
            end: received,
            length: Duration::from_millis(report.interval_ms),
        };
        state.last_seen = received;
        state.sequence = Some(report.sequence);
        let mut previous = std::mem::take(&mut state.latest);

        let mut poked = Vec::new();
        let mut woken = Vec::new();
        for function in report.functions {
            let key = function.key();
            let before = previous.remove(&key);
            if everything || moved(before.as_ref(), previous_seen, &function, received) {
                woken.push(key.clone());
            }
            let entry = self.functions.entry(key.clone()).or_default();
            // A sample of 0 adds nothing to any window: idle Functions
            // (most of them, in a large cluster) cost no sample memory.
            if function.concurrency > 0.0 {
                entry.samples.push_back(Sample {
                    activator: report.activator.clone(),
                    span,
                    concurrency: function.concurrency,
                });
            }
            if function.requests > 0 {
                entry.last_request = Some(received);
            }
            for instance in &function.instances {
                // Busy: active now. Idle: active when its last request here
                // ended. Never had a request here: no evidence at all.
                let active = if instance.is_busy() {
                    Some(received)
                } else {
                    instance
                        .idle_for_ms
                        .and_then(|idle| received.checked_sub(Duration::from_millis(idle)))
                };
                if let Some(active) = active {
                    entry.saw_active(&instance.pod, active);
                }
            }
            if report.poke && function.waiting > 0 {
                poked.push(key.clone());
            }
            state.latest.insert(key, function);
        }
        if report.leaving {
            // It has nothing in flight any more: no reason to wait for it.
            // The state stays (out of every view) to refuse late reports.
            state.left = true;
            state.latest.clear();
        }
        // Functions it no longer lists: what it had of them ended.
        woken.extend(previous.into_keys());
        self.prune(received);
        Ok(Ingested {
            accepted: true,
            functions: woken,
            poked,
        })
    }

    /// Tells the autoscaler an activator replica exists (the operator saw
    /// its pod) before it has reported. If it never reports, it counts as
    /// silent from `now` on, which holds reaping until it is forgotten: a
    /// replica the operator cannot hear may be serving requests. Does
    /// nothing for an activator already known (or one that left).
    pub fn expect_activator(&mut self, id: impl Into<String>, now: Instant) {
        self.activators
            .entry(id.into())
            .or_insert_with(|| ActivatorState::new(now));
    }

    /// Every activator the store remembers, with when it last reported.
    pub fn activators(&self) -> impl Iterator<Item = (&str, Instant)> {
        self.live_activators()
            .map(|(id, state)| (id.as_str(), state.last_seen))
    }

    /// Activators that have not said goodbye.
    fn live_activators(&self) -> impl Iterator<Item = (&String, &ActivatorState)> {
        self.activators.iter().filter(|(_, state)| !state.left)
    }

    /// Drops everything known about a deleted Function.
    pub fn forget_function(&mut self, key: &FunctionKey) {
        self.functions.remove(key);
        for state in self.activators.values_mut() {
            state.latest.remove(key);
        }
    }

    /// Every Function the autoscaler holds state of (merged stats, scaler
    /// memory, or an entry in an activator's last report).
    pub fn functions(&self) -> BTreeSet<FunctionKey> {
        self.functions
            .keys()
            .chain(self.activators.values().flat_map(|a| a.latest.keys()))
            .cloned()
            .collect()
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
                .live_activators()
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
        for (id, state) in self.live_activators() {
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
mod tests;
