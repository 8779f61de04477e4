//! `maxRequestsPerInstance`: what the activator does so that no request is
//! lost to an instance that is used up.
//!
//! The instance's gate is the authority: it counts the requests it admits
//! and refuses any beyond the limit at once, before reading the body, with
//! 503 and `thaw-gate: exhausted`. The activator then stops placing on that
//! instance and places the request again elsewhere (or waits for a new
//! instance, like a cold start). To send it again it needs the body, so for
//! such Functions a body of up to [`REPLAY_LIMIT`] bytes is read in full
//! before it is sent. A body declared larger (`Content-Length`) is streamed
//! and cannot be sent again: if the instance it was placed on refuses it,
//! the client gets 503 with Retry-After. A body of unknown length that grows
//! past the limit gets 413.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use thaw_gate::{EXHAUSTED, THAW_GATE};
use tokio::time::{Instant, timeout_at};

/// Largest request body kept to be sent again after an exhausted refusal.
pub const REPLAY_LIMIT: u64 = 1 << 20;

/// Whether an instance's answer is its gate's exhausted refusal.
pub fn is_exhausted(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE
        && headers.get(THAW_GATE) == Some(&HeaderValue::from_static(EXHAUSTED))
}

/// How a Function with `maxRequestsPerInstance` sends a request's body.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Read it in full first, so it can be sent again.
    Buffer,
    /// Stream it; it cannot be sent again.
    Stream,
}

/// The plan for a body of declared length `content_length`.
pub fn plan(content_length: Option<u64>) -> Plan {
    match content_length {
        Some(length) if length > REPLAY_LIMIT => Plan::Stream,
        _ => Plan::Buffer,
    }
}

/// Why a body could not be read in full.
#[derive(Debug, PartialEq, Eq)]
pub enum BufferError {
    /// It grew past [`REPLAY_LIMIT`] without declaring its length.
    TooLarge,
    /// The client stopped sending it (idle, or the request's deadline).
    Stalled,
    /// Reading it failed.
    Client(String),
}

/// Reads `body` in full, up to [`REPLAY_LIMIT`] bytes, by the request's
/// `deadline`.
pub async fn buffer(body: Incoming, deadline: Instant) -> Result<Bytes, BufferError> {
    let limit = usize::try_from(REPLAY_LIMIT).unwrap_or(usize::MAX);
    match timeout_at(deadline, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BufferError::Stalled),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(BufferError::TooLarge)
        }
        Ok(Err(error)) => Err(BufferError::Client(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_gates_own_refusal_counts_as_exhausted() {
        let mut headers = HeaderMap::new();
        assert!(!is_exhausted(StatusCode::SERVICE_UNAVAILABLE, &headers));
        headers.insert(THAW_GATE, HeaderValue::from_static(EXHAUSTED));
        assert!(is_exhausted(StatusCode::SERVICE_UNAVAILABLE, &headers));
        // The function's own 200 carrying the header (a hostile function)
        // is an answer, not a refusal.
        assert!(!is_exhausted(StatusCode::OK, &headers));
    }

    #[test]
    fn bodies_declared_larger_than_the_limit_are_streamed() {
        assert_eq!(plan(None), Plan::Buffer);
        assert_eq!(plan(Some(REPLAY_LIMIT)), Plan::Buffer);
        assert_eq!(plan(Some(REPLAY_LIMIT + 1)), Plan::Stream);
    }
}
