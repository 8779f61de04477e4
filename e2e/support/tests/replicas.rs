//! The promises in the topology the chart installs: two operator replicas
//! (one leads), several activators, restarts, rollouts and failover, on the
//! real API server and the process node. Clients pick among the activators
//! that are ready, as a Service spreads traffic over its endpoints.
//!
//! - at most `concurrency` requests on an instance, whatever the number of
//!   activators and while they join, leave or are killed;
//! - no request lost to a rolling restart of the activators or to the death
//!   of the leading operator;
//! - no instance deleted while a request runs on it, even when the activator
//!   carrying it cannot report;
//! - an instance's expiry does not move when activators restart.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use thaw_api::{
    Function,
    keys::{DRAINING_SINCE_ANNOTATION, EXPIRES_AT_ANNOTATION, FUNCTION_LABEL},
};
use thaw_e2e::{
    Cluster, Operator, TestNamespace,
    functions::{apply_function, gap, instance_time},
    http::get,
    load::{Endpoints, Load, LoadOptions, Tally},
    process::Activator,
    relay::Relay,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(60);
/// How long a stopping activator keeps serving, not ready (the chart's
/// `shutdownDelaySeconds`, shortened for tests).
const SHUTDOWN_DELAY: &str = "2s";

/// A namespace with two operator replicas and a set of activators, each
/// activator reporting to both operators (through a relay a test can cut).
struct Fleet {
    activators: Vec<Activator>,
    relays: Vec<Vec<Relay>>,
    operators: Vec<Operator>,
    endpoints: Endpoints,
    readiness: tokio::task::JoinHandle<()>,
    ns: TestNamespace,
    cluster: Cluster,
}

impl Fleet {
    async fn start(prefix: &str, activators: &[&str]) -> Fleet {
        let cluster = Cluster::shared().await.expect("cluster");
        cluster.install_function_crd().await.expect("CRD");
        let ns = cluster.namespace(prefix).await.expect("namespace");
        let operators = ["op-a", "op-b"]
            .into_iter()
            .map(|id| Operator::start(&cluster, &ns.name, id).expect("operator"))
            .collect();
        let endpoints = Endpoints::default();
        let readiness = endpoints.watch_readiness();
        let mut fleet = Fleet {
            activators: Vec::new(),
            relays: Vec::new(),
            operators,
            endpoints,
            readiness,
            ns,
            cluster,
        };
        for id in activators {
            fleet.add_activator(id).await;
        }
        fleet
    }

    /// Starts activator `id` (a new process, even if one of that id ran
    /// before) and waits until it is ready and routes nothing yet.
    async fn add_activator(&mut self, id: &str) -> usize {
        let mut relays = Vec::new();
        for operator in &self.operators {
            let target = SocketAddr::from(([127, 0, 0, 1], operator.http_port));
            relays.push(Relay::start(target).await.expect("relay"));
        }
        let urls: Vec<String> = relays
            .iter()
            .map(|r| format!("http://{}/v1/stats", r.addr))
            .collect();
        let args: Vec<String> = [
            "--watch-namespace",
            &self.ns.name,
            "--autoscaler-url",
            &urls.join(","),
            "--id",
            id,
            "--shutdown-delay",
            SHUTDOWN_DELAY,
        ]
        .map(String::from)
        .to_vec();
        // Ports are picked free, then bound by the process: another test
        // may take one in between, so a start that could not bind is retried.
        let mut attempts = 0;
        let activator = loop {
            attempts += 1;
            let mut activator = Activator::start_args(
                self.cluster.kubeconfig(),
                &format!("{}-{id}", self.ns.name),
                id,
                &args,
            )
            .expect("activator");
            let mut ready = Err(anyhow::anyhow!("not ready"));
            for _ in 0..60 {
                ready = activator.wait_ready(Duration::from_secs(1)).await;
                if ready.is_ok() || !activator.running() {
                    break;
                }
            }
            match ready {
                Ok(()) => break activator,
                Err(_) if attempts < 3 && activator.log().contains("binding") => {}
                Err(e) => panic!("{e:#}\n{}", activator.log()),
            }
        };
        self.endpoints.add(activator.addr(), activator.admin_addr());
        self.activators.push(activator);
        self.relays.push(relays);
        self.activators.len() - 1
    }

    /// SIGTERM: the activator stops being ready, serves through its
    /// shutdown delay, finishes what is open and exits.
    fn stop_activator(&mut self, index: usize) {
        let mut activator = self.activators.remove(index);
        // Its relays stay up until it has exited: its last report says it
        // is leaving.
        let relays = self.relays.remove(index);
        let status = activator.stop_within(Duration::from_secs(30));
        drop(relays);
        self.endpoints.remove(activator.addr());
        assert!(
            status.is_some_and(|s| s.success()),
            "activator {} did not stop cleanly: {status:?}\n{}",
            activator.id,
            activator.log()
        );
    }

    /// SIGKILL: a crash. Its endpoint disappears only when readiness fails.
    fn kill_activator(&mut self, index: usize) {
        let mut activator = self.activators.remove(index);
        self.relays.remove(index);
        activator.kill();
        self.endpoints.remove(activator.addr());
    }

    /// Applies Function `name` and waits until every activator routes it.
    async fn function(&self, name: &str, spec: Value) {
        apply_function(&self.ns, name, spec)
            .await
            .expect("apply Function");
        for activator in &self.activators {
            activator
                .wait_routes(&self.ns.name, name, WAIT)
                .await
                .unwrap_or_else(|e| self.fail(e));
        }
    }

    fn host(&self, name: &str) -> String {
        format!("{name}.{}.svc.cluster.local", self.ns.name)
    }

    async fn pods(&self, name: &str) -> Vec<Pod> {
        self.ns
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("{FUNCTION_LABEL}={name}")))
            .await
            .expect("pods")
            .items
    }

    /// The operator holding the Lease.
    async fn leader(&self) -> usize {
        let leases: Api<Lease> = Api::namespaced(self.cluster.client(), &self.ns.name);
        let holder = wait_until("an operator to hold the Lease", WAIT, || async {
            Ok(leases
                .get_opt("thaw-operator")
                .await?
                .and_then(|l| l.spec?.holder_identity))
        })
        .await
        .unwrap_or_else(|e| self.fail(e));
        self.operators
            .iter()
            .position(|o| o.identity == holder)
            .unwrap_or_else(|| self.fail(anyhow::anyhow!("unknown Lease holder {holder}")))
    }

    fn fail<T>(&self, error: anyhow::Error) -> T {
        let mut logs = String::new();
        for a in &self.activators {
            logs += &format!("\n--- activator {} ---\n{}", a.id, tail(&a.log()));
        }
        for o in &self.operators {
            logs += &format!("\n--- operator {} ---\n{}", o.identity, tail(&o.log()));
        }
        panic!("{error:#}{logs}")
    }

    async fn finish(self) {
        let Fleet {
            activators,
            relays,
            operators,
            readiness,
            ns,
            cluster,
            ..
        } = self;
        readiness.abort();
        drop(activators);
        drop(relays);
        drop(operators);
        let _ = Api::<Namespace>::all(cluster.client())
            .delete(&ns.name, &DeleteParams::background())
            .await;
    }
}

