//! The plugin's pure parts on fixed inputs: a Function with one instance in
//! each state, its gates' answers and a fixed clock.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use serde_json::Value;
use thaw_api::Function;
use thaw_controller::{gate::Answer, instance::InstanceState};
use thaw_gate::GateState;

use super::{
    render::{Format, render},
    report::{GateAnswers, State, build, state},
    watch::without_clocks,
};

const NOW: &str = "2026-12-01T12:00:00Z";

fn now() -> Timestamp {
    NOW.parse().expect("time")
}

fn function() -> Function {
    serde_yaml::from_str(
        r#"
apiVersion: thaw.dev/v1alpha1
kind: Function
metadata: {name: shop, namespace: apps}
spec:
  image: thaw.dev/samples/testfn
  concurrency: 1
  scaling: {minInstances: 1, maxInstances: 5, keepAlive: 30s}
status:
  url: http://shop.apps.svc.cluster.local
  desiredInstances: 3
  instances: {starting: 1, ready: 3, busy: 1, idle: 2, draining: 1}
  lastRequestTime: "2026-12-01T11:59:48Z"
  conditions:
    - {type: Ready, status: "True", reason: InstancesReady, message: "3 instances ready", lastTransitionTime: "2026-12-01T11:50:00Z"}
"#,
    )
    .expect("function")
}

/// An instance pod created at `created` with `annotations` (a YAML map) and,
/// when `ready`, a Ready condition.
fn pod(name: &str, created: &str, annotations: &str, ready: bool) -> Pod {
    let status = if ready {
        "status: {phase: Running, podIP: 10.244.0.9, conditions: [{type: Ready, status: 'True', lastTransitionTime: '2026-12-01T11:55:00Z'}]}"
    } else {
        "status: {phase: Pending}"
    };
    serde_yaml::from_str(&format!(
        "metadata: {{name: {name}, namespace: apps, creationTimestamp: '{created}', labels: {{thaw.dev/function: shop}}, annotations: {annotations}}}\nspec: {{containers: []}}\n{status}"
    ))
    .expect("pod")
}

const COLD: &str = "'thaw.dev/cold-start': 'ready 1.234s after the decision: scheduled in 12ms, process started 1.1s later, ready 122ms after that'";

fn pods() -> Vec<Pod> {
    vec![
        pod(
            "shop-busy",
            "2026-12-01T11:55:00Z",
            &format!("{{{COLD}}}"),
            true,
        ),
        pod(
            "shop-idle",
            "2026-12-01T11:40:00Z",
            &format!(
                "{{{COLD}, 'thaw.dev/idle-since': '2026-12-01T11:59:50Z', 'thaw.dev/expires-at': '2026-12-01T12:00:20Z'}}"
            ),
            true,
        ),
        pod(
            "shop-kept",
            "2026-11-28T09:00:00Z",
            &format!(
                "{{{COLD}, 'thaw.dev/idle-since': '2026-12-01T11:00:00Z', 'thaw.dev/expires-at': '2026-12-01T11:00:30Z', 'thaw.dev/kept': 'kept by minInstances'}}"
            ),
            true,
        ),
        pod(
            "shop-draining",
            "2026-12-01T11:30:00Z",
            &format!("{{{COLD}, 'thaw.dev/draining-since': '2026-12-01T11:59:57Z'}}"),
            true,
        ),
        pod("shop-starting", "2026-12-01T11:59:58Z", "{}", false),
        pod(
            "shop-unknown",
            "2026-12-01T11:58:00Z",
            &format!("{{{COLD}}}"),
            true,
        ),
    ]
}

fn gate(in_flight: u32, waiting: u32, started: u64, idle_for_ms: Option<u64>) -> Answer {
    Answer::State(GateState::new(1, in_flight, waiting, started, idle_for_ms))
}

