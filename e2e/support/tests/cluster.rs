//! The local cluster itself: a real control plane whose process node runs
//! pods as local processes, each in its own network namespace.

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Node, Pod},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use thaw_e2e::{Cluster, functions::is_ready, http, wait_until};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_node_is_ready() {
    let cluster = Cluster::shared().await.expect("cluster");
    let nodes = Api::<Node>::all(cluster.client())
        .list(&ListParams::default())
        .await
        .expect("nodes");
    let node = nodes.items.first().expect("a node");
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    assert!(ready, "{node:?}");
    let spec = node.spec.as_ref().expect("node spec");
    assert!(spec.pod_cidr.is_some());
}

#[tokio::test]
async fn a_pod_runs_answers_http_on_its_own_ip_and_stops_when_deleted() {
    let cluster = Cluster::shared().await.expect("cluster");
    let ns = cluster.namespace("pod").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let mut names = Vec::new();
    // Two pods on the same port: each has its own network namespace.
    for name in ["hello-a", "hello-b"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "containers": [{
                "name": "function",
                "image": "thaw.dev/samples/hello:latest",
                "env": [
                    { "name": "PORT", "value": "8080" },
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }
                ],
                "readinessProbe": { "tcpSocket": { "port": 8080 }, "periodSeconds": 1 }
            }]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
        names.push(name);
    }
    let mut ips = Vec::new();
    for name in &names {
        let pod = wait_until(&format!("{name} Ready with an IP"), WAIT, || async {
            let pod = pods.get(name).await?;
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            Ok((is_ready(&pod) && ip.is_some()).then_some(pod))
        })
        .await
        .expect("pod ready");
        let ip = pod.status.and_then(|s| s.pod_ip).expect("pod IP");
        let addr: SocketAddr = format!("{ip}:8080").parse().expect("address");
        let reply = http::get(addr, "hello", "/", Duration::from_secs(5))
            .await
            .expect("HTTP");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, format!("hello from {name}\n"));
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1], "each pod has its own IP");

    pods.delete("hello-a", &DeleteParams::default())
        .await
        .expect("delete");
    wait_until("hello-a gone", WAIT, || async {
        Ok(pods.get_opt("hello-a").await?.is_none().then_some(()))
    })
    .await
    .expect("pod removed");
    let addr: SocketAddr = format!("{}:8080", ips[0]).parse().expect("address");
    assert!(
        http::get(addr, "hello", "/", Duration::from_secs(2))
            .await
            .is_err(),
        "the deleted pod's process still answers"
    );
}

#[tokio::test]
async fn an_unknown_image_is_reported_as_a_failed_pull() {
    let cluster = Cluster::shared().await.expect("cluster");
    let ns = cluster.namespace("pull").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "nope" },
        "spec": { "containers": [{ "name": "c", "image": "registry.invalid/nope:1" }] }
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let (reason, message) = wait_until("a failed pull", WAIT, || async {
        let pod = pods.get("nope").await?;
        let waiting = pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.waiting);
        Ok(waiting.and_then(|w| Some((w.reason?, w.message.unwrap_or_default()))))
    })
    .await
    .expect("waiting state");
    assert!(
        reason == "ErrImagePull" || reason == "ImagePullBackOff",
        "{reason}"
    );
    assert!(message.contains("registry.invalid/nope:1"), "{message}");
}

#[tokio::test]
async fn a_deployment_gets_its_replicas_and_they_are_garbage_collected() {
    let cluster = Cluster::shared().await.expect("cluster");
    let ns = cluster.namespace("deploy").await.expect("namespace");
    let deployments = ns.api::<Deployment>();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{
                    "name": "web",
                    "image": "thaw.dev/samples/hello",
                    "env": [{ "name": "PORT", "value": "8080" }]
                }]}
            }
        }
    }))
    .expect("deployment");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create");
    let pods = ns.api::<Pod>();
    wait_until("3 running replicas", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        let running = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        Ok((running == 3).then_some(()))
    })
    .await
    .expect("replicas running");

    deployments
        .delete("web", &DeleteParams::background())
        .await
        .expect("delete");
    wait_until("the replicas garbage-collected", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        Ok(list.items.is_empty().then_some(()))
    })
    .await
    .expect("pods collected");
}
