#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.
//! The limits against hostile clients, on a real loopback listener: a
//! client that never finishes its headers is cut off while others are
//! served, connections beyond the limit are closed at once, and a body that
//! is too slow or too large is refused.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use prometheus::Registry;
use thaw_serve::{Admin, Limits, read_body, serve};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes: thaw_serve::Routes = Arc::new(move |req: Request<hyper::body::Incoming>| {
        (req.uri().path() == "/echo").then(|| {
            async move {
                match read_body(req.into_body(), &limits).await {
                    Ok(body) => Response::new(Full::new(body)),
                    Err(error) => error.response(&limits),
                }
            }
            .boxed()
        })
    });
    let admin = Admin {
        registry: Registry::new(),
        ready: Arc::new(|| true),
        limits,
        routes: Some(routes),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, admin, stopped.map(|_| ())));
    (addr, stop)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Response<Bytes> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get(path)
                .header("host", "x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

/// Reads until the server closes the connection; true if it did within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_while_others_are_served() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        max_connections_per_ip: 1000,
        ..Limits::default()
    };
    let (addr, _stop) = start(limits).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Others are served meanwhile.
    for _ in 0..20 {
        assert_eq!(get(addr, "/healthz").await.status(), StatusCode::OK);
    }
    // Each slow client is cut off by its deadline (a byte now and then does
    // not extend it).
    for stream in &mut slow {
        let _ = stream.write_all(b"X-Drip: 1\r\n").await;
        assert!(closed_within(stream, Duration::from_secs(5)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let limits = Limits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let (addr, _stop) = start(limits).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(5)).await);
    drop(held);
    // Freed slots serve again.
    let response = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let stream = TcpStream::connect(addr).await.unwrap();
            if let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            {
                tokio::spawn(conn);
                let request = Request::get("/healthz")
                    .header("host", "x")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                if let Ok(response) = sender.send_request(request).await {
                    return response.status();
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(response, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_large_bodies_are_refused() {
    let limits = Limits {
        body_timeout: Duration::from_millis(300),
        max_body_bytes: 1000,
        ..Limits::default()
    };
    let (addr, _stop) = start(limits).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let big = vec![b'a'; 5000];
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(&big).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    assert_eq!(get(addr, "/nothing").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_slot() {
    let limits = Limits {
        max_connections: 100,
        max_connections_per_ip: 8,
        header_read_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let (addr, _stop) = start(limits).await;
    // A flood from 127.0.0.2 (loopback too): 8 held, the rest closed at once.
    let mut flood = Vec::new();
    for _ in 0..50 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await;
        flood.push(stream);
    }
    let mut closed = 0;
    for stream in &mut flood {
        if closed_within(stream, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 42, "all but 8 of the flood are refused");
    // 127.0.0.1 is served all along.
    for _ in 0..10 {
        assert_eq!(get(addr, "/healthz").await.status(), StatusCode::OK);
    }
}
