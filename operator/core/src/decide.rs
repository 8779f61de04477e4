//! The autoscaler's decision for one Function: how many instances it
//! wants, which to create, drain and delete, and when each idle instance
//! will be destroyed — a pure function of the settings, the pool, the merged
//! stats and `now`. See `docs/autoscaler.md` for the algorithm.

use std::{
    collections::BTreeSet,
    fmt,
    time::{Duration, Instant},
};

use crate::{
    duration::GoStyle,
    stats::{FunctionReport, InstanceReport},
    view::{ActivatorView, FunctionView, PanicState, ScalerMemory, Tuning},
};

/// Longest keep-alive or timeout the decision takes seriously; longer
/// values (which the CRD rejects anyway) are clamped, so instant arithmetic
/// cannot overflow.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// Tolerance when rounding `observed / capacity` up: 7.0 / 0.7 is
/// 10.000000000000002 in floating point and must want 10 instances, not 11.
const EPSILON: f64 = 1e-9;

/// A Function's scaling settings, as the controller reads them from the spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Hard limit of requests in flight per instance; 0 is unlimited.
    pub concurrency: u32,
    /// Share of `concurrency` (or of the soft target when unlimited) to aim
    /// at, in (0, 1].
    pub target: f64,
    pub min_instances: u32,
    pub max_instances: u32,
    /// Idle ready instances kept on top of the busy ones.
    pub warm_instances: u32,
    /// An instance idle this long is destroyed.
    pub keep_alive: Duration,
    /// Longest a request may take, from its arrival at an activator.
    pub timeout: Duration,
    /// Most requests one instance starts (`maxRequestsPerInstance`); 0 is
    /// unlimited. An instance that has started this many is spent.
    pub max_requests_per_instance: u32,
}

impl Default for Settings {
    /// The Function API's defaults.
    fn default() -> Self {
        Self {
            concurrency: 1,
            target: DEFAULT_TARGET,
            min_instances: 0,
            max_instances: 100,
            warm_instances: 0,
            keep_alive: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
            max_requests_per_instance: 0,
        }
    }
}

impl Settings {
    /// Concurrency each instance is sized for: [`per_instance_target`].
    pub fn capacity(&self, soft_target: f64) -> f64 {
        per_instance_target(self.concurrency, self.target, soft_target).max(f64::MIN_POSITIVE)
    }

    fn clamped(&self) -> Self {
        Self {
            keep_alive: self.keep_alive.min(LONGEST),
            timeout: self.timeout.min(LONGEST),
            ..self.clone()
        }
    }
}

/// Concurrency each instance is sized for: `concurrency × target`, or
/// `soft_target × target` when concurrency is 0 (unlimited). A target above 1
/// reads as 1; one not above 0 (or not a number) as the default 0.7. The one
/// formula: the controller's settings and the activator's packing both use
/// it (through `thaw_api`'s spec accessors).
pub fn per_instance_target(concurrency: u32, target: f64, soft_target: f64) -> f64 {
    let target = if target.is_finite() && target > 0.0 {
        target.min(1.0)
    } else {
        DEFAULT_TARGET
    };
    let base = if concurrency == 0 {
        soft_target
    } else {
        f64::from(concurrency)
    };
    base * target
}

/// The Function API's default `scaling.target`.
pub const DEFAULT_TARGET: f64 = 0.7;

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created, not ready yet: never reaped, counts toward capacity.
    Starting,
    /// Ready to serve since `since` (the controller's observation).
    Ready { since: Instant },
    /// Marked draining at `since`: activators place nothing new on it.
    Draining { since: Instant },
}

/// One instance of the Function, as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Its pod name, as activators report it.
    pub id: String,
    pub phase: Phase,
    /// Built from the Function's current spec; older instances are replaced.
    pub current: bool,
    pub created: Instant,
}

impl Instance {
    /// A current instance, created at `created`, in `phase`.
    pub fn new(id: impl Into<String>, phase: Phase, created: Instant) -> Self {
        Self {
            id: id.into(),
            phase,
            current: true,
            created,
        }
    }

    /// The same instance, built from an older spec.
    pub fn outdated(self) -> Self {
        Self {
            current: false,
            ..self
        }
    }
}

