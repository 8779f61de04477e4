//! thaw as users run it: installed by its chart (defaults: 2 operator and 2
//! activator replicas) on a kind cluster, real kubelet and containers of the
//! sample images, kube-proxy Services and CoreDNS.
//!
//! Built only with the `kind` feature and run by `e2e/kind/test.sh` (`make
//! kind-e2e`, `make test`) against the cluster of `e2e/kind/up.sh` with thaw
//! installed by `e2e/kind/install.sh`; `THAW_E2E_PROVIDER=kind`.

use std::{net::SocketAddr, process::Stdio};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Event, Pod},
};
use kube::{Api, api::ListParams};
use serde_json::json;
use thaw_api::{Function, keys::FUNCTION_LABEL};
use thaw_e2e::{
    Cluster, TestNamespace,
    fixtures::repo_root,
    functions::{apply_function, instance_pods},
    http::{Reply, get},
    kind::{
        ACTIVATOR, LEASE, SYSTEM, WAIT, fetch_in_cluster, image, parse_reply, restricted_namespace,
        running_pods,
    },
    wait_until,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const COLD_START: &str = "thaw-cold-start";

#[tokio::test(flavor = "multi_thread")]
async fn chart_runs_two_operators_and_two_activators_one_leading() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let (operators, activators) =
        wait_until("2 operator and 2 activator pods Running", WAIT, || async {
            let operators = running_pods(&cluster, "operator").await?;
            let activators = running_pods(&cluster, "activator").await?;
            Ok((operators.len() == 2 && activators.len() == 2).then_some((operators, activators)))
        })
        .await?;
    eprintln!("operators {operators:?}, activators {activators:?}");

    let lease = Api::<Lease>::namespaced(cluster.client(), SYSTEM)
        .get(LEASE)
        .await
        .context("the operator's Lease")?;
    let spec = lease.spec.context("Lease without spec")?;
    let holder = spec.holder_identity.context("nobody holds the Lease")?;
    // The holder identity is the pod name (the chart passes POD_NAME).
    ensure!(
        operators.contains(&holder),
        "Lease holder {holder:?} is not one of the running operators {operators:?}"
    );
    // Held, not just once taken: renewed within its duration.
    let renewed = spec.renew_time.context("Lease never renewed")?.0;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed);
    let duration = spec
        .lease_duration_seconds
        .context("Lease without duration")?;
    ensure!(
        age.as_secs() <= i64::from(duration),
        "Lease last renewed {age:?} ago, longer than its {duration} s: nobody is leading"
    );
    Ok(())
}

/// Applies hello (scales to zero, 2 s keep-alive) and waits for it Ready
/// with no instance.
async fn hello_at_zero(ns: &TestNamespace, name: &str, image: &str) -> Result<()> {
    apply_function(
        ns,
        name,
        json!({ "image": image, "scaling": { "keepAlive": "2s" } }),
    )
    .await?;
    at_zero(&ns.api(), &ns.api(), name).await
}

/// Waits until Function `name` is Ready with no instance pod left.
async fn at_zero(functions: &Api<Function>, pods: &Api<Pod>, name: &str) -> Result<()> {
    wait_until(&format!("{name} Ready with no instance"), WAIT, || async {
        let function = functions.get(name).await?;
        let ready = function
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let selector = format!("{FUNCTION_LABEL}={name}");
        let left = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        Ok((ready && left.is_empty()).then_some(()))
    })
    .await
}

/// `kubectl port-forward svc/thaw-activator :80` from this machine; the
/// child is killed when dropped.
struct PortForward {
    _child: Child,
    addr: SocketAddr,
}

async fn port_forward() -> Result<PortForward> {
    let mut child = Command::new("kubectl")
        .args([
            "-n",
            SYSTEM,
            "port-forward",
            &format!("svc/{ACTIVATOR}"),
            ":80",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting kubectl port-forward")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    // "Forwarding from 127.0.0.1:40123 -> 8080"
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                let port: u16 = rest.split_whitespace().next().context("no port")?.parse()?;
                return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
            }
        }
        bail!("kubectl port-forward exited without forwarding")
    })
    .await
    .context("kubectl port-forward did not start")??;
    // Keep reading its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(PortForward {
        _child: child,
        addr,
    })
}

