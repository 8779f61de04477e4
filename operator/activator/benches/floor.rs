//! Minimal hyper reverse proxies: the least a proxy built on hyper (as the
//! activator is) does per request, measured beside haproxy and the
//! activator so the gap between them splits into hyper's part and thaw's.
//!
//! Each runs as a child process of the bench (`BENCH_ROLE`, with
//! `BENCH_LISTEN` and `BENCH_UPSTREAM`), so its CPU is its own. None has a
//! limit, a timeout or a queue; they forward GETs to one upstream and are
//! for measuring only.
//!
//! - `floor-pool`: the activator's shape. A multi-thread runtime (one worker
//!   per core), hyper's HTTP/1 server and hyper-util's pooled client.
//! - `floor-percore`: one current-thread runtime per core, each with its own
//!   `SO_REUSEPORT` listener and its own pooled client, so a request never
//!   leaves the thread that accepted its connection.
//! - `floor-affine-mt`: the activator's runtime, and each client connection
//!   owns one upstream connection driven by the same task.
//! - `floor-affine`: per core as above, and each client connection owns one
//!   upstream connection driven by the same task: no pool checkout, no
//!   task hand-off per request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, sync::Arc};

use http::{Request, Uri};
use hyper::{
    body::Incoming, client::conn::http1::SendRequest, server::conn::http1, service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Runs the floor proxy `BENCH_ROLE` names, if any, and exits.
pub fn run_if_asked() {
    let Ok(role) = std::env::var("BENCH_ROLE") else {
        return;
    };
    let listen: SocketAddr = std::env::var("BENCH_LISTEN").unwrap().parse().unwrap();
    let upstream: SocketAddr = std::env::var("BENCH_UPSTREAM").unwrap().parse().unwrap();
    match role.as_str() {
        "floor-pool" => multi_thread(listen, move |listener| pooled(listener, upstream)),
        "floor-affine-mt" => multi_thread(listen, move |listener| affine(listener, upstream)),
        "floor-percore" => per_core(listen, move |listener| pooled(listener, upstream)),
        "floor-affine" => per_core(listen, move |listener| affine(listener, upstream)),
        other => panic!("BENCH_ROLE={other}"),
    }
    std::process::exit(0);
}

/// One multi-thread runtime (a worker per core) serving one listener on
/// `listen` with `serve`.
fn multi_thread<F, Fut>(listen: SocketAddr, serve: F)
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move { serve(TcpListener::bind(listen).await.unwrap()).await });
}

/// One current-thread runtime per core, each serving its own
/// `SO_REUSEPORT` listener on `listen` with `serve`.
fn per_core<F, Fut>(listen: SocketAddr, serve: F)
where
    F: Fn(TcpListener) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let serve = serve.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async move {
                        let socket = TcpSocket::new_v4().unwrap();
                        socket.set_reuseaddr(true).unwrap();
                        socket.set_reuseport(true).unwrap();
                        socket.bind(listen).unwrap();
                        serve(socket.listen(1024).unwrap()).await;
                    });
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

fn upstream_request(mut req: Request<Incoming>, upstream: SocketAddr) -> Request<Incoming> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *req.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(upstream.to_string())
        .path_and_query(path)
        .build()
        .unwrap();
    req
}

/// Accepts on `listener`; every request goes through one pooled client.
async fn pooled(listener: TcpListener, upstream: SocketAddr) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Arc<Client<HttpConnector, Incoming>> =
        Arc::new(Client::builder(TokioExecutor::new()).build(connector));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let client = client.clone();
                // A failed upstream closes the client connection (the
                // bench counts it as an error).
                async move { client.request(upstream_request(req, upstream)).await }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Accepts on `listener`; each client connection gets its own upstream
/// connection, polled by the same task as the client's.
async fn affine(listener: TcpListener, upstream: SocketAddr) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let Ok((sender, up_conn)) =
                hyper::client::conn::http1::handshake(TokioIo::new(up)).await
            else {
                return;
            };
            // HTTP/1.1 serves one request at a time, so this lock is never
            // contended; it only satisfies the service's `Fn`.
            let sender: Arc<tokio::sync::Mutex<SendRequest<Incoming>>> =
                Arc::new(tokio::sync::Mutex::new(sender));
            let service = service_fn(move |req| {
                let sender = sender.clone();
                async move {
                    let mut sender = sender.lock().await;
                    sender.ready().await?;
                    // Origin form: this connection is to the instance.
                    let (mut parts, body) = req.into_parts();
                    parts.uri = parts
                        .uri
                        .path_and_query()
                        .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
                    let sent = sender.send_request(Request::from_parts(parts, body));
                    drop(sender);
                    sent.await
                }
            });
            let server = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = server => {}
                _ = up_conn => {}
            }
        });
    }
}
