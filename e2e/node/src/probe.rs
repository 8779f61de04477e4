//! Container probes: httpGet, tcpSocket and exec, with kubelet's timing and
//! thresholds.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
        https: bool,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
    /// A probe the agent cannot run; it always fails with this message.
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    pub termination_grace: Option<Duration>,
}

fn secs(v: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default).max(min)).unwrap_or(0))
}

fn count(v: Option<i32>, default: i32) -> u32 {
    u32::try_from(v.unwrap_or(default).max(1)).unwrap_or(1)
}

/// A port number or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {n}")),
        IntOrString::String(s) => {
            if let Ok(n) = s.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("port {s:?} is not a named port of container {}", c.name))
        }
    }
}

impl ProbeSpec {
    pub fn from_probe(p: &Probe, c: &Container) -> Self {
        let action = if let Some(h) = &p.http_get {
            match resolve_port(&h.port, c) {
                Ok(port) => Action::Http {
                    host: h.host.clone().filter(|s| !s.is_empty()),
                    port,
                    path: match h.path.as_deref() {
                        None | Some("") => "/".to_string(),
                        Some(p) if p.starts_with('/') => p.to_string(),
                        Some(p) => format!("/{p}"),
                    },
                    headers: h
                        .http_headers
                        .iter()
                        .flatten()
                        .map(|h| (h.name.clone(), h.value.clone()))
                        .collect(),
                    https: h.scheme.as_deref() == Some("HTTPS"),
                },
                Err(e) => Action::Unsupported(e),
            }
        } else if let Some(t) = &p.tcp_socket {
            match resolve_port(&t.port, c) {
                Ok(port) => Action::Tcp {
                    host: t.host.clone().filter(|s| !s.is_empty()),
                    port,
                },
                Err(e) => Action::Unsupported(e),
            }
        } else if let Some(e) = &p.exec {
            Action::Exec {
                command: e.command.clone().unwrap_or_default(),
            }
        } else if p.grpc.is_some() {
            Action::Unsupported("grpc probes are not supported by thaw-node".into())
        } else {
            Action::Unsupported("probe has no handler".into())
        };
        ProbeSpec {
            action,
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: count(p.success_threshold, 1),
            failure_threshold: count(p.failure_threshold, 3),
            termination_grace: p
                .termination_grace_period_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
        }
    }
}

