//! `kubectl thaw invoke`: one request to a Function through the activator,
//! as a user's client would send it (the Function's Host header), over a
//! port-forward to a ready pod behind the activator Service or straight to
//! `--activator-url`. Prints the status and the cold-start time the
//! activator measured (`Thaw-Cold-Start`) on stderr, the body on stdout.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header::HOST};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    api::core::v1::{Pod, Service},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{Api, Client, api::ListParams};
use thaw_api::Function;
use tokio::io::{AsyncRead, AsyncWrite};

/// The header the activator answers a request that waited for an instance with.
pub const COLD_START_HEADER: &str = "thaw-cold-start";

#[derive(clap::Args, Clone, Debug)]
pub struct InvokeArgs {
    /// The Function to call.
    pub function: String,
    /// Request body; `@file` reads it from a file (`@-`: stdin). Makes the
    /// method POST unless -X says otherwise.
    #[arg(short = 'd', long)]
    pub data: Option<String>,
    /// Request path (and query).
    #[arg(long, default_value = "/")]
    pub path: String,
    /// HTTP method (GET, or POST with --data).
    #[arg(short = 'X', long = "request")]
    pub method: Option<String>,
    /// Extra request header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The activator Service to port-forward to, `<namespace>/<name>`.
    #[arg(long, default_value = "thaw-system/thaw-activator")]
    pub activator_service: String,
    /// Send to this activator address instead of port-forwarding (`http://host:port`).
    #[arg(long)]
    pub activator_url: Option<String>,
    /// Longest the request may take (default: the Function's timeout plus its
    /// queue.maxWait plus 10s).
    #[arg(long, value_parser = crate::duration)]
    pub timeout: Option<Duration>,
}

/// What came back.
#[derive(Debug)]
pub struct Outcome {
    pub status: StatusCode,
    /// `Thaw-Cold-Start`, when the request waited for an instance to start.
    pub cold_start: Option<String>,
    pub body: Bytes,
}

impl Outcome {
    /// The lines printed before the body: status and cold start.
    pub fn summary(&self) -> String {
        let cold = match &self.cold_start {
            Some(waited) => format!("cold start: {waited} (Thaw-Cold-Start)"),
            None => "warm: no cold start (no Thaw-Cold-Start header)".to_owned(),
        };
        format!("HTTP {}\n{cold}\n", self.status)
    }
}

/// The request to send: `method path` with the Function's Host header.
pub fn request(
    args: &InvokeArgs,
    host: &str,
    path_prefix: &str,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let method = match &args.method {
        Some(m) => Method::from_bytes(m.to_uppercase().as_bytes())
            .with_context(|| format!("-X {m:?} is not an HTTP method"))?,
        None if args.data.is_some() => Method::POST,
        None => Method::GET,
    };
    if !args.path.starts_with('/') {
        bail!("--path {:?} must start with /", args.path);
    }
    let path = format!("{}{}", path_prefix.trim_end_matches('/'), args.path);
    let mut builder = Request::builder()
        .method(method)
        .uri(
            path.parse::<Uri>()
                .with_context(|| format!("--path {path:?}"))?,
        )
        .header(HOST, HeaderValue::from_str(host)?);
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("-H {header:?} is not `Name: value`"))?;
        builder = builder.header(name.trim(), value.trim());
    }
    Ok(builder.body(Full::new(body))?)
}

/// The Host header of `function`: its status URL's host (as the operator
/// published it), or `<name>.<namespace>.svc.cluster.local` before it has one.
pub fn host_of(function: &Function) -> String {
    let published = function
        .status
        .as_ref()
        .and_then(|s| s.url.as_deref())
        .and_then(|url| url.parse::<Uri>().ok())
        .and_then(|uri| uri.authority().map(|a| a.to_string()));
    published.unwrap_or_else(|| {
        format!(
            "{}.{}.svc.cluster.local",
            function.metadata.name.as_deref().unwrap_or_default(),
            function.metadata.namespace.as_deref().unwrap_or_default()
        )
    })
}

/// The request body `--data` names.
pub fn body(data: Option<&str>) -> anyhow::Result<Bytes> {
    Ok(match data {
        None => Bytes::new(),
        Some("@-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
            buf.into()
        }
        Some(d) => match d.strip_prefix('@') {
            Some(file) => std::fs::read(PathBuf::from(file))
                .with_context(|| format!("reading {file}"))?
                .into(),
            None => Bytes::copy_from_slice(d.as_bytes()),
        },
    })
}

