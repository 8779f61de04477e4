//! thaw-node: plays kubelet for one node of the local test cluster, running
//! each pod's containers as local processes in the pod's own network
//! namespace. See docs/process-node.md.

mod backoff;
mod container;
mod ctx;
mod env;
mod images;
mod ipam;
mod manager;
mod net;
mod node;
mod pod;
mod probe;
mod process;
mod status;
mod volumes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ipnet::Ipv4Net;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::{MAX_BACKOFF, parse_duration};
use crate::ctx::Ctx;
use crate::ipam::Ipam;
use crate::net::Net;

#[derive(Parser, Debug)]
#[command(
    name = "thaw-node",
    version,
    about = "Plays kubelet for one node, running pods as local processes in their own network namespaces"
)]
struct Args {
    /// Kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Name of the Node to register.
    #[arg(long, default_value = "thaw-node")]
    node_name: String,
    /// Pod address range; the bridge gets the first address, pods the rest.
    #[arg(long, default_value = "10.244.0.0/24")]
    pod_cidr: Ipv4Net,
    /// Bridge that pod veths join (created if missing).
    #[arg(long, default_value = "thaw0")]
    bridge: String,
    /// Image map: which local program each image stands for.
    #[arg(long, default_value = "e2e/images.toml")]
    images: PathBuf,
    /// Directory relative program paths and working directories resolve
    /// against (default: the current directory).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Directory for per-pod container logs.
    #[arg(long, default_value = ".cluster/node")]
    state_dir: PathBuf,
    /// First crash-loop back-off (doubles per crash, capped at 5m), e.g. 10s or 1s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    crash_backoff_base: Duration,
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn find_on_path(name: &str, path: &str) -> Option<PathBuf> {
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.bridge.is_empty() || args.bridge.len() > 15 {
        bail!("--bridge must be 1 to 15 characters");
    }
    if args.crash_backoff_base.is_zero() {
        bail!("--crash-backoff-base must be positive");
    }
    let ipam = Ipam::new(args.pod_cidr).map_err(anyhow::Error::msg)?;
    let host_path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let ip_bin =
        find_on_path("ip", &host_path).context("the `ip` command (iproute2) is required")?;
    let root = absolute(args.root.as_deref().unwrap_or(Path::new(".")))?;
    let state_dir = absolute(&args.state_dir)?;
    std::fs::create_dir_all(state_dir.join("pods"))
        .with_context(|| format!("creating {}", state_dir.display()))?;
    if let Err(e) = images::ImageMap::load(&args.images) {
        warn!("{e} (pods will report ErrImagePull until it is readable)");
    }

    let net = Net {
        ip_bin,
        bridge: args.bridge.clone(),
        cidr: ipam.net(),
        gateway: ipam.gateway(),
    };
    net.ensure_bridge()
        .await
        .map_err(anyhow::Error::msg)
        .context("setting up the bridge")?;

    let shutdown = CancellationToken::new();
    let ctx = Arc::new(Ctx {
        client: client(args.kubeconfig.as_deref()).await?,
        node_name: args.node_name.clone(),
        net,
        images_path: args.images.clone(),
        root,
        state_dir,
        backoff_base: args.crash_backoff_base.min(MAX_BACKOFF),
        host_path,
        ipam: Mutex::new(ipam),
        shutdown: shutdown.clone(),
    });

    // First signal: orderly shutdown. Second: exit at once.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                n += 1;
                if n == 1 {
                    info!("shutting down: stopping all pods");
                    shutdown.cancel();
                } else {
                    warn!("second signal: exiting now");
                    std::process::exit(130);
                }
            }
        })
    };

    let mut agent = node::NodeAgent::new(ctx.clone());
    let mut delay = Duration::from_millis(500);
    loop {
        match agent.register().await {
            Ok(()) => break,
            Err(e) => warn!("registering node {}: {e:#}", ctx.node_name),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    info!("node {} ready", ctx.node_name);
    let heartbeat = tokio::spawn(agent.heartbeat());

    manager::run(ctx.clone()).await;
    shutdown.cancel();
    let _ = heartbeat.await;
    signals.abort();
    info!("stopped");
    Ok(())
}