/// Why an instance is drained or deleted.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// Idle for `idle` (at least `keep_alive`).
    KeepAlive {
        idle: Duration,
        keep_alive: Duration,
    },
    /// Built from an older spec, replaced by current instances.
    Rollout,
    /// Every activator confirmed it places nothing on it and has nothing in
    /// flight on it.
    Drained { draining_for: Duration },
    /// It started `maxRequestsPerInstance` requests (`started`, as the
    /// activators count them, or its gate said so) and they all ended.
    Exhausted { started: u64, max_requests: u32 },
    /// Draining for `draining_for`, past `limit` (the request timeout plus
    /// the forget margin): no request can still be running on it.
    DrainTimeout {
        draining_for: Duration,
        limit: Duration,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeepAlive { idle, keep_alive } => {
                write!(
                    f,
                    "idle {}, keep-alive {}",
                    GoStyle(*idle),
                    GoStyle(*keep_alive)
                )
            }
            Self::Rollout => f.write_str("replaced by an instance of the current spec"),
            Self::Exhausted {
                started,
                max_requests,
            } => write!(
                f,
                "served its maxRequestsPerInstance {max_requests} ({started} started) and is idle"
            ),
            Self::Drained { draining_for } => write!(
                f,
                "drained after {}: every activator confirmed nothing in flight",
                GoStyle(*draining_for)
            ),
            Self::DrainTimeout {
                draining_for,
                limit,
            } => write!(
                f,
                "draining for {}, past timeout and margin {}",
                GoStyle(*draining_for),
                GoStyle(*limit)
            ),
        }
    }
}

/// Something to do to one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    pub instance: String,
    pub reason: Reason,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instance {} {}", self.instance, self.reason)
    }
}

/// Why an instance past its expiry is still kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// `minInstances` needs it.
    MinInstances,
    /// `warmInstances` needs it.
    WarmInstances,
    /// Current demand (windowed concurrency, waiting requests) needs it.
    Demand,
    /// Panic mode: no scale-down until it ends.
    Panic,
    /// The operator just started and has not heard every activator yet.
    Observing,
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MinInstances => "kept by minInstances",
            Self::WarmInstances => "kept warm by warmInstances",
            Self::Demand => "kept for current demand",
            Self::Panic => "kept while the autoscaler panics",
            Self::Observing => "kept until every activator has reported",
        })
    }
}

/// When one ready instance will be destroyed.
#[derive(Clone, Debug, PartialEq)]
pub struct Expiry {
    pub instance: String,
    /// Requests in flight on it, summed across activators.
    pub in_flight: u32,
    /// When its keep-alive clock started: the last time anything was in
    /// flight on it, or when it became ready. `None` while busy. It can lie
    /// in the future while an activator is silent (see the docs).
    pub idle_since: Option<Instant>,
    /// `idle_since + keep_alive`: when it is destroyed unless a request
    /// comes. `None` while busy, and while `held` keeps it.
    pub expires_at: Option<Instant>,
    /// Set when it is past `expires_at` but kept.
    pub held: Option<Hold>,
}

/// Instances by state, before the decision is carried out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub starting: u32,
    /// Ready: `busy + idle`.
    pub ready: u32,
    pub busy: u32,
    pub idle: u32,
    pub draining: u32,
}

/// What to do with one Function now.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Instances of the current spec wanted.
    pub desired: u32,
    /// Current-spec instances to create.
    pub create: u32,
    /// Instances to mark draining.
    pub drain: Vec<Action>,
    /// Draining instances to delete.
    pub delete: Vec<Action>,
    pub panic: bool,
    /// Every ready instance that stays, with when it will be destroyed.
    pub expiries: Vec<Expiry>,
    /// The earliest instant this decision could change without new stats
    /// (an expiry, a drain timeout, panic ending, a silent activator being
    /// forgotten): decide again then at the latest.
    pub next_wakeup: Option<Instant>,
    pub counts: Counts,
    /// Activators silent (not reported for `stale_after`) but not forgotten:
    /// while there is one, no instance is reaped.
    pub silent: Vec<String>,
    /// One line for logs and events, e.g. `scaled 0 -> 3: 7 requests waiting`.
    pub summary: String,
    /// Store it for the next decision (the [`crate::Autoscaler`] does).
    pub memory: ScalerMemory,
}

/// An activator classified at `now` for this Function.
struct Seen<'a> {
    view: &'a ActivatorView,
    fresh: bool,
    forgotten: bool,
    /// When it is (or was) forgotten: any request it placed has ended.
    forget_at: Instant,
    /// When it stops placing requests if it cannot report (self-fencing).
    fenced_at: Instant,
}

