//! The promises in the topology the chart installs, on kind: two activator
//! and two operator pods, requests spread by kube-proxy, real rollouts and
//! real pod kills. The same scenarios as tests/replicas.rs, which runs them
//! on processes where a test can also cut an activator off; here nothing is
//! simulated: the Deployment replaces the pods, the Endpoints controller and
//! kube-proxy move the traffic.
//!
//! Built only with the `kind` feature, run by e2e/kind/test.sh. The tests
//! take turns (they restart and kill the chart's shared pods) and each
//! leaves the chart's 2 + 2 pods Running again.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use thaw_api::{
    Function,
    keys::{DRAINING_SINCE_ANNOTATION, EXPIRES_AT_ANNOTATION},
};
use thaw_e2e::{
    Cluster, TestNamespace,
    functions::{apply_function, gap, instance_pods, instance_time, is_ready},
    http::get,
    kind::{
        ACTIVATOR, WAIT, activator_node_port, crash_container, image, lease_holder, lease_renewal,
        pod_get, restricted_namespace, rollout_restart, running_pods, wait_for_topology,
        wait_routed,
    },
    load::{Endpoints, Load, LoadOptions, Tally},
    wait_until,
};
use tokio::sync::{Mutex, MutexGuard};

/// The tests restart and kill the same chart pods: one at a time.
static TOPOLOGY: Mutex<()> = Mutex::const_new(());

/// A test's hold on the chart's pods, its namespace and its way in.
struct Setup {
    _turn: MutexGuard<'static, ()>,
    cluster: Cluster,
    ns: TestNamespace,
    endpoints: Endpoints,
}

impl Setup {
    async fn new(prefix: &str) -> Result<Setup> {
        let turn = TOPOLOGY.lock().await;
        let cluster = Cluster::shared().await?;
        wait_for_topology(&cluster, 2, 2).await?;
        let ns = restricted_namespace(&cluster, prefix).await?;
        let endpoints = Endpoints::fixed(activator_node_port(&cluster).await?);
        Ok(Setup {
            _turn: turn,
            cluster,
            ns,
            endpoints,
        })
    }

    fn host(&self, name: &str) -> String {
        format!("{name}.{}.svc.cluster.local", self.ns.name)
    }

    fn addr(&self) -> Result<SocketAddr> {
        self.endpoints.pick().context("no address")
    }

    async fn function(&self, name: &str, spec: Value) -> Result<()> {
        apply_function(&self.ns, name, spec).await?;
        wait_routed(&self.cluster, &self.ns.name, name).await
    }

    async fn pods(&self, name: &str) -> Result<Vec<Pod>> {
        instance_pods(&self.ns, name).await
    }

    async fn ready_pods(&self, name: &str) -> Result<BTreeSet<String>> {
        Ok(self
            .pods(name)
            .await?
            .into_iter()
            .filter(is_ready)
            .filter_map(|p| p.metadata.name)
            .collect())
    }

    /// Waits until a request to `name` through the activators answers 200
    /// (the first may wait for a cold start).
    async fn answered(&self, name: &str) -> Result<()> {
        let addr = self.addr()?;
        let host = self.host(name);
        wait_until(&format!("{name} to answer"), WAIT, || async {
            let reply = get(addr, &host, "/", WAIT).await?;
            Ok((reply.status == 200).then_some(()))
        })
        .await
    }

    fn load(&self, name: &str, keep_alive: usize, fresh: usize, path: &str, pause: u64) -> Load {
        Load::start(
            &self.endpoints,
            &LoadOptions {
                keep_alive_clients: keep_alive,
                fresh_clients: fresh,
                host: self.host(name),
                path: path.into(),
                pause: Duration::from_millis(pause),
            },
        )
    }

    /// testfn's own counts over the Function's instances, read through the
    /// API server's pod proxy: the sum of overlaps, the highest in-flight
    /// count and the requests served.
    async fn instance_counts(&self, name: &str) -> Result<(u64, u64, u64)> {
        let (mut overlaps, mut peak, mut served) = (0, 0, 0);
        for pod in self.pods(name).await? {
            let Some(pod_name) = pod.metadata.name else {
                continue;
            };
            let Ok(body) = pod_get(&self.cluster, &self.ns.name, &pod_name, 8080, "/stats").await
            else {
                continue; // already gone: the ones left are checked
            };
            let stats: Value = serde_json::from_str(&body).context("testfn stats")?;
            overlaps += stats["overlaps"].as_u64().unwrap_or_default();
            peak = peak.max(stats["maxInFlight"].as_u64().unwrap_or_default());
            served += stats["requests"].as_u64().unwrap_or_default();
        }
        Ok((overlaps, peak, served))
    }

    /// Leaves the chart's pods as the next test expects them.
    async fn finish(self) -> Result<()> {
        wait_for_topology(&self.cluster, 2, 2).await
    }
}

