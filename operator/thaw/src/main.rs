//! The `thaw` binary: one executable for every thaw component, and the
//! kubectl plugin (`kubectl thaw`, see [`plugin`]).

mod plugin;

use std::{
    io::{IsTerminal, Write},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use futures::FutureExt;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use rand::distr::{Alphanumeric, SampleString};
use thaw_controller::auth::{DEFAULT_AUDIENCE as DEFAULT_STATS_AUDIENCE, StatsAuth};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

// mimalloc instead of the C library's malloc: per-thread free lists instead
// of glibc's arena locks (or musl's slow allocator in the image), measured in
// docs/benchmarks.md (`make bench-activator`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "thaw",
    version,
    about = "HTTP functions on Kubernetes that scale to zero, with an exact keep-alive per instance"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Function CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller and the autoscaler.
    Operator(Box<OperatorArgs>),
    /// Run the activator: the proxy every request to a function passes through.
    Activator(Box<ActivatorArgs>),
    /// Run the gate: the sidecar in every instance pod that holds its hard
    /// concurrency limit and its idle clock (started by the operator's pods).
    Gate(GateArgs),
    /// The kubectl plugin's commands (`kubectl thaw ...` when installed as kubectl-thaw).
    Kubectl(plugin::PluginArgs),
}

#[derive(Args)]
struct GateArgs {
    /// Port activators send requests to.
    #[arg(long, default_value_t = 8012)]
    port: u16,
    /// Port of /v1/state, /ready and /healthz.
    #[arg(long, default_value_t = 8013)]
    admin_port: u16,
    /// The function's port on loopback.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    upstream_port: u16,
    /// HTTP path of the function's readiness check; a TCP connect when unset.
    #[arg(long)]
    readiness_path: Option<String>,
    /// Most requests on the function at once; 0 = unlimited.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Most requests the instance admits in its life
    /// (maxRequestsPerInstance); later ones get 503 `thaw-gate: exhausted`.
    /// 0 = unlimited.
    #[arg(long, default_value_t = 0)]
    max_requests: u32,
    /// Most requests held for a slot; more get 503.
    #[arg(long, default_value_t = 1000)]
    max_waiting: u32,
    /// Longest a request is held for a slot (the Function's timeout).
    #[arg(long, default_value = "30s", value_parser = duration)]
    max_hold: Duration,
}

#[derive(Args)]
struct ClusterArgs {
    /// Kubeconfig to use; in-cluster config or $KUBECONFIG when unset.
    #[arg(long, env = "THAW_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Args)]
struct OperatorArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Address of /metrics, /healthz, /readyz and the activators' /v1/stats.
    #[arg(long, env = "THAW_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    http_addr: SocketAddr,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "thaw-system")]
    lease_namespace: String,
    #[arg(long, default_value = "thaw-operator")]
    lease_name: String,
    /// This replica's identity in the Lease; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader's Lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// DNS name of the activator Service; every Function's ExternalName Service points there.
    #[arg(
        long,
        env = "THAW_ACTIVATOR_HOST",
        default_value = "thaw-activator.thaw-system.svc.cluster.local"
    )]
    activator_host: String,
    /// Domain of Function URLs: http://<name>.<namespace>.<domain>.
    #[arg(long, env = "THAW_DOMAIN", default_value = "svc.cluster.local")]
    domain: String,
    /// Watch only this namespace's Functions (all namespaces when unset).
    #[arg(long, env = "THAW_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Label selector of the activator pods (in the lease namespace); each
    /// running one must report before any instance is reaped.
    #[arg(long, env = "THAW_ACTIVATOR_SELECTOR")]
    activator_selector: Option<String>,
    /// Image of the gate sidecar in every instance pod: thaw's own image.
    #[arg(long, env = "THAW_GATE_IMAGE", default_value = concat!("thaw.dev/thaw:", env!("CARGO_PKG_VERSION")))]
    gate_image: String,
    /// ServiceAccount (<namespace>/<name>) whose pods may send stats reports, each for
    /// itself only (its token is bound to the pod named as the report's activator);
    /// repeatable. Reports are authenticated with a TokenReview.
    #[arg(long = "activator-service-account", value_delimiter = ',')]
    activator_service_accounts: Vec<String>,
    /// Audience the activators' tokens must carry.
    #[arg(long, default_value = DEFAULT_STATS_AUDIENCE)]
    stats_audience: String,
    /// Accept stats reports from anyone (local development only): whoever reaches the
    /// endpoint can then scale every Function.
    #[arg(long, conflicts_with = "activator_service_accounts")]
    allow_unauthenticated_stats: bool,
}

