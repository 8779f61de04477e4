//! How the activator learns the world: reflector watches of Functions and
//! of instance pods (label `thaw.dev/function`), applied to the
//! [`Registry`] as they come. No request ever calls the API server.
//!
//! Functions are watched through [`DeserializeGuard`], so one Function the
//! activator cannot decode is answered with 503 naming the problem instead
//! of wedging the watch for every other Function.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        WatchStreamExt, reflector,
        watcher::{self, Event},
    },
};
use thaw_api::{
    Function,
    keys::{
        DRAINING_SINCE_ANNOTATION, FUNCTION_CONTAINER, FUNCTION_LABEL, GATE_CONTAINER,
        GATE_PORT_NAME, SPEC_HASH_LABEL,
    },
    spec_hash,
};
use tracing::{debug, info, warn};

use crate::{
    place::Limits,
    registry::Registry,
    throttle::{FunctionConfig, PodInfo},
};

/// What the activator needs of a Function, read through the spec's
/// accessors (the same reading the controller uses); `None` without a uid.
pub fn function_config(function: &Function) -> Option<FunctionConfig> {
    let spec = &function.spec;
    Some(FunctionConfig {
        uid: function.metadata.uid.clone()?,
        hash: spec_hash(spec),
        limits: Limits {
            concurrency: spec.concurrency(),
            target: spec.target(),
        },
        max_pending: spec.max_pending(),
        max_wait: spec.max_wait(),
        timeout: spec.timeout(),
        port: spec.port(),
        max_requests: spec.max_requests_per_instance(),
    })
}

/// The function a pod is an instance of, as `(namespace, function)`, and
/// what the activator needs of it; `None` for a pod that is not one.
pub fn pod_info(pod: &Pod) -> Option<(String, String, PodInfo)> {
    let namespace = pod.metadata.namespace.clone()?;
    let function = pod.labels().get(FUNCTION_LABEL)?.clone();
    let status = pod.status.as_ref();
    let container = pod.spec.as_ref().and_then(|spec| {
        spec.containers
            .iter()
            .find(|c| c.name == FUNCTION_CONTAINER)
            .or(spec.containers.first())
    });
    // Requests go to the instance's gate, which holds the hard limit; its
    // port opens only once the function is ready, so a TCP connect is the
    // readiness check. A pod without a gate (built by an older operator) is
    // reached directly.
    let gate_port = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.init_containers.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.name == GATE_CONTAINER)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(GATE_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok());
    let info = PodInfo {
        name: pod.metadata.name.clone()?,
        uid: pod.metadata.uid.clone()?,
        ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok()),
        port: gate_port.or_else(|| {
            container
                .and_then(|c| c.ports.as_ref()?.first())
                .and_then(|p| u16::try_from(p.container_port).ok())
        }),
        readiness_path: match gate_port {
            Some(_) => None,
            None => {
                container.and_then(|c| c.readiness_probe.as_ref()?.http_get.as_ref()?.path.clone())
            }
        },
        owner_uid: pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone()),
        hash: pod.labels().get(SPEC_HASH_LABEL).cloned(),
        kubelet_ready: status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True"),
        draining: pod.annotations().contains_key(DRAINING_SINCE_ANNOTATION),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        finished: matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Failed" | "Succeeded")
        ),
    };
    Some((namespace, function, info))
}

/// Both watches have listed everything once.
#[derive(Default)]
pub struct Synced {
    functions: AtomicBool,
    pods: AtomicBool,
    /// Functions and pods both synced.
    pub all: Arc<AtomicBool>,
}

impl Synced {
    fn update(&self) {
        let all = self.functions.load(Ordering::Acquire) && self.pods.load(Ordering::Acquire);
        if all && !self.all.swap(true, Ordering::AcqRel) {
            info!("watch caches synced: serving");
        }
    }
}

