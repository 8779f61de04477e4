//! The per-Function Service: an ExternalName alias of the activator, so
//! in-cluster callers reach `http://<name>.<namespace>.svc.cluster.local`.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::{Resource, api::ObjectMeta};
use thaw_api::Function;

use crate::{pod::selector_labels, status::Trouble};

/// What to do about the Function's Service, given the one of that name the
/// API server has (if any): thaw creates it or updates its own, and never
/// touches a Service it does not control.
#[derive(Clone, Debug, PartialEq)]
pub enum ServicePlan {
    Create,
    Update,
    /// Someone else's Service has the name: leave it, report this.
    Conflict(Trouble),
}

/// The plan for `function`'s Service when `existing` has its name: ours
/// only if controlled (ownerReference `controller: true`) by this very
/// Function, by uid.
pub fn plan_service(function: &Function, existing: Option<&Service>) -> ServicePlan {
    let Some(existing) = existing else {
        return ServicePlan::Create;
    };
    let uid = function.metadata.uid.as_deref();
    let ours = existing
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && uid == Some(o.uid.as_str()));
    if ours {
        return ServicePlan::Update;
    }
    let namespace = existing.metadata.namespace.as_deref().unwrap_or_default();
    let name = existing.metadata.name.as_deref().unwrap_or_default();
    ServicePlan::Conflict(Trouble {
        reason: "ServiceConflict".into(),
        message: format!(
            "Service {namespace}/{name} exists and is not controlled by this Function; thaw leaves it alone. \
             The Function is served by the activator by path and by Host; rename the Function or remove that Service for the in-cluster name"
        ),
    })
}

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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn owned_by(uid: &str, controller: bool) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "thaw.dev/v1alpha1".into(),
                    kind: "Function".into(),
                    name: "web".into(),
                    uid: uid.into(),
                    controller: Some(controller),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    #[test]
    fn only_a_service_this_function_controls_is_touched() {
        let mut f: Function = serde_yaml::from_str(
            "apiVersion: thaw.dev/v1alpha1\nkind: Function\nmetadata: {name: web, namespace: ns}\nspec: {image: x}\n",
        )
        .expect("function");
        f.metadata.uid = Some("u1".into());
        assert_eq!(plan_service(&f, None), ServicePlan::Create);
        assert_eq!(
            plan_service(&f, Some(&owned_by("u1", true))),
            ServicePlan::Update
        );
        let unrelated = Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        };
        for other in [unrelated, owned_by("u0", true), owned_by("u1", false)] {
            let ServicePlan::Conflict(trouble) = plan_service(&f, Some(&other)) else {
                panic!("{other:?} is not this Function's");
            };
            assert_eq!(trouble.reason, "ServiceConflict");
            assert!(
                trouble.message.contains("Service ns/web"),
                "{}",
                trouble.message
            );
        }
    }

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
