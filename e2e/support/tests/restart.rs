//! Idle clocks survive an activator restart: an instance whose activator
//! restarted after its last request is destroyed `keepAlive` after that
//! request, and the `expires-at` it showed before the restart stays right.
//! Its own namespace, operator and activator.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use serde_json::json;
use thaw_api::keys::{DRAINING_SINCE_ANNOTATION, EXPIRES_AT_ANNOTATION};
use thaw_e2e::{
    Activator, Cluster, Operator,
    functions::{apply_function, instance_pods},
    http::get,
    metrics::metric_sum,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(60);
const KEEP_ALIVE: i64 = 12;
/// What a stats report's transit may add to the last activity it reports.
const REPORT_TRANSIT_MS: i64 = 250;

fn annotation(pod: &Pod, key: &str) -> Option<Timestamp> {
    pod.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

/// When the pod's Ready condition last became true.
fn ready_at(pod: &Pod) -> Option<Timestamp> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(ready.last_transition_time.as_ref()?.0)
}

/// `b - a` in milliseconds.
fn millis(a: Timestamp, b: Timestamp) -> i64 {
    b.as_millisecond() - a.as_millisecond()
}

#[tokio::test]
async fn an_instance_whose_activator_restarted_is_destroyed_keep_alive_after_its_last_request() {
    let cluster = Cluster::shared().await.expect("cluster");
    cluster.install_function_crd().await.expect("CRD");
    let ns = cluster.namespace("restart").await.expect("namespace");
    let operator = Operator::start(&cluster, &ns.name, "op-a").expect("operator");
    let mut activator =
        Activator::start(&cluster, &ns.name, &operator, "act-a", &[]).expect("activator");
    activator.wait_ready(WAIT).await.expect("ready");
    apply_function(
        &ns,
        "idle",
        json!({"image": "thaw.dev/samples/hello", "scaling": {"keepAlive": format!("{KEEP_ALIVE}s")}}),
    )
    .await
    .expect("apply");
    activator
        .wait_routes(&ns.name, "idle", WAIT)
        .await
        .expect("routed");
    let host = format!("idle.{}.svc.cluster.local", ns.name);
    let reply = get(activator.addr(), &host, "/", WAIT)
        .await
        .expect("request");
    assert_eq!(reply.status, 200, "{reply:?}");
    // The request ended at most this late.
    let done = Timestamp::now();

    let fail = |e: anyhow::Error, activator: &Activator| -> ! {
        panic!(
            "{e:#}\n--- operator ---\n{}\n--- activator ---\n{}",
            operator.log(),
            activator.log()
        )
    };
    let (before, ready) = wait_until("the instance's expires-at", WAIT, || async {
        let pods = instance_pods(&ns, "idle").await?;
        Ok(pods.first().and_then(|p| {
            let expires = annotation(p, EXPIRES_AT_ANNOTATION)?;
            Some((expires, ready_at(p)?))
        }))
    })
    .await
    .unwrap_or_else(|e| fail(e, &activator));
    // The keep-alive clock starts at the last request, but never before
    // Kubernetes saw the pod Ready: the activator's own probe lets a cold
    // start's request through first, and kubelet's readiness can follow up
    // to a probe period later.
    let idle_from = done.max(ready);
    let shown = millis(idle_from, before);
    // Shown in whole seconds, rounded down (so up to 1 s early). The
    // autoscaler dates the last activity from the report's arrival minus
    // its idle time, so the report's transit can put it a little after the
    // client saw the end: tens of ms with debug builds on a busy machine.
    assert!(
        (KEEP_ALIVE * 1000 - 1000..=KEEP_ALIVE * 1000 + REPORT_TRANSIT_MS).contains(&shown),
        "expires-at {before} is {shown} ms after the request ended ({done}; pod Ready at {ready})"
    );

    // A few seconds on (four more reports: an old activator restarted then
    // would have moved the expiry by as much), a graceful restart of the
    // activator: same id, a new process.
    let admin = activator.admin_addr();
    let sent = metric_sum(admin, "thaw_activator_reports_total")
        .await
        .expect("metrics");
    wait_until("four more reports", WAIT, || async move {
        let now = metric_sum(admin, "thaw_activator_reports_total").await?;
        Ok((now >= sent + 4.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| fail(e, &activator));
    activator.stop_within(Duration::from_secs(10));
    let activator =
        Activator::start(&cluster, &ns.name, &operator, "act-a", &[]).expect("activator");
    activator.wait_ready(WAIT).await.expect("ready");
    let admin = activator.admin_addr();
    wait_until("two reports of the new process", WAIT, || async move {
        let sent = metric_sum(admin, "thaw_activator_reports_total").await?;
        Ok((sent >= 2.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| fail(e, &activator));
    let pods = instance_pods(&ns, "idle").await.expect("pods");
    if let Some(after) = pods
        .first()
        .and_then(|p| annotation(p, EXPIRES_AT_ANNOTATION))
    {
        assert!(
            millis(before, after).abs() <= 1000,
            "expires-at moved from {before} to {after} across the restart"
        );
    }

    // Destroyed at that expiry: marked draining within 1 s of it.
    let drained = wait_until("the instance to be drained", WAIT, || async {
        let pods = instance_pods(&ns, "idle").await?;
        Ok(pods
            .first()
            .and_then(|p| annotation(p, DRAINING_SINCE_ANNOTATION)))
    })
    .await
    .unwrap_or_else(|e| fail(e, &activator));
    let late = millis(before, drained);
    assert!(
        (0..=1000).contains(&late),
        "drained at {drained}, {late} ms after its expiry {before}"
    );
}