impl Seen<'_> {
    fn listing(&self, pod: &str) -> Option<&InstanceReport> {
        self.view
            .function
            .as_ref()
            .and_then(|f| f.instances.iter().find(|i| i.pod == pod))
    }
}

/// Which term of the desired count won.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Why {
    Nothing,
    Floor,
    Busy {
        busy: u32,
    },
    Demand {
        observed: f64,
        window: Duration,
        panic: bool,
    },
    Waiting {
        waiting: u32,
    },
}

/// A ready instance, evaluated.
struct Ready<'a> {
    instance: &'a Instance,
    in_flight: u32,
    busy: bool,
    /// Requests the activators placed on it, summed.
    started: u64,
    /// It has started `maxRequestsPerInstance` requests: it takes no more.
    spent: bool,
    idle_since: Instant,
    expires_at: Instant,
}

/// Which idle instance goes first: outdated before current, then the
/// longest idle, then the oldest.
fn reap_order(a: &Ready<'_>, b: &Ready<'_>) -> std::cmp::Ordering {
    a.instance
        .current
        .cmp(&b.instance.current)
        .then(a.idle_since.cmp(&b.idle_since))
        .then(a.instance.created.cmp(&b.instance.created))
        .then(a.instance.id.cmp(&b.instance.id))
}

/// Everything a decision reads, evaluated once: the settings (clamped), the
/// activators classified and the ready instances with their idle clocks.
struct Scene<'a> {
    settings: Settings,
    tuning: &'a Tuning,
    view: &'a FunctionView,
    pool: &'a [Instance],
    now: Instant,
    /// An activator silent this long is forgotten; a draining instance is
    /// deleted after this long regardless.
    forget_after: Duration,
    activators: Vec<Seen<'a>>,
    /// Ready instances that can still take requests.
    ready: Vec<Ready<'a>>,
    /// Ready instances that started `maxRequestsPerInstance` requests: they
    /// count as neither available nor warm, and go once idle.
    spent: Vec<Ready<'a>>,
}

impl<'a> Scene<'a> {
    fn new(
        settings: &Settings,
        pool: &'a [Instance],
        view: &'a FunctionView,
        now: Instant,
    ) -> Self {
        let settings = settings.clamped();
        let tuning = &view.tuning;
        let forget_after = settings.timeout + tuning.forget_margin;
        let activators: Vec<Seen<'a>> = view
            .activators
            .iter()
            .map(|view| {
                let silence = now.saturating_duration_since(view.last_seen);
                Seen {
                    view,
                    fresh: silence <= tuning.stale_after,
                    forgotten: silence > forget_after,
                    forget_at: view.last_seen + forget_after,
                    fenced_at: view.last_seen + tuning.stale_after,
                }
            })
            .collect();
        let (spent, ready): (Vec<Ready<'a>>, Vec<Ready<'a>>) = pool
            .iter()
            .filter_map(|instance| match instance.phase {
                Phase::Ready { since } => {
                    Some(evaluate(instance, since, &activators, view, &settings))
                }
                _ => None,
            })
            .partition(|r| r.spent);
        Self {
            settings,
            tuning,
            view,
            pool,
            now,
            forget_after,
            activators,
            ready,
            spent,
        }
    }

    /// This Function's entries in the reports of fresh activators.
    fn fresh_functions(&self) -> impl Iterator<Item = &FunctionReport> {
        self.activators
            .iter()
            .filter(|a| a.fresh)
            .filter_map(|a| a.view.function.as_ref())
    }

    /// Activators silent, not yet forgotten: while there is one, nothing is
    /// reaped.
    fn silent(&self) -> impl Iterator<Item = &Seen<'a>> {
        self.activators.iter().filter(|a| !a.fresh && !a.forgotten)
    }

    fn busy(&self) -> u32 {
        count(self.ready.iter().filter(|r| r.busy))
    }

    /// Current-spec instances that are not draining (starting or ready).
    fn current_live(&self) -> u32 {
        count(self.pool.iter().filter(|i| {
            i.current
                && !matches!(i.phase, Phase::Draining { .. })
                && !self.spent.iter().any(|r| r.instance.id == i.id)
        }))
    }

    fn observing(&self) -> bool {
        self.view
            .observing_until
            .is_some_and(|until| self.now < until)
    }
}

