//! `thaw activator`: the proxy, the admin endpoint, the watches, the
//! prober tasks and the reporter, and the order they stop in.
//!
//! Shutdown: `/readyz` turns unready, the proxy stops accepting and lets
//! every open request finish (queued ones included, each bounded by its
//! function's `maxWait` and `timeout`), reports continue meanwhile; then a
//! last report says `leaving: true` and the process exits 0.

use std::{
    net::SocketAddr,
    path::PathBuf,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::future::BoxFuture;
use kube::Client;
use tokio::{net::TcpListener, sync::watch as channel};
use tracing::{info, warn};

use crate::{
    admin::{self, AdminState},
    metrics::Metrics,
    place::Limits,
    probe,
    proxy::{Proxy, ProxyOptions},
    registry::Registry,
    report::{Reporter, Target},
    throttle::{FunctionConfig, PodInfo},
    token::TokenFile,
    watch::{self, Synced},
};

/// How `thaw activator` runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub proxy: ProxyOptions,
    /// Where functions are served.
    pub http_addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub admin_addr: SocketAddr,
    /// Only this namespace's Functions and pods; every namespace when `None`.
    pub watch_namespace: Option<String>,
    /// Where stats reports go (the operator's `/v1/stats`).
    pub autoscaler_urls: Vec<String>,
    /// This replica's id in reports (its pod name).
    pub id: String,
    pub report_interval: Duration,
    pub report_timeout: Duration,
    /// Longest shutdown waits for open requests.
    pub drain_timeout: Duration,
    /// How long a stopping activator keeps serving, not ready, before it
    /// stops accepting connections.
    pub shutdown_delay: Duration,
    /// Functions served without Kubernetes (benchmarks, local tries).
    pub static_functions: Vec<StaticFunction>,
    /// The projected ServiceAccount token sent with every report.
    pub token_file: PathBuf,
    /// The audience that token should carry.
    pub stats_audience: String,
}

/// A function with one fixed instance, for running without a cluster:
/// `<namespace>/<name>=<ip:port>[,concurrency=<n>]` (concurrency defaults
/// to 0, unlimited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticFunction {
    pub namespace: String,
    pub name: String,
    pub addr: SocketAddr,
    pub concurrency: u32,
}

impl FromStr for StaticFunction {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let usage = || format!("{s:?} is not <namespace>/<name>=<ip:port>[,concurrency=<n>]");
        let (function, rest) = s.split_once('=').with_context(usage)?;
        let (namespace, name) = function.split_once('/').with_context(usage)?;
        let mut parts = rest.split(',');
        let addr = parts
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(usage)?;
        let mut concurrency = 0;
        for part in parts {
            match part.split_once('=') {
                Some(("concurrency", n)) => concurrency = n.parse().with_context(usage)?,
                _ => bail!(usage()),
            }
        }
        if !crate::route::is_label(namespace) || !crate::route::is_label(name) {
            bail!(usage());
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            addr,
            concurrency,
        })
    }
}

