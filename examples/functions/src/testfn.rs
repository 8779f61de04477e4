//! `testfn`: a test function with knobs, in the spirit of Knative's autoscale
//! test image.
//!
//! Endpoints:
//!
//! * `GET /healthz` → `200 ok` (not counted as a request).
//! * `GET /stats` → JSON [`Stats`] (not counted as a request).
//! * anything else → a counted request, shaped by query knobs ([`Knobs`]):
//!   `sleep=<ms>`, `bloat=<MiB>`, `prime=<n>`, `status=<code>`, `echo=<bool>`.
//!   The answer is JSON [`Reply`] or, when echoing, the streamed request body.
//!   `tmp=write` writes a marker file in the temp dir and answers
//!   `X-Tmp-Marker: found` if one was there already (`fresh` if not).
//!   Every counted response carries `X-Instance`, `X-In-Flight` and
//!   `X-Served` (this request's number on the instance) headers.
//!   Malformed knobs → `400` with a one-line message (not counted).
//!
//! `MAX_CONCURRENCY` (unset or 0: unlimited) defines an overlap: a request
//! that starts while `MAX_CONCURRENCY` requests are already in flight.

use std::convert::Infallible;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use serde::Serialize;

use crate::hello::header_value;

/// Header naming the instance that answered.
pub const X_INSTANCE: HeaderName = HeaderName::from_static("x-instance");
/// Header with the in-flight count when the request started (including it).
pub const X_IN_FLIGHT: HeaderName = HeaderName::from_static("x-in-flight");
/// Header with this request's number among the instance's counted requests
/// (1 for its first).
pub const X_SERVED: HeaderName = HeaderName::from_static("x-served");
/// Header answering `tmp=write`: `found` when the marker was already in the
/// temp dir (a request ran here before), `fresh` when not.
pub const X_TMP_MARKER: HeaderName = HeaderName::from_static("x-tmp-marker");
/// The marker file `tmp=write` writes in the temp dir.
pub const TMP_MARKER: &str = "thaw-testfn-marker";

/// Largest accepted `sleep` (10 minutes).
pub const MAX_SLEEP_MS: u64 = 600_000;
/// Largest accepted `bloat`.
pub const MAX_BLOAT_MIB: u64 = 1024;
/// Largest accepted `prime`.
pub const MAX_PRIME: u64 = 10_000_000;

/// The knobs of one request, parsed from its query string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// `sleep=<ms>`: async sleep before answering.
    pub sleep_ms: u64,
    /// `bloat=<MiB>`: allocate and touch this much memory for the request.
    pub bloat_mib: u64,
    /// `prime=<n>`: count the primes up to n on a blocking thread.
    pub prime: Option<u64>,
    /// `status=<code>`: answer with this status (200..=599).
    pub status: Option<StatusCode>,
    /// `echo=1|0|true|false` (bare `echo` means true): stream the request
    /// body back. When absent, POST requests echo and others do not.
    pub echo: Option<bool>,
    /// `tmp=write`: write the marker file in the temp dir.
    pub tmp_write: bool,
}

/// Parses a query string into [`Knobs`]. Unknown keys are ignored; a repeated
/// key takes its last value. Errors are short human-readable messages.
pub fn parse_query(query: Option<&str>) -> Result<Knobs, String> {
    let mut knobs = Knobs::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sleep" => knobs.sleep_ms = number(key, value, MAX_SLEEP_MS)?,
            "bloat" => knobs.bloat_mib = number(key, value, MAX_BLOAT_MIB)?,
            "prime" => knobs.prime = Some(number(key, value, MAX_PRIME)?),
            "status" => {
                let code = number(key, value, 599)?;
                knobs.status = u16::try_from(code)
                    .ok()
                    .filter(|c| *c >= 200)
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .map(Some)
                    .ok_or_else(|| format!("status must be in 200..=599, got {value:?}"))?;
            }
            "tmp" if value == "write" => knobs.tmp_write = true,
            "tmp" => return Err(format!("tmp must be write, got {value:?}")),
            "echo" => {
                knobs.echo = Some(match value {
                    "" | "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("echo must be 0, 1, true or false, got {value:?}")),
                })
            }
            _ => {}
        }
    }
    Ok(knobs)
}

