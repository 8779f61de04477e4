//! Stats for the autoscaler: an [`ActivatorReport`] every interval (1 s),
//! and at once when a request starts waiting in an empty queue (a poke),
//! POSTed as JSON to every `--autoscaler-url`.
//!
//! Each POST carries the activator's ServiceAccount token ([`TokenFile`])
//! and a gzip body (`Content-Encoding: gzip`): a report grows with the
//! Functions an activator serves, and compressed it stays far below the
//! operator's limit.
//!
//! Sending never blocks the data path: the report is built by locking each
//! function briefly, and every POST runs in its own task with a short
//! timeout. A URL whose host resolves to several addresses (a headless
//! Service of the operator) gets the report at every one, so every operator
//! replica, the leader among them, hears every activator.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::future::join_all;
use http::{
    HeaderValue, Method, Request, Uri,
    header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HOST},
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::Full;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use thaw_core::{ActivatorReport, REPORT_VERSION};
use tracing::{debug, info, warn};

use crate::{metrics::Metrics, registry::Registry, token::TokenFile};

/// Pokes closer together than this are sent as one report.
pub const MIN_POKE_GAP: Duration = Duration::from_millis(20);

/// One `--autoscaler-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    host: String,
    port: u16,
    authority: Authority,
    path: PathAndQuery,
}

impl Target {
    /// Parses `http://host[:port]/path`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--autoscaler-url {url:?} is not a URL"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            bail!("--autoscaler-url {url:?} must start with http://");
        }
        let authority = uri
            .authority()
            .cloned()
            .with_context(|| format!("--autoscaler-url {url:?} has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            url: url.to_owned(),
            host,
            port: authority.port_u16().unwrap_or(80),
            authority,
            path: uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        })
    }
}

/// Builds and sends reports.
pub struct Reporter {
    registry: Arc<Registry>,
    id: String,
    targets: Vec<Target>,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    /// Random per process: tells the operator a restarted activator from
    /// the one before it, from any of its reports.
    epoch: u64,
    sequence: u64,
    last: Instant,
    metrics: Metrics,
    /// Addresses whose last send failed, so a failure is logged once.
    failing: Arc<Mutex<HashSet<String>>>,
    /// Sent as `Authorization: Bearer`; none without a token file.
    token: Option<TokenFile>,
}

/// One encoded report and its credentials, as every POST of it sends them.
#[derive(Clone)]
struct Payload {
    body: Bytes,
    authorization: Option<HeaderValue>,
}

impl Reporter {
    pub fn new(
        registry: Arc<Registry>,
        id: String,
        targets: Vec<Target>,
        timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        let metrics = registry.shared().metrics.clone();
        Self {
            registry,
            id,
            targets,
            client,
            timeout,
            epoch: rand::random(),
            sequence: 0,
            last: Instant::now(),
            metrics,
            failing: Arc::default(),
            token: None,
        }
    }

    /// Sends the token in `file` with every report.
    pub fn with_token(mut self, file: TokenFile) -> Self {
        self.token = Some(file);
        self
    }

    /// The next report: the interval since the previous one ends now.
    pub fn next(&mut self, poke: bool, leaving: bool) -> ActivatorReport {
        let now = Instant::now();
        let interval = now.saturating_duration_since(self.last);
        self.last = now;
        let report = ActivatorReport {
            version: REPORT_VERSION,
            activator: self.id.clone(),
            epoch: self.epoch,
            sequence: self.sequence,
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            poke,
            leaving,
            functions: self.registry.report(interval, now),
        };
        self.sequence += 1;
        report
    }

