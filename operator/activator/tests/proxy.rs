#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

//! The proxy end to end on loopback, without a cluster: a registry filled
//! by hand, local upstream servers standing in for instances, and clients
//! that misbehave on purpose.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::{body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use thaw_activator::{
    ProxyOptions,
    metrics::Metrics,
    place::Limits,
    probe,
    proxy::Proxy,
    registry::Registry,
    throttle::{FunctionConfig, PodInfo},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A stand-in instance. Paths: `/sleep/<ms>`, `/read` (reads the whole
/// body, answers its length), `/headers` (answers the request headers),
/// anything else answers `ok`. Counts concurrent requests; every answer
/// says which of its connections carried it (`x-connection`, from 1).
struct Upstream {
    addr: SocketAddr,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (flight, top) = (in_flight.clone(), peak.clone());
    tokio::spawn(async move {
        let mut connections = 0u32;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            connections += 1;
            let connection = connections;
            let (flight, top) = (flight.clone(), top.clone());
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (flight, top) = (flight.clone(), top.clone());
                    async move {
                        let now = flight.fetch_add(1, Ordering::SeqCst) + 1;
                        top.fetch_max(now, Ordering::SeqCst);
                        let path = req.uri().path().to_owned();
                        if path == "/drip" {
                            // A head at once, then a byte every 100 ms for 2 s.
                            let drip = futures::stream::unfold(0u32, |n| async move {
                                if n == 20 {
                                    return None;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                let frame = Frame::data(Bytes::from_static(b"."));
                                Some((Ok::<_, Infallible>(frame), n + 1))
                            });
                            flight.fetch_sub(1, Ordering::SeqCst);
                            return Ok(Response::new(Either::Right(StreamBody::new(drip))));
                        }
                        let body = if let Some(ms) = path.strip_prefix("/sleep/") {
                            let ms: u64 = ms.parse().unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            "slept".to_owned()
                        } else if path == "/read" {
                            match req.into_body().collect().await {
                                Ok(body) => body.to_bytes().len().to_string(),
                                Err(e) => format!("error {e}"),
                            }
                        } else if path == "/headers" {
                            let mut lines: Vec<String> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                                .collect();
                            lines.push(format!("uri: {}", req.uri()));
                            lines.join("\n")
                        } else {
                            format!("ok {}", req.uri())
                        };
                        flight.fetch_sub(1, Ordering::SeqCst);
                        let mut response =
                            Response::new(Either::Left(Full::new(Bytes::from(body))));
                        response
                            .headers_mut()
                            .insert("connection", "keep-alive, x-secret".parse().unwrap());
                        response
                            .headers_mut()
                            .insert("x-secret", "hop".parse().unwrap());
                        response
                            .headers_mut()
                            .insert("x-connection", connection.into());
                        Ok::<_, Infallible>(response)
                    }
                }),
            ));
        }
    });
    Upstream {
        addr,
        in_flight,
        peak,
    }
}

fn config(concurrency: u32) -> FunctionConfig {
    FunctionConfig {
        uid: "uid".into(),
        hash: "h".into(),
        limits: Limits {
            concurrency,
            target: 1.0,
        },
        max_pending: 5,
        max_wait: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
        port: 8080,
        max_requests: 0,
    }
}

fn pod(name: &str, addr: SocketAddr) -> PodInfo {
    PodInfo {
        name: name.into(),
        uid: format!("uid-{name}"),
        ip: Some(addr.ip()),
        port: Some(addr.port()),
        readiness_path: None,
        owner_uid: Some("uid".into()),
        hash: Some("h".into()),
        kubelet_ready: None,
        draining: false,
        terminating: false,
        finished: false,
    }
}

struct Activator {
    addr: SocketAddr,
    registry: Arc<Registry>,
}

