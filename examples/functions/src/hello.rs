//! `hello`: answers every request with `200 text/plain` `hello from <instance>\n`,
//! after `?sleep=<ms>` milliseconds when the query asks for it (the
//! benchmarks' slow handler; anything else in the query is ignored).
//!
//! Used for benchmarks, so the per-request path is a couple of refcount bumps:
//! body and header values are built once at startup.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http_body_util::Full;
use hyper::{Request, Response};

use crate::testfn::X_INSTANCE;

/// Precomputed response parts.
#[derive(Clone)]
pub struct Hello {
    body: Bytes,
    instance: HeaderValue,
}

impl Hello {
    /// Prepares the response for `instance`.
    pub fn new(instance: &str) -> Self {
        Self {
            body: Bytes::from(format!("hello from {instance}\n")),
            instance: header_value(instance),
        }
    }

    /// The response body, `hello from <instance>\n`.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Answers any request, after its `sleep` if it has one.
    pub fn respond<B>(
        &self,
        req: Request<B>,
    ) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + use<B> {
        let delay = req.uri().query().and_then(sleep_of);
        let mut resp = Response::new(Full::new(self.body.clone()));
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(X_INSTANCE, self.instance.clone());
        async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            Ok(resp)
        }
    }
}

/// The `sleep=<ms>` of a query, at most [`crate::testfn::MAX_SLEEP_MS`];
/// an unparsable value counts as none.
fn sleep_of(query: &str) -> Option<Duration> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("sleep="))
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(|ms| Duration::from_millis(ms.min(crate::testfn::MAX_SLEEP_MS)))
}

/// `s` as a header value, replacing anything not allowed in one.
pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| {
        let cleaned: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        HeaderValue::from_str(&cleaned).unwrap_or(HeaderValue::from_static("unknown"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_names_instance() {
        let h = Hello::new("pod-1");
        assert_eq!(h.body().as_ref(), b"hello from pod-1\n");
        let resp = h.respond(Request::new(())).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(resp.headers()[X_INSTANCE], "pod-1");
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_delays_the_answer() {
        let h = Hello::new("pod-1");
        let req = Request::get("/?x=1&sleep=10").body(()).unwrap();
        let start = tokio::time::Instant::now();
        let resp = h.respond(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(start.elapsed(), Duration::from_millis(10));
    }

    #[test]
    fn sleep_of_reads_only_sleep() {
        assert_eq!(sleep_of("sleep=100"), Some(Duration::from_millis(100)));
        assert_eq!(sleep_of("a=b&sleep=7"), Some(Duration::from_millis(7)));
        assert_eq!(sleep_of("sleep=0"), None);
        assert_eq!(sleep_of("sleep=x"), None);
        assert_eq!(sleep_of("nosleep=5"), None);
    }

    #[test]
    fn header_value_sanitizes() {
        assert_eq!(header_value("a\nb"), "a_b");
        assert_eq!(header_value("plain"), "plain");
    }
}
