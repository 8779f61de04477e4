//! The `Function` custom resource: spec, status and their defaults.
//!
//! Defaults live in the serde attributes, so the generated schema carries
//! them (`kubectl get fn -o yaml` shows every default) and Rust code reading
//! a Function sees the same values the API server stored. Validation lives in
//! the `x_kube` CEL rules, each with a message that names the field and the
//! offending value.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        EnvVar, PodSecurityContext, ResourceRequirements, SecurityContext, Toleration,
    },
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::duration::{GoDuration, format_rule, range_rule};

pub mod settings;

/// A function thaw runs on demand: a container image serving HTTP on
/// `port`, scaled from zero by request concurrency, each instance destroyed
/// once it has been idle for `scaling.keepAlive`.
// Each printcolumn repeats `type_`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "thaw.dev",
    version = "v1alpha1",
    kind = "Function",
    namespaced,
    shortname = "fn",
    category = "thaw",
    status = "FunctionStatus",
    derive = "PartialEq",
    // The name becomes a Service name and a label value, and prefixes pod names.
    validation = Rule::new("self.metadata.name.size() <= 56 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message(Message::Expression(
        "'Function name ' + self.metadata.name + ' must be at most 56 lowercase letters, digits and dashes, starting with a letter: it names a Service and prefixes instance pod names'".into()
    )),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Instances",
        type_ = "integer",
        json_path = ".status.instances.ready",
        description = "Ready instances (busy and idle)"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredInstances"
    ),
    printcolumn(
        name = "Last Request",
        type_ = "date",
        json_path = ".status.lastRequestTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
// An instance could never fill more slots than it has requests to start.
#[x_kube(
    validation = Rule::new("self.maxRequestsPerInstance == 0 || self.concurrency == 0 || self.concurrency <= self.maxRequestsPerInstance").message("concurrency must not be above maxRequestsPerInstance when both are set: an instance starts at most maxRequestsPerInstance requests, so it could never use more slots")
)]
pub struct FunctionSpec {
    /// Container image of the function. It must serve HTTP on `port`.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^\\\\S+$')").message(Message::Expression(
        "'image must name a container image such as ghcr.io/acme/hello:1.0, not \"' + self + '\"'".into()
    )))]
    pub image: String,

    /// Entrypoint; the image's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,

    /// Arguments to the entrypoint; the image's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,

    /// Environment variables of the function's container. `PORT` is set by
    /// thaw from `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("!self.exists(e, e.name == 'PORT')").message(
        "env must not set PORT: thaw sets it from spec.port"
    ))]
    pub env: Option<Vec<EnvVar>>,

    /// CPU and memory requests and limits of each instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Port the function serves HTTP on; passed to it as `PORT`.
    #[serde(default = "default_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: i32,

    /// HTTP path probed before an instance receives traffic. When unset, an
    /// instance is ready once its port accepts a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message(Message::Expression(
        "'readinessPath must be an absolute path such as /healthz, not \"' + self + '\"'".into()
    )))]
    pub readiness_path: Option<String>,

    /// Service account the instances run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,

    /// Extra settings for the instance pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplate>,

    /// Hard maximum of requests in flight on one instance: 1 (the default)
    /// serves one request at a time, as Lambda does; 0 means unlimited.
    #[serde(default = "default_concurrency")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("concurrency must be between 0 (unlimited) and 1000"))]
    pub concurrency: i32,

    /// Most requests one instance ever starts; the instance that started this
    /// many gets no more, and is drained and destroyed once they finish (a
    /// replacement starts at once). 1 (with `concurrency: 1`) runs every
    /// request in an instance no request ran in before. 0 (the default) is
    /// unlimited. A request counts when the instance's gate admits it.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000000").message("maxRequestsPerInstance must be between 0 (unlimited) and 1000000"))]
    pub max_requests_per_instance: i32,

    /// Longest time one request may take, from the moment the activator
    /// receives it; a request past it gets 504.
    #[serde(default = "default_timeout")]
    #[x_kube(validation = format_rule("timeout"), validation = range_rule("timeout", "1ms", "15m"))]
    pub timeout: GoDuration,

    /// How many instances run, and when each is destroyed.
    #[serde(default)]
    pub scaling: Scaling,

    /// How requests wait while no instance has room.
    #[serde(default)]
    pub queue: Queue,
}

/// How many instances a Function runs, and when each is destroyed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.maxInstances >= self.minInstances").message("maxInstances must not be below minInstances"),
    validation = Rule::new("self.warmInstances <= self.maxInstances").message("warmInstances must not be above maxInstances")
)]
pub struct Scaling {
    /// Instances kept running even with no traffic; 0 scales to zero.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("minInstances must be between 0 and 1000"))]
    pub min_instances: i32,

