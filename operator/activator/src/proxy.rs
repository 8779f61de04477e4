//! The proxy: the HTTP server clients talk to (HTTP/1.1 and h2c), and the
//! path of one request: route, admit (place or queue), forward with a
//! streaming body over a keep-alive pool to the instance, stream the answer
//! back.
//!
//! Every answer the activator gives itself is a small JSON object
//! `{"error": "...", ...}` with a status that says whose fault it is: 400,
//! 404, 408, 413 for the client; 502, 503, 504 for the function.

use std::{
    cell::Cell,
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::{
    HeaderValue, Request, Response, StatusCode, Uri, Version,
    header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER},
    uri::{Authority, PathAndQuery, Scheme},
};
use hyper::{
    body::{Body, Incoming},
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use serde_json::{Value, json};
use thaw_core::GoStyle;
use tokio::{
    net::{TcpListener, TcpSocket},
    time::{Instant, timeout_at},
};
use tracing::{debug, warn};

use crate::{
    body::{GiveBack, RequestBody, RequestBodyError, ResponseBody, request_body_error},
    conn, fresh,
    headers::{ClientAddress, THAW_COLD_START, forward_request, forward_response},
    metrics::Metrics,
    overload::ConnectionLimit,
    registry::{Admission, Entry, Lease, Registry},
    route::{HostCache, Route, Router},
    upstream::{self, Checkout, Pool, SendError, Upstreams},
};

/// Attempts to connect to an instance per request before it gets 502.
const MAX_CONNECT_ATTEMPTS: u32 = 5;

/// hyper's default (and fixed-array) limit on request headers.
const HYPER_MAX_HEADERS: usize = 100;

/// Connections waiting to be accepted, per worker.
const LISTEN_BACKLOG: u32 = 1024;

/// The shared keep-alive pool to instances (one per worker).
fn pool(options: &ProxyOptions) -> Pool {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(options.connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(options.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// How the proxy treats clients and instances.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Domain of Function URLs: `<name>.<namespace>.<domain>`.
    pub domain: String,
    /// Largest request body; larger ones get 413 (or are cut when streamed).
    pub max_body_bytes: u64,
    /// Longest a client may take to send a request's headers, from their
    /// first byte.
    pub header_read_timeout: Duration,
    /// A client connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Longest a client may pause while sending a request body.
    pub body_idle_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Longest a TCP connect to an instance may take.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections to instances are closed after this.
    pub pool_idle_timeout: Duration,
    /// Most open client connections; one more gets 503 and is closed.
    pub max_connections: usize,
    /// Most requests waiting for an instance across every function; one
    /// more gets 503 with Retry-After.
    pub max_queued: usize,
    /// Threads serving clients, each with its own listener and instance
    /// pool; 0 means one per available core.
    pub workers: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            domain: "svc.cluster.local".into(),
            max_body_bytes: 10 << 20,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            body_idle_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            max_headers: 100,
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(30),
            max_connections: 20_000,
            max_queued: 10_000,
            workers: 0,
        }
    }
}

/// The request path, shared by every connection.
pub struct Proxy {
    router: Router,
    registry: Arc<Registry>,
    client: Pool,
    options: ProxyOptions,
    /// The watch caches are complete: a function missing from them really
    /// does not exist.
    synced: Arc<AtomicBool>,
    /// Shutdown has begun: every HTTP/1.1 answer says `Connection: close`,
    /// so keep-alive clients move to another replica while this one still
    /// serves.
    closing: Arc<AtomicBool>,
    /// Open client connections, across every worker.
    connections: ConnectionLimit,
    metrics: Metrics,
}

/// What one client connection keeps across its requests; made when it is
/// accepted, dropped when it closes.
struct ClientConnection {
    /// Its address as the forwarding headers write it.
    address: ClientAddress,
    /// The function its last Host named.
    hosts: HostCache,
    /// Its own instance connections.
    upstreams: Upstreams,
}

impl ClientConnection {
    fn new(ip: IpAddr) -> Self {
        Self {
            address: ClientAddress::new(ip),
            hosts: HostCache::default(),
            upstreams: Upstreams::new(),
        }
    }
}

/// An answer already decided (an error, usually).
type Answer = Response<ResponseBody>;

/// How a request travels once placed: on which connections, and its times.
#[derive(Clone, Copy)]
struct Path<'a> {
    via: Option<&'a Upstreams>,
    arrival: Instant,
    deadline: Instant,
}

