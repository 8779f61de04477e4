//! The activator, autoscaler and operator scenarios of tests/activator.rs,
//! tests/autoscaler.rs and tests/operator.rs, against thaw as the chart
//! installs it on kind: both activator replicas behind kube-proxy, the
//! leading operator pod, real containers of the sample images in a
//! namespace under Pod Security "restricted", the chart's default limits.
//!
//! Built only with the `kind` feature, run by e2e/kind/test.sh. These tests
//! share the chart's pods and leave them alone, so they run in parallel.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{Event, Pod, Service, ServiceAccount},
    jiff::Timestamp,
};
use kube::{
    api::{DeleteParams, ListParams, PostParams},
    runtime::watcher,
};
use serde_json::{Value, json};
use thaw_api::{
    Function,
    keys::{DRAINING_SINCE_ANNOTATION, EXPIRES_AT_ANNOTATION, FUNCTION_LABEL},
};
use thaw_e2e::{
    functions::{apply_function, is_ready},
    http::{Reply, get},
    install::{STATS_AUDIENCE, request_token},
    kind::{
        OPERATOR, SYSTEM, Scenario, WAIT, activator_metrics, fetch_in_cluster, image, metric,
        parse_reply, pod_get, running_pods,
    },
    wait_until,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

fn json_body(reply: &Reply) -> Result<Value> {
    serde_json::from_str(&reply.body).with_context(|| format!("not JSON: {reply:?}"))
}

/// Sends `n` requests at once; each reply with when it arrived.
async fn burst(
    s: &Arc<Scenario>,
    name: &str,
    n: usize,
    path: &str,
) -> Vec<(Result<Reply>, Timestamp)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (s, name, path) = (s.clone(), name.to_owned(), path.to_owned());
            tokio::spawn(async move { (s.get(&name, &path).await, Timestamp::now()) })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        match task.await {
            Ok(r) => replies.push(r),
            Err(e) => replies.push((Err(e.into()), Timestamp::now())),
        }
    }
    replies
}

/// What a watch of the Function's pods saw: the last expiry each instance
/// announced, and when it was first seen draining, terminating or gone.
#[derive(Default)]
struct Lifetimes {
    /// Every instance pod that ever existed while watched.
    created: BTreeSet<String>,
    expires_at: BTreeMap<String, Timestamp>,
    ended: BTreeMap<String, Timestamp>,
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(key).cloned()
}

/// Watches the Function's pods (a watch, so every change is seen when it
/// happens) until the returned task is aborted.
fn watch_lifetimes(
    s: &Scenario,
    name: &str,
) -> (Arc<Mutex<Lifetimes>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Lifetimes::default()));
    let config = watcher::Config::default().labels(&format!("{FUNCTION_LABEL}={name}"));
    let mut events = watcher(s.ns.api::<Pod>(), config).boxed();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let now = Timestamp::now();
            let mut w = out.lock().unwrap_or_else(PoisonError::into_inner);
            let (pod, gone) = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
                Ok(watcher::Event::Delete(p)) => (p, true),
                _ => continue,
            };
            let Some(pod_name) = pod.metadata.name.clone() else {
                continue;
            };
            w.created.insert(pod_name.clone());
            if let Some(at) = annotation(&pod, EXPIRES_AT_ANNOTATION).and_then(|a| a.parse().ok()) {
                w.expires_at.insert(pod_name.clone(), at);
            }
            let ending = gone
                || pod.metadata.deletion_timestamp.is_some()
                || annotation(&pod, DRAINING_SINCE_ANNOTATION).is_some();
            if ending {
                w.ended.entry(pod_name).or_insert(now);
            }
        }
    });
    (seen, task)
}

