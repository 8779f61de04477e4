//! What state each instance pod is in, read from the pod alone.

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use thaw_api::keys::{DRAINING_SINCE_ANNOTATION, SPEC_HASH_LABEL};

/// The lifecycle state of one instance, as the controller sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum InstanceState {
    /// Created, not yet ready.
    Starting,
    /// Passing its readiness probe since the given time.
    Ready { since: Timestamp },
    /// Marked for removal at the given time: no new requests.
    Draining { since: Timestamp },
    /// Cannot serve and will not recover by itself.
    Failed { reason: String, message: String },
    /// Deletion requested; the node is stopping it.
    Terminating,
}

/// One instance pod, classified.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub name: String,
    pub state: InstanceState,
    /// Built from the Function's current spec.
    pub current: bool,
    pub created: Timestamp,
}

/// Waiting reasons after which a container will not start without help.
const STUCK_WAITING_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

/// Classifies `pod`, an instance of a Function whose spec hash is `current_hash`.
pub fn classify(pod: &Pod, current_hash: &str) -> Instance {
    let meta = &pod.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let created = meta
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let current = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(SPEC_HASH_LABEL))
        .is_some_and(|h| h == current_hash);
    Instance {
        name,
        state: state(pod),
        current,
        created,
    }
}

fn state(pod: &Pod) -> InstanceState {
    if pod.metadata.deletion_timestamp.is_some() {
        return InstanceState::Terminating;
    }
    if let Some(since) = draining_since(pod) {
        return InstanceState::Draining { since };
    }
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if phase == "Failed" || phase == "Succeeded" {
        let terminated = status
            .container_statuses
            .iter()
            .flatten()
            .find_map(|c| c.state.as_ref().and_then(|s| s.terminated.clone()));
        let (reason, message) = match terminated {
            Some(t) => (
                t.reason.unwrap_or_else(|| "Exited".into()),
                format!(
                    "instance {} exited with code {}{}",
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    t.exit_code,
                    t.message.map(|m| format!(": {m}")).unwrap_or_default()
                ),
            ),
            None => (
                status.reason.unwrap_or_else(|| "Exited".into()),
                status.message.unwrap_or_else(|| "instance stopped".into()),
            ),
        };
        return InstanceState::Failed { reason, message };
    }
    let stuck = status.container_statuses.iter().flatten().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.clone()?;
        STUCK_WAITING_REASONS
            .contains(&reason.as_str())
            .then(|| (reason, waiting.message.clone().unwrap_or_default()))
    });
    if let Some((reason, message)) = stuck {
        return InstanceState::Failed { reason, message };
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True");
    match ready {
        Some(condition) => InstanceState::Ready {
            since: condition
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(Timestamp::UNIX_EPOCH),
        },
        None => InstanceState::Starting,
    }
}

/// When the pod was marked draining, if it was.
pub fn draining_since(pod: &Pod) -> Option<Timestamp> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(DRAINING_SINCE_ANNOTATION)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("pod")
    }

    const META: &str = "metadata: {name: f-1, creationTimestamp: '2026-01-01T00:00:00Z', labels: {thaw.dev/spec-hash: abc}";

    #[test]
    fn pending_pod_is_starting_and_current() {
        let i = classify(
            &pod(&format!("{META}}}\nstatus: {{phase: Pending}}")),
            "abc",
        );
        assert_eq!(i.state, InstanceState::Starting);
        assert!(i.current);
        assert!(!classify(&pod(&format!("{META}}}")), "other").current);
    }

    #[test]
    fn ready_condition_makes_it_ready_since_the_transition() {
        let i = classify(
            &pod(&format!(
                "{META}}}\nstatus: {{phase: Running, conditions: [{{type: Ready, status: 'True', lastTransitionTime: '2026-01-01T00:00:02Z'}}]}}"
            )),
            "abc",
        );
        let since: Timestamp = "2026-01-01T00:00:02Z".parse().expect("time");
        assert_eq!(i.state, InstanceState::Ready { since });
    }

    #[test]
    fn draining_annotation_wins_over_ready() {
        let i = classify(
            &pod(&format!(
                "{META}, annotations: {{thaw.dev/draining-since: '2026-01-01T00:01:00Z'}}}}\nstatus: {{phase: Running, conditions: [{{type: Ready, status: 'True'}}]}}"
            )),
            "abc",
        );
        assert!(matches!(i.state, InstanceState::Draining { .. }));
    }

    #[test]
    fn image_pull_errors_and_exits_are_failures_with_reasons() {
        let pull = classify(
            &pod(&format!(
                "{META}}}\nstatus: {{phase: Pending, containerStatuses: [{{name: function, image: x, imageID: '', ready: false, restartCount: 0, state: {{waiting: {{reason: ErrImagePull, message: 'image \"x\" is not known'}}}}}}]}}"
            )),
            "abc",
        );
        assert_eq!(
            pull.state,
            InstanceState::Failed {
                reason: "ErrImagePull".into(),
                message: "image \"x\" is not known".into()
            }
        );
        let exited = classify(
            &pod(&format!(
                "{META}}}\nstatus: {{phase: Failed, containerStatuses: [{{name: function, image: x, imageID: '', ready: false, restartCount: 0, state: {{terminated: {{exitCode: 3, reason: Error}}}}}}]}}"
            )),
            "abc",
        );
        assert_eq!(
            exited.state,
            InstanceState::Failed {
                reason: "Error".into(),
                message: "instance f-1 exited with code 3".into()
            }
        );
    }

    #[test]
    fn deleted_pod_is_terminating() {
        let i = classify(
            &pod(&format!(
                "{META}, deletionTimestamp: '2026-01-01T00:05:00Z'}}"
            )),
            "abc",
        );
        assert_eq!(i.state, InstanceState::Terminating);
    }
}
