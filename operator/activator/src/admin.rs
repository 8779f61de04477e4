//! The admin endpoint: `/metrics`, `/healthz`, `/readyz`, served by
//! [`thaw_serve`] (the operator's too). Kept off the proxy's address so no
//! function path can shadow it.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use prometheus::Registry;
use thaw_serve::{Admin, Limits};
use tokio::net::TcpListener;
use tracing::warn;

/// What the admin endpoint serves from.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Registry,
    /// The watch caches synced.
    pub synced: Arc<AtomicBool>,
    /// Shutting down.
    pub stopping: Arc<AtomicBool>,
}

/// Serves until `shutdown` completes. Ready while synced and not stopping.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    let admin = Admin {
        registry: state.registry.clone(),
        ready: Arc::new(move || {
            state.synced.load(Ordering::Acquire) && !state.stopping.load(Ordering::Acquire)
        }),
        limits: Limits::default(),
        routes: None,
    };
    if let Err(error) = thaw_serve::serve(listener, admin, shutdown).await {
        warn!(%error, "the admin endpoint could not start");
    }
}
