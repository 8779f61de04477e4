//! The install path on the test cluster: `helm install` of `charts/thaw`
//! succeeds, and thaw runs with the chart's ServiceAccount credentials (a
//! TokenRequest token, the API server enforcing the chart's RBAC, not the
//! admin certificate). A permission the chart forgot fails these tests: the
//! operator cannot lead, create, annotate or delete pods, apply Services,
//! write status or publish events, and each of those is checked.
//!
//! The static chart checks (lint, schema, drift of the generated copies) are
//! `e2e/chart/check.sh`, run by `make chart-lint`.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Namespace, Pod, Secret, Service},
    events::v1::Event,
};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchParams},
};
use serde_json::json;
use thaw_api::{Function, keys::FUNCTION_LABEL};
use thaw_e2e::{
    Cluster, TestNamespace,
    fixtures::repo_root,
    functions::instance_pods,
    http,
    install::{ChartThaw, Mode, Release, chart_dir, helm, service_account_kubeconfig},
    wait_until,
};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn thaw_runs_with_the_charts_cluster_wide_rbac() {
    run_with_chart_credentials(Mode::AllNamespaces).await;
}

#[tokio::test]
async fn thaw_runs_with_the_charts_namespaced_rbac() {
    run_with_chart_credentials(Mode::OneNamespace).await;
}