fn tail(log: &str) -> &str {
    let start = log.len().saturating_sub(6000);
    let start = (start..log.len())
        .find(|i| log.is_char_boundary(*i))
        .unwrap_or(log.len());
    &log[start..]
}

/// Waits until the load has answered `more` further requests.
async fn progress(fleet: &Fleet, load: &Load, more: u64) {
    let target = load.ok() + more;
    wait_until(&format!("{more} more answered requests"), WAIT, || async {
        Ok((load.ok() >= target).then_some(()))
    })
    .await
    .unwrap_or_else(|e| fleet.fail(e));
}

/// testfn's own counts on every instance, read at its pod IP: the sum of
/// overlaps, the highest in-flight count and the requests it served.
async fn instance_counts(fleet: &Fleet, name: &str) -> Result<(u64, u64, u64)> {
    let (mut overlaps, mut peak, mut served) = (0, 0, 0);
    for pod in fleet.pods(name).await {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let addr: SocketAddr = format!("{ip}:8080").parse()?;
        let Ok(reply) = get(addr, &ip, "/stats", Duration::from_secs(5)).await else {
            // An instance already gone: the ones that served are checked.
            continue;
        };
        let stats: Value = serde_json::from_str(&reply.body).context("testfn stats")?;
        overlaps += stats["overlaps"].as_u64().unwrap_or_default();
        peak = peak.max(stats["maxInFlight"].as_u64().unwrap_or_default());
        served += stats["requests"].as_u64().unwrap_or_default();
    }
    Ok((overlaps, peak, served))
}

