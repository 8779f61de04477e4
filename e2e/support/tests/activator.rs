//! `thaw activator` with `thaw operator` against the real API server and the
//! process node: scale from zero on the first request, the queue's bounds,
//! timeouts, the per-instance concurrency limit, bad input, reaping through
//! the activator's reports, and graceful shutdown. Each test has its own
//! namespace, operator and activator; traffic goes to loopback and pod IPs
//! only.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, ListParams},
};
use serde_json::{Value, json};
use thaw_api::{Function, keys::FUNCTION_LABEL};
use thaw_e2e::{
    Cluster, Operator, TestNamespace,
    functions::apply_function,
    http::{Reply, get, send},
    process::Activator,
    wait_until,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const WAIT: Duration = Duration::from_secs(60);

/// One test's world: a namespace with its own operator and activator.
/// Fields drop in order: the activator first (its leaving report reaches
/// the operator), the namespace last.
struct World {
    activator: Activator,
    operator: Operator,
    ns: TestNamespace,
    _cluster: Cluster,
}

impl World {
    async fn start(prefix: &str, activator_flags: &[&str]) -> World {
        let cluster = Cluster::shared().await.expect("cluster");
        cluster.install_function_crd().await.expect("CRD");
        let ns = cluster.namespace(prefix).await.expect("namespace");
        let operator = Operator::start(&cluster, &ns.name, "op-a").expect("operator");
        let activator = Activator::start(&cluster, &ns.name, &operator, "act-a", activator_flags)
            .expect("activator");
        let world = World {
            ns,
            operator,
            activator,
            _cluster: cluster,
        };
        world
            .activator
            .wait_ready(WAIT)
            .await
            .unwrap_or_else(|e| world.fail(e));
        world
    }

    /// Stops the activator and the operator, and deletes the namespace
    /// (its pods with it) before the test's runtime ends: the node has room
    /// for 110 pods, and a deletion left to a destructor may never be sent.
    async fn finish(self) {
        let World {
            activator,
            operator,
            ns,
            _cluster: cluster,
        } = self;
        drop(activator);
        drop(operator);
        let _ = Api::<Namespace>::all(cluster.client())
            .delete(&ns.name, &DeleteParams::background())
            .await;
    }

    /// Panics with `error` and both logs.
    fn fail<T>(&self, error: anyhow::Error) -> T {
        panic!(
            "{error:#}\n--- activator log ---\n{}\n--- operator log ---\n{}",
            self.activator.log(),
            self.operator.log()
        )
    }

    /// Applies Function `name` and waits until the activator knows it.
    async fn function(&self, name: &str, spec: Value) {
        apply_function(&self.ns, name, spec)
            .await
            .expect("apply Function");
        self.activator
            .wait_routes(&self.ns.name, name, WAIT)
            .await
            .unwrap_or_else(|e| self.fail(e));
    }

    /// `name`'s Host through the ExternalName Service form.
    fn host(&self, name: &str) -> String {
        format!("{name}.{}.svc.cluster.local", self.ns.name)
    }

    /// GET through the activator by Host.
    async fn get(&self, name: &str, path: &str) -> Result<Reply> {
        get(self.activator.addr(), &self.host(name), path, WAIT).await
    }

    /// Waits until a metric line starting with `prefix` has value `value`.
    async fn metric(&self, prefix: &str, value: f64) {
        wait_until(&format!("{prefix} = {value}"), WAIT, || async {
            Ok((metric(&self.activator.metrics().await?, prefix) == Some(value)).then_some(()))
        })
        .await
        .unwrap_or_else(|e| self.fail(e));
    }

    /// The function's live instance pods.
    async fn pods(&self, name: &str) -> Result<Vec<Pod>> {
        let pods = self
            .ns
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("{FUNCTION_LABEL}={name}")))
            .await?;
        Ok(pods.items)
    }

    /// Waits until the function has a ready instance the activator can use:
    /// one request through it answered 200.
    async fn warm(&self, name: &str) {
        let reply = self.get(name, "/").await.unwrap_or_else(|e| self.fail(e));
        if reply.status != 200 {
            self.fail::<()>(anyhow::anyhow!("warming up: {reply:?}"));
        }
    }
}

/// The value of the first metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn labels(world: &World, name: &str) -> String {
    format!("{{function=\"{name}\",namespace=\"{}\"}}", world.ns.name)
}

