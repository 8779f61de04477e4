//! The instance pod, built by a pure function of the Function.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
        ObjectFieldSelector, Pod, PodSpec, Probe, ResourceRequirements, SecurityContext,
        TCPSocketAction, Volume, VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use kube::{Resource, api::ObjectMeta};
pub use thaw_api::spec_hash;
use thaw_api::{
    Function, FunctionSpec,
    keys::{
        FUNCTION_CONTAINER, FUNCTION_LABEL, GATE_ADMIN_PORT_NAME, GATE_CONTAINER, GATE_PORT_NAME,
        SPEC_HASH_LABEL,
    },
};
use thaw_gate::GatePorts;

use crate::security::{container_security_context, pod_security_context};

/// Seconds a pod gets after SIGTERM on top of the request timeout, so a
/// request admitted just before deletion can still finish.
const SHUTDOWN_MARGIN_SECONDS: i64 = 5;

/// The instance's own scratch volume, mounted at [`TMP_PATH`] in the
/// function's container: the root filesystem is read-only, and an emptyDir
/// lives and dies with its pod, so every instance starts with a clean /tmp.
pub const TMP_VOLUME: &str = "thaw-tmp";
/// Where [`TMP_VOLUME`] is mounted.
pub const TMP_PATH: &str = "/tmp";

/// The labels that select a Function's instance pods.
pub fn selector_labels(function_name: &str) -> BTreeMap<String, String> {
    [(FUNCTION_LABEL.to_owned(), function_name.to_owned())].into()
}

/// The pod of instance `pod_name` of `function`, owned by it.
///
/// Defaults are restrictive (non-root, read-only root filesystem, no
/// capabilities, RuntimeDefault seccomp, no service links, no API token);
/// `spec.podTemplate`'s security contexts merge over them field by field
/// ([`crate::security`]). The gate sidecar (`gate_image`, thaw's own) holds
/// the hard concurrency limit in front of the function.
pub fn instance_pod(function: &Function, pod_name: &str, gate_image: &str) -> Pod {
    let spec = &function.spec;
    let name = function.metadata.name.clone().unwrap_or_default();
    let template = spec.pod_template.clone().unwrap_or_default();
    let user_meta = template.metadata.unwrap_or_default();

    let mut labels = user_meta.labels.unwrap_or_default();
    labels.extend(selector_labels(&name));
    labels.insert(SPEC_HASH_LABEL.to_owned(), spec_hash(spec));

    let grace = spec
        .timeout
        .parse()
        .map(|t| t.as_secs_f64().ceil() as i64)
        .unwrap_or(30)
        + SHUTDOWN_MARGIN_SECONDS;

    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name.to_owned()),
            namespace: function.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: user_meta.annotations,
            owner_references: function.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            // A native sidecar (restartPolicy Always): it starts before the
            // function and stops after it, and the pod still ends when the
            // function exits.
            init_containers: Some(vec![gate_container(spec, gate_image)]),
            containers: vec![container(spec)],
            // A crashed instance is replaced by the controller with backoff,
            // not restarted in place: a fresh instance, as Lambda gives.
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(grace),
            service_account_name: spec.service_account_name.clone(),
            automount_service_account_token: Some(spec.service_account_name.is_some()),
            enable_service_links: Some(false),
            node_selector: template.node_selector,
            tolerations: template.tolerations,
            runtime_class_name: spec.runtime_class_name().map(str::to_owned),
            volumes: Some(vec![Volume {
                name: TMP_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            security_context: Some(pod_security_context(template.security_context.as_ref())),
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn container(spec: &FunctionSpec) -> Container {
    let template = spec.pod_template.clone().unwrap_or_default();
    let mut env = vec![
        EnvVar {
            name: "PORT".into(),
            value: Some(spec.port.to_string()),
            ..EnvVar::default()
        },
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    env.extend(spec.env.clone().unwrap_or_default());
    let port = IntOrString::Int(spec.port);
    let readiness = match &spec.readiness_path {
        Some(path) => Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.clone()),
                port: port.clone(),
                ..HTTPGetAction::default()
            }),
            ..fast_probe()
        },
        None => Probe {
            tcp_socket: Some(TCPSocketAction {
                port: port.clone(),
                ..TCPSocketAction::default()
            }),
            ..fast_probe()
        },
    };
    Container {
        name: FUNCTION_CONTAINER.into(),
        image: Some(spec.image.clone()),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: spec.port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: spec.resources.clone(),
        readiness_probe: Some(readiness),
        volume_mounts: Some(vec![VolumeMount {
            name: TMP_VOLUME.into(),
            mount_path: TMP_PATH.into(),
            ..VolumeMount::default()
        }]),
        security_context: Some(container_security_context(
            template.container_security_context.as_ref(),
        )),
        ..Container::default()
    }
}

