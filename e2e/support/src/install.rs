//! The install path in tests: Helm releases of `charts/thaw` on the test
//! cluster, and kubeconfigs carrying a ServiceAccount's token, so thaw's
//! components run with exactly the RBAC the chart grants and the API server
//! enforces it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    apps::v1::Deployment,
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    coordination::v1::Lease,
    core::v1::{Pod, ServiceAccount},
};
use kube::{Api, Client, api::PostParams};
use serde_json::{Value, json};

use crate::{
    Activator, Cluster, Operator, TestNamespace, cluster::client_from, fixtures::repo_root,
    wait_until,
};

/// The chart: `charts/thaw`, or `$THAW_CHART` (a changed copy, to see a
/// test fail).
pub fn chart_dir() -> PathBuf {
    std::env::var_os("THAW_CHART")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("charts/thaw"))
}

/// helm: `$THAW_HELM`, else the one `make tools` builds into the cache, else
/// `helm` on `PATH` (kind and CI).
pub fn helm_binary() -> PathBuf {
    if let Some(helm) = std::env::var_os("THAW_HELM") {
        return PathBuf::from(helm);
    }
    let version = std::fs::read_to_string(repo_root().join("e2e/versions.env"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("HELM_VERSION=").map(str::to_owned))
        .unwrap_or_default();
    let cache = std::env::var_os("THAW_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/thaw")))
        .unwrap_or_default();
    let built = cache.join(format!("helm-{version}/bin/helm"));
    if built.is_file() {
        built
    } else {
        PathBuf::from("helm")
    }
}

/// Runs helm against the cluster of `kubeconfig`; fails with its output.
pub async fn helm(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(helm_binary())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .with_context(|| format!("running {}", helm_binary().display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "helm {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// A Helm release of the chart, uninstalled when dropped (its ClusterRoles
/// and bindings are cluster-wide, so they must not outlive the test).
pub struct Release {
    /// The release name; it contains `thaw`, so objects are named
    /// `<name>-operator` and `<name>-activator`.
    pub name: String,
    pub namespace: String,
    kubeconfig: PathBuf,
}

impl Release {
    /// `helm install <name> charts/thaw --namespace <namespace>` with
    /// `--set` values. `name` must contain `thaw` (the chart's full name is
    /// then the release name).
    pub async fn install(
        cluster: &Cluster,
        name: &str,
        namespace: &str,
        set: &[&str],
    ) -> Result<Release> {
        if !name.contains("thaw") {
            bail!("release name {name} must contain `thaw`");
        }
        let chart = chart_dir();
        let chart = chart.to_string_lossy();
        let mut args = vec!["install", name, &chart, "--namespace", namespace];
        for value in set {
            args.extend(["--set", value]);
        }
        helm(cluster.kubeconfig(), &args).await?;
        Ok(Release {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            kubeconfig: cluster.kubeconfig().clone(),
        })
    }

    /// Name of the operator's ServiceAccount, Deployment, Service and roles.
    pub fn operator(&self) -> String {
        format!("{}-operator", self.name)
    }

    /// Name of the activator's ServiceAccount, Deployment, Service and roles.
    pub fn activator(&self) -> String {
        format!("{}-activator", self.name)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::process::Command::new(helm_binary())
            .args(["uninstall", &self.name, "--namespace", &self.namespace])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The audience of the activators' stats tokens (the chart's default).
pub const STATS_AUDIENCE: &str = "thaw.dev/autoscaler";

/// A TokenRequest token of ServiceAccount `namespace/name` for `audiences`
/// (empty: the API server's own), valid for an hour, bound to `pod` if given
/// (as kubelet binds the projected token of a pod).
pub async fn request_token(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    audiences: &[&str],
    pod: Option<&Pod>,
) -> Result<String> {
    let bound_object_ref = pod.map(|pod| BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
    });
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            expiration_seconds: Some(3600),
            bound_object_ref,
        },
        ..TokenRequest::default()
    };
    Ok(
        Api::<ServiceAccount>::namespaced(cluster.client(), namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for serviceaccount {namespace}/{name}"))?
            .status
            .context("the TokenRequest has no status")?
            .token,
    )
}

/// A pod object of ServiceAccount `service_account` named `name` in
/// `namespace`, for tokens to be bound to: a process run as an activator
/// here is not a pod, so this one stands for it (it only sleeps).
pub async fn stand_in_pod(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    service_account: &str,
) -> Result<Pod> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "containers": [{
                "name": "stand-in",
                "image": "thaw.dev/tools/sh",
                "args": ["-c", "exec sleep 86400"],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    }))?;
    Api::<Pod>::namespaced(cluster.client(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating the stand-in pod {namespace}/{name}"))
}

/// Writes a token where a component reads it, like kubelet's projected
/// volume: `.cluster/tests/<file_name>.token`, owner-only.
pub fn write_token(file_name: &str, token: &str) -> Result<PathBuf> {
    let dir = repo_root().join(".cluster/tests");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{file_name}.token"));
    write_private(&path, token)?;
    Ok(path)
}

/// A kubeconfig for ServiceAccount `namespace/name`: the cluster of the
/// admin kubeconfig and a token from the TokenRequest API, valid for an hour.
/// Written to `.cluster/tests/<namespace>-<name>.kubeconfig`; returned with
/// a client of it.
pub async fn service_account_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Result<(PathBuf, Client)> {
    let token = request_token(cluster, namespace, name, &[], None).await?;

    let admin_path = cluster.kubeconfig();
    let admin: Value = serde_yaml::from_str(
        &std::fs::read_to_string(admin_path)
            .with_context(|| format!("reading {}", admin_path.display()))?,
    )?;
    let mut cluster_entry = current_cluster(&admin)?;
    // A relative CA path is relative to the kubeconfig it came from.
    if let Some(ca) = cluster_entry
        .pointer_mut("/cluster/certificate-authority")
        .filter(|ca| ca.as_str().is_some_and(|p| Path::new(p).is_relative()))
    {
        let dir = admin_path.parent().unwrap_or(Path::new("."));
        *ca = json!(dir.join(ca.as_str().unwrap_or_default()));
    }
    let user = format!("system:serviceaccount:{namespace}:{name}");
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster_entry],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{ "name": user, "context": {
            "cluster": cluster_entry["name"],
            "user": user,
            "namespace": namespace,
        }}],
        "current-context": user,
    });
    let dir = repo_root().join(".cluster/tests");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
    write_private(&path, &serde_yaml::to_string(&kubeconfig)?)?;
    let client = client_from(&path).await?;
    Ok((path, client))
}