#[derive(Args)]
struct ActivatorArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Address functions are served on (HTTP/1.1 and h2c).
    #[arg(long, env = "THAW_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "THAW_ADMIN_ADDR", default_value = "0.0.0.0:9091")]
    admin_addr: SocketAddr,
    /// Domain of Function URLs: http://<name>.<namespace>.<domain>.
    #[arg(long, env = "THAW_DOMAIN", default_value = "svc.cluster.local")]
    domain: String,
    /// Watch only this namespace's Functions and pods (all namespaces when unset).
    #[arg(long, env = "THAW_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// The autoscaler's stats endpoint, e.g. http://thaw-operator.thaw-system.svc:9090/v1/stats;
    /// repeatable (or comma-separated). Every address the host resolves to gets each report.
    #[arg(
        long = "autoscaler-url",
        env = "THAW_AUTOSCALER_URLS",
        value_delimiter = ','
    )]
    autoscaler_urls: Vec<String>,
    /// The projected ServiceAccount token sent with every stats report (re-read when
    /// kubelet rotates it); reports go without one when the file does not exist.
    #[arg(long, env = "THAW_TOKEN_FILE", default_value = thaw_activator::DEFAULT_TOKEN_FILE)]
    token_file: PathBuf,
    /// Audience the token is expected to carry (a mismatch is logged at start).
    #[arg(long, default_value = DEFAULT_STATS_AUDIENCE)]
    stats_audience: String,
    /// This replica's id in stats reports; the pod name in a cluster, random when unset.
    #[arg(long, env = "POD_NAME")]
    id: Option<String>,
    /// Largest request body in bytes: a larger Content-Length gets 413, a
    /// streamed body is cut when it passes the limit.
    #[arg(long, env = "THAW_MAX_BODY_BYTES", default_value_t = 10 << 20)]
    max_body_bytes: u64,
    /// Longest a client may take to send a request's headers, from their first byte (408 after).
    #[arg(long, default_value = "10s", value_parser = duration)]
    header_read_timeout: Duration,
    /// A client connection with no request for this long is closed; keep it above the
    /// idle timeout of load balancers in front of the activator.
    #[arg(long, default_value = "90s", value_parser = duration)]
    idle_timeout: Duration,
    /// Longest a client may pause while sending a request body (408 after).
    #[arg(long, default_value = "10s", value_parser = duration)]
    body_idle_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; at least 8192.
    #[arg(long, default_value_t = 64 << 10)]
    max_header_bytes: usize,
    /// Most headers in one request.
    #[arg(long, default_value_t = 100)]
    max_headers: usize,
    /// Most open client connections; one more is answered 503 (Retry-After) and closed.
    #[arg(long, env = "THAW_MAX_CONNECTIONS", default_value_t = 20_000)]
    max_connections: usize,
    /// Most requests waiting for an instance across all Functions together (each
    /// Function's queue.maxPending bounds it alone); one more gets 503 with Retry-After.
    #[arg(long, env = "THAW_MAX_QUEUED_REQUESTS", default_value_t = 10_000)]
    max_queued_requests: usize,
    /// Threads serving clients, each with its own runtime and instance
    /// connections, all accepting on the one listening socket; 0 means one per
    /// CPU the container may use.
    #[arg(long, env = "THAW_PROXY_WORKERS", default_value_t = 0)]
    proxy_workers: usize,
    /// Time between stats reports.
    #[arg(long, default_value = "1s", value_parser = duration)]
    report_interval: Duration,
    /// Longest shutdown waits for open requests: every request ends within its
    /// function's timeout (at most 15m), waiting included.
    #[arg(long, default_value = "16m", value_parser = duration)]
    drain_timeout: Duration,
    /// After SIGTERM, how long to keep serving (not ready, answering with
    /// `Connection: close`) before no longer accepting connections: the time
    /// endpoints and load balancers take to stop sending here.
    #[arg(long, env = "THAW_SHUTDOWN_DELAY", default_value = "0s", value_parser = duration)]
    shutdown_delay: Duration,
    /// Serve a function without Kubernetes: <namespace>/<name>=<ip:port>[,concurrency=<n>],
    /// one instance at that address (repeatable; for benchmarks). No cluster is contacted
    /// when given.
    #[arg(long = "static-function")]
    static_functions: Vec<thaw_activator::StaticFunction>,
}