/// Runs the activator until `shutdown` completes and open requests finish.
/// `client` is `None` only when every function is static.
pub async fn run(
    client: Option<Client>,
    options: Options,
    shutdown: BoxFuture<'static, ()>,
) -> anyhow::Result<()> {
    let targets = options
        .autoscaler_urls
        .iter()
        .map(|url| Target::parse(url))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if targets.is_empty() {
        warn!("no --autoscaler-url: the autoscaler will not hear of this activator's requests");
    }
    let metrics = Metrics::new()?;
    let registry = Registry::new(metrics.clone(), probe::spawner());
    let synced = Arc::new(Synced::default());
    let stopping = Arc::new(AtomicBool::new(false));

    let proxy = Proxy::new(registry.clone(), options.proxy.clone(), synced.all.clone());
    let proxy_sockets = proxy
        .bind(options.http_addr)
        .with_context(|| format!("binding --http-addr {}", options.http_addr))?;
    let admin_listener = TcpListener::bind(options.admin_addr)
        .await
        .with_context(|| format!("binding --admin-addr {}", options.admin_addr))?;
    info!(
        id = %options.id,
        http = %options.http_addr,
        admin = %options.admin_addr,
        workers = proxy_sockets.len(),
        namespace = options.watch_namespace.as_deref().unwrap_or("<all>"),
        "activator starting"
    );

    let (admin_stop_tx, admin_stop_rx) = channel::channel(false);
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        AdminState {
            registry: metrics.registry.clone(),
            synced: synced.all.clone(),
            stopping: stopping.clone(),
        },
        stopped(admin_stop_rx),
    ));

    let watches = match client {
        Some(client) => Some(tokio::spawn(watch::run(
            client,
            options.watch_namespace.clone(),
            registry.clone(),
            synced.clone(),
        ))),
        None if !options.static_functions.is_empty() => {
            serve_static(&registry, &options.static_functions);
            synced.all.store(true, Ordering::Release);
            None
        }
        None => bail!("no Kubernetes client and no static function: nothing to serve"),
    };
    let (report_stop_tx, report_stop_rx) = channel::channel(false);
    let mut reporter = Reporter::new(
        registry.clone(),
        options.id.clone(),
        targets,
        options.report_timeout,
    )
    .with_token(TokenFile::new(&options.token_file, &options.stats_audience));
    let interval = options.report_interval;
    let reports = tokio::spawn(async move {
        reporter.run(interval, stopped(report_stop_rx)).await;
        reporter
    });

    let (stop_tx, stop_rx) = channel::channel(false);
    // Shutdown in two steps: first readiness goes false and keep-alive
    // clients are told to reconnect while this replica still serves
    // (endpoints and load balancers take a while to drop it); after
    // `shutdown_delay` it stops accepting and finishes what is open.
    let signal = {
        let (stopping, proxy, delay) = (stopping.clone(), proxy.clone(), options.shutdown_delay);
        async move {
            shutdown.await;
            stopping.store(true, Ordering::Release);
            proxy.close_connections();
            info!(delay = ?delay, "shutting down: not ready; serving until endpoints catch up");
            tokio::time::sleep(delay).await;
            let _ = stop_tx.send(true);
        }
    };
    let serving = proxy.serve_workers(proxy_sockets, signal);
    let stop_at = std::sync::OnceLock::new();
    let drain_limit = async {
        stopped(stop_rx).await;
        let _ = stop_at.set(Instant::now());
        info!("shutting down: no new connections; waiting for open requests");
        tokio::time::sleep(options.drain_timeout).await;
    };
    let drained = tokio::select! {
        served = serving => {
            served.context("starting the proxy workers")?;
            true
        }
        () = drain_limit => false,
    };
    let _ = report_stop_tx.send(true);
    let mut reporter = reports.await.context("the reporter task")?;
    let busy = registry.busy();
    if drained && busy == 0 {
        info!(
            drained_in_ms = stop_at
                .get()
                .map_or(0, |at| at.elapsed().as_millis() as u64),
            "open requests finished"
        );
        reporter.leave().await;
    } else {
        warn!(
            busy,
            "requests still open after --drain-timeout: exiting without a leaving report"
        );
    }
    if let Some(watches) = watches {
        watches.abort();
    }
    let _ = admin_stop_tx.send(true);
    let _ = admin.await;
    info!("activator stopped");
    Ok(())
}

/// Registers the static functions, each with one instance at its address.
fn serve_static(registry: &Registry, functions: &[StaticFunction]) {
    for (index, function) in functions.iter().enumerate() {
        let uid = format!("static-{index}");
        registry.set_function(
            &function.namespace,
            &function.name,
            Some(FunctionConfig {
                uid: uid.clone(),
                hash: "static".into(),
                limits: Limits {
                    concurrency: function.concurrency,
                    target: 0.7,
                },
                max_pending: 10_000,
                max_wait: Duration::from_secs(30),
                timeout: Duration::from_secs(30),
                port: function.addr.port(),
                max_requests: 0,
            }),
        );
        registry.upsert_pod(
            &function.namespace,
            &function.name,
            PodInfo {
                name: format!("{}-static", function.name),
                uid: uid.clone(),
                ip: Some(function.addr.ip()),
                port: Some(function.addr.port()),
                readiness_path: None,
                owner_uid: Some(uid),
                hash: Some("static".into()),
                kubelet_ready: None,
                draining: false,
                terminating: false,
                finished: false,
            },
        );
        info!(function = %format!("{}/{}", function.namespace, function.name), addr = %function.addr, "static function");
    }
}

/// A future that completes once `rx` turns true (or its sender is gone).
async fn stopped(mut rx: channel::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_functions_parse() {
        assert_eq!(
            "default/hello=127.0.0.1:8081"
                .parse::<StaticFunction>()
                .unwrap(),
            StaticFunction {
                namespace: "default".into(),
                name: "hello".into(),
                addr: "127.0.0.1:8081".parse().unwrap(),
                concurrency: 0,
            }
        );
        assert_eq!(
            "a/b=10.0.0.1:80,concurrency=4"
                .parse::<StaticFunction>()
                .unwrap()
                .concurrency,
            4
        );
        for bad in [
            "hello=127.0.0.1:1",
            "a/b",
            "a/b=host:1",
            "a/b=127.0.0.1:1,x=1",
            "A/b=127.0.0.1:1",
        ] {
            assert!(bad.parse::<StaticFunction>().is_err(), "{bad}");
        }
    }
}
