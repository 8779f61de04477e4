//! A simulated autoscaler loop: one Function, a pool the test edits, any
//! number of activators reporting on a [`ManualClock`]. No sleeps.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use thaw_core::{
    ActivatorReport, Autoscaler, Clock, Decision, FunctionKey, FunctionReport, Instance,
    InstanceReport, ManualClock, Phase, Settings, Tuning,
};

pub const MS: Duration = Duration::from_millis(1);
pub const SEC: Duration = Duration::from_secs(1);

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub struct Sim {
    pub clock: ManualClock,
    pub autoscaler: Autoscaler,
    pub key: FunctionKey,
    pub settings: Settings,
    pub pool: Vec<Instance>,
    /// When the autoscaler was created (the operator started).
    pub started: Instant,
    sequences: BTreeMap<String, u64>,
    /// Each activator's current process; 1 until it restarts.
    epochs: BTreeMap<String, u64>,
    created: u32,
}

impl Sim {
    /// A Function with `settings`, an operator that started 10 s ago (past
    /// its observing hold) and an empty pool.
    pub fn new(settings: Settings) -> Self {
        let sim = Self::fresh_operator(settings);
        sim.advance(secs(10));
        sim
    }

    /// Like [`Sim::new`], with the operator starting now.
    pub fn fresh_operator(settings: Settings) -> Self {
        let clock = ManualClock::new();
        // Keep well clear of the platform's earliest instant.
        clock.advance(Duration::from_secs(24 * 3600));
        let started = clock.now();
        Self {
            autoscaler: Autoscaler::new(Tuning::default(), started),
            clock,
            key: FunctionKey::new("default", "hello"),
            settings,
            pool: Vec::new(),
            started,
            sequences: BTreeMap::new(),
            epochs: BTreeMap::new(),
            created: 0,
        }
    }

    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// A report for this Function with nothing in it.
    pub fn function(&self) -> FunctionReport {
        FunctionReport::new(&self.key.namespace, &self.key.name)
    }

    /// `activator` reports `function` now, covering the last second.
    pub fn report(&mut self, activator: &str, function: FunctionReport) {
        self.send(activator, Some(function), |_| {});
    }

    /// `activator` reports with nothing about this Function.
    pub fn report_nothing(&mut self, activator: &str) {
        self.send(activator, None, |_| {});
    }

    /// `activator` reports, with `edit` applied to the whole report.
    pub fn send(
        &mut self,
        activator: &str,
        function: Option<FunctionReport>,
        edit: impl FnOnce(&mut ActivatorReport),
    ) {
        let sequence = self.sequences.entry(activator.to_owned()).or_insert(0);
        *sequence += 1;
        let epoch = *self.epochs.entry(activator.to_owned()).or_insert(1);
        let mut report = ActivatorReport::new(activator, epoch, *sequence, 1000);
        report.functions.extend(function);
        edit(&mut report);
        let ingested = self
            .autoscaler
            .ingest(report, self.clock.now())
            .expect("a valid report");
        assert!(ingested.accepted);
    }

    /// `activator`'s process starts again (a new epoch, sequences from 0);
    /// nothing is sent until the test reports.
    pub fn restart(&mut self, activator: &str) {
        *self.epochs.entry(activator.to_owned()).or_insert(1) += 1;
        self.sequences.insert(activator.to_owned(), 0);
    }

    /// `activator` says goodbye with its last report (`leaving: true`).
    pub fn leave(&mut self, activator: &str, function: Option<FunctionReport>) {
        self.send(activator, function, |r| r.leaving = true);
    }

    /// `activator` reports `pods` idle since the given instants, with
    /// `concurrency` averaged over the last second.
    pub fn report_idle(&mut self, activator: &str, pods: &[(&str, Instant)], concurrency: f64) {
        let now = self.now();
        let mut function = self.function();
        function.concurrency = concurrency;
        function.instances = pods
            .iter()
            .map(|(pod, since)| {
                InstanceReport::idle(
                    *pod,
                    (now - *since)
                        .as_millis()
                        .try_into()
                        .expect("idle time fits u64"),
                )
            })
            .collect();
        self.report(activator, function);
    }

    /// `activator` reports `concurrency` for `seconds` seconds, once a
    /// second, with `instances` in every report.
    pub fn steady(
        &mut self,
        activator: &str,
        concurrency: f64,
        seconds: u64,
        instances: &[InstanceReport],
    ) {
        for _ in 0..seconds {
            self.advance(SEC);
            let mut function = self.function();
            function.concurrency = concurrency;
            function.instances = instances.to_vec();
            self.report(activator, function);
        }
    }

    pub fn decide(&mut self) -> Decision {
        let now = self.now();
        let decision = self
            .autoscaler
            .decide(&self.key, &self.settings, &self.pool, now);
        println!(
            "{:>9.3}s {}",
            (now - self.started).as_secs_f64(),
            decision.summary
        );
        decision
    }

    /// Adds a current instance, ready since `since`.
    pub fn add_ready(&mut self, id: &str, since: Instant) {
        self.pool
            .push(Instance::new(id, Phase::Ready { since }, since));
    }

    /// Adds a current instance that is starting.
    pub fn add_starting(&mut self, id: &str) {
        let now = self.now();
        self.pool.push(Instance::new(id, Phase::Starting, now));
    }

    pub fn set_phase(&mut self, id: &str, phase: Phase) {
        let instance = self
            .pool
            .iter_mut()
            .find(|i| i.id == id)
            .expect("instance in the pool");
        instance.phase = phase;
    }

    pub fn mark_ready(&mut self, id: &str) {
        let now = self.now();
        self.set_phase(id, Phase::Ready { since: now });
    }

    /// Carries out a decision as the controller would: new instances start
    /// (named `hello-1`, `hello-2`, ...), drained ones drain, deleted ones go.
    pub fn apply(&mut self, decision: &Decision) -> Vec<String> {
        let now = self.now();
        for action in &decision.drain {
            self.set_phase(&action.instance, Phase::Draining { since: now });
        }
        self.pool
            .retain(|i| !decision.delete.iter().any(|a| a.instance == i.id));
        let mut names = Vec::new();
        for _ in 0..decision.create {
            self.created += 1;
            let name = format!("hello-{}", self.created);
            self.add_starting(&name);
            names.push(name);
        }
        names
    }

    pub fn phase(&self, id: &str) -> Option<Phase> {
        self.pool.iter().find(|i| i.id == id).map(|i| i.phase)
    }
}

pub fn drained(decision: &Decision) -> Vec<&str> {
    decision.drain.iter().map(|a| a.instance.as_str()).collect()
}

pub fn deleted(decision: &Decision) -> Vec<&str> {
    decision
        .delete
        .iter()
        .map(|a| a.instance.as_str())
        .collect()
}

pub fn expiry<'a>(decision: &'a Decision, id: &str) -> &'a thaw_core::Expiry {
    decision
        .expiries
        .iter()
        .find(|e| e.instance == id)
        .unwrap_or_else(|| panic!("no expiry for {id} in {:?}", decision.expiries))
}

pub fn settings() -> Settings {
    Settings::default()
}
