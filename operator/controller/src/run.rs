//! `thaw operator`: leader election, the controller, the autoscaler's stats
//! endpoint, metrics and health, and graceful shutdown.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{
    Api, Client, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{EventType, Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use kube_lease_manager::LeaseManagerBuilder;
use thaw_api::{Function, keys::FUNCTION_LABEL};
use thaw_core::{Autoscaler, Clock, FunctionKey, SystemClock, Tuning};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::{
    actions::publish,
    auth::{self, Authenticator, KubeReviewer, StatsAuth},
    context::{Config, Context},
    error::Error,
    http::{self, HttpState},
    known::Known,
    lifecycle,
    metrics::Metrics,
    pod_index::PodIndex,
    reconcile::reconcile,
    wake::Wakeups,
};

/// How `thaw operator` runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub config: Config,
    /// Where `/metrics`, `/healthz`, `/readyz` and `/v1/stats` are served.
    pub http_addr: SocketAddr,
    /// Namespace of the leader-election Lease.
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease.
    pub identity: String,
    pub lease_duration: Duration,
    /// Only Functions in this namespace; every namespace when `None`.
    pub watch_namespace: Option<String>,
    /// Label selector of the activator pods in the lease namespace. Each one
    /// seen running is expected to report: until it does (or is forgotten),
    /// no instance is reaped, since it may carry requests.
    pub activator_selector: Option<String>,
    /// Who may send stats reports.
    pub stats_auth: StatsAuth,
}

/// Runs the operator until `shutdown` completes.
pub async fn run(
    client: Client,
    options: Options,
    shutdown: BoxFuture<'static, ()>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let autoscaler = Arc::new(Mutex::new(Autoscaler::new(Tuning::default(), clock.now())));
    let (wakeups, wake_rx) = Wakeups::new(metrics.wakeups_dropped.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);

    let auth = match &options.stats_auth {
        StatsAuth::Activators {
            audience,
            service_accounts,
        } => Some(Arc::new(Authenticator::new(
            Arc::new(KubeReviewer(client.clone())),
            audience,
            service_accounts,
        )?)),
        StatsAuth::Off => {
            warn!(
                "--allow-unauthenticated-stats: anyone who can reach the stats endpoint can scale Functions"
            );
            None
        }
    };
    // Every replica caches Functions and instance pods from the start: to
    // vet reports (all replicas take them), and so a new leader starts warm.
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_index = Arc::new(PodIndex::default());
    let (functions, function_writer) = reflector::store::<DeserializeGuard<Function>>();
    let caches = spawn_caches(
        client.clone(),
        options.watch_namespace.as_deref(),
        (pod_writer, pod_index.clone()),
        function_writer,
    );
    let http_state = HttpState {
        known: Known::new(functions, pods.clone(), &metrics.registry)?,
        rejected: auth::rejected_counter(&metrics.registry)?,
        auth,
        registry: metrics.registry.clone(),
        autoscaler: autoscaler.clone(),
        clock: clock.clone(),
        wake: wakeups.clone(),
        ready: ready.clone(),
    };
    let http_stop = stopped(stop_rx.clone());
    let listener = http::bind(options.http_addr).await?;
    let http = tokio::spawn(http::serve(listener, http_state, http_stop));

    let lease_seconds = options.lease_duration.as_secs().max(2);
    let manager = LeaseManagerBuilder::new(client.clone(), &options.lease_name)
        .with_namespace(&options.lease_namespace)
        .with_identity(&options.identity)
        .with_duration(lease_seconds)
        .with_grace(lease_seconds / 3)
        .build()
        .await?;
    let (mut leader, lease_task) = manager.watch().await;
    if let Some(selector) = &options.activator_selector {
        let pods = Api::<Pod>::namespaced(client.clone(), &options.lease_namespace);
        tokio::spawn(expect_activators(
            pods,
            selector.clone(),
            autoscaler.clone(),
            clock.clone(),
        ));
    }
    ready.store(true, Ordering::Relaxed);
    info!(identity = %options.identity, "waiting for leadership");

    let (services, service_writer) = reflector::store::<Service>();
    let (runtime_classes, runtime_class_writer) =
        reflector::store::<k8s_openapi::api::node::v1::RuntimeClass>();
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "thaw-controller".into(),
                instance: Some(options.identity.clone()),
            },
        ),
        metrics,
        config: options.config.clone(),
        pods,
        pod_index: pod_index.clone(),
        services,
        runtime_classes,
        autoscaler,
        memory: Mutex::default(),
        clock,
        gates: crate::gate::GateClient::default(),
    });
    // Every replica forgets deleted Functions (followers hold their stats).
    lifecycle::start(client.clone(), options.watch_namespace.as_deref(), &ctx)?;

    // One stop signal for everything: SIGTERM, or losing the Lease.
    let stop_on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_on_signal.send(true);
    });
    loop {
        tokio::select! {
            () = stopped(stop_rx.clone()) => break,
            changed = leader.changed() => {
                if changed.is_err() { break; }
            }
        }
        if !*leader.borrow_and_update() {
            continue;
        }
        info!(identity = %options.identity, "leading: starting the controller");
        wakeups.start_leading();
        let mut lease = leader.clone();
        let lost_leadership = stop_tx.clone();
        let lost = tokio::spawn(async move {
            while lease.changed().await.is_ok() {
                if !*lease.borrow() {
                    warn!("lost leadership: stopping");
                    let _ = lost_leadership.send(true);
                    break;
                }
            }
        });
        // Returns once the stop signal has let every running reconcile
        // finish. The process then exits: a replica that lost the Lease
        // restarts clean rather than resuming with stale memory.
        controller(
            client.clone(),
            options.watch_namespace.as_deref(),
            ctx.clone(),
            (service_writer, runtime_class_writer),
            wake_rx,
            stopped(stop_rx.clone()),
        )
        .await;
        lost.abort();
        break;
    }
    info!("shutting down");
    caches.abort();
    let _ = stop_tx.send(true);
    drop(leader);
    match lease_task.await {
        Ok(Ok(_)) => info!("released the lease"),
        Ok(Err(error)) => warn!(%error, "releasing the lease"),
        Err(error) => warn!(%error, "lease task"),
    }
    http.await??;
    Ok(())
}