/// Installs the chart (no replicas: the process node cannot give pods their
/// ServiceAccount token, see docs/install.md), then runs `thaw operator` and
/// `thaw activator` as local processes with the arguments of the chart's own
/// Deployments and tokens of the chart's ServiceAccounts, through a
/// Function's life: one ready instance with status, Service and events,
/// requests through the activator, reaped after its keep-alive, a cold start
/// from zero, reaped again. The accounts' denials are checked too.
async fn run_with_chart_credentials(mode: Mode) {
    let cluster = Cluster::shared().await.expect("cluster");
    cluster.install_function_crd().await.expect("CRD");
    let system = cluster.namespace("inst-sys").await.expect("namespace");
    let apps = cluster.namespace("inst-fn").await.expect("namespace");
    enforce_restricted_pod_security(&cluster, &system)
        .await
        .expect("label the release namespace");

    // Declared after the namespaces, so dropped (uninstalled) before them.
    let name = format!("thaw-{}", system.name.trim_start_matches("inst-sys-"));
    let mut set = vec![
        "operator.replicas=0".to_owned(),
        "activator.replicas=0".to_owned(),
    ];
    if mode == Mode::OneNamespace {
        set.push(format!("watchNamespaces={{{}}}", apps.name));
    }
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    let release = Release::install(&cluster, &name, &system.name, &set)
        .await
        .expect("helm install");

    pods_of_the_chart_meet_restricted_pod_security(&cluster, &release)
        .await
        .expect("restricted Pod Security");
    check_activator_account(&cluster, &release, &apps, mode)
        .await
        .expect("activator account");

    let chart = ChartThaw::start(&cluster, &release, &apps, mode)
        .await
        .expect("thaw with the chart's credentials");
    check_operator_account(&chart.operator_client, &system, &apps, mode)
        .await
        .expect("operator account");
    let activator = &chart.activator;
    let logs = || chart.logs();

    let functions: Api<Function> = apps.api();
    let hello = |min: i32, keep_alive: &str| {
        json!({
            "apiVersion": "thaw.dev/v1alpha1",
            "kind": "Function",
            "metadata": { "name": "hello" },
            "spec": {
                "image": "thaw.dev/samples/hello:latest",
                "scaling": { "minInstances": min, "keepAlive": keep_alive },
            },
        })
    };
    functions
        .patch(
            "hello",
            &PatchParams::apply("test").force(),
            &Patch::Apply(hello(1, "5m")),
        )
        .await
        .expect("apply Function");

    // pods create + the pod watch.
    wait_until("one ready instance of hello", WAIT, || async {
        let pods = instance_pods(&apps, "hello").await?;
        Ok((pods.len() == 1 && pods.iter().all(is_ready)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));

    // functions/status by server-side apply.
    let status = wait_until("hello's status: 1 ready, Ready=True", WAIT, || async {
        let status = functions.get("hello").await?.status;
        Ok(status.filter(|s| {
            s.instances.as_ref().map(|i| i.ready) == Some(1)
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        }))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    let host = format!("hello.{}.svc.cluster.local", apps.name);
    assert_eq!(
        status.url.as_deref(),
        Some(format!("http://{host}").as_str())
    );

    // services: the ExternalName Service points at the chart's activator Service.
    let service = apps.api::<Service>().get("hello").await.expect("Service");
    assert_eq!(
        service.spec.and_then(|s| s.external_name).as_deref(),
        Some(format!("{}.{}.svc.cluster.local", release.activator(), system.name).as_str())
    );

    // events.k8s.io: the Created event (a failure to publish is only logged).
    wait_until("a Created event about hello", WAIT, || async {
        let events = apps.api::<Event>().list(&ListParams::default()).await?;
        Ok(events
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Created")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("hello")
            })
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));

    // The activator routes by Host to the instance it learnt from its watches.
    let reply = wait_until("a 200 through the activator by Host", WAIT, || async {
        let reply = http::get(activator.addr(), &host, "/", Duration::from_secs(10)).await?;
        Ok((reply.status == 200).then_some(reply))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    assert!(!reply.body.is_empty(), "empty reply: {reply:?}");

    // pods patch (drain) and delete: at minInstances 0 the idle instance is
    // reaped after its 1s keep-alive.
    functions
        .patch(
            "hello",
            &PatchParams::apply("test").force(),
            &Patch::Apply(hello(0, "1s")),
        )
        .await
        .expect("apply Function");
    wait_until("hello to scale to zero", WAIT, || async {
        Ok(instance_pods(&apps, "hello")
            .await?
            .is_empty()
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));

    // A cold start from zero by path: the request waits, the activator pokes
    // the autoscaler, the operator creates an instance, the request is served;
    // then the instance goes again after its keep-alive.
    let reply = http::get(
        activator.addr(),
        "localhost",
        &format!("/fn/{}/hello/", apps.name),
        WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    assert_eq!(reply.status, 200, "{reply:?}\n{}", logs());
    assert!(
        reply.headers.contains_key("thaw-cold-start"),
        "no Thaw-Cold-Start header on a cold start: {reply:?}"
    );
    wait_until("hello to scale to zero again", WAIT, || async {
        Ok(instance_pods(&apps, "hello")
            .await?
            .is_empty()
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));

    let text = logs();
    assert!(
        !text.to_lowercase().contains("forbidden"),
        "a component was refused something:\n{text}"
    );
    drop(chart);
    drop(release);
}

/// The operator's account watches the activator pods in its own namespace
/// (a refused watch there would only be retried quietly), and is refused
/// secrets anywhere and, in the one-namespace mode, anything outside it.
async fn check_operator_account(
    operator: &Client,
    system: &TestNamespace,
    apps: &TestNamespace,
    mode: Mode,
) -> Result<()> {
    let _events = Api::<Pod>::namespaced(operator.clone(), &system.name)
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .context("the operator watches pods in its own namespace")?;
    for ns in [&system.name, &apps.name] {
        expect_forbidden(
            Api::<Secret>::namespaced(operator.clone(), ns)
                .list(&ListParams::default())
                .await,
            &format!("list secrets in {ns}"),
        )?;
    }
    if mode == Mode::OneNamespace {
        expect_forbidden(
            Api::<Pod>::all(operator.clone())
                .list(&ListParams::default())
                .await,
            "list pods in all namespaces",
        )?;
        expect_forbidden(
            Api::<Function>::namespaced(operator.clone(), "default")
                .list(&ListParams::default())
                .await,
            "list Functions in another namespace",
        )?;
    }
    Ok(())
}

/// The activator's account reads (and watches) Functions and pods where it
/// serves, and may do nothing else.
async fn check_activator_account(
    cluster: &Cluster,
    release: &Release,
    apps: &TestNamespace,
    mode: Mode,
) -> Result<()> {
    let (_, activator) =
        service_account_kubeconfig(cluster, &release.namespace, &release.activator()).await?;
    let (functions, pods): (Api<Function>, Api<Pod>) = match mode {
        Mode::AllNamespaces => (Api::all(activator.clone()), Api::all(activator.clone())),
        Mode::OneNamespace => (
            Api::namespaced(activator.clone(), &apps.name),
            Api::namespaced(activator.clone(), &apps.name),
        ),
    };
    functions
        .list(&ListParams::default())
        .await
        .context("the activator lists Functions")?;
    // A refused watch fails when it starts; the stream itself is not needed.
    let _events = functions
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .context("the activator watches Functions")?;
    pods.list(&ListParams::default().labels(FUNCTION_LABEL))
        .await
        .context("the activator lists pods")?;
    let _events = pods
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .context("the activator watches pods")?;
    let in_apps = Api::<Pod>::namespaced(activator.clone(), &apps.name);
    in_apps
        .get_opt("no-such-pod")
        .await
        .context("the activator gets a pod")?;

    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "not-allowed" },
        "spec": { "containers": [{ "name": "c", "image": "thaw.dev/samples/hello" }] },
    }))?;
    expect_forbidden(in_apps.create(&dry_run, &pod).await, "create a pod")?;
    expect_forbidden(
        Api::<Secret>::namespaced(activator.clone(), &apps.name)
            .list(&ListParams::default())
            .await,
        "list secrets",
    )?;
    expect_forbidden(
        Api::<Lease>::namespaced(activator.clone(), &release.namespace)
            .list(&ListParams::default())
            .await,
        "list Leases",
    )?;
    let status = json!({"apiVersion": "thaw.dev/v1alpha1", "kind": "Function", "status": {}});
    expect_forbidden(
        Api::<Function>::namespaced(activator.clone(), &apps.name)
            .patch_status("hello", &PatchParams::apply("test"), &Patch::Apply(&status))
            .await,
        "write Function status",
    )?;
    if mode == Mode::OneNamespace {
        expect_forbidden(
            Api::<Function>::all(activator)
                .list(&ListParams::default())
                .await,
            "list Functions in all namespaces",
        )?;
    }
    Ok(())
}

/// Labels `ns` to enforce the "restricted" Pod Security Standard.
async fn enforce_restricted_pod_security(cluster: &Cluster, ns: &TestNamespace) -> Result<()> {
    let patch =
        json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    Api::<Namespace>::all(cluster.client())
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A pod made from each of the chart's pod templates is admitted (dry run)
/// in the release namespace, which enforces the "restricted" standard.
async fn pods_of_the_chart_meet_restricted_pod_security(
    cluster: &Cluster,
    release: &Release,
) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), &release.namespace);
    let pods: Api<Pod> = Api::namespaced(cluster.client(), &release.namespace);
    for name in [release.operator(), release.activator()] {
        let template = deployments
            .get(&name)
            .await?
            .spec
            .context("no spec")?
            .template;
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("{name}-pss")),
                labels: template.metadata.and_then(|m| m.labels),
                ..ObjectMeta::default()
            },
            spec: template.spec,
            status: None,
        };
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        pods.create(&dry_run, &pod)
            .await
            .with_context(|| format!("a pod of {name} under restricted Pod Security"))?;
    }
    Ok(())
}

