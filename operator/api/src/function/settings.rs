//! One reading of a Function's spec: typed accessors that the controller,
//! the autoscaler's settings and the activator all use, so every component
//! gives the same answer for every value — including values the CRD's
//! validation would reject (objects stored before a rule existed, or
//! written past admission), which read as the field's default.

use std::time::Duration;

use super::{
    FunctionSpec, default_concurrency, default_keep_alive, default_max_instances, default_max_wait,
    default_port, default_target, default_timeout,
};
use crate::GoDuration;

/// Largest `concurrency` the API accepts.
pub const MAX_CONCURRENCY: u32 = 1000;
/// Per-instance concurrency the autoscaler aims at (times `target`), and the
/// activator packs up to, when `concurrency` is 0 (unlimited), as Knative's.
pub const UNLIMITED_SOFT_TARGET: f64 = thaw_core::SOFT_TARGET;

impl FunctionSpec {
    /// The hard limit of requests in flight per instance; 0 is unlimited.
    /// A value outside 0..=1000 reads as the default (1): a limit, never
    /// "unlimited" by accident.
    pub fn concurrency(&self) -> u32 {
        u32::try_from(self.concurrency)
            .ok()
            .filter(|c| *c <= MAX_CONCURRENCY)
            .unwrap_or_else(|| non_negative(default_concurrency()))
    }

    /// The share of `concurrency` to aim at, in (0, 1]: above 1 reads as 1,
    /// anything not above 0 (or not a number) as the default (0.7).
    pub fn target(&self) -> f64 {
        let target = self.scaling.target;
        if target.is_finite() && target > 0.0 {
            target.min(1.0)
        } else {
            default_target()
        }
    }

    /// Concurrency each instance is sized for: `concurrency × target`, or
    /// `100 × target` with unlimited concurrency.
    pub fn per_instance_target(&self) -> f64 {
        thaw_core::per_instance_target(self.concurrency(), self.target(), UNLIMITED_SOFT_TARGET)
    }

    /// Longest a request may take.
    pub fn timeout(&self) -> Duration {
        parsed(&self.timeout, default_timeout)
    }

    /// How long an instance stays idle before it is destroyed.
    pub fn keep_alive(&self) -> Duration {
        parsed(&self.scaling.keep_alive, default_keep_alive)
    }

    /// Longest a request waits for an instance.
    pub fn max_wait(&self) -> Duration {
        parsed(&self.queue.max_wait, default_max_wait)
    }

    /// Requests that may wait at once; a negative value reads as 0.
    pub fn max_pending(&self) -> u32 {
        u32::try_from(self.queue.max_pending).unwrap_or(0)
    }

    /// Instances kept with no traffic; a negative value reads as 0.
    pub fn min_instances(&self) -> u32 {
        u32::try_from(self.scaling.min_instances).unwrap_or(0)
    }

    /// Most instances; a value below 1 reads as the default (100).
    pub fn max_instances(&self) -> u32 {
        u32::try_from(self.scaling.max_instances)
            .ok()
            .filter(|n| *n >= 1)
            .unwrap_or_else(|| non_negative(default_max_instances()))
    }

    /// Idle instances kept on top of the busy ones; a negative value reads
    /// as 0.
    pub fn warm_instances(&self) -> u32 {
        u32::try_from(self.scaling.warm_instances).unwrap_or(0)
    }

    /// Most requests one instance starts; 0 is unlimited, and so reads a
    /// negative value (admission refuses it).
    pub fn max_requests_per_instance(&self) -> u32 {
        u32::try_from(self.max_requests_per_instance).unwrap_or(0)
    }

    /// The RuntimeClass instance pods name, if any.
    pub fn runtime_class_name(&self) -> Option<&str> {
        self.pod_template
            .as_ref()
            .and_then(|t| t.runtime_class_name.as_deref())
            .filter(|n| !n.is_empty())
    }

    /// The port the function serves on; outside 1..=65535 reads as the
    /// default (8080).
    pub fn port(&self) -> u16 {
        u16::try_from(self.port)
            .ok()
            .filter(|p| *p >= 1)
            .unwrap_or_else(|| u16::try_from(default_port()).unwrap_or(8080))
    }
}