/// Waits until the load has answered `more` further requests.
async fn progress(load: &Load, more: u64) -> Result<()> {
    let target = load.ok() + more;
    wait_until(&format!("{more} more answered requests"), WAIT, || async {
        Ok((load.ok() >= target).then_some(()))
    })
    .await
}

fn no_failures(what: &str, tally: &Tally) -> Result<()> {
    ensure!(
        tally.failed.is_empty(),
        "{what}: {} of {} requests failed: {:?}",
        tally.failed.len(),
        tally.ok + tally.failed.len() as u64,
        &tally.failed[..tally.failed.len().min(10)]
    );
    Ok(())
}

/// A Function packed beyond what its instances hold: two instances at most,
/// so both activators compete for the same slots.
fn crowded(concurrency: u32) -> Result<Value> {
    Ok(json!({
        "image": image("testfn")?,
        "concurrency": concurrency,
        "env": [{"name": "MAX_CONCURRENCY", "value": concurrency.to_string()}],
        "scaling": {"maxInstances": 2, "keepAlive": "5m"},
        "queue": {"maxPending": 500, "maxWait": "90s"},
    }))
}

async fn check_cap(setup: &Setup, name: &str, concurrency: u32, answered: u64) -> Result<()> {
    let (overlaps, peak, served) = setup.instance_counts(name).await?;
    ensure!(
        served >= answered,
        "{name}: instances served {served} < {answered} answered"
    );
    ensure!(
        overlaps == 0 && peak <= u64::from(concurrency),
        "{name}: requests overlapped on an instance: {overlaps} overlaps, peak {peak} at concurrency {concurrency}"
    );
    Ok(())
}

/// concurrency 1 and 3, each on two instances, under load from both
/// activator replicas while the Deployment rolls both over (no request may
/// fail) and then while an activator crashes (SIGKILL: requests on it may
/// fail; the limit may not break).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hard_limit_holds_through_an_activator_rollout_and_a_killed_activator() -> Result<()> {
    let setup = Setup::new("kind-cap").await?;
    for (name, c) in [("crowded1", 1), ("crowded3", 3)] {
        setup.function(name, crowded(c)?).await?;
        setup.answered(name).await?;
    }
    let one = setup.load("crowded1", 3, 3, "/?sleep=50", 0);
    let three = setup.load("crowded3", 3, 9, "/?sleep=50", 0);
    progress(&one, 40).await?;
    progress(&three, 40).await?;
    rollout_restart(&setup.cluster, ACTIVATOR).await?;
    progress(&one, 40).await?;
    progress(&three, 40).await?;
    let (t1, t3) = (one.stop().await, three.stop().await);
    no_failures("crowded1 during the rollout", &t1)?;
    no_failures("crowded3 during the rollout", &t3)?;

    let one = setup.load("crowded1", 3, 3, "/?sleep=50", 0);
    let three = setup.load("crowded3", 3, 9, "/?sleep=50", 0);
    progress(&one, 20).await?;
    let victim = running_pods(&setup.cluster, "activator")
        .await?
        .into_iter()
        .next()
        .context("no activator pod")?;
    crash_container(&setup.cluster, &victim, "activator").await?;
    wait_for_topology(&setup.cluster, 2, 2).await?;
    progress(&one, 40).await?;
    progress(&three, 40).await?;
    let (k1, k3) = (one.stop().await, three.stop().await);
    eprintln!(
        "crashed activator {victim}: {} + {} requests failed with it",
        k1.failed.len(),
        k3.failed.len()
    );
    check_cap(&setup, "crowded1", 1, t1.ok + k1.ok).await?;
    check_cap(&setup, "crowded3", 3, t3.ok + k3.ok).await?;
    setup.finish().await
}

/// About 80 requests a second, on keep-alive and on fresh connections,
/// through a rollout of both activator replicas: not one fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_of_the_activators_fails_no_request() -> Result<()> {
    let setup = Setup::new("kind-roll").await?;
    let spec = json!({
        "image": image("testfn")?,
        "concurrency": 20,
        "scaling": {"minInstances": 1, "keepAlive": "5m"},
    });
    setup.function("steady", spec).await?;
    setup.answered("steady").await?;
    let load = setup.load("steady", 4, 4, "/?sleep=10", 90);
    let started = Instant::now();
    progress(&load, 200).await?;
    rollout_restart(&setup.cluster, ACTIVATOR).await?;
    while started.elapsed() < Duration::from_secs(30) {
        progress(&load, 40).await?;
    }
    let elapsed = started.elapsed();
    let tally = load.stop().await;
    no_failures("through the rollout", &tally)?;
    eprintln!("rollout: {} requests in {elapsed:?}, none failed", tally.ok);
    setup.finish().await
}

