//! The functions the activator knows, each a [`FunctionState`] behind a
//! mutex, and the RAII handles requests hold: a [`Lease`] on an instance
//! slot, or a [`Waiter`] in the queue. Dropping either gives its place back
//! at once, whatever the reason (the response ended, the client
//! disconnected, a timeout fired), so a slot can never leak.
//!
//! Like Knative's activator breaker (a bounded queue in front of
//! per-instance capacity), but placement packs instead of balancing: see
//! [`crate::place`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock},
    time::{Duration, Instant},
};

use thaw_core::FunctionReport;
use tokio::sync::{Notify, oneshot};

use crate::{
    metrics::{FunctionMetrics, Metrics},
    overload::{QueueBudget, QueueTicket},
    throttle::{
        Admit, FunctionConfig, FunctionState, InstanceId, PodInfo, ProbeTarget, Slot, Take,
        WaiterId,
    },
};

/// Starts a prober for an instance (a task in production, a stand-in in tests).
pub type SpawnProbe = Box<dyn Fn(Arc<Entry>, InstanceId) + Send + Sync>;

/// What every function entry shares.
pub struct Shared {
    /// Notified when a request starts waiting in an empty queue: the
    /// reporter sends a poke at once.
    pub poke: Notify,
    pub metrics: Metrics,
    /// Requests waiting across every function (`--max-queued-requests`).
    pub queue: Arc<QueueBudget>,
    spawn_probe: SpawnProbe,
}

/// Every function the activator knows, by namespace and name.
pub struct Registry {
    functions: RwLock<HashMap<String, HashMap<String, Arc<Entry>>>>,
    shared: Arc<Shared>,
}

/// One function.
pub struct Entry {
    pub namespace: String,
    pub name: String,
    state: Mutex<FunctionState>,
    metrics: FunctionMetrics,
    shared: Arc<Shared>,
}

/// The request timing settings of a function, copied at admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub timeout: Duration,
    pub max_wait: Duration,
}

/// What a request gets when it asks for an instance.
pub enum Admission {
    Placed(Lease),
    Waiting(Waiter),
    /// The queue is full (`maxPending`).
    Full {
        max_pending: u32,
    },
    /// The activator holds its most waiting requests across all functions.
    Overloaded {
        max_queued: usize,
    },
    /// No such function.
    Unknown,
    /// The Function exists but cannot be read.
    Invalid(String),
}

/// A slot on an instance; given back when dropped.
pub struct Lease {
    entry: Arc<Entry>,
    slot: Slot,
}

/// A place in a function's queue; left when dropped.
pub struct Waiter {
    entry: Arc<Entry>,
    id: WaiterId,
    rx: Option<oneshot::Receiver<()>>,
    done: bool,
    /// The function had no placeable instance when this request arrived.
    pub cold: bool,
    _ticket: QueueTicket,
}

/// The function went away while the request waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the function was deleted while the request waited")]
pub struct Gone;

impl Registry {
    pub fn new(metrics: Metrics, spawn_probe: SpawnProbe) -> Arc<Self> {
        Arc::new(Self {
            functions: RwLock::default(),
            shared: Arc::new(Shared {
                poke: Notify::new(),
                metrics,
                queue: Arc::default(),
                spawn_probe,
            }),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The function `namespace/name`, if the activator knows anything of it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Entry>> {
        self.functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)?
            .get(name)
            .cloned()
    }

    /// Whether a Function `namespace/name` exists (readable or not).
    pub fn exists(&self, namespace: &str, name: &str) -> bool {
        self.get(namespace, name).is_some_and(|e| e.exists())
    }

    fn entry(&self, namespace: &str, name: &str) -> Arc<Entry> {
        if let Some(entry) = self.get(namespace, name) {
            return entry;
        }
        let mut functions = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        functions
            .entry(namespace.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Entry {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    state: Mutex::new(FunctionState::new(Instant::now())),
                    metrics: self.shared.metrics.function(namespace, name),
                    shared: self.shared.clone(),
                })
            })
            .clone()
    }

