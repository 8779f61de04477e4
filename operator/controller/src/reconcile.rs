//! One reconcile of one Function: classify its pods, let the autoscaler
//! decide, carry the decision out pod by pod, then write the Service and the
//! status.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Pod, Service},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;
use thaw_api::{
    Function, FunctionStatus,
    keys::{
        COLD_START_ANNOTATION, DRAINING_SINCE_ANNOTATION, EXPIRES_AT_ANNOTATION, FUNCTION_LABEL,
        IDLE_SINCE_ANNOTATION, KEPT_ANNOTATION,
    },
};
use thaw_core::{Decision, FunctionKey, Phase, Settings};
use tracing::{info, warn};

use crate::{
    coldstart::{Breakdown, Timeline},
    context::{Context, FIELD_MANAGER},
    error::Error,
    instance::{Instance, InstanceState, classify},
    memory::FunctionMemory,
    pod::{instance_pod, spec_hash},
    service::function_service,
    status::{Observed, Trouble, build_status},
};

/// Longest a reconcile waits without a reason to wake up earlier.
const IDLE_REQUEUE: Duration = Duration::from_secs(300);
/// Shortest requeue, so a wake-up due now cannot spin.
const MIN_REQUEUE: Duration = Duration::from_millis(100);
/// Annotations are rewritten only when they move more than this, so a
/// prediction that jitters by milliseconds does not cost a write.
const ANNOTATION_SLACK: Duration = Duration::from_secs(1);

/// What one reconcile will do, decided under the locks, carried out after.
struct Plan {
    decision: Decision,
    create: u32,
    crashed: Vec<String>,
    trouble: Option<Trouble>,
    backoff: Option<Duration>,
    /// Instances that became ready since the last reconcile, with their breakdown.
    cold_starts: Vec<(String, Breakdown)>,
    /// The last decision that acted, for the `Scaling` condition.
    last_action: Option<String>,
}

/// Brings one Function's pool, Service and status in line with its spec and
/// the autoscaler's decision.
pub async fn reconcile(function: Arc<Function>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&[] as &[&str])
        .start_timer();
    let namespace = function
        .namespace()
        .ok_or(Error::MissingField("namespace"))?;
    let name = function.name_any();
    ctx.metrics
        .reconciles
        .with_label_values(&[&namespace, &name])
        .inc();
    if function.metadata.deletion_timestamp.is_some() {
        // Garbage collection deletes the pods, each with its grace period,
        // so requests in flight finish.
        return Ok(Action::await_change());
    }
    let key = FunctionKey::new(&namespace, &name);
    let now = ctx.clock.now();
    let wall = Timestamp::now();
    let pods = owned_pods(&ctx, &function, &namespace, &name);
    let hash = spec_hash(&function.spec);
    let instances: Vec<Instance> = pods.iter().map(|p| classify(p, &hash)).collect();
    let plan = plan(&ctx, &function, &key, &instances, &pods, now, wall);

    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    for pod in &plan.crashed {
        delete_pod(&ctx, &pod_api, &pods, pod).await?;
    }
    for _ in 0..plan.create {
        create_pod(&ctx, &function, &pod_api, &key, &plan.decision.summary, now).await?;
    }
    for action in &plan.decision.drain {
        if matches!(action.reason, thaw_core::Reason::KeepAlive { .. }) {
            ctx.metrics
                .reaps
                .with_label_values(&[&namespace, &name])
                .inc();
        }
        drain_pod(
            &ctx,
            &function,
            &pod_api,
            &key,
            &action.instance,
            &action.to_string(),
            wall,
            now,
        )
        .await?;
    }
    for action in &plan.decision.delete {
        delete_pod(&ctx, &pod_api, &pods, &action.instance).await?;
        ctx.memory()
            .entry(key.clone())
            .or_default()
            .deleted
            .insert(action.instance.clone(), now);
        ctx.metrics
            .decisions
            .with_label_values(&[&namespace, &name, "delete"])
            .inc();
        publish(
            &ctx,
            &function,
            EventType::Normal,
            "Deleted",
            "Delete",
            action.to_string(),
        )
        .await;
    }
    for (pod, breakdown) in &plan.cold_starts {
        record_cold_start(&ctx, &function, &pod_api, &key, pod, breakdown).await?;
    }
    annotate_expiries(&pod_api, &pods, &plan.decision, now, wall).await?;
    apply_service(&ctx, &function, &namespace, &name).await?;
    apply_status(&ctx, &function, &key, &plan, now, wall).await?;
    record_gauges(&ctx, &namespace, &name, &plan.decision);

    let wake = [
        plan.decision
            .next_wakeup
            .map(|at| at.saturating_duration_since(now)),
        plan.backoff,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(IDLE_REQUEUE);
    Ok(Action::requeue(wake.clamp(MIN_REQUEUE, IDLE_REQUEUE)))
}