/// The `clusters[]` entry the current context of `kubeconfig` uses.
fn current_cluster(kubeconfig: &Value) -> Result<Value> {
    let context = kubeconfig["current-context"]
        .as_str()
        .context("the kubeconfig has no current-context")?;
    let cluster = kubeconfig["contexts"]
        .as_array()
        .and_then(|contexts| contexts.iter().find(|c| c["name"] == context))
        .and_then(|c| c["context"]["cluster"].as_str())
        .with_context(|| format!("the kubeconfig has no context {context}"))?;
    kubeconfig["clusters"]
        .as_array()
        .and_then(|clusters| clusters.iter().find(|c| c["name"] == cluster))
        .cloned()
        .with_context(|| format!("the kubeconfig has no cluster {cluster}"))
}

/// Writes `text` to `path`, readable by its owner only (it holds a token).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Which RBAC the chart renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `watchNamespaces: []`: ClusterRoles.
    AllNamespaces,
    /// `watchNamespaces: [<ns>]`: Roles in that namespace only.
    OneNamespace,
}

/// `thaw operator` and `thaw activator` run here with the arguments the
/// chart's Deployments render and the tokens of the chart's ServiceAccounts,
/// so the API server enforces exactly the chart's RBAC. Only the listen
/// addresses and the stats URL move to loopback. Stopped when dropped.
pub struct ChartThaw {
    pub activator: Activator,
    pub operator: Operator,
    /// A client with the operator's token.
    pub operator_client: Client,
    /// The activator's stats token: the chart's ServiceAccount, thaw's
    /// audience, bound to the stand-in pod named as the activator's id.
    pub activator_token: String,
}

impl ChartThaw {
    /// Starts both for `release`, serving Functions in `apps`, and waits
    /// until the activator is ready and the operator holds its Lease.
    pub async fn start(
        cluster: &Cluster,
        release: &Release,
        apps: &TestNamespace,
        mode: Mode,
    ) -> Result<ChartThaw> {
        let (operator_kubeconfig, operator_client) =
            service_account_kubeconfig(cluster, &release.namespace, &release.operator()).await?;
        let (activator_kubeconfig, _) =
            service_account_kubeconfig(cluster, &release.namespace, &release.activator()).await?;
        let identity = "chart-operator";
        let args = chart_args(
            cluster,
            release,
            "operator",
            "--identity",
            identity,
            &apps.name,
            mode,
        )
        .await?;
        let operator = Operator::start_args(
            &operator_kubeconfig,
            &format!("{}-{identity}", release.namespace),
            identity,
            &args,
        )?;
        let activator_id = "chart-activator";
        // The projected token kubelet would mount: bound to a pod named as
        // the activator's id, so the operator's identity check runs as in a
        // cluster.
        let stand_in = stand_in_pod(
            cluster,
            &release.namespace,
            activator_id,
            &release.activator(),
        )
        .await?;
        let activator_token = request_token(
            cluster,
            &release.namespace,
            &release.activator(),
            &[STATS_AUDIENCE],
            Some(&stand_in),
        )
        .await?;
        let token_file = write_token(
            &format!("{}-{activator_id}", release.namespace),
            &activator_token,
        )?;
        let mut args = chart_args(
            cluster,
            release,
            "activator",
            "--id",
            activator_id,
            &apps.name,
            mode,
        )
        .await?;
        // The chart's URL names the operator's headless Service, which only
        // cluster DNS resolves; here the operator listens on loopback.
        let chart_url = format!(
            "--autoscaler-url=http://{}.{}.svc:9090/v1/stats",
            release.operator(),
            release.namespace
        );
        let url = args
            .iter()
            .position(|a| *a == chart_url)
            .with_context(|| format!("no {chart_url} in {args:?}"))?;
        args[url] = format!(
            "--autoscaler-url=http://127.0.0.1:{}/v1/stats",
            operator.http_port
        );
        args.push(format!("--token-file={}", token_file.display()));
        let activator = Activator::start_args(
            &activator_kubeconfig,
            &format!("{}-{activator_id}", release.namespace),
            activator_id,
            &args,
        )?;
        let chart = ChartThaw {
            activator,
            operator,
            operator_client,
            activator_token,
        };
        let wait = Duration::from_secs(60);
        chart
            .activator
            .wait_ready(wait)
            .await
            .with_context(|| chart.logs())?;
        let leases: Api<Lease> = Api::namespaced(cluster.client(), &release.namespace);
        wait_until("the operator to hold its Lease", wait, || async {
            let lease = leases.get_opt(&release.operator()).await?;
            let holder = lease.and_then(|l| l.spec).and_then(|s| s.holder_identity);
            Ok((holder.as_deref() == Some(identity)).then_some(()))
        })
        .await
        .with_context(|| chart.logs())?;
        Ok(chart)
    }

