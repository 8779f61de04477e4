//! The operator's Prometheus metrics.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    exponential_buckets,
};

/// Every metric the controller records, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub instances: IntGaugeVec,
    pub desired: IntGaugeVec,
    pub decisions: IntCounterVec,
    pub instance_failures: IntCounterVec,
    pub cold_start: HistogramVec,
    pub panic: IntGaugeVec,
    pub reaps: IntCounterVec,
    /// Wake-ups from reports dropped because the leader's queue was full.
    pub wakeups_dropped: IntCounter,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("thaw_reconciles_total", "Reconciles of Functions."),
            &["namespace", "function"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "thaw_reconcile_errors_total",
                "Failed reconciles, by error kind.",
            ),
            &["error"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "thaw_reconcile_duration_seconds",
                "Time one reconcile takes.",
            )
            .buckets(exponential_buckets(0.001, 2.0, 14)?),
            &[],
        )?;
        let instances = IntGaugeVec::new(
            Opts::new("thaw_instances", "Instances by state."),
            &["namespace", "function", "state"],
        )?;
        let desired = IntGaugeVec::new(
            Opts::new("thaw_desired_instances", "Instances the autoscaler wants."),
            &["namespace", "function"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "thaw_decisions_total",
                "Instances created, drained and deleted.",
            ),
            &["namespace", "function", "action"],
        )?;
        let instance_failures = IntCounterVec::new(
            Opts::new(
                "thaw_instance_failures_total",
                "Instances that failed, by reason.",
            ),
            &["namespace", "function", "reason"],
        )?;
        let cold_start = HistogramVec::new(
            HistogramOpts::new(
                "thaw_cold_start_phase_seconds",
                "Cold-start phases of new instances: schedule (decision to scheduled), start (to process started), ready (to ready), total.",
            )
            .buckets(exponential_buckets(0.005, 2.0, 14)?),
            &["namespace", "function", "phase"],
        )?;
        let panic = IntGaugeVec::new(
            Opts::new(
                "thaw_panic_mode",
                "1 while the autoscaler panics for a function.",
            ),
            &["namespace", "function"],
        )?;
        let reaps = IntCounterVec::new(
            Opts::new(
                "thaw_reaps_total",
                "Instances drained after their keep-alive.",
            ),
            &["namespace", "function"],
        )?;
        let wakeups_dropped = IntCounter::new(
            "thaw_wakeups_dropped_total",
            "Reconcile wake-ups from stats reports dropped because the queue was full.",
        )?;
        registry.register(Box::new(wakeups_dropped.clone()))?;
        registry.register(Box::new(cold_start.clone()))?;
        registry.register(Box::new(panic.clone()))?;
        registry.register(Box::new(reaps.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(instances.clone()))?;
        registry.register(Box::new(desired.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(instance_failures.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            reconcile_duration,
            instances,
            desired,
            decisions,
            instance_failures,
            cold_start,
            panic,
            wakeups_dropped,
            reaps,
        })
    }
}
