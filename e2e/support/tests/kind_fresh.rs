//! A fresh instance for every invocation (issue 15) on kind, with the
//! chart's pods: `maxRequestsPerInstance` with warm fresh instances through
//! both activator replicas, each used instance deleted soon after its
//! response, a clean /tmp in real containers (an emptyDir per instance), and
//! `podTemplate.runtimeClassName` naming a RuntimeClass that does not exist
//! yet, then one whose handler (runc) the node's containerd has.
//!
//! Built only with the `kind` feature, run by e2e/kind/test.sh.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::{core::v1::Pod, node::v1::RuntimeClass};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;
use thaw_api::keys::DRAINING_SINCE_ANNOTATION;
use thaw_e2e::{
    functions::is_ready,
    http::Reply,
    kind::{Scenario, WAIT, activator_metrics, image},
    wait_until,
};

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Ready instances never used: not draining, not deleted, not in `used`.
async fn fresh_ready(s: &Scenario, name: &str, used: &BTreeSet<String>) -> Result<usize> {
    Ok(s.pods(name)
        .await?
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
        .filter(|p| {
            !p.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(DRAINING_SINCE_ANNOTATION))
        })
        .filter_map(|p| p.metadata.name.clone())
        .filter(|n| !used.contains(n))
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_gets_a_fresh_warm_instance_that_is_gone_soon_after() -> Result<()> {
    let s = Scenario::new("kind-once").await?;
    let spec = json!({
        "image": image("testfn")?,
        "concurrency": 1,
        "maxRequestsPerInstance": 1,
        "scaling": { "warmInstances": 2, "keepAlive": "10m" },
    });
    s.function("once", spec).await?;
    let mut used = BTreeSet::new();
    let mut gone = Vec::new();
    for i in 0..20 {
        // Spaced wider than an instance's start: two fresh instances are
        // ready again before each request, so none should wait.
        wait_until("two fresh warm instances", WAIT, || async {
            Ok((fresh_ready(&s, "once", &used).await? >= 2).then_some(()))
        })
        .await?;
        let reply = s.get("once", "/?tmp=write").await?;
        let answered = Instant::now();
        ensure!(reply.status == 200, "request {i}: {reply:?}");
        let instance = header(&reply, "x-instance")
            .context("x-instance")?
            .to_owned();
        ensure!(
            header(&reply, "x-served") == Some("1"),
            "request {i} on {instance}: not the instance's first request: {reply:?}"
        );
        ensure!(
            header(&reply, "x-tmp-marker") == Some("fresh"),
            "request {i} on {instance}: /tmp held a marker from an earlier request"
        );
        ensure!(
            header(&reply, "thaw-cold-start").is_none(),
            "request {i} on {instance} waited for a cold start: {reply:?}"
        );
        ensure!(
            used.insert(instance.clone()),
            "request {i}: {instance} answered before"
        );
        let pods: Api<Pod> = s.ns.api();
        gone.push(tokio::spawn(async move {
            wait_until("the used instance gone", WAIT, || async {
                Ok(pods.get_opt(&instance).await?.is_none().then_some(()))
            })
            .await
            .map(|()| answered.elapsed())
        }));
    }
    let mut times = Vec::new();
    for task in gone {
        times.push(task.await??);
    }
    times.sort();
    eprintln!(
        "kind: used instance gone after its response: p50 {:?}, max {:?} (20 instances)",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_requests_hold_under_load_through_both_activators() -> Result<()> {
    let s = Scenario::new("kind-five").await?;
    let spec = json!({
        "image": image("testfn")?,
        "concurrency": 1,
        "maxRequestsPerInstance": 5,
        "scaling": { "warmInstances": 1 },
    });
    s.function("five", spec).await?;
    // 6 clients at once, 15 requests each, every one on a new connection:
    // kube-proxy spreads them over both activators.
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut replies = Vec::new();
                for _ in 0..15 {
                    replies.push(
                        s.get("five", "/?sleep=20")
                            .await
                            .map_err(|e| format!("{e:#}")),
                    );
                }
                replies
            })
        })
        .collect();
    let mut served: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut failed = Vec::new();
    for client in clients {
        for reply in client.await? {
            match reply {
                Ok(r) if r.status == 200 => {
                    let instance = header(&r, "x-instance").unwrap_or("?").to_owned();
                    let n = header(&r, "x-served")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(u64::MAX);
                    served.entry(instance).or_default().push(n);
                }
                Ok(r) => failed.push(format!("{}: {}", r.status, r.body)),
                Err(e) => failed.push(e),
            }
        }
    }
    ensure!(failed.is_empty(), "failed requests: {failed:?}");
    ensure!(
        served.values().map(Vec::len).sum::<usize>() == 90,
        "{served:?}"
    );
    for (instance, numbers) in &served {
        ensure!(
            numbers.len() <= 5 && numbers.iter().all(|n| (1..=5).contains(n)),
            "{instance} served {numbers:?}: more than maxRequestsPerInstance 5"
        );
    }
    // Both replicas carried some of them.
    let series = format!(
        "thaw_activator_requests_total{{code=\"200\",function=\"five\",namespace=\"{}\"}}",
        s.ns.name
    );
    let per_activator: Vec<f64> = activator_metrics(&s.cluster)
        .await?
        .iter()
        .map(|(_, text)| thaw_e2e::kind::metric(text, &series).unwrap_or_default())
        .collect();
    ensure!(
        per_activator.len() == 2 && per_activator.iter().all(|n| *n > 0.0),
        "requests per activator: {per_activator:?}"
    );
    eprintln!(
        "kind: 90 requests on {} instances, per activator {per_activator:?}",
        served.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_runtime_class_is_named_until_it_exists() -> Result<()> {
    let s = Scenario::new("kind-rtc").await?;
    // Cluster-scoped: named after the test's namespace, so runs do not meet.
    let class = format!("{}-sandbox", s.ns.name);
    let classes: Api<RuntimeClass> = Api::all(s.cluster.client());
    let spec = json!({
        "image": image("testfn")?,
        "podTemplate": { "runtimeClassName": class },
        "scaling": { "minInstances": 1 },
    });
    s.function("sandboxed", spec).await?;
    let message = wait_until("Ready=False naming the RuntimeClass", WAIT, || async {
        Ok(s.ready("sandboxed")
            .await?
            .filter(|(status, reason, _)| status == "False" && reason == "RuntimeClassNotFound")
            .map(|(_, _, message)| message))
    })
    .await?;
    ensure!(message.contains(&class), "{message}");
    ensure!(
        s.pods("sandboxed").await?.is_empty(),
        "no instance while it is missing"
    );

    // Created with the handler kind's containerd has: the instance runs
    // under it for real.
    let runtime_class: RuntimeClass = serde_json::from_value(json!({
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": { "name": class },
        "handler": "runc",
    }))?;
    classes
        .create(&PostParams::default(), &runtime_class)
        .await?;
    let outcome = async {
        let pods = s.wait_ready_pods("sandboxed", 1).await?;
        let named = pods
            .first()
            .and_then(|p| p.spec.as_ref()?.runtime_class_name.clone());
        ensure!(named.as_deref() == Some(class.as_str()), "{named:?}");
        wait_until("Ready=True", WAIT, || async {
            Ok(s.ready("sandboxed")
                .await?
                .filter(|(status, ..)| status == "True"))
        })
        .await?;
        let reply = s.get("sandboxed", "/").await?;
        ensure!(reply.status == 200, "{reply:?}");
        Ok(())
    }
    .await;
    let _ = classes.delete(&class, &DeleteParams::default()).await;
    outcome
}
