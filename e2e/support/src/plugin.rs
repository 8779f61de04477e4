//! `kubectl thaw` as users run it: this build's `thaw` binary under the name
//! `kubectl-thaw` (a symlink in a directory of its own), which kubectl
//! finds on PATH.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use rand::distr::{Alphanumeric, SampleString};
use tokio::io::AsyncReadExt;

use crate::process::thaw_binary;

/// A directory with a `kubectl-thaw` symlink to `target/debug/thaw`,
/// removed when dropped.
pub struct KubectlThaw {
    dir: PathBuf,
}

impl KubectlThaw {
    pub fn install() -> Result<Self> {
        let suffix = Alphanumeric
            .sample_string(&mut rand::rng(), 8)
            .to_lowercase();
        let dir = std::env::temp_dir().join(format!("thaw-plugin-{suffix}"));
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::symlink(thaw_binary(), dir.join("kubectl-thaw"))
            .context("linking kubectl-thaw to the thaw binary")?;
        Ok(Self { dir })
    }

    /// The plugin's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join("kubectl-thaw")
    }

    /// Runs `kubectl-thaw --kubeconfig <kubeconfig> <args>` to completion.
    pub async fn run(&self, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
        tokio::process::Command::new(self.path())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running kubectl-thaw {args:?}"))
    }
    /// Starts `kubectl-thaw --kubeconfig <kubeconfig> <args>` (a watch),
    /// its stdout collected as it comes; stopped when dropped.
    pub fn spawn(&self, kubeconfig: &Path, args: &[&str]) -> Result<Running> {
        let mut child = tokio::process::Command::new(self.path())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting kubectl-thaw {args:?}"))?;
        let mut stdout = child.stdout.take().context("no stdout")?;
        let output = Arc::new(Mutex::new(String::new()));
        let sink = output.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut out) = sink.lock() {
                    out.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Running {
            _child: child,
            output,
        })
    }
}

/// A running `kubectl-thaw`.
pub struct Running {
    _child: tokio::process::Child,
    output: Arc<Mutex<String>>,
}

impl Running {
    /// What it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

impl Drop for KubectlThaw {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
