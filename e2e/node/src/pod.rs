//! The per-pod worker: sets up the pod's sandbox, runs its containers, reports
//! status, and on deletion stops everything, cleans up and removes the pod.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::backoff::Doubling;
use crate::container::{self, Kind, Outcome, PodEnv, Slot, StopRx, grace_seconds, lock};
use crate::ctx::Ctx;
use crate::net::netns_name;
use crate::status::{
    self, CState, PodInfo, REASON_CREATING, REASON_INITIALIZING, Restart, Runtime, is_sidecar,
    is_terminal_phase,
};

/// Grace period when the agent itself shuts down.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Grace period for pods whose object vanished (force-deleted).
pub const GONE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub enum PodUpdate {
    Present(Arc<Pod>),
    Gone,
}

pub fn is_host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

pub fn reported_phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// The grace period a deleted pod gets, `None` while it is not being deleted.
pub fn deletion_grace(pod: &Pod) -> Option<Duration> {
    pod.metadata.deletion_timestamp.as_ref()?;
    Some(grace_seconds(
        pod.metadata.deletion_grace_period_seconds.or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)),
    ))
}

pub fn log_dir(ctx: &Ctx, pod: &Pod) -> std::path::PathBuf {
    ctx.state_dir.join("pods").join(format!(
        "{}_{}_{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.uid().unwrap_or_default()
    ))
}

/// Runs one pod until it is deleted (or vanishes, or the agent stops).
pub async fn run(ctx: Arc<Ctx>, uid: String, rx: watch::Receiver<PodUpdate>) {
    let pod = match &*rx.borrow() {
        PodUpdate::Present(p) => p.clone(),
        PodUpdate::Gone => return,
    };
    let span = info_span!("pod", pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()));
    Worker::new(ctx, uid, pod, rx).run().instrument(span).await
}

enum End {
    Terminal,
    Stopped,
}

struct Worker {
    ctx: Arc<Ctx>,
    uid: String,
    ns: String,
    name: String,
    rx: watch::Receiver<PodUpdate>,
    latest: Arc<Pod>,
    host_network: bool,
    last_sent: Option<serde_json::Value>,
    own_conditions: Vec<PodCondition>,
    start_time: Timestamp,
}

