//! `kubectl thaw` against thaw installed by its chart on kind (real kubelet,
//! so port-forward works): `invoke` port-forwards to a ready pod behind the
//! activator Service, cold-starts a Function and prints its answer; `status`
//! then reads its instance, gate numbers included, through the API server.
//!
//! Built only with the `kind` feature and run by `e2e/kind/test.sh`.

use std::process::Output;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use thaw_e2e::{
    Cluster,
    functions::{apply_function, instance_pods},
    kind::{WAIT, image, restricted_namespace, wait_routed},
    plugin::KubectlThaw,
    wait_until,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(out: &Output, what: &str) -> Result<()> {
    ensure!(
        out.status.success(),
        "{what} failed: {}{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_port_forwards_to_the_activator_and_cold_starts_a_function() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let ns = restricted_namespace(&cluster, "kind-plugin").await?;
    apply_function(
        &ns,
        "hello",
        json!({ "image": image("hello")?, "scaling": { "keepAlive": "5m" } }),
    )
    .await?;
    wait_until("hello Ready", WAIT, || async {
        let function = ns.api::<thaw_api::Function>().get("hello").await?;
        let ready = function
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        Ok(ready.then_some(()))
    })
    .await?;
    ensure!(instance_pods(&ns, "hello").await?.is_empty(), "not at zero");
    wait_routed(&cluster, &ns.name, "hello").await?;

    let plugin = KubectlThaw::install()?;
    let out = plugin
        .run(cluster.kubeconfig(), &["-n", &ns.name, "invoke", "hello"])
        .await?;
    succeeded(&out, "invoke")?;
    let stderr = text(&out.stderr);
    ensure!(stderr.starts_with("HTTP 200 OK\n"), "status line: {stderr}");
    ensure!(
        stderr
            .lines()
            .any(|l| l.starts_with("cold start: ") && l.ends_with("ms (Thaw-Cold-Start)")),
        "no cold-start time: {stderr}"
    );
    let body = text(&out.stdout);
    ensure!(body.starts_with("hello from hello-"), "body {body:?}");

    let out = plugin
        .run(
            cluster.kubeconfig(),
            &["-n", &ns.name, "status", "hello", "-o", "json"],
        )
        .await?;
    succeeded(&out, "status")?;
    let report: Value = serde_json::from_slice(&out.stdout).context("status -o json")?;
    let instance = body.trim().trim_start_matches("hello from ");
    let row = report["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == instance)
        .with_context(|| format!("{instance} not in {report}"))?;
    ensure!(row["served"] == 1, "served: {row}");
    ensure!(report["gateError"].is_null(), "gate unread: {report}");
    Ok(())
}