fn number(key: &str, value: &str, max: u64) -> Result<u64, String> {
    let n: u64 = value
        .parse()
        .map_err(|_| format!("{key} must be a non-negative integer, got {value:?}"))?;
    if n > max {
        return Err(format!("{key} must be at most {max}, got {n}"));
    }
    Ok(n)
}

/// Number of primes `<= n` (sieve of Eratosthenes).
pub fn count_primes(n: u64) -> u64 {
    let Ok(n) = usize::try_from(n) else {
        return 0;
    };
    if n < 2 {
        return 0;
    }
    let mut composite = vec![false; n + 1];
    let mut count = 0;
    for i in 2..=n {
        if composite[i] {
            continue;
        }
        count += 1;
        let mut j = i.saturating_mul(i);
        while j <= n {
            composite[j] = true;
            j += i;
        }
    }
    count
}

/// Allocates `mib` MiB and touches every page, so it is really resident.
/// Returns `None` if the allocation fails.
pub fn bloat(mib: u64) -> Option<Vec<u8>> {
    let len = usize::try_from(mib).ok()?.checked_mul(1 << 20)?;
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(len).ok()?;
    for page in v.spare_capacity_mut().chunks_mut(4096) {
        page[0] = MaybeUninit::new(1);
    }
    Some(std::hint::black_box(v))
}

/// Snapshot of the counters, served at `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub instance: String,
    /// Counted requests started so far.
    pub requests: u64,
    /// Counted requests in flight now.
    pub in_flight: u64,
    /// Highest in-flight count seen.
    pub max_in_flight: u64,
    /// Requests that started while `MAX_CONCURRENCY` were already in flight.
    pub overlaps: u64,
}

/// The JSON body of a normal (non-echo) response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reply<'a> {
    pub instance: &'a str,
    /// In-flight count when this request started, including itself.
    #[serde(rename = "inFlight")]
    pub in_flight: u64,
    pub slept_ms: u64,
    /// Prime count, when `prime` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primes: Option<u64>,
    /// MiB held during the request, when `bloat` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bloat_mib: Option<u64>,
}

/// Shared state: the instance name and the request counters.
#[derive(Debug)]
pub struct State {
    instance: String,
    instance_header: HeaderValue,
    /// 0 means unlimited.
    max_concurrency: u64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    overlaps: AtomicU64,
}

/// Marks one counted request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<State>,
    at_start: u64,
    /// This request's number on the instance.
    number: u64,
}

impl InFlight {
    /// In-flight count when this request started, including itself.
    pub fn at_start(&self) -> u64 {
        self.at_start
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl State {
    /// `max_concurrency`: `None` or `Some(0)` means unlimited.
    pub fn new(instance: &str, max_concurrency: Option<u64>) -> Self {
        Self {
            instance: instance.to_owned(),
            instance_header: header_value(instance),
            max_concurrency: max_concurrency.unwrap_or(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            overlaps: AtomicU64::new(0),
        }
    }

    /// Counts a request as started.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        let number = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.max_in_flight.fetch_max(now, Ordering::AcqRel);
        if self.max_concurrency > 0 && now > self.max_concurrency {
            self.overlaps.fetch_add(1, Ordering::AcqRel);
        }
        InFlight {
            state: Arc::clone(self),
            at_start: now,
            number,
        }
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        Stats {
            instance: self.instance.clone(),
            requests: self.requests.load(Ordering::Acquire),
            in_flight: self.in_flight.load(Ordering::Acquire),
            max_in_flight: self.max_in_flight.load(Ordering::Acquire),
            overlaps: self.overlaps.load(Ordering::Acquire),
        }
    }

    /// Serves one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<RespBody>, Infallible> {
        match req.uri().path() {
            "/healthz" => return Ok(text(StatusCode::OK, "ok")),
            "/stats" => return Ok(json(StatusCode::OK, &self.stats())),
            _ => {}
        }
        let knobs = match parse_query(req.uri().query()) {
            Ok(k) => k,
            Err(msg) => return Ok(text(StatusCode::BAD_REQUEST, msg + "\n")),
        };
        let guard = self.enter();

        let memory = if knobs.bloat_mib > 0 {
            let mib = knobs.bloat_mib;
            match tokio::task::spawn_blocking(move || bloat(mib)).await {
                Ok(Some(v)) => Some(v),
                _ => {
                    let msg = format!("cannot allocate {mib} MiB\n");
                    return Ok(self.tag(text(StatusCode::INTERNAL_SERVER_ERROR, msg), &guard));
                }
            }
        } else {
            None
        };
        if knobs.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(knobs.sleep_ms)).await;
        }
        let primes = match knobs.prime {
            Some(n) => match tokio::task::spawn_blocking(move || count_primes(n)).await {
                Ok(count) => Some(count),
                Err(_) => {
                    let msg = "prime computation failed\n";
                    return Ok(self.tag(text(StatusCode::INTERNAL_SERVER_ERROR, msg), &guard));
                }
            },
            None => None,
        };
        let status = knobs.status.unwrap_or(StatusCode::OK);
        let marker = if knobs.tmp_write {
            match tokio::task::spawn_blocking(write_marker).await {
                Ok(Ok(found)) => Some(if found { "found" } else { "fresh" }),
                _ => {
                    let msg = "cannot write the marker in the temp dir\n";
                    return Ok(self.tag(text(StatusCode::INTERNAL_SERVER_ERROR, msg), &guard));
                }
            }
        } else {
            None
        };

