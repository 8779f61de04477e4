//! Readiness probes, by the activator itself: every 25 ms for the first
//! [`FAST_PROBING`], so a cold-started instance takes its first request the
//! moment it listens, not at kubelet's next one-second probe; after that the
//! interval doubles up to [`MAX_PROBE_INTERVAL`], so an instance that never
//! becomes ready costs one probe a second, not forty.
//!
//! A probe is an HTTP `GET` of the pod's readiness path answered with 2xx
//! or 3xx, or, without a path, a TCP connect to the pod's port. One prober
//! runs per instance that needs one: new instances, and instances a
//! connection failed to. It stops at the first success, or when the
//! instance retires or goes away.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{
    Request,
    header::{HOST, USER_AGENT},
};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::{
    registry::{Entry, SpawnProbe},
    throttle::{InstanceId, ProbeTarget},
};

/// Time between probes of one instance, at first.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(25);
/// How long an instance is probed at [`PROBE_INTERVAL`]: longer than
/// nearly every cold start.
pub const FAST_PROBING: Duration = Duration::from_secs(30);
/// The longest time between probes, once backed off.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The time before the next probe, after waiting `previous` before this
/// one, `elapsed` since probing started.
pub fn next_interval(previous: Duration, elapsed: Duration) -> Duration {
    if elapsed < FAST_PROBING {
        PROBE_INTERVAL
    } else {
        (previous * 2).clamp(PROBE_INTERVAL, MAX_PROBE_INTERVAL)
    }
}
/// Longest one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts probers as tokio tasks, on the runtime this is called on (the
/// main one), whichever proxy worker asks for a probe.
pub fn spawner() -> SpawnProbe {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => Box::new(move |entry, instance| {
            runtime.spawn(run(entry, instance));
        }),
        Err(_) => Box::new(|entry, instance| {
            tokio::spawn(run(entry, instance));
        }),
    }
}

/// Probes `instance` until it answers (or no longer needs probing).
pub async fn run(entry: Arc<Entry>, instance: InstanceId) {
    let started = tokio::time::Instant::now();
    let mut interval = Duration::ZERO;
    let mut attempts: u64 = 0;
    loop {
        tokio::time::sleep(interval).await;
        interval = next_interval(interval, started.elapsed());
        let Some(target) = entry.probe_target(instance) else {
            return;
        };
        attempts += 1;
        if probe(&target).await {
            debug!(
                function = %entry.function(),
                addr = %target.addr,
                attempts,
                after_ms = started.elapsed().as_millis() as u64,
                "instance ready"
            );
            entry.probe_succeeded(instance);
            return;
        }
    }
}

/// One probe of `target`.
pub async fn probe(target: &ProbeTarget) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(target.addr).await.ok()?;
        let Some(path) = &target.path else {
            return Some(true);
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        let conn = tokio::spawn(conn);
        let request = Request::get(path.as_str())
            .header(HOST, target.addr.to_string())
            .header(USER_AGENT, "thaw-activator-probe")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await;
        drop(sender);
        conn.abort();
        let status = response.ok()?.status();
        Some(status.is_success() || status.is_redirection())
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        net::SocketAddr,
        sync::atomic::{AtomicU16, Ordering},
    };

    use http::{Response, StatusCode};
    use http_body_util::Full;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn probing_backs_off_after_the_fast_phase() {
        let mut interval = Duration::ZERO;
        let mut elapsed = Duration::ZERO;
        let mut probes = 0;
        while elapsed < FAST_PROBING {
            interval = next_interval(interval, elapsed);
            assert_eq!(interval, PROBE_INTERVAL);
            elapsed += interval;
            probes += 1;
        }
        assert_eq!(probes, 1200, "every 25 ms for 30 s");
        let mut seen = Vec::new();
        for _ in 0..10 {
            interval = next_interval(interval, elapsed);
            elapsed += interval;
            seen.push(interval.as_millis());
        }
        assert_eq!(seen, [50, 100, 200, 400, 800, 1000, 1000, 1000, 1000, 1000]);
    }

    /// An HTTP server answering `status` (read when each request arrives).
    async fn server(status: Arc<AtomicU16>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let status = status.clone();
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |_req| {
                        let code = status.load(Ordering::SeqCst);
                        async move {
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = StatusCode::from_u16(code).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    }),
                ));
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probes_want_2xx_or_3xx() {
        let status = Arc::new(AtomicU16::new(200));
        let addr = server(status.clone()).await;
        let target = ProbeTarget {
            addr,
            path: Some("/healthz".into()),
        };
        assert!(probe(&target).await);
        status.store(302, Ordering::SeqCst);
        assert!(probe(&target).await);
        status.store(503, Ordering::SeqCst);
        assert!(!probe(&target).await);
        status.store(404, Ordering::SeqCst);
        assert!(!probe(&target).await);
    }

    #[tokio::test]
    async fn tcp_probes_want_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(probe(&ProbeTarget { addr, path: None }).await);
        drop(listener);
        assert!(!probe(&ProbeTarget { addr, path: None }).await);
        // HTTP probes of a closed port fail too.
        assert!(
            !probe(&ProbeTarget {
                addr,
                path: Some("/".into())
            })
            .await
        );
    }
}
