//! Pod networking with iproute2: one network namespace per pod, a veth pair
//! whose host end is a port of the node bridge and whose pod end is `eth0`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;

use ipnet::Ipv4Net;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::process::Command;
use tracing::{debug, warn};

/// Prefix of the network namespaces the agent creates.
pub const NETNS_PREFIX: &str = "thaw-";
/// Prefix of the host ends of pod veth pairs (interface names are at most 15 bytes).
pub const VETH_PREFIX: &str = "thv";

/// 12 hex digits of the pod UID: unique enough on one node, and short enough
/// for interface names.
pub fn short_id(uid: &str) -> String {
    uid.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase()
}

pub fn netns_name(uid: &str) -> String {
    format!("{NETNS_PREFIX}{}", short_id(uid))
}

pub fn host_veth_name(uid: &str) -> String {
    format!("{VETH_PREFIX}{}", short_id(uid))
}

/// A MAC derived from the IP (like Docker does), so that a reused address
/// never leaves stale neighbour entries behind.
pub fn pod_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The bridge's fixed MAC: without one, a Linux bridge takes the lowest MAC of
/// its ports, and pods would see their gateway's MAC change.
pub fn bridge_mac(gateway: Ipv4Addr) -> String {
    let o = gateway.octets();
    format!("02:54:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[derive(Debug, Clone)]
pub struct Net {
    pub ip_bin: PathBuf,
    pub bridge: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
}

#[derive(Deserialize)]
struct JsonLink {
    ifname: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    addr_info: Vec<JsonAddr>,
    #[serde(default)]
    flags: Vec<String>,
}

#[derive(Deserialize)]
struct JsonAddr {
    family: String,
    local: String,
    prefixlen: u8,
}

#[derive(Deserialize)]
struct JsonNetns {
    name: String,
}

impl Net {
    /// Runs `ip ARGS`, returning stdout or an error with stderr.
    pub async fn ip(&self, args: &[&str]) -> Result<String, String> {
        debug!(cmd = %args.join(" "), "ip");
        let out = Command::new(&self.ip_bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Creates the bridge if missing (with the gateway address and a fixed
    /// MAC), makes sure it has the gateway address and is up.
    pub async fn ensure_bridge(&self) -> Result<(), String> {
        let gw = format!("{}/{}", self.gateway, self.cidr.prefix_len());
        let links = self.links(&["addr", "show", "dev", &self.bridge]).await;
        let link = match links {
            Ok(mut l) if !l.is_empty() => l.remove(0),
            _ => {
                self.ip(&[
                    "link",
                    "add",
                    &self.bridge,
                    "address",
                    &bridge_mac(self.gateway),
                    "type",
                    "bridge",
                ])
                .await?;
                JsonLink {
                    ifname: self.bridge.clone(),
                    address: bridge_mac(self.gateway),
                    addr_info: vec![],
                    flags: vec![],
                }
            }
        };
        let has_addr = link.addr_info.iter().any(|a| {
            a.family == "inet"
                && a.local == self.gateway.to_string()
                && a.prefixlen == self.cidr.prefix_len()
        });
        let mac = bridge_mac(self.gateway);
        if !link.address.eq_ignore_ascii_case(&mac) {
            // A bridge created elsewhere: pin its MAC so it stays put as ports come and go.
            self.ip(&["link", "set", "dev", &self.bridge, "address", &mac])
                .await?;
        }
        if !has_addr {
            self.ip(&["addr", "add", &gw, "dev", &self.bridge]).await?;
        }
        if !link.flags.iter().any(|f| f == "UP") {
            self.ip(&["link", "set", &self.bridge, "up"]).await?;
        }
        Ok(())
    }

    async fn links(&self, args: &[&str]) -> Result<Vec<JsonLink>, String> {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let out = self.ip(&full).await?;
        if out.trim().is_empty() {
            return Ok(vec![]);
        }
        serde_json::from_str(&out).map_err(|e| format!("ip {}: bad JSON: {e}", args.join(" ")))
    }

    /// Creates the pod's namespace and veth pair from scratch (removing any
    /// leftover of the same pod first).
    pub async fn create_sandbox(&self, uid: &str, ip: Ipv4Addr) -> Result<(), String> {
        let ns = netns_name(uid);
        let veth = host_veth_name(uid);
        self.destroy_sandbox(uid).await;
        let result = async {
            self.ip(&["netns", "add", &ns]).await?;
            self.ip(&[
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &pod_mac(ip),
                "netns",
                &ns,
            ])
            .await?;
            self.ip(&["link", "set", &veth, "master", &self.bridge, "up"])
                .await?;
            let addr = format!("{ip}/{}", self.cidr.prefix_len());
            self.ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])
                .await?;
            self.ip(&["-n", &ns, "link", "set", "lo", "up"]).await?;
            self.ip(&["-n", &ns, "link", "set", "eth0", "up"]).await?;
            self.ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &self.gateway.to_string(),
            ])
            .await?;
            // The host may remember the MAC of an earlier holder of the address.
            let _ = self
                .ip(&["neigh", "del", &ip.to_string(), "dev", &self.bridge])
                .await;
            Ok::<(), String>(())
        }
        .await;
        if result.is_err() {
            self.destroy_sandbox(uid).await;
        }
        result
    }

    /// Kills whatever still runs in the pod's namespace and removes the
    /// namespace and the veth pair. Safe to call when nothing exists.
    pub async fn destroy_sandbox(&self, uid: &str) {
        let ns = netns_name(uid);
        let veth = host_veth_name(uid);
        self.kill_netns_processes(&ns).await;
        if self.link_exists(&veth).await
            && let Err(e) = self.ip(&["link", "del", &veth]).await
        {
            warn!(%veth, "removing veth: {e}");
        }
        if self.netns_exists(&ns).await
            && let Err(e) = self.ip(&["netns", "del", &ns]).await
        {
            warn!(%ns, "removing netns: {e}");
        }
    }

    async fn link_exists(&self, name: &str) -> bool {
        tokio::fs::metadata(format!("/sys/class/net/{name}"))
            .await
            .is_ok()
    }

    pub async fn netns_exists(&self, ns: &str) -> bool {
        tokio::fs::metadata(format!("/run/netns/{ns}"))
            .await
            .is_ok()
            || tokio::fs::metadata(format!("/var/run/netns/{ns}"))
                .await
                .is_ok()
    }

    /// SIGKILLs every process in the namespace.
    pub async fn kill_netns_processes(&self, ns: &str) {
        if !self.netns_exists(ns).await {
            return;
        }
        match self.ip(&["netns", "pids", ns]).await {
            Ok(out) => {
                for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    debug!(%ns, pid, "killing leftover process");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            Err(e) => warn!(%ns, "listing processes: {e}"),
        }
    }

    /// Names of all network namespaces with the agent's prefix.
    pub async fn list_own_netns(&self) -> Vec<String> {
        let out = match self.ip(&["-j", "netns", "list"]).await {
            Ok(o) => o,
            Err(e) => {
                warn!("listing netns: {e}");
                return vec![];
            }
        };
        if out.trim().is_empty() {
            return vec![];
        }
        match serde_json::from_str::<Vec<JsonNetns>>(&out) {
            Ok(list) => list
                .into_iter()
                .map(|n| n.name)
                .filter(|n| n.starts_with(NETNS_PREFIX))
                .collect(),
            Err(e) => {
                warn!("listing netns: bad JSON: {e}");
                vec![]
            }
        }
    }

    /// Host ends of pod veths (by name prefix).
    pub async fn list_own_veths(&self) -> Vec<String> {
        match self.links(&["link", "show", "type", "veth"]).await {
            Ok(links) => links
                .into_iter()
                .map(|l| l.ifname)
                .map(|n| n.split('@').next().unwrap_or_default().to_string())
                .filter(|n| n.starts_with(VETH_PREFIX))
                .collect(),
            Err(e) => {
                warn!("listing veths: {e}");
                vec![]
            }
        }
    }

    /// The IPv4 address of `eth0` in a namespace, if it is in the pod CIDR.
    pub async fn netns_pod_ip(&self, ns: &str) -> Option<Ipv4Addr> {
        let links = self
            .links(&["-n", ns, "addr", "show", "dev", "eth0"])
            .await
            .ok()?;
        links
            .iter()
            .flat_map(|l| &l.addr_info)
            .filter(|a| a.family == "inet")
            .filter_map(|a| a.local.parse::<Ipv4Addr>().ok())
            .find(|ip| self.cidr.contains(ip))
    }

    /// Removes a link if it still exists (deleting one end of a veth pair
    /// removes the other).
    pub async fn delete_link(&self, name: &str) {
        if !self.link_exists(name).await {
            return;
        }
        if let Err(e) = self.ip(&["link", "del", name]).await {
            warn!(link = %name, "removing: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits() {
        let uid = "3F2504E0-4F89-11D3-9A0C-0305E82C3301";
        assert_eq!(short_id(uid), "3f2504e04f89");
        assert_eq!(netns_name(uid), "thaw-3f2504e04f89");
        let veth = host_veth_name(uid);
        assert_eq!(veth, "thv3f2504e04f89");
        assert!(veth.len() <= 15);
    }

    #[test]
    fn macs_are_derived_from_addresses() {
        assert_eq!(pod_mac("10.244.0.5".parse().unwrap()), "02:42:0a:f4:00:05");
        assert_eq!(
            bridge_mac("10.244.0.1".parse().unwrap()),
            "02:54:0a:f4:00:01"
        );
    }
}
