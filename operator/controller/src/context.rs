//! What every reconcile shares: clients, caches, the autoscaler's stats and
//! the controller's memory.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    node::v1::RuntimeClass,
};
use kube::{Client, runtime::events::Recorder, runtime::reflector::Store};
use thaw_core::{Autoscaler, Clock, FunctionKey};

use crate::{gate::GateClient, memory::FunctionMemory, metrics::Metrics, pod_index::PodIndex};

/// The field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "thaw-controller";

/// Settings of the controller from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// DNS name of the activator Service, the target of every Function's
    /// ExternalName Service.
    pub activator_host: String,
    /// Domain of Function URLs: `http://<name>.<namespace>.<domain>`.
    pub domain: String,
    /// Image of the gate sidecar in every instance pod (thaw's own image).
    pub gate_image: String,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub config: Config,
    /// Every instance pod (label `thaw.dev/function`), from a watch.
    pub pods: Store<Pod>,
    /// Which of them belong to which Function, from the same watch.
    pub pod_index: Arc<PodIndex>,
    /// Every Function Service (label `thaw.dev/function`), from a watch.
    pub services: Store<Service>,
    /// Every RuntimeClass (cluster-scoped), from a watch while leading.
    pub runtime_classes: Store<RuntimeClass>,
    /// Activator stats, merged; the HTTP endpoint feeds it.
    pub autoscaler: Arc<Mutex<Autoscaler>>,
    pub memory: Mutex<HashMap<FunctionKey, FunctionMemory>>,
    pub clock: Arc<dyn Clock>,
    /// Asks instances' gates before they are reaped or deleted.
    pub gates: GateClient,
}

impl Context {
    /// The autoscaler's store. A panic while it was held cannot leave it
    /// inconsistent in a way worse than stale stats, so poisoning is ignored.
    pub fn autoscaler(&self) -> MutexGuard<'_, Autoscaler> {
        self.autoscaler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The controller's memory of all Functions.
    pub fn memory(&self) -> MutexGuard<'_, HashMap<FunctionKey, FunctionMemory>> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