    /// The Function was added or changed (`Some`) or deleted (`None`).
    pub fn set_function(&self, namespace: &str, name: &str, config: Option<FunctionConfig>) {
        if config.is_none() && self.get(namespace, name).is_none() {
            return;
        }
        let entry = self.entry(namespace, name);
        entry.metrics.routed.set(i64::from(config.is_some()));
        entry.with(|s| s.set_config(config, Instant::now()));
        self.prune(namespace, name);
    }

    /// The Function exists but does not decode.
    pub fn set_invalid(&self, namespace: &str, name: &str, message: String) {
        self.entry(namespace, name)
            .with(|s| s.set_invalid(message, Instant::now()));
    }

    /// An instance pod of function `namespace/function` was added or changed.
    pub fn upsert_pod(&self, namespace: &str, function: &str, pod: PodInfo) {
        let entry = self.entry(namespace, function);
        if let Some(id) = entry.with(|s| s.upsert_pod(pod, Instant::now())) {
            (self.shared.spawn_probe)(entry.clone(), id);
        }
    }

    /// An instance pod left the API.
    pub fn remove_pod(&self, namespace: &str, function: &str, pod: &str) {
        if let Some(entry) = self.get(namespace, function) {
            entry.with(|s| s.remove_pod(pod, Instant::now()));
            self.prune(namespace, function);
        }
    }

    /// Every function, as `(namespace, name)`.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.entries()
            .iter()
            .map(|e| (e.namespace.clone(), e.name.clone()))
            .collect()
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flat_map(|names| names.values().cloned())
            .collect()
    }

    /// Every function's report for the `interval` ending `now`, starting the
    /// next interval. Functions with nothing left to remember are forgotten.
    pub fn report(&self, interval: Duration, now: Instant) -> Vec<FunctionReport> {
        let mut reports = Vec::new();
        for entry in self.entries() {
            reports.push(entry.with(|s| s.report(&entry.namespace, &entry.name, interval, now)));
            self.prune(&entry.namespace, &entry.name);
        }
        reports.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        reports
    }

    /// Requests holding a slot or waiting, over every function.
    pub fn busy(&self) -> u64 {
        self.entries()
            .iter()
            .map(|e| e.with(|s| u64::from(s.in_flight()) + s.waiting() as u64))
            .sum()
    }

    /// Forgets `namespace/name` if nothing is left of it.
    fn prune(&self, namespace: &str, name: &str) {
        // Most calls find something left: check without the write lock.
        if !self
            .get(namespace, name)
            .is_some_and(|e| e.with(|s| s.is_unused()))
        {
            return;
        }
        let mut functions = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(names) = functions.get_mut(namespace) else {
            return;
        };
        let unused = names.get(name).is_some_and(|e| e.with(|s| s.is_unused()));
        if unused && let Some(entry) = names.remove(name) {
            self.shared.metrics.remove_function(&entry.metrics);
        }
        if names.is_empty() {
            functions.remove(namespace);
        }
    }
}

impl Entry {
    /// Runs `f` on the state, then refreshes the gauges.
    fn with<T>(&self, f: impl FnOnce(&mut FunctionState) -> T) -> T {
        let mut state = self.lock();
        let result = f(&mut state);
        // An instance used up (maxRequestsPerInstance): its replacement
        // should start now, not at the next report.
        if state.take_spent_news() {
            self.shared.poke.notify_one();
        }
        self.metrics.in_flight.set(i64::from(state.in_flight()));
        self.metrics
            .queue_depth
            .set(i64::try_from(state.waiting()).unwrap_or(i64::MAX));
        result
    }