/// Instance pods of this Function (by label and controller owner) from the cache.
fn owned_pods(ctx: &Context, function: &Function, namespace: &str, name: &str) -> Vec<Arc<Pod>> {
    let uid = function.metadata.uid.as_deref();
    ctx.pods
        .state()
        .into_iter()
        .filter(|pod| {
            pod.metadata.namespace.as_deref() == Some(namespace)
                && pod.labels().get(FUNCTION_LABEL).map(String::as_str) == Some(name)
                && pod
                    .owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
        })
        .collect()
}

/// The decision, from the pods, the controller's memory and the stats.
fn plan(
    ctx: &Context,
    function: &Function,
    key: &FunctionKey,
    instances: &[Instance],
    pods: &[Arc<Pod>],
    now: Instant,
    wall: Timestamp,
) -> Plan {
    let mut memory = ctx.memory();
    let memory = memory.entry(key.clone()).or_default();
    let in_cache: HashSet<String> = instances.iter().map(|i| i.name.clone()).collect();
    let draining: HashSet<String> = instances
        .iter()
        .filter(|i| matches!(i.state, InstanceState::Draining { .. }))
        .map(|i| i.name.clone())
        .collect();
    memory.settle(&in_cache, &draining, now);

    let mut crashed = Vec::new();
    let mut stuck = None;
    for instance in instances {
        if let InstanceState::Failed { reason, message } = &instance.state {
            if is_crash(instance) {
                crashed.push(instance.name.clone());
                if memory.counted_failures.insert(instance.name.clone()) {
                    memory.record_crash(message.clone(), now);
                    ctx.metrics
                        .instance_failures
                        .with_label_values(&[&key.namespace, &key.name, reason])
                        .inc();
                }
            } else if stuck.is_none() {
                stuck = Some(Trouble {
                    reason: reason.clone(),
                    message: format!("instance {}: {message}", instance.name),
                });
            }
        }
    }
    let any_ready = instances
        .iter()
        .any(|i| i.current && matches!(i.state, InstanceState::Ready { .. }));
    if any_ready {
        memory.reset_crashes();
    }

    let mut cold_starts = Vec::new();
    for pod in pods {
        let Some(name) = pod.metadata.name.as_deref() else {
            continue;
        };
        if let Some(timeline) = memory.timelines.get_mut(name) {
            timeline.observe(pod, now);
            if let Some(breakdown) = timeline.breakdown() {
                cold_starts.push((name.to_owned(), breakdown));
                memory.timelines.remove(name);
            }
        }
    }

    let pool = core_pool(instances, memory, now, wall);
    let settings = settings(function);
    let decision = ctx.autoscaler().decide(key, &settings, &pool, now);
    let backoff = memory.backoff_remaining(now);
    let create = if backoff.is_some() {
        0
    } else {
        decision.create
    };
    if create > 0 || !decision.drain.is_empty() || !decision.delete.is_empty() {
        memory.last_action = Some(decision.summary.clone());
    }
    let trouble = if any_ready {
        None
    } else if let Some(stuck) = stuck {
        Some(stuck)
    } else {
        memory.last_crash.as_ref().map(|last| Trouble {
            reason: "InstancesFailing".into(),
            message: format!(
                "{} instance(s) failed since the last ready one; last: {last}{}",
                memory.crashes,
                backoff
                    .map(|d| format!("; next attempt in {}", thaw_core::GoStyle(d)))
                    .unwrap_or_default()
            ),
        })
    };
    Plan {
        decision,
        create,
        crashed,
        trouble,
        backoff,
        cold_starts,
        last_action: memory.last_action.clone(),
    }
}