fn check_cold(reply: &Reply, what: &str) -> Result<()> {
    ensure!(
        reply.status == 200,
        "{what}: status {} ({})",
        reply.status,
        reply.body
    );
    ensure!(
        reply.headers.contains_key(COLD_START),
        "{what}: no {COLD_START} header on the first response: {:?}",
        reply.headers
    );
    ensure!(
        reply.body.starts_with("hello from "),
        "{what}: body {:?}",
        reply.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_start_through_the_activator_service_from_a_pod_and_from_the_host() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let ns = restricted_namespace(&cluster, "kind-cold").await?;
    hello_at_zero(&ns, "hello", &image("hello")?).await?;

    // From a pod: the Function's own in-cluster name, an ExternalName
    // Service of the activator, resolved by CoreDNS, through kube-proxy.
    let url = format!("http://hello.{}.svc.cluster.local/", ns.name);
    let out = fetch_in_cluster(&ns, &[&url]).await?;
    let (status, headers, body) = parse_reply(&out)?;
    ensure!(status == 200, "in-cluster request: {out}");
    ensure!(
        headers.contains(COLD_START),
        "in-cluster request: no {COLD_START}: {out}"
    );
    ensure!(
        body.starts_with("hello from hello-"),
        "in-cluster request: body {body:?}"
    );

    // From the host: a port-forward to the activator's Service, by Host
    // header, once hello is back at zero.
    at_zero(&ns.api(), &ns.api(), "hello").await?;
    let forward = port_forward().await?;
    let host = format!("hello.{}.svc.cluster.local", ns.name);
    let reply = get(forward.addr, &host, "/", WAIT).await?;
    check_cold(&reply, "through the port-forward")?;
    Ok(())
}

/// The shell commands of the README's "Install on a real cluster" block that
/// runs a Function and calls it.
fn readme_quickstart() -> Result<Vec<String>> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let after = readme
        .split_once("Run a Function and call it through the activator")
        .context("README: no quickstart paragraph")?
        .1;
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .context("README: no sh block after the quickstart paragraph")?
        .0;
    Ok(block
        .lines()
        .map(|l| {
            l.split_once("  #")
                .map_or(l, |(cmd, _)| cmd)
                .trim()
                .to_owned()
        })
        .filter(|l| !l.is_empty())
        .collect())
}

async fn sh(command: &str) -> Result<String> {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", command])
        .current_dir(repo_root())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "`{command}` failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// Deletes the README's Function from `default` when the test ends.
struct DeleteOnDrop(&'static str);
impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .args(["delete", "--ignore-not-found", "--wait=false", "-f", self.0])
            .current_dir(repo_root())
            .status();
    }
}

