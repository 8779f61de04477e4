//! The admin HTTP server of `thaw operator` and `thaw activator`: `/healthz`,
//! `/readyz`, `/metrics`, and any further routes a component adds (the
//! operator's `POST /v1/stats`), behind limits no client can get around:
//!
//! - a connection must send each request's headers within
//!   [`Limits::header_read_timeout`] (counted from when the server starts
//!   waiting for them, so idle keep-alive connections close too);
//! - a body must arrive whole within [`Limits::body_timeout`] and stay under
//!   [`Limits::max_body_bytes`] ([`read_body`]);
//! - at most [`Limits::max_connections`] connections are open, and at most
//!   [`Limits::max_connections_per_ip`] from one address, so one host
//!   cannot take every slot from the others (activators are one pod, one
//!   address each); beyond that a new connection is closed at once (the
//!   accept loop never stalls);
//! - accept errors (e.g. out of file descriptors) back off from 5 ms to 1 s
//!   instead of spinning;
//! - on shutdown, listening stops and open requests finish.
//!
//! HTTP/1.1 only: Prometheus and the activators' reports use it, and
//! HTTP/1's header deadline is what keeps slow clients out.

pub mod token;

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header::HeaderValue,
    server::conn::http1, service::service_fn,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

/// The response body every route answers with.
pub type Body = Full<Bytes>;

/// What hostile or broken clients are held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_body_bytes: 1 << 20,
            max_connections: 1024,
            max_connections_per_ip: 32,
        }
    }
}

/// A component's own routes: called for every request that is not
/// `GET /healthz`, `/readyz` or `/metrics`; `None` means 404.
pub type Routes =
    Arc<dyn Fn(Request<Incoming>) -> Option<BoxFuture<'static, Response<Body>>> + Send + Sync>;

/// What the server serves from.
#[derive(Clone)]
pub struct Admin {
    pub registry: Registry,
    /// `/readyz` answers 200 while this says so.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    pub limits: Limits,
    pub routes: Option<Routes>,
}

/// The server's own metrics, registered in the component's registry.
#[derive(Clone)]
struct ServeMetrics {
    open: IntGauge,
    refused: IntCounterVec,
}

impl ServeMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let open = IntGauge::new(
            "thaw_admin_connections",
            "Open connections on the admin (and stats) endpoint.",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "thaw_admin_connections_refused_total",
                "Connections the admin (and stats) endpoint closed at once, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        refused.with_label_values(&["limit"]);
        refused.with_label_values(&["per_ip_limit"]);
        Ok(Self { open, refused })
    }
}

/// Serves `admin` on `listener` until `shutdown` completes, then lets open
/// requests finish. Fails only if its metrics cannot be registered.
pub async fn serve(
    listener: TcpListener,
    admin: Admin,
    shutdown: impl Future<Output = ()>,
) -> prometheus::Result<()> {
    let metrics = ServeMetrics::new(&admin.registry)?;
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(admin.limits.max_connections));
    let peers: Peers = Arc::default();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(admin.limits.header_read_timeout)
        .max_buf_size(64 << 10);
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                accepted
            }
            Err(error) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                warn!(%error, ?backoff, "accepting a connection");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Some(per_ip) = PeerSlot::take(&peers, peer.ip(), admin.limits.max_connections_per_ip)
        else {
            metrics.refused.with_label_values(&["per_ip_limit"]).inc();
            drop(stream);
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.refused.with_label_values(&["limit"]).inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let admin = admin.clone();
        let service = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(handle(req, &admin).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let open = metrics.open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(%error, "admin connection ended");
            }
            open.dec();
            drop((permit, per_ip));
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Open connections per peer address.
type Peers = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One connection's share of its peer's limit, given back when dropped.
struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(peers: &Peers, ip: IpAddr, max: usize) -> Option<Self> {
        let mut open = peers.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Self {
            peers: peers.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

async fn handle(req: Request<Incoming>, admin: &Admin) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") if (admin.ready)() => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
        (&Method::GET, "/metrics") => metrics(&admin.registry),
        _ => match admin.routes.as_ref().and_then(|routes| routes(req)) {
            Some(response) => response.await,
            None => text(StatusCode::NOT_FOUND, "not found"),
        },
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    TooSlow,
    Broken(String),
}

impl BodyError {
    /// 413, 408 or 400, with a message saying why.
    pub fn response(&self, limits: &Limits) -> Response<Body> {
        match self {
            Self::TooLarge => text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {} bytes", limits.max_body_bytes),
            ),
            Self::TooSlow => text(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the body did not arrive within {:?}", limits.body_timeout),
            ),
            Self::Broken(error) => text(
                StatusCode::BAD_REQUEST,
                &format!("reading the body: {error}"),
            ),
        }
    }
}

/// The whole body of `req`, within `limits`' size and deadline.
pub async fn read_body(body: Incoming, limits: &Limits) -> Result<Bytes, BodyError> {
    let collect = Limited::new(body, limits.max_body_bytes).collect();
    match tokio::time::timeout(limits.body_timeout, collect).await {
        Err(_) => Err(BodyError::TooSlow),
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(BodyError::TooLarge)
        }
        Ok(Err(error)) => Err(BodyError::Broken(error.to_string())),
    }
}

/// The Prometheus text of `registry`.
pub fn metrics(registry: &Registry) -> Response<Body> {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    match encoder.encode(&registry.gather(), &mut buffer) {
        Ok(()) => {
            let mut response = Response::new(Full::new(Bytes::from(buffer)));
            if let Ok(value) = HeaderValue::from_str(encoder.format_type()) {
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, value);
            }
            response
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}
