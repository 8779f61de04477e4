//! One function as the activator holds it: its instances with their
//! in-flight counts, its FIFO queue of waiting requests, and the stats it
//! reports. Pure and synchronous: every method takes `now`, nothing here
//! does I/O or reads a clock, so the tests drive time by hand. The caller
//! ([`crate::registry`]) keeps one [`FunctionState`] behind a mutex.
//!
//! The invariant every method keeps: **a request waits only while no
//! instance has room.** Whenever a slot frees or an instance becomes
//! placeable, [`FunctionState::dispatch`] hands slots to the head of the
//! queue first, so a new request can take a free slot directly only when
//! nobody is waiting.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use http::uri::Authority;
use thaw_core::{FunctionReport, InstanceReport};
use tokio::sync::oneshot;

use crate::place::{self, Candidate, Limits};

/// An instance, numbered per function in the order the activator learned
/// of it. A pod deleted and recreated under the same name gets a new id.
pub type InstanceId = u64;
/// A waiting request.
pub type WaiterId = u64;

/// What the activator needs of a Function's spec.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionConfig {
    /// The Function's uid: instances must be controller-owned by it.
    pub uid: String,
    /// `thaw_api::spec_hash` of the current spec.
    pub hash: String,
    pub limits: Limits,
    /// `spec.queue.maxPending`.
    pub max_pending: u32,
    /// `spec.queue.maxWait`.
    pub max_wait: Duration,
    /// `spec.timeout`, from arrival at the activator.
    pub timeout: Duration,
    /// `spec.port`, for pods that do not say their own.
    pub port: u16,
    /// `spec.maxRequestsPerInstance`; 0 = unlimited.
    pub max_requests: u32,
}

/// What the activator needs of an instance pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub uid: String,
    pub ip: Option<IpAddr>,
    /// The function container's port, when the pod names one.
    pub port: Option<u16>,
    /// The pod's HTTP readiness path; TCP connect when `None`.
    pub readiness_path: Option<String>,
    /// uid of the pod's controller owner.
    pub owner_uid: Option<String>,
    /// The `thaw.dev/spec-hash` label.
    pub hash: Option<String>,
    /// kubelet's Ready condition, when the pod has one.
    pub kubelet_ready: Option<bool>,
    /// Annotated `thaw.dev/draining-since`.
    pub draining: bool,
    /// `deletionTimestamp` set.
    pub terminating: bool,
    /// Phase `Failed` or `Succeeded`: the container is gone.
    pub finished: bool,
}

/// One instance.
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: InstanceId,
    pub pod: PodInfo,
    /// Probed successfully, and no connection to it failed since.
    ready: bool,
    /// A prober owns this instance now.
    probing: bool,
    /// kubelet reported it Ready at least once.
    kubelet_was_ready: bool,
    /// kubelet's Ready went from True to False: place nothing.
    kubelet_unready: bool,
    /// The pod left the API; kept only while requests are in flight on it.
    gone: bool,
    in_flight: u32,
    /// When `in_flight` last dropped to 0; `None` until a request placed by
    /// this activator ended (this process knows nothing of the instance's
    /// idle time before that, so it reports none: the autoscaler keeps the
    /// instance's clock across activators and their restarts).
    idle_since: Option<Instant>,
    /// The address as a URI authority, made once.
    authority: Option<(SocketAddr, Authority)>,
    /// Requests this activator placed on it.
    started: u64,
    /// Its gate refused a request as exhausted: it takes no more, ever.
    exhausted: bool,
}

