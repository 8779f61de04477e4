//! The wire message activators send the operator: what each activator
//! replica sees of every function right now.
//!
//! It carries durations, never timestamps (`idleForMs`, `intervalMs`), so the
//! activator's and the operator's clocks need not agree: the operator turns
//! them into instants by subtracting from the moment it received the report.
//!
//! An activator reports only what it saw itself: an instance it has had no
//! request on since it started carries no idle time at all, so a new or
//! restarted activator never claims an instance idle since its own start
//! (which would move the instance's keep-alive later).
//!
//! The message is versioned. `version` is the first field a sender writes;
//! a receiver rejects any version but [`REPORT_VERSION`] with
//! [`StatsError::UnsupportedVersion`], raised while deserializing as soon as
//! the field is read, before the rest of an unknown shape is looked at.

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

/// The only report version this build reads and writes.
pub const REPORT_VERSION: u32 = 3;

/// Everything one activator replica reports, sent every report interval
/// (about a second) and at once when a request starts waiting for a
/// function that has no instance (`poke`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivatorReport {
    /// Message version: [`REPORT_VERSION`].
    #[serde(deserialize_with = "supported_version")]
    pub version: u32,
    /// The replica's id, unique among live activators (its pod name).
    pub activator: String,
    /// Random per process start: a report with an epoch the operator has not
    /// seen from this activator means it restarted, whatever its sequence
    /// (so a lost first report does not hide a restart).
    pub epoch: u64,
    /// Counts up by one per report within an epoch, from 0. The operator
    /// drops a report whose sequence is not above the last one it accepted
    /// from the same epoch (a duplicate or a late retry).
    pub sequence: u64,
    /// Length of the time the report covers, ending when it was sent: the
    /// time since the previous report. Every function's `concurrency` is an
    /// average over this interval.
    pub interval_ms: u64,
    /// Sent at once, off the regular interval, because a request started
    /// waiting for a function with no instance: scale it from zero now.
    #[serde(default, skip_serializing_if = "is_false")]
    pub poke: bool,
    /// The activator is shutting down and has nothing in flight any more:
    /// forget it at once instead of treating its silence as missing
    /// information.
    #[serde(default, skip_serializing_if = "is_false")]
    pub leaving: bool,
    /// Every function the activator has requests for or knows instances of.
    /// A function missing here had nothing in flight or waiting on this
    /// activator during the interval.
    #[serde(default)]
    pub functions: Vec<FunctionReport>,
}

/// One function as one activator sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionReport {
    pub namespace: String,
    pub name: String,
    /// Requests waiting for an instance right now.
    #[serde(default)]
    pub waiting: u32,
    /// Time-weighted average of requests in flight plus waiting over the
    /// report's `intervalMs`.
    #[serde(default)]
    pub concurrency: f64,
    /// Requests received since the previous report.
    #[serde(default)]
    pub requests: u64,
    /// Every instance of the function this activator knows.
    #[serde(default)]
    pub instances: Vec<InstanceReport>,
}

/// One instance as one activator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    /// The instance's pod name.
    pub pod: String,
    /// Requests this activator has in flight on the instance.
    #[serde(default)]
    pub in_flight: u32,
    /// How long ago this activator's last request on the instance ended;
    /// absent while one is in flight, and absent when this activator has had
    /// no request on it since it started (it knows nothing of its idle time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_for_ms: Option<u64>,
    /// This activator has seen the instance marked draining and places
    /// nothing new on it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub draining: bool,
    /// Requests this activator has placed on the instance since it learned
    /// of it (version 3): with `maxRequestsPerInstance`, the autoscaler sums
    /// them across activators to tell when an instance is used up.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub started: u64,
    /// The instance's gate refused a request as exhausted, or this activator
    /// alone placed `maxRequestsPerInstance` on it: it takes no more.
    #[serde(default, skip_serializing_if = "is_false")]
    pub exhausted: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error(
        "activator report version {version} is not supported: this operator reads version {REPORT_VERSION} only; run activators and operator of the same thaw release"
    )]
    UnsupportedVersion { version: u32 },
    #[error(
        "activator report has an empty activator id: it must name the activator replica (its pod name)"
    )]
    MissingActivator,
    #[error(
        "activator {activator} reported concurrency {value} for {namespace}/{name}: it must be a finite number, 0 or more"
    )]
    InvalidConcurrency {
        activator: String,
        namespace: String,
        name: String,
        value: f64,
    },
}

impl ActivatorReport {
    /// An empty report of the current version.
    pub fn new(activator: impl Into<String>, epoch: u64, sequence: u64, interval_ms: u64) -> Self {
        Self {
            version: REPORT_VERSION,
            activator: activator.into(),
            epoch,
            sequence,
            interval_ms,
            poke: false,
            leaving: false,
            functions: Vec::new(),
        }
    }

    /// Checks what the types cannot: the version, a non-empty activator id
    /// and sane concurrency values.
    pub fn validate(&self) -> Result<(), StatsError> {
        if self.version != REPORT_VERSION {
            return Err(StatsError::UnsupportedVersion {
                version: self.version,
            });
        }
        if self.activator.is_empty() {
            return Err(StatsError::MissingActivator);
        }
        for function in &self.functions {
            if !function.concurrency.is_finite() || function.concurrency < 0.0 {
                return Err(StatsError::InvalidConcurrency {
                    activator: self.activator.clone(),
                    namespace: function.namespace.clone(),
                    name: function.name.clone(),
                    value: function.concurrency,
                });
            }
        }
        Ok(())
    }
}

