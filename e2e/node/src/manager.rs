//! Watches the pods bound to this node and hands each to its own worker.
//! On the first full listing it adopts pods from an earlier run and removes
//! stale sandboxes.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::ctx::Ctx;
use crate::net::{NETNS_PREFIX, VETH_PREFIX, netns_name, short_id};
use crate::pod::{self, PodUpdate, is_host_network, reported_phase};
use crate::status::is_terminal_phase;

struct WorkerHandle {
    tx: watch::Sender<PodUpdate>,
    join: JoinHandle<()>,
}

/// How long finished pods' UIDs are remembered (late watch events for them are ignored).
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

pub async fn run(ctx: Arc<Ctx>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut tombstones: HashMap<String, Instant> = HashMap::new();
    let mut listing: Option<Vec<Pod>> = None;
    let mut adopted = false;
    let mut reap = tokio::time::interval(Duration::from_secs(2));

    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = reap.tick() => reap_workers(&mut workers, &mut tombstones).await,
            ev = events.next() => {
                let Some(ev) = ev else {
                    error!("pod watch ended");
                    break;
                };
                match ev {
                    Err(e) => warn!("pod watch: {e}"),
                    Ok(Event::Init) => listing = Some(Vec::new()),
                    Ok(Event::InitApply(p)) => listing.get_or_insert_with(Vec::new).push(p),
                    Ok(Event::InitDone) => {
                        let pods = listing.take().unwrap_or_default();
                        if !adopted {
                            adopt(&ctx, &pods).await;
                            adopted = true;
                        }
                        reap_workers(&mut workers, &mut tombstones).await;
                        let live: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
                        for p in pods {
                            dispatch(&ctx, &mut workers, &tombstones, p);
                        }
                        for (uid, w) in &workers {
                            if !live.contains(uid) {
                                w.tx.send_replace(PodUpdate::Gone);
                            }
                        }
                    }
                    Ok(Event::Apply(p)) => dispatch(&ctx, &mut workers, &tombstones, p),
                    Ok(Event::Delete(p)) => {
                        if let Some(w) = p.uid().and_then(|uid| workers.get(&uid)) {
                            w.tx.send_replace(PodUpdate::Gone);
                        }
                    }
                }
            }
        }
    }

    info!(pods = workers.len(), "stopping pods");
    for (_, w) in workers {
        if tokio::time::timeout(Duration::from_secs(15), w.join)
            .await
            .is_err()
        {
            warn!("a pod worker did not stop in time");
        }
    }
}

fn dispatch(
    ctx: &Arc<Ctx>,
    workers: &mut HashMap<String, WorkerHandle>,
    tombstones: &HashMap<String, Instant>,
    p: Pod,
) {
    let Some(uid) = p.uid() else { return };
    if tombstones.contains_key(&uid) {
        debug!(%uid, "ignoring event for a finished pod");
        return;
    }
    let p = Arc::new(p);
    if let Some(w) = workers.get(&uid) {
        // A finished worker is done with its pod (late events are echoes of its
        // own updates); reaping tombstones it, or forgets it if it panicked.
        if !w.join.is_finished() {
            w.tx.send_replace(PodUpdate::Present(p));
        }
        return;
    }
    debug!(pod = %format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()), "new pod");
    let (tx, rx) = watch::channel(PodUpdate::Present(p));
    let join = tokio::spawn(pod::run(ctx.clone(), uid.clone(), rx));
    workers.insert(uid, WorkerHandle { tx, join });
}

async fn reap_workers(
    workers: &mut HashMap<String, WorkerHandle>,
    tombstones: &mut HashMap<String, Instant>,
) {
    let finished: Vec<String> = workers
        .iter()
        .filter(|(_, w)| w.join.is_finished())
        .map(|(uid, _)| uid.clone())
        .collect();
    for uid in finished {
        if let Some(w) = workers.remove(&uid) {
            match w.join.await {
                Ok(()) => {
                    tombstones.insert(uid, Instant::now());
                }
                // A panicked worker may be restarted by the next event for its pod.
                Err(e) => error!(%uid, "pod worker failed: {e}"),
            }
        }
    }
    tombstones.retain(|_, t| t.elapsed() < TOMBSTONE_TTL);
}

/// First listing after start: kill leftovers of an earlier run, remove
/// sandboxes no live pod owns, and re-reserve the addresses of live pods.
async fn adopt(ctx: &Ctx, pods: &[Pod]) {
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| !reported_phase(p).is_some_and(is_terminal_phase))
        .collect();
    let keep: HashSet<String> = live
        .iter()
        .filter(|p| !is_host_network(p))
        .filter_map(|p| p.uid())
        .map(|uid| short_id(&uid))
        .collect();

    for ns in ctx.net.list_own_netns().await {
        // Processes of an earlier agent (still alive if it crashed) are killed;
        // their pods get restarted.
        ctx.net.kill_netns_processes(&ns).await;
        let short = ns.trim_start_matches(NETNS_PREFIX);
        if !keep.contains(short) {
            info!(netns = %ns, "removing stale sandbox");
            if let Err(e) = ctx.net.ip(&["netns", "del", &ns]).await {
                warn!(netns = %ns, "{e}");
            }
        }
    }
    for veth in ctx.net.list_own_veths().await {
        let short = veth.trim_start_matches(VETH_PREFIX);
        if !keep.contains(short) {
            info!(%veth, "removing orphan veth");
            ctx.net.delete_link(&veth).await;
        }
    }

    for p in live {
        let Some(uid) = p.uid() else { continue };
        if is_host_network(p) {
            continue;
        }
        let from_status = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let ip = match from_status {
            Some(ip) => Some(ip),
            None => ctx.net.netns_pod_ip(&netns_name(&uid)).await,
        };
        if let Some(ip) = ip {
            match ctx.ipam().reserve(&uid, ip) {
                Ok(()) => info!(
                    pod = %format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                    %ip,
                    "adopted pod keeps its IP"
                ),
                Err(e) => warn!(%uid, "cannot keep pod IP: {e}"),
            }
        }
    }
    let in_use = ctx.ipam().in_use();
    info!(
        pods = pods.len(),
        ips_in_use = in_use,
        "adopted pods bound to this node"
    );
}