/// Every object the chart renders with all its options on (bar the
/// ServiceMonitors, whose CRD this cluster lacks) passes the API server's
/// validation and admission, as a server-side dry run.
#[tokio::test]
async fn every_optional_object_is_accepted_by_the_api_server() {
    let cluster = Cluster::shared().await.expect("cluster");
    let ns = cluster.namespace("inst-opt").await.expect("namespace");
    let chart = chart_dir();
    let watch = format!("watchNamespaces={{{}}}", ns.name);
    let rendered = helm(
        cluster.kubeconfig(),
        &[
            "template",
            "thaw-opt",
            &chart.to_string_lossy(),
            "--namespace",
            &ns.name,
            "--set",
            &watch,
            "--set",
            "activator.autoscaling.enabled=true",
            "--set",
            "activator.ingress.enabled=true",
            "--set",
            "activator.ingress.hosts={*.fn.example.com}",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
            "--set",
            "activator.maxBodyBytes=1048576",
            "--set",
            "activator.headerReadTimeout=10s",
        ],
    )
    .await
    .expect("helm template");
    for kind in [
        "HorizontalPodAutoscaler",
        "Ingress",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Role",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "no {kind} rendered"
        );
    }
    let mut kubectl = tokio::process::Command::new(kubectl_binary())
        .args([
            "apply",
            "--server-side",
            "--dry-run=server",
            "--namespace",
            &ns.name,
            "-f",
            "-",
        ])
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    let mut stdin = kubectl.stdin.take().expect("stdin");
    stdin.write_all(rendered.as_bytes()).await.expect("write");
    drop(stdin);
    let out = kubectl.wait_with_output().await.expect("kubectl");
    assert!(
        out.status.success(),
        "the API server refused the rendered chart:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// kubectl of the cluster's version (`make tools`), else kubectl on `PATH`.
fn kubectl_binary() -> PathBuf {
    let versions =
        std::fs::read_to_string(repo_root().join("e2e/versions.env")).unwrap_or_default();
    let version = versions
        .lines()
        .find_map(|line| line.strip_prefix("KUBERNETES_VERSION="))
        .unwrap_or_default();
    let cache = std::env::var_os("THAW_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/thaw")))
        .unwrap_or_default();
    let built = cache.join(format!("k8s-{version}/bin/kubectl"));
    if built.is_file() {
        built
    } else {
        PathBuf::from("kubectl")
    }
}

/// `result` is the API server's 403.
fn expect_forbidden<T>(result: kube::Result<T>, what: &str) -> Result<()> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
        Err(error) => bail!("{what}: expected 403 Forbidden, got {error}"),
        Ok(_) => bail!("{what}: allowed, but the chart should not grant it"),
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
