//! One reconcile of one Function: classify its pods, let the autoscaler
//! decide, carry the decision out pod by pod, then write the Service and the
//! status.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Pod, Service},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use serde_json::json;
use thaw_api::{Function, FunctionStatus};
use thaw_core::{Decision, FunctionKey, Phase, Settings};

use crate::{
    actions::{annotate_expiries, create_pod, delete_pod, drain_pod, publish, record_cold_start},
    coldstart::Breakdown,
    context::{Context, FIELD_MANAGER},
    error::Error,
    gate,
    instance::{Instance, InstanceState, classify},
    memory::FunctionMemory,
    pod::spec_hash,
    runtime_class,
    service::{ServicePlan, function_service, plan_service},
    status::{Observed, Trouble, build_status},
    wallclock::{instant_at, round_to_second, wall_at},
};

/// Longest a reconcile waits without a reason to wake up earlier.
const IDLE_REQUEUE: Duration = Duration::from_secs(300);
/// How soon a Function with a starting instance is reconciled again.
const STARTING_RECHECK: Duration = Duration::from_secs(2);
/// Shortest requeue, so a wake-up due now cannot spin.
const MIN_REQUEUE: Duration = Duration::from_millis(100);

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
    let pods = owned_pods(&ctx, &function, &key);
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
    // The instances' own gates have the last word on reaping and deleting.
    let vetted = gate::vet(&ctx.gates, &pods, &plan.decision).await;
    for action in vetted.drain {
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
    for action in vetted.delete {
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
    annotate_expiries(&ctx, &pod_api, &pods, &plan.decision, now, wall).await?;
    let conflict = apply_service(&ctx, &function, &namespace, &name).await?;
    apply_status(&ctx, &function, &key, &plan, conflict, now, wall).await?;
    record_gauges(&ctx, &namespace, &name, &plan.decision);

    // A starting instance is looked at again soon: the pod cache and the
    // watch that triggers reconciles are separate streams, so the change
    // that woke this reconcile (say, the pod stuck on its image) may reach
    // the cache just after it read the pod.
    let starting = instances
        .iter()
        .any(|i| i.state == InstanceState::Starting)
        .then_some(STARTING_RECHECK);
    let wake = [
        plan.decision
            .next_wakeup
            .map(|at| at.saturating_duration_since(now)),
        plan.backoff,
        vetted.recheck,
        starting,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(IDLE_REQUEUE);
    Ok(Action::requeue(wake.clamp(MIN_REQUEUE, IDLE_REQUEUE)))
}

/// Instance pods of this Function (by label and controller owner) from the
/// cache, found through the index: only this Function's pods are read.
fn owned_pods(ctx: &Context, function: &Function, key: &FunctionKey) -> Vec<Arc<Pod>> {
    let uid = function.metadata.uid.as_deref();
    ctx.pod_index
        .pods_of(key)
        .iter()
        .filter_map(|name| ctx.pods.get(&ObjectRef::new(name).within(&key.namespace)))
        .filter(|pod| {
            pod.owner_references()
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
    let missing_runtime_class = runtime_class::missing(&function.spec, |name| {
        ctx.runtime_classes.get(&ObjectRef::new(name)).is_some()
    });
    let create = if backoff.is_some() || missing_runtime_class.is_some() {
        0
    } else {
        decision.create
    };
    if create > 0 || !decision.drain.is_empty() || !decision.delete.is_empty() {
        memory.last_action = Some(decision.summary.clone());
    }
    let trouble = if missing_runtime_class.is_some() {
        missing_runtime_class
    } else if any_ready {
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

/// The scaling settings of a Function, read through the spec's accessors
/// (the same reading the activator uses).
pub fn settings(function: &Function) -> Settings {
    let spec = &function.spec;
    Settings {
        concurrency: spec.concurrency(),
        target: spec.target(),
        min_instances: spec.min_instances(),
        max_instances: spec.max_instances(),
        warm_instances: spec.warm_instances(),
        keep_alive: spec.keep_alive(),
        timeout: spec.timeout(),
        max_requests_per_instance: spec.max_requests_per_instance(),
    }
}

/// Creates or updates the Function's Service, unless a Service of that
/// name is not this Function's: then it is left alone and the conflict
/// returned for the status. A Service the cache shows as already right costs
/// no API request.
async fn apply_service(
    ctx: &Context,
    function: &Function,
    namespace: &str,
    name: &str,
) -> Result<Option<Trouble>, Error> {
    let api = Api::<Service>::namespaced(ctx.client.clone(), namespace);
    let failed = |source| Error::ApplyService {
        name: name.to_owned(),
        source,
    };
    let service = function_service(function, &ctx.config.activator_host);
    let live = ctx.services.get(&ObjectRef::new(name).within(namespace));
    if live.is_some_and(|live| service_is_current(&live, &service)) {
        return Ok(None);
    }
    // Not known to be right: read it (the cache holds only thaw's Services,
    // not an unrelated one of the same name) before touching anything.
    let existing = api.get_opt(name).await.map_err(failed)?;
    match plan_service(function, existing.as_ref()) {
        // A create, not an apply: if another Service appeared meanwhile it
        // fails instead of taking that one over.
        ServicePlan::Create => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            ctx.metrics.writes.with_label_values(&["service"]).inc();
            api.create(&params, &service).await.map_err(failed)?;
        }
        ServicePlan::Update => {
            ctx.metrics.writes.with_label_values(&["service"]).inc();
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&service),
            )
            .await
            .map_err(failed)?;
        }
        ServicePlan::Conflict(trouble) => return Ok(Some(trouble)),
    }
    Ok(None)
}

/// Whether `live` has everything `desired` sets: its labels, its owner, and
/// the spec fields the controller owns (the API server fills in others).
pub fn service_is_current(live: &Service, desired: &Service) -> bool {
    let labels_kept = desired.metadata.labels.iter().flatten().all(|(k, v)| {
        live.metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(k))
            == Some(v)
    });
    let owned = desired
        .metadata
        .owner_references
        .iter()
        .flatten()
        .all(|owner| live.owner_references().contains(owner));
    let (Some(live_spec), Some(spec)) = (&live.spec, &desired.spec) else {
        return false;
    };
    let ports = |spec: &k8s_openapi::api::core::v1::ServiceSpec| {
        spec.ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port, p.protocol.clone()))
            .collect::<Vec<_>>()
    };
    labels_kept
        && owned
        && live_spec.type_ == spec.type_
        && live_spec.external_name == spec.external_name
        && ports(live_spec) == ports(spec)
}

