//! Headers as a proxy must handle them: hop-by-hop headers (RFC 9110
//! §7.6.1) end at the activator in both directions, and the request carries
//! where it came from in `Forwarded` (RFC 7239) and the `X-Forwarded-*`
//! headers.

use std::{
    net::IpAddr,
    sync::{Mutex, PoisonError},
};

use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{EXPECT, FORWARDED, HOST},
};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// On a response that waited for an instance: how long, e.g. `412ms`.
pub const THAW_COLD_START: HeaderName = HeaderName::from_static("thaw-cold-start");

pub use thaw_gate::hop::strip_hop_by_hop;

/// A client connection's address as the forwarding headers write it,
/// rendered once per connection rather than once per request.
#[derive(Debug)]
pub struct ClientAddress {
    /// `X-Forwarded-For` when the request has none.
    forwarded_for: HeaderValue,
    /// The `for=` node of `Forwarded`.
    node: String,
    /// The last Host and the `Forwarded` value made for it.
    last_forwarded: Mutex<Option<(Option<String>, HeaderValue)>>,
}

impl ClientAddress {
    pub fn new(ip: IpAddr) -> Self {
        let text = ip.to_string();
        let node = match ip {
            IpAddr::V4(_) => text.clone(),
            IpAddr::V6(_) => format!("\"[{text}]\""),
        };
        Self {
            forwarded_for: HeaderValue::from_str(&text)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            node,
            last_forwarded: Mutex::new(None),
        }
    }

    /// The `Forwarded` value of a request from here with Host `host`, kept
    /// for the connection's next request with the same Host.
    fn forwarded(&self, host: Option<&str>) -> HeaderValue {
        let mut last = self
            .last_forwarded
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, value)) = &*last
            && seen.as_deref() == host
        {
            return value.clone();
        }
        let value = HeaderValue::from_str(&forwarded_element(self, host))
            .unwrap_or_else(|_| HeaderValue::from_static("for=unknown;proto=http"));
        *last = Some((host.map(str::to_owned), value.clone()));
        value
    }
}

/// Prepares a client's request headers for the instance: hop-by-hop
/// headers removed (and `Expect`, which the activator answered itself),
/// `Host` kept (set from the HTTP/2 authority when the request had none),
/// and the client's address, the original host and the scheme recorded.
pub fn forward_request(headers: &mut HeaderMap, client: &ClientAddress, host: Option<&str>) {
    strip_hop_by_hop(headers);
    headers.remove(EXPECT);
    // Room for the four forwarding headers at once, not a regrowth each.
    headers.reserve(4);
    let host_value = match headers.get(HOST) {
        // The client's own Host header: no need to validate it again.
        Some(value) => Some(value.clone()),
        None => {
            let value = host.and_then(|h| HeaderValue::from_str(h).ok());
            if let Some(value) = &value {
                headers.insert(HOST, value.clone());
            }
            value
        }
    };

    match headers.get(X_FORWARDED_FOR) {
        Some(_) => append(
            headers,
            X_FORWARDED_FOR,
            client.forwarded_for.to_str().unwrap_or_default(),
        ),
        None => {
            headers.insert(X_FORWARDED_FOR, client.forwarded_for.clone());
        }
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(value) = host_value
        && !headers.contains_key(X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST, value);
    }

    if headers.contains_key(FORWARDED) {
        append(headers, FORWARDED, &forwarded_element(client, host));
    } else {
        headers.insert(FORWARDED, client.forwarded(host));
    }
}

/// This hop's `Forwarded` element: `for=<client>;host=<host>;proto=http`.
fn forwarded_element(client: &ClientAddress, host: Option<&str>) -> String {
    let mut element = format!("for={}", client.node);
    if let Some(host) = host.filter(|h| is_token(h)) {
        element.push_str(";host=");
        element.push_str(host);
    } else if let Some(host) = host {
        element.push_str(";host=\"");
        element.push_str(&host.replace(['"', '\\'], ""));
        element.push('"');
    }
    element.push_str(";proto=http");
    element
}

/// Prepares an instance's response headers for the client.
pub fn forward_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// Appends `value` to a comma-separated list header, creating it if absent.
fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let combined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {value}"),
        _ => value.to_owned(),
    };
    if let Ok(combined) = HeaderValue::from_str(&combined) {
        headers.insert(name, combined);
    }
}

/// An RFC 7230 token: what a `Forwarded` value may be without quotes.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|&(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn one_connection_with_several_hosts_forwards_each() {
        let client = ClientAddress::new("10.0.0.7".parse().unwrap());
        for host in ["a.ns.svc", "b.ns.svc", "a.ns.svc", "weird host"] {
            let mut map = headers(&[("host", host)]);
            forward_request(&mut map, &client, Some(host));
            assert_eq!(map["forwarded"], forwarded_element(&client, Some(host)));
            assert!(
                map["forwarded"].to_str().unwrap().contains("a.ns.svc") == (host == "a.ns.svc")
            );
        }
    }

    #[test]
    fn the_request_records_where_it_came_from() {
        let mut map = headers(&[("host", "hello.ns.svc:8080"), ("expect", "100-continue")]);
        forward_request(
            &mut map,
            &ClientAddress::new("10.0.0.7".parse().unwrap()),
            Some("hello.ns.svc:8080"),
        );
        assert_eq!(map["host"], "hello.ns.svc:8080");
        assert_eq!(map["x-forwarded-for"], "10.0.0.7");
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "hello.ns.svc:8080");
        assert_eq!(
            map["forwarded"],
            "for=10.0.0.7;host=\"hello.ns.svc:8080\";proto=http"
        );
        assert!(!map.contains_key("expect"));
    }

    #[test]
    fn existing_forwarding_headers_are_appended_to() {
        let mut map = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
            ("forwarded", "for=203.0.113.9;proto=https"),
        ]);
        forward_request(
            &mut map,
            &ClientAddress::new("::1".parse().unwrap()),
            Some("localhost"),
        );
        assert_eq!(map["x-forwarded-for"], "203.0.113.9, ::1");
        assert_eq!(map["x-forwarded-proto"], "https", "kept");
        assert_eq!(map["x-forwarded-host"], "api.example.com", "kept");
        assert_eq!(
            map["forwarded"],
            "for=203.0.113.9;proto=https, for=\"[::1]\";host=localhost;proto=http"
        );
        // An HTTP/2 request has no Host header: the authority becomes one.
        assert_eq!(map["host"], "localhost");
    }

    #[test]
    fn no_host_at_all() {
        let mut map = HeaderMap::new();
        forward_request(
            &mut map,
            &ClientAddress::new("10.0.0.1".parse().unwrap()),
            None,
        );
        assert!(!map.contains_key("host"));
        assert_eq!(map["forwarded"], "for=10.0.0.1;proto=http");
    }
}
