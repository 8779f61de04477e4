//! The Function CRD on the real API server: it installs, the examples are
//! accepted with every default filled in, and each invalid Function is
//! rejected with the message the unit tests expect.

use kube::{
    Api,
    api::{DynamicObject, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use thaw_api::Function;
use thaw_e2e::{
    Cluster,
    fixtures::{example_functions, invalid_functions},
};

fn function_api(cluster: &Cluster, namespace: &str) -> Api<DynamicObject> {
    let resource =
        ApiResource::from_gvk(&GroupVersionKind::gvk("thaw.dev", "v1alpha1", "Function"));
    Api::namespaced_with(cluster.client(), namespace, &resource)
}

fn as_dynamic(object: &serde_json::Value, namespace: &str) -> DynamicObject {
    let mut object: DynamicObject = serde_json::from_value(object.clone()).expect("object");
    object.metadata.namespace = Some(namespace.to_owned());
    object
}

#[tokio::test]
async fn examples_are_accepted_with_defaults_filled_in() {
    let cluster = Cluster::shared().await.expect("cluster");
    cluster.install_function_crd().await.expect("CRD");
    let ns = cluster.namespace("crd-examples").await.expect("namespace");
    let api = function_api(&cluster, &ns.name);
    for (name, object) in example_functions().expect("examples") {
        let created = api
            .create(&PostParams::default(), &as_dynamic(&object, &ns.name))
            .await
            .unwrap_or_else(|e| panic!("{name} rejected: {e}"));
        // What the API server stored, read back as the controller reads it.
        let stored: Function =
            serde_json::from_value(serde_json::to_value(&created).expect("json"))
                .unwrap_or_else(|e| panic!("{name} does not read back: {e}"));
        let raw = &created.data["spec"];
        for path in [
            &["port"][..],
            &["concurrency"],
            &["timeout"],
            &["scaling", "minInstances"],
            &["scaling", "maxInstances"],
            &["scaling", "target"],
            &["scaling", "keepAlive"],
            &["scaling", "warmInstances"],
            &["queue", "maxPending"],
            &["queue", "maxWait"],
        ] {
            let value = path.iter().fold(raw, |v, key| &v[*key]);
            assert!(
                !value.is_null(),
                "{name}: spec.{} not defaulted",
                path.join(".")
            );
        }
        if name == "hello.yaml" {
            assert_eq!(stored.spec.scaling.keep_alive.as_str(), "5s");
            assert_eq!(stored.spec.timeout.as_str(), "30s");
            assert_eq!(stored.spec.concurrency, 1);
            assert_eq!(stored.spec.port, 8080);
        }
    }
}

#[tokio::test]
async fn invalid_functions_are_rejected_with_their_message() {
    let cluster = Cluster::shared().await.expect("cluster");
    cluster.install_function_crd().await.expect("CRD");
    let ns = cluster.namespace("crd-invalid").await.expect("namespace");
    let api = function_api(&cluster, &ns.name);
    for case in invalid_functions().expect("fixtures") {
        let result = api
            .create(&PostParams::default(), &as_dynamic(&case.object, &ns.name))
            .await;
        match result {
            Ok(_) => panic!("{} was accepted", case.name),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{}: {}", case.name, status.message);
                assert!(
                    status.message.contains(&case.expect),
                    "{}: expected {:?} in {:?}",
                    case.name,
                    case.expect,
                    status.message
                );
            }
            Err(other) => panic!("{}: {other}", case.name),
        }
    }
}
