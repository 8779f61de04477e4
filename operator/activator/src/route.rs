//! Which function a request is for: by Host, or by a `/fn/<namespace>/<name>/`
//! path prefix. Pure: no I/O, no registry; the caller says which functions
//! exist.
//!
//! Host forms (case-insensitive, optional `:port`, optional trailing dot):
//! `<name>.<namespace>.<domain>`, `<name>.<namespace>.svc` and
//! `<name>.<namespace>.svc.cluster.local` (what a Function's ExternalName
//! Service resolves through). Path form: `/fn/<namespace>/<name>/<rest>`,
//! forwarded as `/<rest>` with the query kept.
//!
//! When both could apply, a Host naming an existing function wins (the
//! function sees its path unchanged, `/fn/...` included); otherwise a `/fn/`
//! path decides. So `http://thaw-activator.thaw-system.svc/fn/ns/f/` reaches
//! `ns/f` although its Host has the function shape too.

use std::{
    fmt,
    sync::{Mutex, PoisonError},
};

use http::uri::{PathAndQuery, Uri};

/// The path prefix of path routing.
pub const PATH_PREFIX: &str = "/fn/";

/// Longest namespace or function name (a DNS label).
const MAX_LABEL: usize = 63;

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub namespace: String,
    pub name: String,
    /// The path and query to forward; `None` keeps the request's own.
    pub path: Option<PathAndQuery>,
}

impl Route {
    /// `namespace/name`, how functions are named in messages and metrics.
    pub fn function(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Why a request cannot be routed: all are the client's mistake (400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "the request has no Host header and its path is not /fn/<namespace>/<name>/...: say which function it is for"
    )]
    MissingHost,
    #[error("malformed Host header {host:?}: {why}")]
    BadHost { host: String, why: &'static str },
    #[error("malformed function path {path:?}: {why}")]
    BadPath { path: String, why: String },
    #[error(
        "cannot route Host {host:?}: it is not {forms}, and the path is not /fn/<namespace>/<name>/..."
    )]
    NoRoute { host: String, forms: String },
}

/// The last Host value one client connection sent, and the function it
/// names if any (see [`Router::route_cached`]); dropped with the connection.
#[derive(Debug, Default)]
pub struct HostCache(Mutex<Option<(String, Option<Names>)>>);

/// A function's `(namespace, name)`.
type Names = (String, String);

/// Routes requests for one cluster domain.
#[derive(Clone, Debug)]
pub struct Router {
    /// Host suffixes that follow `<name>.<namespace>`, each with its leading dot.
    suffixes: Vec<String>,
    /// The Host forms, for error messages.
    forms: String,
}

impl Router {
    /// A router for Function URLs `http://<name>.<namespace>.<domain>`.
    pub fn new(domain: &str) -> Self {
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        let mut suffixes = vec![format!(".{domain}")];
        for fixed in [".svc", ".svc.cluster.local"] {
            if !suffixes.iter().any(|s| s == fixed) {
                suffixes.push(fixed.to_owned());
            }
        }
        // Longest first, so `.svc.cluster.local` is tried before `.svc`...
        // which cannot both match anyway, but a custom domain ending in one
        // of them must be taken whole.
        let forms = suffixes
            .iter()
            .map(|s| format!("<name>.<namespace>{s}"))
            .collect::<Vec<_>>()
            .join(" or ");
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { suffixes, forms }
    }

    /// Routes a request with Host `host` (the header, or the URI authority
    /// for HTTP/2) and URI `uri`. `exists(namespace, name)` says whether a
    /// function is known; it only breaks the tie between a function-shaped
    /// Host and a `/fn/` path.
    pub fn route(
        &self,
        host: Option<&str>,
        uri: &Uri,
        exists: impl Fn(&str, &str) -> bool,
    ) -> Result<Route, RouteError> {
        let by_host = match host {
            Some(host) => self.host_function(host)?,
            None => None,
        };
        self.decide(by_host, host, uri, exists)
    }