/// The gate in front of the function: requests to its port reach the
/// function at most `concurrency` at a time.
fn gate_container(spec: &FunctionSpec, gate_image: &str) -> Container {
    let function_port = u16::try_from(spec.port).unwrap_or(8080);
    let ports = GatePorts::for_function(function_port);
    let concurrency = u32::try_from(spec.concurrency).unwrap_or(1);
    let mut args = vec![
        "gate".to_owned(),
        format!("--port={}", ports.requests),
        format!("--admin-port={}", ports.admin),
        format!("--upstream-port={function_port}"),
        format!("--concurrency={concurrency}"),
        format!("--max-hold={}", spec.timeout),
    ];
    let max_requests = spec.max_requests_per_instance();
    if max_requests > 0 {
        args.push(format!("--max-requests={max_requests}"));
    }
    if let Some(path) = &spec.readiness_path {
        args.push(format!("--readiness-path={path}"));
    }
    let port = |name: &str, number: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(number),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    Container {
        name: GATE_CONTAINER.into(),
        image: Some(gate_image.to_owned()),
        args: Some(args),
        restart_policy: Some("Always".into()),
        ports: Some(vec![
            port(GATE_PORT_NAME, ports.requests),
            port(GATE_ADMIN_PORT_NAME, ports.admin),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::Int(i32::from(ports.admin)),
                ..HTTPGetAction::default()
            }),
            ..fast_probe()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_owned(), Quantity("10m".into())),
                    ("memory".to_owned(), Quantity("16Mi".into())),
                ]
                .into(),
            ),
            limits: Some([("memory".to_owned(), Quantity("128Mi".into()))].into()),
            ..ResourceRequirements::default()
        }),
        // The gate is thaw's, not the user's: always locked down, whatever
        // the Function loosens for its own container.
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            ..crate::security::container_security_context(None)
        }),
        ..Container::default()
    }
}

