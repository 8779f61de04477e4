//! One container's life: resolve its image, build its environment, start it,
//! probe it, and restart it under the restart policy with crash back-off.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, warn};

use crate::backoff::{CrashBackoff, Doubling, MAX_BACKOFF, go_duration};
use crate::ctx::Ctx;
use crate::env::{PodFacts, RefData, build_env, expand, referenced_objects};
use crate::images::{ImageMap, command_line, resolve_program, working_dir};
use crate::probe::{self, ExecContext, ProbeSpec, Thresholds};
use crate::process::{self, Launch, Running, exit_info, signal_group};
use crate::status::{CState, ContainerSnapshot, Restart, Runtime, Terminated};

/// What every container of a pod shares.
pub struct PodEnv {
    pub ctx: Arc<Ctx>,
    pub pod: Arc<Pod>,
    pub netns: Option<String>,
    pub pod_ip: Ipv4Addr,
    pub log_dir: PathBuf,
}

impl PodEnv {
    pub fn pod_ref(&self) -> String {
        format!(
            "{}_{}({})",
            self.pod.name_any(),
            self.pod.namespace().unwrap_or_default(),
            self.pod.uid().unwrap_or_default()
        )
    }

    fn termination_grace(&self) -> Duration {
        grace_seconds(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds),
        )
    }
}

pub fn grace_seconds(s: Option<i64>) -> Duration {
    Duration::from_secs(u64::try_from(s.unwrap_or(30)).unwrap_or(0))
}

pub fn lock(rt: &Mutex<Runtime>) -> MutexGuard<'_, Runtime> {
    rt.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Init,
    Main,
}

/// A container's entry in the pod's runtime state; every change wakes the
/// pod worker so it can report status.
#[derive(Clone)]
pub struct Slot {
    pub rt: Arc<Mutex<Runtime>>,
    pub kind: Kind,
    pub idx: usize,
    pub dirty: mpsc::UnboundedSender<()>,
}

impl Slot {
    pub fn update(&self, f: impl FnOnce(&mut ContainerSnapshot)) {
        {
            let mut rt = lock(&self.rt);
            let list = match self.kind {
                Kind::Init => &mut rt.init,
                Kind::Main => &mut rt.main,
            };
            if let Some(s) = list.get_mut(self.idx) {
                f(s);
            }
        }
        let _ = self.dirty.send(());
    }

