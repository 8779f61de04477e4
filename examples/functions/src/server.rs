//! The HTTP server shared by both sample functions.
//!
//! Environment (read by [`serve_from_env`] and [`run`]):
//!
//! * `PORT` — TCP port to listen on (default 8080; `0` picks a free port).
//! * `BIND_ADDR` — IP address to listen on (default `0.0.0.0`).
//! * `STARTUP_DELAY_MS` — wait this long before binding (cold-start tests).
//! * `WORKER_THREADS` — tokio worker threads (default: available cores).
//!
//! On start the server prints exactly one line to stdout,
//! `listening on <ip>:<port>`, naming the address actually bound. On SIGTERM
//! or SIGINT it stops accepting, lets in-flight requests finish (closing idle
//! keep-alive connections), and returns `Ok(())`, so the process exits 0.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Port used when `PORT` is unset.
pub const DEFAULT_PORT: u16 = 8080;

/// Upper bound on how long in-flight requests may take to finish after a
/// shutdown signal (Kubernetes would SIGKILL us eventually anyway).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// Reads and parses an environment variable; unset or empty means `None`.
pub fn env_parse<T>(name: &str) -> anyhow::Result<Option<T>>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("invalid {name}={v:?}: {e}")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("invalid {name}: {e}")),
    }
}

/// The address to listen on, from `BIND_ADDR` and `PORT`.
pub fn listen_addr() -> anyhow::Result<SocketAddr> {
    let ip = env_parse::<IpAddr>("BIND_ADDR")?.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let port = env_parse::<u16>("PORT")?.unwrap_or(DEFAULT_PORT);
    Ok(SocketAddr::new(ip, port))
}

/// The instance name: `POD_NAME`, else `HOSTNAME`, else the OS hostname.
pub fn instance_name() -> String {
    let non_empty = |s: String| {
        let s = s.trim().to_owned();
        (!s.is_empty()).then_some(s)
    };
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(non_empty))
        .or_else(|| {
            ["/proc/sys/kernel/hostname", "/etc/hostname"]
                .iter()
                .find_map(|p| std::fs::read_to_string(p).ok().and_then(non_empty))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Builds a tokio runtime (`WORKER_THREADS`, default: available cores), runs
/// `main` on it, and maps an error to exit code 1 (printed to stderr).
pub fn run<Fut>(main: impl FnOnce() -> Fut) -> ExitCode
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let result = env_parse::<usize>("WORKER_THREADS").and_then(|threads| {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = threads.filter(|n| *n > 0) {
            builder.worker_threads(n);
        }
        let rt = builder
            .enable_all()
            .build()
            .context("building tokio runtime")?;
        rt.block_on(main())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT, installed once so no signal is missed between phases.
pub struct ShutdownSignals {
    term: Signal,
    int: Signal,
}

impl ShutdownSignals {
    /// Installs the handlers; must be called inside a tokio runtime.
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    /// Resolves with the signal's name once SIGTERM or SIGINT arrives.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Everything a function binary needs: installs signal handlers, honours
/// `STARTUP_DELAY_MS`, binds [`listen_addr`], and serves `handler` until
/// SIGTERM/SIGINT.
pub async fn serve_from_env<F, Fut, B>(handler: F) -> anyhow::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut signals = ShutdownSignals::install()?;
    let addr = listen_addr()?;
    let delay = env_parse::<u64>("STARTUP_DELAY_MS")?.unwrap_or(0);
    if delay > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
            sig = signals.recv() => {
                println!("received {sig} during startup delay, exiting");
                return Ok(());
            }
        }
    }
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading bound address")?;
    println!("listening on {local}");
    serve(listener, handler, signals.recv()).await;
    Ok(())
}

/// Serves connections from `listener` with `handler` until `shutdown`
/// resolves, then drains in-flight requests (bounded by [`SHUTDOWN_GRACE`]).
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    handler: F,
    shutdown: impl Future<Output = &'static str>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();

    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            sig = &mut shutdown => {
                println!("received {sig}, shutting down");
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Typically EMFILE/ENFILE: back off instead of spinning.
                    eprintln!("accept error: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Latency matters more than segment count for these tiny responses.
        let _ = stream.set_nodelay(true);
        let service = service_fn(handler.clone());
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            // Connection errors (client resets, timeouts) are not ours to log.
            let _ = watcher.watch(conn).await;
        });
    }
    // Stop accepting: new connections are refused from here on.
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            eprintln!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}");
        }
    }
}