/// The leading operator crashes under load (SIGKILL): a live replica takes
/// the Lease once it runs out, keeps the same instances (none created
/// twice), then acts as leader (a scale-up); no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_of_the_leading_operator_loses_no_request_and_duplicates_no_instance() -> Result<()>
{
    let setup = Setup::new("kind-leader").await?;
    let spec = json!({
        "image": image("testfn")?,
        "concurrency": 1,
        "scaling": {"minInstances": 2, "maxInstances": 2, "keepAlive": "5m"},
        "queue": {"maxPending": 100, "maxWait": "90s"},
    });
    setup.function("pool", spec).await?;
    let before = wait_until("two ready instances", WAIT, || async {
        let names = setup.ready_pods("pool").await?;
        Ok((names.len() == 2).then_some(names))
    })
    .await?;
    let load = setup.load("pool", 2, 1, "/?sleep=20", 20);
    progress(&load, 50).await?;

    let dead = lease_holder(&setup.cluster)
        .await?
        .context("nobody holds the Lease")?;
    let killed = Instant::now();
    let killed_at = k8s_openapi::jiff::Timestamp::now();
    crash_container(&setup.cluster, &dead, "operator").await?;
    // A crash releases nothing: the Lease runs out, then a live replica
    // (the other pod, or the crashed one restarted by kubelet) renews it.
    let new_leader = wait_until("a live operator to renew the Lease", WAIT, || async {
        let Some((holder, renewed)) = lease_renewal(&setup.cluster).await? else {
            return Ok(None);
        };
        let running = running_pods(&setup.cluster, "operator").await?;
        Ok((renewed > killed_at && running.contains(&holder)).then_some(holder))
    })
    .await?;
    let took_over = killed.elapsed();
    progress(&load, 100).await?;
    ensure!(
        setup.ready_pods("pool").await? == before,
        "the new leader {new_leader} kept the pool"
    );
    let all: BTreeSet<String> = setup
        .pods("pool")
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    ensure!(
        all == before,
        "no instance created twice: {all:?} vs {before:?}"
    );

    let raised = Instant::now();
    setup
        .ns
        .api::<Function>()
        .patch(
            "pool",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scaling": {"maxInstances": 4}}})),
        )
        .await?;
    let more = setup.load("pool", 0, 4, "/?sleep=200", 0);
    wait_until("the new leader to scale up", WAIT, || async {
        Ok((setup.pods("pool").await?.len() > 2).then_some(()))
    })
    .await?;
    eprintln!(
        "leader {dead} crashed: Lease renewed by {new_leader} after {took_over:?}; \
         scale-up seen {:?} after the demand",
        raised.elapsed()
    );
    let extra = more.stop().await;
    let tally = load.stop().await;
    no_failures("steady load", &tally)?;
    no_failures("scale-up load", &extra)?;
    setup.finish().await
}

/// The activators that carried the last request are both replaced before
/// the instance's keep-alive runs out: its expiry stays where the last
/// request put it, and it is drained then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_activator_rollout_after_the_last_request_moves_no_expiry() -> Result<()> {
    const KEEP_ALIVE: Duration = Duration::from_secs(75);
    let setup = Setup::new("kind-clock").await?;
    let spec = json!({"image": image("testfn")?, "scaling": {"keepAlive": "75s"}});
    setup.function("clock", spec).await?;
    let reply = get(setup.addr()?, &setup.host("clock"), "/?sleep=10", WAIT).await?;
    let last_request = SystemTime::now();
    ensure!(reply.status == 200, "{reply:?}");
    let expected = last_request + KEEP_ALIVE;
    let shown = wait_until("the instance's expires-at", WAIT, || {
        instance_time(&setup.ns, "clock", EXPIRES_AT_ANNOTATION)
    })
    .await?;
    ensure!(
        gap(shown, expected) <= Duration::from_secs(1),
        "expires-at {shown:?} vs last request + keep-alive {expected:?}"
    );

    rollout_restart(&setup.cluster, ACTIVATOR).await?;
    ensure!(
        SystemTime::now() < expected,
        "the rollout outlasted the keep-alive: raise KEEP_ALIVE"
    );
    let after = instance_time(&setup.ns, "clock", EXPIRES_AT_ANNOTATION)
        .await?
        .context("expires-at gone after the rollout")?;
    ensure!(
        gap(after, shown) <= Duration::from_secs(1),
        "the rollout moved expires-at from {shown:?} to {after:?}"
    );
    let drained = wait_until("the instance to be drained", WAIT, || async {
        ensure!(
            !setup.pods("clock").await?.is_empty(),
            "the instance went before its drain was seen"
        );
        instance_time(&setup.ns, "clock", DRAINING_SINCE_ANNOTATION).await
    })
    .await?;
    ensure!(
        gap(drained, expected) <= Duration::from_secs(1),
        "drained at {drained:?}, expected last request + keep-alive {expected:?}"
    );
    wait_until("the drained instance deleted", WAIT, || async {
        Ok(setup.pods("clock").await?.is_empty().then_some(()))
    })
    .await?;
    setup.finish().await
}
