//! `thaw operator` against the real API server and the process node: pools
//! of instance pods, rollouts, failing images, deletion, adoption after a
//! restart, and leader election.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Result, bail};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Pod, Service},
};
use kube::{Api, api::DeleteParams};
use serde_json::json;
use thaw_api::{
    Function,
    keys::{FUNCTION_LABEL, SPEC_HASH_LABEL},
};
use thaw_e2e::{
    Cluster, Operator, TestNamespace,
    functions::{apply_function, instance_pods, is_ready},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (Cluster, TestNamespace) {
    let cluster = Cluster::shared().await.expect("cluster");
    cluster.install_function_crd().await.expect("CRD");
    let ns = cluster.namespace(prefix).await.expect("namespace");
    (cluster, ns)
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// Waits until the Function has exactly `n` pods, all ready and live.
async fn wait_ready_pods(ns: &TestNamespace, name: &str, n: usize) -> Result<Vec<Pod>> {
    wait_until(&format!("{n} ready instances of {name}"), WAIT, || async {
        let pods = instance_pods(ns, name).await?;
        let live: Vec<Pod> = pods
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        Ok((live.len() == n && live.iter().all(is_ready)).then_some(live))
    })
    .await
}

async fn ready_condition(
    ns: &TestNamespace,
    name: &str,
) -> Result<Option<(String, String, String)>> {
    let function = ns.api::<Function>().get(name).await?;
    Ok(function.status.and_then(|s| {
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status, c.reason, c.message))
    }))
}

#[tokio::test]
async fn min_instances_are_created_owned_and_reported() {
    let (cluster, ns) = setup("op-min").await;
    let operator = Operator::start(&cluster, &ns.name, "op-a").expect("operator");
    apply_function(
        &ns,
        "hello",
        json!({"image": "thaw.dev/samples/hello:latest", "scaling": {"minInstances": 2}}),
    )
    .await
    .expect("apply Function");

    let pods = wait_ready_pods(&ns, "hello", 2)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log()));
    let function = ns.api::<Function>().get("hello").await.expect("function");
    for pod in &pods {
        let labels = pod.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[FUNCTION_LABEL], "hello");
        assert!(labels.contains_key(SPEC_HASH_LABEL));
        let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("Function", Some(true))
        );
        assert_eq!(Some(&owner.uid), function.metadata.uid.as_ref());
    }

    let status = wait_until(
        "status with 2 ready instances and Ready=True",
        WAIT,
        || async {
            let f = ns.api::<Function>().get("hello").await?;
            let Some(status) = f.status else {
                return Ok(None);
            };
            let ready = status.instances.as_ref().map(|i| i.ready) == Some(2)
                && status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok(ready.then_some(status))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log()));
    assert_eq!(status.desired_instances, Some(2));
    assert_eq!(
        status.url.as_deref(),
        Some(format!("http://hello.{}.svc.cluster.local", ns.name).as_str())
    );
    assert_eq!(status.observed_generation, function.metadata.generation);

    let scaling = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Scaling")
        .expect("Scaling condition");
    assert_eq!(scaling.message, "scaled 0 -> 2: minInstances 2");

    // Each instance shows its cold-start breakdown, and that minInstances keeps it.
    wait_until(
        "cold-start and kept annotations on both instances",
        WAIT,
        || async {
            let pods = instance_pods(&ns, "hello").await?;
            let annotated = pods.iter().all(|p| {
                let a = p.metadata.annotations.clone().unwrap_or_default();
                a.get("thaw.dev/cold-start")
                    .is_some_and(|c| c.starts_with("ready ") && c.contains("scheduled in"))
                    && a.get("thaw.dev/kept").map(String::as_str) == Some("kept by minInstances")
                    && a.contains_key("thaw.dev/idle-since")
                    && !a.contains_key("thaw.dev/expires-at")
            });
            Ok((pods.len() == 2 && annotated).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log()));

    let service = ns.api::<Service>().get("hello").await.expect("service");
    let spec = service.spec.expect("service spec");
    assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
    assert_eq!(
        spec.external_name.as_deref(),
        Some("thaw-activator.thaw-system.svc.cluster.local")
    );
}

#[tokio::test]
async fn changing_the_image_replaces_every_instance() {
    let (cluster, ns) = setup("op-roll").await;
    let operator = Operator::start(&cluster, &ns.name, "op-a").expect("operator");
    apply_function(
        &ns,
        "roll",
        json!({"image": "thaw.dev/samples/hello:1", "scaling": {"minInstances": 2}}),
    )
    .await
    .expect("apply Function");
    let before = names(
        &wait_ready_pods(&ns, "roll", 2)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log())),
    );

    apply_function(
        &ns,
        "roll",
        json!({"image": "thaw.dev/samples/testfn:1", "scaling": {"minInstances": 2}}),
    )
    .await
    .expect("apply Function");
    let after = wait_until("2 ready instances of the new image only", WAIT, || async {
        let pods = instance_pods(&ns, "roll").await?;
        let all_new = pods.iter().all(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.containers[0].image.as_deref())
                == Some("thaw.dev/samples/testfn:1")
        });
        Ok((pods.len() == 2 && all_new && pods.iter().all(is_ready)).then_some(names(&pods)))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log()));
    assert!(
        before.is_disjoint(&after),
        "old instances kept: {before:?} {after:?}"
    );
}

