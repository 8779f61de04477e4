//! Connections to instances.
//!
//! A keep-alive HTTP/1.1 client connection gets instance connections of its
//! own (affinity): from its second request on, its requests go out on
//! connections that its own task polls, beside the client connection. No
//! pool checkout, no channel hand-off to another task and no cross-thread
//! wake-up per request: in `make bench-activator` that is about a quarter
//! of a hyper proxy's CPU per request (docs/benchmarks.md, "hyper floor").
//!
//! A connection's first request, and every HTTP/2 stream, use the shared
//! keep-alive pool instead, so a client that sends one request per
//! connection reuses pooled instance connections rather than opening (and
//! leaving in TIME_WAIT) one of its own each time.
//!
//! Lifecycle: a client connection's [`Upstreams`] is made by the accept
//! loop, driven by [`Upstreams::drive`] in the connection's task, and
//! dropped with it, which closes its instance connections. It keeps at most
//! [`MAX_CONNECTIONS`]; an idle one unused for the pool's idle timeout is
//! closed the next time the client connection sends a request.

use std::{
    convert::Infallible,
    error::Error as StdError,
    fmt,
    future::{Future, poll_fn},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    task::{Poll, Waker},
    time::Duration,
};

use http::{HeaderValue, Request, Response, header::HOST, uri::Authority};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, Connection, SendRequest},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioIo,
};
use tokio::{net::TcpStream, time::Instant};

use crate::body::RequestBody;

/// The shared keep-alive pool.
pub type Pool = Client<HttpConnector, RequestBody>;

/// Most instance connections one client connection keeps (it usually
/// needs one: consecutive requests mostly go to the same instance).
pub const MAX_CONNECTIONS: usize = 4;

/// Sending a request to an instance failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection to the instance could be made.
    Connect(io::Error),
    /// The connection failed while the request was on it.
    Connection(hyper::Error),
    /// The shared pool failed (to connect, or later).
    Pool(hyper_util::client::legacy::Error),
}

impl SendError {
    /// The request never reached the instance: it can go to another one.
    pub fn is_connect(&self) -> bool {
        match self {
            Self::Connect(_) => true,
            Self::Connection(_) => false,
            Self::Pool(error) => error.is_connect(),
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(_) => f.write_str("connecting to the instance failed"),
            Self::Connection(_) => f.write_str("the connection to the instance failed"),
            Self::Pool(error) => error.fmt(f),
        }
    }
}

impl StdError for SendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Connect(error) => Some(error),
            Self::Connection(error) => Some(error),
            Self::Pool(error) => error.source(),
        }
    }
}

/// The instance connections of one client connection.
#[derive(Clone)]
pub struct Upstreams {
    shared: Arc<Mutex<Slots>>,
}

#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    /// The client connection's task, woken when a connection is added.
    waker: Option<Waker>,
    /// Requests the client connection has made.
    requests: u64,
    next_id: u64,
}

struct Slot {
    id: u64,
    addr: SocketAddr,
    /// `None` while a request (and its response body) uses it.
    sender: Option<SendRequest<RequestBody>>,
    conn: Pin<Box<Connection<TokioIo<TcpStream>, RequestBody>>>,
    /// When it was last given back.
    used: Instant,
}

/// A connection in use by one request; given back when dropped (at the end
/// of the response body).
pub struct Checkout {
    owner: Weak<Mutex<Slots>>,
    id: u64,
    sender: Option<SendRequest<RequestBody>>,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let (Some(owner), Some(sender)) = (self.owner.upgrade(), self.sender.take()) else {
            return;
        };
        let mut slots = lock(&owner);
        if let Some(slot) = slots.slots.iter_mut().find(|s| s.id == self.id) {
            slot.sender = Some(sender);
            slot.used = Instant::now();
        }
    }
}