fn gates() -> GateAnswers {
    [
        ("shop-busy", gate(1, 2, 7, None)),
        ("shop-idle", gate(0, 0, 41, Some(10_400))),
        ("shop-kept", gate(0, 0, 3, Some(3_600_000))),
        ("shop-draining", gate(1, 0, 12, None)),
        (
            "shop-unknown",
            Answer::Unreachable("pods/proxy is forbidden (no)".to_owned()),
        ),
    ]
    .into_iter()
    .map(|(n, a)| (n.to_owned(), a))
    .collect()
}

fn golden(name: &str, got: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/plugin/testdata")
        .join(name);
    // THAW_UPDATE_GOLDEN=1 rewrites the file (then review the diff).
    if std::env::var_os("THAW_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).expect("writing the golden file");
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{} differs; got:\n{got}\nwant:\n{want}",
        path.display()
    );
}

#[test]
fn status_text_matches_the_golden_output() {
    let report = build(&function(), &pods(), &gates(), now());
    let text = render(&[report], Format::Text, true).expect("render");
    golden("status.txt", &text);
}

#[test]
fn json_has_the_documented_structure() {
    let report = build(&function(), &pods(), &gates(), now());
    let text = render(&[report], Format::Json, true).expect("render");
    golden("status.json", &text);
    let json: Value = serde_json::from_str(&text).expect("json");
    let instances = json["instances"].as_array().expect("instances");
    let by_name = |n: &str| {
        instances
            .iter()
            .find(|i| i["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(by_name("shop-busy")["state"], "busy");
    assert_eq!(by_name("shop-busy")["kept"], "busy");
    assert_eq!(by_name("shop-idle")["expiresInSeconds"], 20);
    assert_eq!(by_name("shop-kept")["kept"], "minInstances");
    assert_eq!(by_name("shop-draining")["inFlight"], 1);
    assert_eq!(by_name("shop-unknown")["inFlight"], Value::Null);
    assert_eq!(by_name("shop-busy")["coldStart"]["totalMs"], 1234);
    // Many Functions: a list, even of one.
    let list = render(
        &[build(&function(), &pods(), &gates(), now())],
        Format::Yaml,
        false,
    )
    .expect("yaml");
    let yaml: Value = serde_yaml::from_str(&list).expect("yaml parses");
    assert_eq!(yaml["items"][0]["name"], "shop");
}

#[test]
fn the_gate_tells_busy_from_idle_and_the_pod_says_the_phase() {
    let ready = InstanceState::Ready {
        since: Timestamp::UNIX_EPOCH,
    };
    let draining = InstanceState::Draining {
        since: Timestamp::UNIX_EPOCH,
    };
    let cases = [
        (
            &InstanceState::Starting,
            gate(0, 0, 0, Some(1)),
            false,
            State::Starting,
        ),
        (&ready, gate(1, 0, 1, None), false, State::Busy),
        // Held at the gate is busy too: a slot is taken or wanted.
        (&ready, gate(0, 1, 1, None), true, State::Busy),
        (&ready, gate(0, 0, 1, Some(5)), false, State::Idle),
        // No gate answer: the controller's idle-since annotation, or unknown.
        (&ready, Answer::Unreachable("x".into()), true, State::Idle),
        (&ready, Answer::Unreachable("x".into()), false, State::Ready),
        (&draining, gate(1, 0, 1, None), false, State::Draining),
        (
            &InstanceState::Terminating,
            Answer::NoGate,
            false,
            State::Terminating,
        ),
    ];
    for (pod, answer, annotated_idle, want) in cases {
        assert_eq!(
            state(pod, &answer, annotated_idle),
            want,
            "{pod:?} {answer:?}"
        );
    }
}

#[test]
fn a_watch_reprints_for_changes_not_for_clocks() {
    let at = build(&function(), &pods(), &gates(), now());
    let later = build(
        &function(),
        &pods(),
        &gates(),
        now().checked_add(Duration::from_secs(7)).expect("time"),
    );
    assert_ne!(at, later);
    assert_eq!(without_clocks(&at), without_clocks(&later));
    let mut busier = gates();
    busier.insert("shop-idle".into(), gate(1, 0, 42, None));
    let changed = build(&function(), &pods(), &busier, now());
    assert_ne!(without_clocks(&at), without_clocks(&changed));
}

#[test]
fn the_binary_is_the_plugin_under_the_plugins_name_only() {
    use std::ffi::OsStr;
    assert!(super::is_plugin_name(OsStr::new("kubectl-thaw")));
    assert!(super::is_plugin_name(OsStr::new(
        "/home/me/.local/bin/kubectl-thaw"
    )));
    assert!(super::is_plugin_name(OsStr::new("kubectl-thaw.exe")));
    assert!(!super::is_plugin_name(OsStr::new("/usr/bin/thaw")));
    assert!(!super::is_plugin_name(OsStr::new("kubectl-thawed")));
}

mod invoke {
    use clap::Parser;
    use http::Method;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::plugin::invoke::{InvokeArgs, host_of, request, target_port};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InvokeArgs,
    }

    fn args(argv: &[&str]) -> InvokeArgs {
        Cli::try_parse_from(std::iter::once("invoke").chain(argv.iter().copied()))
            .expect("arguments")
            .args
    }

    #[test]
    fn data_makes_a_post_with_the_functions_host_and_the_path() {
        let a = args(&[
            "shop",
            "--data",
            "x",
            "--path",
            "/orders?id=1",
            "-H",
            "X-Y: z",
        ]);
        let r = request(&a, "shop.apps.example.com", "/base/", "x".into()).expect("request");
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "/base/orders?id=1");
        assert_eq!(r.headers()["host"], "shop.apps.example.com");
        assert_eq!(r.headers()["x-y"], "z");
        let get = request(&args(&["shop"]), "h", "", Default::default()).expect("request");
        assert_eq!(get.method(), Method::GET);
        let put = request(
            &args(&["shop", "-X", "put", "-d", "x"]),
            "h",
            "",
            "x".into(),
        )
        .expect("request");
        assert_eq!(put.method(), Method::PUT);
    }

    #[test]
    fn bad_input_is_refused_with_the_flag_named() {
        let e = request(
            &args(&["shop", "--path", "orders"]),
            "h",
            "",
            Default::default(),
        )
        .expect_err("relative path");
        assert!(e.to_string().contains("--path"), "{e}");
        let e = request(
            &args(&["shop", "-H", "nocolon"]),
            "h",
            "",
            Default::default(),
        )
        .expect_err("bad header");
        assert!(e.to_string().contains("-H"), "{e}");
    }

    #[test]
    fn the_host_is_the_published_url_s() {
        assert_eq!(host_of(&function()), "shop.apps.svc.cluster.local");
        let mut unpublished = function();
        unpublished.status = None;
        assert_eq!(host_of(&unpublished), "shop.apps.svc.cluster.local");
        let mut custom = function();
        if let Some(s) = custom.status.as_mut() {
            s.url = Some("http://shop.apps.fn.example.com".into());
        }
        assert_eq!(host_of(&custom), "shop.apps.fn.example.com");
    }

    #[test]
    fn a_named_target_port_is_the_containers() {
        let pod: Pod = serde_yaml::from_str(
            "metadata: {name: a}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}",
        )
        .expect("pod");
        let named = IntOrString::String("http".into());
        assert_eq!(target_port(&pod, Some(&named), 80).expect("port"), 8080);
        assert_eq!(
            target_port(&pod, Some(&IntOrString::Int(9000)), 80).expect("port"),
            9000
        );
        assert_eq!(target_port(&pod, None, 80).expect("port"), 80);
        let missing = IntOrString::String("grpc".into());
        assert!(target_port(&pod, Some(&missing), 80).is_err());
    }
}
