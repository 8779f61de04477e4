//! The plugin's Kubernetes reads: the client from kubectl's flags, the
//! Functions and their instance pods, and each gate's `/v1/state` through
//! the API server's pod proxy (`pods/proxy`), so it works from wherever
//! kubectl works, without reaching pod IPs.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use thaw_api::{Function, keys::FUNCTION_LABEL};
use thaw_controller::gate::{Answer, admin_address};
use thaw_gate::{GATE_STATE_PATH, GateState};

use super::report::GateAnswers;

/// Longest one gate read through the API server may take.
const GATE_TIMEOUT: Duration = Duration::from_secs(2);
/// Gate reads in flight at once: `-A -w` on a large cluster must not flood
/// the API server's proxy.
const GATE_READS_AT_ONCE: usize = 32;

/// kubectl's connection flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KubeFlags {
    /// Path to the kubeconfig file ($KUBECONFIG or ~/.kube/config when unset).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (the context's when unset).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// A client as kubectl would build it from these flags, and the namespace
/// they select.
pub async fn connect(flags: &KubeFlags) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: flags.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &flags.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if flags.context.is_some() => Config::from_kubeconfig(&options).await?,
        // No flags: $KUBECONFIG or ~/.kube/config, else the in-cluster config.
        None => Config::infer().await?,
    };
    let namespace = flags
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config)?, namespace))
}

/// Which Functions a command is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    One { namespace: String, name: String },
    Namespace(String),
    All,
}

/// The selected Functions (sorted by namespace and name) and, by
/// `(namespace, function)`, their instance pods.
pub async fn read(
    client: &Client,
    selection: &Selection,
) -> anyhow::Result<(Vec<Function>, BTreeMap<(String, String), Vec<Pod>>)> {
    let (functions, pods) = match selection {
        Selection::One { namespace, name } => {
            let function = Api::<Function>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .with_context(|| format!("reading Function {namespace}/{name}"))?
                .with_context(|| format!("Function {namespace}/{name} not found"))?;
            let pods = Api::<Pod>::namespaced(client.clone(), namespace)
                .list(&ListParams::default().labels(&format!("{FUNCTION_LABEL}={name}")))
                .await
                .with_context(|| format!("listing the instance pods of {namespace}/{name}"))?;
            (vec![function], pods.items)
        }
        Selection::Namespace(namespace) => (
            Api::<Function>::namespaced(client.clone(), namespace)
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing Functions in {namespace}"))?
                .items,
            instance_pods(Api::namespaced(client.clone(), namespace)).await?,
        ),
        Selection::All => (
            Api::<Function>::all(client.clone())
                .list(&ListParams::default())
                .await
                .context("listing Functions in all namespaces")?
                .items,
            instance_pods(Api::all(client.clone())).await?,
        ),
    };
    Ok((sorted(functions), by_function(pods)))
}

async fn instance_pods(api: Api<Pod>) -> anyhow::Result<Vec<Pod>> {
    Ok(api
        .list(&ListParams::default().labels(FUNCTION_LABEL))
        .await
        .context("listing instance pods")?
        .items)
}

pub fn sorted(mut functions: Vec<Function>) -> Vec<Function> {
    functions.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    functions
}

/// Instance pods by `(namespace, function)`, from their function label.
pub fn by_function(pods: Vec<Pod>) -> BTreeMap<(String, String), Vec<Pod>> {
    let mut grouped: BTreeMap<(String, String), Vec<Pod>> = BTreeMap::new();
    for pod in pods {
        let function = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(FUNCTION_LABEL))
            .cloned();
        if let (Some(namespace), Some(function)) = (pod.metadata.namespace.clone(), function) {
            grouped.entry((namespace, function)).or_default().push(pod);
        }
    }
    grouped
}

/// Every gate of `pods` asked, [`GATE_READS_AT_ONCE`] at a time; a pod with no gate or no IP yet is
/// not asked.
pub async fn ask_gates<'p>(client: &Client, pods: impl Iterator<Item = &'p Pod>) -> GateAnswers {
    let asks = pods.filter_map(|pod| {
        let name = pod.metadata.name.clone()?;
        let namespace = pod.metadata.namespace.clone()?;
        let (_, port) = admin_address(pod)?;
        Some(async move {
            let answer = gate_state(client, &namespace, &name, port).await;
            (name, answer)
        })
    });
    futures::stream::iter(asks)
        .buffer_unordered(GATE_READS_AT_ONCE)
        .collect()
        .await
}

/// `GET /v1/state` of a gate through `pods/<name>:<port>/proxy`.
async fn gate_state(client: &Client, namespace: &str, name: &str, port: u16) -> Answer {
    let path = format!("/api/v1/namespaces/{namespace}/pods/{name}:{port}/proxy{GATE_STATE_PATH}");
    let request = match http::Request::get(path).body(Vec::new()) {
        Ok(request) => request,
        Err(e) => return Answer::Unreachable(e.to_string()),
    };
    match tokio::time::timeout(GATE_TIMEOUT, client.request::<GateState>(request)).await {
        Ok(Ok(state)) => Answer::State(state),
        Ok(Err(kube::Error::Api(status))) if status.code == 403 => Answer::Unreachable(format!(
            "pods/proxy is forbidden ({}); grant `get` on pods/proxy to read in-flight and served counts",
            status.message
        )),
        Ok(Err(e)) => Answer::Unreachable(format!("pods/proxy: {e}")),
        Err(_) => Answer::Unreachable(format!("pods/proxy: no answer within {GATE_TIMEOUT:?}")),
    }
}
