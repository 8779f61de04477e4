//! State shared by all parts of the agent.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::ipam::Ipam;
use crate::net::Net;

pub struct Ctx {
    pub client: Client,
    pub node_name: String,
    pub net: Net,
    /// The image map, as given on the command line (messages name it so).
    pub images_path: PathBuf,
    /// What relative program paths and working directories resolve against.
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub backoff_base: Duration,
    /// The agent's own PATH, handed to containers.
    pub host_path: String,
    pub ipam: Mutex<Ipam>,
    /// Cancelled when the agent shuts down.
    pub shutdown: CancellationToken,
}

impl Ctx {
    /// The image map's path for messages: relative to --root when inside it
    /// (`e2e/images.toml`), else as given.
    pub fn images_display(&self) -> String {
        let p = &self.images_path;
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    pub fn ipam(&self) -> MutexGuard<'_, Ipam> {
        self.ipam.lock().unwrap_or_else(|e| e.into_inner())
    }
}
