//! The Function's status, built by a pure function of what the controller
//! observed and decided, then written by server-side apply.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use thaw_api::{FunctionStatus, InstanceCounts};
use thaw_core::Counts;

/// Why the Function cannot serve, when it cannot.
#[derive(Clone, Debug, PartialEq)]
pub struct Trouble {
    /// CamelCase reason, e.g. `ErrImagePull` or `InstancesFailing`.
    pub reason: String,
    pub message: String,
}

/// Everything the status is built from.
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub url: String,
    pub counts: Counts,
    pub desired: u32,
    pub min_instances: u32,
    pub last_request: Option<Timestamp>,
    pub trouble: Option<Trouble>,
    /// The last decision that created, drained or deleted an instance.
    pub scaling: Option<String>,
    pub panic: bool,
    /// The status the API server has now, to keep unchanged conditions'
    /// transition times.
    pub previous: Option<&'a FunctionStatus>,
    pub now: Timestamp,
}

/// The status for `observed`.
pub fn build_status(observed: &Observed<'_>) -> FunctionStatus {
    let counts = observed.counts;
    let (status, reason, message) = match &observed.trouble {
        Some(trouble) => ("False", trouble.reason.clone(), trouble.message.clone()),
        None if counts.ready < observed.min_instances.min(observed.desired) => (
            "False",
            "InstancesStarting".to_owned(),
            format!(
                "{} of {} minimum instances ready",
                counts.ready,
                observed.min_instances.min(observed.desired)
            ),
        ),
        None if counts.ready == 0 && counts.starting == 0 => (
            "True",
            "ScaledToZero".to_owned(),
            "no instances; the next request starts one".to_owned(),
        ),
        None => (
            "True",
            "InstancesReady".to_owned(),
            format!(
                "{} ready ({} busy, {} idle), {} starting",
                counts.ready, counts.busy, counts.idle, counts.starting
            ),
        ),
    };
    let ready = condition(observed, "Ready", status, &reason, &message);
    let scaling = scaling_condition(observed);
    FunctionStatus {
        observed_generation: observed.generation,
        conditions: vec![ready, scaling],
        url: Some(observed.url.clone()),
        instances: Some(InstanceCounts {
            starting: to_i32(counts.starting),
            ready: to_i32(counts.ready),
            busy: to_i32(counts.busy),
            idle: to_i32(counts.idle),
            draining: to_i32(counts.draining),
        }),
        desired_instances: Some(to_i32(observed.desired)),
        last_request_time: coarse_last_request(
            observed.last_request,
            observed
                .previous
                .and_then(|s| s.last_request_time.as_ref())
                .map(|t| t.0),
        )
        .map(Time),
    }
}

/// `lastRequestTime` moves in steps of this, so a Function with steady
/// traffic costs a status write a minute, not one per report.
pub const LAST_REQUEST_GRANULARITY: SignedDuration = SignedDuration::from_secs(60);

/// The `lastRequestTime` to write: the one already written while the latest
/// request is less than [`LAST_REQUEST_GRANULARITY`] after it (or before it:
/// the time never goes back).
pub fn coarse_last_request(
    latest: Option<Timestamp>,
    written: Option<Timestamp>,
) -> Option<Timestamp> {
    match (latest, written) {
        (Some(latest), Some(written))
            if latest.duration_since(written) < LAST_REQUEST_GRANULARITY =>
        {
            Some(written)
        }
        (latest, written) => latest.or(written),
    }
}

/// `Scaling`: True while instances are being added or removed, with the
/// last decision that acted and its reason as the message.
fn scaling_condition(observed: &Observed<'_>) -> Condition {
    let counts = observed.counts;
    let live = counts.starting + counts.ready;
    let (status, reason) = if observed.panic {
        ("True", "Panic")
    } else if live < observed.desired || counts.starting > 0 {
        ("True", "ScalingUp")
    } else if counts.draining > 0 || live > observed.desired {
        ("True", "ScalingDown")
    } else {
        ("False", "Steady")
    };
    let previous = observed
        .previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Scaling"))
        .map(|c| c.message.clone());
    let message = observed
        .scaling
        .clone()
        .or(previous)
        .unwrap_or_else(|| "no scaling decision yet".to_owned());
    condition(observed, "Scaling", status, reason, &message)
}

