//! `kubectl thaw` (this build's `thaw` binary run as `kubectl-thaw`) against
//! the local cluster, with the test's own operator and activator:
//!
//! * `status` on a Function with one busy, one idle and one draining
//!   instance, made by thaw itself: a request held on the only instance,
//!   then a spec change, so thaw's rollout drains that instance (still busy,
//!   it stays draining while the request runs) and starts two current ones,
//!   one of which gets a second held request. Text (golden, names and times
//!   masked) and `-o json` agree, and agree with each instance's own count.
//! * `invoke --activator-url` cold-starts a Function from zero and prints
//!   its answer and the cold-start time; the next call is warm. A
//!   `status -w` started at zero prints again once the instance exists.

use std::{collections::BTreeMap, net::SocketAddr, process::Output, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::{
    core::v1::{Pod, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::api::PostParams;
use serde_json::{Value, json};
use thaw_api::keys::DRAINING_SINCE_ANNOTATION;
use thaw_e2e::{
    Activator, Cluster, Operator, TestNamespace,
    fixtures::{repo_root, sample_image},
    functions::{apply_function, instance_pods, is_ready},
    http::get,
    plugin::KubectlThaw,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(90);
/// Held requests outlast the test; the namespace's deletion ends them.
const HOLD: &str = "/?sleep=300000";

struct World {
    cluster: Cluster,
    ns: TestNamespace,
    operator: Operator,
    activator: Activator,
    plugin: KubectlThaw,
}

impl World {
    async fn start(prefix: &str) -> Result<World> {
        let cluster = Cluster::shared().await?;
        cluster.install_function_crd().await?;
        let ns = cluster.namespace(prefix).await?;
        let operator = Operator::start(&cluster, &ns.name, "op-a")?;
        let activator = Activator::start(&cluster, &ns.name, &operator, "act-a", &[])?;
        activator.wait_ready(WAIT).await?;
        Ok(World {
            cluster,
            ns,
            operator,
            activator,
            plugin: KubectlThaw::install()?,
        })
    }

    /// `kubectl thaw -n <ns> <args>`.
    async fn thaw(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["-n", self.ns.name.as_str()];
        all.extend_from_slice(args);
        self.plugin.run(self.cluster.kubeconfig(), &all).await
    }

    /// `kubectl thaw status <name> -o json`, parsed.
    async fn status_json(&self, name: &str) -> Result<Value> {
        let out = self.thaw(&["status", name, "-o", "json"]).await?;
        ensure!(
            out.status.success(),
            "status -o json: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("status -o json is not JSON")
    }

    fn host(&self, name: &str) -> String {
        format!("{name}.{}.svc.cluster.local", self.ns.name)
    }

    /// A request held on the function (the reply never comes in the test).
    fn hold(&self, name: &str) -> tokio::task::JoinHandle<()> {
        let (addr, host) = (self.activator.addr(), self.host(name));
        tokio::spawn(async move {
            let _ = get(addr, &host, HOLD, Duration::from_secs(600)).await;
        })
    }

    fn fail(&self, e: anyhow::Error) -> ! {
        panic!(
            "{e:#}\n--- operator log ---\n{}\n--- activator log ---\n{}",
            self.operator.log(),
            self.activator.log()
        )
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn spec(generation: &str, instances: u32) -> Value {
    json!({
        "image": sample_image("testfn"),
        "concurrency": 1,
        "timeout": "10m",
        "env": [{"name": "GENERATION", "value": generation}],
        "scaling": {"minInstances": instances, "maxInstances": instances, "keepAlive": "1s"},
    })
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The instances of a `status -o json` report by name: (state, kept, inFlight).
fn instances(report: &Value) -> BTreeMap<String, (String, Value, Value)> {
    report["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or_default().to_owned(),
                (
                    i["state"].as_str().unwrap_or_default().to_owned(),
                    i["kept"].clone(),
                    i["inFlight"].clone(),
                ),
            )
        })
        .collect()
}

/// testfn's own in-flight count, read at the pod's IP.
async fn own_in_flight(pod: &Pod) -> Result<u64> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod without IP")?;
    let addr: SocketAddr = format!("{ip}:8080").parse()?;
    let reply = get(addr, &ip, "/stats", Duration::from_secs(5)).await?;
    let stats: Value = serde_json::from_str(&reply.body)?;
    stats["inFlight"]
        .as_u64()
        .context("no inFlight in testfn stats")
}

/// The text output with what varies between runs masked: the namespace, pod
/// names, durations; table rows sorted (their order follows random names)
/// and cells joined by a single ` | `.
fn masked(output: &str, namespace: &str, function: &str) -> String {
    let output = output.replace(namespace, "<ns>");
    let (head, table) = output.split_once("\n\n").unwrap_or((&output, ""));
    let head: Vec<String> = head
        .lines()
        .map(|line| match line.split_once("Last request:") {
            Some(_) => "Last request: <t>".to_owned(),
            None => line.to_owned(),
        })
        .collect();
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let split = |line: &str| -> Vec<String> {
        line.split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut rows: Vec<String> = lines
        .map(|line| {
            let cells = split(line);
            let masked: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, cell)| match i {
                    0 if cell.starts_with(&format!("{function}-")) => "<pod>".to_owned(),
                    4 | 7 if is_duration(cell) => "<t>".to_owned(),
                    5 if cell.starts_with("in ") => "in <t>".to_owned(),
                    6 if cell.contains('(') => "<cold-start>".to_owned(),
                    _ => cell.clone(),
                })
                .collect();
            masked.join(" | ")
        })
        .collect();
    rows.sort();
    format!(
        "{}\n\n{}\n{}\n",
        head.join("\n"),
        split(header).join(" | "),
        rows.join("\n")
    )
}

/// `5s`, `3m2s`, `2d` as kubectl prints ages.
fn is_duration(cell: &str) -> bool {
    !cell.is_empty()
        && cell.chars().any(|c| c.is_ascii_digit())
        && cell
            .chars()
            .all(|c| c.is_ascii_digit() || "smhdy".contains(c))
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_a_busy_an_idle_and_a_draining_instance() {
    let world = World::start("plugin-status").await.expect("world");
    status_scenario(&world)
        .await
        .unwrap_or_else(|e| world.fail(e));
}

async fn status_scenario(world: &World) -> Result<()> {
    let (ns, name) = (&world.ns, "shop");
    apply_function(ns, name, spec("1", 1)).await?;
    world.activator.wait_routes(&ns.name, name, WAIT).await?;
    let first = wait_until("one ready instance", WAIT, || async {
        let pods = instance_pods(ns, name).await?;
        Ok(match pods.as_slice() {
            [pod] if is_ready(pod) => Some(name_of(pod)),
            _ => None,
        })
    })
    .await?;
    let _held_first = world.hold(name);
    wait_until("the first instance busy", WAIT, || async {
        let report = world.status_json(name).await?;
        Ok(instances(&report)
            .get(&first)
            .is_some_and(|(state, ..)| state == "busy")
            .then_some(()))
    })
    .await?;

    // A spec change: thaw rolls out two current instances and drains the
    // old one, which stays while its request runs.
    apply_function(ns, name, spec("2", 2)).await?;
    wait_until(
        "the old instance draining, two current ones ready",
        WAIT,
        || async {
            let pods = instance_pods(ns, name).await?;
            let draining = pods.iter().any(|p| {
                name_of(p) == first
                    && p.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(DRAINING_SINCE_ANNOTATION))
            });
            let current = pods
                .iter()
                .filter(|p| name_of(p) != first && is_ready(p))
                .count();
            Ok((draining && current == 2).then_some(()))
        },
    )
    .await?;
    let _held_second = world.hold(name);

    let report = wait_until(
        "draining, busy and idle (kept) in the report",
        WAIT,
        || async {
            let report = world.status_json(name).await?;
            let mut seen: Vec<(String, Value)> = instances(&report)
                .into_values()
                .map(|(state, kept, _)| (state, kept))
                .collect();
            seen.sort_by(|a, b| a.0.cmp(&b.0));
            let want = vec![
                ("busy".to_owned(), json!("busy")),
                ("draining".to_owned(), Value::Null),
                // Two requests in flight at concurrency 1 (target 0.7) want three
                // instances: the idle one is kept for that demand (capped at two).
                ("idle".to_owned(), json!("demand")),
            ];
            let counts = &report["instanceCounts"];
            let counted = counts["busy"] == 1 && counts["idle"] == 1 && counts["draining"] == 1;
            if seen == want && counted {
                Ok(Some(report))
            } else {
                bail!("instances {seen:?}, counts {counts}")
            }
        },
    )
    .await?;

    // The report agrees with what the API and the instances themselves say.
    let pods = instance_pods(ns, name).await?;
    let by_name = instances(&report);
    for pod in &pods {
        let (state, _, in_flight) = by_name.get(&name_of(pod)).context("instance missing")?;
        let own = own_in_flight(pod).await?;
        ensure!(
            in_flight.as_u64() == Some(own),
            "{}: report says {in_flight} in flight, testfn says {own}",
            name_of(pod)
        );
        let want = match (name_of(pod) == first, own) {
            (true, _) => "draining",
            (false, 0) => "idle",
            (false, _) => "busy",
        };
        ensure!(state == want, "{}: {state}, want {want}", name_of(pod));
    }

    // The text output: the golden file, and the same states as the JSON.
    let out = world.thaw(&["status", name]).await?;
    ensure!(out.status.success(), "status: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    eprintln!("kubectl thaw status {name}:\n{stdout}");
    let golden = repo_root().join("e2e/support/tests/golden/plugin-status.txt");
    let got = masked(&stdout, &ns.name, name);
    if std::env::var_os("THAW_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got)?;
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    ensure!(
        got == want,
        "status output differs from {}:\n{stdout}\nmasked:\n{got}\nwant:\n{want}",
        golden.display()
    );
    for (pod, (state, ..)) in &by_name {
        ensure!(
            stdout
                .lines()
                .any(|l| l.starts_with(pod.as_str()) && l.split_whitespace().nth(1) == Some(state)),
            "the text output does not show {pod} {state}:\n{stdout}"
        );
    }
    // -A: every Function in the cluster (other tests' too), this one among
    // them with the same states.
    let out = world
        .plugin
        .run(world.cluster.kubeconfig(), &["status", "-A", "-o", "json"])
        .await?;
    ensure!(out.status.success(), "status -A: {}", text(&out.stderr));
    let all: Value = serde_json::from_slice(&out.stdout).context("status -A -o json")?;
    let ours = all["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["namespace"] == ns.name.as_str() && f["name"] == name)
        .context("this Function is not in status -A")?;
    let states = |r: &Value| -> Vec<String> {
        instances(r)
            .into_values()
            .map(|(state, ..)| state)
            .collect()
    };
    ensure!(
        states(ours) == states(&report),
        "status -A shows {:?}, status {:?}",
        states(ours),
        states(&report)
    );
    viewer_without_pod_proxy(world, name).await
}

/// Someone who may read Functions and pods but not `pods/proxy`: the gates'
/// numbers read `?`, the head says why once, and the command succeeds. Their
/// kubeconfig's context (named with `--context`) names the namespace, so no
/// `-n` is given.
async fn viewer_without_pod_proxy(world: &World, name: &str) -> Result<()> {
    let ns = &world.ns;
    let pp = PostParams::default();
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "viewer"}}))?;
    ns.api::<ServiceAccount>().create(&pp, &account).await?;
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "viewer"},
        "rules": [
            {"apiGroups": ["thaw.dev"], "resources": ["functions"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        ],
    }))?;
    ns.api::<Role>().create(&pp, &role).await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": ns.name}],
    }))?;
    ns.api::<RoleBinding>().create(&pp, &binding).await?;
    let (kubeconfig, _) =
        thaw_e2e::install::service_account_kubeconfig(&world.cluster, &ns.name, "viewer").await?;
    let context = format!("system:serviceaccount:{}:viewer", ns.name);
    let out = world
        .plugin
        .run(&kubeconfig, &["--context", &context, "status", name])
        .await?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    ensure!(out.status.success(), "status as a viewer: {stderr}");
    let said = stdout
        .lines()
        .filter(|l| l.starts_with("Gate:") && l.contains("pods/proxy is forbidden"))
        .count();
    ensure!(said == 1, "the reason is not said once:\n{stdout}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{name}-")))
        .collect();
    ensure!(
        rows.len() == 3
            && rows
                .iter()
                .all(|r| r.split_whitespace().nth(2) == Some("?")),
        "IN-FLIGHT is not `?` on every instance:\n{stdout}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_cold_starts_a_function_and_prints_its_answer() {
    let world = World::start("plugin-invoke").await.expect("world");
    invoke_scenario(&world)
        .await
        .unwrap_or_else(|e| world.fail(e));
}

