//! A small HTTP/1.1 client for tests: one request per connection, whole
//! response read, so a test states plainly what it sent and what came back.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// `GET http://<addr><path>` with `Host: host`, within `timeout`.
pub async fn get(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<Reply> {
    let request = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))?;
    send(addr, request, timeout).await
}

/// Sends `request` to `addr` over a new connection, within `timeout`.
pub async fn send(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Reply> {
    tokio::time::timeout(timeout, async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let response = sender.send_request(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    })
    .await
    .with_context(|| format!("no reply from {addr} within {timeout:?}"))?
}
