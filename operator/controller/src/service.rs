//! The per-Function Service: an ExternalName alias of the activator, so
//! in-cluster callers reach `http://<name>.<namespace>.svc.cluster.local`.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::{Resource, api::ObjectMeta};
use thaw_api::Function;

use crate::pod::selector_labels;

/// The Service named after `function`, pointing at `activator_host`
/// (the activator Service's cluster DNS name).
pub fn function_service(function: &Function, activator_host: &str) -> Service {
    let name = function.metadata.name.clone().unwrap_or_default();
    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: function.metadata.namespace.clone(),
            labels: Some(selector_labels(&name)),
            owner_references: function.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(activator_host.to_owned()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_aliases_the_activator_and_is_owned() {
        let mut f: Function = serde_yaml::from_str(
            "apiVersion: thaw.dev/v1alpha1\nkind: Function\nmetadata: {name: hello, namespace: ns, uid: u1}\nspec: {image: x}\n",
        )
        .expect("function");
        f.metadata.uid = Some("u1".into());
        let svc = function_service(&f, "thaw-activator.thaw-system.svc.cluster.local");
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
        assert_eq!(
            spec.external_name.as_deref(),
            Some("thaw-activator.thaw-system.svc.cluster.local")
        );
        assert_eq!(svc.metadata.name.as_deref(), Some("hello"));
        assert_eq!(svc.metadata.owner_references.expect("owner")[0].uid, "u1");
    }
}
