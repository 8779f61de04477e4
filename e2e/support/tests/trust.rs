//! Trust boundaries on the local cluster: only activator pods can report
//! stats (a TokenReview of a token bound to the pod the report names), and
//! a forged report changes nothing: no instance for a Function at zero, no
//! reaping held; a Function never takes over a Service it did not create;
//! a partial security context keeps the restrictive defaults. thaw runs
//! with the chart's ServiceAccounts and arguments.

use std::time::Duration;

use ::http::{Request, StatusCode};
use bytes::Bytes;
use http_body_util::Full;
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use thaw_api::Function;
use thaw_e2e::{
    Cluster, Operator, TestNamespace,
    functions::{apply_function, instance_pods},
    http,
    install::{ChartSetup, STATS_AUDIENCE, request_token},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(60);

/// thaw installed by the chart for this test ([`ChartSetup`]).
struct Setup(ChartSetup);

impl std::ops::Deref for Setup {
    type Target = ChartSetup;
    fn deref(&self) -> &ChartSetup {
        &self.0
    }
}

impl Setup {
    async fn new(prefix: &str) -> Setup {
        Setup(
            ChartSetup::new(prefix)
                .await
                .unwrap_or_else(|e| panic!("{e:#}")),
        )
    }

    fn logs(&self) -> String {
        self.chart.logs()
    }

    fn operator_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.chart.operator.http_port))
    }

    async fn apply(&self, name: &str, spec: serde_json::Value) {
        apply_function(&self.ns, name, spec)
            .await
            .expect("apply Function");
        self.chart
            .activator
            .wait_routes(&self.ns.name, name, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
    }

    /// POSTs a report claiming `waiting` requests for `function`, as
    /// `activator`, with `token` if any; the status the operator answered.
    async fn forge(
        &self,
        token: Option<&str>,
        activator: &str,
        function: &str,
        leaving: bool,
    ) -> StatusCode {
        let report = json!({
            // thaw_core::REPORT_VERSION: a well-formed report, so only its
            // credentials can be what refuses it.
            "version": 3,
            "activator": activator,
            "epoch": 1,
            "sequence": u64::MAX,
            "intervalMs": 1000,
            "poke": true,
            "leaving": leaving,
            "functions": [{
                "namespace": self.ns.name,
                "name": function,
                "waiting": 5000,
                "concurrency": 5000.0,
                "requests": 5000,
            }],
        });
        let mut request = Request::post("/v1/stats")
            .header("host", "localhost")
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(report.to_string())))
            .expect("request");
        http::send(self.operator_addr(), request, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()))
            .status
    }

    /// `thaw_stats_rejected_total{reason}` on the operator.
    async fn rejected(&self, reason: &str) -> f64 {
        let reply = http::get(
            self.operator_addr(),
            "localhost",
            "/metrics",
            Duration::from_secs(5),
        )
        .await
        .expect("metrics");
        let series = format!("thaw_stats_rejected_total{{reason=\"{reason}\"}} ");
        reply
            .body
            .lines()
            .find_map(|line| line.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{}", reply.body))
    }

    async fn live_pods(&self, name: &str) -> usize {
        instance_pods(&self.ns, name)
            .await
            .expect("pods")
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count()
    }
}

