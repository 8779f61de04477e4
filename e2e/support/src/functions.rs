//! Functions and their instance pods, as the tests create and inspect them.

use anyhow::{Context, Result};
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

/// An RFC 3339 annotation (`thaw.dev/expires-at`, `thaw.dev/draining-since`)
/// of the Function's first instance pod, once one carries it.
pub async fn instance_time(
    ns: &TestNamespace,
    name: &str,
    key: &str,
) -> Result<Option<std::time::SystemTime>> {
    let Some(pod) = instance_pods(ns, name).await?.into_iter().next() else {
        return Ok(None);
    };
    let Some(text) = pod.metadata.annotations.and_then(|a| a.get(key).cloned()) else {
        return Ok(None);
    };
    let at: k8s_openapi::jiff::Timestamp = text.parse().context("annotation time")?;
    let nanos = u64::try_from(at.as_nanosecond()).context("time before 1970")?;
    Ok(Some(
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos),
    ))
}

/// How far apart two instants are, whichever is first.
pub fn gap(a: std::time::SystemTime, b: std::time::SystemTime) -> std::time::Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}
