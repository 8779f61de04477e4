//! A deleted Function leaves nothing behind: not in the operator's state
//! (controller memory, autoscaler), not in the operator's or the
//! activator's `/metrics` — whether the Function is deleted alone or with
//! its namespace. Each test has its own namespaces, operator and activator.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, api::DeleteParams};
use serde_json::{Value, json};
use thaw_api::Function;
use thaw_e2e::{
    Activator, Cluster, Operator, TestNamespace, functions::apply_function, http::get, wait_until,
};

const WAIT: Duration = Duration::from_secs(90);
const OWNERS: [&str; 3] = ["controller", "autoscaler", "metrics"];

async fn metrics(addr: SocketAddr) -> Result<String> {
    Ok(get(addr, "localhost", "/metrics", Duration::from_secs(5))
        .await?
        .body)
}

fn operator_addr(operator: &Operator) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], operator.http_port))
}

/// `thaw_tracked_functions{owner}` of the operator.
fn tracked(text: &str, owner: &str) -> Option<f64> {
    let prefix = format!("thaw_tracked_functions{{owner=\"{owner}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Sample lines labelled with `namespace` (and `function`, if given).
fn series<'t>(text: &'t str, namespace: &str, function: Option<&str>) -> Vec<&'t str> {
    let ns = format!("namespace=\"{namespace}\"");
    let f = function.map(|f| format!("function=\"{f}\""));
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.contains(&ns) && f.as_ref().is_none_or(|f| line.contains(f)))
        .collect()
}

/// Waits until every owner tracks exactly `n` Functions.
async fn wait_tracked(operator: &Operator, n: f64) -> Result<()> {
    let addr = operator_addr(operator);
    wait_until(
        &format!("the operator to track {n} Functions in every owner"),
        WAIT,
        || async move {
            let text = metrics(addr).await?;
            let counts: Vec<Option<f64>> = OWNERS.iter().map(|o| tracked(&text, o)).collect();
            if counts.iter().all(|c| *c == Some(n)) {
                Ok(Some(()))
            } else {
                anyhow::bail!("tracked {OWNERS:?} = {counts:?}")
            }
        },
    )
    .await
}

async fn function(ns: &TestNamespace, activator: &Activator, name: &str, spec: Value) {
    apply_function(ns, name, spec).await.expect("apply");
    activator
        .wait_routes(&ns.name, name, WAIT)
        .await
        .expect("routed");
}

/// One request through the activator, answered 200.
async fn call(activator: &Activator, ns: &TestNamespace, name: &str) {
    let host = format!("{name}.{}.svc.cluster.local", ns.name);
    let reply = get(activator.addr(), &host, "/", WAIT)
        .await
        .expect("request");
    assert_eq!(reply.status, 200, "{reply:?}");
}

fn fail(e: anyhow::Error, operator: &Operator, activator: &Activator) -> ! {
    panic!(
        "{e:#}\n--- operator log ---\n{}\n--- activator log ---\n{}",
        operator.log(),
        activator.log()
    )
}