async fn invoke_scenario(world: &World) -> Result<()> {
    let (ns, name) = (&world.ns, "echo");
    apply_function(
        ns,
        name,
        json!({"image": sample_image("testfn"), "scaling": {"keepAlive": "5m"}}),
    )
    .await?;
    world.activator.wait_routes(&ns.name, name, WAIT).await?;
    ensure!(instance_pods(ns, name).await?.is_empty(), "not at zero");
    let url = format!("http://{}", world.activator.addr());
    // A watch started at zero prints the Function with no instance, then
    // again once the cold start below has made one.
    let watch = world.plugin.spawn(
        world.cluster.kubeconfig(),
        &["-n", &ns.name, "status", name, "-w"],
    )?;
    wait_until("the watch's first report", WAIT, || async {
        Ok(watch.output().contains("No instances.").then_some(()))
    })
    .await?;

    let cold = world
        .thaw(&[
            "invoke",
            name,
            "--activator-url",
            &url,
            "--path",
            "/?sleep=5",
        ])
        .await?;
    let (stderr, stdout) = (text(&cold.stderr), text(&cold.stdout));
    ensure!(cold.status.success(), "invoke failed: {stderr}");
    ensure!(stderr.starts_with("HTTP 200 OK\n"), "status line: {stderr}");
    let waited = stderr
        .lines()
        .find_map(|l| l.strip_prefix("cold start: "))
        .and_then(|l| l.strip_suffix("ms (Thaw-Cold-Start)"))
        .and_then(|ms| ms.parse::<u64>().ok())
        .with_context(|| format!("no cold-start time: {stderr}"))?;
    ensure!(waited > 0, "cold start of {waited} ms");
    let reply: Value = serde_json::from_str(&stdout).context("testfn's JSON answer")?;
    let instance = reply["instance"].as_str().unwrap_or_default().to_owned();
    ensure!(instance.starts_with(&format!("{name}-")), "answer {stdout}");

    // Its gate, read again every second, shows it idle once it has answered.
    wait_until("the watch to print the new instance idle", WAIT, || async {
        let out = watch.output();
        let shown = out.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.first() == Some(&instance.as_str()) && cells.get(1) == Some(&"idle")
        });
        Ok(shown.then_some(()))
    })
    .await
    .with_context(|| format!("watch output:\n{}", watch.output()))?;
    eprintln!("kubectl thaw status {name} -w:\n{}", watch.output());
    drop(watch);

    // Warm now, and a body from a file is sent (testfn echoes a POST).
    let file = std::env::temp_dir().join(format!("{}-body", ns.name));
    std::fs::write(&file, "from a file\n")?;
    let data = format!("@{}", file.display());
    let warm = world
        .thaw(&["invoke", name, "--activator-url", &url, "--data", &data])
        .await;
    let _ = std::fs::remove_file(&file);
    let warm = warm?;
    let stderr = text(&warm.stderr);
    ensure!(warm.status.success(), "invoke failed: {stderr}");
    ensure!(
        stderr == "HTTP 200 OK\nwarm: no cold start (no Thaw-Cold-Start header)\n",
        "warm call: {stderr}"
    );
    ensure!(
        text(&warm.stdout) == "from a file\n",
        "echo: {:?}",
        text(&warm.stdout)
    );

    // The same commands under the binary's own name: `thaw kubectl ...`.
    let own = tokio::process::Command::new(thaw_e2e::process::thaw_binary())
        .arg("kubectl")
        .arg("--kubeconfig")
        .arg(world.cluster.kubeconfig())
        .args(["-n", &ns.name, "status", name, "-o", "json"])
        .output()
        .await?;
    ensure!(
        own.status.success(),
        "thaw kubectl status: {}",
        text(&own.stderr)
    );
    let report: Value = serde_json::from_slice(&own.stdout).context("thaw kubectl status")?;
    ensure!(
        instances(&report)
            .get(&instance)
            .map(|(state, ..)| state.as_str())
            == Some("idle"),
        "thaw kubectl status: {report}"
    );

    // A Function that does not exist: a clear error, non-zero exit.
    let missing = world
        .thaw(&["invoke", "nope", "--activator-url", &url])
        .await?;
    ensure!(
        !missing.status.success(),
        "invoke of a missing Function succeeded"
    );
    let stderr = text(&missing.stderr);
    ensure!(
        stderr.contains(&format!("Function {}/nope not found", ns.name)),
        "error: {stderr}"
    );
    Ok(())
}