impl Proxy {
    pub fn new(
        registry: Arc<Registry>,
        options: ProxyOptions,
        synced: Arc<AtomicBool>,
    ) -> Arc<Self> {
        let metrics = registry.shared().metrics.clone();
        registry.shared().queue.set_max(options.max_queued);
        Arc::new(Self {
            router: Router::new(&options.domain),
            registry,
            client: pool(&options),
            connections: ConnectionLimit::new(options.max_connections),
            options,
            synced,
            closing: Arc::new(AtomicBool::new(false)),
            metrics,
        })
    }

    /// Another worker's proxy: everything shared but the instance pool,
    /// whose connections live on the worker's own runtime.
    fn sibling(&self) -> Arc<Self> {
        Arc::new(Self {
            router: Router::new(&self.options.domain),
            registry: self.registry.clone(),
            client: pool(&self.options),
            connections: self.connections.clone(),
            options: self.options.clone(),
            synced: self.synced.clone(),
            closing: self.closing.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// The listeners for [`Self::serve_workers`]: one listening socket on
    /// `addr`, shared by every worker (see [`ProxyOptions::workers`]), each
    /// accepting from it through its own descriptor. Not `SO_REUSEPORT`:
    /// that would let any other process of the same user bind the port too
    /// and silently take a share of its connections. Call it inside a tokio
    /// runtime.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<Vec<std::net::TcpListener>> {
        let workers = match self.options.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // Registered with each worker's runtime once there.
        let listener = socket.listen(LISTEN_BACKLOG)?.into_std()?;
        let mut listeners = Vec::with_capacity(workers);
        for _ in 1..workers {
            listeners.push(listener.try_clone()?);
        }
        listeners.push(listener);
        Ok(listeners)
    }

    /// Serves on `sockets` (from [`Self::bind`]), each on a thread of its
    /// own with a current-thread runtime (whichever worker is free first
    /// accepts a new connection), until `shutdown` completes; then
    /// every worker stops accepting and finishes its open requests. A
    /// request stays on the thread that accepted its connection, from the
    /// client to the instance and back (docs/benchmarks.md).
    pub async fn serve_workers(
        self: Arc<Self>,
        sockets: Vec<std::net::TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut finished = Vec::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let proxy = if index == 0 {
                self.clone()
            } else {
                self.sibling()
            };
            let mut stop = stop_rx.clone();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("thaw-proxy-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let listener = match TcpListener::from_std(socket) {
                            Ok(listener) => listener,
                            Err(error) => {
                                warn!(%error, worker = index, "listening");
                                return;
                            }
                        };
                        let stopped = async move {
                            let _ = stop.wait_for(|stop| *stop).await;
                        };
                        proxy.serve(listener, stopped).await;
                    });
                    drop(done_tx);
                })?;
            finished.push(done_rx);
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        for done in finished {
            // Dropped when the worker is done (or panicked).
            let _ = done.await;
        }
        Ok(())
    }

    /// Starts closing keep-alive connections: each one's next answer carries
    /// `Connection: close`. Requests are still served.
    pub fn close_connections(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Serves `listener` until `shutdown` completes, then stops accepting
    /// and waits for every open request to finish.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            // hyper's header timer runs from when it waits for a request
            // (an idle timeout, really) and costs a timer per request;
            // conn::Handle::watch times heads and idle connections instead.
            .header_read_timeout(None)
            .max_buf_size(self.options.max_header_bytes.max(8192));
        // hyper's own limit is 100 headers, parsed into stack arrays; a limit
        // set explicitly costs a heap vector of that size per request.
        if self.options.max_headers != HYPER_MAX_HEADERS {
            builder.http1().max_headers(self.options.max_headers);
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.options.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .max_pending_accept_reset_streams(64)
            .keep_alive_interval(Duration::from_secs(30));
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        let connections = &self.connections;
        let timeout_body = Arc::new(error_bytes(&json!({
            "error": format!(
                "the request headers did not arrive within {}",
                GoStyle(self.options.header_read_timeout)
            )
        })));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Typically out of file descriptors: back off.
                        warn!(%error, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let Some(permit) = connections.try_acquire() else {
                self.metrics.connections_refused.inc();
                let connections = connections.clone();
                tokio::spawn(async move { connections.refuse(stream).await });
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (io, handle) = conn::track(stream);
            let proxy = self.clone();
            let head_done = handle.head_done();
            let client = Arc::new(ClientConnection::new(peer.ip()));
            let upstreams = client.upstreams.clone();
            let service = service_fn(move |req| {
                let serving = head_done.mark();
                let proxy = proxy.clone();
                let client = client.clone();
                async move {
                    let http1 = req.version() <= Version::HTTP_11;
                    let mut response = proxy.clone().handle(req, &client).await;
                    if http1 && proxy.closing.load(Ordering::Acquire) {
                        response
                            .headers_mut()
                            .insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                    response.body_mut().hold(serving);
                    Ok::<_, Infallible>(response)
                }
            });
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let timeout_body = timeout_body.clone();
            let (head_timeout, idle_timeout) =
                (self.options.header_read_timeout, self.options.idle_timeout);
            tokio::spawn(async move {
                let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
                // The connection future is dropped before the 408 is written,
                // so the socket is the accept loop's alone then.
                let ended = tokio::select! {
                    result = conn => Ok(result),
                    expired = handle.watch(head_timeout, idle_timeout) => Err(expired),
                    never = upstreams.drive() => match never {},
                };
                match ended {
                    Err(conn::Expired::Head) => handle.header_timeout(&timeout_body).await,
                    Err(conn::Expired::Idle) => debug!(%peer, "idle client connection closed"),
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => debug!(%error, %peer, "client connection ended"),
                }
                // The connection is closed: its place is free.
                drop(permit);
            });
        }
        drop(listener);
        graceful.shutdown().await;
    }

    /// One request of `client`'s, from arrival to the response head (the
    /// body streams on).
    async fn handle(self: Arc<Self>, req: Request<Incoming>, client: &ClientConnection) -> Answer {
        let arrival = Instant::now();
        // Its own instance connections when it may use them
        // (crate::upstream), the shared pool otherwise.
        let via = client
            .upstreams
            .affine(req.version() <= Version::HTTP_11)
            .then_some(&client.upstreams);
        let host = match host_of(&req) {
            Ok(host) => host,
            Err(message) => {
                return self.unrouted(StatusCode::BAD_REQUEST, json!({"error": message}));
            }
        };
        // The router asks whether a Host-named function exists; keep the
        // entry it found, so the registry is searched once.
        let found: Cell<Option<Arc<Entry>>> = Cell::new(None);
        let route =
            match self
                .router
                .route_cached(&client.hosts, host.as_deref(), req.uri(), |ns, name| {
                    let entry = self.registry.get(ns, name).filter(|e| e.exists());
                    let exists = entry.is_some();
                    found.set(entry);
                    exists
                }) {
                Ok(route) => route,
                Err(error) => {
                    return self
                        .unrouted(StatusCode::BAD_REQUEST, json!({"error": error.to_string()}));
                }
            };
        if !self.synced.load(Ordering::Acquire) {
            return self.unrouted(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "error": "the activator is starting: it has not yet read every Function",
                    "function": route.function(),
                }),
            );
        }
        let entry = match found.take() {
            Some(entry) if entry.namespace == route.namespace && entry.name == route.name => {
                Some(entry)
            }
            _ => self.registry.get(&route.namespace, &route.name),
        };
        let Some(entry) = entry else {
            return self.not_found(&route);
        };
        if let Some(length) = content_length(&req)
            && length > self.options.max_body_bytes
        {
            return answer(
                &entry,
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({
                    "error": format!(
                        "the request body of {length} bytes is larger than the limit of {} bytes",
                        self.options.max_body_bytes
                    ),
                    "function": route.function(),
                }),
            );
        }
        let (admission, timing) = entry.admit();
        let deadline = arrival + timing.timeout;
        let wait_until = (arrival + timing.max_wait).min(deadline);
        let acquired = match admission {
            Admission::Placed(lease) => Ok((lease, None)),
            // Waiting and refusals are off the hot path: their state is
            // boxed rather than making every request's future larger (it
            // is written, and moved, once per request).
            other => {
                Box::pin(self.acquire(&entry, other, arrival, wait_until, deadline, &route)).await
            }
        };
        let (lease, waited) = match acquired {
            Ok(acquired) => acquired,
            Err(answer) => return answer,
        };
        let path = Path {
            via,
            arrival,
            deadline,
        };
        self.forward(
            entry,
            route,
            req,
            host,
            &client.address,
            lease,
            waited,
            path,
        )
        .await
    }

    /// A slot for the request: at once, or after waiting in the queue.
    async fn acquire(
        &self,
        entry: &Arc<Entry>,
        admission: Admission,
        arrival: Instant,
        wait_until: Instant,
        deadline: Instant,
        route: &Route,
    ) -> Result<(Lease, Option<Duration>), Answer> {
        let function = || route.function();
        match admission {
            Admission::Placed(lease) => Ok((lease, None)),
            Admission::Waiting(mut waiter) => {
                let result = timeout_at(wait_until, waiter.wait()).await;
                let waited = arrival.elapsed();
                entry.metrics().queue_wait.observe(waited.as_secs_f64());
                match result {
                    Ok(Ok(lease)) => Ok((lease, Some(waited))),
                    Ok(Err(_gone)) => Err(self.not_found(route)),
                    Err(_) if wait_until < deadline => {
                        let max_wait = entry.config().map(|c| c.max_wait).unwrap_or_default();
                        let mut answer = answer(
                            entry,
                            StatusCode::SERVICE_UNAVAILABLE,
                            json!({
                                "error": format!(
                                    "no instance became ready within {}",
                                    GoStyle(max_wait)
                                ),
                                "function": function(),
                                "maxWait": GoStyle(max_wait).to_string(),
                            }),
                        );
                        answer
                            .headers_mut()
                            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                        Err(answer)
                    }
                    Err(_) => Err(self.timed_out(entry, route)),
                }
            }
            Admission::Full { max_pending } => {
                let mut answer = answer(
                    entry,
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({
                        "error": "queue full",
                        "function": function(),
                        "maxPending": max_pending,
                        "message": format!(
                            "{max_pending} requests are already waiting for an instance of {}; retry later",
                            function()
                        ),
                    }),
                );
                answer
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                Err(answer)
            }
            Admission::Overloaded { max_queued } => {
                let mut answer = answer(
                    entry,
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({
                        "error": "activator queue full",
                        "function": function(),
                        "maxQueued": max_queued,
                        "message": format!(
                            "this activator already holds {max_queued} waiting requests across all Functions; retry later"
                        ),
                    }),
                );
                answer
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                Err(answer)
            }
            Admission::Unknown => Err(self.not_found(route)),
            Admission::Invalid(message) => Err(answer(
                entry,
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "error": format!("the Function cannot be read: {message}"),
                    "function": function(),
                }),
            )),
        }
    }

    /// Sends the request to the instance `lease` points at; on a failed
    /// connect, to another one (or waits again).
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        entry: Arc<Entry>,
        route: Route,
        req: Request<Incoming>,
        host: Option<String>,
        client: &ClientAddress,
        mut lease: Lease,
        mut waited: Option<Duration>,
        at: Path<'_>,
    ) -> Answer {
        let Path {
            arrival, deadline, ..
        } = at;
        let (mut parts, body) = req.into_parts();
        let path = route
            .path
            .clone()
            .or_else(|| parts.uri.path_and_query().cloned())
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        forward_request(&mut parts.headers, client, host.as_deref());
        parts.version = Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        let max_requests = entry.config().map_or(0, |c| c.max_requests);
        // maxRequestsPerInstance: the body is kept, so a request an
        // exhausted instance refuses can be sent elsewhere (crate::fresh).
        if max_requests > 0
            && !body.is_end_stream()
            && fresh::plan(content_length_of(&parts.headers)) == fresh::Plan::Buffer
        {
            // maxRequestsPerInstance: boxed, off the common path.
            return match Box::pin(fresh::buffer(body, deadline)).await {
                Ok(bytes) => {
                    parts.headers.remove(http::header::TRANSFER_ENCODING);
                    if let Ok(value) = HeaderValue::from_str(&bytes.len().to_string()) {
                        parts.headers.insert(CONTENT_LENGTH, value);
                    }
                    Box::pin(
                        self.forward_buffered(entry, route, parts, path, bytes, lease, waited, at),
                    )
                    .await
                }
                Err(error) => buffer_failed(&entry, &route, &error),
            };
        }
        if max_requests > 0 && body.is_end_stream() {
            return Box::pin(self.forward_buffered(
                entry,
                route,
                parts,
                path,
                bytes::Bytes::new(),
                lease,
                waited,
                at,
            ))
            .await;
        }
        let replayable = body.is_end_stream();
        let give_back: Option<GiveBack> = (!replayable).then(|| Arc::new(Mutex::new(None)));
        let mut body = Some(body);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut upstream = parts.clone();
            upstream.uri = match upstream_uri(at.via.is_some(), lease.authority(), &path) {
                Ok(uri) => uri,
                Err(error) => {
                    return answer(
                        &entry,
                        StatusCode::BAD_REQUEST,
                        json!({"error": format!("cannot forward this path: {error}")}),
                    );
                }
            };
            let request_body = match body.take() {
                Some(body) if !body.is_end_stream() => RequestBody::new(
                    body,
                    self.options.max_body_bytes,
                    self.options.body_idle_timeout,
                    give_back.clone(),
                ),
                _ => RequestBody::empty(),
            };
            let sent = Instant::now();
            let request = Request::from_parts(upstream, request_body);
            let result = timeout_at(deadline, self.send(at.via, &lease, request)).await;
            match result {
                Ok(Ok((response, _)))
                    if fresh::is_exhausted(response.status(), response.headers()) =>
                {
                    // Streamed (not replayable): the instance refused it
                    // before reading it, but the body cannot be sent again.
                    lease.exhausted();
                    entry.metrics().upstream_error("exhausted");
                    let mut answer = answer(
                        &entry,
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({
                            "error": "the instance had served its maxRequestsPerInstance and the streamed body cannot be sent again; retry",
                            "function": route.function(),
                        }),
                    );
                    answer
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    return answer;
                }
                Ok(Ok((response, checkout))) => {
                    return relay(&entry, response, lease, checkout, waited, sent, deadline);
                }
                Err(_elapsed) => {
                    entry.metrics().upstream_error("timeout");
                    return self.timed_out(&entry, &route);
                }
                Ok(Err(error)) if error.is_connect() => {
                    entry.metrics().upstream_error("connect");
                    debug!(function = %route, pod = lease.pod(), %error, "connecting to an instance failed; placing the request again");
                    lease.connect_failed();
                    body = give_back.as_ref().and_then(|slot| {
                        slot.lock().unwrap_or_else(PoisonError::into_inner).take()
                    });
                    if (!replayable && body.is_none()) || attempt >= MAX_CONNECT_ATTEMPTS {
                        return answer(
                            &entry,
                            StatusCode::BAD_GATEWAY,
                            json!({
                                "error": format!("could not connect to an instance: {error}"),
                                "function": route.function(),
                            }),
                        );
                    }
                    let (admission, timing) = entry.readmit();
                    let wait_until = (Instant::now() + timing.max_wait).min(deadline);
                    let next =
                        self.acquire(&entry, admission, arrival, wait_until, deadline, &route);
                    match Box::pin(next).await {
                        Ok((next, more)) => {
                            lease = next;
                            if more.is_some() {
                                waited = Some(arrival.elapsed());
                            }
                        }
                        Err(answer) => return answer,
                    }
                }
                Ok(Err(error)) => {
                    let source: &(dyn std::error::Error + 'static) = &error;
                    return match request_body_error(source) {
                        Some(RequestBodyError::TooLarge { limit }) => {
                            entry.metrics().upstream_error("body");
                            answer(
                                &entry,
                                StatusCode::PAYLOAD_TOO_LARGE,
                                json!({
                                    "error": format!("the request body is larger than the limit of {limit} bytes"),
                                    "function": route.function(),
                                }),
                            )
                        }
                        Some(RequestBodyError::Idle { timeout }) => {
                            entry.metrics().upstream_error("body");
                            answer(
                                &entry,
                                StatusCode::REQUEST_TIMEOUT,
                                json!({
                                    "error": format!(
                                        "the request body stalled: no bytes for {}",
                                        GoStyle(*timeout)
                                    ),
                                    "function": route.function(),
                                }),
                            )
                        }
                        Some(RequestBodyError::Client(client)) => {
                            entry.metrics().upstream_error("body");
                            answer(
                                &entry,
                                StatusCode::BAD_REQUEST,
                                json!({
                                    "error": format!("reading the request body failed: {client}"),
                                    "function": route.function(),
                                }),
                            )
                        }
                        None => {
                            entry.metrics().upstream_error("other");
                            warn!(function = %route, pod = lease.pod(), error = %ErrorChain(source), "instance failed");
                            answer(
                                &entry,
                                StatusCode::BAD_GATEWAY,
                                json!({
                                    "error": format!("the instance failed: {}", ErrorChain(source)),
                                    "function": route.function(),
                                }),
                            )
                        }
                    };
                }
            }
        }
    }

    /// [`Self::forward`] for a body read in full (or none), with
    /// maxRequestsPerInstance: an exhausted instance's refusal sends the
    /// request to another instance, as often as it takes until the deadline.
    #[allow(clippy::too_many_arguments)]
    async fn forward_buffered(
        &self,
        entry: Arc<Entry>,
        route: Route,
        parts: http::request::Parts,
        path: PathAndQuery,
        bytes: bytes::Bytes,
        mut lease: Lease,
        mut waited: Option<Duration>,
        at: Path<'_>,
    ) -> Answer {
        let Path {
            arrival, deadline, ..
        } = at;
        let mut connect_failures = 0;
        loop {
            let mut upstream = parts.clone();
            upstream.uri = match upstream_uri(at.via.is_some(), lease.authority(), &path) {
                Ok(uri) => uri,
                Err(error) => {
                    return answer(
                        &entry,
                        StatusCode::BAD_REQUEST,
                        json!({"error": format!("cannot forward this path: {error}")}),
                    );
                }
            };
            let sent = Instant::now();
            let request = Request::from_parts(upstream, RequestBody::buffered(bytes.clone()));
            let result = timeout_at(deadline, self.send(at.via, &lease, request)).await;
            match result {
                Ok(Ok((response, _)))
                    if fresh::is_exhausted(response.status(), response.headers()) =>
                {
                    debug!(function = %route, pod = lease.pod(), "instance exhausted; placing the request again");
                    lease.exhausted();
                }
                Ok(Ok((response, checkout))) => {
                    return relay(&entry, response, lease, checkout, waited, sent, deadline);
                }
                Err(_elapsed) => {
                    entry.metrics().upstream_error("timeout");
                    return self.timed_out(&entry, &route);
                }
                Ok(Err(error))
                    if error.is_connect() && connect_failures + 1 < MAX_CONNECT_ATTEMPTS =>
                {
                    connect_failures += 1;
                    entry.metrics().upstream_error("connect");
                    lease.connect_failed();
                }
                Ok(Err(error)) => {
                    entry.metrics().upstream_error("other");
                    return answer(
                        &entry,
                        StatusCode::BAD_GATEWAY,
                        json!({
                            "error": format!("the instance failed: {}", ErrorChain(&error)),
                            "function": route.function(),
                        }),
                    );
                }
            }
            let (admission, timing) = entry.readmit();
            let wait_until = (Instant::now() + timing.max_wait).min(deadline);
            let next = self.acquire(&entry, admission, arrival, wait_until, deadline, &route);
            match Box::pin(next).await {
                Ok((next, more)) => {
                    lease = next;
                    if more.is_some() {
                        waited = Some(arrival.elapsed());
                    }
                }
                Err(answer) => return answer,
            }
        }
    }

    /// One attempt to send `request` to the instance `lease` points at.
    async fn send(
        &self,
        via: Option<&Upstreams>,
        lease: &Lease,
        request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Checkout>), SendError> {
        match via {
            Some(upstreams) => upstreams
                .send(
                    lease.addr(),
                    lease.authority(),
                    request,
                    self.options.connect_timeout,
                    self.options.pool_idle_timeout,
                )
                .await
                .map(|(response, checkout)| (response, Some(checkout))),
            None => upstream::pooled(&self.client, request).await,
        }
    }

    fn timed_out(&self, entry: &Arc<Entry>, route: &Route) -> Answer {
        let timeout = entry.config().map(|c| c.timeout).unwrap_or_default();
        answer(
            entry,
            StatusCode::GATEWAY_TIMEOUT,
            json!({
                "error": format!("the request took longer than the function's timeout of {}", GoStyle(timeout)),
                "function": route.function(),
                "timeout": GoStyle(timeout).to_string(),
            }),
        )
    }

    fn not_found(&self, route: &Route) -> Answer {
        self.unrouted(
            StatusCode::NOT_FOUND,
            json!({"error": "function not found", "function": route.function()}),
        )
    }

    /// An answer counted under no function.
    fn unrouted(&self, status: StatusCode, body: Value) -> Answer {
        self.metrics.unrouted(status);
        json_response(status, &body)
    }
}