    /// Sends a report every `interval` and at once on a poke, until `stop`.
    pub async fn run(&mut self, interval: Duration, stop: impl Future<Output = ()>) {
        let poke = self.registry.shared().clone();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            let poked = tokio::select! {
                biased;
                () = &mut stop => return,
                () = poke.poke.notified() => true,
                _ = tick.tick() => false,
            };
            if poked {
                let since = self.last.elapsed();
                if since < MIN_POKE_GAP {
                    tokio::time::sleep(MIN_POKE_GAP - since).await;
                }
            }
            let report = self.next(poked, false);
            if poked {
                debug!(sequence = report.sequence, "poke: reporting at once");
            }
            self.send(report);
        }
    }

    /// Sends `report` to every target in the background.
    pub fn send(&self, report: ActivatorReport) {
        let Some(body) = self.encode(&report) else {
            return;
        };
        for target in &self.targets {
            tokio::spawn(post_all(
                self.client.clone(),
                target.clone(),
                body.clone(),
                self.timeout,
                self.metrics.clone(),
                self.failing.clone(),
            ));
        }
    }

    /// Sends the last report, `leaving: true`, and waits for it to arrive
    /// (or time out).
    pub async fn leave(&mut self) {
        let report = self.next(false, true);
        let Some(body) = self.encode(&report) else {
            return;
        };
        let sends = self.targets.iter().map(|target| {
            post_all(
                self.client.clone(),
                target.clone(),
                body.clone(),
                self.timeout,
                self.metrics.clone(),
                self.failing.clone(),
            )
        });
        join_all(sends).await;
        info!(sequence = report.sequence, "sent the leaving report");
    }

    fn encode(&self, report: &ActivatorReport) -> Option<Payload> {
        match encode(report) {
            Ok(body) => Some(Payload {
                body,
                authorization: self.token.as_ref().and_then(TokenFile::header),
            }),
            Err(error) => {
                warn!(%error, "encoding a stats report");
                None
            }
        }
    }
}

/// A report as gzip-compressed JSON.
pub fn encode(report: &ActivatorReport) -> std::io::Result<Bytes> {
    use std::io::Write as _;
    // The JSON whole, then one write: serde_json writes in small pieces,
    // and each write into the encoder is a compression pass over (and a
    // zeroing of) its output buffer.
    let json = serde_json::to_vec(report)?;
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(4096), flate2::Compression::fast());
    encoder.write_all(&json)?;
    Ok(Bytes::from(encoder.finish()?))
}

/// POSTs `body` to every address `target`'s host resolves to.
async fn post_all(
    client: Client<HttpConnector, Full<Bytes>>,
    target: Target,
    body: Payload,
    timeout: Duration,
    metrics: Metrics,
    failing: Arc<Mutex<HashSet<String>>>,
) {
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(
        timeout,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(error)) => {
            note(
                &failing,
                &metrics,
                &target.url,
                Err(format!("resolving: {error}")),
            );
            return;
        }
        Err(_) => {
            note(
                &failing,
                &metrics,
                &target.url,
                Err("resolving timed out".into()),
            );
            return;
        }
    };
    let posts = addrs.into_iter().map(|addr| {
        let client = client.clone();
        let target = &target;
        let body = body.clone();
        let metrics = &metrics;
        let failing = &failing;
        async move {
            let result = post(&client, target, addr, body, timeout).await;
            note(
                failing,
                metrics,
                &format!("{} ({addr})", target.url),
                result,
            );
        }
    });
    join_all(posts).await;
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    target: &Target,
    addr: SocketAddr,
    payload: Payload,
    timeout: Duration,
) -> Result<(), String> {
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(addr.to_string())
        .path_and_query(target.path.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let host = HeaderValue::from_str(target.authority.as_str()).map_err(|e| e.to_string())?;
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(HOST, host)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_ENCODING, "gzip");
    if let Some(authorization) = payload.authorization {
        request = request.header(AUTHORIZATION, authorization);
    }
    let request = request
        .body(Full::new(payload.body))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("answered {}", response.status())),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Counts a send and logs changes between working and failing.
fn note(
    failing: &Mutex<HashSet<String>>,
    metrics: &Metrics,
    what: &str,
    result: Result<(), String>,
) {
    let mut failing = failing.lock().unwrap_or_else(PoisonError::into_inner);
    match result {
        Ok(()) => {
            metrics.reports.with_label_values(&["ok"]).inc();
            if failing.remove(what) {
                info!(target = what, "stats reports arrive again");
            }
        }
        Err(error) => {
            metrics.reports.with_label_values(&["error"]).inc();
            if failing.insert(what.to_owned()) {
                warn!(target = what, %error, "sending a stats report failed (logged once until it works again)");
            } else {
                debug!(target = what, %error, "sending a stats report failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://127.0.0.1:9090/v1/stats").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9090));
        assert_eq!(t.path.as_str(), "/v1/stats");
        let t = Target::parse("http://thaw-operator.thaw-system.svc/v1/stats").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port),
            ("thaw-operator.thaw-system.svc", 80)
        );
        let t = Target::parse("http://[::1]:9/x").unwrap();
        assert_eq!(t.host, "::1");
        for bad in ["https://x/v1/stats", "x:9090", "/v1/stats", "not a url"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