    /// Both components' logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "operator log:\n{}\nactivator log:\n{}",
            self.operator.log(),
            self.activator.log()
        )
    }
}

/// A component's arguments as the chart's Deployment renders them, made
/// runnable here: the subcommand and the listen addresses dropped (the
/// caller picks loopback ports), `$(VAR)` expanded as Kubernetes would, the
/// pod name passed as a flag, and, in the all-namespaces mode,
/// `--watch-namespace` added so this component leaves other tests'
/// Functions alone.
pub async fn chart_args(
    cluster: &Cluster,
    release: &Release,
    component: &str,
    name_flag: &str,
    identity: &str,
    apps: &str,
    mode: Mode,
) -> Result<Vec<String>> {
    let deployment_name = format!("{}-{component}", release.name);
    let deployment = Api::<Deployment>::namespaced(cluster.client(), &release.namespace)
        .get(&deployment_name)
        .await?;
    let container = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().find(|c| c.name == component))
        .with_context(|| format!("{deployment_name} has no `{component}` container"))?;
    let args = container.args.unwrap_or_default();
    if args.first().map(String::as_str) != Some(component) {
        bail!("{deployment_name} does not run `thaw {component}`: {args:?}");
    }
    let watch = format!("--watch-namespace={apps}");
    match mode {
        Mode::OneNamespace if !args.contains(&watch) => bail!("no {watch} in {args:?}"),
        Mode::AllNamespaces if args.iter().any(|a| a.starts_with("--watch-namespace")) => {
            bail!("all-namespaces mode renders --watch-namespace: {args:?}")
        }
        _ => {}
    }
    let mut runnable: Vec<String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--http-addr") && !a.starts_with("--admin-addr"))
        .map(|a| {
            a.replace("$(POD_NAMESPACE)", &release.namespace)
                .replace("$(POD_NAME)", identity)
        })
        .collect();
    if let Some(unexpanded) = runnable.iter().find(|a| a.contains("$(")) {
        bail!("an argument refers to a variable the test does not set: {unexpanded}");
    }
    runnable.push(format!("{name_flag}={identity}"));
    if mode == Mode::AllNamespaces {
        runnable.push(watch);
    }
    Ok(runnable)
}

/// A test's Functions namespace with thaw installed for it by the chart in a
/// namespace of its own (the chart's ServiceAccounts and RBAC, no replicas)
/// and its operator and activator run as those ServiceAccounts
/// ([`ChartThaw`], [`Mode::OneNamespace`]). Fields drop in order:
/// processes, release, namespaces.
pub struct ChartSetup {
    pub chart: ChartThaw,
    pub release: Release,
    pub system: TestNamespace,
    pub ns: TestNamespace,
    pub cluster: Cluster,
}

impl ChartSetup {
    pub async fn new(prefix: &str) -> Result<ChartSetup> {
        let cluster = Cluster::shared().await?;
        cluster.install_function_crd().await?;
        let ns = cluster.namespace(prefix).await?;
        let system = cluster.namespace(&format!("{prefix}-sys")).await?;
        let watch = format!("watchNamespaces={{{}}}", ns.name);
        let release = Release::install(
            &cluster,
            &format!("thaw-{}", ns.name),
            &system.name,
            &["operator.replicas=0", "activator.replicas=0", &watch],
        )
        .await?;
        let chart = ChartThaw::start(&cluster, &release, &ns, Mode::OneNamespace).await?;
        Ok(ChartSetup {
            chart,
            release,
            system,
            ns,
            cluster,
        })
    }
}
