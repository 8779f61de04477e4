//! The operator's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, and
//! `POST /v1/stats`, where activators deliver their reports. Every replica
//! serves all of them, leader or not: activators send each report to every
//! replica, so a follower that takes over already knows the traffic.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::FutureExt as _;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use prometheus::{IntCounterVec, Registry};
use thaw_core::{ActivatorReport, Autoscaler, Clock};
use thaw_serve::{Admin, Body, Limits, read_body, text};
use tokio::net::TcpListener;

use crate::wake::Wakeups;
use tracing::{debug, warn};

use crate::{
    auth::{Authenticator, Rejection},
    known::Known,
};

/// Largest stats report body accepted as sent (gzip-compressed, normally).
pub const MAX_REPORT_BYTES: usize = 8 << 20;
/// Largest report once decompressed: a report is about 100 bytes per
/// Function plus 50 per instance, so this holds hundreds of thousands of
/// instances; only a compression bomb comes near it.
pub const MAX_DECODED_REPORT_BYTES: u64 = 64 << 20;

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
    /// Who may report; `None` only with `--allow-unauthenticated-stats`.
    pub auth: Option<Arc<Authenticator>>,
    /// `thaw_stats_rejected_total{reason}`.
    pub rejected: IntCounterVec,
    /// What reports are checked against before they are merged.
    pub known: Known,
}

/// What clients of the endpoint are held to: headers within 5 s (an idle
/// keep-alive connection closes then too; activators report every second),
/// a report within 10 s, at most 1024 connections and 32 per address (an
/// activator needs one or two).
pub const LIMITS: Limits = Limits {
    header_read_timeout: Duration::from_secs(5),
    body_timeout: Duration::from_secs(10),
    max_body_bytes: MAX_REPORT_BYTES,
    max_connections: 1024,
    max_connections_per_ip: 32,
};

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
    let admin = Admin {
        registry: state.registry.clone(),
        ready: {
            let ready = state.ready.clone();
            Arc::new(move || ready.load(Ordering::Relaxed))
        },
        limits: LIMITS,
        routes: Some(Arc::new(move |req: Request<Incoming>| {
            let state = state.clone();
            (req.method() == Method::POST && req.uri().path() == "/v1/stats")
                .then(|| async move { stats(req, &state).await }.boxed())
        })),
    };
    thaw_serve::serve(listener, admin, shutdown).await?;
    Ok(())
}

async fn stats(req: Request<Incoming>, state: &HttpState) -> Response<Body> {
    // The report's idle times count back from its arrival, not from when it
    // was verified and read: a TokenReview or a slow body must not make its
    // instances look active later than they were.
    let now = state.clock.now();
    // Who is sending, before a byte of the body is read.
    let identity = match &state.auth {
        Some(auth) => match auth
            .authenticate(req.headers(), now, SystemTime::now())
            .await
        {
            Ok(identity) => Some(identity),
            Err(rejection) => return reject(state, &rejection),
        },
        None => None,
    };
    let body = match read_report(req).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut report: ActivatorReport = match serde_json::from_slice(&body) {
        Ok(report) => report,
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("malformed report: {error}"),
            );
        }
    };
    if let Some(Err(rejection)) = identity.map(|i| i.check_activator(&report.activator)) {
        return reject(state, &rejection);
    }
    state.known.vet(&mut report);
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

/// The report's JSON: the body, gunzipped when `Content-Encoding: gzip`,
/// each size bounded on its own.
async fn read_report(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let encoding = req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
    let body = read_body(req.into_body(), &LIMITS)
        .await
        .map_err(|error| error.response(&LIMITS))?;
    match encoding.as_deref() {
        None | Some("identity") => Ok(body),
        Some("gzip") => gunzip(&body, MAX_DECODED_REPORT_BYTES)
            .map_err(|(status, message)| text(status, &message)),
        Some(other) => Err(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("content-encoding {other:?} is not supported: send gzip or nothing"),
        )),
    }
}

/// Decompresses `body`, refusing to produce more than `limit` bytes.
pub fn gunzip(body: &[u8], limit: u64) -> Result<Bytes, (StatusCode, String)> {
    use std::io::Read as _;
    let mut decoded = Vec::with_capacity(body.len().saturating_mul(8).min(1 << 20));
    flate2::read::GzDecoder::new(body)
        .take(limit + 1)
        .read_to_end(&mut decoded)
        .map_err(|error| {
            (
                StatusCode::BAD_REQUEST,
                format!("malformed gzip report: {error}"),
            )
        })?;
    if decoded.len() as u64 > limit {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the report decompresses to more than {limit} bytes"),
        ));
    }
    Ok(Bytes::from(decoded))
}

/// Refuses a report without touching any state, and counts it.
fn reject(state: &HttpState, rejection: &Rejection) -> Response<Body> {
    state.rejected.with_label_values(&[rejection.label()]).inc();
    debug!(%rejection, "refused a stats report");
    let mut response = text(rejection.status(), &rejection.to_string());
    if rejection.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            "www-authenticate",
            hyper::header::HeaderValue::from_static("Bearer"),
        );
    }
    if rejection.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use thaw_core::{FunctionReport, InstanceReport};

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// 2,000 Functions with 100 instances each: a report larger than the
    /// body limit as JSON, far below it compressed, read back whole.
    #[test]
    fn a_large_legitimate_report_is_never_refused() {
        let mut report = ActivatorReport::new("thaw-activator-7d9f8-abcde", 7, 42, 1000);
        for f in 0..2000 {
            let mut function = FunctionReport::new(format!("team-{}", f % 50), format!("fn-{f}"));
            function.concurrency = 1.5;
            function.requests = 10;
            function.instances = (0..100)
                .map(|i| InstanceReport::idle(format!("fn-{f}-{i:05x}"), 1234))
                .collect();
            report.functions.push(function);
        }
        let json = serde_json::to_vec(&report).unwrap();
        assert!(json.len() > MAX_REPORT_BYTES, "{} bytes", json.len());
        let body = gzip(&json);
        assert!(
            body.len() < MAX_REPORT_BYTES / 4,
            "{} bytes compressed",
            body.len()
        );
        let decoded = gunzip(&body, MAX_DECODED_REPORT_BYTES).unwrap();
        let back: ActivatorReport = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn a_compression_bomb_is_refused_at_the_decoded_limit() {
        let body = gzip(&vec![b' '; 10 << 20]);
        let (status, message) = gunzip(&body, 1 << 20).unwrap_err();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(message.contains("decompresses to more than"), "{message}");
        let (status, _) = gunzip(b"not gzip", 1 << 20).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
