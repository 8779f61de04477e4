//! `hello`: answers every request with `200 text/plain` `hello from <instance>\n`.
//!
//! Used for benchmarks, so the per-request path is a couple of refcount bumps:
//! body and header values are built once at startup.

use std::convert::Infallible;
use std::future::{Ready, ready};

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

    /// Answers any request.
    pub fn respond<B>(&self, _req: Request<B>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
        let mut resp = Response::new(Full::new(self.body.clone()));
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(X_INSTANCE, self.instance.clone());
        ready(Ok(resp))
    }
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

    #[test]
    fn body_names_instance() {
        let h = Hello::new("pod-1");
        assert_eq!(h.body().as_ref(), b"hello from pod-1\n");
        let resp = h.respond(Request::new(())).into_inner().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(resp.headers()[X_INSTANCE], "pod-1");
    }

    #[test]
    fn header_value_sanitizes() {
        assert_eq!(header_value("a\nb"), "a_b");
        assert_eq!(header_value("plain"), "plain");
    }
}