/// Decides what to do with one Function at `now`; see the crate docs and
/// `docs/autoscaler.md`. Each phase is its own function: the desired count,
/// rollout, reaping by keep-alive, deleting drained instances, then what the
/// instances that stay are told, when to decide again, and the summary.
pub fn decide(
    settings: &Settings,
    pool: &[Instance],
    view: &FunctionView,
    now: Instant,
) -> Decision {
    let scene = Scene::new(settings, pool, view, now);
    let demand = desired_count(&scene);
    let (mut drain, retired) = rollout(&scene, demand.desired);
    let reaping = reap(&scene, &demand, &retired);
    drain.extend(reaping.drain.iter().cloned());
    drain.extend(retire_spent(&scene));
    let (delete, drain_wakeups) = delete_drained(&scene);
    let expiries = expiries(&reaping);
    let next_wakeup = next_wakeup(&scene, &demand, &reaping, &expiries, drain_wakeups);
    let current_live = scene.current_live();
    let summary = summarize(&scene, &demand, current_live, &drain, &delete);
    Decision {
        desired: demand.desired,
        create: demand.desired.saturating_sub(current_live),
        drain,
        delete,
        panic: demand.panic.is_some(),
        expiries,
        next_wakeup,
        counts: counts(&scene),
        silent: scene.silent().map(|a| a.view.id.clone()).collect(),
        summary,
        memory: ScalerMemory {
            panic: demand.panic,
        },
    }
}

/// The desired count and why, with panic mode's new state.
struct Demand {
    desired: u32,
    /// Before the `maxInstances` cap.
    wanted: u32,
    why: Why,
    /// Concurrency each instance is sized for.
    capacity: f64,
    panic: Option<PanicState>,
}

/// Phase 1: how many current-spec instances the Function wants — the largest
/// of the floors, the busy instances (plus warm ones), the waiting requests
/// and, while there is traffic, the windowed demand — capped by
/// `maxInstances`.
fn desired_count(s: &Scene<'_>) -> Demand {
    let (settings, tuning, view, now) = (&s.settings, s.tuning, s.view, s.now);
    let busy = s.busy();
    let waiting = s
        .fresh_functions()
        .fold(0u32, |sum, f| sum.saturating_add(f.waiting));
    // Requests occupying ready instances; those on draining instances take
    // no capacity a waiting request could use.
    let in_flight: u64 = s.ready.iter().map(|r| u64::from(r.in_flight)).sum();
    let capacity = settings.capacity(tuning.soft_target);
    let stable_want = instances_for(view.stable, capacity);
    let panic_want = instances_for(view.panic, capacity);

    let over_threshold = panic_want > 0
        && f64::from(panic_want)
            >= tuning.panic_threshold * f64::from(count(s.ready.iter()).max(1));
    let mut panic = match (view.memory.panic, over_threshold) {
        (Some(state), true) => Some(PanicState {
            last_trigger: now,
            ..state
        }),
        (None, true) => Some(PanicState {
            since: now,
            last_trigger: now,
            max_desired: 0,
        }),
        (Some(state), false) if now >= state.last_trigger + tuning.stable_window => None,
        (state, false) => state,
    };

    let floor = settings
        .min_instances
        .saturating_add(settings.warm_instances);
    let mut terms = vec![
        (floor, Why::Floor),
        (
            busy.saturating_add(settings.warm_instances),
            Why::Busy { busy },
        ),
    ];
    // Waiting requests first: on a tie they are the more precise reason.
    if waiting > 0 {
        let needed = if settings.concurrency == 0 {
            1
        } else {
            let hard = u64::from(settings.concurrency);
            u32::try_from((in_flight + u64::from(waiting)).div_ceil(hard)).unwrap_or(u32::MAX)
        };
        terms.push((needed.max(1), Why::Waiting { waiting }));
    }
    // Windowed demand sizes the pool only while the function has traffic.
    // Once nothing is in flight, waiting or arriving, each instance lives
    // exactly its keep-alive past its own last request: a window still
    // remembering the last burst must not keep instances (or create them).
    let active = waiting > 0
        || s.ready.iter().any(|r| r.in_flight > 0)
        || s.fresh_functions()
            .any(|f| f.requests > 0 || f.concurrency > 0.0);
    if !active {
        panic = None;
    }
    match panic {
        _ if !active => {}
        Some(state) => terms.push((
            panic_want.max(stable_want).max(state.max_desired),
            Why::Demand {
                observed: view.panic,
                window: tuning.panic_window,
                panic: true,
            },
        )),
        None => terms.push((
            stable_want,
            Why::Demand {
                observed: view.stable,
                window: tuning.stable_window,
                panic: false,
            },
        )),
    }
    // The largest term wins; on a tie the earliest (the steadiest reason).
    let (wanted, why) =
        terms.iter().copied().fold(
            (0, Why::Nothing),
            |best, term| if term.0 > best.0 { term } else { best },
        );
    let desired = wanted.min(settings.max_instances);
    if let Some(state) = panic.as_mut() {
        state.max_desired = state.max_desired.max(desired);
    }
    Demand {
        desired,
        wanted,
        why,
        capacity,
        panic,
    }
}

