//! Steady load across several activators, as a Service spreads it: clients
//! pick among the activators whose `/readyz` answers 200 (polled like an
//! endpoints controller would), some on keep-alive connections they leave
//! when told `Connection: close`, some on a new connection per request.
//! Every request's outcome is counted, so a test can demand zero failures.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, header::CONNECTION};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, task::JoinHandle, time::timeout};

use crate::http::get;

/// How often readiness is polled: endpoints in a cluster lag by about this.
const READINESS_PERIOD: Duration = Duration::from_millis(50);
/// Longest one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Endpoint {
    data: SocketAddr,
    admin: SocketAddr,
    ready: bool,
}

/// The activators a client may pick, and which of them are ready.
#[derive(Clone, Default)]
pub struct Endpoints {
    inner: Arc<Mutex<Vec<Endpoint>>>,
    next: Arc<AtomicUsize>,
}

impl Endpoints {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Endpoint>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an activator (not ready until its `/readyz` says so).
    pub fn add(&self, data: SocketAddr, admin: SocketAddr) {
        self.lock().push(Endpoint {
            data,
            admin,
            ready: false,
        });
    }

    /// One address that is always picked and never polled: a Service's
    /// address, behind which kube-proxy does the spreading and the endpoint
    /// readiness.
    pub fn fixed(data: SocketAddr) -> Endpoints {
        let endpoints = Endpoints::default();
        endpoints.lock().push(Endpoint {
            data,
            admin: data,
            ready: true,
        });
        endpoints
    }

    /// Removes an activator (its process is gone).
    pub fn remove(&self, data: SocketAddr) {
        self.lock().retain(|e| e.data != data);
    }

    /// The next ready activator, round robin.
    pub fn pick(&self) -> Option<SocketAddr> {
        let ready: Vec<SocketAddr> = self
            .lock()
            .iter()
            .filter(|e| e.ready)
            .map(|e| e.data)
            .collect();
        if ready.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        ready.get(n % ready.len()).copied()
    }

    /// Polls every activator's `/readyz` until the returned task is aborted.
    pub fn watch_readiness(&self) -> JoinHandle<()> {
        let endpoints = self.clone();
        tokio::spawn(async move {
            loop {
                let admins: Vec<SocketAddr> = endpoints.lock().iter().map(|e| e.admin).collect();
                for admin in admins {
                    let ready = get(admin, "localhost", "/readyz", Duration::from_secs(1))
                        .await
                        .is_ok_and(|r| r.status == 200);
                    for e in endpoints.lock().iter_mut().filter(|e| e.admin == admin) {
                        e.ready = ready;
                    }
                }
                tokio::time::sleep(READINESS_PERIOD).await;
            }
        })
    }
}

/// What the load sends.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Clients on keep-alive connections.
    pub keep_alive_clients: usize,
    /// Clients opening a new connection per request.
    pub fresh_clients: usize,
    pub host: String,
    pub path: String,
    /// Pause of each client between its requests.
    pub pause: Duration,
}

/// Requests that answered 200, and how the others failed.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub failed: Vec<String>,
}

/// Load running until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    clients: Vec<JoinHandle<Tally>>,
}

impl Load {
    pub fn start(endpoints: &Endpoints, options: &LoadOptions) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for keep_alive in std::iter::repeat_n(true, options.keep_alive_clients)
            .chain(std::iter::repeat_n(false, options.fresh_clients))
        {
            let client = Client {
                endpoints: endpoints.clone(),
                options: options.clone(),
                stop: stop.clone(),
                ok: ok.clone(),
            };
            clients.push(tokio::spawn(client.run(keep_alive)));
        }
        Load { stop, ok, clients }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops every client after its current request; all outcomes.
    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for client in self.clients {
            match client.await {
                Ok(t) => {
                    tally.ok += t.ok;
                    tally.failed.extend(t.failed);
                }
                Err(e) => tally.failed.push(format!("client task: {e}")),
            }
        }
        tally
    }
}

struct Client {
    endpoints: Endpoints,
    options: LoadOptions,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
}

impl Client {
    async fn run(self, keep_alive: bool) -> Tally {
        let mut tally = Tally::default();
        let mut conn: Option<(SocketAddr, SendRequest<Full<Bytes>>)> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(addr) = conn.as_ref().map(|c| c.0).or_else(|| self.endpoints.pick()) else {
                // No ready activator at all is a failure of the topology too,
                // but the test decides: count it only if it lasts.
                tokio::time::sleep(READINESS_PERIOD).await;
                continue;
            };
            let outcome = if keep_alive {
                self.on_keep_alive(addr, &mut conn).await
            } else {
                get(
                    addr,
                    &self.options.host,
                    &self.options.path,
                    REQUEST_TIMEOUT,
                )
                .await
                .map_err(|e| format!("{e:#}"))
                .and_then(|r| {
                    (r.status == 200)
                        .then_some(())
                        .ok_or_else(|| format!("{} {}", r.status, r.body))
                })
            };
            match outcome {
                Ok(()) => {
                    tally.ok += 1;
                    self.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => tally.failed.push(format!("via {addr}: {why}")),
            }
            tokio::time::sleep(self.options.pause).await;
        }
        tally
    }

    /// One request on the client's keep-alive connection (opened first if
    /// needed); the connection is dropped when the server says close.
    async fn on_keep_alive(
        &self,
        addr: SocketAddr,
        conn: &mut Option<(SocketAddr, SendRequest<Full<Bytes>>)>,
    ) -> Result<(), String> {
        if conn.is_none() {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(connection);
            *conn = Some((addr, sender));
        }
        let Some((_, sender)) = conn.as_mut() else {
            return Err("no connection".into());
        };
        let request = Request::get(self.options.path.as_str())
            .header("host", self.options.host.as_str())
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let sent = timeout(REQUEST_TIMEOUT, async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let close = response
                .headers()
                .get(CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, close, body))
        })
        .await;
        match sent {
            Ok(Ok((status, close, body))) => {
                if close {
                    *conn = None;
                }
                if status == 200 {
                    Ok(())
                } else {
                    Err(format!("{status} {}", String::from_utf8_lossy(&body)))
                }
            }
            Ok(Err(e)) => {
                *conn = None;
                Err(format!("keep-alive request: {e}"))
            }
            Err(_) => {
                *conn = None;
                Err("keep-alive request timed out".into())
            }
        }
    }
}