    /// [`Self::route`], remembering the last Host in `cache`: a keep-alive
    /// client sends the same one every time, so it is parsed once.
    pub fn route_cached(
        &self,
        cache: &HostCache,
        host: Option<&str>,
        uri: &Uri,
        exists: impl Fn(&str, &str) -> bool,
    ) -> Result<Route, RouteError> {
        let by_host = match host {
            Some(host) => {
                let mut last = cache.0.lock().unwrap_or_else(PoisonError::into_inner);
                match &*last {
                    Some((seen, names)) if seen == host => names.clone(),
                    _ => {
                        let names = self.host_function(host)?;
                        *last = Some((host.to_owned(), names.clone()));
                        names
                    }
                }
            }
            None => None,
        };
        self.decide(by_host, host, uri, exists)
    }

    /// `(namespace, name)` when the Host value `host` names a function.
    fn host_function(&self, host: &str) -> Result<Option<Names>, RouteError> {
        Ok(parse_host(host)?.and_then(|h| self.function_host(&h)))
    }

    fn decide(
        &self,
        by_host: Option<Names>,
        host: Option<&str>,
        uri: &Uri,
        exists: impl Fn(&str, &str) -> bool,
    ) -> Result<Route, RouteError> {
        if let Some((namespace, name)) = &by_host
            && exists(namespace, name)
        {
            return Ok(Route {
                namespace: namespace.clone(),
                name: name.clone(),
                path: None,
            });
        }
        let path = uri.path();
        if path.starts_with(PATH_PREFIX) || path == "/fn" {
            return by_path(uri);
        }
        match (by_host, host) {
            (Some((namespace, name)), _) => Ok(Route {
                namespace,
                name,
                path: None,
            }),
            (None, None) => Err(RouteError::MissingHost),
            (None, Some(host)) => Err(RouteError::NoRoute {
                host: host.to_owned(),
                forms: self.forms.clone(),
            }),
        }
    }

    /// `(namespace, name)` when `host` (lowercase, no port) names a function.
    fn function_host(&self, host: &str) -> Option<(String, String)> {
        for suffix in &self.suffixes {
            let Some(prefix) = host.strip_suffix(suffix.as_str()) else {
                continue;
            };
            let mut labels = prefix.split('.');
            if let (Some(name), Some(namespace), None) =
                (labels.next(), labels.next(), labels.next())
                && is_label(name)
                && is_label(namespace)
            {
                return Some((namespace.to_owned(), name.to_owned()));
            }
        }
        None
    }
}

/// The hostname of a Host value, lowercased, without port or trailing dot;
/// `None` for an IP literal (never a function host). Anything a hostname
/// cannot contain is an error.
fn parse_host(host: &str) -> Result<Option<String>, RouteError> {
    let bad = |why| RouteError::BadHost {
        host: host.to_owned(),
        why,
    };
    if host.is_empty() {
        return Err(bad("it is empty"));
    }
    if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal, `[::1]` or `[::1]:8080`.
        let Some((literal, after)) = rest.split_once(']') else {
            return Err(bad("an IPv6 address must be closed with ]"));
        };
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address"));
        }
        if !after.is_empty() {
            let port = after.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?;
            check_port(port).map_err(bad)?;
        }
        return Ok(None);
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) => {
            check_port(port).map_err(bad)?;
            name
        }
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(bad("it has no host name"));
    }
    if name.len() > 253 {
        return Err(bad("a host name has at most 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(bad("it has an empty label"));
        }
        if label.len() > MAX_LABEL {
            return Err(bad("a label has at most 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("a host name has only letters, digits, '-' and '.'"));
        }
    }
    Ok(name
        .parse::<std::net::Ipv4Addr>()
        .is_err()
        .then(|| name.to_ascii_lowercase()))
}

fn check_port(port: &str) -> Result<(), &'static str> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port must be a number");
    }
    match port.parse::<u32>() {
        Ok(1..=65535) => Ok(()),
        _ => Err("the port must be between 1 and 65535"),
    }
}

