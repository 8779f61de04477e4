//! What the autoscaler knows about one Function at one instant — the input
//! of [`crate::decide()`] — and the constants it is tuned with.
//!
//! The dependency runs one way: [`crate::stats`] (the wire) -> this module
//! -> [`crate::decide`] (the decision) -> [`crate::autoscaler`] (the owner of
//! the state, which builds views and stores what a decision remembers).

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, Instant},
};

use crate::stats::FunctionReport;

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

/// Panic mode's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PanicState {
    /// When it started.
    pub since: Instant,
    /// The last decision that found the panic window over the threshold;
    /// panic ends a stable window after it.
    pub last_trigger: Instant,
    /// The most instances wanted during the panic: desired never goes below.
    pub max_desired: u32,
}

/// What the autoscaler carries from one decision of a Function to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScalerMemory {
    pub panic: Option<PanicState>,
}