    fn lock(&self) -> MutexGuard<'_, FunctionState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn metrics(&self) -> &FunctionMetrics {
        &self.metrics
    }

    /// `namespace/name`.
    pub fn function(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the Function exists (readable or not).
    pub fn exists(&self) -> bool {
        let state = self.lock();
        state.config().is_some() || state.is_invalid()
    }

    /// The Function's spec as the activator holds it.
    pub fn config(&self) -> Option<FunctionConfig> {
        self.lock().config().cloned()
    }

    /// A copy of the state, for tests and debugging.
    pub fn snapshot<T>(&self, f: impl FnOnce(&FunctionState) -> T) -> T {
        f(&self.lock())
    }

    /// A new request asks for an instance.
    pub fn admit(self: &Arc<Self>) -> (Admission, Timing) {
        self.admission(|s, now| s.admit(now))
    }

    /// A request whose instance could not be reached asks again, ahead of
    /// the queue.
    pub fn readmit(self: &Arc<Self>) -> (Admission, Timing) {
        self.admission(|s, now| s.readmit(now))
    }

    fn admission(
        self: &Arc<Self>,
        admit: impl FnOnce(&mut FunctionState, Instant) -> Admit,
    ) -> (Admission, Timing) {
        let (admit, timing) = self.with(|s| {
            let admit = admit(s, Instant::now());
            let timing = s
                .config()
                .map(|c| Timing {
                    timeout: c.timeout,
                    max_wait: c.max_wait,
                })
                .unwrap_or(Timing {
                    timeout: Duration::ZERO,
                    max_wait: Duration::ZERO,
                });
            (admit, timing)
        });
        let admission = match admit {
            Admit::Placed(slot) => Admission::Placed(Lease {
                entry: self.clone(),
                slot,
            }),
            Admit::Queued {
                id,
                rx,
                first,
                cold,
            } => {
                let Some(ticket) = self.shared.queue.try_take() else {
                    self.with(|s| s.cancel(id, Instant::now()));
                    return (
                        Admission::Overloaded {
                            max_queued: self.shared.queue.max(),
                        },
                        timing,
                    );
                };
                if first {
                    self.shared.poke.notify_one();
                }
                if cold {
                    self.metrics.cold_starts.inc();
                }
                Admission::Waiting(Waiter {
                    entry: self.clone(),
                    id,
                    rx: Some(rx),
                    done: false,
                    cold,
                    _ticket: ticket,
                })
            }
            Admit::Full { max_pending } => Admission::Full { max_pending },
            Admit::Unknown => Admission::Unknown,
            Admit::Invalid(message) => Admission::Invalid(message),
        };
        (admission, timing)
    }

    /// What the prober of `instance` should probe; `None`: stop.
    pub fn probe_target(&self, instance: InstanceId) -> Option<ProbeTarget> {
        self.with(|s| s.probe_target(instance))
    }

    /// The prober of `instance` saw it answer.
    pub fn probe_succeeded(&self, instance: InstanceId) {
        self.with(|s| s.probe_succeeded(instance, Instant::now()));
    }
}

impl Lease {
    pub fn addr(&self) -> SocketAddr {
        self.slot.addr
    }

    /// The instance's address as a URI authority.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.slot.authority
    }

    pub fn pod(&self) -> &str {
        &self.slot.pod
    }

    pub fn instance(&self) -> InstanceId {
        self.slot.instance
    }

    pub fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }

    /// The instance's gate refused the request as exhausted: nothing more
    /// goes to it, and the slot is given back.
    pub fn exhausted(self) {
        let entry = self.entry.clone();
        entry.with(|s| s.exhausted(self.slot.instance));
        drop(self);
    }

    /// Connecting to the instance failed before anything was sent: it is
    /// unready until probed again, and the slot is given back.
    pub fn connect_failed(self) {
        let entry = self.entry.clone();
        if let Some(id) = entry.with(|s| s.connect_failed(self.slot.instance)) {
            (entry.shared.spawn_probe)(entry.clone(), id);
        }
        drop(self);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let instance = self.slot.instance;
        self.entry.with(|s| s.release(instance, Instant::now()));
    }
}

impl Waiter {
    /// Waits for a slot. Cancel-safe: dropping the future (or the waiter)
    /// leaves the queue and passes on a slot handed over meanwhile.
    pub async fn wait(&mut self) -> Result<Lease, Gone> {
        loop {
            if let Some(rx) = self.rx.as_mut() {
                // An error means the function dropped the queue: take() says Gone.
                let _ = rx.await;
            }
            self.rx = None;
            let take = self.entry.with(|s| s.take(self.id, Instant::now()));
            match take {
                Take::Assigned(slot) => {
                    self.done = true;
                    return Ok(Lease {
                        entry: self.entry.clone(),
                        slot,
                    });
                }
                Take::Waiting(rx) => self.rx = Some(rx),
                Take::Gone => {
                    self.done = true;
                    return Err(Gone);
                }
            }
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.done {
            let id = self.id;
            self.entry.with(|s| s.cancel(id, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests;