fn lock(slots: &Mutex<Slots>) -> MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstreams {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Mutex::new(Slots::default())),
        }
    }

    /// Counts a request of the client connection; whether it may use the
    /// connection's own instance connections (HTTP/1.1, not the first).
    pub fn affine(&self, http1: bool) -> bool {
        let mut slots = lock(&self.shared);
        slots.requests += 1;
        http1 && slots.requests > 1
    }

    /// Polls the instance connections; never completes. The client
    /// connection's task runs it beside the connection.
    pub async fn drive(&self) -> Infallible {
        poll_fn(|cx| {
            let mut slots = lock(&self.shared);
            if !slots
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                slots.waker = Some(cx.waker().clone());
            }
            // A finished connection (closed by the instance, or failed) is
            // gone; its sender, if checked out, is dropped on return.
            slots
                .slots
                .retain_mut(|slot| slot.conn.as_mut().poll(cx).is_pending());
            Poll::Pending
        })
        .await
    }

    /// Sends `req`, its target in origin form (the path only), to the
    /// instance at `addr` on one of these connections, or a new one. A reused connection the instance closed before taking
    /// the request gets the request on a new connection instead.
    pub async fn send(
        &self,
        addr: SocketAddr,
        authority: &Authority,
        mut req: Request<RequestBody>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<(Response<Incoming>, Checkout), SendError> {
        name_host(&mut req, authority);
        if let Some((id, mut sender)) = self.take_idle(addr, idle_timeout)
            && sender.ready().await.is_ok()
        {
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, self.checkout(id, sender))),
                Err(mut error) => match error.take_message() {
                    // Not sent: closed while idle. A new connection below.
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Connection(error.into_error())),
                },
            }
        }
        // A new connection is the rare case: its future is boxed.
        let (id, mut sender) = Box::pin(self.connect(addr, connect_timeout)).await?;
        match sender.send_request(req).await {
            Ok(response) => Ok((response, self.checkout(id, sender))),
            Err(error) => Err(SendError::Connection(error)),
        }
    }

    fn checkout(&self, id: u64, sender: SendRequest<RequestBody>) -> Checkout {
        Checkout {
            owner: Arc::downgrade(&self.shared),
            id,
            sender: Some(sender),
        }
    }

    /// An idle connection to `addr`, taken out; idle ones past
    /// `idle_timeout` and closed ones are dropped on the way.
    fn take_idle(
        &self,
        addr: SocketAddr,
        idle_timeout: Duration,
    ) -> Option<(u64, SendRequest<RequestBody>)> {
        let mut slots = lock(&self.shared);
        let now = Instant::now();
        slots.slots.retain(|slot| match &slot.sender {
            Some(sender) => !sender.is_closed() && now.duration_since(slot.used) < idle_timeout,
            None => true,
        });
        let slot = slots
            .slots
            .iter_mut()
            .find(|s| s.addr == addr && s.sender.is_some())?;
        Some((slot.id, slot.sender.take()?))
    }

    /// A new connection to `addr`, checked out, its driving left to
    /// [`Self::drive`]. Past [`MAX_CONNECTIONS`] the least recently used
    /// idle one is closed.
    async fn connect(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<(u64, SendRequest<RequestBody>), SendError> {
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(SendError::Connect(error)),
            Err(_) => {
                return Err(SendError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {connect_timeout:?}"),
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Connection)?;
        let mut slots = lock(&self.shared);
        if slots.slots.len() >= MAX_CONNECTIONS
            && let Some(oldest) = slots
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.sender.is_some())
                .min_by_key(|(_, s)| s.used)
                .map(|(i, _)| i)
        {
            slots.slots.swap_remove(oldest);
        }
        slots.next_id += 1;
        let id = slots.next_id;
        slots.slots.push(Slot {
            id,
            addr,
            sender: None,
            conn: Box::pin(conn),
            used: Instant::now(),
        });
        if let Some(waker) = &slots.waker {
            waker.wake_by_ref();
        }
        Ok((id, sender))
    }
}

/// Sends `req` (absolute-form URI) through the shared pool.
pub async fn pooled(
    pool: &Pool,
    req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Option<Checkout>), SendError> {
    pool.request(req)
        .await
        .map(|response| (response, None))
        .map_err(SendError::Pool)
}

/// The request line carries the path only, so Host names the instance if
/// the client gave none (as the pool does from an absolute target).
fn name_host(req: &mut Request<RequestBody>, authority: &Authority) {
    if !req.headers().contains_key(HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(HOST, host);
    }
}