/// Watches Functions and instance pods (in `namespace`, or everywhere)
/// into `registry` until the process ends. `synced.all` turns true once
/// both were listed.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    registry: Arc<Registry>,
    synced: Arc<Synced>,
) {
    let (functions, pods) = match &namespace {
        Some(ns) => (
            Api::<DeserializeGuard<Function>>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let (function_store, function_writer) = reflector::store();
    let function_events = reflector::reflector(
        function_writer,
        watcher::watcher(functions, watcher::Config::default()).default_backoff(),
    );
    let (pod_store, pod_writer) = reflector::store();
    let pod_events = reflector::reflector(
        pod_writer,
        watcher::watcher(pods, watcher::Config::default().labels(FUNCTION_LABEL))
            .modify(|pod| pod.managed_fields_mut().clear())
            .default_backoff(),
    );
    tokio::join!(
        apply_functions(function_events, &registry, &synced),
        apply_pods(pod_events, &registry, &synced),
    );
    // The caches are the reflectors' own; the registry is what requests read.
    drop((function_store, pod_store));
}

async fn apply_functions(
    events: impl Stream<Item = Result<Event<DeserializeGuard<Function>>, watcher::Error>>,
    registry: &Registry,
    synced: &Synced,
) {
    futures::pin_mut!(events);
    let mut listed: Option<HashSet<(String, String)>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(guard)) => apply_function(registry, &guard),
            Ok(Event::Delete(guard)) => {
                if let Some((namespace, name)) = guard_key(&guard) {
                    debug!(function = %format!("{namespace}/{name}"), "Function deleted");
                    registry.set_function(&namespace, &name, None);
                }
            }
            Ok(Event::Init) => listed = Some(HashSet::new()),
            Ok(Event::InitApply(guard)) => {
                apply_function(registry, &guard);
                if let (Some(listed), Some(key)) = (listed.as_mut(), guard_key(&guard)) {
                    listed.insert(key);
                }
            }
            Ok(Event::InitDone) => {
                let listed = listed.take().unwrap_or_default();
                for (namespace, name) in registry.keys() {
                    if !listed.contains(&(namespace.clone(), name.clone())) {
                        registry.set_function(&namespace, &name, None);
                    }
                }
                synced.functions.store(true, Ordering::Release);
                synced.update();
            }
            Err(error) => warn!(%error, "watching Functions"),
        }
    }
}

fn guard_key(guard: &DeserializeGuard<Function>) -> Option<(String, String)> {
    let meta = match &guard.0 {
        Ok(function) => &function.metadata,
        Err(invalid) => &invalid.metadata,
    };
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn apply_function(registry: &Registry, guard: &DeserializeGuard<Function>) {
    let Some((namespace, name)) = guard_key(guard) else {
        return;
    };
    match &guard.0 {
        Ok(function) => match function_config(function) {
            Some(config) => registry.set_function(&namespace, &name, Some(config)),
            None => registry.set_invalid(&namespace, &name, "it has no uid".into()),
        },
        Err(invalid) => {
            warn!(function = %format!("{namespace}/{name}"), error = %invalid.error, "undecodable Function");
            registry.set_invalid(&namespace, &name, invalid.error.clone());
        }
    }
}

async fn apply_pods(
    events: impl Stream<Item = Result<Event<Pod>, watcher::Error>>,
    registry: &Registry,
    synced: &Synced,
) {
    futures::pin_mut!(events);
    // Where each pod (by uid) was filed, so a relabelled or deleted pod is
    // removed from the right function.
    let mut known: HashMap<String, (String, String, String)> = HashMap::new();
    let mut listed: Option<HashSet<String>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(pod)) => apply_pod(registry, &mut known, &pod),
            Ok(Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref()
                    && let Some((namespace, function, name)) = known.remove(uid)
                {
                    registry.remove_pod(&namespace, &function, &name);
                }
            }
            Ok(Event::Init) => listed = Some(HashSet::new()),
            Ok(Event::InitApply(pod)) => {
                apply_pod(registry, &mut known, &pod);
                if let (Some(listed), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                    listed.insert(uid);
                }
            }
            Ok(Event::InitDone) => {
                let listed = listed.take().unwrap_or_default();
                known.retain(|uid, (namespace, function, name)| {
                    let keep = listed.contains(uid);
                    if !keep {
                        registry.remove_pod(namespace, function, name);
                    }
                    keep
                });
                synced.pods.store(true, Ordering::Release);
                synced.update();
            }
            Err(error) => warn!(%error, "watching instance pods"),
        }
    }
}

