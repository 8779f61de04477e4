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
    table::{
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
mod tests {
    use std::{net::IpAddr, sync::atomic::AtomicUsize, sync::atomic::Ordering};

    use super::*;
    use crate::place::Limits;

    fn config(concurrency: u32) -> FunctionConfig {
        FunctionConfig {
            uid: "fn-uid".into(),
            hash: "h".into(),
            limits: Limits {
                concurrency,
                target: 1.0,
            },
            max_pending: 10,
            max_wait: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            port: 8080,
        }
    }

    fn pod(name: &str, ip: u8) -> PodInfo {
        PodInfo {
            name: name.into(),
            uid: format!("uid-{name}"),
            ip: Some(IpAddr::from([10, 0, 0, ip])),
            port: None,
            readiness_path: None,
            owner_uid: Some("fn-uid".into()),
            hash: Some("h".into()),
            kubelet_ready: None,
            draining: false,
            terminating: false,
            finished: false,
        }
    }

    /// A registry whose "probes" succeed at once, counting how many started.
    fn registry() -> (Arc<Registry>, Arc<AtomicUsize>) {
        let probes = Arc::new(AtomicUsize::new(0));
        let count = probes.clone();
        let registry = Registry::new(
            Metrics::new().unwrap(),
            Box::new(move |entry: Arc<Entry>, id| {
                count.fetch_add(1, Ordering::SeqCst);
                entry.probe_succeeded(id);
            }),
        );
        (registry, probes)
    }

    fn placed((admission, _): (Admission, Timing)) -> Lease {
        match admission {
            Admission::Placed(lease) => lease,
            _ => panic!("expected a lease"),
        }
    }

    fn waiting((admission, _): (Admission, Timing)) -> Waiter {
        match admission {
            Admission::Waiting(waiter) => waiter,
            _ => panic!("expected to wait"),
        }
    }

    #[tokio::test]
    async fn dropping_a_lease_wakes_the_next_waiter() {
        let (registry, probes) = registry();
        registry.set_function("ns", "f", Some(config(1)));
        registry.upsert_pod("ns", "f", pod("a", 1));
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        let entry = registry.get("ns", "f").unwrap();
        let lease = placed(entry.admit());
        assert_eq!(lease.addr(), "10.0.0.1:8080".parse().unwrap());
        let mut waiter = waiting(entry.admit());
        let task = tokio::spawn(async move { waiter.wait().await.map(|l| l.pod().to_owned()) });
        drop(lease);
        assert_eq!(task.await.unwrap(), Ok("a".to_owned()));
        assert_eq!(entry.snapshot(|s| s.in_flight()), 0);
    }

    #[tokio::test]
    async fn a_client_that_disconnects_while_queued_leaves_at_once() {
        let (registry, _) = registry();
        registry.set_function("ns", "f", Some(config(1)));
        registry.upsert_pod("ns", "f", pod("a", 1));
        let entry = registry.get("ns", "f").unwrap();
        let lease = placed(entry.admit());
        let mut first = waiting(entry.admit());
        let mut second = waiting(entry.admit());
        // The first client's request future is dropped mid-wait (hyper drops
        // the service future when the client goes away).
        let wait = tokio::time::timeout(Duration::from_millis(10), first.wait()).await;
        assert!(wait.is_err(), "nothing free yet");
        drop(first);
        assert_eq!(entry.snapshot(|s| s.waiting()), 1);
        drop(lease);
        let lease = second.wait().await.unwrap();
        assert_eq!(lease.pod(), "a");
    }

    #[tokio::test]
    async fn a_waiter_dropped_after_its_slot_was_handed_over_passes_it_on() {
        let (registry, _) = registry();
        registry.set_function("ns", "f", Some(config(1)));
        registry.upsert_pod("ns", "f", pod("a", 1));
        let entry = registry.get("ns", "f").unwrap();
        let lease = placed(entry.admit());
        let first = waiting(entry.admit());
        let mut second = waiting(entry.admit());
        drop(lease); // hands the slot to `first`...
        drop(first); // ...whose client is gone before it looked.
        let lease = tokio::time::timeout(Duration::from_secs(1), second.wait())
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(lease.pod(), "a");
        assert_eq!(entry.snapshot(|s| s.in_flight()), 1);
    }

    #[tokio::test]
    async fn many_racing_requests_never_exceed_concurrency() {
        let (registry, _) = registry();
        let mut c = config(2);
        c.max_pending = 1000;
        registry.set_function("ns", "f", Some(c));
        registry.upsert_pod("ns", "f", pod("a", 1));
        registry.upsert_pod("ns", "f", pod("b", 2));
        let entry = registry.get("ns", "f").unwrap();
        let peak = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
        let current = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let entry = entry.clone();
            let peak = peak.clone();
            let current = current.clone();
            tasks.push(tokio::spawn(async move {
                let lease = match entry.admit().0 {
                    Admission::Placed(lease) => lease,
                    Admission::Waiting(mut waiter) => {
                        // Every fifth client gives up early.
                        if i % 5 == 0 {
                            let _ = tokio::time::timeout(Duration::from_micros(50), waiter.wait())
                                .await;
                            return;
                        }
                        waiter.wait().await.unwrap()
                    }
                    _ => panic!("unexpected admission"),
                };
                let pod = lease.pod().to_owned();
                {
                    let mut current = current.lock().unwrap();
                    let n = current.entry(pod.clone()).or_default();
                    *n += 1;
                    let mut peak = peak.lock().unwrap();
                    let p = peak.entry(pod.clone()).or_default();
                    *p = (*p).max(*n);
                }
                tokio::task::yield_now().await;
                *current.lock().unwrap().get_mut(&pod).unwrap() -= 1;
                drop(lease);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert!(peak.lock().unwrap().values().all(|p| *p <= 2), "{peak:?}");
        assert_eq!(entry.snapshot(|s| (s.in_flight(), s.waiting())), (0, 0));
    }

    #[tokio::test]
    async fn a_connection_failure_reprobes_and_the_retry_goes_first() {
        let probes = Arc::new(Mutex::new(Vec::new()));
        let seen = probes.clone();
        let registry = Registry::new(
            Metrics::new().unwrap(),
            Box::new(move |entry: Arc<Entry>, id| seen.lock().unwrap().push((entry, id))),
        );
        registry.set_function("ns", "f", Some(config(1)));
        registry.upsert_pod("ns", "f", pod("a", 1));
        let (entry, id) = probes.lock().unwrap().pop().unwrap();
        entry.probe_succeeded(id);
        let lease = placed(entry.admit());
        let mut other = waiting(entry.admit());
        lease.connect_failed();
        assert_eq!(probes.lock().unwrap().len(), 1, "re-probing");
        // The slot was freed, but the instance is unready: nobody is placed.
        assert!(
            tokio::time::timeout(Duration::from_millis(5), other.wait())
                .await
                .is_err()
        );
        let mut retry = waiting(entry.readmit());
        entry.probe_succeeded(id);
        let lease = retry.wait().await.unwrap();
        assert_eq!(lease.pod(), "a");
        drop(lease);
        other.wait().await.unwrap();
    }

    #[tokio::test]
    async fn a_deleted_function_answers_its_waiters() {
        let (registry, _) = registry();
        registry.set_function("ns", "f", Some(config(1)));
        let entry = registry.get("ns", "f").unwrap();
        let mut waiter = waiting(entry.admit());
        registry.set_function("ns", "f", None);
        assert_eq!(waiter.wait().await.err(), Some(Gone));
        drop(waiter);
        drop(entry);
        registry.report(Duration::from_secs(1), Instant::now());
        assert!(registry.get("ns", "f").is_none(), "forgotten");
    }

    #[tokio::test]
    async fn the_first_waiting_request_pokes() {
        let (registry, _) = registry();
        registry.set_function("ns", "f", Some(config(1)));
        let entry = registry.get("ns", "f").unwrap();
        let _first = waiting(entry.admit());
        tokio::time::timeout(Duration::from_secs(1), registry.shared().poke.notified())
            .await
            .expect("poked");
        let _second = waiting(entry.admit());
        assert!(
            tokio::time::timeout(Duration::from_millis(10), registry.shared().poke.notified())
                .await
                .is_err(),
            "only the first"
        );
    }

    #[tokio::test]
    async fn pods_of_unknown_functions_are_reported_and_forgotten_when_gone() {
        let (registry, _) = registry();
        registry.upsert_pod("ns", "f", pod("a", 1));
        assert!(!registry.exists("ns", "f"));
        let reports = registry.report(Duration::from_secs(1), Instant::now());
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].instances[0].pod, "a");
        registry.remove_pod("ns", "f", "a");
        assert!(registry.get("ns", "f").is_none());
        assert!(
            registry
                .report(Duration::from_secs(1), Instant::now())
                .is_empty()
        );
    }
}