/// Routes `/fn/<namespace>/<name>[/<rest>]`, forwarding `/<rest>` and the query.
fn by_path(uri: &Uri) -> Result<Route, RouteError> {
    let path = uri.path();
    let bad = |why: String| RouteError::BadPath {
        path: path.to_owned(),
        why,
    };
    let rest = path.strip_prefix(PATH_PREFIX).unwrap_or_default();
    let mut parts = rest.splitn(3, '/');
    let namespace = parts.next().unwrap_or_default();
    let name = parts.next().unwrap_or_default();
    let tail = parts.next();
    if namespace.is_empty() || name.is_empty() {
        return Err(bad(
            "it must be /fn/<namespace>/<name>/..., naming both".into()
        ));
    }
    for (what, value) in [("namespace", namespace), ("function name", name)] {
        if !is_label(value) {
            return Err(bad(format!(
                "{what} {value:?} must be at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
            )));
        }
    }
    let mut forwarded = String::with_capacity(path.len());
    forwarded.push('/');
    forwarded.push_str(tail.unwrap_or_default());
    if let Some(query) = uri.query() {
        forwarded.push('?');
        forwarded.push_str(query);
    }
    let forwarded = PathAndQuery::try_from(forwarded)
        .map_err(|e| bad(format!("the rest of the path is not valid: {e}")))?;
    Ok(Route {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        path: Some(forwarded),
    })
}