/// Sends raw bytes; returns the response head that came back (until the
/// blank line, the server closing, or `wait` passing).
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(bytes).await?;
    let mut out = Vec::new();
    let read_head = async {
        let mut buf = [0u8; 4096];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(wait, read_head).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn a_function_at_zero_answers_its_first_request_with_the_cold_start_header() {
    let world = World::start("act-cold", &[]).await;
    world
        .function(
            "cold",
            json!({"image": "thaw.dev/samples/testfn", "scaling": {"keepAlive": "5m"}}),
        )
        .await;
    assert!(
        world.pods("cold").await.expect("pods").is_empty(),
        "at zero"
    );

    let started = Instant::now();
    let reply = world
        .get("cold", "/first?x=1")
        .await
        .unwrap_or_else(|e| world.fail(e));
    assert_eq!(reply.status, 200, "{reply:?}");
    let header = reply
        .headers
        .get("thaw-cold-start")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| world.fail(anyhow::anyhow!("no Thaw-Cold-Start: {reply:?}")));
    let waited: u64 = header
        .strip_suffix("ms")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("Thaw-Cold-Start {header:?} is not <n>ms"));
    assert!(
        Duration::from_millis(waited) <= started.elapsed(),
        "{waited}ms"
    );
    let body: Value = serde_json::from_str(&reply.body).expect("testfn JSON");
    let pods = world.pods("cold").await.expect("pods");
    assert_eq!(pods.len(), 1, "one instance for one request");
    assert_eq!(
        body["instance"].as_str(),
        pods[0].metadata.name.as_deref(),
        "{body}"
    );

    // Warm now: no header; by path as well.
    let reply = world.get("cold", "/again").await.expect("second request");
    assert_eq!(reply.status, 200);
    assert!(!reply.headers.contains_key("thaw-cold-start"), "{reply:?}");
    let by_path = get(
        world.activator.addr(),
        "localhost",
        &format!("/fn/{}/cold/by/path?q=1", world.ns.name),
        WAIT,
    )
    .await
    .expect("by path");
    assert_eq!(by_path.status, 200, "{by_path:?}");
    for host in [
        format!("cold.{}.svc", world.ns.name),
        format!("cold.{}.svc.cluster.local:8080", world.ns.name),
    ] {
        let reply = get(world.activator.addr(), &host, "/", WAIT)
            .await
            .expect("by host");
        assert_eq!(reply.status, 200, "{host}: {reply:?}");
    }
    world
        .metric(
            &format!("thaw_activator_cold_starts_total{}", labels(&world, "cold")),
            1.0,
        )
        .await;

    // The reports reach the autoscaler: the status shows the last request.
    wait_until("status.lastRequestTime", WAIT, || async {
        let f = world.ns.api::<Function>().get("cold").await?;
        Ok(f.status.and_then(|s| s.last_request_time))
    })
    .await
    .unwrap_or_else(|e| world.fail(e));
    world.finish().await;
}

#[tokio::test]
async fn queue_overflow_returns_503_with_retry_after() {
    let world = World::start("act-full", &[]).await;
    world
        .function(
            "full",
            json!({
                "image": "thaw.dev/samples/testfn",
                "concurrency": 1,
                "scaling": {"minInstances": 1, "maxInstances": 1},
                "queue": {"maxPending": 1, "maxWait": "30s"},
            }),
        )
        .await;
    world.warm("full").await;
    let l = labels(&world, "full");

    let busy = {
        let (addr, host) = (world.activator.addr(), world.host("full"));
        tokio::spawn(async move { get(addr, &host, "/?sleep=3000", WAIT).await })
    };
    world
        .metric(&format!("thaw_activator_in_flight{l}"), 1.0)
        .await;
    let queued = {
        let (addr, host) = (world.activator.addr(), world.host("full"));
        tokio::spawn(async move { get(addr, &host, "/queued", WAIT).await })
    };
    world
        .metric(&format!("thaw_activator_queue_depth{l}"), 1.0)
        .await;

    let reply = world.get("full", "/overflow").await.expect("overflow");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        reply.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "{reply:?}"
    );
    let body: Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(body["error"], "queue full", "{body}");
    assert_eq!(body["maxPending"], 1, "{body}");

    assert_eq!(busy.await.expect("task").expect("busy").status, 200);
    let queued = queued.await.expect("task").expect("queued");
    assert_eq!(queued.status, 200);
    assert!(queued.headers.contains_key("thaw-cold-start"), "it waited");
    world.finish().await;
}