/// Ready=True with no instance.
async fn at_zero(s: &Scenario, name: &str) -> Result<()> {
    wait_until(&format!("{name} Ready at zero"), WAIT, || async {
        let ready = s
            .ready(name)
            .await?
            .is_some_and(|(status, ..)| status == "True");
        Ok((ready && s.pods(name).await?.is_empty()).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_instance_is_reaped_after_its_own_keep_alive_and_the_pool_returns_to_zero()
-> Result<()> {
    let s = Scenario::new("kind-keepalive").await?;
    let spec = json!({
        "image": image("testfn")?,
        "scaling": {"keepAlive": "8s", "maxInstances": 6},
        "queue": {"maxPending": 100, "maxWait": "90s"},
    });
    s.function("fn", spec).await?;
    at_zero(&s, "fn").await?;
    let (seen, watch) = watch_lifetimes(&s, "fn");

    let first = s.get("fn", "/").await?;
    ensure!(first.status == 200, "{first:?}");
    ensure!(first.headers.contains_key("thaw-cold-start"), "{first:?}");

    // Concurrent half-second requests on concurrency 1: more instances.
    let mut last: BTreeMap<String, Timestamp> = BTreeMap::new();
    for (reply, arrived) in burst(&s, "fn", 12, "/?sleep=500").await {
        let reply = reply?;
        ensure!(reply.status == 200, "{reply:?}");
        let instance = reply
            .headers
            .get("x-instance")
            .and_then(|v| v.to_str().ok())
            .context("no X-Instance")?
            .to_owned();
        let at = last.entry(instance).or_insert(arrived);
        *at = (*at).max(arrived);
    }
    ensure!(
        last.len() >= 2,
        "12 concurrent requests on one instance: {last:?}"
    );

    wait_until("every instance gone", WAIT, || async {
        Ok(s.pods("fn").await?.is_empty().then_some(()))
    })
    .await?;
    watch.abort();
    let (expiries, ends) = {
        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        (seen.expires_at.clone(), seen.ended.clone())
    };
    for (pod, last_request) in &last {
        let expires_at = expiries
            .get(pod)
            .with_context(|| format!("{pod} never announced its expiry"))?;
        let ended = ends
            .get(pod)
            .with_context(|| format!("{pod} never seen ending"))?;
        // Annotations carry whole seconds and move only past 1 s of change
        // (docs/decisions.md): up to 2 s early, never late.
        let announced = expires_at.duration_since(*last_request).as_secs_f64();
        ensure!(
            (5.8..=8.3).contains(&announced),
            "{pod}: expiry announced {announced:.1}s after its last request (keepAlive 8s)"
        );
        let early = expires_at.duration_since(*ended).as_secs_f64();
        ensure!(
            early < 1.2,
            "{pod} was reaped {early:.1}s before its announced expiry {expires_at}"
        );
        eprintln!("{pod}: last request {last_request}, expiry {expires_at}, ended {ended}");
    }

    let again = s.get("fn", "/").await?;
    ensure!(
        again.status == 200 && again.headers.contains_key("thaw-cold-start"),
        "back at zero, the next request cold-starts: {again:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_one_never_overlaps_on_an_instance_and_every_request_is_counted_once()
-> Result<()> {
    let s = Scenario::new("kind-one").await?;
    let spec = json!({
        "image": image("testfn")?,
        "concurrency": 1,
        "env": [{"name": "MAX_CONCURRENCY", "value": "1"}],
        "scaling": {"maxInstances": 3, "keepAlive": "5m"},
        "queue": {"maxPending": 100, "maxWait": "90s"},
    });
    s.function("one", spec).await?;
    const REQUESTS: usize = 24;
    for (reply, _) in burst(&s, "one", REQUESTS, "/?sleep=150").await {
        let reply = reply?;
        ensure!(reply.status == 200, "{reply:?}");
    }
    let stats = s.instance_stats("one").await?;
    ensure!((1..=3).contains(&stats.len()), "{} instances", stats.len());
    let mut served = 0;
    for stat in &stats {
        ensure!(stat["overlaps"] == 0, "requests overlapped: {stat}");
        ensure!(stat["maxInFlight"].as_u64() <= Some(1), "{stat}");
        served += stat["requests"].as_u64().unwrap_or_default();
    }
    ensure!(
        served == REQUESTS as u64,
        "served {served} of {REQUESTS}: counted once each"
    );
    Ok(())
}

/// Each activator has its own queue; both are bounded, and a request past
/// the bound is answered at once with 503, Retry-After and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_overflow_returns_503_with_retry_after() -> Result<()> {
    let s = Scenario::new("kind-full").await?;
    let spec = json!({
        "image": image("testfn")?,
        "concurrency": 1,
        "scaling": {"minInstances": 1, "maxInstances": 1},
        "queue": {"maxPending": 1, "maxWait": "60s"},
    });
    s.function("full", spec).await?;
    s.wait_ready_pods("full", 1).await?;
    ensure!(s.get("full", "/").await?.status == 200, "warm-up");

    let busy = {
        let s = s.clone();
        tokio::spawn(async move { s.get("full", "/?sleep=8000").await })
    };
    let in_flight = format!("thaw_activator_in_flight{}", s.labels("full"));
    wait_until("the busy request in flight", WAIT, || async {
        Ok((s.metric_sum(&in_flight).await? >= 1.0).then_some(()))
    })
    .await?;
    // Two activators: at most one held at the gate and one queued by each.
    let replies = burst(&s, "full", 8, "/more").await;
    let mut refused = 0;
    for (reply, _) in replies {
        let reply = reply?;
        match reply.status.as_u16() {
            200 => {}
            503 => {
                refused += 1;
                ensure!(
                    reply.headers.get("retry-after").is_some(),
                    "503 without Retry-After: {reply:?}"
                );
                let body = json_body(&reply)?;
                ensure!(
                    body["error"] == "queue full" && body["maxPending"] == 1,
                    "{body}"
                );
            }
            _ => bail!("neither served nor refused: {reply:?}"),
        }
    }
    ensure!(
        refused >= 5,
        "only {refused} of 8 refused with maxPending 1 on two activators"
    );
    let busy = busy.await??;
    ensure!(busy.status == 200, "{busy:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_longer_than_the_timeout_is_cut_with_504() -> Result<()> {
    let s = Scenario::new("kind-slow").await?;
    let spec = json!({
        "image": image("testfn")?,
        "timeout": "2s",
        "concurrency": 4,
        "scaling": {"minInstances": 1},
    });
    s.function("slow", spec).await?;
    s.wait_ready_pods("slow", 1).await?;
    ensure!(s.get("slow", "/").await?.status == 200, "warm-up");
    let reply = s.get("slow", "/?sleep=8000").await?;
    ensure!(reply.status == 504, "{reply:?}");
    let body = json_body(&reply)?;
    ensure!(body["timeout"] == "2s", "{body}");
    let next = s.get("slow", "/?sleep=10").await?;
    ensure!(next.status == 200, "it keeps serving: {next:?}");
    Ok(())
}

/// Writes `bytes` on a new connection and reads what comes back until the
/// server closes or `wait` passes. The writing runs beside the reading and
/// its errors are ignored: a server refusing an oversized request answers
/// and closes before it has read it all, which breaks the rest of the write.
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Result<String> {
    let stream = TcpStream::connect(addr).await?;
    let (mut reader, mut writer) = stream.into_split();
    let bytes = bytes.to_vec();
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&bytes).await;
        writer
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(wait, async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    write.abort();
    ensure!(read.is_ok() || !out.is_empty(), "no answer within {wait:?}");
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Hostile and broken HTTP through kube-proxy to either replica, at the
/// chart's default limits: each gets its 4xx, and both keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_answered_and_the_activators_keep_serving() -> Result<()> {
    let s = Scenario::new("kind-bad").await?;
    let spec =
        json!({"image": image("testfn")?, "concurrency": 10, "scaling": {"minInstances": 1}});
    s.function("bad", spec).await?;
    s.wait_ready_pods("bad", 1).await?;
    let host = s.host("bad");
    let ns = s.ns.name.clone();
    ensure!(s.get("bad", "/").await?.status == 200, "warm-up");

    let reply = get(s.addr, &format!("nope.{ns}.svc"), "/", WAIT).await?;
    ensure!(reply.status == 404, "{reply:?}");
    ensure!(
        json_body(&reply)?
            == json!({"error": "function not found", "function": format!("{ns}/nope")}),
        "{reply:?}"
    );
    for (h, path) in [
        ("bad_host!", "/"),
        ("localhost", "/fn/only-namespace"),
        ("localhost", "/fn/NS/f/"),
    ] {
        let reply = get(s.addr, h, path, WAIT).await?;
        ensure!(reply.status == 400, "{h} {path}: {reply:?}");
    }
    let many_headers = {
        let mut head = format!("GET / HTTP/1.1\r\nHost: {host}\r\n");
        for i in 0..150 {
            head.push_str(&format!("X-H{i}: v\r\n"));
        }
        head + "\r\n"
    };
    let checks: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a Content-Length over the default 10 MiB",
            format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000000\r\n\r\n")
                .into_bytes(),
            "HTTP/1.1 413",
        ),
        (
            "a header over the default 64 KiB",
            format!(
                "GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
                "a".repeat(70_000)
            )
            .into_bytes(),
            "HTTP/1.1 431",
        ),
        (
            "more than the default 100 headers",
            many_headers.into_bytes(),
            "HTTP/1.1 431",
        ),
        (
            "headers that never end (the default 10 s)",
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Slow: ").into_bytes(),
            "HTTP/1.1 408",
        ),
        (
            "garbage",
            b"\x16\x03\x01 not http\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            "no Host and no /fn/ path",
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            "HTTP/1.0 400",
        ),
    ];
    for (what, bytes, expected) in checks {
        let answer = raw(s.addr, &bytes, Duration::from_secs(30)).await?;
        ensure!(
            answer.starts_with(expected),
            "{what}: expected {expected}, got {answer:?}"
        );
        // Both replicas still serve: fresh connections spread over them.
        for _ in 0..4 {
            let reply = s.get("bad", "/").await?;
            ensure!(reply.status == 200, "after {what}: {reply:?}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_image_is_not_ready_with_the_reason_and_no_churn() -> Result<()> {
    let s = Scenario::new("kind-badimage").await?;
    apply_function(
        &s.ns,
        "bad",
        json!({"image": "registry.invalid/nope:1", "scaling": {"minInstances": 1}}),
    )
    .await?;
    let (_, reason, message) = wait_until("Ready=False with a pull error", WAIT, || async {
        Ok(s.ready("bad")
            .await?
            .filter(|(status, reason, _)| status == "False" && reason.contains("ImagePull")))
    })
    .await?;
    ensure!(
        message.contains("registry.invalid/nope:1"),
        "{reason}: {message}"
    );
    // No churn: the same single pod while kubelet retries its pull (its
    // Pulling events count the attempts).
    let first = names(&s.pods("bad").await?);
    ensure!(first.len() == 1, "{first:?}");
    let pod = first.iter().next().context("no pod")?.clone();
    let events = s.ns.api::<Event>();
    let selector = format!("involvedObject.name={pod},reason=Pulling");
    wait_until("kubelet to retry the pull", WAIT, || async {
        let now = names(&s.pods("bad").await?);
        if now != first {
            bail!("pods changed from {first:?} to {now:?}");
        }
        let attempts: i32 = events
            .list(&ListParams::default().fields(&selector))
            .await?
            .items
            .iter()
            .map(|e| {
                let series = e.series.as_ref().and_then(|s| s.count).unwrap_or(0);
                e.count.unwrap_or(1).max(series).max(1)
            })
            .sum();
        Ok((attempts >= 2).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changing_the_image_replaces_every_instance() -> Result<()> {
    let s = Scenario::new("kind-image").await?;
    let spec = |image: &str| json!({"image": image, "scaling": {"minInstances": 2}});
    s.function("roll", spec(&image("hello")?)).await?;
    let before = names(&s.wait_ready_pods("roll", 2).await?);
    let testfn = image("testfn")?;
    apply_function(&s.ns, "roll", spec(&testfn)).await?;
    let after = wait_until("2 ready instances of the new image only", WAIT, || async {
        let pods = s.pods("roll").await?;
        let all_new = pods.iter().all(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.as_deref())
                == Some(testfn.as_str())
        });
        Ok((pods.len() == 2 && all_new && pods.iter().all(is_ready)).then(|| names(&pods)))
    })
    .await?;
    ensure!(
        before.is_disjoint(&after),
        "old instances kept: {before:?} {after:?}"
    );
    let reply = s.get("roll", "/stats").await?;
    ensure!(
        reply.status == 200 && reply.body.contains("requests"),
        "testfn answers: {reply:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_the_function_removes_its_pods_and_service() -> Result<()> {
    let s = Scenario::new("kind-del").await?;
    let spec = json!({"image": image("hello")?, "scaling": {"minInstances": 1}});
    s.function("gone", spec).await?;
    s.wait_ready_pods("gone", 1).await?;
    wait_until("the Service", WAIT, || async {
        Ok(s.ns.api::<Service>().get_opt("gone").await?)
    })
    .await?;
    s.ns.api::<Function>()
        .delete("gone", &DeleteParams::foreground())
        .await?;
    wait_until("pods and Service gone", WAIT, || async {
        let pods = s.pods("gone").await?;
        let service = s.ns.api::<Service>().get_opt("gone").await?;
        Ok((pods.is_empty() && service.is_none()).then_some(()))
    })
    .await?;
    // And both activators forget it.
    wait_until("the activators to answer 404", WAIT, || async {
        for _ in 0..4 {
            if s.get("gone", "/").await?.status != 404 {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    Ok(())
}

/// The sum over the chart's operator pods of `thaw_stats_rejected_total`
/// with `reason`.
async fn rejected(s: &Scenario, reason: &str) -> Result<f64> {
    let series = format!("thaw_stats_rejected_total{{reason=\"{reason}\"}}");
    let mut sum = 0.0;
    for pod in running_pods(&s.cluster, "operator").await? {
        let text = pod_get(&s.cluster, SYSTEM, &pod, OPERATOR_PORT, "/metrics").await?;
        sum += metric(&text, &series).unwrap_or_default();
    }
    Ok(sum)
}

/// The operator's stats and metrics port in the chart's pods.
const OPERATOR_PORT: u16 = 9090;

/// A tenant of the shared cluster posts a forged stats report to the
/// chart's operator from a pod of its own, claiming 100 waiting requests
/// for a Function at zero in an activator's name: with no token, and with
/// a valid token of its own ServiceAccount for thaw's audience. Both are
/// refused (401, 403) and counted, and the Function stays at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_stats_report_is_refused_and_scales_nothing() -> Result<()> {
    let s = Scenario::new("kind-forge").await?;
    s.function("target", json!({"image": image("hello")?}))
        .await?;
    at_zero(&s, "target").await?;
    let activator = running_pods(&s.cluster, "activator")
        .await?
        .into_iter()
        .next()
        .context("no activator")?;
    let report = json!({
        "version": 2, "activator": activator, "epoch": 1, "sequence": 1,
        "intervalMs": 1000, "poke": true,
        "functions": [{
            "namespace": s.ns.name, "name": "target",
            "waiting": 100, "concurrency": 100.0, "requests": 100, "instances": [],
        }],
    })
    .to_string();
    let intruder: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "intruder"}}))?;
    s.ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &intruder)
        .await?;
    let token = request_token(&s.cluster, &s.ns.name, "intruder", &[STATS_AUDIENCE], None).await?;
    let url = format!("http://{OPERATOR}.{SYSTEM}.svc.cluster.local:{OPERATOR_PORT}/v1/stats");
    let bearer = format!("Authorization:Bearer {token}");
    for (reason, status, extra) in [
        ("missing_token", 401, None),
        ("wrong_service_account", 403, Some(bearer.as_str())),
    ] {
        let before = rejected(&s, reason).await?;
        let mut args = vec!["-d", &report, &url, "Content-Type:application/json"];
        args.extend(extra);
        let out = fetch_in_cluster(&s.ns, &args).await?;
        let (got, _, body) = parse_reply(&out)?;
        ensure!(
            got == status,
            "{reason}: expected {status}, got {got}: {body}"
        );
        wait_until(
            &format!("the refusal counted as {reason}"),
            WAIT,
            || async { Ok((rejected(&s, reason).await? > before).then_some(())) },
        )
        .await?;
    }
    ensure!(
        s.pods("target").await?.is_empty(),
        "a refused report started an instance"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_instances_keep_one_instance_past_its_keep_alive() -> Result<()> {
    let s = Scenario::new("kind-min").await?;
    let spec = json!({"image": image("hello")?, "scaling": {"minInstances": 1, "keepAlive": "1s"}});
    s.function("fn", spec).await?;
    let pod = names(&s.wait_ready_pods("fn", 1).await?);
    ensure!(s.get("fn", "/").await?.status == 200, "request");
    // Five keep-alives later the same instance is there, marked as kept.
    let since = std::time::Instant::now();
    let kept = wait_until("5 keep-alives of observation", WAIT, || async {
        let pods = s.pods("fn").await?;
        ensure!(
            names(&pods) == pod,
            "the instance changed: {:?}",
            names(&pods)
        );
        Ok((since.elapsed() > Duration::from_secs(5))
            .then(|| pods.first().and_then(|p| annotation(p, "thaw.dev/kept"))))
    })
    .await?;
    ensure!(kept.as_deref() == Some("kept by minInstances"), "{kept:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_instances_stay_ready_beside_the_busy_one() -> Result<()> {
    let s = Scenario::new("kind-warm").await?;
    let spec =
        json!({"image": image("testfn")?, "scaling": {"warmInstances": 2, "keepAlive": "2s"}});
    s.function("fn", spec).await?;
    s.wait_ready_pods("fn", 2).await?;
    let busy = {
        let s = s.clone();
        tokio::spawn(async move { s.get("fn", "/?sleep=15000").await })
    };
    let first = s.get("fn", "/").await?;
    ensure!(
        first.status == 200 && !first.headers.contains_key("thaw-cold-start"),
        "a warm instance served without a cold start: {first:?}"
    );
    wait_until("three ready instances while one is busy", WAIT, || async {
        let ready = s
            .pods("fn")
            .await?
            .iter()
            .filter(|p| is_ready(p) && annotation(p, DRAINING_SINCE_ANNOTATION).is_none())
            .count();
        Ok((ready >= 3).then_some(()))
    })
    .await?;
    let reply = busy.await??;
    ensure!(reply.status == 200, "{reply:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_instances_caps_the_pool_and_the_rest_waits() -> Result<()> {
    let s = Scenario::new("kind-max").await?;
    let spec =
        json!({"image": image("testfn")?, "scaling": {"maxInstances": 3, "keepAlive": "60s"}});
    s.function("fn", spec).await?;
    let (seen, watch) = watch_lifetimes(&s, "fn");
    let mut instances = BTreeSet::new();
    for (reply, _) in burst(&s, "fn", 10, "/?sleep=300").await {
        let reply = reply?;
        ensure!(reply.status == 200, "{reply:?}");
        if let Some(i) = reply
            .headers
            .get("x-instance")
            .and_then(|v| v.to_str().ok())
        {
            instances.insert(i.to_owned());
        }
    }
    watch.abort();
    let created = seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .created
        .clone();
    ensure!(instances.len() <= 3, "served by {instances:?}");
    // The watch saw every pod the operator created, not a sample.
    ensure!(
        created.len() <= 3,
        "{} pods created with maxInstances 3: {created:?}",
        created.len()
    );
    Ok(())
}

/// Waves of requests, every third one after the pool has been reaped: instances start and are reaped while requests keep coming, and
/// not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reaping_under_steady_load_loses_no_request() -> Result<()> {
    let s = Scenario::new("kind-reap").await?;
    let spec = json!({"image": image("testfn")?, "concurrency": 1, "scaling": {"keepAlive": "1s"}});
    s.function("fn", spec).await?;
    let reaps_before = reaps(&s).await?;
    let started = std::time::Instant::now();
    let (mut sent, mut failed) = (0, Vec::new());
    let mut wave = 0;
    while started.elapsed() < Duration::from_secs(30) {
        wave += 1;
        for (reply, _) in burst(&s, "fn", 1 + wave % 6, "/?sleep=100").await {
            sent += 1;
            match reply {
                Ok(r) if r.status == 200 => {}
                Ok(r) => failed.push(format!("{}: {}", r.status, r.body)),
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        // Every third wave, a pause until the pool has been reaped (every
        // instance draining or gone), so the next wave meets reaping.
        if wave % 3 == 0 {
            wait_until("the pool reaped between waves", WAIT, || async {
                let live = s
                    .pods("fn")
                    .await?
                    .iter()
                    .filter(|p| annotation(p, DRAINING_SINCE_ANNOTATION).is_none())
                    .count();
                Ok((live == 0).then_some(()))
            })
            .await?;
        }
    }
    let reaped = reaps(&s).await? - reaps_before;
    eprintln!("{sent} requests, {} failed, {reaped} reaps", failed.len());
    ensure!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    ensure!(
        reaped >= 3.0,
        "only {reaped} reaps: the test did not exercise reaping"
    );
    Ok(())
}

/// `thaw_reaps_total` of the test's namespace, summed over the operator
/// pods (the counts of whichever replica led).
async fn reaps(s: &Scenario) -> Result<f64> {
    let label = format!("namespace=\"{}\"", s.ns.name);
    let mut sum = 0.0;
    for pod in running_pods(&s.cluster, "operator").await? {
        let text = pod_get(&s.cluster, SYSTEM, &pod, OPERATOR_PORT, "/metrics").await?;
        sum += text
            .lines()
            .filter(|l| l.starts_with("thaw_reaps_total") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(sum)
}

/// Sample lines of every operator and activator pod's `/metrics` labelled
/// with `namespace` (and `function`, if given), each with its pod.
async fn series_left(s: &Scenario, namespace: &str, function: Option<&str>) -> Result<Vec<String>> {
    let ns = format!("namespace=\"{namespace}\"");
    let f = function.map(|f| format!("function=\"{f}\""));
    let mut texts = activator_metrics(&s.cluster).await?;
    for pod in running_pods(&s.cluster, "operator").await? {
        let text = pod_get(&s.cluster, SYSTEM, &pod, OPERATOR_PORT, "/metrics").await?;
        texts.push((pod, text));
    }
    Ok(texts
        .iter()
        .flat_map(|(pod, text)| {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| l.contains(&ns) && f.as_ref().is_none_or(|f| l.contains(f)))
                .map(move |l| format!("{pod}: {l}"))
        })
        .collect())
}

/// A deleted Function leaves no series in any replica's `/metrics`, the
/// other Function keeps its own; then its namespace is deleted and nothing
/// of it is left anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_function_or_its_namespace_leaves_no_series_behind() -> Result<()> {
    let s = Scenario::new("kind-life").await?;
    let spec = json!({"image": image("hello")?, "scaling": {"keepAlive": "1h"}});
    for name in ["gone", "kept"] {
        s.function(name, spec.clone()).await?;
        ensure!(s.get(name, "/").await?.status == 200, "{name} answers");
    }
    let ns = s.ns.name.clone();
    wait_until("series of both Functions", WAIT, || async {
        let gone = series_left(&s, &ns, Some("gone")).await?;
        let kept = series_left(&s, &ns, Some("kept")).await?;
        Ok((!gone.is_empty() && !kept.is_empty()).then_some(()))
    })
    .await?;

    s.ns.api::<Function>()
        .delete("gone", &DeleteParams::background())
        .await?;
    wait_until("no series of the deleted Function", WAIT, || async {
        let left = series_left(&s, &ns, Some("gone")).await?;
        ensure!(left.is_empty(), "left: {left:?}");
        Ok(Some(()))
    })
    .await?;
    ensure!(
        !series_left(&s, &ns, Some("kept")).await?.is_empty(),
        "the other Function lost its series"
    );
    ensure!(
        s.get("kept", "/").await?.status == 200,
        "kept still answers"
    );

    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(s.cluster.client())
        .delete(&ns, &DeleteParams::background())
        .await?;
    wait_until("no series of the deleted namespace", WAIT, || async {
        let left = series_left(&s, &ns, None).await?;
        ensure!(left.is_empty(), "left: {left:?}");
        Ok(Some(()))
    })
    .await?;
    Ok(())
}
