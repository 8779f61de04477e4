//! The gate in front of a real HTTP function on loopback: the hard limit
//! holds even when clients go away mid-request, held requests queue, and
//! `/v1/state` tells what runs.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use thaw_gate::{EXHAUSTED, GateOptions, GateState, THAW_GATE, Upstream};
use tokio::net::{TcpListener, TcpStream};

/// A function that sleeps 150 ms per request and records its peak
/// concurrency. On `/fake` it answers 503 with `thaw-gate: exhausted`, as if
/// it were the gate.
struct Function {
    port: u16,
    peak: Arc<AtomicU32>,
}

async fn function() -> Function {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (r, p) = (running.clone(), peak.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (r, p) = (r.clone(), p.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (r, p) = (r.clone(), p.clone());
                    async move {
                        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        r.fetch_sub(1, Ordering::SeqCst);
                        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                        if req.uri().path() == "/fake" {
                            *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            response
                                .headers_mut()
                                .insert(THAW_GATE, EXHAUSTED.parse().expect("value"));
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Function { port, peak }
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

async fn gate(upstream: u16, concurrency: u32) -> (SocketAddr, SocketAddr) {
    gate_with(upstream, concurrency, 0).await
}

async fn gate_with(upstream: u16, concurrency: u32, max_requests: u32) -> (SocketAddr, SocketAddr) {
    let (listen, admin) = (free_addr(), free_addr());
    let options = GateOptions {
        listen,
        admin_listen: admin,
        upstream: Upstream::new(upstream, None),
        concurrency,
        max_requests,
        max_waiting: 100,
        max_hold: Duration::from_secs(10),
        header_read_timeout: Duration::from_secs(5),
    };
    tokio::spawn(thaw_gate::run(options, std::future::pending()));
    // The gate opens its port once the function listens.
    for _ in 0..200 {
        if TcpStream::connect(listen).await.is_ok() {
            return (listen, admin);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the gate did not open");
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = get_with_headers(addr, path).await;
    (status, body)
}

async fn get_with_headers(addr: SocketAddr, path: &str) -> (u16, http::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", "gate")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

async fn state(admin: SocketAddr) -> GateState {
    let (status, body) = get(admin, "/v1/state").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("state JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_does_not_free_its_slot_before_the_function_answers() {
    let function = function().await;
    let (addr, admin) = gate(function.port, 1).await;
    // Eight clients send a request each and hang up at once, as a crashed
    // activator would; eight more wait for their answers.
    for _ in 0..8 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(
            &mut stream,
            b"GET /left HTTP/1.1\r\nhost: gate\r\n\r\n",
        )
        .await
        .expect("write");
        drop(stream);
    }
    let waiting: Vec<_> = (0..8).map(|_| tokio::spawn(get(addr, "/stayed"))).collect();
    for task in waiting {
        assert_eq!(task.await.expect("task").0, 200);
    }
    assert_eq!(
        function.peak.load(Ordering::SeqCst),
        1,
        "the limit of 1 was passed"
    );
    let state = state(admin).await;
    assert_eq!((state.in_flight, state.waiting), (0, 0), "{state:?}");
    assert!(state.started >= 8, "{state:?}");
    assert!(state.idle_for_ms.is_some(), "{state:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_three_lets_three_through_and_holds_the_rest() {
    let function = function().await;
    let (addr, admin) = gate(function.port, 3).await;
    let tasks: Vec<_> = (0..12).map(|_| tokio::spawn(get(addr, "/"))).collect();
    // While they run, the gate says so.
    // Asked until it says so or every request has finished (4 rounds of
    // 150 ms, so a busy machine only gives it longer).
    let mut seen_busy = false;
    while !seen_busy && tasks.iter().any(|t| !t.is_finished()) {
        let s = state(admin).await;
        seen_busy = s.in_flight == 3 && s.waiting > 0;
        tokio::task::yield_now().await;
    }
    for task in tasks {
        assert_eq!(task.await.expect("task").0, 200);
    }
    assert!(seen_busy, "never saw 3 in flight with more held");
    assert_eq!(function.peak.load(Ordering::SeqCst), 3);
    assert_eq!(state(admin).await.started, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_instance_refuses_at_once_without_reading_the_body() {
    let function = function().await;
    let (addr, admin) = gate_with(function.port, 1, 2).await;
    assert_eq!(get(addr, "/one").await.0, 200);
    assert_eq!(get(addr, "/two").await.0, 200);
    let before = state(admin).await;
    assert!(before.exhausted && before.max_requests == 2, "{before:?}");
    // A third request declares a body it never sends: the refusal comes at
    // once all the same, so the sender still has its body to send elsewhere.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"POST /three HTTP/1.1\r\nhost: gate\r\ncontent-length: 1000\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut answer),
    )
    .await
    .expect("an answer before the body")
    .expect("read");
    let answer = String::from_utf8_lossy(&answer[..read]).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("thaw-gate: exhausted"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert_eq!(
        state(admin).await.started,
        2,
        "the third never reached the function"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_function_cannot_fake_the_gates_exhausted_refusal() {
    let function = function().await;
    let (addr, _admin) = gate(function.port, 1).await;
    let (status, headers, _) = get_with_headers(addr, "/fake").await;
    assert_eq!(status, 503, "the function's own answer passes");
    assert!(headers.get(THAW_GATE).is_none(), "{headers:?}");
}
