//! A client connection that can still be written to after hyper gave up on
//! it, so a client too slow to send its request headers gets `408 Request
//! Timeout` instead of a silently closed socket.
//!
//! hyper enforces `--header-read-timeout` but then only drops the
//! connection. [`Tracked`] shares the socket with the accept loop, and
//! remembers whether bytes of a request arrived since the last response
//! was written: when the header timeout fires mid-request, the accept loop
//! answers 408; an idle keep-alive connection is closed without a word.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

struct Inner {
    stream: TcpStream,
    /// Bytes were read since the last write: a request is partly received.
    mid_request: bool,
}

/// The socket as hyper sees it.
pub struct Tracked {
    inner: Arc<Mutex<Inner>>,
}

/// The accept loop's share of the socket.
pub struct Handle {
    inner: Arc<Mutex<Inner>>,
}

/// Wraps `stream`; the [`Handle`] outlives hyper's use of it.
pub fn track(stream: TcpStream) -> (Tracked, Handle) {
    let inner = Arc::new(Mutex::new(Inner {
        stream,
        mid_request: false,
    }));
    (
        Tracked {
            inner: inner.clone(),
        },
        Handle { inner },
    )
}

impl Tracked {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut inner = self.lock();
        let before = buf.filled().len();
        let poll = Pin::new(&mut inner.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            inner.mid_request = true;
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
        let mut inner = self.lock();
        let poll = Pin::new(&mut inner.stream).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            inner.mid_request = false;
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.lock();
        let poll = Pin::new(&mut inner.stream).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            inner.mid_request = false;
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().stream).poll_shutdown(cx)
    }
}

impl Handle {
    /// After hyper gave up on the connection for a header timeout: answers
    /// 408 if a request was partly received, then closes.
    pub async fn header_timeout(self, body: &[u8]) {
        let Ok(inner) = Arc::try_unwrap(self.inner) else {
            return;
        };
        let inner = inner.into_inner().unwrap_or_else(PoisonError::into_inner);
        if !inner.mid_request {
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
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
    }
}