fn condition(
    observed: &Observed<'_>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> Condition {
    let previous = observed
        .previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    // The transition time moves only when the status flips.
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(observed.now),
    };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: observed.generation,
        last_transition_time,
    }
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_request_time_moves_a_minute_at_a_time() {
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        assert_eq!(coarse_last_request(None, None), None);
        assert_eq!(coarse_last_request(Some(t(0)), None), Some(t(0)));
        assert_eq!(coarse_last_request(None, Some(t(0))), Some(t(0)));
        assert_eq!(coarse_last_request(Some(t(59)), Some(t(0))), Some(t(0)));
        assert_eq!(coarse_last_request(Some(t(60)), Some(t(0))), Some(t(60)));
        assert_eq!(coarse_last_request(Some(t(-5)), Some(t(0))), Some(t(0)));
    }

    fn observed(counts: Counts, trouble: Option<Trouble>) -> Observed<'static> {
        Observed {
            generation: Some(3),
            url: "http://f.ns.svc.cluster.local".into(),
            counts,
            desired: 2,
            min_instances: 2,
            last_request: None,
            trouble,
            scaling: None,
            panic: false,
            previous: None,
            now: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn ready_once_min_instances_are_ready() {
        let starting = build_status(&observed(
            Counts {
                starting: 2,
                ..Counts::default()
            },
            None,
        ));
        assert_eq!(starting.conditions[0].status, "False");
        assert_eq!(starting.conditions[0].reason, "InstancesStarting");
        let ready = build_status(&observed(
            Counts {
                ready: 2,
                idle: 2,
                ..Counts::default()
            },
            None,
        ));
        assert_eq!(ready.conditions[0].status, "True");
        assert_eq!(ready.instances.expect("counts").ready, 2);
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(ready.desired_instances, Some(2));
    }

    #[test]
    fn trouble_makes_it_not_ready_with_the_reason() {
        let status = build_status(&observed(
            Counts::default(),
            Some(Trouble {
                reason: "ErrImagePull".into(),
                message: "image \"nope\" is not known".into(),
            }),
        ));
        let c = &status.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ErrImagePull")
        );
        assert!(c.message.contains("nope"));
    }

    fn condition_of<'a>(status: &'a FunctionStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition")
    }

    #[test]
    fn scaling_condition_carries_the_last_acting_decision() {
        let mut o = observed(
            Counts {
                starting: 1,
                ready: 1,
                idle: 1,
                ..Counts::default()
            },
            None,
        );
        o.scaling = Some("scaled 0 -> 2: minInstances 2".into());
        let status = build_status(&o);
        let scaling = condition_of(&status, "Scaling");
        assert_eq!(
            (scaling.status.as_str(), scaling.reason.as_str()),
            ("True", "ScalingUp")
        );
        assert_eq!(scaling.message, "scaled 0 -> 2: minInstances 2");
        // Steady, and the operator restarted: the message survives from the previous status.
        let mut steady = observed(
            Counts {
                ready: 2,
                idle: 2,
                ..Counts::default()
            },
            None,
        );
        steady.previous = Some(&status);
        let after = build_status(&steady);
        let scaling = condition_of(&after, "Scaling");
        assert_eq!(
            (scaling.status.as_str(), scaling.reason.as_str()),
            ("False", "Steady")
        );
        assert_eq!(scaling.message, "scaled 0 -> 2: minInstances 2");
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let mut first = observed(
            Counts {
                ready: 2,
                ..Counts::default()
            },
            None,
        );
        let before = build_status(&first);
        first.previous = Some(&before);
        first.now = Timestamp::from_second(100).expect("time");
        let after = build_status(&first);
        assert_eq!(
            after.conditions[0].last_transition_time,
            before.conditions[0].last_transition_time
        );
    }
}
