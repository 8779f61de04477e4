//! The admin port: `GET /v1/state` for the operator, `GET /ready` for
//! kubelet (the function answers its readiness check), `GET /healthz`.
//! Read-only: nothing here changes what the gate does.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};
use tracing::warn;

use crate::{GATE_STATE_PATH, Limiter, Upstream};

/// Admin requests are tiny; a client slower than this is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin port until the process ends. After shutdown began,
/// `/ready` answers 503 so kubelet takes the pod out of endpoints.
pub async fn serve(
    listener: TcpListener,
    limiter: Arc<Limiter>,
    upstream: Upstream,
    stopping: watch::Receiver<bool>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "accepting an admin connection");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let (limiter, upstream, stopping) = (limiter.clone(), upstream.clone(), stopping.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (limiter, upstream, stopping) =
                    (limiter.clone(), upstream.clone(), stopping.clone());
                async move { Ok::<_, Infallible>(answer(req, &limiter, &upstream, &stopping).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    limiter: &Limiter,
    upstream: &Upstream,
    stopping: &watch::Receiver<bool>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        GATE_STATE_PATH => match serde_json::to_vec(&limiter.state()) {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "state did not encode\n"),
        },
        "/ready" if *stopping.borrow() => text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
        "/ready" if upstream.is_ready().await => text(StatusCode::OK, "ok\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "function not ready\n"),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