/// Runs the command: the outcome, or why no answer came.
pub async fn invoke(
    client: &Client,
    namespace: &str,
    args: &InvokeArgs,
) -> anyhow::Result<Outcome> {
    let function = Api::<Function>::namespaced(client.clone(), namespace)
        .get_opt(&args.function)
        .await
        .with_context(|| format!("reading Function {namespace}/{}", args.function))?
        .with_context(|| format!("Function {namespace}/{} not found", args.function))?;
    let timeout = args.timeout.unwrap_or_else(|| {
        function.spec.timeout() + function.spec.max_wait() + Duration::from_secs(10)
    });
    let body = body(args.data.as_deref())?;
    let host = host_of(&function);
    let send = async {
        match &args.activator_url {
            Some(url) => {
                let uri: Uri = url
                    .parse()
                    .with_context(|| format!("--activator-url {url:?}"))?;
                if uri.scheme_str() != Some("http") {
                    bail!("--activator-url {url:?}: only http:// is supported");
                }
                let authority = uri
                    .authority()
                    .with_context(|| format!("--activator-url {url:?} has no host"))?;
                let address = match authority.port_u16() {
                    Some(_) => authority.to_string(),
                    None => format!("{}:80", authority.host()),
                };
                let stream = tokio::net::TcpStream::connect(&address)
                    .await
                    .with_context(|| format!("connecting to {address}"))?;
                send(stream, request(args, &host, uri.path(), body)?).await
            }
            None => {
                let (pods, pod, port) = activator_pod(client, &args.activator_service).await?;
                let mut forward = pods
                    .portforward(&pod, &[port])
                    .await
                    .with_context(|| format!("port-forwarding to pod {pod} port {port}"))?;
                let stream = forward
                    .take_stream(port)
                    .context("the port-forward gave no stream")?;
                let outcome = send(stream, request(args, &host, "", body)?).await;
                forward.abort();
                outcome
            }
        }
    };
    tokio::time::timeout(timeout, send)
        .await
        .with_context(|| format!("no answer within {timeout:?}"))?
}

/// One request over `stream`, the whole response read.
async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> anyhow::Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the activator")?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .context("sending the request")?;
    let status = response.status();
    let cold_start = response
        .headers()
        .get(COLD_START_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the response")?
        .to_bytes();
    Ok(Outcome {
        status,
        cold_start,
        body,
    })
}

/// A ready pod behind the activator Service `<namespace>/<name>`, and the
/// pod port its `http` Service port targets.
async fn activator_pod(client: &Client, service: &str) -> anyhow::Result<(Api<Pod>, String, u16)> {
    let (namespace, name) = service
        .split_once('/')
        .with_context(|| format!("--activator-service {service:?} is not <namespace>/<name>"))?;
    let svc = Api::<Service>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("reading Service {service}"))?;
    let spec = svc.spec.unwrap_or_default();
    let selector = spec.selector.unwrap_or_default();
    if selector.is_empty() {
        bail!("Service {service} has no selector: nothing to port-forward to");
    }
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let ports = spec.ports.unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .or(ports.first())
        .with_context(|| format!("Service {service} has no port"))?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let mut list = pods
        .list(&ListParams::default().labels(&labels.join(",")))
        .await
        .with_context(|| format!("listing the pods of Service {service}"))?
        .items;
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let pod = list
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none() && ready(p))
        .with_context(|| format!("no ready pod behind Service {service}"))?;
    let target = target_port(&pod, port.target_port.as_ref(), port.port)?;
    let pod_name = pod.metadata.name.unwrap_or_default();
    Ok((pods, pod_name, target))
}

/// The pod port a Service port's `targetPort` names (a number, or a
/// container port's name; the Service port itself when unset).
pub fn target_port(pod: &Pod, target: Option<&IntOrString>, port: i32) -> anyhow::Result<u16> {
    let number = match target {
        None => port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .with_context(|| format!("no container port named {name:?} on the activator pod"))?,
    };
    u16::try_from(number).with_context(|| format!("port {number} is out of range"))
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