/// Where exec probes run.
#[derive(Debug, Clone)]
pub struct ExecContext {
    pub ip_bin: PathBuf,
    pub netns: Option<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

/// Runs one probe. `Ok` is success; `Err` carries the failure message.
pub async fn check(
    action: &Action,
    pod_ip: IpAddr,
    timeout: Duration,
    exec: &ExecContext,
) -> Result<(), String> {
    match action {
        Action::Http {
            host,
            port,
            path,
            headers,
            https,
        } => {
            if *https {
                return Err("HTTPS probes are not supported by thaw-node".into());
            }
            let ip = target(host.as_deref(), pod_ip)?;
            let status =
                tokio::time::timeout(timeout, http_get(SocketAddr::new(ip, *port), path, headers))
                    .await
                    .map_err(|_| {
                        format!(
                            "Get \"http://{}{path}\": context deadline exceeded",
                            SocketAddr::new(ip, *port)
                        )
                    })??;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {status}"))
            }
        }
        Action::Tcp { host, port } => {
            let addr = SocketAddr::new(target(host.as_deref(), pod_ip)?, *port);
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Action::Exec { command } => run_exec(command, timeout, exec).await,
        Action::Unsupported(msg) => Err(msg.clone()),
    }
}

fn target(host: Option<&str>, pod_ip: IpAddr) -> Result<IpAddr, String> {
    match host {
        None => Ok(pod_ip),
        Some(h) => h
            .parse()
            .map_err(|_| format!("probe host {h:?} is not an IP address")),
    }
}

/// A minimal HTTP/1.1 GET; returns the status code.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let url = format!("http://{addr}{path}");
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {addr}: {e}"))?;
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("host") {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("user-agent") {
        req.push_str("User-Agent: kube-probe/1.36\r\n");
    }
    if !has("accept") {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            return parse_status_line(&buf[..end]).map_err(|e| format!("Get \"{url}\": {e}"));
        }
        if buf.len() > 8192 {
            return Err(format!("Get \"{url}\": status line too long"));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        if n == 0 {
            return Err(format!("Get \"{url}\": EOF"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code
            .parse()
            .map_err(|_| format!("malformed HTTP status line {line:?}")),
        _ => Err(format!("malformed HTTP response {line:?}")),
    }
}

async fn run_exec(command: &[String], timeout: Duration, ctx: &ExecContext) -> Result<(), String> {
    let Some(program) = command.first() else {
        return Err("exec probe has no command".into());
    };
    let mut cmd = match &ctx.netns {
        Some(ns) => {
            let mut c = Command::new(&ctx.ip_bin);
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(&command[1..])
        .env_clear()
        .envs(ctx.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&ctx.cwd)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| format!("command {command:?} timed out"))?
        .map_err(|e| format!("exec {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let mut msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if msg.is_empty() {
            msg = format!(
                "command {command:?} exited with {}",
                out.status.code().unwrap_or(-1)
            );
        }
        Err(msg)
    }
}

/// Consecutive-result bookkeeping: the result flips after `success_threshold`
/// successes or `failure_threshold` failures in a row.
#[derive(Debug, Clone)]
pub struct Thresholds {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    pub result: bool,
}

impl Thresholds {
    pub fn new(spec: &ProbeSpec, initial: bool) -> Self {
        Thresholds {
            success_threshold: spec.success_threshold,
            failure_threshold: spec.failure_threshold,
            successes: 0,
            failures: 0,
            result: initial,
        }
    }

    /// Records one probe result; returns the (possibly new) overall result.
    pub fn record(&mut self, ok: bool) -> bool {
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.success_threshold {
                self.result = true;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.failure_threshold {
                self.result = false;
            }
        }
        self.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, TCPSocketAction};

    fn container() -> Container {
        Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_named_ports() {
        let p = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                path: Some("healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = ProbeSpec::from_probe(&p, &container());
        assert_eq!(s.period, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!(s.success_threshold, 1);
        assert_eq!(s.failure_threshold, 3);
        assert_eq!(s.initial_delay, Duration::ZERO);
        assert_eq!(
            s.action,
            Action::Http {
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![],
                https: false
            }
        );
        let bad = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("nope".into()),
                host: None,
            }),
            period_seconds: Some(1),
            ..Default::default()
        };
        let s = ProbeSpec::from_probe(&bad, &container());
        assert!(matches!(s.action, Action::Unsupported(_)));
        assert_eq!(s.period, Duration::from_secs(1));
    }

    #[test]
    fn thresholds() {
        let spec = ProbeSpec {
            action: Action::Unsupported(String::new()),
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
            termination_grace: None,
        };
        let mut t = Thresholds::new(&spec, false);
        assert!(!t.record(true));
        assert!(t.record(true));
        assert!(t.record(false));
        assert!(t.record(false));
        assert!(t.record(true));
        assert!(t.record(false));
        assert!(t.record(false));
        assert!(!t.record(false));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content"), Ok(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500"), Ok(500));
        assert!(parse_status_line(b"SSH-2.0").is_err());
    }

    #[tokio::test]
    async fn http_and_tcp_checks_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let code = if req.starts_with("GET /ok ") {
                        200
                    } else {
                        503
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let ctx = ExecContext {
            ip_bin: "/bin/false".into(),
            netns: None,
            env: vec![],
            cwd: "/".into(),
        };
        let http = |path: &str| Action::Http {
            host: None,
            port: addr.port(),
            path: path.into(),
            headers: vec![("X-Test".into(), "1".into())],
            https: false,
        };
        let ip = addr.ip();
        let t = Duration::from_secs(1);
        assert_eq!(check(&http("/ok"), ip, t, &ctx).await, Ok(()));
        let err = check(&http("/bad"), ip, t, &ctx).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        let tcp = Action::Tcp {
            host: None,
            port: addr.port(),
        };
        assert_eq!(check(&tcp, ip, t, &ctx).await, Ok(()));
        let closed = Action::Tcp {
            host: None,
            port: 1,
        };
        assert!(check(&closed, ip, t, &ctx).await.is_err());
        let ok = Action::Exec {
            command: vec!["/bin/true".into()],
        };
        assert_eq!(check(&ok, ip, t, &ctx).await, Ok(()));
        let fail = Action::Exec {
            command: vec!["/bin/false".into()],
        };
        assert!(check(&fail, ip, t, &ctx).await.is_err());
    }
}