fn non_negative(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// The duration `value` denotes, or `default`'s when it does not parse.
fn parsed(value: &GoDuration, default: fn() -> GoDuration) -> Duration {
    value
        .parse()
        .or_else(|_| default().parse())
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FunctionSpec {
        serde_yaml::from_str(yaml).expect("spec")
    }

    #[test]
    fn defaults_read_as_documented() {
        let s = spec("image: x");
        assert_eq!(s.concurrency(), 1);
        assert_eq!(s.target(), 0.7);
        assert!((s.per_instance_target() - 0.7).abs() < 1e-12);
        assert_eq!(s.timeout(), Duration::from_secs(30));
        assert_eq!(s.keep_alive(), Duration::from_secs(300));
        assert_eq!(s.max_wait(), Duration::from_secs(30));
        assert_eq!(s.max_pending(), 100);
        assert_eq!(
            (s.min_instances(), s.max_instances(), s.warm_instances()),
            (0, 100, 0)
        );
        assert_eq!(s.port(), 8080);
    }

    #[test]
    fn the_api_and_the_core_agree_on_the_default_target() {
        assert_eq!(default_target(), thaw_core::DEFAULT_TARGET);
        assert_eq!(
            thaw_core::per_instance_target(1, f64::NAN, UNLIMITED_SOFT_TARGET),
            spec("image: x").per_instance_target()
        );
    }

    #[test]
    fn concurrency_out_of_range_reads_as_the_default_limit_never_unlimited() {
        for (value, read) in [
            (0, 0),
            (1, 1),
            (7, 7),
            (1000, 1000),
            (-1, 1),
            (-500, 1),
            (1001, 1),
        ] {
            let mut s = spec("image: x");
            s.concurrency = value;
            assert_eq!(s.concurrency(), read, "concurrency {value}");
        }
    }

    #[test]
    fn target_is_clamped_into_zero_one() {
        for (value, read) in [
            (0.5, 0.5),
            (1.0, 1.0),
            (1.5, 1.0),
            (0.0, 0.7),
            (-0.2, 0.7),
            (f64::NAN, 0.7),
            (f64::INFINITY, 0.7),
        ] {
            let mut s = spec("image: x");
            s.scaling.target = value;
            assert_eq!(s.target(), read, "target {value}");
        }
    }

    #[test]
    fn unlimited_concurrency_aims_at_the_soft_target() {
        let mut s = spec("image: x\nconcurrency: 0\nscaling: {target: 0.5}");
        assert_eq!(s.per_instance_target(), 50.0);
        s.concurrency = 10;
        assert_eq!(s.per_instance_target(), 5.0);
    }

    #[test]
    fn durations_that_do_not_parse_read_as_their_defaults() {
        let mut s =
            spec("image: x\ntimeout: 1500ms\nscaling: {keepAlive: 1h30m}\nqueue: {maxWait: 0s}");
        assert_eq!(s.timeout(), Duration::from_millis(1500));
        assert_eq!(s.keep_alive(), Duration::from_secs(5400));
        assert_eq!(s.max_wait(), Duration::ZERO);
        s.timeout = "soon".into();
        s.scaling.keep_alive = "-5s".into();
        s.queue.max_wait = "".into();
        assert_eq!(s.timeout(), Duration::from_secs(30));
        assert_eq!(s.keep_alive(), Duration::from_secs(300));
        assert_eq!(s.max_wait(), Duration::from_secs(30));
    }

    #[test]
    fn counts_out_of_range_read_safely() {
        let mut s = spec("image: x");
        s.scaling.min_instances = -3;
        s.scaling.max_instances = 0;
        s.scaling.warm_instances = -1;
        s.queue.max_pending = -9;
        s.port = 70000;
        assert_eq!(
            (s.min_instances(), s.max_instances(), s.warm_instances()),
            (0, 100, 0)
        );
        assert_eq!(s.max_pending(), 0);
        assert_eq!(s.port(), 8080);
    }
}