/// Ends a plugin command like kubectl does: `error: <why>` and exit status
/// 1 on failure (no backtrace; the causes are in the message).
fn plugin_exit(result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// A command-line tool's logs: warnings and errors only, on stderr.
fn plugin_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// A duration written like 500ms, 10s or 1m30s.
fn duration(text: &str) -> Result<Duration, String> {
    thaw_api::GoDuration::from(text)
        .parse()
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if plugin::invoked_as_plugin() {
        let args = <plugin::KubectlThaw as Parser>::parse().args;
        plugin_logs();
        plugin_exit(plugin::run(args).await);
        return Ok(());
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::Kubectl(_)) {
        plugin_logs();
    } else {
        component_logs(&cli.log_format);
    }
    match cli.command {
        Command::Crd => {
            let yaml = thaw_api::crd::function_crd_yaml().context("rendering the CRD")?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing the CRD")?;
        }
        Command::Operator(args) => operator(*args).await?,
        Command::Activator(args) => activator(*args).await?,
        Command::Gate(args) => gate(args).await?,
        Command::Kubectl(args) => plugin_exit(plugin::run(args).await),
    }
    Ok(())
}

/// A component's logs: info and up on stderr, as text or JSON.
fn component_logs(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
}

async fn operator(args: OperatorArgs) -> anyhow::Result<()> {
    let client = client(&args.cluster).await?;
    let identity = args.identity.unwrap_or_else(|| {
        format!(
            "thaw-operator-{}",
            Alphanumeric
                .sample_string(&mut rand::rng(), 8)
                .to_lowercase()
        )
    });
    let options = thaw_controller::run::Options {
        config: thaw_controller::Config {
            activator_host: args.activator_host,
            domain: args.domain,
            gate_image: args.gate_image,
        },
        http_addr: args.http_addr,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
        watch_namespace: args.watch_namespace,
        activator_selector: args.activator_selector,
        stats_auth: if args.allow_unauthenticated_stats {
            StatsAuth::Off
        } else if args.activator_service_accounts.is_empty() {
            anyhow::bail!(
                "name the activators' ServiceAccount with --activator-service-account <namespace>/<name> \
                 (or pass --allow-unauthenticated-stats for local development)"
            );
        } else {
            StatsAuth::Activators {
                audience: args.stats_audience,
                service_accounts: args.activator_service_accounts,
            }
        },
    };
    thaw_controller::run::run(client, options, shutdown_signal()?.boxed()).await
}

async fn activator(args: ActivatorArgs) -> anyhow::Result<()> {
    let client = if args.static_functions.is_empty() {
        Some(client(&args.cluster).await?)
    } else {
        None
    };
    let id = args.id.unwrap_or_else(|| {
        format!(
            "thaw-activator-{}",
            Alphanumeric
                .sample_string(&mut rand::rng(), 8)
                .to_lowercase()
        )
    });
    let options = thaw_activator::Options {
        proxy: thaw_activator::ProxyOptions {
            domain: args.domain,
            max_body_bytes: args.max_body_bytes,
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
            body_idle_timeout: args.body_idle_timeout,
            max_header_bytes: args.max_header_bytes,
            max_headers: args.max_headers,
            max_connections: args.max_connections,
            max_queued: args.max_queued_requests,
            workers: args.proxy_workers,
            ..thaw_activator::ProxyOptions::default()
        },
        http_addr: args.http_addr,
        admin_addr: args.admin_addr,
        watch_namespace: args.watch_namespace,
        autoscaler_urls: args.autoscaler_urls,
        id,
        report_interval: args.report_interval,
        report_timeout: Duration::from_secs(1),
        drain_timeout: args.drain_timeout,
        shutdown_delay: args.shutdown_delay,
        static_functions: args.static_functions,
        token_file: args.token_file,
        stats_audience: args.stats_audience,
    };
    thaw_activator::run(client, options, shutdown_signal()?.boxed()).await
}

async fn gate(args: GateArgs) -> anyhow::Result<()> {
    let any = std::net::Ipv4Addr::UNSPECIFIED;
    let options = thaw_gate::GateOptions {
        listen: SocketAddr::from((any, args.port)),
        admin_listen: SocketAddr::from((any, args.admin_port)),
        upstream: thaw_gate::Upstream::new(args.upstream_port, args.readiness_path),
        concurrency: args.concurrency,
        max_requests: args.max_requests,
        max_waiting: args.max_waiting,
        max_hold: args.max_hold,
        header_read_timeout: Duration::from_secs(10),
    };
    thaw_gate::run(options, shutdown_signal()?).await
}

async fn client(args: &ClusterArgs) -> anyhow::Result<Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Completes on SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
