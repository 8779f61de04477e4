//! The local cluster as tests see it: started once per machine by
//! `e2e/cluster/up.sh` (or attached to when already running) and a
//! namespace of its own for every test.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::OnceCell;

use crate::{fixtures::repo_root, wait_until};

/// Field manager of everything the tests apply.
const FIELD_MANAGER: &str = "thaw-e2e";

/// A running local cluster.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    kubeconfig: PathBuf,
}

/// The admin kubeconfig once the cluster is up. Only the path is shared:
/// each `#[tokio::test]` has its own runtime, and a client made on one dies
/// with it.
static STARTED: OnceCell<PathBuf> = OnceCell::const_new();

impl Cluster {
    /// The local cluster, started by `e2e/cluster/up.sh` unless it already
    /// runs (the script is idempotent and serialised with `flock`, so
    /// concurrent test binaries start it once), with a client on the
    /// calling test's runtime.
    pub async fn shared() -> Result<Cluster> {
        let kubeconfig = STARTED.get_or_try_init(Self::start).await?.clone();
        let client = client_from(&kubeconfig).await?;
        Ok(Cluster { client, kubeconfig })
    }

    async fn start() -> Result<PathBuf> {
        if let Some(kubeconfig) = provided_kubeconfig()? {
            return Ok(kubeconfig);
        }
        let root = repo_root();
        let dir = std::env::var_os("THAW_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".cluster"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let up = root.join("e2e/cluster/up.sh");
        let lock = dir.join("up.lock");
        let status = tokio::task::spawn_blocking(move || {
            // --close: the cluster's daemons, started by up.sh, must not
            // inherit the lock, or every later start waits for them forever.
            Command::new("flock")
                .arg("--close")
                .arg(&lock)
                .arg("bash")
                .arg(&up)
                .status()
        })
        .await?
        .context("running e2e/cluster/up.sh")?;
        if !status.success() {
            bail!("e2e/cluster/up.sh failed ({status}); see .cluster/logs");
        }
        Ok(dir.join("kubeconfig"))
    }

    /// A client with the cluster admin's credentials.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Path of the admin kubeconfig, for processes the tests start.
    pub fn kubeconfig(&self) -> &PathBuf {
        &self.kubeconfig
    }

    /// A fresh namespace named `<prefix>-<random>`, deleted when dropped.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let suffix = Alphanumeric
            .sample_string(&mut rand::rng(), 6)
            .to_lowercase();
        let name = format!("{prefix}-{suffix}");
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("thaw.dev/test".to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace {
            name,
            client: self.client(),
            kubeconfig: self.kubeconfig.clone(),
        })
    }

    /// Applies `crds/functions.thaw.dev.yaml` and waits until it is served.
    /// On kind the chart has installed it: the tests then judge the chart's
    /// copy (kept equal to crds/ by `make chart-lint`), untouched.
    pub async fn install_function_crd(&self) -> Result<()> {
        let path = repo_root().join("crds/functions.thaw.dev.yaml");
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
        let name = crd.metadata.name.clone().context("the CRD has no name")?;
        let api = Api::<CustomResourceDefinition>::all(self.client());
        if provided_kubeconfig()?.is_none() {
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .context("applying the Function CRD")?;
        }
        wait_until(
            "the Function CRD to be established",
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(established.then_some(()))
                }
            },
        )
        .await
    }
}

/// The cluster provider, from `THAW_E2E_PROVIDER`: `local` (the default)
/// starts the local cluster; `kind` means a cluster someone else started
/// (`e2e/kind/up.sh`), reached through the current kubeconfig
/// (`$KUBECONFIG`, else `~/.kube/config`), which is returned.
fn provided_kubeconfig() -> Result<Option<PathBuf>> {
    match std::env::var("THAW_E2E_PROVIDER")
        .unwrap_or_default()
        .as_str()
    {
        "" | "local" => Ok(None),
        "kind" => {
            let path = std::env::var_os("KUBECONFIG")
                .and_then(|paths| std::env::split_paths(&paths).next())
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config")))
                .context("THAW_E2E_PROVIDER=kind needs $KUBECONFIG or $HOME")?;
            Ok(Some(path))
        }
        other => bail!("THAW_E2E_PROVIDER={other}: expected `local` or `kind`"),
    }
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &PathBuf) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// A namespace a test owns. Dropping it starts its deletion.
pub struct TestNamespace {
    pub name: String,
    client: Client,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    /// An `Api` for namespaced objects in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    /// Deletes the namespace (and so its pods) before the test ends. Drop
    /// cannot await, and the test's runtime is shutting down, so a thread
    /// of its own with its own client does it; leaving it to the runtime
    /// lost the deletion and filled the node with leftover pods.
    fn drop(&mut self) {
        let name = self.name.clone();
        let kubeconfig = self.kubeconfig.clone();
        let deleted = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = client_from(&kubeconfig).await?;
                match Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                    Err(error) => Err(error.into()),
                }
            })
        })
        .join();
        if let Ok(Err(error)) | Err(error) = deleted.map_err(|_| anyhow::anyhow!("panicked")) {
            eprintln!("deleting namespace {}: {error:#}", self.name);
        }
    }
}