        if knobs.echo.unwrap_or(req.method() == Method::POST) {
            let content_type = req.headers().get(CONTENT_TYPE).cloned();
            let mut resp = Response::new(RespBody::Echo(Echo {
                body: req.into_body(),
                held: None,
            }));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("application/octet-stream")),
            );
            let mut resp = self.tag(resp, &guard);
            if let RespBody::Echo(echo) = resp.body_mut() {
                // Stay in flight (and keep the memory) until the body is done.
                echo.held = Some((guard, memory));
            }
            return Ok(resp);
        }

        let reply = Reply {
            instance: &self.instance,
            in_flight: guard.at_start(),
            slept_ms: knobs.sleep_ms,
            primes,
            bloat_mib: memory.as_ref().map(|_| knobs.bloat_mib),
        };
        let mut resp = self.tag(json(status, &reply), &guard);
        if let Some(marker) = marker {
            resp.headers_mut()
                .insert(X_TMP_MARKER, HeaderValue::from_static(marker));
        }
        drop(memory);
        drop(guard);
        Ok(resp)
    }

    fn tag(&self, mut resp: Response<RespBody>, guard: &InFlight) -> Response<RespBody> {
        let headers = resp.headers_mut();
        headers.insert(X_INSTANCE, self.instance_header.clone());
        headers.insert(X_IN_FLIGHT, HeaderValue::from(guard.at_start()));
        headers.insert(X_SERVED, HeaderValue::from(guard.number));
        resp
    }
}