async fn activator(options: ProxyOptions) -> Activator {
    let registry = Registry::new(Metrics::new().unwrap(), probe::spawner());
    let proxy = Proxy::new(registry.clone(), options, Arc::new(AtomicBool::new(true)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy.serve(listener, std::future::pending()));
    Activator { addr, registry }
}

fn options() -> ProxyOptions {
    ProxyOptions {
        max_body_bytes: 1000,
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(1500),
        body_idle_timeout: Duration::from_millis(300),
        max_header_bytes: 8192,
        max_headers: 20,
        ..ProxyOptions::default()
    }
}

/// Waits until the function has `n` ready instances (probed).
async fn ready(registry: &Registry, n: usize) {
    let entry = registry.get("ns", "f").unwrap();
    wait_for(|| entry.snapshot(|s| s.instances().iter().filter(|i| i.is_ready()).count()) >= n)
        .await;
}

/// An activator serving function ns/f on `upstreams`.
async fn serving(concurrency: u32, upstreams: &[&Upstream]) -> Activator {
    serving_with(options(), config(concurrency), upstreams).await
}

/// [`serving`] with these options and this function configuration.
async fn serving_with(
    options: ProxyOptions,
    config: FunctionConfig,
    upstreams: &[&Upstream],
) -> Activator {
    let a = activator(options).await;
    a.registry.set_function("ns", "f", Some(config));
    for (i, u) in upstreams.iter().enumerate() {
        a.registry
            .upsert_pod("ns", "f", pod(&format!("p{i}"), u.addr));
    }
    ready(&a.registry, upstreams.len()).await;
    a
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

/// `req` on a connection of its own.
async fn request(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    KeepAlive::open(addr).await.send(req).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, get_request(path)).await
}

/// Sends raw bytes, returns everything the server sent until it closed
/// (or `wait` passed).
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn routes_by_host_and_path_and_strips_hop_by_hop_headers() {
    let up = upstream().await;
    let a = serving(10, &[&up]).await;
    let reply = get(a.addr, "/a/b?c=d").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok /a/b?c=d");
    assert!(
        !reply.headers.contains_key("x-secret"),
        "hop-by-hop removed"
    );
    assert!(
        !reply.headers.contains_key("thaw-cold-start"),
        "did not wait"
    );
    let reply = request(
        a.addr,
        Request::get("/fn/ns/f/headers?q=1")
            .header("host", "localhost:8080")
            .header("connection", "x-drop")
            .header("x-drop", "1")
            .header("x-keep", "2")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let body = reply.body;
    assert!(body.contains("uri: /headers?q=1"), "{body}");
    assert!(body.contains("x-keep: 2"), "{body}");
    assert!(!body.contains("x-drop"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(body.contains("x-forwarded-host: localhost:8080"), "{body}");
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(
        body.contains("forwarded: for=127.0.0.1;host=\"localhost:8080\";proto=http"),
        "{body}"
    );
    assert!(body.contains("host: localhost:8080"), "{body}");

    // The Host names function f, which exists: it wins over the path.
    assert_eq!(get(a.addr, "/fn/ns/nope/").await.body, "ok /fn/ns/nope/");
    let reply = request(
        a.addr,
        Request::get("/fn/ns/nope/")
            .header("host", "thaw-activator.thaw-system.svc")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.body,
        "{\"error\":\"function not found\",\"function\":\"ns/nope\"}\n"
    );
    let reply = request(
        a.addr,
        Request::get("/x")
            .header("host", "example.com")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("cannot route"), "{}", reply.body);
}

#[tokio::test]
async fn concurrency_is_never_exceeded_and_waiting_responses_say_how_long() {
    let up = upstream().await;
    let a = serving(2, &[&up]).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(tokio::spawn(get(a.addr, "/sleep/100")));
    }
    let mut waited = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200);
        if let Some(value) = reply.headers.get("thaw-cold-start") {
            let value = value.to_str().unwrap();
            assert!(value.ends_with("ms"), "{value}");
            value.trim_end_matches("ms").parse::<u64>().unwrap();
            waited += 1;
        }
    }
    assert_eq!(up.peak.load(Ordering::SeqCst), 2);
    assert_eq!(waited, 3, "three requests waited for a slot");
    assert_eq!(up.in_flight.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn queue_overflow_is_503_with_retry_after() {
    let up = upstream().await;
    let a = serving(1, &[&up]).await;
    let busy = tokio::spawn(get(a.addr, "/sleep/500"));
    let entry = a.registry.get("ns", "f").unwrap();
    wait_for(|| entry.snapshot(|s| s.in_flight()) == 1).await;
    let mut queued = Vec::new();
    for _ in 0..5 {
        queued.push(tokio::spawn(get(a.addr, "/")));
    }
    wait_for(|| entry.snapshot(|s| s.waiting()) == 5).await;
    let reply = get(a.addr, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(
        reply.body.contains("\"error\":\"queue full\""),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("\"maxPending\":5"), "{}", reply.body);
    assert_eq!(busy.await.unwrap().status, 200);
    for task in queued {
        assert_eq!(task.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn max_wait_and_timeout_answer_503_and_504() {
    let up = upstream().await;
    let a = serving(1, &[&up]).await;
    let mut c = config(1);
    c.max_wait = Duration::from_millis(200);
    c.timeout = Duration::from_millis(400);
    a.registry.set_function("ns", "f", Some(c));
    let started = std::time::Instant::now();
    let reply = get(a.addr, "/sleep/2000").await;
    assert_eq!(reply.status, 504);
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(reply.body.contains("timeout of 400ms"), "{}", reply.body);
    // The slot is free again at once, although the instance still sleeps.
    let busy = tokio::spawn(get(a.addr, "/sleep/1000"));
    let entry = a.registry.get("ns", "f").unwrap();
    wait_for(|| entry.snapshot(|s| s.in_flight()) == 1).await;
    let reply = get(a.addr, "/").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.body.contains("no instance became ready within 200ms"),
        "{}",
        reply.body
    );
    assert_eq!(busy.await.unwrap().status, 504);
}

#[tokio::test]
async fn a_response_still_streaming_at_the_timeout_is_cut() {
    let up = upstream().await;
    let a = serving(1, &[&up]).await;
    let mut c = config(1);
    c.timeout = Duration::from_millis(500);
    a.registry.set_function("ns", "f", Some(c));
    let mut client = KeepAlive::open(a.addr).await;
    let started = std::time::Instant::now();
    let response = client.head("/drip").await;
    assert_eq!(response.status(), 200, "the head came in time");
    let body = response.into_body().collect().await;
    assert!(
        body.is_err(),
        "the body was cut: {:?} after {:?}",
        body.map(|b| b.to_bytes()),
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    let entry = a.registry.get("ns", "f").unwrap();
    wait_for(|| entry.snapshot(|s| s.in_flight()) == 0).await;
}

#[tokio::test]
async fn a_function_at_zero_waits_for_its_first_instance() {
    let up = upstream().await;
    let a = activator(options()).await;
    a.registry.set_function("ns", "f", Some(config(1)));
    let request = tokio::spawn(get(a.addr, "/"));
    let entry = a.registry.get("ns", "f").unwrap();
    wait_for(|| entry.snapshot(|s| s.waiting()) == 1).await;
    a.registry.upsert_pod("ns", "f", pod("p0", up.addr));
    let reply = request.await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.headers.contains_key("thaw-cold-start"));
}

#[tokio::test]
async fn a_dead_instance_is_skipped_and_the_request_retried() {
    let up = upstream().await;
    let a = activator(options()).await;
    a.registry.set_function("ns", "f", Some(config(10)));
    // An "instance" that listens long enough to pass its probe, then dies.
    // Learned of first, so packing picks it first.
    let doomed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    a.registry
        .upsert_pod("ns", "f", pod("dead", doomed.local_addr().unwrap()));
    a.registry.upsert_pod("ns", "f", pod("live", up.addr));
    ready(&a.registry, 2).await;
    drop(doomed);
    for _ in 0..3 {
        let reply = request(
            a.addr,
            Request::post("/read")
                .header("host", "f.ns.svc")
                .body(Full::new(Bytes::from_static(b"hello")))
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "5", "the body was replayed intact");
    }
    let entry = a.registry.get("ns", "f").unwrap();
    let dead_ready = entry.snapshot(|s| {
        s.instances()
            .iter()
            .find(|i| i.pod.name == "dead")
            .map(|i| i.is_ready())
    });
    assert_eq!(dead_ready, Some(false), "marked unready, being re-probed");
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_or_cut() {
    let up = upstream().await;
    let a = serving(10, &[&up]).await;
    let reply = request(
        a.addr,
        Request::post("/read")
            .header("host", "f.ns.svc")
            .body(Full::new(Bytes::from(vec![b'x'; 1001])))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(reply.body.contains("limit of 1000 bytes"), "{}", reply.body);
    // Streamed (chunked, no Content-Length) past the limit: cut.
    let response = post_chunks(a.addr, 20).await;
    assert_eq!(response.status(), 413);
    // Within the limit, streamed: passes.
    let response = post_chunks(a.addr, 9).await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"900");
}

#[tokio::test]
async fn slow_clients_get_408() {
    let up = upstream().await;
    let a = serving(10, &[&up]).await;
    // Headers that never end.
    let answer = raw(
        a.addr,
        b"GET / HTTP/1.1\r\nHost: f.ns.svc\r\nX-Slow: ",
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("did not arrive within 500ms"), "{answer:?}");
    // A body that stalls.
    let answer = raw(
        a.addr,
        b"POST /read HTTP/1.1\r\nHost: f.ns.svc\r\nContent-Length: 100\r\n\r\nonly a part",
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("stalled"), "{answer:?}");
    // An idle connection is closed without a word, after --idle-timeout.
    let started = std::time::Instant::now();
    let answer = raw(a.addr, b"", Duration::from_secs(5)).await;
    assert_eq!(answer, "");
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1400) && closed_after < Duration::from_secs(4),
        "{closed_after:?}"
    );
    assert_eq!(get(a.addr, "/").await.status, 200, "still serving");
}

#[tokio::test]
async fn keep_alive_connections_outlive_the_header_timeout_and_slow_bodies_are_not_slow_heads() {
    let up = upstream().await;
    let a = serving(10, &[&up]).await;
    let stream = TcpStream::connect(a.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = || {
        Request::get("/")
            .header("host", "f.ns.svc")
            .body(Either::Left(Full::new(Bytes::new())))
            .unwrap()
    };
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);
    // Idle for twice the header timeout (but under the idle timeout): the
    // idle time is the input under test, not a wait for a condition.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let response = sender.send_request(get()).await.unwrap();
    assert_eq!(response.status(), 200, "the connection was kept");
    response.into_body().collect().await.unwrap();
    // A body that takes three header timeouts to arrive, a chunk every
    // 200 ms (under the body idle timeout): served.
    let chunks = futures::stream::unfold(0u32, |n| async move {
        if n == 8 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"0123456789"))),
            n + 1,
        ))
    });
    let response = sender
        .send_request(
            Request::post("/read")
                .header("host", "f.ns.svc")
                .body(Either::Right(StreamBody::new(chunks)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"80");
}

#[tokio::test]
async fn oversized_or_malformed_heads_are_4xx() {
    let up = upstream().await;
    let a = serving(10, &[&up]).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: f.ns.svc\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let answer = raw(a.addr, big.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let mut many = String::from("GET / HTTP/1.1\r\nHost: f.ns.svc\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw(a.addr, many.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    for (head, status) in [
        ("GET / HTTP/1.1\r\nHost: bad host!\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        ("GET /fn/ns HTTP/1.1\r\nHost: localhost\r\n\r\n", "400"),
        ("GET /fn/NS/f/ HTTP/1.1\r\nHost: localhost\r\n\r\n", "400"),
        ("GET / HTTP/1.0\r\n\r\n", "400"),
        ("NOT HTTP AT ALL\r\n\r\n", "400"),
    ] {
        let answer = raw(a.addr, head.as_bytes(), Duration::from_secs(3)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}"))
                || answer.starts_with(&format!("HTTP/1.0 {status}")),
            "{head:?}: {answer:?}"
        );
    }
    assert_eq!(get(a.addr, "/").await.status, 200, "still serving");
}

#[tokio::test]
async fn a_client_that_disconnects_while_queued_leaves_the_queue() {
    let up = upstream().await;
    let a = serving(1, &[&up]).await;
    let busy = tokio::spawn(get(a.addr, "/sleep/400"));
    let entry = a.registry.get("ns", "f").unwrap();
    wait_for(|| entry.snapshot(|s| s.in_flight()) == 1).await;
    let mut stream = TcpStream::connect(a.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: f.ns.svc\r\n\r\n")
        .await
        .unwrap();
    wait_for(|| entry.snapshot(|s| s.waiting()) == 1).await;
    drop(stream);
    wait_for(|| entry.snapshot(|s| s.waiting()) == 0).await;
    assert_eq!(busy.await.unwrap().status, 200);
    assert_eq!(entry.snapshot(|s| s.in_flight()), 0);
}

#[tokio::test]
async fn h2c_works() {
    let up = upstream().await;
    let a = serving(10, &[&up]).await;
    let stream = TcpStream::connect(a.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get("http://f.ns.svc.cluster.local/h2")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok /h2");
}

#[tokio::test]
async fn nothing_is_placed_on_a_draining_instance() {
    let up_a = upstream().await;
    let up_b = upstream().await;
    let a = serving(10, &[&up_a, &up_b]).await;
    let mut draining = pod("p0", up_a.addr);
    draining.draining = true;
    a.registry.upsert_pod("ns", "f", draining);
    for _ in 0..5 {
        assert_eq!(get(a.addr, "/").await.status, 200);
    }
    assert_eq!(up_a.peak.load(Ordering::SeqCst), 0);
    assert!(up_b.peak.load(Ordering::SeqCst) > 0);
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}

/// POSTs `chunks` chunks of 100 bytes to `/read` as a streamed body (no
/// Content-Length).
async fn post_chunks(addr: SocketAddr, chunks: usize) -> hyper::Response<hyper::body::Incoming> {
    let chunks = futures::stream::iter(
        (0..chunks).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'y'; 100])))),
    );
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
        .send_request(
            Request::post("/read")
                .header("host", "f.ns.svc")
                .body(StreamBody::new(chunks))
                .unwrap(),
        )
        .await
        .unwrap()
}