impl Instance {
    /// The address requests go to.
    pub fn addr(&self, default_port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.pod.ip?,
            self.pod.port.unwrap_or(default_port),
        ))
    }

    /// Takes no new requests, ever: draining, terminating, finished or gone.
    pub fn retired(&self) -> bool {
        self.gone || self.pod.draining || self.pod.terminating || self.pod.finished
    }

    fn placeable(&self, config: &FunctionConfig) -> bool {
        self.serving(config) && !self.spent(config)
    }

    /// Ready, not retired, owned: it serves what was placed on it (a slot
    /// handed to a waiter stays good even if it was the instance's last).
    fn serving(&self, config: &FunctionConfig) -> bool {
        self.ready
            && !self.kubelet_unready
            && !self.retired()
            && self.pod.ip.is_some()
            && self.pod.hash.is_some()
            && self.pod.owner_uid.as_deref() == Some(config.uid.as_str())
    }

    /// Has started `maxRequestsPerInstance` requests, as far as this
    /// activator knows (its own placements, or the gate's refusal).
    fn spent(&self, config: &FunctionConfig) -> bool {
        self.spent_at(config.max_requests)
    }

    fn spent_at(&self, max_requests: u32) -> bool {
        self.exhausted || (max_requests > 0 && self.started >= u64::from(max_requests))
    }

    fn current(&self, config: &FunctionConfig) -> bool {
        self.pod.hash.as_deref() == Some(config.hash.as_str())
    }

    fn needs_probe(&self) -> bool {
        !self.ready && !self.probing && !self.retired() && self.pod.ip.is_some()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }
}

/// A place on an instance, held by one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub instance: InstanceId,
    pub pod: String,
    pub addr: SocketAddr,
    /// `addr` as a URI authority.
    pub authority: Authority,
}

/// Where and how to probe an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    pub addr: SocketAddr,
    /// HTTP GET path; TCP connect when `None`.
    pub path: Option<String>,
}

/// The answer to a request that wants an instance.
#[derive(Debug)]
pub enum Admit {
    /// Room now: the request holds this slot.
    Placed(Slot),
    /// No room: the request waits. `rx` fires when it was given a slot (or
    /// the function went away); then call [`FunctionState::take`].
    Queued {
        id: WaiterId,
        rx: oneshot::Receiver<()>,
        /// The queue was empty: tell the autoscaler at once.
        first: bool,
        /// No instance is placeable at all: the request waits for a cold start.
        cold: bool,
    },
    /// The queue is at `maxPending`.
    Full { max_pending: u32 },
    /// No such Function (or it was deleted).
    Unknown,
    /// The Function exists but cannot be read.
    Invalid(String),
}

/// What a woken waiter finds.
#[derive(Debug)]
pub enum Take {
    /// Its slot.
    Assigned(Slot),
    /// Still (or again) waiting: await this.
    Waiting(oneshot::Receiver<()>),
    /// The function went away.
    Gone,
}

#[derive(Debug)]
struct Waiter {
    id: WaiterId,
    wake: oneshot::Sender<()>,
}

/// One function's instances, queue and stats.
#[derive(Debug)]
pub struct FunctionState {
    config: Option<FunctionConfig>,
    invalid: Option<String>,
    instances: Vec<Instance>,
    next_instance: InstanceId,
    queue: VecDeque<Waiter>,
    /// Slots handed to waiters that have not picked them up yet.
    assigned: Vec<(WaiterId, Slot)>,
    next_waiter: WaiterId,
    /// Slots held, on every instance (assigned ones included).
    in_flight: u32,
    /// Request-seconds (in flight plus waiting) since the last report.
    area: f64,
    area_since: Instant,
    /// Requests received since the last report.
    requests: u64,
    /// An instance became spent (maxRequestsPerInstance) since the last
    /// [`FunctionState::take_spent_news`]: the autoscaler should hear it now.
    spent_news: bool,
}

impl FunctionState {
    pub fn new(now: Instant) -> Self {
        Self {
            config: None,
            invalid: None,
            instances: Vec::new(),
            next_instance: 0,
            queue: VecDeque::new(),
            assigned: Vec::new(),
            next_waiter: 0,
            in_flight: 0,
            area: 0.0,
            area_since: now,
            requests: 0,
            spent_news: false,
        }
    }

