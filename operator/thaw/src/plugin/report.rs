//! What `kubectl thaw status` says about a Function, built purely from what
//! thaw already publishes: the Function's status, its instance pods (their
//! state and thaw's annotations on them) and each instance gate's
//! `/v1/state`. The clock is an input, so the same inputs give the same
//! report; [`super::render`] turns it into text, JSON or YAML.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use serde::{Serialize, Serializer};
use thaw_api::{
    Function, InstanceCounts,
    keys::{COLD_START_ANNOTATION, EXPIRES_AT_ANNOTATION, IDLE_SINCE_ANNOTATION, KEPT_ANNOTATION},
};
use thaw_controller::{
    coldstart::Breakdown,
    gate::Answer,
    instance::{InstanceState, classify},
};
use thaw_core::Hold;

/// One instance's state as the plugin shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Created, not yet ready.
    Starting,
    /// Ready, with requests in flight or held at its gate.
    Busy,
    /// Ready, nothing in flight or held.
    Idle,
    /// Ready, but its gate could not be read and thaw's annotations do not
    /// say it is idle: busy or idle, unknown.
    Ready,
    /// Marked for removal: gets no new requests, deleted once its gate holds nothing.
    Draining,
    /// Deleted; the node is stopping it.
    Terminating,
    /// Cannot serve and will not recover by itself.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Busy => "busy",
            Self::Idle => "idle",
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Terminating => "terminating",
            Self::Failed => "failed",
        }
    }
}

/// The cold-start breakdown the controller recorded on the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ColdStart {
    #[serde(serialize_with = "millis")]
    pub total_ms: Duration,
    #[serde(serialize_with = "millis")]
    pub schedule_ms: Duration,
    #[serde(serialize_with = "millis")]
    pub start_ms: Duration,
    #[serde(serialize_with = "millis")]
    pub ready_ms: Duration,
}

/// One instance pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    pub name: String,
    pub state: State,
    /// Why a failed instance cannot serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Requests on the function now (the gate's `inFlight`).
    pub in_flight: Option<u32>,
    /// Requests held at the gate for a slot (the gate's `waiting`).
    pub waiting: Option<u32>,
    /// Requests that reached the function since the instance started (the
    /// gate's `started`).
    pub served: Option<u64>,
    /// Time since the last request ended: the gate's `idleForMs`, or the
    /// `thaw.dev/idle-since` annotation when the gate cannot be read.
    #[serde(serialize_with = "opt_millis")]
    pub idle_for_ms: Option<Duration>,
    /// `thaw.dev/expires-at`: destroyed then unless a request comes.
    pub expires_at: Option<String>,
    /// `expiresAt` minus now (negative once due).
    pub expires_in_seconds: Option<i64>,
    /// Why it does not expire for now: `busy`, or the hold thaw recorded
    /// (`minInstances`, `warmInstances`, `demand`, `panic`, `observing`).
    pub kept: Option<String>,
    pub cold_start: Option<ColdStart>,
    pub created_at: Option<String>,
    pub age_seconds: Option<u64>,
}

/// The Function's `Ready` condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadyReport {
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// The scaling settings that explain the instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingReport {
    pub min_instances: u32,
    pub max_instances: u32,
    pub warm_instances: u32,
    pub keep_alive: String,
    pub concurrency: u32,
}

/// One Function and its instances.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionReport {
    pub namespace: String,
    pub name: String,
    pub ready: Option<ReadyReport>,
    pub url: Option<String>,
    pub desired_instances: Option<i32>,
    /// The controller's counts from the Function's status.
    pub instance_counts: Option<InstanceCounts>,
    pub scaling: ScalingReport,
    pub last_request_time: Option<String>,
    pub last_request_seconds_ago: Option<u64>,
    /// Why some gates could not be read (their numbers are unknown), once.
    pub gate_error: Option<String>,
    /// Sorted by name.
    pub instances: Vec<InstanceReport>,
}

/// The gate answers, by pod name; a pod missing here was not asked.
pub type GateAnswers = BTreeMap<String, Answer>;

/// The report on `function` with its instance `pods`, at `now`.
pub fn build(
    function: &Function,
    pods: &[Pod],
    gates: &GateAnswers,
    now: Timestamp,
) -> FunctionReport {
    let status = function.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| ReadyReport {
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        });
    let spec = &function.spec;
    let mut instances: Vec<InstanceReport> = pods
        .iter()
        .map(|pod| {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let answer = gates.get(&name).unwrap_or(&Answer::NoGate);
            instance(pod, answer, now)
        })
        .collect();
    instances.sort_by(|a, b| a.name.cmp(&b.name));
    let last_request = status.last_request_time.as_ref().map(|t| t.0);
    FunctionReport {
        namespace: function.metadata.namespace.clone().unwrap_or_default(),
        name: function.metadata.name.clone().unwrap_or_default(),
        ready,
        url: status.url.clone(),
        desired_instances: status.desired_instances,
        instance_counts: status.instances.clone(),
        scaling: ScalingReport {
            min_instances: spec.min_instances(),
            max_instances: spec.max_instances(),
            warm_instances: spec.warm_instances(),
            keep_alive: spec.scaling.keep_alive.to_string(),
            concurrency: spec.concurrency(),
        },
        last_request_time: last_request.map(|t| t.to_string()),
        last_request_seconds_ago: last_request.map(|t| since(t, now).as_secs()),
        gate_error: gate_error(pods, gates),
        instances,
    }
}

