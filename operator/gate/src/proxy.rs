//! The request port: every request waits for a [`Slot`], goes to the
//! function over a keep-alive pool on loopback, and holds the slot until its
//! response body has ended.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderValue, Request, Response, StatusCode, Uri,
    header::{CONTENT_TYPE, RETRY_AFTER},
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::oneshot};
use tracing::{debug, warn};

use crate::{Limiter, Refused, Slot, hop::strip_hop_by_hop};

/// Response header: how long the gate held the request for a slot, when it
/// had to (another activator's request had the instance's last slot).
pub const THAW_GATE_WAIT: &str = "thaw-gate-wait";

/// Response header on the gate's own refusals; `exhausted` says the
/// instance has admitted its `maxRequestsPerInstance` requests and takes no
/// more: the activator places the request elsewhere.
pub const THAW_GATE: &str = "thaw-gate";
/// [`THAW_GATE`]'s value on an exhausted instance's refusal.
pub const EXHAUSTED: &str = "exhausted";

type GateBody = UnsyncBoxBody<Bytes, hyper::Error>;

pub struct Proxy {
    limiter: Arc<Limiter>,
    client: Client<HttpConnector, Incoming>,
    /// `127.0.0.1:<upstream port>`, made once.
    upstream: Authority,
    header_read_timeout: Duration,
    /// Longest the function may take to answer (its Function's timeout):
    /// past it nobody waits for the answer any more, and the slot is freed.
    upstream_timeout: Duration,
}

impl Proxy {
    pub fn new(
        limiter: Arc<Limiter>,
        upstream_port: u16,
        header_read_timeout: Duration,
        upstream_timeout: Duration,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        let upstream = Authority::try_from(format!("127.0.0.1:{upstream_port}"))
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        Arc::new(Self {
            limiter,
            client,
            upstream,
            header_read_timeout,
            upstream_timeout,
        })
    }

    /// Serves until `shutdown` resolves; then accepts nothing new, lets
    /// every request in flight finish and closes idle connections.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        warn!(%error, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let service = service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .header_read_timeout(self.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    debug!(%error, "connection ended");
                }
            });
        }
        drop(listener);
        graceful.shutdown().await;
    }

    async fn handle(&self, mut req: Request<Incoming>) -> Response<GateBody> {
        let slot = match self.limiter.admit().await {
            Ok(slot) => slot,
            Err(Refused::Full) => return refusal("instance busy: too many requests held"),
            Err(Refused::Timeout) => return refusal("instance busy: no slot freed in time"),
            // Before the body is read: the activator still has it to send
            // elsewhere.
            Err(Refused::Exhausted) => {
                let mut response =
                    refusal("instance exhausted: it has served its maxRequestsPerInstance");
                response
                    .headers_mut()
                    .insert(THAW_GATE, HeaderValue::from_static(EXHAUSTED));
                return response;
            }
        };
        let mut target = http::uri::Parts::default();
        target.scheme = Some(Scheme::HTTP);
        target.authority = Some(self.upstream.clone());
        target.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        match Uri::from_parts(target) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return error(StatusCode::BAD_REQUEST, "bad request target"),
        }
        strip_hop_by_hop(req.headers_mut());
        let waited = slot.waited;
        // The function's request runs in its own task, which owns the slot
        // until the function answered: if the activator goes away meanwhile
        // (it crashed, or gave up), the function is still working on the
        // request, so its slot must not pass to the next one yet.
        let (answered, answer) = oneshot::channel();
        let (client, limit) = (self.client.clone(), self.upstream_timeout);
        tokio::spawn(async move {
            let response = tokio::time::timeout(limit, client.request(req)).await;
            // With nobody left to take it, response and slot drop here.
            let _ = answered.send((response, slot));
        });
        let Ok((response, slot)) = answer.await else {
            return error(StatusCode::BAD_GATEWAY, "the function did not answer");
        };
        match response {
            Err(_) => error(
                StatusCode::GATEWAY_TIMEOUT,
                "the function did not answer in time",
            ),
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // Only the gate's own refusals say `thaw-gate`: a function
                // answering `thaw-gate: exhausted` must not make the
                // activator run its request again elsewhere.
                parts.headers.remove(THAW_GATE);
                if !waited.is_zero()
                    && let Ok(value) = HeaderValue::from_str(&format!("{}ms", waited.as_millis()))
                {
                    parts.headers.insert(THAW_GATE_WAIT, value);
                }
                Response::from_parts(parts, SlotBody::new(body, slot).boxed_unsync())
            }
            Ok(Err(err)) => {
                debug!(error = %err, "forwarding to the function");
                error(StatusCode::BAD_GATEWAY, "the function did not answer")
            }
        }
    }
}

fn refusal(message: &str) -> Response<GateBody> {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn error(status: StatusCode, message: &str) -> Response<GateBody> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The function's response body; the slot goes back when it ends or is
/// dropped (the client left).
struct SlotBody {
    inner: Incoming,
    slot: Option<Slot>,
}

impl SlotBody {
    fn new(inner: Incoming, slot: Slot) -> Self {
        let slot = (!inner.is_end_stream()).then_some(slot);
        Self { inner, slot }
    }
}

impl Body for SlotBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
