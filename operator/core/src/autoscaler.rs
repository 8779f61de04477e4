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
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use crate::{
    decide::{Decision, Instance, Settings, decide},
    stats::{ActivatorReport, FunctionReport, StatsError},
    view::{ActivatorView, FunctionKey, FunctionView, ScalerMemory, Tuning},
};

/// What [`Autoscaler::ingest`] did with a report.
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
mod tests;
