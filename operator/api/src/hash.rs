//! The spec hash: which spec an instance pod was built from.
//!
//! The controller labels every instance pod with it
//! ([`crate::keys::SPEC_HASH_LABEL`]) and the activator compares that label
//! with the hash of the Function's current spec to tell current instances
//! from outdated ones, so both must compute it the same way: here.

use sha2::{Digest, Sha256};

use crate::FunctionSpec;

/// Hash of the spec fields an instance pod is built from. Scaling and queue
/// settings are left out: changing `keepAlive` must not replace instances.
/// `concurrency` is in: the instance's gate enforces it, so a new limit needs
/// new instances (as a Knative revision carries its containerConcurrency);
/// so is `maxRequestsPerInstance`, for the same reason.
/// SHA-256, not std's hasher, because it must stay stable across releases
/// (a different hash would roll every instance on an operator upgrade).
pub fn spec_hash(spec: &FunctionSpec) -> String {
    let mut pod_fields = serde_json::json!({
        "image": spec.image,
        "command": spec.command,
        "args": spec.args,
        "env": spec.env,
        "resources": spec.resources,
        "port": spec.port,
        "readinessPath": spec.readiness_path,
        "serviceAccountName": spec.service_account_name,
        "podTemplate": spec.pod_template,
        "timeout": spec.timeout,
        "concurrency": spec.concurrency,
        "gate": 1,
    });
    // The gate enforces maxRequestsPerInstance too (a flag), so changing it
    // rolls the instances. Hashed only when set, so Functions without it keep
    // the hash they had before the field existed (no roll on upgrade).
    let max_requests = spec.max_requests_per_instance();
    if max_requests > 0
        && let Some(fields) = pod_fields.as_object_mut()
    {
        fields.insert("maxRequestsPerInstance".into(), max_requests.into());
    }
    let digest = Sha256::digest(pod_fields.to_string().as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FunctionSpec {
        serde_yaml::from_str(yaml).expect("spec")
    }

    #[test]
    fn max_requests_rolls_instances_only_when_set() {
        let plain = spec_hash(&spec("{image: hello:1}"));
        assert_eq!(
            plain,
            spec_hash(&spec("{image: hello:1, maxRequestsPerInstance: 0}")),
            "unset and 0 are the same spec: no roll on upgrade"
        );
        let once = spec_hash(&spec("{image: hello:1, maxRequestsPerInstance: 1}"));
        assert_ne!(plain, once);
        assert_ne!(
            once,
            spec_hash(&spec("{image: hello:1, maxRequestsPerInstance: 2}"))
        );
    }
}
