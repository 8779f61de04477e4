//! The activator's Prometheus metrics, served on the admin address.
//!
//! Per-function series are labelled `namespace` and `function`; requests
//! that name no existing function (404) or cannot be routed (400) count
//! under empty labels, so clients cannot mint new series at will. A
//! function's series are removed when the activator forgets the function.

use std::sync::{Arc, Mutex, PoisonError};

use http::StatusCode;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, exponential_buckets,
};

/// The `kind` label values of `thaw_activator_upstream_errors_total`.
pub const UPSTREAM_ERROR_KINDS: [&str; 4] = ["connect", "timeout", "body", "other"];

/// Every metric the activator records, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Responses by function and status code.
    pub requests: IntCounterVec,
    /// Requests holding a slot on an instance now.
    pub in_flight: IntGaugeVec,
    /// Requests waiting for an instance now.
    pub queue_depth: IntGaugeVec,
    pub routed: IntGaugeVec,
    /// How long requests waited for an instance.
    pub queue_wait: HistogramVec,
    /// Requests that waited for a cold start (no instance placeable).
    pub cold_starts: IntCounterVec,
    /// From placement to the instance's response head.
    pub proxy_latency: HistogramVec,
    /// Failures talking to instances, by kind.
    pub upstream_errors: IntCounterVec,
    /// Stats reports sent to the autoscaler, by result.
    pub reports: IntCounterVec,
    /// Client connections refused at `--max-connections`.
    pub connections_refused: IntCounter,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let function = &["namespace", "function"];
        let requests = IntCounterVec::new(
            Opts::new(
                "thaw_activator_requests_total",
                "Requests answered, by function and status code.",
            ),
            &["namespace", "function", "code"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "thaw_activator_in_flight",
                "Requests holding a slot on an instance.",
            ),
            function,
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "thaw_activator_queue_depth",
                "Requests waiting for an instance.",
            ),
            function,
        )?;
        let routed = IntGaugeVec::new(
            Opts::new(
                "thaw_activator_function_routed",
                "1 while the activator has the Function's spec and routes its requests.",
            ),
            function,
        )?;
        let queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "thaw_activator_queue_wait_seconds",
                "Time requests waited for an instance (only those that waited).",
            )
            .buckets(exponential_buckets(0.001, 2.0, 17)?),
            function,
        )?;
        let cold_starts = IntCounterVec::new(
            Opts::new(
                "thaw_activator_cold_starts_total",
                "Requests that arrived while the function had no instance to place them on and waited for one.",
            ),
            function,
        )?;
        let proxy_latency = HistogramVec::new(
            HistogramOpts::new(
                "thaw_activator_proxy_latency_seconds",
                "Time from placing a request on an instance to the instance's response head.",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 18)?),
            function,
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "thaw_activator_upstream_errors_total",
                "Failures talking to instances: connect (retried elsewhere), timeout, body (request body cut), other.",
            ),
            &["namespace", "function", "kind"],
        )?;
        let reports = IntCounterVec::new(
            Opts::new(
                "thaw_activator_reports_total",
                "Stats reports sent to the autoscaler, by result (ok, error).",
            ),
            &["result"],
        )?;
        let connections_refused = IntCounter::new(
            "thaw_activator_connections_refused_total",
            "Client connections answered 503 and closed because --max-connections were open.",
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(routed.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(cold_starts.clone()))?;
        registry.register(Box::new(proxy_latency.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(reports.clone()))?;
        Ok(Self {
            registry,
            requests,
            in_flight,
            queue_depth,
            routed,
            queue_wait,
            cold_starts,
            proxy_latency,
            upstream_errors,
            reports,
            connections_refused,
        })
    }

    /// The handles of one function's series, looked up once.
    pub fn function(&self, namespace: &str, name: &str) -> FunctionMetrics {
        let labels = [namespace, name];
        FunctionMetrics {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            requests: self.requests.clone(),
            codes: Arc::new(Mutex::new(Vec::new())),
            in_flight: self.in_flight.with_label_values(&labels),
            queue_depth: self.queue_depth.with_label_values(&labels),
            routed: self.routed.with_label_values(&labels),
            queue_wait: self.queue_wait.with_label_values(&labels),
            cold_starts: self.cold_starts.with_label_values(&labels),
            proxy_latency: self.proxy_latency.with_label_values(&labels),
            upstream_errors: self.upstream_errors.clone(),
        }
    }

    /// Forgets a function's series.
    pub fn remove_function(&self, function: &FunctionMetrics) {
        let labels = [function.namespace.as_str(), function.name.as_str()];
        let _ = self.in_flight.remove_label_values(&labels);
        let _ = self.queue_depth.remove_label_values(&labels);
        let _ = self.routed.remove_label_values(&labels);
        let _ = self.queue_wait.remove_label_values(&labels);
        let _ = self.cold_starts.remove_label_values(&labels);
        let _ = self.proxy_latency.remove_label_values(&labels);
        for (code, _) in function
            .codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = self
                .requests
                .remove_label_values(&[labels[0], labels[1], code.as_str()]);
        }
        for kind in UPSTREAM_ERROR_KINDS {
            let _ = self
                .upstream_errors
                .remove_label_values(&[labels[0], labels[1], kind]);
        }
    }

    /// Counts a response to a request that named no existing function.
    pub fn unrouted(&self, code: StatusCode) {
        self.requests
            .with_label_values(&["", "", code.as_str()])
            .inc();
    }
}

/// One function's series.
#[derive(Clone)]
pub struct FunctionMetrics {
    namespace: String,
    name: String,
    requests: IntCounterVec,
    /// The request counters of the status codes seen so far.
    codes: Arc<Mutex<Vec<(StatusCode, IntCounter)>>>,
    pub in_flight: IntGauge,
    pub queue_depth: IntGauge,
    /// 1 once the Function's spec is known (its pods may be seen first).
    pub routed: IntGauge,
    pub queue_wait: Histogram,
    pub cold_starts: IntCounter,
    pub proxy_latency: Histogram,
    upstream_errors: IntCounterVec,
}

impl FunctionMetrics {
    /// Counts a response with `code`.
    pub fn response(&self, code: StatusCode) {
        let mut codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, counter)) = codes.iter().find(|(c, _)| *c == code) {
            counter.inc();
            return;
        }
        let counter = self.requests.with_label_values(&[
            self.namespace.as_str(),
            self.name.as_str(),
            code.as_str(),
        ]);
        counter.inc();
        codes.push((code, counter));
    }

    /// Counts a failure talking to an instance.
    pub fn upstream_error(&self, kind: &str) {
        self.upstream_errors
            .with_label_values(&[self.namespace.as_str(), self.name.as_str(), kind])
            .inc();
    }
}