#[tokio::test]
async fn an_unknown_image_is_not_ready_with_the_reason_and_no_churn() {
    let (cluster, ns) = setup("op-bad").await;
    let operator = Operator::start(&cluster, &ns.name, "op-a").expect("operator");
    apply_function(
        &ns,
        "bad",
        json!({"image": "registry.invalid/nope:1", "scaling": {"minInstances": 1}}),
    )
    .await
    .expect("apply Function");

    let (status, reason, message) = wait_until("Ready=False with a pull error", WAIT, || async {
        Ok(ready_condition(&ns, "bad")
            .await?
            .filter(|(s, r, _)| s == "False" && r.contains("ImagePull")))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log()));
    assert_eq!(status, "False");
    assert!(
        message.contains("registry.invalid/nope:1"),
        "{reason}: {message}"
    );

    // No churn: over several reconciles the same single pod stays.
    let first = names(&instance_pods(&ns, "bad").await.expect("pods"));
    assert_eq!(first.len(), 1);
    let observed = wait_until("5 s of observation", Duration::from_secs(10), {
        let started = std::time::Instant::now();
        let ns = &ns;
        let first = first.clone();
        move || {
            let first = first.clone();
            async move {
                let now = names(&instance_pods(ns, "bad").await?);
                if now != first {
                    bail!("pods changed from {first:?} to {now:?}");
                }
                Ok((started.elapsed() >= Duration::from_secs(5)).then_some(now))
            }
        }
    })
    .await;
    assert!(observed.is_ok(), "{observed:?}");
}

#[tokio::test]
async fn deleting_the_function_removes_its_pods_and_service() {
    let (cluster, ns) = setup("op-del").await;
    let operator = Operator::start(&cluster, &ns.name, "op-a").expect("operator");
    apply_function(
        &ns,
        "gone",
        json!({"image": "thaw.dev/samples/hello", "scaling": {"minInstances": 1}}),
    )
    .await
    .expect("apply Function");
    wait_ready_pods(&ns, "gone", 1)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log()));
    wait_until("the Service", WAIT, || async {
        Ok(ns.api::<Service>().get_opt("gone").await?)
    })
    .await
    .expect("service");

    ns.api::<Function>()
        .delete("gone", &DeleteParams::foreground())
        .await
        .expect("delete");
    wait_until("pods and Service garbage-collected", WAIT, || async {
        let pods = instance_pods(&ns, "gone").await?;
        let service = ns.api::<Service>().get_opt("gone").await?;
        Ok((pods.is_empty() && service.is_none()).then_some(()))
    })
    .await
    .expect("garbage collection");
}

#[tokio::test]
async fn a_restarted_operator_adopts_existing_pods() {
    let (cluster, ns) = setup("op-adopt").await;
    let mut operator = Operator::start(&cluster, &ns.name, "op-a").expect("operator");
    apply_function(
        &ns,
        "keep",
        json!({"image": "thaw.dev/samples/hello", "scaling": {"minInstances": 2}}),
    )
    .await
    .expect("apply Function");
    let before = names(
        &wait_ready_pods(&ns, "keep", 2)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log())),
    );
    operator.stop();

    let restarted = Operator::start(&cluster, &ns.name, "op-b").expect("operator");
    // The new operator reconciles (it takes the Lease and writes status)...
    wait_until("the new operator to lead", WAIT, || async {
        let lease = Api::<Lease>::namespaced(cluster.client(), &ns.name)
            .get_opt("thaw-operator")
            .await?;
        Ok(lease
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| h == "op-b"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", restarted.log()));
    apply_function(&ns, "keep", json!({"image": "thaw.dev/samples/hello", "scaling": {"minInstances": 2, "keepAlive": "10m"}})).await.expect("apply Function");
    wait_until("the status to show the new generation", WAIT, || async {
        let f = ns.api::<Function>().get("keep").await?;
        let seen = f.status.and_then(|s| s.observed_generation) == f.metadata.generation;
        Ok(seen.then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", restarted.log()));
    // ...and keeps exactly the pods it found.
    let after = names(&instance_pods(&ns, "keep").await.expect("pods"));
    assert_eq!(before, after, "{}", restarted.log());
}

#[tokio::test]
async fn two_operators_never_both_create_pods() {
    let (cluster, ns) = setup("op-leader").await;
    let first = Operator::start(&cluster, &ns.name, "op-a").expect("operator a");
    let second = Operator::start(&cluster, &ns.name, "op-b").expect("operator b");
    apply_function(
        &ns,
        "one",
        json!({"image": "thaw.dev/samples/hello", "scaling": {"minInstances": 3}}),
    )
    .await
    .expect("apply Function");
    let pods = wait_ready_pods(&ns, "one", 3)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", first.log(), second.log()));
    let before = names(&pods);
    let leader = Api::<Lease>::namespaced(cluster.client(), &ns.name)
        .get("thaw-operator")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("holder");
    assert!(leader == "op-a" || leader == "op-b");
    // Exactly one operator created instances.
    let creators: Vec<&str> = [("op-a", first.log()), ("op-b", second.log())]
        .iter()
        .filter(|(_, log)| log.contains("created instance"))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(creators, vec![leader.as_str()]);

    // The leader dies without releasing: the other takes over, adopting the pool.
    let (mut dead, survivor) = if leader == "op-a" {
        (first, second)
    } else {
        (second, first)
    };
    dead.kill();
    wait_until("the survivor to lead", WAIT, || async {
        let lease = Api::<Lease>::namespaced(cluster.client(), &ns.name)
            .get("thaw-operator")
            .await?;
        Ok(lease
            .spec
            .and_then(|s| s.holder_identity)
            .filter(|h| *h == survivor.identity))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", survivor.log()));
    ns.api::<Pod>()
        .delete(
            before.iter().next().expect("a pod"),
            &DeleteParams::default(),
        )
        .await
        .expect("delete one instance");
    let after = wait_ready_pods(&ns, "one", 3)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", survivor.log()));
    assert_eq!(
        names(&after).intersection(&before).count(),
        2,
        "{}",
        survivor.log()
    );
}
