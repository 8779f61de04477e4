//! The operator's Prometheus metrics.

use std::collections::{BTreeSet, HashMap};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    core::{Collector, MetricVec, MetricVecBuilder},
    exponential_buckets,
};
use thaw_core::FunctionKey;

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
    /// Writes to the API server, by resource (pod, service, status, event).
    pub writes: IntCounterVec,
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
        let writes = IntCounterVec::new(
            Opts::new(
                "thaw_api_writes_total",
                "Writes the controller sent to the API server, by resource: pod (create, annotate, delete), service, status, event.",
            ),
            &["resource"],
        )?;
        registry.register(Box::new(writes.clone()))?;
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
            writes,
        })
    }
}

impl Metrics {
    /// Removes every series labelled with the Function (when it is deleted).
    pub fn forget_function(&self, namespace: &str, name: &str) {
        let matches = |ns: &str, f: &str| ns == namespace && f == name;
        remove_series(&self.reconciles, matches);
        remove_series(&self.instances, matches);
        remove_series(&self.desired, matches);
        remove_series(&self.decisions, matches);
        remove_series(&self.instance_failures, matches);
        remove_series(&self.cold_start, matches);
        remove_series(&self.panic, matches);
        remove_series(&self.reaps, matches);
    }

    /// Every Function with at least one series.
    pub fn functions(&self) -> BTreeSet<FunctionKey> {
        let mut keys = BTreeSet::new();
        let mut note = |ns: &str, f: &str| {
            keys.insert(FunctionKey::new(ns, f));
            false
        };
        remove_series(&self.reconciles, &mut note);
        remove_series(&self.instances, &mut note);
        remove_series(&self.desired, &mut note);
        remove_series(&self.decisions, &mut note);
        remove_series(&self.instance_failures, &mut note);
        remove_series(&self.cold_start, &mut note);
        remove_series(&self.panic, &mut note);
        remove_series(&self.reaps, &mut note);
        keys
    }
}

/// Removes the series of `vec` whose `namespace` and `function` labels
/// `select` picks (whatever their other labels: states, reasons, phases).
fn remove_series<T: MetricVecBuilder>(
    vec: &MetricVec<T>,
    mut select: impl FnMut(&str, &str) -> bool,
) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if let (Some(ns), Some(f)) = (labels.get("namespace"), labels.get("function"))
                && select(ns, f)
            {
                let _ = vec.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_function_removes_all_its_series_and_only_its() {
        let m = Metrics::new().unwrap();
        for f in ["a", "b"] {
            m.reconciles.with_label_values(&["ns", f]).inc();
            for state in ["starting", "busy", "idle", "draining"] {
                m.instances.with_label_values(&["ns", f, state]).set(1);
            }
            m.desired.with_label_values(&["ns", f]).set(2);
            m.decisions.with_label_values(&["ns", f, "create"]).inc();
            m.instance_failures
                .with_label_values(&["ns", f, "CrashLoop"])
                .inc();
            m.cold_start
                .with_label_values(&["ns", f, "total"])
                .observe(0.1);
            m.panic.with_label_values(&["ns", f]).set(0);
            m.reaps.with_label_values(&["ns", f]).inc();
        }
        m.errors.with_label_values(&["kube"]).inc();
        assert_eq!(
            m.functions(),
            [FunctionKey::new("ns", "a"), FunctionKey::new("ns", "b")].into()
        );
        m.forget_function("ns", "a");
        assert_eq!(m.functions(), [FunctionKey::new("ns", "b")].into());
        let text = {
            use prometheus::Encoder;
            let mut buffer = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&m.registry.gather(), &mut buffer)
                .unwrap();
            String::from_utf8(buffer).unwrap()
        };
        assert!(!text.contains(r#"function="a""#), "{text}");
        assert!(text.contains(r#"function="b""#));
        assert!(text.contains("thaw_reconcile_errors_total"));
    }
}