/// Writes [`TMP_MARKER`] in the temp dir; whether it was there already.
fn write_marker() -> std::io::Result<bool> {
    let path = std::env::temp_dir().join(TMP_MARKER);
    let found = path.exists();
    std::fs::write(&path, b"a request ran here\n")?;
    Ok(found)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::Full(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<RespBody> {
    let Ok(mut body) = serde_json::to_vec(value) else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed\n");
    };
    body.push(b'\n');
    let mut resp = Response::new(RespBody::Full(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Response body: a fixed buffer, or the request body streamed back.
#[derive(Debug)]
pub enum RespBody {
    Full(Full<Bytes>),
    Echo(Echo),
}

/// The request body being echoed, holding the request's in-flight mark and
/// bloat memory until the body ends.
#[derive(Debug)]
pub struct Echo {
    body: Incoming,
    held: Option<(InFlight, Option<Vec<u8>>)>,
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Full(full) => Pin::new(full).poll_frame(cx).map_err(|e| match e {}),
            RespBody::Echo(echo) => {
                let frame = ready!(Pin::new(&mut echo.body).poll_frame(cx));
                if !matches!(frame, Some(Ok(_))) {
                    // Done (or failed): no longer in flight.
                    echo.held = None;
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(full) => full.is_end_stream(),
            RespBody::Echo(echo) => echo.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(full) => full.size_hint(),
            RespBody::Echo(echo) => echo.body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_knobs() {
        let k = parse_query(Some("sleep=250&bloat=3&prime=100&status=503&echo=1&x=y")).unwrap();
        assert_eq!(
            k,
            Knobs {
                sleep_ms: 250,
                bloat_mib: 3,
                prime: Some(100),
                status: Some(StatusCode::SERVICE_UNAVAILABLE),
                echo: Some(true),
                tmp_write: false,
            }
        );
        assert!(parse_query(Some("tmp=write")).unwrap().tmp_write);
        assert!(parse_query(Some("tmp=read")).is_err());
        assert_eq!(parse_query(None).unwrap(), Knobs::default());
        assert_eq!(parse_query(Some("")).unwrap(), Knobs::default());
        assert_eq!(parse_query(Some("&&sleep=1&")).unwrap().sleep_ms, 1);
        assert_eq!(parse_query(Some("sleep=1&sleep=2")).unwrap().sleep_ms, 2);
        assert_eq!(parse_query(Some("echo")).unwrap().echo, Some(true));
        assert_eq!(parse_query(Some("echo=false")).unwrap().echo, Some(false));
        assert_eq!(parse_query(Some("prime=0")).unwrap().prime, Some(0));
    }

    #[test]
    fn rejects_bad_values() {
        for q in [
            "sleep=",
            "sleep",
            "sleep=-1",
            "sleep=1.5",
            "sleep=abc",
            "sleep=99999999999999999999999",
            "sleep=600001",
            "bloat=1025",
            "bloat=x",
            "prime=10000001",
            "prime=1e6",
            "status=99",
            "status=199",
            "status=600",
            "status=70000",
            "status=ok",
            "echo=yes",
        ] {
            let err = parse_query(Some(q)).expect_err(q);
            assert!(!err.is_empty() && !err.contains('\n'), "{q}: {err:?}");
        }
        assert!(parse_query(Some("bloat=1024&prime=10000000&sleep=600000")).is_ok());
        assert!(parse_query(Some("status=200")).is_ok());
        assert!(parse_query(Some("status=599")).is_ok());
    }

    #[test]
    fn counts_primes() {
        assert_eq!(count_primes(0), 0);
        assert_eq!(count_primes(1), 0);
        assert_eq!(count_primes(2), 1);
        assert_eq!(count_primes(10), 4);
        assert_eq!(count_primes(100), 25);
        assert_eq!(count_primes(7919), 1000);
        assert_eq!(count_primes(1_000_000), 78_498);
    }

    #[test]
    fn bloat_reserves_memory() {
        let v = bloat(2).unwrap();
        assert!(v.capacity() >= 2 << 20);
        assert!(bloat(u64::MAX).is_none());
    }

    #[test]
    fn tracks_in_flight_and_overlaps() {
        let state = Arc::new(State::new("pod-a", Some(1)));
        let a = state.enter();
        assert_eq!(a.at_start(), 1);
        let b = state.enter();
        assert_eq!(b.at_start(), 2);
        drop(a);
        let c = state.enter();
        assert_eq!(c.at_start(), 2);
        drop((b, c));
        let d = state.enter();
        assert_eq!(d.at_start(), 1);
        drop(d);
        assert_eq!(
            state.stats(),
            Stats {
                instance: "pod-a".into(),
                requests: 4,
                in_flight: 0,
                max_in_flight: 2,
                overlaps: 2,
            }
        );

        let unlimited = Arc::new(State::new("u", None));
        let guards: Vec<_> = (0..5).map(|_| unlimited.enter()).collect();
        assert_eq!(unlimited.stats().overlaps, 0);
        assert_eq!(unlimited.stats().in_flight, 5);
        drop(guards);
    }

    #[test]
    fn stats_and_reply_json() {
        let stats = Stats {
            instance: "pod-a".into(),
            requests: 7,
            in_flight: 1,
            max_in_flight: 3,
            overlaps: 2,
        };
        assert_eq!(
            serde_json::to_string(&stats).unwrap(),
            r#"{"instance":"pod-a","requests":7,"inFlight":1,"maxInFlight":3,"overlaps":2}"#
        );
        let reply = Reply {
            instance: "pod-a",
            in_flight: 2,
            slept_ms: 10,
            primes: Some(25),
            bloat_mib: None,
        };
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"instance":"pod-a","inFlight":2,"slept_ms":10,"primes":25}"#
        );
    }
}