/// The kubelet's probe, as often as it allows: the activator probes new
/// instances itself much faster, this one keeps pod status honest.
fn fast_probe() -> Probe {
    Probe {
        period_seconds: Some(1),
        timeout_seconds: Some(1),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};
    use thaw_api::{PodTemplate, PodTemplateMetadata};

    const GATE_IMAGE: &str = "thaw.dev/thaw:test";

    fn function(yaml: &str) -> Function {
        let mut f: Function = serde_yaml::from_str(yaml).expect("function");
        f.metadata.uid = Some("uid-1".into());
        f
    }

    fn hello() -> Function {
        function(
            "apiVersion: thaw.dev/v1alpha1\nkind: Function\nmetadata: {name: hello, namespace: ns}\nspec: {image: hello:1}\n",
        )
    }

    #[test]
    fn instance_gets_its_own_tmp_and_the_runtime_class() {
        let pod = instance_pod(&hello(), "hello-abcde", GATE_IMAGE);
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.runtime_class_name, None);
        let volume = &spec.volumes.as_ref().expect("volumes")[0];
        assert_eq!(volume.name, TMP_VOLUME);
        assert!(volume.empty_dir.is_some());
        let mount = &spec.containers[0].volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str()),
            (TMP_VOLUME, "/tmp")
        );
        let security = spec.containers[0].security_context.as_ref().expect("sc");
        assert_eq!(security.read_only_root_filesystem, Some(true));

        let f = function(
            "apiVersion: thaw.dev/v1alpha1\nkind: Function\nmetadata: {name: hello, namespace: ns}\nspec: {image: hello:1, podTemplate: {runtimeClassName: gvisor}}\n",
        );
        let pod = instance_pod(&f, "hello-abcde", GATE_IMAGE);
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
    }

    #[test]
    fn the_gate_gets_max_requests_only_when_set() {
        let args = |yaml_spec: &str| {
            let f = function(&format!(
                "apiVersion: thaw.dev/v1alpha1\nkind: Function\nmetadata: {{name: hello, namespace: ns}}\nspec: {yaml_spec}\n"
            ));
            let pod = instance_pod(&f, "hello-abcde", GATE_IMAGE);
            pod.spec.expect("spec").init_containers.expect("gate")[0]
                .args
                .clone()
                .expect("args")
        };
        let plain = args("{image: hello:1}");
        assert!(!plain.iter().any(|a| a.starts_with("--max-requests")));
        let fresh = args("{image: hello:1, maxRequestsPerInstance: 1}");
        assert!(fresh.contains(&"--max-requests=1".to_owned()), "{fresh:?}");
    }

    #[test]
    fn pod_is_labelled_owned_and_named() {
        let f = hello();
        let pod = instance_pod(&f, "hello-abcde", GATE_IMAGE);
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("hello-abcde"));
        assert_eq!(meta.namespace.as_deref(), Some("ns"));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels[FUNCTION_LABEL], "hello");
        assert_eq!(labels[SPEC_HASH_LABEL], spec_hash(&f.spec));
        let owner = &meta.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "Function");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn container_gets_port_env_probe_and_restrictive_defaults() {
        let pod = instance_pod(&hello(), "hello-abcde", GATE_IMAGE);
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.termination_grace_period_seconds, Some(35));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("hello:1"));
        let env = c.env.as_ref().expect("env");
        assert!(
            env.iter()
                .any(|e| e.name == "PORT" && e.value.as_deref() == Some("8080"))
        );
        let probe = c.readiness_probe.as_ref().expect("probe");
        assert_eq!(
            probe.tcp_socket.as_ref().map(|t| t.port.clone()),
            Some(IntOrString::Int(8080))
        );
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let pod_sc = spec.security_context.expect("pod security context");
        assert_eq!(pod_sc.run_as_non_root, Some(true));
    }

    #[test]
    fn user_settings_reach_the_pod() {
        let mut f = hello();
        f.spec.readiness_path = Some("/healthz".into());
        f.spec.port = 9000;
        f.spec.command = Some(vec!["/bin/fn".into()]);
        f.spec.env = Some(vec![EnvVar {
            name: "A".into(),
            value: Some("1".into()),
            ..EnvVar::default()
        }]);
        f.spec.pod_template = Some(PodTemplate {
            metadata: Some(PodTemplateMetadata {
                labels: Some([("team".to_owned(), "x".to_owned())].into()),
                annotations: Some([("note".to_owned(), "y".to_owned())].into()),
            }),
            container_security_context: Some(SecurityContext {
                read_only_root_filesystem: Some(false),
                ..SecurityContext::default()
            }),
            ..PodTemplate::default()
        });
        let pod = instance_pod(&f, "hello-abcde", GATE_IMAGE);
        let labels = pod.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["team"], "x");
        assert_eq!(labels[FUNCTION_LABEL], "hello");
        assert_eq!(
            pod.metadata.annotations.as_ref().expect("annotations")["note"],
            "y"
        );
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        assert_eq!(c.command.as_deref(), Some(&["/bin/fn".to_owned()][..]));
        let env = c.env.as_ref().expect("env");
        assert!(
            env.iter()
                .any(|e| e.name == "PORT" && e.value.as_deref() == Some("9000"))
        );
        assert!(env.iter().any(|e| e.name == "A"));
        let http = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http probe");
        assert_eq!(http.path.as_deref(), Some("/healthz"));
        assert_eq!(
            c.security_context
                .as_ref()
                .and_then(|s| s.read_only_root_filesystem),
            Some(false)
        );
    }

    #[test]
    fn a_partial_security_context_keeps_the_restrictive_defaults() {
        let mut f = hello();
        f.spec.pod_template = Some(PodTemplate {
            security_context: Some(PodSecurityContext {
                run_as_user: Some(1000),
                ..PodSecurityContext::default()
            }),
            container_security_context: Some(SecurityContext {
                run_as_group: Some(1000),
                ..SecurityContext::default()
            }),
            ..PodTemplate::default()
        });
        let spec = instance_pod(&f, "hello-abcde", GATE_IMAGE)
            .spec
            .expect("spec");
        let pod_sc = spec.security_context.expect("pod security context");
        assert_eq!(pod_sc.run_as_user, Some(1000));
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert_eq!(
            pod_sc.seccomp_profile.map(|p| p.type_).as_deref(),
            Some("RuntimeDefault")
        );
        let sc = spec.containers[0]
            .security_context
            .clone()
            .expect("container");
        assert_eq!(sc.run_as_group, Some(1000));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
    }

    #[test]
    fn spec_hash_ignores_scaling_but_not_image() {
        let a = hello();
        let mut b = hello();
        b.spec.scaling.keep_alive = "1h".into();
        b.spec.scaling.max_instances = 3;
        assert_eq!(spec_hash(&a.spec), spec_hash(&b.spec));
        b.spec.image = "hello:2".into();
        assert_ne!(spec_hash(&a.spec), spec_hash(&b.spec));
        assert_eq!(spec_hash(&a.spec).len(), 10);
    }
}
