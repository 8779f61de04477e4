//! Node registration, status heartbeats and the node lease.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::ctx::Ctx;

pub const KUBELET_VERSION: &str = "v1.36.3-thaw-node";
pub const FIELD_MANAGER: &str = "thaw-node";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
pub const STATUS_EVERY: Duration = Duration::from_secs(60);
pub const MAX_PODS: u32 = 110;

/// Facts about the host reported in the Node object.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    pub cpus: usize,
    pub memory_kib: u64,
    pub machine_id: String,
    pub boot_id: String,
    pub system_uuid: String,
    pub kernel_version: String,
    pub os_image: String,
    pub architecture: &'static str,
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `MemTotal` from /proc/meminfo, in KiB.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `PRETTY_NAME` from /etc/os-release.
pub fn parse_os_release(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl HostFacts {
    pub fn gather() -> Self {
        let machine_id = read_trimmed("/etc/machine-id").unwrap_or_default();
        HostFacts {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_kib: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| parse_meminfo(&t))
                .unwrap_or(0),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid")
                .unwrap_or_else(|| machine_id.clone()),
            machine_id,
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
            os_image: std::fs::read_to_string("/etc/os-release")
                .ok()
                .and_then(|t| parse_os_release(&t))
                .unwrap_or_else(|| "Linux".into()),
            architecture: go_arch(),
        }
    }
}

/// The Node object's metadata and spec (server-side applied).
pub fn node_manifest(name: &str, pod_cidr: Option<&str>, arch: &str) -> Value {
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": arch,
                "thaw.dev/process-node": "true",
            },
        },
    });
    if let Some(cidr) = pod_cidr {
        v["spec"] = json!({ "podCIDR": cidr, "podCIDRs": [cidr] });
    }
    v
}

/// The node status: capacity, conditions (keeping transition times of
/// unchanged ones from `prev`), addresses, node info.
pub fn node_status(
    name: &str,
    internal_ip: &str,
    host: &HostFacts,
    prev: &[NodeCondition],
    now: Timestamp,
) -> Value {
    let resources = json!({
        "cpu": host.cpus.to_string(),
        "memory": format!("{}Ki", host.memory_kib),
        "pods": MAX_PODS.to_string(),
    });
    let cond = |type_: &str, status: &str, reason: &str, message: &str| {
        let transition = prev
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": Time(now),
            "lastTransitionTime": transition,
        })
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "thaw-node is posting ready status"),
        ],
        "addresses": [
            { "type": "InternalIP", "address": internal_ip },
            { "type": "Hostname", "address": name },
        ],
        "daemonEndpoints": { "kubeletEndpoint": { "Port": 10250 } },
        "nodeInfo": {
            "machineID": host.machine_id,
            "systemUUID": host.system_uuid,
            "bootID": host.boot_id,
            "kernelVersion": host.kernel_version,
            "osImage": host.os_image,
            "containerRuntimeVersion": format!("thaw-node://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": host.architecture,
        },
    })
}

pub struct NodeAgent {
    ctx: Arc<Ctx>,
    host: HostFacts,
    uid: Option<String>,
}