/// A GET of `/fn/ns/<function>/<path>` (path routing).
async fn get_fn(addr: SocketAddr, function: &str, path: &str) -> Reply {
    request(
        addr,
        Request::get(format!("/fn/ns/{function}/{path}"))
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_bound_across_functions_answers_503() {
    let up = upstream().await;
    let a = activator(ProxyOptions {
        max_queued: 3,
        ..options()
    })
    .await;
    for (function, pod_name) in [("f", "p0"), ("g", "q0")] {
        a.registry.set_function("ns", function, Some(config(1)));
        a.registry
            .upsert_pod("ns", function, pod(pod_name, up.addr));
        let entry = a.registry.get("ns", function).unwrap();
        wait_for(|| entry.snapshot(|s| s.instances().iter().any(|i| i.is_ready()))).await;
    }
    let f = a.registry.get("ns", "f").unwrap();
    let g = a.registry.get("ns", "g").unwrap();
    let mut tasks = vec![
        tokio::spawn(get_fn(a.addr, "f", "sleep/500")),
        tokio::spawn(get_fn(a.addr, "g", "sleep/500")),
    ];
    wait_for(|| f.snapshot(|s| s.in_flight()) == 1 && g.snapshot(|s| s.in_flight()) == 1).await;
    for function in ["f", "f", "g"] {
        tasks.push(tokio::spawn(get_fn(a.addr, function, "")));
    }
    wait_for(|| f.snapshot(|s| s.waiting()) == 2 && g.snapshot(|s| s.waiting()) == 1).await;
    // g's own queue (maxPending 5) has room; the activator's does not.
    let reply = get_fn(a.addr, "g", "").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(
        reply.body.contains("activator queue full"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("\"maxQueued\":3"), "{}", reply.body);
    assert_eq!(
        g.snapshot(|s| s.waiting()),
        1,
        "the refused request left no trace"
    );
    for task in tasks {
        assert_eq!(task.await.unwrap().status, 200);
    }
    // Places are given back: the bound admits again.
    assert_eq!(get_fn(a.addr, "g", "").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_limit_gets_503_and_is_closed() {
    let up = upstream().await;
    let options = ProxyOptions {
        max_connections: 2,
        ..options()
    };
    let a = serving_with(options, config(10), &[&up]).await;
    let first = TcpStream::connect(a.addr).await.unwrap();
    let second = TcpStream::connect(a.addr).await.unwrap();
    let reply = raw(a.addr, b"", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("retry-after: 1"), "{reply}");
    assert!(reply.contains("maximum of 2 open connections"), "{reply}");
    drop((first, second));
    // Freed places serve again (the server notices the closes shortly).
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        let reply = raw(
            a.addr,
            b"GET / HTTP/1.1\r\nHost: f.ns.svc.cluster.local\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        if reply.starts_with("HTTP/1.1 200") {
            status = StatusCode::OK;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, StatusCode::OK);
}

/// A client on one keep-alive connection, sending one request at a time.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { sender }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send(get_request(path)).await
    }

    /// A GET's response head; its body is left to the caller.
    async fn head(&mut self, path: &str) -> hyper::Response<hyper::body::Incoming> {
        self.sender.ready().await.unwrap();
        self.sender.send_request(get_request(path)).await.unwrap()
    }
}

fn get_request(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "f.ns.svc.cluster.local")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Which of the stand-in instance's connections carried a reply.
fn connection_of(reply: &Reply) -> String {
    reply.headers["x-connection"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_get_instance_connections_of_their_own() {
    let up = upstream().await;
    let a = serving(0, &[&up]).await;
    let mut clients = [KeepAlive::open(a.addr).await, KeepAlive::open(a.addr).await];
    let mut seen = [
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    ];
    for round in 0..10 {
        for (client, seen) in clients.iter_mut().zip(&mut seen) {
            let reply = client.get("/").await;
            assert_eq!(reply.status, 200);
            // The first request of a connection goes through the shared pool.
            if round > 0 {
                seen.insert(connection_of(&reply));
            }
        }
    }
    // Interleaved one after the other, a shared pool would have given both
    // clients the same instance connection.
    assert_eq!(seen[0].len(), 1, "client 0 used {:?}", seen[0]);
    assert_eq!(seen[1].len(), 1, "client 1 used {:?}", seen[1]);
    assert_ne!(seen[0], seen[1], "each client has its own connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_its_own_connection_a_request_keeps_every_behaviour() {
    let up = upstream().await;
    // options(): bodies up to 1000 bytes.
    let config = FunctionConfig {
        timeout: Duration::from_millis(700),
        ..config(1)
    };
    let a = serving_with(options(), config, &[&up]).await;
    let mut client = KeepAlive::open(a.addr).await;
    let first = client.get("/").await;
    assert_eq!(first.status, 200);

    // Origin form, the client's Host, forwarding headers; hop headers gone.
    let headers = client.get("/headers?x=1").await;
    assert_eq!(headers.status, 200);
    assert_ne!(
        connection_of(&headers),
        connection_of(&first),
        "its own connection"
    );
    assert!(
        headers.body.contains("uri: /headers?x=1"),
        "{}",
        headers.body
    );
    assert!(
        headers.body.contains("host: f.ns.svc.cluster.local"),
        "{}",
        headers.body
    );
    assert!(
        headers.body.contains("x-forwarded-for: 127.0.0.1"),
        "{}",
        headers.body
    );
    assert!(!headers.headers.contains_key("x-secret"));

    // A body is carried, and a larger one refused.
    let post = |body: &'static [u8]| {
        Request::post("/read")
            .header("host", "f.ns.svc.cluster.local")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    let read = client.send(post(b"hello")).await;
    assert_eq!((read.status, read.body.as_str()), (StatusCode::OK, "5"));
    let big = client.send(post(&[b'x'; 2000])).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Concurrency 1 still holds, and a response past the timeout is cut
    // (and its client connection closed).
    let mut other = KeepAlive::open(a.addr).await;
    other.get("/").await;
    let (slow, queued) = tokio::join!(client.get("/sleep/300"), async {
        wait_for(|| up.in_flight.load(Ordering::SeqCst) == 1).await;
        other.get("/sleep/10").await
    });
    assert_eq!(
        (slow.status, queued.status),
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(up.peak.load(Ordering::SeqCst), 1, "concurrency 1 held");
    let response = client.head("/drip").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.into_body().collect().await.is_err(),
        "cut at the timeout"
    );
    // The other client's connection to the instance is unaffected.
    assert_eq!(other.get("/").await.status, 200);
}

/// An instance that answers one request per connection and then closes it,
/// without saying so (`Connection: close`); counts its connections.
async fn closing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_closing_idle_connections_fails_no_request() {
    let (addr, accepted) = closing_upstream().await;
    let a = activator(options()).await;
    a.registry.set_function("ns", "f", Some(config(0)));
    a.registry.upsert_pod("ns", "f", pod("p0", addr));
    ready(&a.registry, 1).await;
    let before = accepted.load(Ordering::SeqCst);
    let mut client = KeepAlive::open(a.addr).await;
    for _ in 0..20 {
        let reply = client.get("/").await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst) - before,
        20,
        "every request on a new instance connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_one_port_and_finish_open_requests_at_shutdown() {
    let up = upstream().await;
    let registry = Registry::new(Metrics::new().unwrap(), probe::spawner());
    registry.set_function("ns", "f", Some(config(0)));
    registry.upsert_pod("ns", "f", pod("p0", up.addr));
    ready(&registry, 1).await;
    let proxy = Proxy::new(
        registry.clone(),
        ProxyOptions {
            workers: 2,
            ..options()
        },
        Arc::new(AtomicBool::new(true)),
    );
    let listeners = proxy.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0], ports[1], "one port, two listeners");
    // The port is the activator's alone: nobody else may bind it, with
    // SO_REUSEPORT or without.
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let intruder = tokio::net::TcpSocket::new_v4().unwrap();
    intruder.set_reuseport(true).unwrap();
    intruder.set_reuseaddr(true).unwrap();
    assert!(
        intruder.bind(addr).is_err(),
        "another socket joined the port"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(proxy.serve_workers(listeners, async move {
        let _ = stop_rx.await;
    }));
    // Many connections (spread by the kernel over both workers), each
    // with requests on the pool and on its own connection.
    let clients = (0..16).map(|_| async move {
        let mut client = KeepAlive::open(addr).await;
        for _ in 0..3 {
            assert_eq!(client.get("/").await.status, 200);
        }
    });
    futures::future::join_all(clients).await;
    let mut slow = KeepAlive::open(addr).await;
    let in_flight = tokio::spawn(async move { slow.get("/sleep/300").await });
    wait_for(|| up.in_flight.load(Ordering::SeqCst) == 1).await;
    stop_tx.send(()).unwrap();
    let reply = in_flight.await.unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "slept")
    );
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("every worker stopped")
        .unwrap()
        .unwrap();
}