/// Phase 2, rollout: once a current instance is ready, replace the old ones,
/// keeping the busiest old ones only while current ready instances are
/// fewer than desired. Returns the drains and the instances they retire.
fn rollout<'s>(s: &'s Scene<'_>, desired: u32) -> (Vec<Action>, BTreeSet<&'s str>) {
    let mut drain = Vec::new();
    let mut retired = BTreeSet::new();
    let current_ready = count(s.ready.iter().filter(|r| r.instance.current));
    if current_ready == 0 {
        return (drain, retired);
    }
    let mut old: Vec<&Ready<'_>> = s.ready.iter().filter(|r| !r.instance.current).collect();
    old.sort_by(|a, b| {
        b.in_flight
            .cmp(&a.in_flight)
            .then(b.instance.created.cmp(&a.instance.created))
            .then(a.instance.id.cmp(&b.instance.id))
    });
    let keep = desired.saturating_sub(current_ready) as usize;
    let outdated_starting = s
        .pool
        .iter()
        .filter(|i| !i.current && i.phase == Phase::Starting);
    for instance in old
        .iter()
        .skip(keep)
        .map(|r| r.instance)
        .chain(outdated_starting)
    {
        retired.insert(instance.id.as_str());
        drain.push(Action {
            instance: instance.id.clone(),
            reason: Reason::Rollout,
        });
    }
    (drain, retired)
}

/// What reaping decided.
struct Reaping<'s> {
    /// Ready instances not retired by the rollout.
    serving: Vec<&'s Ready<'s>>,
    drain: Vec<Action>,
    reaped: BTreeSet<&'s str>,
    /// Idle instances kept, with why.
    holds: Vec<(&'s str, Hold)>,
}

/// Phase 3, keep-alive: drain expired idle instances, longest idle first
/// (outdated ones before current ones), while ready instances stay at
/// desired; and note which idle instances a hold keeps.
fn reap<'s>(s: &'s Scene<'_>, demand: &Demand, retired: &BTreeSet<&str>) -> Reaping<'s> {
    let serving: Vec<&'s Ready<'s>> = s
        .ready
        .iter()
        .filter(|r| !retired.contains(r.instance.id.as_str()))
        .collect();
    let mut allowed = (serving.len() as u64).saturating_sub(u64::from(demand.desired));
    let blocked = if demand.panic.is_some() {
        Some(Hold::Panic)
    } else if s.observing() {
        Some(Hold::Observing)
    } else {
        None
    };
    let floor_hold = match demand.why {
        Why::Floor if s.settings.min_instances > 0 => Hold::MinInstances,
        Why::Floor | Why::Busy { .. } => Hold::WarmInstances,
        Why::Demand { .. } | Why::Waiting { .. } | Why::Nothing => Hold::Demand,
    };
    let mut expired: Vec<&&Ready<'_>> = serving
        .iter()
        .filter(|r| !r.busy && r.expires_at <= s.now)
        .collect();
    expired.sort_by(|a, b| reap_order(a, b));
    let mut drain = Vec::new();
    let mut reaped = BTreeSet::new();
    let mut holds = Vec::new();
    for r in expired {
        match blocked {
            None if allowed > 0 => {
                allowed -= 1;
                reaped.insert(r.instance.id.as_str());
                drain.push(Action {
                    instance: r.instance.id.clone(),
                    reason: Reason::KeepAlive {
                        idle: s.now.saturating_duration_since(r.idle_since),
                        keep_alive: s.settings.keep_alive,
                    },
                });
            }
            _ => holds.push((r.instance.id.as_str(), blocked.unwrap_or(floor_hold))),
        }
    }
    // Idle instances not yet expired that the floor will keep anyway: the
    // ones after the first `allowed` in reap order. They get no expiry, so
    // nobody is told an instance kept by minInstances will be destroyed.
    let mut waiting_to_expire: Vec<&&Ready<'_>> = serving
        .iter()
        .filter(|r| !r.busy && r.expires_at > s.now)
        .collect();
    waiting_to_expire.sort_by(|a, b| reap_order(a, b));
    if !matches!(floor_hold, Hold::Demand) {
        for r in waiting_to_expire
            .into_iter()
            .skip(usize::try_from(allowed).unwrap_or(usize::MAX))
        {
            holds.push((r.instance.id.as_str(), floor_hold));
        }
    }
    Reaping {
        serving,
        drain,
        reaped,
        holds,
    }
}

