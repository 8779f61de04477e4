//! Functions and their instance pods, as the tests create and inspect them.

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use thaw_api::{Function, keys::FUNCTION_LABEL};

use crate::TestNamespace;

/// Server-side applies Function `name` with `spec` in the test's namespace.
pub async fn apply_function(ns: &TestNamespace, name: &str, spec: Value) -> Result<()> {
    let function = json!({
        "apiVersion": "thaw.dev/v1alpha1",
        "kind": "Function",
        "metadata": { "name": name },
        "spec": spec,
    });
    ns.api::<Function>()
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&function),
        )
        .await?;
    Ok(())
}

/// The instance pods of Function `name`, terminating ones included.
pub async fn instance_pods(ns: &TestNamespace, name: &str) -> Result<Vec<Pod>> {
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("{FUNCTION_LABEL}={name}")))
        .await?;
    Ok(pods.items)
}

/// The pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