/// Names of the Function's ready instance pods.
async fn ready_pods(fleet: &Fleet, name: &str) -> BTreeSet<String> {
    fleet
        .pods(name)
        .await
        .into_iter()
        .filter(thaw_e2e::functions::is_ready)
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// A Function packed beyond what its instances can hold, so activators
/// compete for the same slots: two instances at most, eight clients.
fn crowded(concurrency: u32) -> Value {
    json!({
        "image": "thaw.dev/samples/testfn",
        "concurrency": concurrency,
        "env": [{"name": "MAX_CONCURRENCY", "value": concurrency.to_string()}],
        "scaling": {"maxInstances": 2, "keepAlive": "5m"},
        "queue": {"maxPending": 500, "maxWait": "60s"},
    })
}

async fn hard_limit_holds_while_activators_come_and_go(prefix: &str, concurrency: u32) {
    let mut fleet = Fleet::start(prefix, &["act-a", "act-b"]).await;
    fleet.function("crowded", crowded(concurrency)).await;
    let load = Load::start(
        &fleet.endpoints,
        &LoadOptions {
            keep_alive_clients: 4,
            fresh_clients: 4 * concurrency as usize,
            host: fleet.host("crowded"),
            path: "/?sleep=60".into(),
            pause: Duration::ZERO,
        },
    );
    progress(&fleet, &load, 60).await;
    // A third activator joins mid-load.
    let c = fleet.add_activator("act-c").await;
    fleet.activators[c]
        .wait_routes(&fleet.ns.name, "crowded", WAIT)
        .await
        .unwrap_or_else(|e| fleet.fail(e));
    progress(&fleet, &load, 60).await;
    // One leaves gracefully.
    let b = fleet
        .activators
        .iter()
        .position(|a| a.id == "act-b")
        .expect("act-b");
    fleet.stop_activator(b);
    progress(&fleet, &load, 60).await;
    // One is killed and comes back under the same id.
    let a = fleet
        .activators
        .iter()
        .position(|a| a.id == "act-a")
        .expect("act-a");
    fleet.kill_activator(a);
    progress(&fleet, &load, 30).await;
    let a = fleet.add_activator("act-a").await;
    fleet.activators[a]
        .wait_routes(&fleet.ns.name, "crowded", WAIT)
        .await
        .unwrap_or_else(|e| fleet.fail(e));
    progress(&fleet, &load, 60).await;
    let tally: Tally = load.stop().await;

    let (overlaps, peak, served) = instance_counts(&fleet, "crowded")
        .await
        .unwrap_or_else(|e| fleet.fail(e));
    assert!(tally.ok >= 270, "load ran: {} answered", tally.ok);
    assert!(
        served >= tally.ok,
        "instances served {served} < {} answered",
        tally.ok
    );
    assert_eq!(
        overlaps, 0,
        "requests overlapped on an instance (peak {peak} at concurrency {concurrency})"
    );
    assert!(
        peak <= u64::from(concurrency),
        "peak {peak} > {concurrency}"
    );
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_one_holds_across_activators_joining_leaving_and_killed() {
    hard_limit_holds_while_activators_come_and_go("rep-c1", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_three_holds_across_activators_joining_leaving_and_killed() {
    hard_limit_holds_while_activators_come_and_go("rep-c3", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_the_activators_fails_no_request() {
    let mut fleet = Fleet::start("rep-roll", &["act-a", "act-b"]).await;
    fleet
        .function(
            "steady",
            json!({
                "image": "thaw.dev/samples/testfn",
                "concurrency": 20,
                "scaling": {"minInstances": 1, "keepAlive": "5m"},
            }),
        )
        .await;
    // Warm: the first request may wait for the instance.
    wait_until("the instance to answer", WAIT, || async {
        let addr = fleet.activators[0].addr();
        let reply = get(addr, &fleet.host("steady"), "/", WAIT).await?;
        Ok((reply.status == 200).then_some(()))
    })
    .await
    .unwrap_or_else(|e| fleet.fail(e));
    // About 80 requests a second: 4 keep-alive and 4 fresh clients, each
    // pausing 90 ms after a 10 ms request.
    let load = Load::start(
        &fleet.endpoints,
        &LoadOptions {
            keep_alive_clients: 4,
            fresh_clients: 4,
            host: fleet.host("steady"),
            path: "/?sleep=10".into(),
            pause: Duration::from_millis(90),
        },
    );
    let started = std::time::Instant::now();
    progress(&fleet, &load, 400).await;
    // Roll: each old replica replaced by a new one, one after the other,
    // the new one ready before the old one stops (a Deployment's surge).
    for (old, new) in [("act-a", "act-a2"), ("act-b", "act-b2")] {
        let added = fleet.add_activator(new).await;
        fleet.activators[added]
            .wait_routes(&fleet.ns.name, "steady", WAIT)
            .await
            .unwrap_or_else(|e| fleet.fail(e));
        let index = fleet
            .activators
            .iter()
            .position(|a| a.id == old)
            .expect("old replica");
        fleet.stop_activator(index);
        progress(&fleet, &load, 300).await;
    }
    // At least 30 s of load in all.
    while started.elapsed() < Duration::from_secs(30) {
        progress(&fleet, &load, 80).await;
    }
    let elapsed = started.elapsed();
    let tally = load.stop().await;
    assert!(
        tally.failed.is_empty(),
        "{} of {} requests failed: {:?}",
        tally.failed.len(),
        tally.ok + tally.failed.len() as u64,
        &tally.failed[..tally.failed.len().min(10)]
    );
    let rate = tally.ok as f64 / elapsed.as_secs_f64();
    assert!(rate >= 50.0, "{rate:.0} req/s over {elapsed:?}");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leading_operator_loses_no_request_and_duplicates_no_instance() {
    let mut fleet = Fleet::start("rep-leader", &["act-a", "act-b"]).await;
    fleet
        .function(
            "pool",
            json!({
                "image": "thaw.dev/samples/testfn",
                "concurrency": 1,
                "scaling": {"minInstances": 2, "maxInstances": 2, "keepAlive": "5m"},
                "queue": {"maxPending": 100, "maxWait": "60s"},
            }),
        )
        .await;
    let before = wait_until("two ready instances", WAIT, || async {
        let names = ready_pods(&fleet, "pool").await;
        Ok((names.len() == 2).then_some(names))
    })
    .await
    .unwrap_or_else(|e| fleet.fail(e));
    let load = Load::start(
        &fleet.endpoints,
        &LoadOptions {
            keep_alive_clients: 2,
            fresh_clients: 1,
            host: fleet.host("pool"),
            path: "/?sleep=20".into(),
            pause: Duration::from_millis(20),
        },
    );
    progress(&fleet, &load, 50).await;
    let leader = fleet.leader().await;
    let dead = fleet.operators[leader].identity.clone();
    let killed = std::time::Instant::now();
    fleet.operators[leader].kill();
    // The survivor takes the Lease over once it expires (4 s in tests).
    let survivor = 1 - leader;
    let leases: Api<Lease> = Api::namespaced(fleet.cluster.client(), &fleet.ns.name);
    let new_holder = fleet.operators[survivor].identity.clone();
    wait_until("the survivor to take the Lease", WAIT, || async {
        let holder = leases
            .get_opt("thaw-operator")
            .await?
            .and_then(|l| l.spec?.holder_identity);
        Ok((holder.as_deref() == Some(new_holder.as_str())).then_some(()))
    })
    .await
    .unwrap_or_else(|e| fleet.fail(e));
    let took_over = killed.elapsed();
    progress(&fleet, &load, 100).await;
    let after = ready_pods(&fleet, "pool").await;
    assert_eq!(
        before, after,
        "the new leader ({new_holder}, after {dead}) kept the pool"
    );
    let all: BTreeSet<String> = fleet
        .pods("pool")
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(all, before, "no instance created twice");

    // The new leader acts: more room, more load, a third instance.
    let raised = std::time::Instant::now();
    Api::<Function>::namespaced(fleet.cluster.client(), &fleet.ns.name)
        .patch(
            "pool",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scaling": {"maxInstances": 4}}})),
        )
        .await
        .expect("raise maxInstances");
    let more = Load::start(
        &fleet.endpoints,
        &LoadOptions {
            keep_alive_clients: 0,
            fresh_clients: 4,
            host: fleet.host("pool"),
            path: "/?sleep=200".into(),
            pause: Duration::ZERO,
        },
    );
    wait_until("the new leader to scale up", WAIT, || async {
        Ok((fleet.pods("pool").await.len() > 2).then_some(()))
    })
    .await
    .unwrap_or_else(|e| fleet.fail(e));
    // Figures for docs/benchmarks.md (`-- --nocapture`), not assertions.
    eprintln!(
        "leader {dead} killed: Lease taken over after {took_over:?}; \
         the new leader's scale-up seen {:?} after the demand, {:?} after the kill",
        raised.elapsed(),
        killed.elapsed()
    );
    let extra = more.stop().await;
    let tally = load.stop().await;
    let failed: Vec<&String> = tally.failed.iter().chain(&extra.failed).collect();
    assert!(
        failed.is_empty(),
        "{} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_busy_through_a_cut_off_activator_is_not_deleted() {
    let fleet = Fleet::start("rep-cut", &["act-a", "act-b"]).await;
    // Short keep-alive and timeout: the operator forgets the silent
    // activator after timeout + 10 s = 18 s and would reap at once.
    fleet
        .function(
            "long",
            json!({
                "image": "thaw.dev/samples/testfn",
                "concurrency": 1,
                "timeout": "8s",
                "scaling": {"keepAlive": "2s", "maxInstances": 1},
            }),
        )
        .await;
    fleet
        .function(
            "other",
            json!({
                "image": "thaw.dev/samples/testfn",
                "timeout": "2s",
                "scaling": {"keepAlive": "2s"},
            }),
        )
        .await;
    let via_a = fleet.activators[0].addr();
    let via_b = fleet.activators[1].addr();
    let first = get(via_a, &fleet.host("long"), "/?sleep=10", WAIT)
        .await
        .unwrap_or_else(|e| fleet.fail(e));
    assert_eq!(first.status, 200, "{first:?}");
    let instance = fleet
        .pods("long")
        .await
        .into_iter()
        .next()
        .expect("instance");
    let uid = instance.metadata.uid.clone();

    // act-a's reports are cut; it keeps serving requests back to back, for
    // longer than the operator takes to forget it.
    for relay in &fleet.relays[0] {
        relay.block(true);
    }
    let started = std::time::Instant::now();
    let mut requests = 0;
    while started.elapsed() < Duration::from_secs(26) {
        let reply = get(via_a, &fleet.host("long"), "/?sleep=6000", WAIT)
            .await
            .unwrap_or_else(|e| fleet.fail(e));
        assert_eq!(
            reply.status, 200,
            "request {requests} through the cut-off activator: {reply:?}"
        );
        requests += 1;
        let pod = fleet
            .pods("long")
            .await
            .into_iter()
            .find(|p| p.metadata.uid == uid);
        let pod =
            pod.unwrap_or_else(|| fleet.fail(anyhow::anyhow!("instance deleted while serving")));
        assert!(
            pod.metadata.deletion_timestamp.is_none(),
            "instance deleted while serving"
        );
        let draining = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(DRAINING_SINCE_ANNOTATION));
        assert!(!draining, "instance drained while busy through act-a");
    }

    // Meanwhile another Function, served through act-b, is reaped: its
    // instance goes by keep-alive plus the silent activator's forget time
    // (its timeout 2 s + 10 s) at the latest.
    let reply = get(via_b, &fleet.host("other"), "/", WAIT)
        .await
        .unwrap_or_else(|e| fleet.fail(e));
    assert_eq!(reply.status, 200, "{reply:?}");
    wait_until(
        "the other Function's instance to be reaped",
        Duration::from_secs(40),
        || async { Ok(fleet.pods("other").await.is_empty().then_some(())) },
    )
    .await
    .unwrap_or_else(|e| fleet.fail(e));
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_activator_restart_after_the_last_request_moves_no_expiry() {
    const KEEP_ALIVE: Duration = Duration::from_secs(12);
    let mut fleet = Fleet::start("rep-clock", &["act-a", "act-b"]).await;
    fleet
        .function(
            "clock",
            json!({"image": "thaw.dev/samples/testfn", "scaling": {"keepAlive": "12s"}}),
        )
        .await;
    let reply = get(
        fleet.activators[0].addr(),
        &fleet.host("clock"),
        "/?sleep=10",
        WAIT,
    )
    .await
    .unwrap_or_else(|e| fleet.fail(e));
    let last_request = SystemTime::now();
    assert_eq!(reply.status, 200, "{reply:?}");
    let expected = last_request + KEEP_ALIVE;
    let shown = wait_until("the instance's expires-at", WAIT, || {
        instance_time(&fleet.ns, "clock", EXPIRES_AT_ANNOTATION)
    })
    .await
    .unwrap_or_else(|e| fleet.fail(e));
    assert!(
        gap(shown, expected) <= Duration::from_secs(1),
        "expires-at {shown:?} vs last request + keep-alive {expected:?}"
    );

    // The activator that carried the request is replaced (a rollout step):
    // the new process never saw a request on the instance.
    let new = fleet.add_activator("act-a2").await;
    fleet.activators[new]
        .wait_routes(&fleet.ns.name, "clock", WAIT)
        .await
        .unwrap_or_else(|e| fleet.fail(e));
    fleet.stop_activator(0);

    let drained = wait_until("the instance to be drained", WAIT, || async {
        if fleet.pods("clock").await.is_empty() {
            anyhow::bail!("the instance went before its drain was seen");
        }
        instance_time(&fleet.ns, "clock", DRAINING_SINCE_ANNOTATION).await
    })
    .await
    .unwrap_or_else(|e| fleet.fail(e));
    assert!(
        gap(drained, expected) <= Duration::from_secs(1),
        "drained at {drained:?}, expected last request + keep-alive {expected:?} (shown {shown:?})"
    );
    fleet.finish().await;
}
