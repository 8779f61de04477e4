//! A fresh instance for every invocation (issue 15): `maxRequestsPerInstance`
//! with warm fresh instances, each used instance deleted soon after its
//! response, a clean per-instance /tmp, and `podTemplate.runtimeClassName`
//! naming a RuntimeClass that does not exist (yet). thaw runs as the chart
//! installs it (its ServiceAccounts and RBAC), on the local cluster.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::Result;
use k8s_openapi::api::{core::v1::Pod, node::v1::RuntimeClass};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;
use thaw_api::{Function, keys::DRAINING_SINCE_ANNOTATION};
use thaw_e2e::{
    Cluster,
    fixtures::sample_image,
    functions::{apply_function, instance_pods, is_ready},
    http::{self, Reply},
    install::ChartSetup,
    process::{Activator, Operator},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(60);
/// How long a used instance may take to be gone: generous, the figure
/// itself goes to docs/benchmarks.md.
const GONE_WITHIN: Duration = Duration::from_secs(30);

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

    async fn apply(&self, name: &str, spec: serde_json::Value) {
        apply_function(&self.ns, name, spec)
            .await
            .expect("apply Function");
        self.chart
            .activator
            .wait_routes(&self.ns.name, name, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.chart.logs()));
    }

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

    /// Ready instances never used: not draining, not deleted, not in `used`.
    async fn fresh_ready(&self, name: &str, used: &BTreeSet<String>) -> Result<Vec<String>> {
        Ok(instance_pods(&self.ns, name)
            .await?
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .filter(|p| !draining(p))
            .map(name_of)
            .filter(|n| !used.contains(n))
            .collect())
    }

    /// The Function's Ready condition: (status, reason, message).
    async fn ready_condition(&self, name: &str) -> Result<Option<(String, String, String)>> {
        let f = self.ns.api::<Function>().get(name).await?;
        Ok(f.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| (c.status, c.reason, c.message))
        }))
    }
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn draining(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(DRAINING_SINCE_ANNOTATION))
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_gets_a_fresh_warm_instance_that_is_gone_soon_after() {
    let setup = Setup::new("fresh-once").await;
    setup
        .apply(
            "once",
            json!({
                "image": sample_image("testfn"),
                "concurrency": 1,
                "maxRequestsPerInstance": 1,
                "scaling": { "warmInstances": 2, "keepAlive": "10m" },
            }),
        )
        .await;

    let mut used = BTreeSet::new();
    let mut gone = Vec::new();
    for i in 0..20 {
        // Spaced wider than an instance's start: wait until two fresh
        // instances are ready again, so no request should wait.
        wait_until("two fresh warm instances", WAIT, || async {
            let fresh = setup.fresh_ready("once", &used).await?;
            Ok((fresh.len() >= 2).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", setup.chart.logs()));
        let reply = setup.request("once", "/?tmp=write").await.expect("request");
        let answered = Instant::now();
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
        let instance = header(&reply, "x-instance").expect("x-instance").to_owned();
        assert_eq!(
            header(&reply, "x-served"),
            Some("1"),
            "request {i} on {instance}: not the instance's first request"
        );
        assert_eq!(
            header(&reply, "x-tmp-marker"),
            Some("fresh"),
            "request {i} on {instance}: /tmp held a marker from an earlier request"
        );
        assert_eq!(
            header(&reply, "thaw-cold-start"),
            None,
            "request {i} on {instance} waited for a cold start"
        );
        assert!(
            used.insert(instance.clone()),
            "request {i}: {instance} answered an earlier request"
        );
        let ns = setup.ns.name.clone();
        let pods: Api<Pod> = setup.ns.api();
        gone.push(tokio::spawn(async move {
            wait_until("the used instance gone", GONE_WITHIN, || async {
                Ok(pods.get_opt(&instance).await?.is_none().then_some(()))
            })
            .await
            .map(|()| answered.elapsed())
            .map_err(|e| anyhow::anyhow!("{ns}/{instance}: {e:#}"))
        }));
    }
    assert_eq!(used.len(), 20, "20 requests, 20 different instances");
    let mut times = Vec::new();
    for task in gone {
        let elapsed = task
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.chart.logs()));
        times.push(elapsed);
    }
    times.sort();
    println!(
        "used instance gone after its response: p50 {:?}, max {:?} (20 instances)",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_requests_hold_under_load_through_two_activators() {
    let cluster = Cluster::shared().await.expect("cluster");
    cluster.install_function_crd().await.expect("CRD");
    let ns = cluster.namespace("fresh-five").await.expect("namespace");
    let operator = Operator::start(&cluster, &ns.name, "op").expect("operator");
    let activators: Vec<Activator> = ["act-a", "act-b"]
        .into_iter()
        .map(|id| Activator::start(&cluster, &ns.name, &operator, id, &[]).expect("activator"))
        .collect();
    let logs = || {
        let mut all = operator.log();
        for a in &activators {
            all.push_str(&a.log());
        }
        all
    };
    for a in &activators {
        a.wait_ready(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    }
    apply_function(
        &ns,
        "five",
        json!({
            "image": sample_image("testfn"),
            "concurrency": 1,
            "maxRequestsPerInstance": 5,
            "scaling": { "warmInstances": 1 },
        }),
    )
    .await
    .expect("apply Function");
    for a in &activators {
        a.wait_routes(&ns.name, "five", WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    }
    let host = format!("five.{}.svc.cluster.local", ns.name);
    let addrs: Vec<_> = activators.iter().map(Activator::addr).collect();
    // 6 clients at once, each sending 15 requests alternately through
    // either activator: both place on the same instances.
    let clients: Vec<_> = (0..6)
        .map(|client| {
            let (host, addrs) = (host.clone(), addrs.clone());
            tokio::spawn(async move {
                let mut replies = Vec::new();
                for i in 0..15usize {
                    let addr = addrs[(client + i) % addrs.len()];
                    let reply = http::get(addr, &host, "/?sleep=20", Duration::from_secs(60)).await;
                    replies.push(reply.map_err(|e| format!("{e:#}")));
                }
                replies
            })
        })
        .collect();
    let mut served: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut failed = Vec::new();
    for client in clients {
        for reply in client.await.expect("client") {
            match reply {
                Ok(reply) if reply.status == 200 => {
                    let instance = header(&reply, "x-instance").unwrap_or("?").to_owned();
                    let number = header(&reply, "x-served")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(u64::MAX);
                    served.entry(instance).or_default().push(number);
                }
                Ok(reply) => failed.push(format!("{}: {}", reply.status, reply.body)),
                Err(e) => failed.push(e),
            }
        }
    }
    assert!(failed.is_empty(), "failed requests: {failed:?}\n{}", logs());
    assert_eq!(served.values().map(Vec::len).sum::<usize>(), 90);
    for (instance, numbers) in &served {
        assert!(
            numbers.len() <= 5 && numbers.iter().all(|n| (1..=5).contains(n)),
            "{instance} served {numbers:?}: more than maxRequestsPerInstance 5"
        );
    }
    assert!(
        served.len() >= 18,
        "90 requests need at least 18 instances: {served:?}"
    );
    println!("90 requests on {} instances", served.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_runtime_class_is_named_until_it_exists() {
    let setup = Setup::new("fresh-rtc").await;
    // Cluster-scoped: named after the test's namespace, so runs do not meet.
    let class = format!("{}-sandbox", setup.ns.name);
    let classes: Api<RuntimeClass> = Api::all(setup.cluster.client());
    setup
        .apply(
            "sandboxed",
            json!({
                "image": sample_image("testfn"),
                "podTemplate": { "runtimeClassName": class },
                "scaling": { "minInstances": 1 },
            }),
        )
        .await;
    let message = wait_until("Ready=False naming the RuntimeClass", WAIT, || async {
        Ok(setup
            .ready_condition("sandboxed")
            .await?
            .filter(|(status, reason, _)| status == "False" && reason == "RuntimeClassNotFound")
            .map(|(_, _, message)| message))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.chart.logs()));
    assert!(message.contains(&class), "{message}");
    assert!(
        instance_pods(&setup.ns, "sandboxed")
            .await
            .expect("pods")
            .is_empty(),
        "no instance is created while the RuntimeClass is missing"
    );

    // Created afterwards: the Function proceeds. The process node runs any
    // handler as a plain process, so this shows the pod is created with the
    // class and served, not that it is sandboxed.
    let runtime_class: RuntimeClass = serde_json::from_value(json!({
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": { "name": class },
        "handler": "runc",
    }))
    .expect("RuntimeClass");
    classes
        .create(&PostParams::default(), &runtime_class)
        .await
        .expect("create RuntimeClass");
    let outcome = async {
        let pod = wait_until("an instance with the RuntimeClass", WAIT, || async {
            let pods = instance_pods(&setup.ns, "sandboxed").await?;
            Ok(pods.into_iter().find(is_ready))
        })
        .await?;
        let named = pod.spec.and_then(|s| s.runtime_class_name);
        anyhow::ensure!(named.as_deref() == Some(class.as_str()), "{named:?}");
        wait_until("Ready=True", WAIT, || async {
            Ok(setup
                .ready_condition("sandboxed")
                .await?
                .filter(|(status, _, _)| status == "True"))
        })
        .await?;
        let reply = setup.request("sandboxed", "/").await?;
        anyhow::ensure!(reply.status == 200, "{}", reply.body);
        Ok(())
    }
    .await;
    let _ = classes.delete(&class, &DeleteParams::default()).await;
    if let Err(e) = outcome {
        panic!("{e:#}\n{}", setup.chart.logs());
    }
}
