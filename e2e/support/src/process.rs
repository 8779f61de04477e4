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

/// A free loopback port (the listener is closed before it is used; tests
/// are the only thing binding loopback ports here).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
    /// there too, so parallel tests each have their own operator.
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
        let log_dir = repo_root().join(".cluster/logs/tests");
        std::fs::create_dir_all(&log_dir)?;
        let log = log_dir.join(format!("{log_name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(thaw_binary())
            .arg("operator")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .args(args)
            .env("RUST_LOG", "info,thaw_controller=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", thaw_binary().display()))?;
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