impl FunctionReport {
    /// A report for `namespace/name` with nothing in it.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            waiting: 0,
            concurrency: 0.0,
            requests: 0,
            instances: Vec::new(),
        }
    }
}

impl InstanceReport {
    /// An instance with `in_flight` requests from this activator.
    pub fn busy(pod: impl Into<String>, in_flight: u32) -> Self {
        Self {
            pod: pod.into(),
            in_flight,
            idle_for_ms: None,
            draining: false,
            started: 0,
            exhausted: false,
        }
    }

    /// An instance this activator knows but has had no request on since it
    /// started.
    pub fn unused(pod: impl Into<String>) -> Self {
        Self {
            pod: pod.into(),
            in_flight: 0,
            idle_for_ms: None,
            draining: false,
            started: 0,
            exhausted: false,
        }
    }

    /// An instance whose last request from this activator ended
    /// `idle_for_ms` ago.
    pub fn idle(pod: impl Into<String>, idle_for_ms: u64) -> Self {
        Self {
            pod: pod.into(),
            in_flight: 0,
            idle_for_ms: Some(idle_for_ms),
            draining: false,
            started: 0,
            exhausted: false,
        }
    }

    /// Whether this activator has anything in flight on the instance.
    pub fn is_busy(&self) -> bool {
        self.in_flight > 0
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn supported_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let version = u32::deserialize(deserializer)?;
    if version == REPORT_VERSION {
        Ok(version)
    } else {
        Err(D::Error::custom(StatsError::UnsupportedVersion { version }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ActivatorReport {
        let mut report = ActivatorReport::new("activator-0", 42, 7, 1000);
        let mut function = FunctionReport::new("default", "hello");
        function.waiting = 2;
        function.concurrency = 1.5;
        function.requests = 12;
        function.instances = vec![
            InstanceReport::busy("hello-a", 1),
            InstanceReport::unused("hello-c"),
            {
                let mut idle = InstanceReport::idle("hello-b", 2500);
                idle.draining = true;
                idle
            },
        ];
        report.functions.push(function);
        report
    }

    #[test]
    fn wire_format_is_camel_case_and_small() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "version": 3,
                "activator": "activator-0",
                "epoch": 42,
                "sequence": 7,
                "intervalMs": 1000,
                "functions": [{
                    "namespace": "default",
                    "name": "hello",
                    "waiting": 2,
                    "concurrency": 1.5,
                    "requests": 12,
                    "instances": [
                        {"pod": "hello-a", "inFlight": 1},
                        {"pod": "hello-c", "inFlight": 0},
                        {"pod": "hello-b", "inFlight": 0, "idleForMs": 2500, "draining": true}
                    ]
                }]
            })
        );
        let text = serde_json::to_string(&sample()).unwrap();
        assert!(
            text.starts_with(r#"{"version":3,"#),
            "version comes first: {text}"
        );
        let back: ActivatorReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn poke_and_leaving_round_trip() {
        let mut report = sample();
        report.poke = true;
        report.leaving = true;
        let text = serde_json::to_string(&report).unwrap();
        assert!(text.contains(r#""poke":true"#) && text.contains(r#""leaving":true"#));
        assert_eq!(
            serde_json::from_str::<ActivatorReport>(&text).unwrap(),
            report
        );
    }

    #[test]
    fn unknown_version_is_rejected_before_the_rest_is_read() {
        // A future version with a shape this build does not know: the error
        // names the version, not the unknown fields.
        let text = r#"{"version":4,"activator":"a","epoch":1,"sequence":1,"intervalMs":1000,"functions":[{"ns":"x"}]}"#;
        let error = serde_json::from_str::<ActivatorReport>(text)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("activator report version 4 is not supported"),
            "{error}"
        );
        assert!(error.contains("reads version 3 only"), "{error}");

        // Version 1 meant something else by a missing `idleForMs` (busy).
        let text = r#"{"version":1,"activator":"a","epoch":1,"sequence":1,"intervalMs":1000}"#;
        assert!(serde_json::from_str::<ActivatorReport>(text).is_err());
        let text = r#"{"version":0,"activator":"a","epoch":1,"sequence":1,"intervalMs":1000}"#;
        assert!(serde_json::from_str::<ActivatorReport>(text).is_err());
    }

    #[test]
    fn validate_checks_version_activator_and_concurrency() {
        assert_eq!(sample().validate(), Ok(()));

        let mut report = sample();
        report.version = 4;
        assert_eq!(
            report.validate(),
            Err(StatsError::UnsupportedVersion { version: 4 })
        );

        let mut report = sample();
        report.activator.clear();
        assert_eq!(report.validate(), Err(StatsError::MissingActivator));

        for value in [f64::NAN, f64::INFINITY, -0.5] {
            let mut report = sample();
            report.functions[0].concurrency = value;
            let error = report.validate().unwrap_err();
            assert!(matches!(error, StatsError::InvalidConcurrency { .. }));
            assert!(error.to_string().contains("default/hello"), "{error}");
        }
    }

    #[test]
    fn busy_means_in_flight_and_a_missing_idle_time_means_unknown() {
        let text = r#"{"pod":"p","inFlight":0}"#;
        let instance: InstanceReport = serde_json::from_str(text).unwrap();
        assert!(!instance.is_busy());
        assert_eq!(instance, InstanceReport::unused("p"));
        assert!(!InstanceReport::idle("p", 0).is_busy());
        assert!(InstanceReport::busy("p", 2).is_busy());
    }
}