#[tokio::test]
async fn deleting_a_function_leaves_no_state_or_series_behind() {
    let cluster = Cluster::shared().await.expect("cluster");
    cluster.install_function_crd().await.expect("CRD");
    let ns = cluster.namespace("life-fn").await.expect("namespace");
    let operator = Operator::start(&cluster, &ns.name, "op-a").expect("operator");
    let activator =
        Activator::start(&cluster, &ns.name, &operator, "act-a", &[]).expect("activator");
    activator.wait_ready(WAIT).await.expect("activator ready");
    let spec = json!({"image": "thaw.dev/samples/hello", "scaling": {"keepAlive": "1h"}});
    for name in ["gone", "kept"] {
        function(&ns, &activator, name, spec.clone()).await;
        call(&activator, &ns, name).await;
    }
    wait_tracked(&operator, 2.0)
        .await
        .unwrap_or_else(|e| fail(e, &operator, &activator));

    ns.api::<Function>()
        .delete("gone", &DeleteParams::background())
        .await
        .expect("delete");

    let (op, act) = (operator_addr(&operator), activator.admin_addr());
    let ns_name = ns.name.clone();
    wait_until("no series or state of the deleted Function", WAIT, || {
        let ns_name = ns_name.clone();
        async move {
            let (op_text, act_text) = (metrics(op).await?, metrics(act).await?);
            let left: Vec<String> = series(&op_text, &ns_name, Some("gone"))
                .into_iter()
                .chain(series(&act_text, &ns_name, Some("gone")))
                .map(str::to_owned)
                .collect();
            let counts: Vec<Option<f64>> = OWNERS.iter().map(|o| tracked(&op_text, o)).collect();
            if left.is_empty() && counts.iter().all(|c| *c == Some(1.0)) {
                Ok(Some(()))
            } else {
                anyhow::bail!("left: {left:?}; tracked {OWNERS:?} = {counts:?}")
            }
        }
    })
    .await
    .unwrap_or_else(|e| fail(e, &operator, &activator));

    // The other Function keeps its state and series.
    let op_text = metrics(op).await.expect("metrics");
    assert!(
        !series(&op_text, &ns.name, Some("kept")).is_empty(),
        "{op_text}"
    );
    let act_text = metrics(act).await.expect("metrics");
    assert!(
        !series(&act_text, &ns.name, Some("kept")).is_empty(),
        "{act_text}"
    );
    call(&activator, &ns, "kept").await;
}

#[tokio::test]
async fn deleting_a_namespace_of_functions_leaves_no_state_or_series_behind() {
    let cluster = Cluster::shared().await.expect("cluster");
    cluster.install_function_crd().await.expect("CRD");
    // The operator's Lease lives in a namespace of its own, which stays.
    let home = cluster.namespace("life-home").await.expect("namespace");
    let ns = cluster.namespace("life-ns").await.expect("namespace");
    let args = [
        "--lease-namespace",
        &home.name,
        "--watch-namespace",
        &ns.name,
        "--identity",
        "op-a",
        "--lease-duration-seconds",
        "4",
        // The activator is a local process, not a pod with a bound token.
        "--allow-unauthenticated-stats",
    ]
    .map(String::from);
    let operator = Operator::start_args(
        cluster.kubeconfig(),
        &format!("{}-op-a", ns.name),
        "op-a",
        &args,
    )
    .expect("operator");
    let activator =
        Activator::start(&cluster, &ns.name, &operator, "act-a", &[]).expect("activator");
    activator.wait_ready(WAIT).await.expect("activator ready");
    function(
        &ns,
        &activator,
        "one",
        json!({"image": "thaw.dev/samples/hello", "scaling": {"minInstances": 1}}),
    )
    .await;
    for name in ["two", "three"] {
        function(
            &ns,
            &activator,
            name,
            json!({"image": "thaw.dev/samples/hello"}),
        )
        .await;
    }
    call(&activator, &ns, "two").await;
    wait_tracked(&operator, 3.0)
        .await
        .unwrap_or_else(|e| fail(e, &operator, &activator));

    Api::<Namespace>::all(cluster.client())
        .delete(&ns.name, &DeleteParams::background())
        .await
        .expect("delete namespace");

    let (op, act) = (operator_addr(&operator), activator.admin_addr());
    let ns_name = ns.name.clone();
    wait_until(
        "no series or state of the namespace's Functions",
        WAIT,
        || {
            let ns_name = ns_name.clone();
            async move {
                let (op_text, act_text) = (metrics(op).await?, metrics(act).await?);
                let left: Vec<String> = series(&op_text, &ns_name, None)
                    .into_iter()
                    .chain(series(&act_text, &ns_name, None))
                    .map(str::to_owned)
                    .collect();
                let counts: Vec<Option<f64>> =
                    OWNERS.iter().map(|o| tracked(&op_text, o)).collect();
                if left.is_empty() && counts.iter().all(|c| *c == Some(0.0)) {
                    Ok(Some(()))
                } else {
                    anyhow::bail!("left: {left:?}; tracked {OWNERS:?} = {counts:?}")
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| fail(e, &operator, &activator));
    drop(activator);
    drop(operator);
}