fn apply_pod(
    registry: &Registry,
    known: &mut HashMap<String, (String, String, String)>,
    pod: &Pod,
) {
    let Some((namespace, function, info)) = pod_info(pod) else {
        return;
    };
    let place = (namespace.clone(), function.clone(), info.name.clone());
    if let Some(previous) = known.insert(info.uid.clone(), place.clone())
        && previous != place
    {
        registry.remove_pod(&previous.0, &previous.1, &previous.2);
    }
    registry.upsert_pod(&namespace, &function, info);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_function_becomes_its_config() {
        let mut function: Function = serde_yaml::from_str(
            "apiVersion: thaw.dev/v1alpha1\nkind: Function\nmetadata: {name: f, namespace: ns, uid: u1}\nspec: {image: x, concurrency: 4, timeout: 1500ms, port: 9000, scaling: {target: 0.5}, queue: {maxPending: 7, maxWait: 2s}}\n",
        )
        .unwrap();
        let config = function_config(&function).unwrap();
        assert_eq!(config.uid, "u1");
        assert_eq!(config.hash, spec_hash(&function.spec));
        assert_eq!(
            config.limits,
            Limits {
                concurrency: 4,
                target: 0.5
            }
        );
        assert_eq!(config.max_pending, 7);
        assert_eq!(config.max_wait, Duration::from_secs(2));
        assert_eq!(config.timeout, Duration::from_millis(1500));
        assert_eq!(config.port, 9000);
        // Defaults, and a duration stored before validation existed.
        function.spec.timeout = "soon".into();
        assert_eq!(
            function_config(&function).unwrap().timeout,
            Duration::from_secs(30)
        );
        // A concurrency admission would refuse reads as a limit, as in the
        // controller: the spec's accessors are the one reading.
        function.spec.concurrency = -4;
        assert_eq!(function_config(&function).unwrap().limits.concurrency, 1);
        function.metadata.uid = None;
        assert!(function_config(&function).is_none());
    }

    #[test]
    fn an_instance_pod_becomes_its_info() {
        let pod: Pod = serde_yaml::from_str(
            r#"
metadata:
  name: f-abcde
  namespace: ns
  uid: p1
  labels: {thaw.dev/function: f, thaw.dev/spec-hash: h1}
  annotations: {thaw.dev/draining-since: "2026-01-01T00:00:00Z"}
  ownerReferences:
  - {apiVersion: thaw.dev/v1alpha1, kind: Function, name: f, uid: u1, controller: true}
spec:
  containers:
  - name: function
    image: x
    ports: [{containerPort: 9000}]
    readinessProbe: {httpGet: {path: /healthz, port: 9000}}
status:
  phase: Running
  podIP: 10.244.0.7
  conditions: [{type: Ready, status: "True"}]
"#,
        )
        .unwrap();
        let (namespace, function, info) = pod_info(&pod).unwrap();
        assert_eq!((namespace.as_str(), function.as_str()), ("ns", "f"));
        assert_eq!(
            info,
            PodInfo {
                name: "f-abcde".into(),
                uid: "p1".into(),
                ip: Some("10.244.0.7".parse().unwrap()),
                port: Some(9000),
                readiness_path: Some("/healthz".into()),
                owner_uid: Some("u1".into()),
                hash: Some("h1".into()),
                kubelet_ready: Some(true),
                draining: true,
                terminating: false,
                finished: false,
            }
        );
    }

    #[test]
    fn a_pending_or_failed_pod() {
        let pending: Pod = serde_yaml::from_str(
            "metadata: {name: f-1, namespace: ns, uid: p1, labels: {thaw.dev/function: f}, deletionTimestamp: '2026-01-01T00:00:00Z'}\nspec: {containers: [{name: function, image: x, readinessProbe: {tcpSocket: {port: 8080}}}]}\nstatus: {phase: Failed}\n",
        )
        .unwrap();
        let (_, _, info) = pod_info(&pending).unwrap();
        assert_eq!(info.ip, None);
        assert_eq!(info.port, None);
        assert_eq!(info.readiness_path, None);
        assert_eq!(info.owner_uid, None);
        assert_eq!(info.hash, None);
        assert_eq!(info.kubelet_ready, None);
        assert!(info.terminating && info.finished && !info.draining);
        let unlabelled: Pod =
            serde_yaml::from_str("metadata: {name: x, namespace: ns, uid: p2}\n").unwrap();
        assert!(pod_info(&unlabelled).is_none());
    }
}