/// One instance, from its pod and its gate's answer.
pub fn instance(pod: &Pod, gate: &Answer, now: Timestamp) -> InstanceReport {
    // The controller's own classification; the spec hash only decides
    // `current`, which the report does not show.
    let classified = classify(pod, "");
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let timestamp = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| v.parse::<Timestamp>().ok())
    };
    let gate_state = match gate {
        Answer::State(state) => Some(state),
        _ => None,
    };
    let idle_since = timestamp(IDLE_SINCE_ANNOTATION);
    let state = state(&classified.state, gate, idle_since.is_some());
    let idle_for = match gate_state {
        Some(s) => s.idle_for_ms.map(Duration::from_millis),
        None if matches!(state, State::Idle | State::Ready) => idle_since.map(|t| since(t, now)),
        None => None,
    };
    let (expires_at, kept) = match state {
        State::Busy => (None, Some("busy".to_owned())),
        State::Idle | State::Ready => match annotations.get(KEPT_ANNOTATION) {
            Some(hold) => (None, Some(hold_name(hold))),
            None => (timestamp(EXPIRES_AT_ANNOTATION), None),
        },
        _ => (None, None),
    };
    let reason = match &classified.state {
        InstanceState::Failed { reason, message } => Some(format!("{reason}: {message}")),
        _ => None,
    };
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    InstanceReport {
        name: classified.name,
        state,
        reason,
        in_flight: gate_state.map(|s| s.in_flight),
        waiting: gate_state.map(|s| s.waiting),
        served: gate_state.map(|s| s.started),
        idle_for_ms: idle_for,
        expires_at: expires_at.map(|t| t.to_string()),
        expires_in_seconds: expires_at.map(|t| t.as_second() - now.as_second()),
        kept,
        cold_start: annotations
            .get(COLD_START_ANNOTATION)
            .and_then(|a| a.parse::<Breakdown>().ok())
            .map(|b| ColdStart {
                total_ms: b.total,
                schedule_ms: b.schedule,
                start_ms: b.start,
                ready_ms: b.ready,
            }),
        created_at: created.map(|t| t.to_string()),
        age_seconds: created.map(|t| since(t, now).as_secs()),
    }
}

/// starting / busy / idle / draining (and the rarer ready, terminating,
/// failed): the pod says which phase, the gate whether a ready one is busy.
pub fn state(pod: &InstanceState, gate: &Answer, annotated_idle: bool) -> State {
    match pod {
        InstanceState::Starting => State::Starting,
        InstanceState::Draining { .. } => State::Draining,
        InstanceState::Terminating => State::Terminating,
        InstanceState::Failed { .. } => State::Failed,
        InstanceState::Ready { .. } => match gate {
            Answer::State(s) if s.in_flight > 0 || s.waiting > 0 => State::Busy,
            Answer::State(_) => State::Idle,
            // The controller writes idle-since only on an idle instance.
            _ if annotated_idle => State::Idle,
            _ => State::Ready,
        },
    }
}

/// Every hold the autoscaler can record, to read its annotation back.
const HOLDS: [Hold; 5] = [
    Hold::MinInstances,
    Hold::WarmInstances,
    Hold::Demand,
    Hold::Panic,
    Hold::Observing,
];

/// The short name of the hold behind a `thaw.dev/kept` annotation (its text
/// as written when it is not one this build knows).
fn hold_name(annotation: &str) -> String {
    HOLDS
        .iter()
        .find(|h| h.to_string() == annotation)
        .map_or_else(|| annotation.to_owned(), |h| short(*h).to_owned())
}

fn short(hold: Hold) -> &'static str {
    match hold {
        Hold::MinInstances => "minInstances",
        Hold::WarmInstances => "warmInstances",
        Hold::Demand => "demand",
        Hold::Panic => "panic",
        Hold::Observing => "observing",
    }
}

/// `why` for the gates that could not be read, said once for all of them.
fn gate_error(pods: &[Pod], gates: &GateAnswers) -> Option<String> {
    let errors: Vec<&str> = pods
        .iter()
        .filter_map(|p| match gates.get(p.metadata.name.as_deref()?)? {
            Answer::Unreachable(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    let first = errors.first()?;
    let whose = match errors.len() {
        1 => "1 instance".to_owned(),
        n => format!("{n} instances"),
    };
    Some(format!("the gate of {whose} could not be read: {first}"))
}

/// `now - then`, zero when `then` is in the future.
fn since(then: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(then)).unwrap_or(Duration::ZERO)
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn opt_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_none(),
    }
}
