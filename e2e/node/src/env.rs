//! A container's environment: host PATH, image env, HOSTNAME, `envFrom`,
//! `env` (literals, downward API, ConfigMap/Secret keys) and `$(VAR)`
//! expansion, in kubelet's order of precedence.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod};
use tracing::warn;

/// The ConfigMaps and Secrets a container refers to, fetched beforehand.
/// `None` means the object does not exist; a name missing from the map was not
/// fetched at all (an error).
#[derive(Debug, Default, Clone)]
pub struct RefData {
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

/// Names of the ConfigMaps and Secrets a container's env refers to.
pub fn referenced_objects(c: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut cms = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for from in c.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for var in c.env.iter().flatten() {
        if let Some(src) = &var.value_from {
            if let Some(r) = &src.config_map_key_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &src.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// What the downward API may read besides the pod object.
#[derive(Debug, Clone)]
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Option<String>,
    pub host_ip: String,
}

/// Ordered environment with "last definition wins, first position kept".
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EnvList(Vec<(String, String)>);

impl EnvList {
    pub fn set(&mut self, key: &str, value: String) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn into_vec(self) -> Vec<(String, String)> {
        self.0
    }
}

/// Builds the environment of `c`.
pub fn build_env(
    c: &Container,
    facts: &PodFacts<'_>,
    image_env: &BTreeMap<String, String>,
    host_path: &str,
    refs: &RefData,
) -> Result<EnvList, String> {
    let mut env = EnvList::default();
    env.set("PATH", host_path.to_string());
    for (k, v) in image_env {
        env.set(k, v.clone());
    }
    env.set(
        "HOSTNAME",
        facts.pod.metadata.name.clone().unwrap_or_default(),
    );

    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match lookup_object(&refs.config_maps, &r.name, "configmap")? {
                Some(data) => {
                    for (k, v) in data {
                        env.set(&format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match lookup_object(&refs.secrets, &r.name, "secret")? {
                Some(data) => {
                    for (k, v) in data {
                        env.set(&format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        }
    }

    for var in c.env.iter().flatten() {
        let value = if let Some(src) = &var.value_from {
            if let Some(f) = &src.field_ref {
                Some(field_value(&f.field_path, facts)?)
            } else if let Some(r) = &src.config_map_key_ref {
                key_value(
                    &refs.config_maps,
                    "configmap",
                    "ConfigMap",
                    &r.name,
                    &r.key,
                    r.optional == Some(true),
                    facts,
                )?
            } else if let Some(r) = &src.secret_key_ref {
                key_value(
                    &refs.secrets,
                    "secret",
                    "Secret",
                    &r.name,
                    &r.key,
                    r.optional == Some(true),
                    facts,
                )?
            } else if src.resource_field_ref.is_some() {
                warn!(
                    container = %c.name,
                    var = %var.name,
                    "resourceFieldRef is not supported by thaw-node; variable left unset"
                );
                None
            } else {
                return Err(format!("env var {:?}: unsupported valueFrom", var.name));
            }
        } else {
            let raw = var.value.clone().unwrap_or_default();
            Some(expand(&raw, |name| env.get(name).map(str::to_string)))
        };
        if let Some(v) = value {
            env.set(&var.name, v);
        }
    }
    Ok(env)
}

fn lookup_object<'a>(
    objects: &'a HashMap<String, Option<BTreeMap<String, String>>>,
    name: &str,
    kind: &str,
) -> Result<Option<&'a BTreeMap<String, String>>, String> {
    match objects.get(name) {
        Some(o) => Ok(o.as_ref()),
        None => Err(format!("{kind} {name:?} was not fetched")),
    }
}

fn key_value(
    objects: &HashMap<String, Option<BTreeMap<String, String>>>,
    kind: &str,
    kind_title: &str,
    name: &str,
    key: &str,
    optional: bool,
    facts: &PodFacts<'_>,
) -> Result<Option<String>, String> {
    match lookup_object(objects, name, kind)? {
        Some(data) => match data.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {kind_title} {}/{name}",
                facts.pod.metadata.namespace.as_deref().unwrap_or_default()
            )),
        },
        None if optional => Ok(None),
        None => Err(format!("{kind} {name:?} not found")),
    }
}

/// The downward API: the value of a `fieldRef.fieldPath`.
pub fn field_value(path: &str, facts: &PodFacts<'_>) -> Result<String, String> {
    let pod = facts.pod;
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    if let Some(key) = subscript(path, "metadata.labels") {
        return Ok(meta
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .cloned()
            .unwrap_or_default());
    }
    if let Some(key) = subscript(path, "metadata.annotations") {
        return Ok(meta
            .annotations
            .as_ref()
            .and_then(|l| l.get(key))
            .cloned()
            .unwrap_or_default());
    }
    let v = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone().unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        other => return Err(format!("unsupported fieldPath: {other}")),
    };
    Ok(v)
}

/// `metadata.labels['app']` -> `app`.
fn subscript<'a>(path: &'a str, field: &str) -> Option<&'a str> {
    let inner = path
        .strip_prefix(field)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    inner
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
}

/// The downward API's `key="value"` lines for whole label/annotation maps.
fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes the value of NAME when it
/// is defined and stays as it is otherwise; `$$` is an escaped `$`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource,
        ObjectFieldSelector, PodSpec, SecretKeySelector,
    };
    use kube::api::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("ns1".into()),
                uid: Some("u-1".into()),
                labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                annotations: Some(BTreeMap::from([("a/b".to_string(), "x".to_string())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("thaw-node".into()),
                service_account_name: Some("sa".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    api_version: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn lit(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    fn facts(p: &Pod) -> PodFacts<'_> {
        PodFacts {
            pod: p,
            pod_ip: Some("10.244.0.7".into()),
            host_ip: "10.244.0.1".into(),
        }
    }

    #[test]
    fn expansion_matches_kubernetes() {
        let lookup = |n: &str| (n == "A").then(|| "1".to_string());
        assert_eq!(expand("x$(A)y", lookup), "x1y");
        assert_eq!(expand("$(B)", lookup), "$(B)");
        assert_eq!(expand("$$(A)", lookup), "$(A)");
        assert_eq!(expand("$$$(A)", lookup), "$1");
        assert_eq!(expand("a$b", lookup), "a$b");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("end$", lookup), "end$");
        assert_eq!(expand("", lookup), "");
    }

    #[test]
    fn builds_env_with_downward_api_and_precedence() {
        let p = pod();
        let c = Container {
            name: "c".into(),
            env: Some(vec![
                lit("GREETING", "hi"),
                lit("MSG", "$(GREETING) from $(POD_NAME)"),
                field("POD_NAME", "metadata.name"),
                field("NS", "metadata.namespace"),
                field("UID", "metadata.uid"),
                field("APP", "metadata.labels['app']"),
                field("MISSING", "metadata.labels['nope']"),
                field("ANN", "metadata.annotations['a/b']"),
                field("NODE", "spec.nodeName"),
                field("SA", "spec.serviceAccountName"),
                field("IP", "status.podIP"),
                field("HOST", "status.hostIP"),
                lit("LEVEL", "override"),
                lit("PORT", "8080"),
            ]),
            ..Default::default()
        };
        let image_env = BTreeMap::from([("LEVEL".to_string(), "img".to_string())]);
        let env = build_env(
            &c,
            &facts(&p),
            &image_env,
            "/usr/bin:/bin",
            &RefData::default(),
        )
        .unwrap();
        let get = |k: &str| env.get(k).map(str::to_string);
        assert_eq!(get("PATH").as_deref(), Some("/usr/bin:/bin"));
        assert_eq!(get("HOSTNAME").as_deref(), Some("web-1"));
        // POD_NAME is defined after MSG, so it is not expanded.
        assert_eq!(get("MSG").as_deref(), Some("hi from $(POD_NAME)"));
        assert_eq!(get("POD_NAME").as_deref(), Some("web-1"));
        assert_eq!(get("NS").as_deref(), Some("ns1"));
        assert_eq!(get("UID").as_deref(), Some("u-1"));
        assert_eq!(get("APP").as_deref(), Some("web"));
        assert_eq!(get("MISSING").as_deref(), Some(""));
        assert_eq!(get("ANN").as_deref(), Some("x"));
        assert_eq!(get("NODE").as_deref(), Some("thaw-node"));
        assert_eq!(get("SA").as_deref(), Some("sa"));
        assert_eq!(get("IP").as_deref(), Some("10.244.0.7"));
        assert_eq!(get("HOST").as_deref(), Some("10.244.0.1"));
        assert_eq!(get("LEVEL").as_deref(), Some("override"));
        // LEVEL keeps its first position (from the image env).
        let keys: Vec<String> = env.into_vec().into_iter().map(|(k, _)| k).collect();
        assert_eq!(&keys[..3], &["PATH", "LEVEL", "HOSTNAME"]);
    }

    #[test]
    fn unsupported_field_path_is_an_error() {
        let p = pod();
        let c = Container {
            env: Some(vec![field("X", "spec.bogus")]),
            ..Default::default()
        };
        let err = build_env(&c, &facts(&p), &BTreeMap::new(), "", &RefData::default()).unwrap_err();
        assert!(err.contains("unsupported fieldPath"), "{err}");
    }

    #[test]
    fn config_map_and_secret_refs() {
        let p = pod();
        let c = Container {
            env_from: Some(vec![EnvFromSource {
                prefix: Some("CM_".into()),
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cfg".into(),
                    optional: None,
                }),
                secret_ref: None,
            }]),
            env: Some(vec![
                EnvVar {
                    name: "K".into(),
                    value_from: Some(EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "k".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                EnvVar {
                    name: "S".into(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "gone".into(),
                            key: "k".into(),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let (cms, secrets) = referenced_objects(&c);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), vec!["cfg"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), vec!["gone"]);

        let mut refs = RefData::default();
        refs.config_maps.insert(
            "cfg".into(),
            Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        );
        refs.secrets.insert("gone".into(), None);
        let env = build_env(&c, &facts(&p), &BTreeMap::new(), "", &refs).unwrap();
        assert_eq!(env.get("CM_k"), Some("v"));
        assert_eq!(env.get("K"), Some("v"));
        assert_eq!(env.get("S"), None);

        // A required key that is missing fails the container.
        refs.config_maps.insert("cfg".into(), Some(BTreeMap::new()));
        let err = build_env(&c, &facts(&p), &BTreeMap::new(), "", &refs).unwrap_err();
        assert_eq!(err, "couldn't find key k in ConfigMap ns1/cfg");
        refs.config_maps.insert("cfg".into(), None);
        let err = build_env(&c, &facts(&p), &BTreeMap::new(), "", &refs).unwrap_err();
        assert_eq!(err, "configmap \"cfg\" not found");
    }
}