    pub fn config(&self) -> Option<&FunctionConfig> {
        self.config.as_ref()
    }

    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// The Function exists but does not decode.
    pub fn is_invalid(&self) -> bool {
        self.invalid.is_some()
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Slots held now, on every instance.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Nothing left to remember: no Function, no instance, nobody waiting.
    pub fn is_unused(&self) -> bool {
        self.config.is_none()
            && self.invalid.is_none()
            && self.instances.is_empty()
            && self.queue.is_empty()
            && self.assigned.is_empty()
    }

    /// The Function's spec changed, appeared, or (`None`) went away. Waiters
    /// of a Function that went away are woken and find it [`Take::Gone`].
    pub fn set_config(&mut self, config: Option<FunctionConfig>, now: Instant) {
        self.touch(now);
        self.invalid = None;
        self.config = config;
        if self.config.is_none() {
            self.queue.clear();
        }
        self.dispatch();
    }

    /// The Function exists but does not decode: requests get `message`.
    pub fn set_invalid(&mut self, message: String, now: Instant) {
        self.touch(now);
        self.config = None;
        self.invalid = Some(message);
        self.queue.clear();
    }

    /// A pod was added or changed. Returns the instance to start probing,
    /// if it needs a prober.
    pub fn upsert_pod(&mut self, pod: PodInfo, now: Instant) -> Option<InstanceId> {
        self.touch(now);
        // A pod recreated under the same name is a new instance.
        if self
            .instances
            .iter()
            .any(|i| i.pod.name == pod.name && i.pod.uid != pod.uid && !i.gone)
        {
            self.remove_pod(&pod.name, now);
        }
        let index = match self
            .instances
            .iter()
            .position(|i| i.pod.uid == pod.uid && !i.gone)
        {
            Some(index) => {
                let instance = &mut self.instances[index];
                if instance.pod.ip != pod.ip || instance.pod.port != pod.port {
                    instance.ready = false;
                }
                instance.pod = pod;
                index
            }
            None => {
                let id = self.next_instance;
                self.next_instance += 1;
                self.instances.push(Instance {
                    id,
                    pod,
                    ready: false,
                    probing: false,
                    kubelet_was_ready: false,
                    kubelet_unready: false,
                    gone: false,
                    in_flight: 0,
                    idle_since: None,
                    authority: None,
                    started: 0,
                    exhausted: false,
                });
                self.instances.len() - 1
            }
        };
        let instance = &mut self.instances[index];
        match instance.pod.kubelet_ready {
            Some(true) => {
                instance.kubelet_was_ready = true;
                instance.kubelet_unready = false;
            }
            Some(false) if instance.kubelet_was_ready => instance.kubelet_unready = true,
            _ => {}
        }
        let probe = instance.needs_probe().then(|| {
            instance.probing = true;
            instance.id
        });
        self.dispatch();
        probe
    }

    /// The pod left the API. Its instance takes nothing new; it is
    /// forgotten once nothing is in flight on it.
    pub fn remove_pod(&mut self, name: &str, now: Instant) {
        self.touch(now);
        for instance in &mut self.instances {
            if instance.pod.name == name {
                instance.gone = true;
            }
        }
        self.instances.retain(|i| !(i.gone && i.in_flight == 0));
    }

    /// Names of the pods the activator knows (not yet gone).
    pub fn pod_names(&self) -> Vec<String> {
        self.instances
            .iter()
            .filter(|i| !i.gone)
            .map(|i| i.pod.name.clone())
            .collect()
    }

    /// A new request wants an instance; it counts as received.
    pub fn admit(&mut self, now: Instant) -> Admit {
        self.touch(now);
        self.requests += 1;
        let Some(config) = &self.config else {
            return match &self.invalid {
                Some(message) => Admit::Invalid(message.clone()),
                None => Admit::Unknown,
            };
        };
        let max_pending = config.max_pending;
        if self.queue.is_empty()
            && let Some(index) = self.pick()
        {
            return Admit::Placed(self.occupy(index));
        }
        if self.queue.len() >= max_pending as usize {
            return Admit::Full { max_pending };
        }
        self.enqueue(false)
    }

    /// A request that was placed but could not connect wants an instance
    /// again. It goes ahead of the queue and past `maxPending`: it was
    /// admitted already.
    pub fn readmit(&mut self, now: Instant) -> Admit {
        self.touch(now);
        if self.config.is_none() {
            return match &self.invalid {
                Some(message) => Admit::Invalid(message.clone()),
                None => Admit::Unknown,
            };
        }
        if self.queue.is_empty()
            && let Some(index) = self.pick()
        {
            return Admit::Placed(self.occupy(index));
        }
        self.enqueue(true)
    }

    fn enqueue(&mut self, front: bool) -> Admit {
        let first = self.queue.is_empty();
        let cold = match &self.config {
            Some(config) => !self.instances.iter().any(|i| i.placeable(config)),
            None => true,
        };
        let id = self.next_waiter;
        self.next_waiter += 1;
        let (wake, rx) = oneshot::channel();
        let waiter = Waiter { id, wake };
        if front {
            self.queue.push_front(waiter);
        } else {
            self.queue.push_back(waiter);
        }
        Admit::Queued {
            id,
            rx,
            first,
            cold,
        }
    }

    /// Waiter `id` was woken (or wants to know where it stands).
    pub fn take(&mut self, id: WaiterId, now: Instant) -> Take {
        self.touch(now);
        if let Some(position) = self.assigned.iter().position(|(w, _)| *w == id) {
            let (_, slot) = self.assigned.swap_remove(position);
            let still_placeable = match (&self.config, self.instance(slot.instance)) {
                (Some(config), Some(instance)) => instance.serving(config),
                _ => false,
            };
            if still_placeable {
                return Take::Assigned(slot);
            }
            // The instance went away (or stopped taking requests) between
            // the hand-over and now: give the slot back and wait again,
            // first in line.
            self.free(slot.instance, now);
            if self.config.is_none() {
                return Take::Gone;
            }
            let (wake, rx) = oneshot::channel();
            self.queue.push_front(Waiter { id, wake });
            self.dispatch();
            return Take::Waiting(rx);
        }
        if let Some(waiter) = self.queue.iter_mut().find(|w| w.id == id) {
            let (wake, rx) = oneshot::channel();
            waiter.wake = wake;
            return Take::Waiting(rx);
        }
        Take::Gone
    }

    /// Waiter `id` gave up (its client left, or it timed out): it leaves the
    /// queue, and a slot handed to it meanwhile goes to the next in line.
    pub fn cancel(&mut self, id: WaiterId, now: Instant) {
        self.touch(now);
        if let Some(position) = self.queue.iter().position(|w| w.id == id) {
            self.queue.remove(position);
            return;
        }
        if let Some(position) = self.assigned.iter().position(|(w, _)| *w == id) {
            let (_, slot) = self.assigned.swap_remove(position);
            self.free(slot.instance, now);
            self.dispatch();
        }
    }

    /// A request on `instance` ended.
    pub fn release(&mut self, instance: InstanceId, now: Instant) {
        self.touch(now);
        self.free(instance, now);
        self.dispatch();
    }

    /// Connecting to `instance` failed: it is unready until probed again.
    /// Returns the instance when it needs a prober.
    pub fn connect_failed(&mut self, instance: InstanceId) -> Option<InstanceId> {
        let instance = self.instance_mut(instance)?;
        instance.ready = false;
        instance.needs_probe().then(|| {
            instance.probing = true;
            instance.id
        })
    }

    /// The instance's gate refused a request as exhausted: it takes nothing
    /// new, and the autoscaler hears it at once.
    pub fn exhausted(&mut self, instance: InstanceId) {
        if let Some(instance) = self.instance_mut(instance)
            && !instance.exhausted
        {
            instance.exhausted = true;
            self.spent_news = true;
        }
    }

    /// Whether an instance became spent since the last call.
    pub fn take_spent_news(&mut self) -> bool {
        std::mem::take(&mut self.spent_news)
    }

    /// What the prober of `instance` should probe; `None` tells it to stop
    /// (the instance is ready, retired or gone).
    pub fn probe_target(&mut self, instance: InstanceId) -> Option<ProbeTarget> {
        let default_port = self.config.as_ref().map(|c| c.port).unwrap_or(8080);
        let instance = self.instance_mut(instance)?;
        if instance.ready || instance.retired() {
            instance.probing = false;
            return None;
        }
        let Some(addr) = instance.addr(default_port) else {
            instance.probing = false;
            return None;
        };
        Some(ProbeTarget {
            addr,
            path: instance.pod.readiness_path.clone(),
        })
    }

    /// The prober of `instance` saw it answer: it takes requests now.
    pub fn probe_succeeded(&mut self, instance: InstanceId, now: Instant) {
        self.touch(now);
        if let Some(instance) = self.instance_mut(instance) {
            instance.ready = true;
            instance.probing = false;
        }
        self.dispatch();
    }

    /// The report for the time since the last one, `interval` long; starts
    /// the next interval.
    pub fn report(
        &mut self,
        namespace: &str,
        name: &str,
        interval: Duration,
        now: Instant,
    ) -> FunctionReport {
        self.touch(now);
        let seconds = interval.as_secs_f64();
        let concurrency = if seconds > 0.0 {
            self.area / seconds
        } else {
            f64::from(self.load())
        };
        let mut report = FunctionReport::new(namespace, name);
        report.waiting = u32::try_from(self.queue.len()).unwrap_or(u32::MAX);
        report.concurrency = if concurrency.is_finite() {
            concurrency.max(0.0)
        } else {
            0.0
        };
        report.requests = std::mem::take(&mut self.requests);
        self.area = 0.0;
        report.instances = self
            .instances
            .iter()
            .map(|i| InstanceReport {
                pod: i.pod.name.clone(),
                in_flight: i.in_flight,
                idle_for_ms: i.idle_since.filter(|_| i.in_flight == 0).map(|since| {
                    u64::try_from(now.saturating_duration_since(since).as_millis())
                        .unwrap_or(u64::MAX)
                }),
                draining: i.gone || i.pod.draining || i.pod.terminating,
                started: i.started,
                exhausted: self.config.as_ref().is_some_and(|c| i.spent(c)),
            })
            .collect();
        report
    }

    /// Hands free slots to the head of the queue, while any instance has room.
    fn dispatch(&mut self) {
        while !self.queue.is_empty() {
            let Some(index) = self.pick() else { break };
            let Some(waiter) = self.queue.pop_front() else {
                break;
            };
            let slot = self.occupy(index);
            self.assigned.push((waiter.id, slot));
            // A waiter whose receiver is gone is being dropped right now;
            // its cancel() finds the slot in `assigned` and frees it.
            let _ = waiter.wake.send(());
        }
    }

    fn pick(&self) -> Option<usize> {
        let config = self.config.as_ref()?;
        let candidates = self.instances.iter().map(|i| Candidate {
            placeable: i.placeable(config),
            current: i.current(config),
            in_flight: i.in_flight,
        });
        place::pick_from(candidates, config.limits)
    }

    fn occupy(&mut self, index: usize) -> Slot {
        let default_port = self.config.as_ref().map(|c| c.port).unwrap_or(8080);
        let max_requests = self.config.as_ref().map_or(0, |c| c.max_requests);
        let instance = &mut self.instances[index];
        instance.in_flight += 1;
        instance.started += 1;
        self.in_flight += 1;
        if max_requests > 0 && instance.started == u64::from(max_requests) {
            self.spent_news = true;
        }
        // Placeable instances have an address.
        let addr = instance
            .addr(default_port)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], default_port)));
        let authority = match &instance.authority {
            Some((cached, authority)) if *cached == addr => authority.clone(),
            _ => {
                let authority = Authority::try_from(addr.to_string().as_str())
                    .unwrap_or_else(|_| Authority::from_static("0.0.0.0"));
                instance.authority = Some((addr, authority.clone()));
                authority
            }
        };
        Slot {
            instance: instance.id,
            pod: instance.pod.name.clone(),
            addr,
            authority,
        }
    }

    fn free(&mut self, id: InstanceId, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let max_requests = self.config.as_ref().map_or(0, |c| c.max_requests);
        let mut spent_idle = false;
        if let Some(instance) = self.instance_mut(id) {
            instance.in_flight = instance.in_flight.saturating_sub(1);
            if instance.in_flight == 0 {
                instance.idle_since = Some(now);
                spent_idle = instance.spent_at(max_requests);
            }
        }
        // A used-up instance just went idle: it can go now.
        self.spent_news |= spent_idle;
        self.instances.retain(|i| !(i.gone && i.in_flight == 0));
    }

    fn instance(&self, id: InstanceId) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }

    fn instance_mut(&mut self, id: InstanceId) -> Option<&mut Instance> {
        self.instances.iter_mut().find(|i| i.id == id)
    }

    fn load(&self) -> u32 {
        self.in_flight
            .saturating_add(u32::try_from(self.queue.len()).unwrap_or(u32::MAX))
    }

    /// Accumulates the load since the last change, before it changes.
    fn touch(&mut self, now: Instant) {
        if now > self.area_since {
            let dt = now.duration_since(self.area_since).as_secs_f64();
            self.area += f64::from(self.load()) * dt;
            self.area_since = now;
        }
    }
}

#[cfg(test)]
mod tests;