async fn apply_status(
    ctx: &Context,
    function: &Function,
    key: &FunctionKey,
    plan: &Plan,
    service_conflict: Option<Trouble>,
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
        trouble: plan.trouble.clone().or(service_conflict),
        scaling: plan.last_action.clone(),
        panic: plan.decision.panic,
        previous: function.status.as_ref(),
        now: wall,
    });
    if function.status.as_ref() == Some(&status) {
        return Ok(());
    }
    // The cache may not show our last write yet (a reconcile woken by
    // another event): writing the same again would cost a request for
    // nothing.
    if ctx
        .memory()
        .get(key)
        .is_some_and(|m| m.status_written.is_echo(function.status.as_ref(), &status))
    {
        return Ok(());
    }
    ctx.metrics.writes.with_label_values(&["status"]).inc();
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
    ctx.memory()
        .entry(key.clone())
        .or_default()
        .status_written
        .record(function.status.clone(), status);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn function() -> Function {
        serde_yaml::from_str(
            "apiVersion: thaw.dev/v1alpha1\nkind: Function\nmetadata: {name: hello, namespace: ns, uid: u1}\nspec: {image: x}\n",
        )
        .expect("function")
    }

    #[test]
    fn a_service_as_the_api_server_returns_it_is_current() {
        let desired = function_service(&function(), "act.svc");
        // What the API server adds does not make it differ.
        let mut live = desired.clone();
        live.metadata.resource_version = Some("7".into());
        live.metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "a".into());
        if let Some(spec) = live.spec.as_mut() {
            spec.session_affinity = Some("None".into());
        }
        assert!(service_is_current(&live, &desired));
    }

    #[test]
    fn a_changed_service_is_not_current() {
        let desired = function_service(&function(), "act.svc");
        let changes: [fn(&mut Service); 4] = [
            |s| s.metadata.labels = None,
            |s| s.metadata.owner_references = None,
            |s| {
                if let Some(spec) = s.spec.as_mut() {
                    spec.external_name = Some("elsewhere".into());
                }
            },
            |s| {
                if let Some(spec) = s.spec.as_mut() {
                    spec.ports = None;
                }
            },
        ];
        for change in changes {
            let mut live = desired.clone();
            change(&mut live);
            assert!(!service_is_current(&live, &desired), "{live:?}");
        }
        assert!(!service_is_current(
            &function_service(&function(), "other"),
            &desired
        ));
    }
}
