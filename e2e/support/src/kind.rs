//! The chart-installed thaw on the kind cluster (e2e/kind): the release's
//! names, the images as e2e/kind/images.sh tags them, and the ways a test on
//! this machine reaches what runs inside: a NodePort Service of its own over
//! the chart's activator pods (kube-proxy spreads connections over both
//! replicas, as the chart's ClusterIP Service does for clients in the
//! cluster), and the API server's proxy to a pod's port.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Namespace, Node, Pod, Service},
};
use kube::{
    Api,
    api::{ListParams, LogParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use thaw_api::Function;

use crate::{
    Cluster, TestNamespace,
    fixtures::repo_root,
    functions::{apply_function, instance_pods, is_ready},
    http::{Reply, get},
    wait_until,
};

/// The chart's release namespace; its objects are named after the release,
/// `thaw`.
pub const SYSTEM: &str = "thaw-system";
pub const ACTIVATOR: &str = "thaw-activator";
pub const OPERATOR: &str = "thaw-operator";
/// The operator's leader-election Lease.
pub const LEASE: &str = "thaw-operator";
/// The tests' own NodePort Service over the activator pods.
const NODE_PORT_SERVICE: &str = "thaw-activator-e2e";
/// Deadlines on real containers on a loaded 2-core machine: a cold start,
/// a CoreDNS lookup or a rollout takes seconds to a minute.
pub const WAIT: Duration = Duration::from_secs(180);

/// The chart's appVersion, the tag images.sh gives every image it builds.
pub fn app_version() -> Result<String> {
    let chart = std::fs::read_to_string(repo_root().join("charts/thaw/Chart.yaml"))?;
    Ok(chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .context("no appVersion in charts/thaw/Chart.yaml")?
        .trim()
        .trim_matches('"')
        .to_owned())
}

/// A sample image (hello, testfn, fetch, hello-root) as loaded into kind.
pub fn image(name: &str) -> Result<String> {
    Ok(format!("thaw.dev/samples/{name}:{}", app_version()?))
}

/// A namespace under Pod Security "restricted", as the chart's is.
pub async fn restricted_namespace(cluster: &Cluster, prefix: &str) -> Result<TestNamespace> {
    let ns = cluster.namespace(prefix).await?;
    let label = json!({ "metadata": { "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
    }}});
    Api::<Namespace>::all(cluster.client())
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&label))
        .await?;
    Ok(ns)
}

pub fn is_running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && is_ready(pod)
        && pod.metadata.deletion_timestamp.is_none()
}

/// The chart's pods of `component` (operator, activator).
pub async fn component_pods(cluster: &Cluster, component: &str) -> Result<Vec<Pod>> {
    Ok(Api::<Pod>::namespaced(cluster.client(), SYSTEM)
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/name=thaw,app.kubernetes.io/component={component}"
        )))
        .await?
        .items)
}

/// Names of the chart's Running and Ready pods of `component`.
pub async fn running_pods(cluster: &Cluster, component: &str) -> Result<BTreeSet<String>> {
    Ok(component_pods(cluster, component)
        .await?
        .iter()
        .filter(|p| is_running_and_ready(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect())
}

/// Who holds the operator's Lease now.
pub async fn lease_holder(cluster: &Cluster) -> Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(cluster.client(), SYSTEM)
        .get(LEASE)
        .await
        .context("the operator's Lease")?;
    Ok(lease.spec.and_then(|s| s.holder_identity))
}

/// Where this machine reaches the activators through kube-proxy: the node's
/// address and the port of a NodePort Service selecting the chart's
/// activator pods (created once, shared by the tests, left for the cluster's
/// teardown). The chart's own Service is untouched.
pub async fn activator_node_port(cluster: &Cluster) -> Result<SocketAddr> {
    let services = Api::<Service>::namespaced(cluster.client(), SYSTEM);
    let chart = services
        .get(ACTIVATOR)
        .await
        .context("the chart's Service")?;
    let selector = chart.spec.and_then(|s| s.selector).unwrap_or_default();
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": NODE_PORT_SERVICE },
        "spec": {
            "type": "NodePort",
            "selector": selector,
            "ports": [{ "name": "http", "port": 80, "targetPort": "http" }],
        },
    }))?;
    match services.create(&PostParams::default(), &service).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("creating the NodePort Service"),
    }
    let port = services
        .get(NODE_PORT_SERVICE)
        .await?
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.into_iter().next())
        .and_then(|p| p.node_port)
        .context("NodePort Service without a node port")?;
    let node = Api::<Node>::all(cluster.client())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .next()
        .context("no node")?;
    let ip = node
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .context("node without an InternalIP")?
        .address;
    Ok(SocketAddr::new(ip.parse()?, u16::try_from(port)?))
}