#[tokio::test]
async fn a_request_longer_than_the_timeout_is_cut_with_504() {
    let world = World::start("act-slow", &[]).await;
    world
        .function(
            "slow",
            json!({
                "image": "thaw.dev/samples/testfn",
                "timeout": "1s",
                "concurrency": 4,
                "scaling": {"minInstances": 1},
            }),
        )
        .await;
    // A cold start under load can take longer than this Function's 1 s
    // timeout: warm it once its instance is ready.
    wait_until("a ready instance", WAIT, || async {
        let pods = world.pods("slow").await?;
        Ok(pods.iter().any(thaw_e2e::functions::is_ready).then_some(()))
    })
    .await
    .unwrap_or_else(|e| world.fail(e));
    world.warm("slow").await;
    let started = Instant::now();
    let reply = world
        .get("slow", "/?sleep=5000")
        .await
        .expect("slow request");
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let body: Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(body["timeout"], "1s", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timeout of 1s"),
        "{body}"
    );
    // It keeps serving.
    let reply = world.get("slow", "/?sleep=10").await.expect("next request");
    assert_eq!(reply.status, 200, "{reply:?}");
    world.finish().await;
}

#[tokio::test]
async fn concurrency_one_never_overlaps_on_an_instance() {
    let world = World::start("act-one", &[]).await;
    world
        .function(
            "one",
            json!({
                "image": "thaw.dev/samples/testfn",
                "concurrency": 1,
                "env": [{"name": "MAX_CONCURRENCY", "value": "1"}],
                "scaling": {"maxInstances": 3, "keepAlive": "5m"},
                "queue": {"maxPending": 100, "maxWait": "60s"},
            }),
        )
        .await;
    const REQUESTS: usize = 24;
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let (addr, host) = (world.activator.addr(), world.host("one"));
        tasks.push(tokio::spawn(async move {
            get(addr, &host, &format!("/?sleep=150&i={i}"), WAIT).await
        }));
    }
    for task in tasks {
        let reply = task.await.expect("task").unwrap_or_else(|e| world.fail(e));
        assert_eq!(reply.status, 200, "{reply:?}");
    }

    // Every instance's own count, read at its pod IP.
    let pods = world.pods("one").await.expect("pods");
    assert!(!pods.is_empty() && pods.len() <= 3, "{} pods", pods.len());
    let mut served = 0;
    for pod in &pods {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let addr: SocketAddr = format!("{ip}:8080").parse().expect("pod address");
        let stats = get(addr, &ip, "/stats", Duration::from_secs(10))
            .await
            .expect("instance stats");
        let stats: Value = serde_json::from_str(&stats.body).expect("stats JSON");
        assert_eq!(stats["overlaps"], 0, "{stats}");
        assert!(stats["maxInFlight"].as_u64() <= Some(1), "{stats}");
        served += stats["requests"].as_u64().unwrap_or_default();
    }
    assert_eq!(served, REQUESTS as u64, "every request counted once");
    world.finish().await;
}

