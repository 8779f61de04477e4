//! Streaming bodies. Nothing here buffers a whole body: request bodies flow
//! from the client's socket to the instance frame by frame, response bodies
//! back the same way.
//!
//! - [`RequestBody`]: a client's request body on its way to an instance. It
//!   enforces `--max-body-bytes` on streamed bodies and `--body-idle-timeout`
//!   between frames, and, when the instance could not be connected to, gives
//!   the untouched body back so the request can be retried elsewhere.
//! - [`ResponseBody`]: what the activator answers with: its own small JSON,
//!   or an instance's response streamed through, holding the request's
//!   [`Lease`] until it ends and cut at the request's deadline.

use std::{
    error::Error as StdError,
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep, sleep, sleep_until};

use crate::{conn::InRequest, registry::Lease, upstream::Checkout};

/// Why a request body was cut.
#[derive(Debug)]
pub enum RequestBodyError {
    /// It grew past `--max-body-bytes`.
    TooLarge { limit: u64 },
    /// No bytes came for `--body-idle-timeout`.
    Idle { timeout: Duration },
    /// Reading it from the client failed (the client went away, or sent
    /// a malformed chunk).
    Client(hyper::Error),
}

impl fmt::Display for RequestBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { limit } => {
                write!(f, "the request body is larger than {limit} bytes")
            }
            Self::Idle { timeout } => write!(
                f,
                "the client sent no request body bytes for {}",
                thaw_core::GoStyle(*timeout)
            ),
            Self::Client(error) => write!(f, "reading the request body: {error}"),
        }
    }
}

impl StdError for RequestBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Client(error) => Some(error),
            _ => None,
        }
    }
}

/// Where an untouched body waits to be retried.
pub type GiveBack = Arc<Mutex<Option<Incoming>>>;

/// A client's request body on its way to an instance.
pub struct RequestBody {
    inner: Option<Incoming>,
    /// A body read in full beforehand (to be sent again elsewhere, see
    /// [`crate::fresh`]): sent as one frame.
    buffered: Option<Bytes>,
    /// Bytes passed on so far.
    seen: u64,
    limit: u64,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// A frame was taken from `inner`: the body cannot be replayed.
    touched: bool,
    give_back: Option<GiveBack>,
}

impl RequestBody {
    /// Wraps `inner`. `give_back`, if given, receives the body when this
    /// wrapper is dropped before any frame was read from it.
    pub fn new(inner: Incoming, limit: u64, idle: Duration, give_back: Option<GiveBack>) -> Self {
        Self {
            inner: Some(inner),
            buffered: None,
            seen: 0,
            limit,
            idle,
            timer: None,
            touched: false,
            give_back,
        }
    }

    /// A body already read in full.
    pub fn buffered(bytes: Bytes) -> Self {
        let mut body = Self::empty();
        body.buffered = (!bytes.is_empty()).then_some(bytes);
        body
    }

    /// An empty body (for a request without one).
    pub fn empty() -> Self {
        Self {
            inner: None,
            buffered: None,
            seen: 0,
            limit: 0,
            idle: Duration::ZERO,
            timer: None,
            touched: false,
            give_back: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        if let Some(bytes) = this.buffered.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.touched = true;
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.limit {
                        this.inner = None;
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge {
                            limit: this.limit,
                        })));
                    }
                }
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(Instant::now() + this.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.touched = true;
                this.inner = None;
                Poll::Ready(Some(Err(RequestBodyError::Client(error))))
            }
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.touched = true;
                    this.inner = None;
                    return Poll::Ready(Some(Err(RequestBodyError::Idle { timeout: idle })));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(bytes) = &self.buffered {
            return SizeHint::with_exact(bytes.len() as u64);
        }
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if self.touched {
            return;
        }
        if let (Some(slot), Some(inner)) = (self.give_back.take(), self.inner.take()) {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(inner);
        }
    }
}

/// The request body error behind `error`, if the request failed because of it.
pub fn request_body_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a RequestBodyError> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<RequestBodyError>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// What the activator answers with.
pub struct ResponseBody {
    kind: Kind,
    /// Marks the client connection busy until the body is done.
    _serving: Option<InRequest>,
}

enum Kind {
    /// The activator's own answer (errors).
    Full(Full<Bytes>),
    /// An instance's response, streamed through.
    Upstream(Box<Upstream>),
}

/// An instance's response body in flight to the client.
pub struct Upstream {
    body: Incoming,
    /// The request's slot on the instance, held until the body ends.
    lease: Option<Lease>,
    /// The instance connection, given back with the lease.
    checkout: Option<Checkout>,
    deadline: Instant,
    /// Made the first time the body makes us wait.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The response body outlived the request's `spec.timeout`.
#[derive(Debug)]
pub struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the response outlived the function's timeout and was cut")
    }
}

impl StdError for DeadlineExceeded {}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Full::new(bytes.into())),
            _serving: None,
        }
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// Keeps the client connection marked busy until this body is done.
    pub fn hold(&mut self, serving: InRequest) {
        self._serving = Some(serving);
    }

    /// `body` from the instance `lease` points at, cut at `deadline`.
    pub fn upstream(
        body: Incoming,
        lease: Lease,
        checkout: Option<Checkout>,
        deadline: Instant,
    ) -> Self {
        let held = !body.is_end_stream();
        Self {
            kind: Kind::Upstream(Box::new(Upstream {
                body,
                lease: held.then_some(lease),
                checkout: checkout.filter(|_| held),
                deadline,
                timer: None,
            })),
            _serving: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Kind::Upstream(upstream) => {
                // The deadline is looked at only when the body makes us wait
                // (or has gone past it), so a body that is ready at once
                // costs no timer.
                let expired = match Pin::new(&mut upstream.body).poll_frame(cx) {
                    Poll::Ready(frame) => {
                        if upstream.lease.is_none() || Instant::now() < upstream.deadline {
                            if !matches!(frame, Some(Ok(_))) {
                                // The end, or the instance failed: the slot
                                // and the connection are free.
                                upstream.lease = None;
                                upstream.checkout = None;
                            }
                            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
                        }
                        true
                    }
                    Poll::Pending if upstream.lease.is_some() => {
                        let deadline = upstream.deadline;
                        upstream
                            .timer
                            .get_or_insert_with(|| Box::pin(sleep_until(deadline)))
                            .as_mut()
                            .poll(cx)
                            .is_ready()
                    }
                    Poll::Pending => false,
                };
                if expired {
                    upstream.lease = None;
                    upstream.checkout = None;
                    return Poll::Ready(Some(Err(Box::new(DeadlineExceeded))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(full) => full.is_end_stream(),
            Kind::Upstream(upstream) => upstream.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(full) => full.size_hint(),
            Kind::Upstream(upstream) => upstream.body.size_hint(),
        }
    }
}