    pub fn get(&self) -> Option<ContainerSnapshot> {
        let rt = lock(&self.rt);
        match self.kind {
            Kind::Init => rt.init.get(self.idx).cloned(),
            Kind::Main => rt.main.get(self.idx).cloned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exited and the restart policy does not run it again.
    Exited(i32),
    /// Stopped on request (pod deletion, agent shutdown).
    Stopped,
}

/// The grace period to stop with, once a stop was requested.
pub type StopRx = watch::Receiver<Option<Duration>>;

enum PrepareError {
    Image(String),
    Config(String),
    Create(String),
}

struct Prepared {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

async fn fetch_refs(ctx: &Ctx, ns: &str, c: &Container) -> Result<RefData, String> {
    let (cms, secrets) = referenced_objects(c);
    let mut refs = RefData::default();
    if !cms.is_empty() {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
        for name in cms {
            let obj = api
                .get_opt(&name)
                .await
                .map_err(|e| format!("fetching configmap {name:?}: {e}"))?;
            let data = obj.map(|o| {
                let mut d = o.data.unwrap_or_default();
                for (k, v) in o.binary_data.unwrap_or_default() {
                    d.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                }
                d
            });
            refs.config_maps.insert(name, data);
        }
    }
    if !secrets.is_empty() {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        for name in secrets {
            let obj = api
                .get_opt(&name)
                .await
                .map_err(|e| format!("fetching secret {name:?}: {e}"))?;
            let data = obj.map(|o| {
                o.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect()
            });
            refs.secrets.insert(name, data);
        }
    }
    Ok(refs)
}

async fn prepare(pe: &PodEnv, c: &Container) -> Result<Prepared, PrepareError> {
    let ctx = &pe.ctx;
    let image = c.image.clone().unwrap_or_default();
    if image.is_empty() {
        return Err(PrepareError::Image("the container has no image".into()));
    }
    let map = ImageMap::load(&ctx.images_path).map_err(|e| {
        PrepareError::Image(e.replace(
            &ctx.images_path.display().to_string(),
            &ctx.images_display(),
        ))
    })?;
    let entry = map.lookup(&image).cloned().ok_or_else(|| {
        PrepareError::Image(format!(
            "image {image:?} is not in {}",
            ctx.images_display()
        ))
    })?;
    let ns = pe.pod.namespace().unwrap_or_default();
    let refs = fetch_refs(ctx, &ns, c)
        .await
        .map_err(PrepareError::Config)?;
    let facts = PodFacts {
        pod: &pe.pod,
        pod_ip: Some(pe.pod_ip.to_string()),
        host_ip: ctx.net.gateway.to_string(),
    };
    let mut env =
        build_env(c, &facts, &entry.env, &ctx.host_path, &refs).map_err(PrepareError::Config)?;
    crate::volumes::give_temp_dir(&pe.pod, c, &pe.log_dir, &mut env)
        .map_err(PrepareError::Create)?;
    let lookup = |n: &str| env.get(n).map(str::to_string);
    let command: Vec<String> = c
        .command
        .iter()
        .flatten()
        .map(|s| expand(s, lookup))
        .collect();
    let args: Vec<String> = c.args.iter().flatten().map(|s| expand(s, lookup)).collect();
    let argv = command_line(&entry, &command, &args).map_err(PrepareError::Create)?;
    let cwd = working_dir(c.working_dir.as_deref(), &entry, &ctx.root);
    Ok(Prepared {
        argv,
        env: env.into_vec(),
        cwd,
    })
}

/// Sleeps for `d` unless a stop is requested first (then returns true).
pub async fn wait_or_stop(stop: &mut StopRx, d: Duration) -> bool {
    if stop.borrow().is_some() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(Option::is_some) => true,
    }
}

/// Runs the container until its restart policy lets it rest, or until a stop
/// is requested.
pub async fn run(
    pe: Arc<PodEnv>,
    c: Container,
    policy: Restart,
    slot: Slot,
    mut stop: StopRx,
) -> Outcome {
    let ctx = pe.ctx.clone();
    let name = c.name.clone();
    let image = c.image.clone().unwrap_or_default();
    let mut crash = CrashBackoff::new(ctx.backoff_base, MAX_BACKOFF);
    let mut retry = Doubling::new(ctx.backoff_base, MAX_BACKOFF);
    loop {
        if stop.borrow().is_some() {
            return Outcome::Stopped;
        }
        let prepared = match prepare(&pe, &c).await {
            Ok(p) => {
                retry.reset();
                p
            }
            Err(PrepareError::Image(msg)) => {
                warn!(container = %name, "image: {msg}");
                slot.update(|s| {
                    s.retire_terminated();
                    s.state = CState::waiting("ErrImagePull", Some(msg.clone()));
                    s.ready = false;
                    s.started = false;
                });
                let delay = retry.next_delay();
                let first = (delay / 2).min(Duration::from_secs(1));
                if wait_or_stop(&mut stop, first).await {
                    return Outcome::Stopped;
                }
                slot.update(|s| {
                    s.state = CState::waiting(
                        "ImagePullBackOff",
                        Some(format!(
                            "Back-off pulling image {image:?}: ErrImagePull: {msg}"
                        )),
                    );
                });
                if wait_or_stop(&mut stop, delay - first).await {
                    return Outcome::Stopped;
                }
                continue;
            }
            Err(PrepareError::Config(msg)) | Err(PrepareError::Create(msg)) => {
                warn!(container = %name, "cannot create container: {msg}");
                let reason = if msg == "no command specified" {
                    "CreateContainerError"
                } else {
                    "CreateContainerConfigError"
                };
                slot.update(|s| {
                    s.retire_terminated();
                    s.state = CState::waiting(reason, Some(msg.clone()));
                    s.ready = false;
                    s.started = false;
                });
                if wait_or_stop(&mut stop, retry.next_delay()).await {
                    return Outcome::Stopped;
                }
                continue;
            }
        };

        let started_at = Timestamp::now();
        let began = Instant::now();
        let path_env = prepared
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let program = resolve_program(&prepared.argv[0], &ctx.root, &path_env);
        let image_id = match &program {
            Ok(p) => format!("thaw-node://{}", p.display()),
            Err(_) => String::new(),
        };
        let spawned = program.and_then(|program| {
            process::spawn(&Launch {
                ip_bin: ctx.net.ip_bin.clone(),
                netns: pe.netns.clone(),
                program,
                args: prepared.argv[1..].to_vec(),
                env: prepared.env.clone(),
                cwd: prepared.cwd.clone(),
                log: pe.log_dir.join(format!("{name}.log")),
            })
        });

        let (exit_code, signal, reason, message, container_id) = match spawned {
            Err(msg) => {
                error!(container = %name, "start failed: {msg}");
                slot.update(|s| {
                    s.retire_terminated();
                    if s.ever_started {
                        s.restart_count += 1;
                    }
                    s.ever_started = true;
                    s.image_id = image_id.clone();
                });
                (128, None, "StartError", Some(msg), None)
            }
            Ok(mut running) => {
                let cid = format!("thaw://{}", running.pgid);
                let has_startup = c.startup_probe.is_some();
                let has_readiness = c.readiness_probe.is_some();
                slot.update(|s| {
                    s.retire_terminated();
                    if s.ever_started {
                        s.restart_count += 1;
                    }
                    s.ever_started = true;
                    s.state = CState::Running { started_at };
                    s.started = !has_startup;
                    s.ready = !has_startup && !has_readiness;
                    s.container_id = Some(cid.clone());
                    s.image_id = image_id.clone();
                });
                info!(container = %name, pid = running.pgid, "container started");
                let (kill_tx, mut kill_rx) = mpsc::channel(1);
                let exec = ExecContext {
                    ip_bin: ctx.net.ip_bin.clone(),
                    netns: pe.netns.clone(),
                    env: prepared.env.clone(),
                    cwd: prepared.cwd.clone(),
                };
                let probes = tokio::spawn(
                    run_probes(
                        c.clone(),
                        IpAddr::V4(pe.pod_ip),
                        exec,
                        slot.clone(),
                        kill_tx,
                        pe.termination_grace(),
                    )
                    .in_current_span(),
                );
                let (status, kill_msg) = supervise(&mut running, &mut stop, &mut kill_rx).await;
                probes.abort();
                let _ = probes.await;
                let (code, sig) = exit_info(status);
                info!(container = %name, exit_code = code, "container exited");
                let reason = if code == 0 { "Completed" } else { "Error" };
                (code, sig, reason, kill_msg, Some(cid))
            }
        };

        let stopped = stop.borrow().is_some();
        let again = !stopped && policy.should_restart(exit_code);
        slot.update(|s| {
            s.state = CState::Terminated(Terminated {
                exit_code,
                signal,
                reason: reason.to_string(),
                message: message.clone(),
                started_at: Some(started_at),
                finished_at: Timestamp::now(),
                container_id: container_id.clone(),
            });
            s.ready = false;
            s.started = false;
            s.done = !stopped && !again;
        });
        if stopped {
            return Outcome::Stopped;
        }
        if !again {
            return Outcome::Exited(exit_code);
        }
        let delay = crash.next_delay(began.elapsed());
        if !delay.is_zero() {
            let msg = format!(
                "back-off {} restarting failed container={name} pod={}",
                go_duration(delay),
                pe.pod_ref()
            );
            debug!(container = %name, "{msg}");
            slot.update(|s| {
                s.retire_terminated();
                s.state = CState::waiting("CrashLoopBackOff", Some(msg.clone()));
            });
            if wait_or_stop(&mut stop, delay).await {
                return Outcome::Stopped;
            }
        }
    }
}

/// Waits for the process to exit, to fail a liveness/startup probe (then it is
/// stopped with its grace period) or for a stop request.
async fn supervise(
    r: &mut Running,
    stop: &mut StopRx,
    kill_rx: &mut mpsc::Receiver<(String, Duration)>,
) -> (std::process::ExitStatus, Option<String>) {
    enum Woke {
        Exited(std::io::Result<std::process::ExitStatus>),
        Kill(String, Duration),
        Stop(Duration),
    }
    let woke = tokio::select! {
        st = r.child.wait() => Woke::Exited(st),
        Some((msg, grace)) = kill_rx.recv() => Woke::Kill(msg, grace),
        res = stop.wait_for(Option::is_some) => Woke::Stop(match res {
            Ok(g) => (*g).unwrap_or_default(),
            Err(_) => Duration::from_secs(2),
        }),
    };
    match woke {
        Woke::Exited(st) => {
            // Nothing of the container outlives its main process.
            signal_group(r.pgid, nix::sys::signal::Signal::SIGKILL);
            let fallback =
                <std::process::ExitStatus as std::os::unix::process::ExitStatusExt>::from_raw(
                    255 << 8,
                );
            (st.unwrap_or(fallback), None)
        }
        Woke::Kill(msg, grace) => {
            info!(pid = r.pgid, "{msg}");
            (process::terminate(r, grace, Some(stop)).await, Some(msg))
        }
        Woke::Stop(grace) => (process::terminate(r, grace, Some(stop)).await, None),
    }
}

/// When the first readiness/liveness probe runs: after the initial delay plus
/// a moment (at most 100 ms, at most one period) for the process to open its
/// port; kubelet's first probe lands anywhere within the first period.
fn first_probe_delay(sp: &ProbeSpec) -> Duration {
    sp.initial_delay + sp.period.min(Duration::from_millis(100))
}

/// Startup, then readiness and liveness probing of one running instance.
async fn run_probes(
    c: Container,
    ip: IpAddr,
    exec: ExecContext,
    slot: Slot,
    kill_tx: mpsc::Sender<(String, Duration)>,
    pod_grace: Duration,
) {
    let readiness = c
        .readiness_probe
        .as_ref()
        .map(|p| ProbeSpec::from_probe(p, &c));
    let liveness = c
        .liveness_probe
        .as_ref()
        .map(|p| ProbeSpec::from_probe(p, &c));
    if let Some(sp) = c
        .startup_probe
        .as_ref()
        .map(|p| ProbeSpec::from_probe(p, &c))
    {
        tokio::time::sleep(first_probe_delay(&sp)).await;
        let mut failures = 0;
        loop {
            match probe::check(&sp.action, ip, sp.timeout, &exec).await {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    debug!(container = %c.name, "startup probe failed: {e}");
                    if failures >= sp.failure_threshold {
                        let grace = sp.termination_grace.unwrap_or(pod_grace);
                        let _ = kill_tx
                            .send((
                                format!(
                                    "Container {} failed startup probe, will be restarted: {e}",
                                    c.name
                                ),
                                grace,
                            ))
                            .await;
                        return;
                    }
                }
            }
            tokio::time::sleep(sp.period).await;
        }
        let ready_now = readiness.is_none();
        slot.update(|s| {
            s.started = true;
            s.ready = ready_now;
        });
    }
    let ready_loop = async {
        let Some(sp) = readiness else {
            return futures::future::pending::<()>().await;
        };
        tokio::time::sleep(first_probe_delay(&sp)).await;
        let mut t = Thresholds::new(&sp, false);
        let mut tick = tokio::time::interval(sp.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = probe::check(&sp.action, ip, sp.timeout, &exec).await;
            let was = t.result;
            let now = t.record(r.is_ok());
            match &r {
                Err(e) if was != now => warn!(container = %c.name, "readiness probe failed: {e}"),
                Err(e) => debug!(container = %c.name, "readiness probe failed: {e}"),
                Ok(()) if was != now => info!(container = %c.name, "container ready"),
                Ok(()) => {}
            }
            if was != now {
                slot.update(|s| s.ready = now);
            }
        }
    };
    let live_loop = async {
        let Some(sp) = liveness else {
            return futures::future::pending::<()>().await;
        };
        tokio::time::sleep(first_probe_delay(&sp)).await;
        let mut t = Thresholds::new(&sp, true);
        let mut tick = tokio::time::interval(sp.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = probe::check(&sp.action, ip, sp.timeout, &exec).await;
            if let Err(e) = &r {
                debug!(container = %c.name, "liveness probe failed: {e}");
            }
            if !t.record(r.is_ok()) {
                let grace = sp.termination_grace.unwrap_or(pod_grace);
                let e = r.err().unwrap_or_default();
                let _ = kill_tx
                    .send((
                        format!(
                            "Container {} failed liveness probe, will be restarted: {e}",
                            c.name
                        ),
                        grace,
                    ))
                    .await;
                return;
            }
        }
    };
    tokio::join!(ready_loop, live_loop);
}
