//! What the operator knows of Functions and their instance pods, for
//! vetting stats reports ([`thaw_core::vet_report`]): caches every replica
//! keeps, leader or not, since every replica takes reports.

use futures::FutureExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt,
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};
use prometheus::{IntCounter, Registry};
use thaw_api::{Function, keys::FUNCTION_LABEL};
use thaw_core::{ActivatorReport, FunctionKey, KnownFunction, Vetting, vet_report};

/// The largest `queue.maxPending` the API allows: the cap for a Function
/// the operator does not know (yet).
pub const MAX_PENDING_LIMIT: u32 = 10_000;

/// The caches reports are checked against, and what vetting counted.
#[derive(Clone)]
pub struct Known {
    pub functions: Store<DeserializeGuard<Function>>,
    pub pods: Store<Pod>,
    ignored_instances: IntCounter,
    capped_waiting: IntCounter,
}

impl Known {
    /// Registers `thaw_stats_ignored_instances_total` and
    /// `thaw_stats_capped_waiting_total` in `registry`.
    pub fn new(
        functions: Store<DeserializeGuard<Function>>,
        pods: Store<Pod>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let ignored_instances = IntCounter::new(
            "thaw_stats_ignored_instances_total",
            "Instances in stats reports that are not pods of their Function, dropped.",
        )?;
        let capped_waiting = IntCounter::new(
            "thaw_stats_capped_waiting_total",
            "Function entries in stats reports whose waiting count was cut to queue.maxPending.",
        )?;
        registry.register(Box::new(ignored_instances.clone()))?;
        registry.register(Box::new(capped_waiting.clone()))?;
        Ok(Self {
            functions,
            pods,
            ignored_instances,
            capped_waiting,
        })
    }

    /// Vets `report` in place; `None` (nothing changed) until both caches
    /// have synced once, since an empty cache would drop every instance.
    pub fn vet(&self, report: &mut ActivatorReport) -> Option<Vetting> {
        let synced = self.functions.wait_until_ready().now_or_never().is_some()
            && self.pods.wait_until_ready().now_or_never().is_some();
        if !synced {
            return None;
        }
        let vetting = vet_report(report, MAX_PENDING_LIMIT, |key| self.function(key));
        self.ignored_instances.inc_by(vetting.ignored_instances);
        self.capped_waiting.inc_by(vetting.capped_waiting);
        Some(vetting)
    }

    fn function(&self, key: &FunctionKey) -> Option<KnownPods<'_>> {
        let guard = self
            .functions
            .get(&ObjectRef::new(&key.name).within(&key.namespace))?;
        let function = guard.0.as_ref().ok()?;
        Some(KnownPods {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            uid: function.metadata.uid.clone(),
            max_pending: u32::try_from(function.spec.queue.max_pending).unwrap_or(0),
            pods: &self.pods,
        })
    }
}

/// One Function as [`vet_report`] asks about it.
struct KnownPods<'a> {
    namespace: String,
    name: String,
    uid: Option<String>,
    max_pending: u32,
    pods: &'a Store<Pod>,
}

impl KnownFunction for KnownPods<'_> {
    fn max_pending(&self) -> u32 {
        self.max_pending
    }

    /// A pod of this name, labelled for this Function and controlled by it.
    fn has_pod(&self, pod: &str) -> bool {
        self.pods
            .get(&ObjectRef::new(pod).within(&self.namespace))
            .is_some_and(|pod| {
                pod.labels().get(FUNCTION_LABEL) == Some(&self.name)
                    && pod.owner_references().iter().any(|o| {
                        o.controller == Some(true) && self.uid.as_deref() == Some(o.uid.as_str())
                    })
            })
    }
}