impl Worker {
    fn new(ctx: Arc<Ctx>, uid: String, pod: Arc<Pod>, rx: watch::Receiver<PodUpdate>) -> Self {
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(Timestamp::now, |t| t.0);
        Worker {
            ns: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            host_network: is_host_network(&pod),
            own_conditions: status::pod_conditions(&pod),
            latest: pod,
            ctx,
            uid,
            rx,
            last_sent: None,
            start_time,
        }
    }

    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    async fn run(mut self) {
        let pod = self.latest.clone();
        if reported_phase(&pod).is_some_and(is_terminal_phase) {
            // Finished under an earlier agent: nothing runs; wait for deletion.
            debug!("adopted a finished pod");
            self.teardown().await;
            if self.wait_for_deletion().await {
                self.delete_object().await;
            }
            return;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            self.teardown().await;
            self.delete_object().await;
            return;
        }

        let rt = Arc::new(Mutex::new(Runtime::from_pod(&pod, Timestamp::now())));
        let (dirty_tx, mut dirty_rx) = mpsc::unbounded_channel::<()>();
        let (stop_tx, stop_rx) = watch::channel::<Option<Duration>>(None);
        let mut lifecycle: JoinHandle<End> = tokio::spawn(
            lifecycle(
                self.ctx.clone(),
                pod.clone(),
                self.uid.clone(),
                rt.clone(),
                dirty_tx.clone(),
                stop_rx,
            )
            .in_current_span(),
        );
        let mut running = true;
        let mut deleting = false;
        let mut gone = false;
        let mut shutting_down = false;
        let mut retry_patch = false;

        loop {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    stop_tx.send_replace(Some(SHUTDOWN_GRACE));
                }
                end = &mut lifecycle, if running => {
                    running = false;
                    match end {
                        Ok(End::Terminal) => {
                            info!(phase = status::phase(&lock(&rt)), "pod finished");
                            self.teardown().await;
                            lock(&rt).sandbox_ready = false;
                            let _ = dirty_tx.send(());
                        }
                        Ok(End::Stopped) => {}
                        Err(e) => error!("pod lifecycle task failed: {e}"),
                    }
                }
                changed = self.rx.changed(), if !gone => {
                    let update = match changed {
                        Ok(()) => self.rx.borrow_and_update().clone(),
                        Err(_) => PodUpdate::Gone,
                    };
                    match update {
                        PodUpdate::Gone => {
                            info!("pod object is gone; stopping its containers");
                            gone = true;
                            stop_tx.send_modify(|g| *g = Some(g.map_or(GONE_GRACE, |g| g.min(GONE_GRACE))));
                        }
                        PodUpdate::Present(p) => {
                            self.latest = p;
                            if let Some(grace) = deletion_grace(&self.latest) {
                                if !deleting {
                                    info!(grace = ?grace, "pod deleted; stopping its containers");
                                }
                                deleting = true;
                                stop_tx.send_if_modified(|g| match *g {
                                    Some(old) if old <= grace => false,
                                    _ => {
                                        *g = Some(grace);
                                        true
                                    }
                                });
                            }
                            // Foreign conditions (readiness gates) may have changed.
                            let _ = dirty_tx.send(());
                        }
                    }
                }
                Some(()) = dirty_rx.recv() => {
                    // Coalesce bursts of changes into one patch.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    while dirty_rx.try_recv().is_ok() {}
                    if !gone && !shutting_down {
                        retry_patch = !self.report(&rt).await;
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)), if retry_patch && !gone && !shutting_down => {
                    retry_patch = !self.report(&rt).await;
                }
            }
            if !running && (deleting || gone || shutting_down) {
                break;
            }
        }

        self.teardown().await;
        if shutting_down || gone {
            return;
        }
        // Final status (containers terminated), then remove the pod.
        let _ = self.report(&rt).await;
        self.delete_object().await;
    }

    /// Kills what is left in the pod's namespace, removes it, frees the IP.
    async fn teardown(&self) {
        // The pod's emptyDir volumes go with it (its logs stay).
        let volumes = crate::volumes::volumes_dir(&log_dir(&self.ctx, &self.latest));
        if let Err(error) = std::fs::remove_dir_all(&volumes)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            warn!(%error, dir = %volumes.display(), "removing the pod's volumes");
        }
        if !self.host_network {
            self.ctx.net.destroy_sandbox(&self.uid).await;
        }
        if let Some(ip) = self.ctx.ipam().release(&self.uid) {
            debug!(%ip, "released pod IP");
        }
    }

    /// Patches the pod status if it changed. Returns false when it should be retried.
    async fn report(&mut self, rt: &Mutex<Runtime>) -> bool {
        let status: PodStatus = {
            let rt = lock(rt);
            let info = PodInfo {
                host_ip: self.ctx.net.gateway,
                start_time: self.start_time,
            };
            status::build(
                &self.latest,
                &rt,
                &info,
                &self.own_conditions,
                Timestamp::now(),
            )
        };
        let body = match serde_json::to_value(&status) {
            Ok(v) => v,
            Err(e) => {
                error!("serializing status: {e}");
                return true;
            }
        };
        if self.last_sent.as_ref() == Some(&body) {
            return true;
        }
        let patch = serde_json::json!({
            "metadata": { "uid": self.uid },
            "status": body,
        });
        match self
            .api()
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                debug!(phase = ?status.phase, "status patched");
                self.own_conditions = status.conditions.clone().unwrap_or_default();
                self.last_sent = Some(body);
                true
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                debug!("status patch: pod is gone");
                true
            }
            Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                error!("status patch rejected: {e}");
                true
            }
            Err(e) => {
                warn!("status patch failed (will retry): {e}");
                false
            }
        }
    }

    /// Waits until the pod is being deleted (true) or gone/shutting down (false).
    async fn wait_for_deletion(&mut self) -> bool {
        loop {
            if let PodUpdate::Present(p) = &*self.rx.borrow_and_update()
                && p.metadata.deletion_timestamp.is_some()
            {
                return true;
            }
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return false,
                changed = self.rx.changed() => {
                    if changed.is_err() || matches!(&*self.rx.borrow(), PodUpdate::Gone) {
                        return false;
                    }
                }
            }
        }
    }

    /// Deletes the pod object with grace period 0 (only this pod: UID precondition).
    async fn delete_object(&mut self) {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let mut backoff = Doubling::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            match self.api().delete(&self.name, &dp).await {
                Ok(_) => {
                    info!("pod removed");
                    return;
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => warn!("deleting pod (will retry): {e}"),
            }
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                changed = self.rx.changed() => {
                    if changed.is_err() || matches!(&*self.rx.borrow(), PodUpdate::Gone) {
                        return;
                    }
                }
            }
        }
    }
}

