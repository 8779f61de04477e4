//! The cold-start breakdown of each instance: from the autoscaler's decision
//! to the pod being scheduled, its process started, and its readiness, as
//! the controller observes them through its watch (millisecond precision;
//! the pod's own timestamps have whole seconds only).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use thaw_core::GoStyle;

/// One instance's way from decision to ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    pub decided: Instant,
    pub scheduled: Option<Instant>,
    pub started: Option<Instant>,
    pub ready: Option<Instant>,
}

/// The phases of a finished timeline, in order, with their durations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breakdown {
    pub schedule: Duration,
    pub start: Duration,
    pub ready: Duration,
    pub total: Duration,
}

impl Timeline {
    pub fn new(decided: Instant) -> Self {
        Self {
            decided,
            scheduled: None,
            started: None,
            ready: None,
        }
    }

    /// Notes what `pod` shows at `now`. A phase seen late is stamped when
    /// first seen, and never before the phase it follows.
    pub fn observe(&mut self, pod: &Pod, now: Instant) {
        let spec_scheduled = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
        let status = pod.status.as_ref();
        let started = status
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            });
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if (spec_scheduled || started || ready) && self.scheduled.is_none() {
            self.scheduled = Some(now);
        }
        if (started || ready) && self.started.is_none() {
            self.started = Some(now);
        }
        if ready && self.ready.is_none() {
            self.ready = Some(now);
        }
    }

    /// The breakdown, once the instance is ready.
    pub fn breakdown(&self) -> Option<Breakdown> {
        let (scheduled, started, ready) = (self.scheduled?, self.started?, self.ready?);
        Some(Breakdown {
            schedule: scheduled.saturating_duration_since(self.decided),
            start: started.saturating_duration_since(scheduled),
            ready: ready.saturating_duration_since(started),
            total: ready.saturating_duration_since(self.decided),
        })
    }
}

impl std::fmt::Display for Breakdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ready {} after the decision: scheduled in {}, process started {} later, ready {} after that",
            GoStyle(self.total),
            GoStyle(self.schedule),
            GoStyle(self.start),
            GoStyle(self.ready)
        )
    }
}

/// Why a cold-start annotation could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a cold-start breakdown as the controller writes it")]
pub struct ParseBreakdownError(String);

/// Reads back what [`Breakdown`]'s `Display` wrote (the annotation), for
/// readers such as `kubectl thaw status`: the format is defined here only.
impl std::str::FromStr for Breakdown {
    type Err = ParseBreakdownError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseBreakdownError(text.to_owned());
        let duration = |part: &str| -> Result<Duration, ParseBreakdownError> {
            part.parse::<kube::core::Duration>()
                .map(Duration::from)
                .map_err(|_| error())
        };
        let rest = text.strip_prefix("ready ").ok_or_else(error)?;
        let (total, rest) = rest
            .split_once(" after the decision: scheduled in ")
            .ok_or_else(error)?;
        let (schedule, rest) = rest.split_once(", process started ").ok_or_else(error)?;
        let (start, rest) = rest.split_once(" later, ready ").ok_or_else(error)?;
        let ready = rest.strip_suffix(" after that").ok_or_else(error)?;
        Ok(Self {
            schedule: duration(schedule)?,
            start: duration(start)?,
            ready: duration(ready)?,
            total: duration(total)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("pod")
    }

    #[test]
    fn phases_are_stamped_when_first_seen_and_in_order() {
        let t0 = Instant::now();
        let mut timeline = Timeline::new(t0);
        timeline.observe(
            &pod("metadata: {name: p}\nspec: {containers: []}"),
            t0 + Duration::from_millis(5),
        );
        assert_eq!(timeline.scheduled, None);
        timeline.observe(
            &pod("metadata: {name: p}\nspec: {nodeName: n, containers: []}"),
            t0 + Duration::from_millis(10),
        );
        // Running and ready seen at once: both stamped now.
        timeline.observe(
            &pod("metadata: {name: p}\nspec: {nodeName: n, containers: []}\nstatus: {conditions: [{type: Ready, status: 'True'}], containerStatuses: [{name: c, image: i, imageID: '', ready: true, restartCount: 0, state: {running: {}}}]}"),
            t0 + Duration::from_millis(150),
        );
        let b = timeline.breakdown().expect("ready");
        assert_eq!(b.schedule, Duration::from_millis(10));
        assert_eq!(b.start, Duration::from_millis(140));
        assert_eq!(b.ready, Duration::ZERO);
        assert_eq!(b.total, Duration::from_millis(150));
        assert_eq!(
            b.to_string(),
            "ready 150ms after the decision: scheduled in 10ms, process started 140ms later, ready 0s after that"
        );
    }

    #[test]
    fn the_annotation_reads_back_as_the_breakdown_it_was_written_from() {
        let b = Breakdown {
            schedule: Duration::from_millis(12),
            start: Duration::from_millis(1_250),
            ready: Duration::from_millis(61_250),
            total: Duration::from_millis(62_512),
        };
        assert_eq!(b.to_string().parse::<Breakdown>().expect("parses"), b);
        assert!("ready soon".parse::<Breakdown>().is_err());
    }
}
