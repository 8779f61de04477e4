//! The committed CRD is what `thaw crd` prints, installs with plain
//! `kubectl apply`, and its validation rules accept the examples and reject
//! each invalid Function with the message users will see. The same fixtures
//! run against the real API server in e2e/support/tests/crd.rs.

use kube::core::CustomResourceExt;
use kube_cel::Validator;
use serde_json::Value;
use thaw_api::{Function, crd::function_crd_yaml};
use thaw_e2e::fixtures::{example_functions, invalid_functions, read_yaml, repo_root};

fn committed_crd() -> Value {
    read_yaml(&repo_root().join("crds/functions.thaw.dev.yaml")).expect("committed CRD")
}

fn schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

#[test]
fn committed_crd_matches_thaw_crd() {
    let committed = std::fs::read_to_string(repo_root().join("crds/functions.thaw.dev.yaml"))
        .expect("committed CRD");
    let generated = function_crd_yaml().expect("render CRD");
    assert!(
        committed == generated,
        "crds/functions.thaw.dev.yaml is out of date: run `make crds`"
    );
}

#[test]
fn crd_fits_client_side_apply() {
    // `kubectl apply` keeps the whole object in an annotation capped at 256 KiB.
    let json = serde_json::to_string(&Function::crd()).expect("serialize");
    assert!(json.len() < 200 * 1024, "CRD is {} bytes", json.len());
}

#[test]
fn examples_deserialize_and_pass_validation() {
    let crd = committed_crd();
    let validator = Validator::new();
    let examples = example_functions().expect("examples");
    assert!(!examples.is_empty());
    for (name, object) in examples {
        let function: Function =
            serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!function.spec.image.is_empty(), "{name}");
        if let Err(errors) = validator.validate(schema(&crd), &object, None) {
            panic!("{name} rejected: {errors:?}");
        }
    }
}

#[test]
fn invalid_functions_are_rejected_with_their_message() {
    let crd = committed_crd();
    let validator = Validator::new();
    let cases = invalid_functions().expect("invalid fixtures");
    assert!(cases.len() >= 7);
    for case in cases {
        let errors = validator
            .validate(schema(&crd), &case.object, None)
            .expect_err(&format!("{} was accepted", case.name));
        let messages: Vec<String> = errors.iter().map(|e| e.message.clone()).collect();
        assert!(
            messages.iter().any(|m| m.contains(&case.expect)),
            "{}: expected {:?}, got {messages:?}",
            case.name,
            case.expect
        );
    }
}

#[test]
fn schema_defaults_match_rust_defaults() {
    // The API server fills defaults from the schema, Rust from serde: both
    // must agree, or the controller would read a Function differently from
    // what `kubectl get fn -o yaml` shows.
    let minimal: Function = serde_yaml::from_str(
        "apiVersion: thaw.dev/v1alpha1\nkind: Function\nmetadata: {name: f}\nspec: {image: x}\n",
    )
    .expect("minimal Function");
    let spec = serde_json::to_value(&minimal.spec).expect("serialize");
    let crd = committed_crd();
    let props = &schema(&crd)["properties"]["spec"]["properties"];
    for field in ["port", "concurrency", "timeout", "scaling", "queue"] {
        assert_eq!(
            props[field]["default"], spec[field],
            "default of spec.{field}"
        );
    }
    for field in [
        "minInstances",
        "maxInstances",
        "target",
        "keepAlive",
        "warmInstances",
    ] {
        let schema_default = &props["scaling"]["properties"][field]["default"];
        assert_eq!(
            schema_default, &spec["scaling"][field],
            "default of spec.scaling.{field}"
        );
    }
    assert_eq!(spec["scaling"]["keepAlive"], "5m");
    assert_eq!(spec["concurrency"], 1);
}
