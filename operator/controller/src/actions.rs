//! What a reconcile does to pods, one at a time, and the events it
//! publishes about it.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Resource,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::events::{Event, EventType},
};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;
use thaw_api::{
    Function,
    keys::{
        COLD_START_ANNOTATION, DRAINING_SINCE_ANNOTATION, EXPIRES_AT_ANNOTATION,
        IDLE_SINCE_ANNOTATION, KEPT_ANNOTATION,
    },
};
use thaw_core::{Decision, FunctionKey};
use tracing::{info, warn};

use crate::{
    coldstart::{Breakdown, Timeline},
    context::{Context, FIELD_MANAGER},
    error::Error,
    pod::instance_pod,
    wallclock::{round_to_second, wall_at},
};

/// Annotations are rewritten only when they move more than this, so a
/// prediction that jitters by milliseconds does not cost a write.
const ANNOTATION_SLACK: Duration = Duration::from_secs(1);

pub async fn create_pod(
    ctx: &Context,
    function: &Function,
    api: &Api<Pod>,
    key: &FunctionKey,
    why: &str,
    now: Instant,
) -> Result<(), Error> {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rng(), 5)
        .to_lowercase();
    let pod_name = format!("{}-{suffix}", key.name);
    let pod = instance_pod(function, &pod_name, &ctx.config.gate_image);
    ctx.metrics.writes.with_label_values(&["pod"]).inc();
    api.create(
        &PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        },
        &pod,
    )
    .await
    .map_err(|source| Error::CreatePod {
        pod: pod_name.clone(),
        source,
    })?;
    {
        let mut memory = ctx.memory();
        let memory = memory.entry(key.clone()).or_default();
        memory.created.insert(pod_name.clone(), now);
        memory
            .timelines
            .insert(pod_name.clone(), Timeline::new(now));
    }
    ctx.metrics
        .decisions
        .with_label_values(&[&key.namespace, &key.name, "create"])
        .inc();
    info!(function = %key, pod = %pod_name, "created instance: {why}");
    publish(
        ctx,
        function,
        EventType::Normal,
        "Created",
        "Create",
        format!("created instance {pod_name}: {why}"),
    )
    .await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub async fn drain_pod(
    ctx: &Context,
    function: &Function,
    api: &Api<Pod>,
    key: &FunctionKey,
    pod: &str,
    why: &str,
    wall: Timestamp,
    now: Instant,
) -> Result<(), Error> {
    let patch = json!({ "metadata": { "annotations": {
        DRAINING_SINCE_ANNOTATION: wall.to_string(),
        IDLE_SINCE_ANNOTATION: null,
        EXPIRES_AT_ANNOTATION: null,
    }}});
    if !merge_annotations(ctx, api, pod, &patch)
        .await
        .map_err(|source| Error::DrainPod {
            pod: pod.to_owned(),
            source,
        })?
    {
        return Ok(());
    }
    ctx.memory()
        .entry(key.clone())
        .or_default()
        .drained
        .insert(pod.to_owned(), now);
    ctx.metrics
        .decisions
        .with_label_values(&[&key.namespace, &key.name, "drain"])
        .inc();
    info!(function = %key, pod, "draining instance: {why}");
    publish(
        ctx,
        function,
        EventType::Normal,
        "Draining",
        "Drain",
        why.to_owned(),
    )
    .await;
    Ok(())
}

pub async fn delete_pod(
    ctx: &Context,
    api: &Api<Pod>,
    pods: &[Arc<Pod>],
    name: &str,
) -> Result<(), Error> {
    let uid = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .and_then(|p| p.metadata.uid.clone());
    let params = DeleteParams {
        // Never delete a pod of the same name that replaced the one decided on.
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    ctx.metrics.writes.with_label_values(&["pod"]).inc();
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(source) => {
            ctx.metrics.errors.with_label_values(&["delete_pod"]).inc();
            Err(Error::DeletePod {
                pod: name.to_owned(),
                source,
            })
        }
    }
}

/// Merges `patch` (a `{"metadata": {"annotations": ...}}` object) into the
/// pod; false when the pod is gone, which no caller treats as an error.
async fn merge_annotations(
    ctx: &Context,
    api: &Api<Pod>,
    pod: &str,
    patch: &serde_json::Value,
) -> Result<bool, kube::Error> {
    ctx.metrics.writes.with_label_values(&["pod"]).inc();
    match api
        .patch(pod, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(error),
    }
}

