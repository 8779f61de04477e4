//! The operator's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, and
//! `POST /v1/stats`, where activators deliver their reports. Every replica
//! serves all of them, leader or not: activators send each report to every
//! replica, so a follower that takes over already knows the traffic.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use prometheus::{Encoder, Registry, TextEncoder};
use thaw_core::{ActivatorReport, Autoscaler, Clock};
use tokio::net::TcpListener;

use crate::wake::Wakeups;
use tracing::{debug, warn};

/// Largest stats report accepted; a report is a few hundred bytes per function.
const MAX_REPORT_BYTES: usize = 4 << 20;

/// What the endpoint serves from.
#[derive(Clone)]
pub struct HttpState {
    pub registry: Registry,
    pub autoscaler: Arc<Mutex<Autoscaler>>,
    pub clock: Arc<dyn Clock>,
    /// Functions to reconcile now because their stats changed.
    pub wake: Wakeups,
    /// Set once the operator is serving (caches synced or following).
    pub ready: Arc<AtomicBool>,
}

type Body = Full<Bytes>;

/// Binds the endpoint's address, so a taken port fails the start at once.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))
}

/// Serves until `shutdown` completes, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                let service = service_fn(move |req| handle(req, state.clone()));
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        debug!(%error, "connection ended");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    graceful.shutdown().await;
    Ok(())
}

async fn handle(req: Request<Incoming>, state: HttpState) -> Result<Response<Body>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") if state.ready.load(Ordering::Relaxed) => {
            text(StatusCode::OK, "ok")
        }
        (&Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "starting"),
        (&Method::GET, "/metrics") => metrics(&state.registry),
        (&Method::POST, "/v1/stats") => stats(req, &state).await,
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
}

fn metrics(registry: &Registry) -> Response<Body> {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        Ok(()) => Response::builder()
            .header("content-type", TextEncoder::new().format_type())
            .body(Full::new(Bytes::from(buffer)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed")),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

async fn stats(req: Request<Incoming>, state: &HttpState) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_REPORT_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("reading report: {error}"),
            );
        }
    };
    let report: ActivatorReport = match serde_json::from_slice(&body) {
        Ok(report) => report,
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("malformed report: {error}"),
            );
        }
    };
    let now = state.clock.now();
    let ingested = state
        .autoscaler
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .ingest(report, now);
    match ingested {
        Ok(ingested) => {
            // `functions` includes the poked ones; the controller
            // reconciles each at once either way.
            for key in ingested.functions {
                state.wake.wake(key);
            }
            text(StatusCode::NO_CONTENT, "")
        }
        Err(error) => {
            warn!(%error, "rejected stats report");
            text(StatusCode::BAD_REQUEST, &error.to_string())
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}