/// Phase 3b, maxRequestsPerInstance: a spent instance is drained as soon
/// as nothing is in flight on it (its replacement was counted in phase 1,
/// since it is not live any more). Busy ones wait: the report of their last
/// request's end decides again.
fn retire_spent(s: &Scene<'_>) -> Vec<Action> {
    s.spent
        .iter()
        .filter(|r| !r.busy)
        .map(|r| Action {
            instance: r.instance.id.clone(),
            reason: Reason::Exhausted {
                started: r.started,
                max_requests: s.settings.max_requests_per_instance,
            },
        })
        .collect()
}

/// Phase 4, draining -> deleted: every activator still remembered confirms
/// it places nothing on the instance and has nothing in flight on it, or
/// the timeout (plus margin) has passed. Also returns when undecided drains
/// time out.
fn delete_drained(s: &Scene<'_>) -> (Vec<Action>, Vec<Instant>) {
    let mut delete = Vec::new();
    let mut wakeups = Vec::new();
    let limit = s.forget_after;
    for instance in s.pool {
        let Phase::Draining { since } = instance.phase else {
            continue;
        };
        let draining_for = s.now.saturating_duration_since(since);
        let confirmed = s.activators.iter().filter(|a| !a.forgotten).all(|a| {
            a.listing(&instance.id)
                .is_none_or(|i| i.draining && !i.is_busy())
        });
        let reason = if confirmed {
            Some(Reason::Drained { draining_for })
        } else if draining_for >= limit {
            Some(Reason::DrainTimeout {
                draining_for,
                limit,
            })
        } else {
            wakeups.push(since + limit);
            None
        };
        if let Some(reason) = reason {
            delete.push(Action {
                instance: instance.id.clone(),
                reason,
            });
        }
    }
    (delete, wakeups)
}

/// Phase 5: the expiries of the ready instances that stay.
fn expiries(reaping: &Reaping<'_>) -> Vec<Expiry> {
    reaping
        .serving
        .iter()
        .filter(|r| !reaping.reaped.contains(r.instance.id.as_str()))
        .map(|r| {
            let held = reaping
                .holds
                .iter()
                .find(|(id, _)| *id == r.instance.id)
                .map(|(_, hold)| *hold);
            Expiry {
                instance: r.instance.id.clone(),
                in_flight: r.in_flight,
                idle_since: (!r.busy).then_some(r.idle_since),
                // A held instance is not destroyed at its expiry: saying it
                // would be would mislead whoever reads the annotation.
                expires_at: (!r.busy && held.is_none()).then_some(r.expires_at),
                held,
            }
        })
        .collect()
}

/// Phase 6: the earliest instant the decision could change without new
/// stats.
fn next_wakeup(
    s: &Scene<'_>,
    demand: &Demand,
    reaping: &Reaping<'_>,
    expiries: &[Expiry],
    mut wakeups: Vec<Instant>,
) -> Option<Instant> {
    wakeups.extend(
        expiries
            .iter()
            .filter_map(|e| e.expires_at)
            .filter(|at| *at > s.now),
    );
    if s.observing() && !reaping.holds.is_empty() {
        wakeups.extend(s.view.observing_until);
    }
    if let Some(state) = demand.panic {
        wakeups.push(state.last_trigger + s.tuning.stable_window);
    }
    wakeups.extend(s.silent().map(|a| a.forget_at));
    wakeups.into_iter().filter(|at| *at > s.now).min()
}

