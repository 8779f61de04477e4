//! Client connections: how long a client may take to send a request's
//! headers, how long a keep-alive connection may sit idle, and a `408
//! Request Timeout` for the slow ones instead of a silently closed socket.
//!
//! hyper's own header timeout starts as soon as it waits for a request, so
//! it is also an idle timeout for keep-alive connections: at 10 s it would
//! close idle connections that load balancers and ingress controllers keep
//! for a minute or more, racing their next request. So the activator splits
//! the two:
//!
//! - [`Tracked`] sees the first byte of each request arrive, the service
//!   marks the moment the request head was complete and holds an
//!   [`InRequest`] until its response body is done, and [`Handle::watch`]
//!   fires when a head took longer than `--header-read-timeout` (the accept
//!   loop then drops hyper's connection and writes the 408 itself through
//!   its share of the socket), or when the connection had no request for
//!   `--idle-timeout`, a fresh one included (closed silently);
//! - hyper's own header timer is off: it would only repeat these, at the
//!   cost of a timer per request.
//!
//! HTTP/2 connections (recognised by their preface) are left to h2's own
//! flow control and keep-alive pings.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    time::Instant,
};

/// Why [`Handle::watch`] gave up on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// A request head took longer than `--header-read-timeout`: 408.
    Head,
    /// No request for `--idle-timeout`: closed silently.
    Idle,
}

/// The HTTP/2 connection preface starts with this.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Where the connection is in the request cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No request being received or served since `since` (the last
    /// response ended, or the connection opened).
    Idle { since: Instant },
    /// Bytes of a request head arrived, the first at `since`.
    Head { since: Instant },
    /// A request is being served (its head was complete), until its
    /// response body is done: reads now are its body.
    Request,
    /// HTTP/2: not watched.
    H2,
}

struct Inner {
    stream: TcpStream,
    phase: Phase,
    /// Requests being served (HTTP/1.1: at most one at a time).
    active: u32,
    /// Nothing was read yet (the HTTP/2 preface check).
    fresh: bool,
}

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The socket as hyper sees it.
pub struct Tracked {
    shared: Arc<Shared>,
}

/// The accept loop's share of the socket.
pub struct Handle {
    shared: Arc<Shared>,
}

/// Wraps `stream`; the [`Handle`] outlives hyper's use of it.
pub fn track(stream: TcpStream) -> (Tracked, Handle) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            stream,
            phase: Phase::Idle {
                since: Instant::now(),
            },
            active: 0,
            fresh: true,
        }),
    });
    (
        Tracked {
            shared: shared.clone(),
        },
        Handle { shared },
    )
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut inner = self.shared.lock();
        let before = buf.filled().len();
        let poll = Pin::new(&mut inner.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if inner.fresh {
                inner.fresh = false;
                if buf.filled()[before..].starts_with(H2_PREFACE) {
                    inner.phase = Phase::H2;
                }
            }
            if matches!(inner.phase, Phase::Idle { .. }) && inner.active == 0 {
                inner.phase = Phase::Head {
                    since: Instant::now(),
                };
            }
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.shared.lock().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.shared.lock().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.shared.lock().stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.shared.lock().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.shared.lock().stream).poll_shutdown(cx)
    }
}

/// Marks request heads complete; one per connection, held by its service.
#[derive(Clone)]
pub struct HeadDone {
    shared: Arc<Shared>,
}

/// A request being served on a connection; held until its response body
/// is done (or dropped).
pub struct InRequest {
    shared: Arc<Shared>,
}

impl HeadDone {
    /// A request head was complete: its request is being served until the
    /// returned guard is dropped.
    pub fn mark(&self) -> InRequest {
        let mut inner = self.shared.lock();
        inner.active += 1;
        if inner.phase != Phase::H2 {
            inner.phase = Phase::Request;
        }
        drop(inner);
        InRequest {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.active = inner.active.saturating_sub(1);
        if inner.active == 0 && inner.phase == Phase::Request {
            inner.phase = Phase::Idle {
                since: Instant::now(),
            };
        }
    }
}

impl Handle {
    /// What the service calls when a request head is complete.
    pub fn head_done(&self) -> HeadDone {
        HeadDone {
            shared: self.shared.clone(),
        }
    }

    /// Completes when a request head has been arriving for longer than
    /// `head`, or nothing happened on the connection for `idle`; never for
    /// HTTP/2. It looks every tenth of the shorter limit (10 ms to 1 s), so
    /// requests themselves never wake it.
    pub async fn watch(&self, head: Duration, idle: Duration) -> Expired {
        let tick = (head.min(idle) / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let phase = self.shared.lock().phase;
            let now = Instant::now();
            match phase {
                Phase::Head { since } if now >= since + head => return Expired::Head,
                Phase::Idle { since } if now >= since + idle => return Expired::Idle,
                Phase::H2 => std::future::pending().await,
                _ => {}
            }
        }
    }

    /// After the connection was given up for a slow request head (or hyper
    /// gave it up): answers 408 if a request was partly received, then
    /// closes.
    pub async fn header_timeout(self, body: &[u8]) {
        let Ok(shared) = Arc::try_unwrap(self.shared) else {
            return;
        };
        let inner = shared
            .inner
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        if !matches!(inner.phase, Phase::Head { .. }) {
            return;
        }
        let mut stream = inner.stream;
        let head = format!(
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let write = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            stream.shutdown().await
        };
        // A client that does not even read its 408 gets a second only.
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
}
