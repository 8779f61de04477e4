//! Work proportional to what changed: an unchanged Function costs no API
//! writes however often it is reconciled — its Service is applied once (and
//! again only when someone changes or deletes it), its status only when it
//! changes. Writes are counted by the operator's `thaw_api_writes_total`.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use thaw_api::Function;
use thaw_e2e::{Cluster, Operator, functions::apply_function, http::get, wait_until};

const WAIT: Duration = Duration::from_secs(60);

async fn metrics(operator: &Operator) -> Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], operator.http_port));
    Ok(get(addr, "localhost", "/metrics", Duration::from_secs(5))
        .await?
        .body)
}

/// The value of the sample `series` (name and labels exactly), 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_unchanged_service_and_status_are_not_written_again() {
    let cluster = Cluster::shared().await.expect("cluster");
    cluster.install_function_crd().await.expect("CRD");
    let ns = cluster.namespace("prop").await.expect("namespace");
    let operator = Operator::start(&cluster, &ns.name, "op-a").expect("operator");
    let fail =
        |e: anyhow::Error| -> ! { panic!("{e:#}\n--- operator log ---\n{}", operator.log()) };
    apply_function(&ns, "quiet", json!({"image": "thaw.dev/samples/hello"}))
        .await
        .expect("apply");
    let reconciles = format!(
        "thaw_reconciles_total{{function=\"quiet\",namespace=\"{}\"}}",
        ns.name
    );
    let service_writes = "thaw_api_writes_total{resource=\"service\"}";
    let status_writes = "thaw_api_writes_total{resource=\"status\"}";
    // Settled: the Service and a Ready status exist, and the reconciles
    // those writes echo have run.
    let settled = wait_until("the Function to settle", WAIT, || async {
        let function = ns.api::<Function>().get("quiet").await?;
        let ready = function
            .status
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready"));
        let service = ns.api::<Service>().get_opt("quiet").await?.is_some();
        let text = metrics(&operator).await?;
        Ok((ready && service && value(&text, service_writes) >= 1.0).then_some(text))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    let before = value(&settled, &reconciles);
    let (services, statuses) = (
        value(&settled, service_writes),
        value(&settled, status_writes),
    );

    // Five reconciles, each woken by a change to the Function's metadata.
    let mut seen = before;
    for i in 0..5 {
        let patch = json!({"metadata": {"annotations": {"test.thaw.dev/poke": i.to_string()}}});
        ns.api::<Function>()
            .patch("quiet", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
        seen = wait_until("one more reconcile", WAIT, || async {
            let n = value(&metrics(&operator).await?, &reconciles);
            Ok((n > seen).then_some(n))
        })
        .await
        .unwrap_or_else(|e| fail(e));
    }
    let text = metrics(&operator).await.expect("metrics");
    assert!(value(&text, &reconciles) >= before + 5.0);
    assert_eq!(
        value(&text, service_writes),
        services,
        "Service re-applied:\n{text}"
    );
    assert_eq!(
        value(&text, status_writes),
        statuses,
        "status rewritten:\n{text}"
    );

    // Deleted behind the controller's back, the Service comes back: one write.
    ns.api::<Service>()
        .delete("quiet", &DeleteParams::default())
        .await
        .expect("delete Service");
    wait_until("the Service to be re-created", WAIT, || async {
        let back = ns.api::<Service>().get_opt("quiet").await?;
        Ok(back
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .map(|_| ()))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    let text = metrics(&operator).await.expect("metrics");
    assert_eq!(value(&text, service_writes), services + 1.0, "{text}");
}