    /// Most instances the Function may have; requests beyond their capacity wait in the queue.
    #[serde(default = "default_max_instances")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("maxInstances must be between 1 and 1000"))]
    pub max_instances: i32,

    /// Share of `concurrency` the autoscaler aims to use on each instance, in (0, 1].
    #[serde(default = "default_target")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("target must be above 0 and at most 1"))]
    pub target: f64,

    /// An instance with nothing in flight for this long is destroyed.
    #[serde(default = "default_keep_alive")]
    #[x_kube(validation = format_rule("keepAlive"), validation = range_rule("keepAlive", "1s", "24h"))]
    pub keep_alive: GoDuration,

    /// Idle ready instances kept on top of the busy ones, so a burst of up
    /// to this many requests sees no cold start.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("warmInstances must not be negative"))]
    pub warm_instances: i32,
}

/// How requests wait while no instance has room for them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Queue {
    /// Requests that may wait at once; more get 503 with Retry-After.
    #[serde(default = "default_max_pending")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 10000").message("maxPending must be between 0 and 10000"))]
    pub max_pending: i32,

    /// Longest a request waits for an instance before it gets 503.
    #[serde(default = "default_max_wait")]
    #[x_kube(validation = format_rule("maxWait"), validation = range_rule("maxWait", "0s", "15m"))]
    pub max_wait: GoDuration,
}

/// Settings copied onto every instance pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Labels and annotations added to each instance pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<PodTemplateMetadata>,

    /// Node labels an instance pod must be scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Taints the instance pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// RuntimeClass of every instance pod (Kata Containers, gVisor or a
    /// Firecracker-backed runtime, where the cluster offers one). A
    /// RuntimeClass that does not exist makes the Function `Ready=False`
    /// naming it, and no instance is created until it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message(Message::Expression(
        "'podTemplate.runtimeClassName must be a DNS subdomain name such as gvisor, not \"' + self + '\"'".into()
    )))]
    pub runtime_class_name: Option<String>,

    /// Pod-level security context, merged field by field over thaw's
    /// restrictive default (runAsNonRoot, RuntimeDefault seccomp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,

    /// Security context of the function's container, merged field by field
    /// over thaw's restrictive default (no privilege escalation, all
    /// capabilities dropped, read-only root filesystem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<SecurityContext>,
}

/// Labels and annotations added to each instance pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateMetadata {
    /// Keys under `thaw.dev/` are thaw's own and refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = reserved_keys_rule("labels"))]
    pub labels: Option<BTreeMap<String, String>>,

    /// Keys under `thaw.dev/` are thaw's own and refused (e.g.
    /// `thaw.dev/draining-since` would make every instance born draining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = reserved_keys_rule("annotations"))]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The CEL rule refusing keys under `thaw.dev/` (thaw's labels and
/// annotations on instance pods) in `podTemplate.metadata.<field>`, naming
/// the first such key.
fn reserved_keys_rule(field: &str) -> kube::core::Rule {
    use kube::core::{Message, Rule};
    Rule::new("!self.exists(k, k.startsWith('thaw.dev/'))").message(Message::Expression(format!(
        "'podTemplate.metadata.{field} must not set ' + self.filter(k, k.startsWith('thaw.dev/'))[0] + ': keys under thaw.dev/ are reserved for thaw'"
    )))
}

/// What thaw observed of a Function.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` and other conditions, one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Where the function is reached through the activator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Instances by state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstanceCounts>,

    /// How many instances the autoscaler wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_instances: Option<i32>,

    /// When the activator last received a request for this function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request_time: Option<Time>,
}

/// Instances of a Function by state. `ready` counts `busy` plus `idle`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceCounts {
    /// Created, not yet ready.
    pub starting: i32,
    /// Ready to serve: busy plus idle.
    pub ready: i32,
    /// Ready, with requests in flight.
    pub busy: i32,
    /// Ready, with nothing in flight.
    pub idle: i32,
    /// Marked for removal: no new requests, deleted once nothing is in flight.
    pub draining: i32,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min_instances: 0,
            max_instances: default_max_instances(),
            target: default_target(),
            keep_alive: default_keep_alive(),
            warm_instances: 0,
        }
    }
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            max_pending: default_max_pending(),
            max_wait: default_max_wait(),
        }
    }
}

fn default_port() -> i32 {
    8080
}

fn default_concurrency() -> i32 {
    1
}

fn default_timeout() -> GoDuration {
    "30s".into()
}

fn default_max_instances() -> i32 {
    100
}

fn default_target() -> f64 {
    0.7
}

fn default_keep_alive() -> GoDuration {
    "5m".into()
}

fn default_max_pending() -> i32 {
    100
}

fn default_max_wait() -> GoDuration {
    "30s".into()
}
