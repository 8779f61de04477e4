//! The gate: a small proxy in front of the function inside every instance
//! pod (a native sidecar container, `thaw gate`).
//!
//! Activators place requests by what *they* have in flight; with several
//! activator replicas, two may pick the same instance at the same moment.
//! The gate is where the hard limit holds whatever the activators know: it
//! lets at most `concurrency` requests reach the function and holds the rest
//! in a FIFO until a slot frees (Knative's queue-proxy does the same). It
//! also keeps the instance's own idle clock and request count, which survive
//! any activator restart, and serves them read-only for the operator, which
//! checks them before it drains or deletes an instance.

pub mod admin;
pub mod hop;
pub mod limiter;
pub mod ports;
pub mod proxy;
pub mod state;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing::info;

pub use limiter::{Limiter, Refused, Slot};
pub use ports::GatePorts;
pub use proxy::{EXHAUSTED, THAW_GATE};
pub use state::{GATE_STATE_PATH, GateState};
pub use upstream::Upstream;

/// The gate waits for the function this much longer than the Function's
/// timeout: the activator cuts the request at the timeout and answers the
/// client itself, and the gate must not race it with an answer of its own;
/// past it, nobody waits and the slot is freed.
const UPSTREAM_MARGIN: Duration = Duration::from_secs(5);

/// How one gate runs.
#[derive(Clone, Debug)]
pub struct GateOptions {
    /// Where activators send requests.
    pub listen: SocketAddr,
    /// Where the operator and kubelet ask for state and readiness.
    pub admin_listen: SocketAddr,
    /// The function, on loopback inside the pod.
    pub upstream: Upstream,
    /// Hard limit of requests on the function at once; 0 = unlimited.
    pub concurrency: u32,
    /// Most requests admitted in the instance's life
    /// (`maxRequestsPerInstance`); 0 = unlimited.
    pub max_requests: u32,
    /// Most requests held for a slot; more get 503.
    pub max_waiting: u32,
    /// Longest a request is held for a slot (the Function's timeout: the
    /// activator gives up by then anyway).
    pub max_hold: Duration,
    /// Longest a client may take to send request headers.
    pub header_read_timeout: Duration,
}

/// Runs the gate until `shutdown` resolves, then stops accepting and waits
/// for every request in flight to finish.
pub async fn run(
    options: GateOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limiter = Arc::new(Limiter::with_max_requests(
        options.concurrency,
        options.max_requests,
        options.max_waiting,
        options.max_hold,
    ));
    let admin = TcpListener::bind(options.admin_listen)
        .await
        .with_context(|| format!("binding the gate's admin port {}", options.admin_listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = tokio::spawn(admin::serve(
        admin,
        limiter.clone(),
        options.upstream.clone(),
        stop_rx.clone(),
    ));
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    tokio::pin!(shutdown);

    // Accept requests only once the function listens, so a TCP connect to
    // the gate's port means the instance can serve (the activator probes it).
    let ready = async {
        options.upstream.wait_ready().await;
    };
    tokio::select! {
        () = ready => {}
        () = &mut shutdown => {
            admin_task.abort();
            return Ok(());
        }
    }
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding the gate's port {}", options.listen))?;
    info!(listen = %options.listen, concurrency = options.concurrency, "function ready: gate open");
    let proxy = proxy::Proxy::new(
        limiter,
        options.upstream.port(),
        options.header_read_timeout,
        options.max_hold + UPSTREAM_MARGIN,
    );
    proxy.serve(listener, shutdown).await;
    admin_task.abort();
    Ok(())
}