/// An RFC 1123 label: what namespaces and Function names are.
pub fn is_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().expect("uri")
    }

    fn none(_: &str, _: &str) -> bool {
        false
    }

    fn all(_: &str, _: &str) -> bool {
        true
    }

    fn route(router: &Router, host: Option<&str>, path: &str) -> Result<Route, RouteError> {
        router.route(host, &uri(path), all)
    }

    fn target(ns: &str, name: &str, path: Option<&str>) -> Route {
        Route {
            namespace: ns.into(),
            name: name.into(),
            path: path.map(|p| p.parse().expect("path")),
        }
    }

    #[test]
    fn a_cached_host_routes_as_an_uncached_one() {
        let router = Router::new("svc.cluster.local");
        let cache = HostCache::default();
        for host in [
            Some("hello.default.svc"),
            Some("hello.default.svc"),
            Some("other.team.svc.cluster.local:80"),
            Some("bad host"),
            Some("bad host"),
            Some("10.0.0.1:8080"),
            None,
            Some("hello.default.svc"),
        ] {
            for path in ["/", "/fn/ns/f/x"] {
                assert_eq!(
                    router.route_cached(&cache, host, &uri(path), all),
                    router.route(host, &uri(path), all),
                    "{host:?} {path}"
                );
            }
        }
    }

    #[test]
    fn every_host_form_routes() {
        let router = Router::new("svc.cluster.local");
        for host in [
            "hello.default.svc.cluster.local",
            "hello.default.svc.cluster.local:8080",
            "hello.default.svc.cluster.local.",
            "hello.default.svc",
            "hello.default.svc:80",
            "HELLO.Default.SVC.cluster.LOCAL",
        ] {
            assert_eq!(
                route(&router, Some(host), "/a/b?c=d"),
                Ok(target("default", "hello", None)),
                "{host}"
            );
        }
        let custom = Router::new("fn.example.com");
        assert_eq!(
            route(&custom, Some("hello.team-a.fn.example.com"), "/"),
            Ok(target("team-a", "hello", None))
        );
        // The cluster forms work with any domain.
        assert_eq!(
            route(&custom, Some("hello.team-a.svc.cluster.local"), "/"),
            Ok(target("team-a", "hello", None))
        );
        assert_eq!(
            route(&custom, Some("hello.team-a.svc"), "/"),
            Ok(target("team-a", "hello", None))
        );
    }

    #[test]
    fn path_form_strips_the_prefix_and_keeps_the_query() {
        let router = Router::new("svc.cluster.local");
        for (path, forwarded) in [
            ("/fn/ns/hello", "/"),
            ("/fn/ns/hello/", "/"),
            ("/fn/ns/hello/a/b", "/a/b"),
            ("/fn/ns/hello/a/b/", "/a/b/"),
            ("/fn/ns/hello?x=1&y", "/?x=1&y"),
            ("/fn/ns/hello/a?x=%20", "/a?x=%20"),
            ("/fn/ns/hello//double", "//double"),
        ] {
            for host in [
                None,
                Some("127.0.0.1:8080"),
                Some("localhost"),
                Some("[::1]:80"),
            ] {
                assert_eq!(
                    route(&router, host, path),
                    Ok(target("ns", "hello", Some(forwarded))),
                    "{host:?} {path}"
                );
            }
        }
    }

    #[test]
    fn a_known_host_function_wins_over_the_path() {
        let router = Router::new("svc.cluster.local");
        let host = Some("hello.default.svc.cluster.local");
        let known_hello = |ns: &str, name: &str| ns == "default" && name == "hello";
        assert_eq!(
            router.route(host, &uri("/fn/x/y/z"), known_hello),
            Ok(target("default", "hello", None))
        );
        // The activator's own Service name has the function shape too: the
        // path decides when that "function" does not exist.
        let activator = Some("thaw-activator.thaw-system.svc.cluster.local");
        assert_eq!(
            router.route(activator, &uri("/fn/x/y/z"), known_hello),
            Ok(target("x", "y", Some("/z")))
        );
        // Unknown by Host and no /fn/ path: routed by Host, the caller 404s.
        assert_eq!(
            router.route(activator, &uri("/other"), none),
            Ok(target("thaw-system", "thaw-activator", None))
        );
    }

    #[test]
    fn malformed_hosts_are_rejected() {
        let router = Router::new("svc.cluster.local");
        for host in [
            "",
            "bad host",
            "a..b.svc",
            "hello.default.svc:",
            "hello.default.svc:http",
            "hello.default.svc:0",
            "hello.default.svc:70000",
            "hello.default.svc:123456",
            "héllo.default.svc",
            "a/b",
            "[::1",
            "[zz]:80",
            "[::1]x",
            ":80",
            ".",
            "x@y",
        ] {
            assert!(
                matches!(
                    route(&router, Some(host), "/"),
                    Err(RouteError::BadHost { .. })
                ),
                "{host:?}: {:?}",
                route(&router, Some(host), "/")
            );
        }
        let long = format!("{}.default.svc", "a".repeat(64));
        assert!(matches!(
            route(&router, Some(&long), "/"),
            Err(RouteError::BadHost { .. })
        ));
    }

    #[test]
    fn hosts_that_name_no_function_need_a_path() {
        let router = Router::new("svc.cluster.local");
        for host in [
            "example.com",
            "a.b.c.svc.cluster.local",
            "default.svc.cluster.local",
            "127.0.0.1",
            "localhost:8080",
            "[::1]",
            "-x.default.svc",
            "x_y.default.svc",
        ] {
            assert!(
                matches!(
                    route(&router, Some(host), "/hello"),
                    Err(RouteError::NoRoute { .. })
                ),
                "{host}"
            );
        }
        assert_eq!(route(&router, None, "/"), Err(RouteError::MissingHost));
        let error = route(&router, Some("example.com"), "/").unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot route Host \"example.com\": it is not <name>.<namespace>.svc.cluster.local or <name>.<namespace>.svc, and the path is not /fn/<namespace>/<name>/..."
        );
    }

    #[test]
    fn malformed_paths_are_rejected() {
        let router = Router::new("svc.cluster.local");
        for path in [
            "/fn",
            "/fn/",
            "/fn/ns",
            "/fn/ns/",
            "/fn//hello",
            "/fn/NS/hello",
            "/fn/ns/Hello",
            "/fn/ns/hel%2Flo",
            "/fn/ns/-hello",
            "/fn/ns/hello-",
            "/fn/n.s/hello",
        ] {
            assert!(
                matches!(
                    route(&router, Some("localhost"), path),
                    Err(RouteError::BadPath { .. })
                ),
                "{path}: {:?}",
                route(&router, Some("localhost"), path)
            );
        }
        let long = format!("/fn/ns/{}", "a".repeat(64));
        assert!(matches!(
            route(&router, None, &long),
            Err(RouteError::BadPath { .. })
        ));
    }

    #[test]
    fn labels() {
        assert!(is_label("a"));
        assert!(is_label("a-1"));
        assert!(is_label("1a"));
        assert!(!is_label(""));
        assert!(!is_label("A"));
        assert!(!is_label("a_b"));
        assert!(!is_label("-a"));
        assert!(!is_label(&"a".repeat(64)));
        assert!(is_label(&"a".repeat(63)));
    }
}