#[tokio::test]
async fn bad_input_is_answered_and_the_activator_keeps_serving() {
    let mut world = World::start(
        "act-bad",
        &[
            "--header-read-timeout",
            "1s",
            "--body-idle-timeout",
            "1s",
            "--max-body-bytes",
            "16384",
            "--max-headers",
            "50",
            "--max-header-bytes",
            "16384",
        ],
    )
    .await;
    world
        .function(
            "bad",
            json!({"image": "thaw.dev/samples/testfn", "concurrency": 10, "scaling": {"minInstances": 1}}),
        )
        .await;
    world.warm("bad").await;
    let addr = world.activator.addr();
    let host = world.host("bad");
    let ns = world.ns.name.clone();
    let wait = Duration::from_secs(10);

    // Unknown function: 404 naming it.
    let reply = get(addr, &format!("nope.{ns}.svc"), "/", wait)
        .await
        .expect("404");
    assert_eq!(reply.status, 404, "{reply:?}");
    let body: Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(
        body,
        json!({"error": "function not found", "function": format!("{ns}/nope")})
    );

    // Malformed Host and path: 400 JSON.
    for (host, path) in [
        ("bad_host!", "/"),
        ("localhost", "/fn/only-namespace"),
        ("localhost", "/fn/NS/f/"),
    ] {
        let reply = get(addr, host, path, wait).await.expect("400");
        assert_eq!(reply.status, 400, "{host} {path}: {reply:?}");
        let body: Value = serde_json::from_str(&reply.body).expect("JSON");
        assert!(body["error"].is_string(), "{body}");
    }

    let checks: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a Content-Length over --max-body-bytes",
            format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\n").into_bytes(),
            "HTTP/1.1 413",
        ),
        (
            "a streamed body over --max-body-bytes",
            {
                let mut bytes = format!(
                    "POST /?sleep=3000&echo=0 HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                .into_bytes();
                for _ in 0..10 {
                    bytes.extend_from_slice(b"1000\r\n");
                    bytes.extend_from_slice(&[b'z'; 4096]);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes
            },
            "HTTP/1.1 413",
        ),
        (
            "headers that never end",
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Slow: ").into_bytes(),
            "HTTP/1.1 408",
        ),
        (
            "a body that stalls",
            format!(
                "POST /?sleep=5000&echo=0 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\nonly ten b"
            )
            .into_bytes(),
            "HTTP/1.1 408",
        ),
        (
            "a header over --max-header-bytes",
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000))
                .into_bytes(),
            "HTTP/1.1 431",
        ),
        (
            "more headers than --max-headers",
            {
                let mut head = format!("GET / HTTP/1.1\r\nHost: {host}\r\n");
                for i in 0..60 {
                    head.push_str(&format!("X-H{i}: v\r\n"));
                }
                head.push_str("\r\n");
                head.into_bytes()
            },
            "HTTP/1.1 431",
        ),
        ("garbage", b"\x16\x03\x01 not http\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (
            "no Host and no /fn/ path",
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            "HTTP/1.0 400",
        ),
    ];
    for (what, bytes, expected) in checks {
        let started = Instant::now();
        let answer = raw(addr, &bytes, wait).await.expect(what);
        assert!(
            answer.starts_with(expected),
            "{what}: expected {expected}, got {answer:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{what} took {:?}",
            started.elapsed()
        );
        // Still serving after each.
        let reply = get(addr, &host, "/", wait)
            .await
            .unwrap_or_else(|e| world.fail(e));
        assert_eq!(reply.status, 200, "after {what}: {reply:?}");
    }

    // A body under the limit streams through intact (testfn echoes it).
    let payload = "x".repeat(10_000);
    let reply = send(
        addr,
        Request::post("/?echo=1")
            .header("host", &host)
            .body(Full::new(Bytes::from(payload.clone())))
            .expect("request"),
        wait,
    )
    .await
    .expect("echo");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, payload);
    assert!(world.activator.running(), "{}", world.activator.log());
    world.finish().await;
}

#[tokio::test]
async fn an_idle_instance_is_reaped_as_soon_as_the_activator_reports_it_drained() {
    let world = World::start("act-reap", &[]).await;
    world
        .function(
            "reap",
            json!({
                "image": "thaw.dev/samples/testfn",
                "timeout": "30s",
                "scaling": {"keepAlive": "2s"},
            }),
        )
        .await;
    world.warm("reap").await;
    let served = Instant::now();
    // Draining waits for every activator's report that nothing is in flight
    // (or for timeout + 10 s = 40 s without one): the pod must go well
    // before the fallback.
    wait_until(
        "the instance to be deleted",
        Duration::from_secs(30),
        || async {
            let live = world
                .pods("reap")
                .await?
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count();
            Ok((live == 0).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| world.fail(e));
    assert!(
        served.elapsed() < Duration::from_secs(25),
        "reaped after {:?}",
        served.elapsed()
    );
    // And it comes back on the next request.
    let reply = world
        .get("reap", "/back")
        .await
        .expect("scale from zero again");
    assert_eq!(reply.status, 200, "{reply:?}");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_and_says_goodbye() {
    let mut world = World::start("act-stop", &[]).await;
    world
        .function(
            "stop",
            json!({"image": "thaw.dev/samples/testfn", "scaling": {"minInstances": 1}}),
        )
        .await;
    world.warm("stop").await;
    let in_flight = {
        let (addr, host) = (world.activator.addr(), world.host("stop"));
        tokio::spawn(async move { get(addr, &host, "/?sleep=1500", WAIT).await })
    };
    world
        .metric(
            &format!("thaw_activator_in_flight{}", labels(&world, "stop")),
            1.0,
        )
        .await;
    let status =
        tokio::task::block_in_place(|| world.activator.stop_within(Duration::from_secs(20)));
    let reply = in_flight
        .await
        .expect("task")
        .expect("the request in flight");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}\n{}",
        world.activator.log()
    );
    let log = world.activator.log();
    assert!(log.contains("sent the leaving report"), "{log}");
    check_refused(world.activator.addr())
        .await
        .expect("no longer accepting");
    world.finish().await;
}

/// The activator no longer accepts connections.
async fn check_refused(addr: SocketAddr) -> Result<()> {
    if TcpStream::connect(addr).await.is_ok() {
        bail!("{addr} still accepts connections after shutdown");
    }
    Ok(())
}