/// The README quickstart and `make dev-kind` both run `default/hello`.
static DEFAULT_HELLO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn readme_quickstart_runs_literally() -> Result<()> {
    let _turn = DEFAULT_HELLO.lock().await;
    let cluster = Cluster::shared().await?;
    let commands = readme_quickstart()?;
    let mut commands = commands.iter();
    let mut next = |prefix: &str| -> Result<String> {
        let command = commands
            .next()
            .with_context(|| format!("README: no `{prefix}...` command"))?;
        ensure!(
            command.starts_with(prefix),
            "README: expected `{prefix}...`, found `{command}`"
        );
        Ok(command.clone())
    };

    let apply = next("kubectl apply -f manifests/examples/hello.yaml")?;
    let _cleanup = DeleteOnDrop("manifests/examples/hello.yaml");
    sh(&apply).await?;
    let client = cluster.client();
    at_zero(
        &Api::namespaced(client.clone(), "default"),
        &Api::namespaced(client, "default"),
        "hello",
    )
    .await?;
    let get_fn = sh(&next("kubectl get fn")?).await?;
    let row = get_fn
        .lines()
        .find(|l| l.starts_with("hello "))
        .with_context(|| format!("`kubectl get fn` lists no hello: {get_fn}"))?;
    ensure!(
        row.split_whitespace().any(|c| c == "True"),
        "hello not Ready: {get_fn}"
    );

    // The port-forward runs in the background (`&`); the curls follow once
    // it listens.
    let forward = next("kubectl -n thaw-system port-forward svc/thaw-activator 8080:80 &")?;
    let mut child = Command::new("bash")
        .args([
            "-c",
            &format!("exec {}", forward.trim_end_matches('&').trim()),
        ])
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_until(
        "the README's port-forward to listen on 8080",
        WAIT,
        || async {
            Ok(tokio::net::TcpStream::connect("127.0.0.1:8080")
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await?;
    let by_host = sh(&next(
        "curl -i -H 'Host: hello.default.svc.cluster.local' http://127.0.0.1:8080/",
    )?)
    .await?;
    let by_path = sh(&next("curl -i http://127.0.0.1:8080/fn/default/hello/")?).await?;
    child.kill().await?;
    for (what, out) in [("by Host", &by_host), ("by path", &by_path)] {
        let (status, headers, body) = parse_reply(out)?;
        ensure!(status == 200, "curl {what}: {out}");
        ensure!(body.starts_with("hello from hello-"), "curl {what}: {out}");
        if what == "by Host" {
            ensure!(
                headers.contains(COLD_START),
                "curl {what}: the first call is a cold start: {out}"
            );
        }
    }
    ensure!(
        commands.next().is_none(),
        "README: commands after the curls that this test does not run"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn root_image_with_default_security_is_refused_with_a_clear_condition() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let ns = restricted_namespace(&cluster, "kind-root").await?;
    // One instance at once (minInstances), no securityContext loosening.
    apply_function(
        &ns,
        "root",
        json!({ "image": image("hello-root")?, "scaling": { "minInstances": 1 } }),
    )
    .await?;
    let message = wait_until("root's Ready=False naming the reason", WAIT, || async {
        let function = ns.api::<Function>().get("root").await?;
        let ready = function
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
        Ok(ready.filter(|c| c.status == "False" && c.message.contains("runAsNonRoot")))
    })
    .await?;
    eprintln!(
        "Ready: {} {}: {}",
        message.status, message.reason, message.message
    );
    ensure!(
        message.message.contains("image will run as root"),
        "the message should say why: {}",
        message.message
    );
    // Not a crash loop: the one pod stays, never started, never replaced.
    let first = instance_pods(&ns, "root").await?;
    ensure!(first.len() == 1, "expected one pod, found {}", first.len());
    let uid = first[0].metadata.uid.clone();
    let pod_name = first[0].metadata.name.clone().context("pod without name")?;
    // The kubelet keeps retrying the container and reports each refusal
    // (event count); by the third the controller has seen it stuck a while.
    let selector = format!("involvedObject.name={pod_name},reason=Failed");
    wait_until(
        "the kubelet to refuse the container three times",
        WAIT,
        || async {
            let events = ns
                .api::<Event>()
                .list(&ListParams::default().fields(&selector))
                .await?;
            let count: i32 = events.items.iter().map(|e| e.count.unwrap_or(1)).sum();
            Ok((count >= 3).then_some(()))
        },
    )
    .await?;
    let pods = instance_pods(&ns, "root").await?;
    ensure!(
        pods.len() == 1 && pods[0].metadata.uid == uid,
        "the refused pod was replaced: {:?}",
        pods.iter().map(|p| &p.metadata.name).collect::<Vec<_>>()
    );
    let restarts: i32 = pods[0]
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    ensure!(restarts == 0, "the container restarted {restarts} times");
    Ok(())
}

/// Stops `make dev-kind`'s port-forward when the test ends.
struct StopForward;
impl Drop for StopForward {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(repo_root().join(".kind/port-forward.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// `make dev-kind`'s script on the chart-installed thaw: it applies hello,
/// leaves a port-forward running and prints a curl that cold-starts it.
#[tokio::test(flavor = "multi_thread")]
async fn dev_kind_prints_a_curl_that_cold_starts_hello() -> Result<()> {
    let _turn = DEFAULT_HELLO.lock().await;
    let cluster = Cluster::shared().await?;
    let _cleanup = DeleteOnDrop("manifests/examples/hello.yaml");
    let _forward = StopForward;
    let port = thaw_e2e::process::free_port()?;
    let out = sh(&format!("THAW_DEV_PORT={port} bash e2e/kind/dev.sh")).await?;
    let curl = format!("curl -i http://127.0.0.1:{port}/fn/default/hello/");
    ensure!(out.contains(&curl), "no `{curl}` in:\n{out}");
    let client = cluster.client();
    at_zero(
        &Api::namespaced(client.clone(), "default"),
        &Api::namespaced(client, "default"),
        "hello",
    )
    .await?;
    let reply = sh(&curl).await?;
    ensure!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    ensure!(
        reply.to_ascii_lowercase().contains("thaw-cold-start:"),
        "the printed curl cold-starts hello: {reply}"
    );
    Ok(())
}
