//! `kubectl thaw` as users run it: this build's `thaw` binary under the name
//! `kubectl-thaw` (a symlink in a directory of its own), which kubectl
//! finds on PATH.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use anyhow::{Context, Result};
use rand::distr::{Alphanumeric, SampleString};

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
}

impl Drop for KubectlThaw {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