/// Registers every running activator pod with the autoscaler.
async fn expect_activators(
    pods: Api<Pod>,
    selector: String,
    autoscaler: Arc<Mutex<Autoscaler>>,
    clock: Arc<dyn Clock>,
) {
    watcher(pods, watcher::Config::default().labels(&selector))
        .default_backoff()
        .applied_objects()
        .for_each(|pod| {
            if let Ok(pod) = pod {
                let running =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if running && pod.metadata.deletion_timestamp.is_none() {
                    autoscaler
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .expect_activator(pod.name_any(), clock.now());
                }
            }
            std::future::ready(())
        })
        .await;
}

/// A future that completes once `rx` turns true.
async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// The watches behind the Function and instance pod caches.
fn spawn_caches(
    client: Client,
    namespace: Option<&str>,
    (pods, index): (reflector::store::Writer<Pod>, Arc<PodIndex>),
    functions: reflector::store::Writer<DeserializeGuard<Function>>,
) -> tokio::task::JoinHandle<()> {
    let (function_api, pod_api) = match namespace {
        Some(ns) => (
            Api::<DeserializeGuard<Function>>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let pods = reflector::reflector(
        pods,
        watcher(pod_api, watcher::Config::default().labels(FUNCTION_LABEL)),
    )
    .default_backoff()
    .for_each(move |event| {
        if let Ok(event) = &event {
            index.apply(event);
        }
        std::future::ready(())
    });
    let functions = reflector::reflector(
        functions,
        watcher(function_api, watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .for_each(|_| std::future::ready(()));
    tokio::spawn(async move {
        futures::future::join(pods, functions).await;
    })
}

/// The controller over guarded Function watches; reconciles read pods from
/// the instance pod cache.
async fn controller(
    client: Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
    (service_writer, runtime_class_writer): (
        reflector::store::Writer<Service>,
        reflector::store::Writer<k8s_openapi::api::node::v1::RuntimeClass>,
    ),
    wake: mpsc::Receiver<FunctionKey>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // RuntimeClasses (cluster-scoped): a Function naming a missing one waits
    // for it, so any change reconciles every Function (they are rare).
    let runtime_classes = reflector::reflector(
        runtime_class_writer,
        watcher(
            Api::<k8s_openapi::api::node::v1::RuntimeClass>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .map(|_| ());
    let (functions, pods, services) = match namespace {
        Some(ns) => (
            Api::<DeserializeGuard<Function>>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    // Function Services: the cache reconcile compares with (so a Service is
    // applied only when it differs), and a trigger when one is changed or
    // deleted behind the controller's back.
    let services = reflector::reflector(
        service_writer,
        watcher(services, watcher::Config::default().labels(FUNCTION_LABEL)),
    )
    .default_backoff()
    .touched_objects();
    // The controller's own watch of owned pods only triggers reconciles;
    // they read pods from the cache (and index) `pod_cache` keeps.
    let instance_pods = watcher::Config::default().labels(FUNCTION_LABEL);
    let mut wake = wake;
    let wakeups = futures::stream::poll_fn(move |cx| wake.poll_recv(cx))
        .map(|key| ObjectRef::new(&key.name).within(&key.namespace));
    Controller::new(functions, watcher::Config::default().any_semantic())
        .owns(pods, instance_pods)
        .owns_stream(services)
        .reconcile_on(wakeups)
        .reconcile_all_on(runtime_classes)
        .graceful_shutdown_on(stop)
        .run(reconcile_guarded, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                // A wake-up for a Function deleted meanwhile.
                Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                    debug!(%object, "skipped a deleted Function");
                }
                Err(error) => warn!(%error, "reconcile failed"),
            }
        })
        .await;
}

/// Unwraps the guard: an object that does not decode is reported on itself
/// and skipped, instead of wedging the watch for every other Function.
async fn reconcile_guarded(
    guard: Arc<DeserializeGuard<Function>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    // Never decide on a partial pod cache: that would duplicate instances.
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::MissingField("pod cache"))?;
    // Nor call a RuntimeClass missing before the cache has listed them.
    if let Ok(function) = &guard.0
        && function.spec.runtime_class_name().is_some()
    {
        ctx.runtime_classes
            .wait_until_ready()
            .await
            .map_err(|_| Error::MissingField("RuntimeClass cache"))?;
    }
    match &guard.0 {
        Ok(function) => reconcile(Arc::new(function.clone()), ctx).await,
        Err(invalid) => {
            warn!(name = ?invalid.metadata.name, error = %invalid.error, "undecodable Function");
            let mut placeholder = Function::new(
                invalid.metadata.name.as_deref().unwrap_or_default(),
                serde_json::from_value(serde_json::json!({"image": "-"}))
                    .map_err(|_| Error::MissingField("spec"))?,
            );
            placeholder.metadata = invalid.metadata.clone();
            publish(
                &ctx,
                &placeholder,
                EventType::Warning,
                "InvalidSpec",
                "Decode",
                format!("cannot read this Function: {}", invalid.error),
            )
            .await;
            Ok(Action::await_change())
        }
    }
}

fn error_policy(
    guard: Arc<DeserializeGuard<Function>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .errors
        .with_label_values(&[error.metric_label()])
        .inc();
    let name = guard.0.as_ref().map(|f| f.name_any()).unwrap_or_default();
    error!(function = %name, %error, "reconcile error");
    Action::requeue(Duration::from_secs(2))
}