impl NodeAgent {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        NodeAgent {
            ctx,
            host: HostFacts::gather(),
            uid: None,
        }
    }

    fn api(&self) -> Api<Node> {
        Api::all(self.ctx.client.clone())
    }

    /// Creates or updates the Node, then reports it Ready.
    pub async fn register(&mut self) -> anyhow::Result<()> {
        let name = self.ctx.node_name.clone();
        let cidr = self.ctx.net.cidr.to_string();
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let arch = self.host.architecture;
        let node = match self
            .api()
            .patch(
                &name,
                &pp,
                &Patch::Apply(node_manifest(&name, Some(&cidr), arch)),
            )
            .await
        {
            Ok(n) => n,
            Err(kube::Error::Api(e)) if e.code == 422 => {
                warn!("node spec not applied ({e}); is spec.podCIDR already set to another range?");
                self.api()
                    .patch(&name, &pp, &Patch::Apply(node_manifest(&name, None, arch)))
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(existing) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref())
            && existing != cidr
        {
            warn!(%existing, ours = %cidr, "node has a different spec.podCIDR; pods use ours");
        }
        self.uid = node.uid();
        self.report_status(Some(&node)).await?;
        self.renew_lease().await?;
        Ok(())
    }

    async fn report_status(&self, current: Option<&Node>) -> anyhow::Result<()> {
        let name = &self.ctx.node_name;
        let fetched;
        let node = match current {
            Some(n) => n,
            None => {
                fetched = self.api().get(name).await?;
                &fetched
            }
        };
        let prev = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let status = node_status(
            name,
            &self.ctx.net.gateway.to_string(),
            &self.host,
            &prev,
            Timestamp::now(),
        );
        self.api()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        Ok(())
    }

    async fn renew_lease(&self) -> anyhow::Result<()> {
        let name = &self.ctx.node_name;
        let mut metadata = json!({ "name": name, "namespace": LEASE_NAMESPACE });
        if let Some(uid) = &self.uid {
            metadata["ownerReferences"] = json!([{
                "apiVersion": "v1",
                "kind": "Node",
                "name": name,
                "uid": uid,
            }]);
        }
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": MicroTime(Timestamp::now()),
            },
        });
        let api: Api<Lease> = Api::namespaced(self.ctx.client.clone(), LEASE_NAMESPACE);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(lease),
        )
        .await?;
        Ok(())
    }

    /// Renews the lease every 10 s and reports status every minute until shutdown.
    pub async fn heartbeat(mut self) {
        let mut lease_tick = tokio::time::interval(LEASE_RENEW);
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        lease_tick.tick().await;
        status_tick.tick().await;
        loop {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return,
                _ = lease_tick.tick() => {
                    match self.renew_lease().await {
                        Ok(()) => debug!("lease renewed"),
                        Err(e) => warn!("renewing node lease: {e}"),
                    }
                }
                _ = status_tick.tick() => {
                    match self.report_status(None).await {
                        Ok(()) => debug!("node status reported"),
                        Err(e) => {
                            warn!("reporting node status: {e}");
                            if is_not_found(&e) {
                                info!("node object is gone; registering again");
                                if let Err(e) = self.register().await {
                                    warn!("registering node: {e}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostFacts {
        HostFacts {
            cpus: 2,
            memory_kib: 1024,
            machine_id: "m".into(),
            boot_id: "b".into(),
            system_uuid: "s".into(),
            kernel_version: "6.1".into(),
            os_image: "Debian".into(),
            architecture: "amd64",
        }
    }

    #[test]
    fn parses_host_files() {
        assert_eq!(
            parse_meminfo("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000)
        );
        assert_eq!(
            parse_os_release("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12\"\n"),
            Some("Debian GNU/Linux 12".into())
        );
    }

    #[test]
    fn manifest_and_status() {
        let m = node_manifest("n1", Some("10.244.0.0/24"), "amd64");
        assert_eq!(m["spec"]["podCIDRs"][0], "10.244.0.0/24");
        assert_eq!(m["metadata"]["labels"]["kubernetes.io/hostname"], "n1");
        assert!(node_manifest("n1", None, "amd64").get("spec").is_none());

        let now = Timestamp::from_second(1000).unwrap();
        let earlier = Timestamp::from_second(10).unwrap();
        let prev = vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(Time(earlier)),
            ..Default::default()
        }];
        let s = node_status("n1", "10.244.0.1", &host(), &prev, now);
        assert_eq!(s["capacity"]["cpu"], "2");
        assert_eq!(s["allocatable"]["memory"], "1024Ki");
        assert_eq!(s["capacity"]["pods"], "110");
        assert_eq!(s["addresses"][0]["address"], "10.244.0.1");
        assert_eq!(s["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["lastTransitionTime"], "1970-01-01T00:00:10Z");
        assert_eq!(ready["lastHeartbeatTime"], "1970-01-01T00:16:40Z");
    }
}