/// `GET path` on `port` of pod `name` in `namespace`, through the API
/// server's pod proxy (pod addresses are not routed to this machine).
pub async fn pod_get(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    port: u16,
    path: &str,
) -> Result<String> {
    let path = path.trim_start_matches('/');
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{namespace}/pods/{name}:{port}/proxy/{path}"
    ))
    .body(Vec::new())?;
    Ok(cluster.client().request_text(request).await?)
}

/// `kubectl rollout restart` of the chart's Deployment `name`, waiting until
/// the rollout has finished: every replica updated, available, and no old
/// pod left.
pub async fn rollout_restart(cluster: &Cluster, name: &str) -> Result<()> {
    let deployments = Api::<Deployment>::namespaced(cluster.client(), SYSTEM);
    let restarted_at = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({ "spec": { "template": { "metadata": { "annotations": {
        "kubectl.kubernetes.io/restartedAt": restarted_at,
    }}}}});
    let patched = deployments
        .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    let generation = patched.metadata.generation.unwrap_or_default();
    let want = patched.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    wait_until(&format!("the rollout of {name}"), WAIT, || async {
        let d = deployments.get(name).await?;
        let Some(s) = d.status else { return Ok(None) };
        let done = s.observed_generation.unwrap_or_default() >= generation
            && s.updated_replicas == Some(want)
            && s.available_replicas == Some(want)
            && s.replicas == Some(want);
        Ok(done.then_some(()))
    })
    .await?;
    // Pods of the old ReplicaSet may still be terminating (their drain):
    // the rollout is over when only the new ones are left.
    let component = if name == ACTIVATOR {
        "activator"
    } else {
        "operator"
    };
    wait_until(&format!("{name}'s old pods gone"), WAIT, || async {
        let pods = component_pods(cluster, component).await?;
        Ok(
            (pods.len() == usize::try_from(want)? && pods.iter().all(is_running_and_ready))
                .then_some(()),
        )
    })
    .await?;
    Ok(())
}

/// Fails unless the chart runs `operators` operator and `activators`
/// activator pods, all Running and Ready.
pub async fn wait_for_topology(
    cluster: &Cluster,
    operators: usize,
    activators: usize,
) -> Result<()> {
    wait_until("the chart's pods Running and Ready", WAIT, || async {
        let o = running_pods(cluster, "operator").await?;
        let a = running_pods(cluster, "activator").await?;
        let all_o = component_pods(cluster, "operator").await?.len();
        let all_a = component_pods(cluster, "activator").await?.len();
        Ok((o.len() == operators
            && a.len() == activators
            && all_o == operators
            && all_a == activators)
            .then_some(()))
    })
    .await?;
    ensure!(
        lease_holder(cluster).await?.is_some(),
        "nobody holds the Lease"
    );
    Ok(())
}

/// The activator's admin port in the chart's pods (`/metrics`).
const ACTIVATOR_ADMIN_PORT: u16 = 9091;

/// `/metrics` of every Running and Ready activator pod, by pod name.
pub async fn activator_metrics(cluster: &Cluster) -> Result<Vec<(String, String)>> {
    let mut all = Vec::new();
    for pod in running_pods(cluster, "activator").await? {
        let text = pod_get(cluster, SYSTEM, &pod, ACTIVATOR_ADMIN_PORT, "/metrics").await?;
        all.push((pod, text));
    }
    Ok(all)
}

/// Waits until every activator replica routes Function `namespace/name`.
pub async fn wait_routed(cluster: &Cluster, namespace: &str, name: &str) -> Result<()> {
    let series = format!(
        "thaw_activator_function_routed{{function=\"{name}\",namespace=\"{namespace}\"}} 1"
    );
    wait_until(
        &format!("both activators to route {name}"),
        WAIT,
        || async {
            let all = activator_metrics(cluster).await?;
            Ok(
                (all.len() >= 2 && all.iter().all(|(_, text)| text.contains(&series)))
                    .then_some(()),
            )
        },
    )
    .await
}

