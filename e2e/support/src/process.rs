//! thaw components the tests run as local processes against the cluster,
//! stopped with SIGTERM (then SIGKILL) when dropped.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{Cluster, fixtures::repo_root};

/// The `thaw` binary `cargo build` made.
pub fn thaw_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug/thaw")
}

/// A free loopback port for a process to listen on (the listener is closed
/// before it is used). Picked below the kernel's ephemeral range (32768 up),
/// not by binding port 0: an ephemeral port can be taken as the source port
/// of any outgoing connection in the gap before the process binds it, and
/// that failed a restart once. Above the local cluster's fixed ports.
pub fn free_port() -> Result<u16> {
    use rand::RngExt as _;
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(24_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port in 24000-32000 after 200 tries")
}

/// Starts `thaw <subcommand> --kubeconfig <kubeconfig> <args>`, logging
/// (debug for `crate_name`) to `.cluster/logs/tests/<log_name>.log`.
fn spawn_thaw(
    subcommand: &str,
    crate_name: &str,
    kubeconfig: &Path,
    log_name: &str,
    args: &[String],
) -> Result<(Child, PathBuf)> {
    let log_dir = repo_root().join(".cluster/logs/tests");
    std::fs::create_dir_all(&log_dir)?;
    let log = log_dir.join(format!("{log_name}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let child = Command::new(thaw_binary())
        .arg(subcommand)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(with_gate_image_override(subcommand, args))
        .env("RUST_LOG", format!("info,{crate_name}=debug"))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", thaw_binary().display()))?;
    Ok((child, log))
}

/// `THAW_E2E_GATE_IMAGE`, when set, is the gate image of operators that do
/// not name one with `--gate-image <image>`: the process node then runs the
/// gate of another build (a second worktree's `thaw`, mapped in
/// e2e/images.toml by an absolute path). The chart's `--gate-image=<image>`
/// (thaw's released image, which maps to the main tree's binary) is
/// replaced, so chart-started operators run that build's gate too.
fn with_gate_image_override(subcommand: &str, args: &[String]) -> Vec<String> {
    match std::env::var("THAW_E2E_GATE_IMAGE") {
        Ok(image) if subcommand == "operator" && !args.iter().any(|a| a == "--gate-image") => {
            let mut args: Vec<String> = args
                .iter()
                .filter(|a| !a.starts_with("--gate-image="))
                .cloned()
                .collect();
            args.extend(["--gate-image".to_owned(), image]);
            args
        }
        _ => args.to_vec(),
    }
}

/// A running `thaw operator`.
pub struct Operator {
    child: Child,
    pub identity: String,
    pub http_port: u16,
    log: PathBuf,
}

impl Operator {
    /// Starts `thaw operator` watching only `namespace`, with its Lease
    /// there too, so parallel tests each have their own operator. It takes
    /// unauthenticated stats (these activators have no pod to be bound to);
    /// [`crate::install::ChartThaw`] runs the real check.
    pub fn start(cluster: &Cluster, namespace: &str, identity: &str) -> Result<Operator> {
        let args = [
            "--lease-namespace",
            namespace,
            "--watch-namespace",
            namespace,
            "--identity",
            identity,
            "--lease-duration-seconds",
            "4",
            "--allow-unauthenticated-stats",
        ]
        .map(String::from);
        Self::start_args(
            cluster.kubeconfig(),
            &format!("{namespace}-{identity}"),
            identity,
            &args,
        )
    }

    /// Starts `thaw operator` with `kubeconfig`'s credentials (the admin's,
    /// or a ServiceAccount token's) and `args`: every flag but
    /// `--kubeconfig` and `--http-addr`, which this sets. It logs to
    /// `.cluster/logs/tests/<log_name>.log`.
    pub fn start_args(
        kubeconfig: &Path,
        log_name: &str,
        identity: &str,
        args: &[String],
    ) -> Result<Operator> {
        let http_port = free_port()?;
        let mut all = vec!["--http-addr".to_owned(), format!("127.0.0.1:{http_port}")];
        all.extend_from_slice(args);
        let (child, log) = spawn_thaw("operator", "thaw_controller", kubeconfig, log_name, &all)?;
        Ok(Operator {
            child,
            identity: identity.to_owned(),
            http_port,
            log,
        })
    }

    /// What the operator logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after 10 s; waits for the exit.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the process outright (a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `thaw activator`, reporting to one operator.
pub struct Activator {
    child: Child,
    pub id: String,
    /// Where functions are served.
    pub http_port: u16,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub admin_port: u16,
    log: PathBuf,
}

impl Activator {
    /// Starts `thaw activator` watching only `namespace` and reporting to
    /// `operator`'s `/v1/stats`, with `extra` flags appended (they may
    /// override the defaults, e.g. `--header-read-timeout 1s`).
    pub fn start(
        cluster: &Cluster,
        namespace: &str,
        operator: &Operator,
        id: &str,
        extra: &[&str],
    ) -> Result<Activator> {
        let mut args: Vec<String> = vec![
            "--watch-namespace".into(),
            namespace.into(),
            "--autoscaler-url".into(),
            format!("http://127.0.0.1:{}/v1/stats", operator.http_port),
            "--id".into(),
            id.into(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Self::start_args(
            cluster.kubeconfig(),
            &format!("{namespace}-{id}"),
            id,
            &args,
        )
    }

    /// Starts `thaw activator` with `kubeconfig` and `args` of the caller's
    /// choosing (a test passes the chart's), on free loopback ports, logging
    /// to `.cluster/logs/tests/<log_name>.log`.
    pub fn start_args(
        kubeconfig: &Path,
        log_name: &str,
        id: &str,
        args: &[String],
    ) -> Result<Activator> {
        let http_port = free_port()?;
        let admin_port = free_port()?;
        let mut all = vec![
            "--http-addr".to_owned(),
            format!("127.0.0.1:{http_port}"),
            "--admin-addr".to_owned(),
            format!("127.0.0.1:{admin_port}"),
        ];
        all.extend_from_slice(args);
        let (child, log) = spawn_thaw("activator", "thaw_activator", kubeconfig, log_name, &all)?;
        Ok(Activator {
            child,
            id: id.to_owned(),
            http_port,
            admin_port,
            log,
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    /// Waits until `/readyz` answers 200 (its caches synced).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let admin = self.admin_addr();
        crate::wait_until("the activator to be ready", timeout, || async move {
            let reply =
                crate::http::get(admin, "localhost", "/readyz", Duration::from_secs(2)).await?;
            Ok((reply.status == 200).then_some(()))
        })
        .await
    }

    /// Waits until the activator routes Function `namespace/name`: its
    /// watch has delivered the Function (its pods can arrive first, and
    /// until then requests for it get 404).
    pub async fn wait_routes(&self, namespace: &str, name: &str, timeout: Duration) -> Result<()> {
        let series = format!(
            "thaw_activator_function_routed{{function=\"{name}\",namespace=\"{namespace}\"}} 1"
        );
        crate::wait_until("the activator to route the Function", timeout, || async {
            Ok(self.metrics().await?.contains(&series).then_some(()))
        })
        .await
    }

    /// The Prometheus text on `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let reply = crate::http::get(
            self.admin_addr(),
            "localhost",
            "/metrics",
            Duration::from_secs(5),
        )
        .await?;
        Ok(reply.body)
    }

    /// What the activator logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process outright (a crash): no leaving report.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`; the exit status, if it exited.
    pub fn stop_within(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Activator {
    fn drop(&mut self) {
        self.stop_within(Duration::from_secs(10));
    }
}