/// The instance's answer on its way to the client: latency and status
/// counted, hop headers rewritten, the cold-start wait shown, and the body
/// streamed with the lease held until it ends.
fn relay(
    entry: &Arc<Entry>,
    response: Response<Incoming>,
    lease: Lease,
    checkout: Option<Checkout>,
    waited: Option<Duration>,
    sent: Instant,
    deadline: Instant,
) -> Answer {
    entry
        .metrics()
        .proxy_latency
        .observe(sent.elapsed().as_secs_f64());
    let (mut head, body) = response.into_parts();
    forward_response(&mut head.headers);
    if let Some(waited) = waited
        && let Ok(value) = HeaderValue::from_str(&format!("{}ms", waited.as_millis()))
    {
        head.headers.insert(THAW_COLD_START, value);
    }
    entry.metrics().response(head.status);
    Response::from_parts(
        head,
        ResponseBody::upstream(body, lease, checkout, deadline),
    )
}

/// The answer when a body to be kept for maxRequestsPerInstance could not be
/// read in full.
fn buffer_failed(entry: &Entry, route: &Route, error: &fresh::BufferError) -> Answer {
    let (status, message) = match error {
        fresh::BufferError::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "with maxRequestsPerInstance, a request body without Content-Length may be at most {} bytes (send Content-Length to stream a larger one)",
                fresh::REPLAY_LIMIT
            ),
        ),
        fresh::BufferError::Stalled => (
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time".to_owned(),
        ),
        fresh::BufferError::Client(why) => (
            StatusCode::BAD_REQUEST,
            format!("reading the request body failed: {why}"),
        ),
    };
    entry.metrics().upstream_error("body");
    answer(
        entry,
        status,
        json!({"error": message, "function": route.function()}),
    )
}