/// A failed instance that exited (as opposed to one stuck waiting for its
/// image): it is deleted and replaced after a backoff.
fn is_crash(instance: &Instance) -> bool {
    matches!(&instance.state, InstanceState::Failed { reason, .. }
        if !matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "CreateContainerConfigError" | "CreateContainerError"))
}

/// The pool as the scaling core sees it. Writes not yet in the cache count
/// as done; an instance stuck pulling its image holds its place as starting,
/// so a bad image costs one pod, not an endless create/delete churn.
fn core_pool(
    instances: &[Instance],
    memory: &FunctionMemory,
    now: Instant,
    wall: Timestamp,
) -> Vec<thaw_core::Instance> {
    let mut pool: Vec<thaw_core::Instance> = instances
        .iter()
        .filter(|i| !memory.deleted.contains_key(&i.name))
        .filter_map(|i| {
            let phase = if let Some(since) = memory.drained.get(&i.name) {
                Phase::Draining { since: *since }
            } else {
                match &i.state {
                    InstanceState::Starting => Phase::Starting,
                    InstanceState::Failed { .. } if !is_crash(i) => Phase::Starting,
                    InstanceState::Ready { since } => Phase::Ready {
                        since: instant_at(*since, wall, now),
                    },
                    InstanceState::Draining { since } => Phase::Draining {
                        since: instant_at(*since, wall, now),
                    },
                    InstanceState::Failed { .. } | InstanceState::Terminating => return None,
                }
            };
            let instance =
                thaw_core::Instance::new(&i.name, phase, instant_at(i.created, wall, now));
            Some(if i.current {
                instance
            } else {
                instance.outdated()
            })
        })
        .collect();
    for (name, created) in &memory.created {
        if !instances.iter().any(|i| &i.name == name) {
            pool.push(thaw_core::Instance::new(name, Phase::Starting, *created));
        }
    }
    pool
}

/// The scaling settings of a Function. The CRD validates every duration;
/// should one still fail to parse (an object stored before validation
/// existed), the API's default stands in.
pub fn settings(function: &Function) -> Settings {
    let spec = &function.spec;
    let defaults = Settings::default();
    let to_u32 = |n: i32| u32::try_from(n).unwrap_or(0);
    Settings {
        concurrency: to_u32(spec.concurrency),
        target: spec.scaling.target,
        min_instances: to_u32(spec.scaling.min_instances),
        max_instances: to_u32(spec.scaling.max_instances),
        warm_instances: to_u32(spec.scaling.warm_instances),
        keep_alive: spec
            .scaling
            .keep_alive
            .parse()
            .unwrap_or(defaults.keep_alive),
        timeout: spec.timeout.parse().unwrap_or(defaults.timeout),
    }
}

/// The monotonic instant of wall-clock time `at`, given that `wall` is `now`.
pub fn instant_at(at: Timestamp, wall: Timestamp, now: Instant) -> Instant {
    let offset = wall.duration_since(at);
    match Duration::try_from(offset) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(now),
        Err(_) => now + Duration::try_from(-offset).unwrap_or_default(),
    }
}