/// Records a finished cold start: histograms, an annotation on the
/// instance and an event.
pub async fn record_cold_start(
    ctx: &Context,
    function: &Function,
    api: &Api<Pod>,
    key: &FunctionKey,
    pod: &str,
    breakdown: &Breakdown,
) -> Result<(), Error> {
    for (phase, d) in [
        ("schedule", breakdown.schedule),
        ("start", breakdown.start),
        ("ready", breakdown.ready),
        ("total", breakdown.total),
    ] {
        ctx.metrics
            .cold_start
            .with_label_values(&[&key.namespace, &key.name, phase])
            .observe(d.as_secs_f64());
    }
    let patch =
        json!({ "metadata": { "annotations": { COLD_START_ANNOTATION: breakdown.to_string() }}});
    if !merge_annotations(ctx, api, pod, &patch)
        .await
        .map_err(|source| Error::AnnotatePod {
            pod: pod.to_owned(),
            source,
        })?
    {
        return Ok(());
    }
    publish(
        ctx,
        function,
        EventType::Normal,
        "InstanceReady",
        "ColdStart",
        format!("instance {pod} {breakdown}"),
    )
    .await;
    Ok(())
}

/// Writes `thaw.dev/idle-since` and `thaw.dev/expires-at` (or, for an idle
/// instance a floor keeps, `thaw.dev/kept`) on each ready instance when they
/// change, and removes them while it is busy.
pub async fn annotate_expiries(
    ctx: &Context,
    api: &Api<Pod>,
    pods: &[Arc<Pod>],
    decision: &Decision,
    now: Instant,
    wall: Timestamp,
) -> Result<(), Error> {
    for expiry in &decision.expiries {
        let Some(pod) = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(expiry.instance.as_str()))
        else {
            continue;
        };
        let current: BTreeMap<String, String> =
            pod.metadata.annotations.clone().unwrap_or_default();
        let wanted = |at: Option<Instant>| at.map(|at| round_to_second(wall_at(at, now, wall)));
        let idle_since = wanted(expiry.idle_since);
        let expires_at = wanted(expiry.expires_at);
        let kept = expiry
            .held
            .filter(|_| expiry.idle_since.is_some())
            .map(|hold| hold.to_string());
        if close_enough(current.get(IDLE_SINCE_ANNOTATION), idle_since)
            && close_enough(current.get(EXPIRES_AT_ANNOTATION), expires_at)
            && current.get(KEPT_ANNOTATION) == kept.as_ref()
        {
            continue;
        }
        let patch = json!({ "metadata": { "annotations": {
            IDLE_SINCE_ANNOTATION: idle_since.map(|t| t.to_string()),
            EXPIRES_AT_ANNOTATION: expires_at.map(|t| t.to_string()),
            KEPT_ANNOTATION: kept,
        }}});
        merge_annotations(ctx, api, &expiry.instance, &patch)
            .await
            .map_err(|source| Error::AnnotatePod {
                pod: expiry.instance.clone(),
                source,
            })?;
    }
    Ok(())
}

fn close_enough(current: Option<&String>, wanted: Option<Timestamp>) -> bool {
    match (current.and_then(|c| c.parse::<Timestamp>().ok()), wanted) {
        (None, None) => true,
        (Some(current), Some(wanted)) => {
            current.duration_since(wanted).unsigned_abs() <= ANNOTATION_SLACK
        }
        _ => false,
    }
}

/// Publishes an event about the Function; a failure to publish is logged,
/// never fatal: events are for people, the status is the record.
pub async fn publish(
    ctx: &Context,
    function: &Function,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    ctx.metrics.writes.with_label_values(&["event"]).inc();
    if let Err(error) = ctx
        .recorder
        .publish(&event, &function.object_ref(&()))
        .await
    {
        warn!(%error, "publishing event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    #[test]
    fn annotation_slack_ignores_jitter_only() {
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let shown = t.to_string();
        assert!(close_enough(Some(&shown), Some(t)));
        assert!(!close_enough(
            Some(&shown),
            Some(t + SignedDuration::from_secs(5))
        ));
        assert!(!close_enough(None, Some(t)));
        assert!(close_enough(None, None));
    }
}
