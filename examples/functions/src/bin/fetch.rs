//! `fetch`: a one-shot HTTP/1.1 request for tests inside a cluster, where no
//! curl image can be pulled. `fetch [-d BODY] URL [NAME:VALUE]...` sends a
//! GET (a POST of BODY with `-d`) with those extra headers and prints `HTTP <status>`, the response headers
//! (`name: value`, one per line), a blank line and the body to stdout.
//! Exits 1 when no response arrives (connect error, timeout).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Longest the whole exchange may take (a cold start included).
const TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fetch: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async { tokio::time::timeout(TIMEOUT, fetch(&args)).await }) {
        Ok(Ok(out)) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("fetch: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("fetch: no response within {TIMEOUT:?}");
            ExitCode::FAILURE
        }
    }
}

async fn fetch(args: &[String]) -> anyhow::Result<String> {
    let (body, args) = match args {
        [flag, body, rest @ ..] if flag == "-d" => (Some(body.clone()), rest),
        _ => (None, args),
    };
    let Some((url, headers)) = args.split_first() else {
        bail!("usage: fetch [-d BODY] URL [NAME:VALUE]...");
    };
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported, not {url:?}");
    }
    let host = uri.host().context("URL without a host")?;
    let port = uri.port_u16().unwrap_or(80);
    // The resolver of the C library (getaddrinfo), as other clients use it.
    let stream = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);

    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let method = if body.is_some() { "POST" } else { "GET" };
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority)
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("header {h:?} is not NAME:VALUE"))?;
        // Insert, not append: a given Host replaces the URL's.
        req.headers_mut().insert(
            HeaderName::from_bytes(name.trim().as_bytes())?,
            HeaderValue::from_str(value.trim())?,
        );
    }
    let resp = sender.send_request(req).await?;
    let mut out = format!("HTTP {}\n", resp.status().as_u16());
    for (name, value) in resp.headers() {
        out.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    out.push('\n');
    let body = resp.into_body().collect().await?.to_bytes();
    out.push_str(&String::from_utf8_lossy(&body));
    Ok(out)
}