/// The wall-clock time of monotonic instant `at`, given that `now` is `wall`.
pub fn wall_at(at: Instant, now: Instant, wall: Timestamp) -> Timestamp {
    let offset = if at >= now {
        SignedDuration::try_from(at - now).unwrap_or_default()
    } else {
        -SignedDuration::try_from(now - at).unwrap_or_default()
    };
    wall.checked_add(offset).unwrap_or(wall)
}

async fn create_pod(
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
    let pod = instance_pod(function, &pod_name);
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
async fn drain_pod(
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
    match api
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(source) => {
            return Err(Error::DrainPod {
                pod: pod.to_owned(),
                source,
            });
        }
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

async fn delete_pod(
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

/// Records a finished cold start: histograms, an annotation on the
/// instance and an event.
async fn record_cold_start(
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
    match api
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(source) => {
            return Err(Error::AnnotatePod {
                pod: pod.to_owned(),
                source,
            });
        }
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
async fn annotate_expiries(
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
        match api
            .patch(
                &expiry.instance,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::AnnotatePod {
                    pod: expiry.instance.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn round_to_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
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

async fn apply_service(
    ctx: &Context,
    function: &Function,
    namespace: &str,
    name: &str,
) -> Result<(), Error> {
    let service = function_service(function, &ctx.config.activator_host);
    Api::<Service>::namespaced(ctx.client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&service),
        )
        .await
        .map_err(|source| Error::ApplyService {
            name: name.to_owned(),
            source,
        })?;
    Ok(())
}

async fn apply_status(
    ctx: &Context,
    function: &Function,
    key: &FunctionKey,
    plan: &Plan,
    now: Instant,
    wall: Timestamp,
) -> Result<(), Error> {
    let last_request = ctx
        .autoscaler()
        .last_request(key)
        .map(|at| round_to_second(wall_at(at, now, wall)));
    let status: FunctionStatus = build_status(&Observed {
        generation: function.metadata.generation,
        url: format!(
            "http://{}.{}.{}",
            key.name, key.namespace, ctx.config.domain
        ),
        counts: plan.decision.counts,
        desired: plan.decision.desired,
        min_instances: settings(function).min_instances,
        last_request: last_request.or_else(|| {
            function
                .status
                .as_ref()
                .and_then(|s| s.last_request_time.as_ref().map(|t| t.0))
        }),
        trouble: plan.trouble.clone(),
        scaling: plan.last_action.clone(),
        panic: plan.decision.panic,
        previous: function.status.as_ref(),
        now: wall,
    });
    if function.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "thaw.dev/v1alpha1",
        "kind": "Function",
        "status": status,
    });
    Api::<Function>::namespaced(ctx.client.clone(), &key.namespace)
        .patch_status(
            &key.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::ApplyStatus)?;
    Ok(())
}

fn record_gauges(ctx: &Context, namespace: &str, name: &str, decision: &Decision) {
    let c = decision.counts;
    for (state, n) in [
        ("starting", c.starting),
        ("busy", c.busy),
        ("idle", c.idle),
        ("draining", c.draining),
    ] {
        ctx.metrics
            .instances
            .with_label_values(&[namespace, name, state])
            .set(i64::from(n));
    }
    ctx.metrics
        .desired
        .with_label_values(&[namespace, name])
        .set(i64::from(decision.desired));
    ctx.metrics
        .panic
        .with_label_values(&[namespace, name])
        .set(i64::from(decision.panic));
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

    #[test]
    fn wall_and_monotonic_times_convert_both_ways() {
        let now = Instant::now();
        let wall: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let earlier: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let at = instant_at(earlier, wall, now);
        assert_eq!(now.duration_since(at), Duration::from_secs(60));
        assert_eq!(wall_at(at, now, wall), earlier);
        let later = wall_at(now + Duration::from_secs(5), now, wall);
        assert_eq!(later.duration_since(wall), SignedDuration::from_secs(5));
    }

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
