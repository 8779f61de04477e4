//! The autoscaler end to end on the local cluster: scale from zero on the
//! first request, scale up on concurrency, destroy each instance exactly its
//! keep-alive after its own last request, floors, warm instances, the
//! instance cap, and reaping under load without losing a request; thaw runs
//! with the chart's ServiceAccounts and RBAC throughout.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use serde_json::json;
use thaw_api::Function;
use thaw_e2e::{
    functions::{apply_function, instance_pods, is_ready},
    http::{self, Reply},
    install::ChartSetup,
    metrics::metric_sum,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(60);

/// thaw installed by the chart for this test ([`ChartSetup`]).
struct Setup(ChartSetup);

impl std::ops::Deref for Setup {
    type Target = ChartSetup;
    fn deref(&self) -> &ChartSetup {
        &self.0
    }
}

impl Setup {
    async fn new(prefix: &str) -> Setup {
        Setup(
            ChartSetup::new(prefix)
                .await
                .unwrap_or_else(|e| panic!("{e:#}")),
        )
    }

    fn logs(&self) -> String {
        self.chart.logs()
    }

    async fn apply(&self, name: &str, spec: serde_json::Value) {
        apply_function(&self.ns, name, spec)
            .await
            .expect("apply Function");
        self.chart
            .activator
            .wait_routes(&self.ns.name, name, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
    }

    /// One request through the activator, addressed by Host.
    async fn request(&self, name: &str, path: &str) -> Result<Reply> {
        let host = format!("{name}.{}.svc.cluster.local", self.ns.name);
        http::get(
            self.chart.activator.addr(),
            &host,
            path,
            Duration::from_secs(60),
        )
        .await
    }

    async fn live_pods(&self, name: &str) -> Result<Vec<Pod>> {
        Ok(instance_pods(&self.ns, name)
            .await?
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(key).cloned()
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Sends `n` requests at once; every reply with when it arrived, in no order.
async fn burst(
    setup: &Arc<Setup>,
    name: &str,
    n: usize,
    path: &str,
) -> Vec<(Result<Reply>, Timestamp)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let setup = setup.clone();
        let (name, path) = (name.to_owned(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let reply = setup.request(&name, &path).await;
            (reply, Timestamp::now())
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

/// Watches the Function's live pods in the background: the most seen at
/// once, and for each pod the last `thaw.dev/expires-at` it showed and when
/// it was first seen draining or gone.
#[derive(Default)]
struct PoolWatch {
    peak: usize,
    expires_at: BTreeMap<String, Timestamp>,
    ended: BTreeMap<String, Timestamp>,
}

fn watch_pool(
    setup: &Arc<Setup>,
    name: &str,
) -> (Arc<Mutex<PoolWatch>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(PoolWatch::default()));
    let (setup, name, out) = (setup.clone(), name.to_owned(), seen.clone());
    let task = tokio::spawn(async move {
        let mut known = BTreeSet::new();
        loop {
            if let Ok(pods) = setup.live_pods(&name).await {
                let now = Timestamp::now();
                let mut w = out.lock().expect("watch lock");
                let live: BTreeSet<String> = pods
                    .iter()
                    .filter(|p| annotation(p, "thaw.dev/draining-since").is_none())
                    .map(name_of)
                    .collect();
                w.peak = w.peak.max(live.len());
                for pod in &pods {
                    if let Some(at) =
                        annotation(pod, "thaw.dev/expires-at").and_then(|a| a.parse().ok())
                    {
                        w.expires_at.insert(name_of(pod), at);
                    }
                }
                for gone in known.difference(&live) {
                    w.ended.entry(gone.clone()).or_insert(now);
                }
                known = live;
            }
            // A sampler, not a wait: it records what the pool looks like
            // while the test runs its load.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (seen, task)
}

#[tokio::test]
async fn cold_start_scale_up_and_each_instance_reaped_after_its_own_keep_alive() {
    let setup = Arc::new(Setup::new("as-keepalive").await);
    setup
        .apply(
            "fn",
            json!({ "image": "thaw.dev/samples/testfn", "scaling": { "keepAlive": "5s" } }),
        )
        .await;

    // Ready with no instances.
    wait_until("Ready=True at zero instances", WAIT, || async {
        let f = setup.ns.api::<Function>().get("fn").await?;
        let Some(status) = f.status else {
            return Ok(None);
        };
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let zero = status
            .instances
            .as_ref()
            .is_some_and(|i| i.ready == 0 && i.starting == 0);
        Ok((ready && zero).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));

    // The first request cold-starts an instance.
    let first = setup
        .request("fn", "/")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    assert_eq!(first.status, 200, "{}", first.body);
    let waited = first
        .headers
        .get("thaw-cold-start")
        .expect("Thaw-Cold-Start header");
    assert!(waited.to_str().expect("ascii").ends_with("ms"));

    // 20 concurrent half-second requests on concurrency 1: about 20 instances, no error.
    let (pool, watcher) = watch_pool(&setup, "fn");
    let started = Instant::now();
    let replies = burst(&setup, "fn", 20, "/?sleep=500").await;
    let mut last_request: BTreeMap<String, Timestamp> = BTreeMap::new();
    for (reply, arrived) in &replies {
        let reply = reply
            .as_ref()
            .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
        assert_eq!(reply.status, 200, "{}", reply.body);
        let instance = reply
            .headers
            .get("x-instance")
            .and_then(|v| v.to_str().ok())
            .expect("X-Instance");
        let last = last_request.entry(instance.to_owned()).or_insert(*arrived);
        *last = (*last).max(*arrived);
    }
    println!(
        "20 requests served by {} instances in {:?}",
        last_request.len(),
        started.elapsed()
    );
    let peak = pool.lock().expect("lock").peak;
    assert!(
        (10..=29).contains(&peak),
        "peak of {peak} instances for 20 concurrent requests"
    );

    // After the load each instance goes about 5 s after its own last
    // request, never before the expiry its annotation announced, down to 0.
    wait_until("every instance gone", Duration::from_secs(90), || async {
        Ok(setup.live_pods("fn").await?.is_empty().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    watcher.abort();
    {
        let pool = pool.lock().expect("lock");
        for (pod, ended) in &pool.ended {
            let Some(expires_at) = pool.expires_at.get(pod) else {
                continue;
            };
            // Annotations are rounded to the second; the watch polls every 100 ms.
            let early = expires_at.duration_since(*ended).as_secs_f64();
            assert!(
                early < 1.2,
                "{pod} was reaped {early:.1}s before its announced expiry {expires_at}"
            );
            if let Some(last) = last_request.get(pod) {
                let announced = expires_at.duration_since(*last).as_secs_f64();
                assert!(
                    (3.5..=6.5).contains(&announced),
                    "{pod}: expiry announced {announced:.1}s after its last request"
                );
            }
            println!("{pod}: expiry announced {expires_at}, reaped at {ended}");
        }
        assert!(
            !pool.expires_at.is_empty(),
            "no instance ever announced its expiry"
        );
    }

    // The next request cold-starts again.
    let again = setup.request("fn", "/").await.expect("request");
    assert_eq!(again.status, 200);
    assert!(again.headers.contains_key("thaw-cold-start"));
}

#[tokio::test]
async fn min_instances_keep_one_instance_past_its_keep_alive() {
    let setup = Setup::new("as-min").await;
    setup.apply("fn", json!({ "image": "thaw.dev/samples/hello", "scaling": { "minInstances": 1, "keepAlive": "1s" } })).await;
    let pod = wait_until("one ready instance", WAIT, || async {
        let pods = setup.live_pods("fn").await?;
        Ok((pods.len() == 1 && is_ready(&pods[0])).then(|| name_of(&pods[0])))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    let reply = setup.request("fn", "/").await.expect("request");
    assert_eq!(reply.status, 200);
    // Five keep-alives later the same instance is there, marked as kept.
    let since = Instant::now();
    let kept = wait_until(
        "5 keep-alives of observation",
        Duration::from_secs(20),
        || async {
            let pods = setup.live_pods("fn").await?;
            anyhow::ensure!(
                pods.len() == 1 && name_of(&pods[0]) == pod,
                "the instance changed: {:?}",
                pods.iter().map(name_of).collect::<Vec<_>>()
            );
            Ok((since.elapsed() > Duration::from_secs(5))
                .then(|| annotation(&pods[0], "thaw.dev/kept")))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    assert_eq!(kept.as_deref(), Some("kept by minInstances"));
}

#[tokio::test]
async fn warm_instances_stay_ready_beside_the_busy_one() {
    let setup = Arc::new(Setup::new("as-warm").await);
    setup.apply("fn", json!({ "image": "thaw.dev/samples/testfn", "scaling": { "warmInstances": 2, "keepAlive": "2s" } })).await;
    wait_until("two idle warm instances", WAIT, || async {
        let pods = setup.live_pods("fn").await?;
        Ok((pods.len() == 2 && pods.iter().all(is_ready)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    // One long request makes one instance busy: two more stay warm beside it.
    let busy = {
        let setup = setup.clone();
        tokio::spawn(async move { setup.request("fn", "/?sleep=8000").await })
    };
    let first = setup.request("fn", "/").await.expect("request");
    assert!(
        !first.headers.contains_key("thaw-cold-start"),
        "a warm instance served without a cold start"
    );
    wait_until("three ready instances while one is busy", WAIT, || async {
        let pods = setup.live_pods("fn").await?;
        let ready = pods
            .iter()
            .filter(|p| is_ready(p) && annotation(p, "thaw.dev/draining-since").is_none())
            .count();
        Ok((ready >= 3).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    let reply = busy.await.expect("task").expect("long request");
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn max_instances_caps_the_pool_and_the_rest_waits() {
    let setup = Arc::new(Setup::new("as-max").await);
    setup.apply("fn", json!({ "image": "thaw.dev/samples/testfn", "scaling": { "maxInstances": 3, "keepAlive": "30s" } })).await;
    let (pool, watcher) = watch_pool(&setup, "fn");
    let replies = burst(&setup, "fn", 10, "/?sleep=300").await;
    watcher.abort();
    let mut instances = BTreeSet::new();
    for (reply, _) in replies {
        let reply = reply.unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
        assert_eq!(reply.status, 200, "{}", reply.body);
        instances.insert(
            reply
                .headers
                .get("x-instance")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(instances.len() <= 3, "served by {instances:?}");
    let peak = pool.lock().expect("lock").peak;
    assert!(peak <= 3, "{peak} instances with maxInstances 3");
}

#[tokio::test]
async fn reaping_under_steady_load_loses_no_request() {
    let setup = Arc::new(Setup::new("as-reap").await);
    setup.apply("fn", json!({ "image": "thaw.dev/samples/testfn", "concurrency": 1, "scaling": { "keepAlive": "1s" } })).await;
    // Waves of 1 to 6 concurrent requests for about 20 s: instances start
    // for each wave and expire between them.
    let started = Instant::now();
    let (mut sent, mut failed) = (0, Vec::new());
    let mut wave = 0;
    while started.elapsed() < Duration::from_secs(20) {
        wave += 1;
        let n = 1 + wave % 6;
        for (reply, _) in burst(&setup, "fn", n, "/?sleep=100").await {
            sent += 1;
            match reply {
                Ok(r) if r.status == 200 => {}
                Ok(r) => failed.push(format!("{}: {}", r.status, r.body)),
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        // Gaps longer than the keep-alive every third wave, so instances are reaped.
        let gap = if wave % 3 == 0 { 1500 } else { 200 };
        // The gap is the load's shape (the input under test), not a wait.
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    let operator = std::net::SocketAddr::from(([127, 0, 0, 1], setup.chart.operator.http_port));
    let reaps = metric_sum(operator, "thaw_reaps_total")
        .await
        .expect("operator metrics");
    println!("{sent} requests, {} failed, {reaps} reaps", failed.len());
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}\n{}",
        failed.len(),
        setup.logs()
    );
    assert!(
        reaps >= 3.0,
        "only {reaps} reaps: the test did not exercise reaping"
    );
}