/// Sandbox, init containers, then the main containers. Returns when the pod
/// is finished for good (Terminal) or a stop was requested (Stopped).
async fn lifecycle(
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    uid: String,
    rt: Arc<Mutex<Runtime>>,
    dirty: mpsc::UnboundedSender<()>,
    mut stop: StopRx,
) -> End {
    let host_network = is_host_network(&pod);
    let spec = pod.spec.clone().unwrap_or_default();

    // 1. The sandbox.
    let pod_ip: Ipv4Addr = if host_network {
        ctx.net.gateway
    } else {
        let mut backoff = Doubling::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            if stop.borrow().is_some() {
                return End::Stopped;
            }
            let allocated = ctx.ipam().allocate(&uid);
            let result = match allocated {
                Some(ip) => ctx.net.create_sandbox(&uid, ip).await.map(|()| ip),
                None => Err(format!("no free pod IP in {}", ctx.net.cidr)),
            };
            match result {
                Ok(ip) => {
                    info!(%ip, netns = %netns_name(&uid), "sandbox ready");
                    break ip;
                }
                Err(e) => {
                    error!("creating pod sandbox: {e}");
                    {
                        let mut guard = lock(&rt);
                        let rt = &mut *guard;
                        for c in rt.init.iter_mut().chain(rt.main.iter_mut()) {
                            if let CState::Waiting { message, .. } = &mut c.state {
                                *message = Some(format!("failed to create pod sandbox: {e}"));
                            }
                        }
                    }
                    let _ = dirty.send(());
                    if container::wait_or_stop(&mut stop, backoff.next_delay()).await {
                        return End::Stopped;
                    }
                }
            }
        }
    };
    {
        let mut guard = lock(&rt);
        let rt = &mut *guard;
        rt.sandbox_ready = true;
        rt.pod_ip = Some(pod_ip);
        for c in rt.init.iter_mut().chain(rt.main.iter_mut()) {
            if let CState::Waiting { message, .. } = &mut c.state {
                *message = None;
            }
        }
    }
    let pe = Arc::new(PodEnv {
        log_dir: log_dir(&ctx, &pod),
        netns: (!host_network).then(|| netns_name(&uid)),
        ctx: ctx.clone(),
        pod: pod.clone(),
        pod_ip,
    });
    let slot = |kind, idx| Slot {
        rt: rt.clone(),
        kind,
        idx,
        dirty: dirty.clone(),
    };

    // Sidecars stop with the pod, or once the main containers are done.
    let (side_tx, side_rx) = watch::channel::<Option<Duration>>(None);
    let side_tx = Arc::new(side_tx);
    let forward = {
        let side_tx = side_tx.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let already = *stop.borrow_and_update();
            if already.is_some() {
                side_tx.send_replace(already);
            }
            while stop.changed().await.is_ok() {
                let g = *stop.borrow();
                side_tx.send_replace(g);
            }
        })
    };
    let mut sidecars: Vec<JoinHandle<Outcome>> = Vec::new();
    let inits = spec.init_containers.clone().unwrap_or_default();
    let initialized = lock(&rt).initialized;

    // 2. Init containers, in order.
    let mut failed = false;
    for (i, c) in inits.iter().enumerate() {
        let done = lock(&rt).init.get(i).is_some_and(|s| s.done);
        if done {
            continue;
        }
        if is_sidecar(c) {
            sidecars.push(tokio::spawn(
                container::run(
                    pe.clone(),
                    c.clone(),
                    Restart::Always,
                    slot(Kind::Init, i),
                    side_rx.clone(),
                )
                .in_current_span(),
            ));
            if !initialized {
                // The next init container starts once the sidecar has started.
                let s = slot(Kind::Init, i);
                while !s.get().is_some_and(|s| s.started) {
                    if container::wait_or_stop(&mut stop, Duration::from_millis(20)).await {
                        break;
                    }
                }
            }
            continue;
        }
        if initialized {
            continue;
        }
        match container::run(
            pe.clone(),
            c.clone(),
            Restart::of_init(&pod, c),
            slot(Kind::Init, i),
            stop.clone(),
        )
        .await
        {
            Outcome::Stopped => break,
            Outcome::Exited(0) => {}
            Outcome::Exited(code) => {
                warn!(container = %c.name, exit_code = code, "init container failed");
                lock(&rt).init_failed = true;
                let _ = dirty.send(());
                failed = true;
                break;
            }
        }
    }
    let stopped = stop.borrow().is_some();
    if !failed && !stopped && !initialized {
        let mut rt = lock(&rt);
        rt.initialized = true;
        for c in rt.main.iter_mut() {
            if let CState::Waiting { reason, .. } = &mut c.state
                && reason == REASON_INITIALIZING
            {
                *reason = REASON_CREATING.to_string();
            }
        }
        drop(rt);
        let _ = dirty.send(());
    }

    // 3. The main containers, all at once.
    let mut outcomes = Vec::new();
    if !failed && !stopped {
        let policy = Restart::of_pod(&pod);
        let handles: Vec<JoinHandle<Outcome>> = spec
            .containers
            .iter()
            .enumerate()
            .filter(|(i, _)| !lock(&rt).main.get(*i).is_some_and(|s| s.done))
            .map(|(i, c)| {
                tokio::spawn(
                    container::run(
                        pe.clone(),
                        c.clone(),
                        policy,
                        slot(Kind::Main, i),
                        stop.clone(),
                    )
                    .in_current_span(),
                )
            })
            .collect();
        for h in handles {
            outcomes.push(h.await.unwrap_or(Outcome::Stopped));
        }
    }

    // 4. Sidecars go last.
    let grace = grace_seconds(spec.termination_grace_period_seconds);
    side_tx.send_if_modified(|g| {
        if g.is_none() {
            *g = Some(grace);
            true
        } else {
            false
        }
    });
    for h in sidecars {
        let _ = h.await;
    }
    forward.abort();

    if stop.borrow().is_some() || outcomes.contains(&Outcome::Stopped) {
        End::Stopped
    } else {
        End::Terminal
    }
}