/// Crashes container `container` of the chart's pod `pod`: SIGKILL to its
/// process through containerd on the kind node (`docker exec <node> ctr`),
/// with no warning, as an OOM kill or a segfault would. kubelet restarts it
/// in the same pod.
pub async fn crash_container(cluster: &Cluster, pod: &str, container: &str) -> Result<()> {
    let pod = Api::<Pod>::namespaced(cluster.client(), SYSTEM)
        .get(pod)
        .await?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .context("pod not scheduled")?;
    let id = pod
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == container)
        .and_then(|c| c.container_id)
        .context("container not started")?;
    let id = id
        .strip_prefix("containerd://")
        .with_context(|| format!("not a containerd container: {id}"))?;
    let out = tokio::process::Command::new("docker")
        .args([
            "exec", &node, "ctr", "-n", "k8s.io", "task", "kill", "--signal", "SIGKILL", id,
        ])
        .output()
        .await
        .context("docker exec")?;
    ensure!(
        out.status.success(),
        "ctr task kill {id} on {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// When the operator's Lease was last renewed, and by whom.
pub async fn lease_renewal(
    cluster: &Cluster,
) -> Result<Option<(String, k8s_openapi::jiff::Timestamp)>> {
    let lease = Api::<Lease>::namespaced(cluster.client(), SYSTEM)
        .get(LEASE)
        .await?;
    Ok(lease
        .spec
        .and_then(|s| Some((s.holder_identity?, s.renew_time?.0))))
}

/// Runs the `fetch` image in `ns` with `args` and returns its output once
/// the pod has Succeeded.
pub async fn fetch_in_cluster(ns: &TestNamespace, args: &[&str]) -> Result<String> {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let name = &format!("fetch-{}", CALLS.fetch_add(1, Ordering::Relaxed));
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "fetch",
                "image": image("fetch")?,
                "args": args,
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    }))?;
    let pods = ns.api::<Pod>();
    pods.create(&PostParams::default(), &pod).await?;
    let phase = wait_until("the fetch pod to finish", WAIT, || async {
        let pod = pods.get(name).await?;
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
    })
    .await?;
    let logs = pods.logs(name, &LogParams::default()).await?;
    ensure!(phase == "Succeeded", "fetch {args:?} failed: {logs}");
    Ok(logs)
}

/// An HTTP response as `fetch` or `curl -i` print it, parsed: status,
/// lower-case header names, body.
pub fn parse_reply(out: &str) -> Result<(u16, BTreeSet<String>, String)> {
    let normalized = out.replace("\r\n", "\n");
    let (head, body) = normalized
        .split_once("\n\n")
        .context("no blank line after the headers")?;
    let mut lines = head.lines();
    // `HTTP 200` (fetch) or `HTTP/1.1 200 OK` (curl).
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no status line")?
        .parse()?;
    let headers = lines
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
        .collect();
    Ok((status, headers, body.to_owned()))
}

/// A test's namespace and its way to the chart's activators.
pub struct Scenario {
    pub cluster: Cluster,
    pub ns: TestNamespace,
    /// The NodePort over the activator pods.
    pub addr: SocketAddr,
}

impl Scenario {
    pub async fn new(prefix: &str) -> Result<Arc<Scenario>> {
        let cluster = Cluster::shared().await?;
        // After an install or a rollout: every replica serving first.
        wait_for_topology(&cluster, 2, 2).await?;
        let ns = restricted_namespace(&cluster, prefix).await?;
        let addr = activator_node_port(&cluster).await?;
        Ok(Arc::new(Scenario { cluster, ns, addr }))
    }

    pub fn host(&self, name: &str) -> String {
        format!("{name}.{}.svc.cluster.local", self.ns.name)
    }

    /// Applies Function `name` and waits until both activators route it.
    pub async fn function(&self, name: &str, spec: Value) -> Result<()> {
        apply_function(&self.ns, name, spec).await?;
        wait_routed(&self.cluster, &self.ns.name, name).await
    }

    pub async fn get(&self, name: &str, path: &str) -> Result<Reply> {
        get(self.addr, &self.host(name), path, WAIT).await
    }

    pub async fn pods(&self, name: &str) -> Result<Vec<Pod>> {
        instance_pods(&self.ns, name).await
    }

    pub async fn wait_ready_pods(&self, name: &str, n: usize) -> Result<Vec<Pod>> {
        wait_until(&format!("{n} ready instances of {name}"), WAIT, || async {
            let pods = self.pods(name).await?;
            Ok((pods.len() == n && pods.iter().all(is_ready)).then_some(pods))
        })
        .await
    }

    /// The Function's Ready condition: status, reason, message.
    pub async fn ready(&self, name: &str) -> Result<Option<(String, String, String)>> {
        let function = self.ns.api::<Function>().get(name).await?;
        Ok(function.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| (c.status, c.reason, c.message))
        }))
    }

    /// The sum over both activators of the metric line starting with
    /// `prefix` (each has its own in-flight count and queue).
    pub async fn metric_sum(&self, prefix: &str) -> Result<f64> {
        Ok(activator_metrics(&self.cluster)
            .await?
            .iter()
            .filter_map(|(_, text)| metric(text, prefix))
            .sum())
    }

    pub fn labels(&self, name: &str) -> String {
        format!("{{function=\"{name}\",namespace=\"{}\"}}", self.ns.name)
    }

    /// testfn's own `/stats` of every instance, through the API server.
    pub async fn instance_stats(&self, name: &str) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        for pod in self.pods(name).await? {
            let pod = pod.metadata.name.context("pod without a name")?;
            let body = pod_get(&self.cluster, &self.ns.name, &pod, 8080, "/stats").await?;
            all.push(serde_json::from_str(&body).context("testfn stats")?);
        }
        Ok(all)
    }
}

/// The value of the first metric line starting with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