/// Forged reports (no token, another ServiceAccount's token, the
/// activator's own token naming another activator) get 401/403 and change
/// nothing: the Function they claim 5000 waiting requests for stays at
/// zero, and an idle instance of another Function is still reaped at its
/// keep-alive (a report from a made-up activator that then falls silent
/// would hold reaping for the Function's timeout plus 10 s, over 70 s here).
#[tokio::test]
async fn only_activator_pods_can_report_for_themselves() {
    let setup = Setup::new("trust-stats").await;
    setup
        .apply(
            "cold",
            json!({ "image": "thaw.dev/samples/hello", "scaling": { "maxInstances": 100 } }),
        )
        .await;
    setup
        .apply(
            "idle",
            json!({
                "image": "thaw.dev/samples/hello",
                "timeout": "60s",
                "scaling": { "keepAlive": "6s" },
            }),
        )
        .await;

    // The real activator's reports are accepted: a request cold-starts
    // `idle`, which needs its authenticated poke.
    let host = format!("idle.{}.svc.cluster.local", setup.ns.name);
    let reply = http::get(setup.chart.activator.addr(), &host, "/", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, setup.logs());

    let other_account = request_token(
        &setup.cluster,
        &setup.release.namespace,
        &setup.release.operator(),
        &[STATS_AUDIENCE],
        None,
    )
    .await
    .expect("token");
    let real = setup.chart.activator.id.clone();
    let activator_token = setup.chart.activator_token.clone();

    assert_eq!(
        setup.forge(None, "made-up", "cold", false).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        setup
            .forge(Some("not-a-token"), "made-up", "cold", false)
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        setup
            .forge(Some(&other_account), "made-up", "cold", false)
            .await,
        StatusCode::FORBIDDEN
    );
    // Another account cannot speak for the real activator either (a
    // `leaving` report would make the operator forget it).
    assert_eq!(
        setup.forge(Some(&other_account), &real, "idle", true).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        setup
            .forge(Some(&activator_token), "made-up", "cold", false)
            .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(setup.rejected("missing_token").await, 1.0);
    assert_eq!(setup.rejected("invalid_token").await, 1.0);
    assert_eq!(setup.rejected("wrong_service_account").await, 2.0);
    assert_eq!(setup.rejected("wrong_activator").await, 1.0);

    // Reaping carries on: `idle`'s instance goes at its keep-alive.
    wait_until(
        "idle's instance to be reaped",
        Duration::from_secs(40),
        || async { Ok((setup.live_pods("idle").await == 0).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    // By now the operator has decided `cold` many times over: it is at zero.
    assert_eq!(
        setup.live_pods("cold").await,
        0,
        "a forged report scaled a Function\n{}",
        setup.logs()
    );
}

/// The Function's Ready condition: (status, reason, message).
async fn ready_condition(ns: &TestNamespace, name: &str) -> Option<(String, String, String)> {
    let function = ns.api::<Function>().get(name).await.ok()?;
    function.status.and_then(|s| {
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status, c.reason, c.message))
    })
}

/// A Function named like an unrelated Service: `Ready=False` with reason
/// `ServiceConflict` naming it, the Service untouched (type, spec, no
/// ownerReference) and still there once the Function is gone (deleted in
/// the foreground, so its dependents go first); requests by path and Host
/// through the activator still reach the Function.
#[tokio::test]
async fn a_function_never_takes_over_an_existing_service() {
    let setup = Setup::new("trust-svc").await;
    let services = setup.ns.api::<Service>();
    let unrelated: Service = serde_json::from_value(json!({
        "metadata": { "name": "web", "labels": { "team": "web" } },
        "spec": {
            "type": "ClusterIP",
            "selector": { "app": "web" },
            "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }],
        },
    }))
    .expect("service");
    let before = services
        .create(&PostParams::default(), &unrelated)
        .await
        .expect("create the unrelated Service");

    setup
        .apply("web", json!({ "image": "thaw.dev/samples/hello" }))
        .await;
    let expected = format!("Service {}/web", setup.ns.name);
    let (status, message) = wait_until("Ready=False/ServiceConflict", WAIT, || async {
        Ok(ready_condition(&setup.ns, "web")
            .await
            .filter(|(_, reason, _)| reason == "ServiceConflict")
            .map(|(status, _, message)| (status, message)))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    assert_eq!(status, "False");
    assert!(message.contains(&expected), "{message}");

    // It still serves, by path and by Host.
    let by_path = format!("/fn/{}/web/", setup.ns.name);
    let reply = http::get(setup.chart.activator.addr(), "localhost", &by_path, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, setup.logs());
    let host = format!("web.{}.svc.cluster.local", setup.ns.name);
    let reply = http::get(setup.chart.activator.addr(), &host, "/", WAIT)
        .await
        .expect("request by Host");
    assert_eq!(reply.status, 200, "{}", reply.body);

    let unchanged = |service: &Service| {
        assert_eq!(service.spec, before.spec, "the Service's spec changed");
        assert_eq!(service.metadata.owner_references, None);
        assert_eq!(service.metadata.labels, before.metadata.labels);
        assert_eq!(
            service.spec.as_ref().and_then(|s| s.type_.as_deref()),
            Some("ClusterIP")
        );
    };
    unchanged(&services.get("web").await.expect("the Service"));

    setup
        .ns
        .api::<Function>()
        .delete("web", &DeleteParams::foreground())
        .await
        .expect("delete the Function");
    wait_until("the Function to be gone", WAIT, || async {
        Ok(setup
            .ns
            .api::<Function>()
            .get_opt("web")
            .await?
            .is_none()
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    unchanged(
        &services
            .get("web")
            .await
            .expect("the Service is still there"),
    );
}

/// A partial `securityContext` and `containerSecurityContext` merge with
/// the restrictive defaults: the created pod keeps `runAsNonRoot`, the
/// seccomp profile, no privilege escalation and dropped capabilities.
#[tokio::test]
async fn a_partial_security_context_keeps_the_defaults() {
    let cluster = Cluster::shared().await.expect("cluster");
    cluster.install_function_crd().await.expect("CRD");
    let ns = cluster.namespace("trust-sec").await.expect("namespace");
    let operator = Operator::start(&cluster, &ns.name, "op-a").expect("operator");
    apply_function(
        &ns,
        "sec",
        json!({
            "image": "thaw.dev/samples/hello",
            "scaling": { "minInstances": 1 },
            "podTemplate": {
                "securityContext": { "runAsUser": 1000 },
                "containerSecurityContext": { "readOnlyRootFilesystem": false },
            },
        }),
    )
    .await
    .expect("apply Function");
    let pod = wait_until("the instance pod", WAIT, || async {
        Ok(instance_pods(&ns, "sec").await?.into_iter().next())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log()));
    let spec = pod.spec.expect("spec");
    let pod_sc = spec.security_context.expect("pod securityContext");
    assert_eq!(pod_sc.run_as_user, Some(1000));
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_eq!(
        pod_sc.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let sc = spec.containers[0]
        .security_context
        .clone()
        .expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
}

/// Opens `n` connections from `source` to `addr`, each sending `head` (an
/// unfinished request head, or nothing).
async fn open_connections(
    source: std::net::IpAddr,
    addr: std::net::SocketAddr,
    n: usize,
    head: &'static [u8],
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::new(source, 0))
            .expect("bind");
        let mut stream = socket.connect(addr).await.expect("connect");
        if !head.is_empty() {
            let _ = stream.write_all(head).await;
        }
        streams.push(stream);
    }
    streams
}

/// Whether the peer closed `stream` (a read of 0 bytes or an error), or
/// answered and closed, by now or within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A slowloris client (from another loopback address) on the operator's
/// endpoint and 10,000 idle connections on the activator: a Function still
/// scales from zero (the activator's reports are accepted) and other
/// clients' requests succeed; the slow clients are cut off by the header
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_clients_do_not_stop_autoscaling_or_other_requests() {
    let setup = Setup::new("trust-flood").await;
    setup
        .apply(
            "fn",
            json!({ "image": "thaw.dev/samples/hello", "scaling": { "keepAlive": "30s" } }),
        )
        .await;
    let flooder: std::net::IpAddr = [127, 0, 0, 2].into();
    let mut slow = open_connections(
        flooder,
        setup.operator_addr(),
        300,
        b"POST /v1/stats HTTP/1.1\r\nHost: x\r\n",
    )
    .await;
    let idle = open_connections(flooder, setup.chart.activator.addr(), 10_000, b"").await;

    // Autoscaling carries on: a request scales `fn` from zero, which takes
    // the activator's poke reaching the operator.
    let host = format!("fn.{}.svc.cluster.local", setup.ns.name);
    let reply = http::get(setup.chart.activator.addr(), &host, "/", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", setup.logs()));
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, setup.logs());
    for _ in 0..20 {
        let reply = http::get(
            setup.chart.activator.addr(),
            &host,
            "/",
            Duration::from_secs(10),
        )
        .await
        .expect("request beside 10,000 idle connections");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Every slow client is cut off by the operator's header deadline (5 s).
    for stream in &mut slow {
        assert!(
            closed_within(stream, Duration::from_secs(20)).await,
            "a slowloris connection outlived the header deadline"
        );
    }
    drop(idle);
}