fn counts(s: &Scene<'_>) -> Counts {
    // Spent instances are still ready pods: the status shows them.
    let ready = count(s.ready.iter().chain(s.spent.iter()));
    let busy = count(s.ready.iter().chain(s.spent.iter()).filter(|r| r.busy));
    Counts {
        starting: count(s.pool.iter().filter(|i| i.phase == Phase::Starting)),
        ready,
        busy,
        idle: ready - busy,
        draining: count(
            s.pool
                .iter()
                .filter(|i| matches!(i.phase, Phase::Draining { .. })),
        ),
    }
}

/// Instances needed for `observed` concurrency at `capacity` each.
fn instances_for(observed: f64, capacity: f64) -> u32 {
    if !observed.is_finite() || observed <= 0.0 {
        return 0;
    }
    // `as` saturates at u32::MAX.
    (observed / capacity - EPSILON).ceil().max(0.0) as u32
}

fn count<T>(items: impl Iterator<Item = T>) -> u32 {
    u32::try_from(items.count()).unwrap_or(u32::MAX)
}

/// Busy or idle, and since when, for one ready instance.
fn evaluate<'a>(
    instance: &'a Instance,
    ready_since: Instant,
    activators: &[Seen<'_>],
    view: &FunctionView,
    settings: &Settings,
) -> Ready<'a> {
    let mut in_flight = 0u32;
    let mut busy = false;
    let mut started = 0u64;
    let mut refused = false;
    for a in activators.iter().filter(|a| !a.forgotten) {
        if let Some(listing) = a.listing(&instance.id) {
            in_flight = in_flight.saturating_add(listing.in_flight);
            busy |= listing.is_busy();
            started = started.saturating_add(listing.started);
            refused |= listing.exhausted;
        }
    }
    let max = u64::from(settings.max_requests_per_instance);
    let spent = max > 0 && (refused || started >= max);
    // Evidence: the last time anything was seen in flight on it, never
    // before it became ready.
    let mut idle_since = view
        .last_active
        .get(&instance.id)
        .map_or(ready_since, |active| (*active).max(ready_since));
    // An activator that went silent while the instance was ready may have
    // placed requests on it we cannot see: they end by its forget time.
    for a in activators.iter().filter(|a| !a.fresh) {
        if ready_since < a.fenced_at {
            idle_since = idle_since.max(a.forget_at);
        }
    }
    Ready {
        instance,
        in_flight,
        busy,
        started,
        spent,
        idle_since,
        expires_at: idle_since + settings.keep_alive,
    }
}

/// Phase 7: one line for logs and events.
fn summarize(
    s: &Scene<'_>,
    demand: &Demand,
    current_live: u32,
    drain: &[Action],
    delete: &[Action],
) -> String {
    let settings = &s.settings;
    let mut why = match demand.why {
        Why::Nothing => "no demand".to_owned(),
        Why::Floor => match (settings.min_instances, settings.warm_instances) {
            (min, 0) => format!("minInstances {min}"),
            (0, warm) => format!("warmInstances {warm}"),
            (min, warm) => format!("minInstances {min} + warmInstances {warm}"),
        },
        Why::Busy { busy } => format!("{busy} busy + warmInstances {}", settings.warm_instances),
        Why::Demand {
            observed,
            window,
            panic,
        } => format!(
            "{}concurrency {observed:.2} over {}, {:.2} per instance",
            if panic { "panic: " } else { "" },
            GoStyle(window),
            demand.capacity
        ),
        Why::Waiting { waiting: 1 } => "1 request waiting".to_owned(),
        Why::Waiting { waiting } => format!("{waiting} requests waiting"),
    };
    let desired = demand.desired;
    if demand.wanted > desired {
        why.push_str(&format!(
            " (wants {}, capped at maxInstances {})",
            demand.wanted, settings.max_instances
        ));
    }
    let mut out = if desired > current_live {
        format!("scaled {current_live} -> {desired}: {why}")
    } else if desired == current_live {
        format!("steady at {desired}: {why}")
    } else {
        format!("{current_live} live, desired {desired}: {why}")
    };
    for action in drain {
        out.push_str(&format!("; drain {action}"));
    }
    for action in delete {
        out.push_str(&format!("; delete {action}"));
    }
    for a in s.silent() {
        out.push_str(&format!(
            "; activator {} silent {}: reaping paused",
            a.view.id,
            GoStyle(s.now.saturating_duration_since(a.view.last_seen))
        ));
    }
    out
}