/// An answer counted for `entry`.
fn answer(entry: &Entry, status: StatusCode, body: Value) -> Answer {
    entry.metrics().response(status);
    json_response(status, &body)
}

fn error_bytes(body: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    bytes
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Answer {
    let mut response = Response::new(ResponseBody::full(error_bytes(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The Host of a request: its `Host` header, or its URI's authority
/// (HTTP/2); `None` when it has neither.
fn host_of(req: &Request<Incoming>) -> Result<Option<String>, String> {
    let mut hosts = req.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err("the request has more than one Host header".into()),
        (Some(value), None) => value
            .to_str()
            .map(|h| Some(h.to_owned()))
            .map_err(|_| "the Host header is not ASCII text".into()),
        (None, _) => Ok(req.uri().authority().map(|a| a.as_str().to_owned())),
    }
}

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    content_length_of(req.headers())
}

fn content_length_of(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The request target for the instance: absolute for the shared pool
/// (which picks its connection by it), the path alone on the client
/// connection's own connection.
fn upstream_uri(own: bool, authority: &Authority, path: &PathAndQuery) -> Result<Uri, http::Error> {
    if own {
        return Ok(Uri::from(path.clone()));
    }
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(path.clone())
        .build()
}

/// An error and its sources, `: `-separated.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
