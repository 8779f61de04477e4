//! The function behind the gate, on loopback, and whether it serves yet.

use std::{net::SocketAddr, time::Duration};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::timeout};

/// Longest one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The function's port and how to tell it is ready: an HTTP `GET` of its
/// readiness path answered 2xx/3xx, or a TCP connect without one.
#[derive(Clone, Debug)]
pub struct Upstream {
    port: u16,
    readiness_path: Option<String>,
}

impl Upstream {
    pub fn new(port: u16, readiness_path: Option<String>) -> Self {
        Self {
            port,
            readiness_path,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// One readiness check.
    pub async fn is_ready(&self) -> bool {
        timeout(CHECK_TIMEOUT, self.check()).await.unwrap_or(false)
    }

    async fn check(&self) -> bool {
        let Ok(stream) = TcpStream::connect(self.addr()).await else {
            return false;
        };
        let Some(path) = &self.readiness_path else {
            return true;
        };
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            return false;
        };
        tokio::spawn(conn);
        let Ok(request) = http::Request::get(path.as_str())
            .header(http::header::HOST, format!("127.0.0.1:{}", self.port))
            .body(Empty::<Bytes>::new())
        else {
            return false;
        };
        match sender.send_request(request).await {
            Ok(response) => response.status().is_success() || response.status().is_redirection(),
            Err(_) => false,
        }
    }

    /// Checks until the function is ready: every 5 ms for the first second
    /// (a cold start is waiting on it), then backing off to every 250 ms.
    pub async fn wait_ready(&self) {
        let mut pause = Duration::from_millis(5);
        let started = tokio::time::Instant::now();
        while !self.is_ready().await {
            tokio::time::sleep(pause).await;
            if started.elapsed() > Duration::from_secs(1) {
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
    }
}
