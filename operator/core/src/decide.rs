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
    merge::{ActivatorView, FunctionView},
    stats::InstanceReport,
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
}

impl Default for Settings {
    /// The Function API's defaults.
    fn default() -> Self {
        Self {
            concurrency: 1,
            target: 0.7,
            min_instances: 0,
            max_instances: 100,
            warm_instances: 0,
            keep_alive: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// Concurrency each instance is sized for: `concurrency × target`, or
    /// `soft_target × target` when concurrency is unlimited.
    pub fn capacity(&self, soft_target: f64) -> f64 {
        let target = if self.target.is_finite() && self.target > 0.0 {
            self.target.min(1.0)
        } else {
            1.0
        };
        let per_instance = if self.concurrency == 0 {
            soft_target
        } else {
            f64::from(self.concurrency)
        };
        (per_instance * target).max(f64::MIN_POSITIVE)
    }

    fn clamped(&self) -> Self {
        Self {
            keep_alive: self.keep_alive.min(LONGEST),
            timeout: self.timeout.min(LONGEST),
            ..self.clone()
        }
    }
}

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

/// Panic mode's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PanicState {
    /// When it started.
    pub since: Instant,
    /// The last decision that found the panic window over the threshold;
    /// panic ends a stable window after it.
    pub last_trigger: Instant,
    /// The most instances wanted during the panic: desired never goes below.
    pub max_desired: u32,
}

/// What the autoscaler carries from one decision of a Function to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScalerMemory {
    pub panic: Option<PanicState>,
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
    /// Store it for the next decision ([`crate::StatsStore::remember`]).
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

/// Decides what to do with one Function at `now`; see the crate docs and
/// `docs/autoscaler.md`.
pub fn decide(
    settings: &Settings,
    pool: &[Instance],
    view: &FunctionView,
    now: Instant,
) -> Decision {
    let settings = settings.clamped();
    let tuning = &view.tuning;
    let forget_after = settings.timeout + tuning.forget_margin;
    let activators: Vec<Seen<'_>> = view
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
    let known = || activators.iter().filter(|a| !a.forgotten);
    let silent: Vec<&Seen<'_>> = activators
        .iter()
        .filter(|a| !a.fresh && !a.forgotten)
        .collect();

    // Ready instances: busy or idle, and since when.
    let ready: Vec<Ready<'_>> = pool
        .iter()
        .filter_map(|instance| match instance.phase {
            Phase::Ready { since } => Some(evaluate(instance, since, &activators, view, &settings)),
            _ => None,
        })
        .collect();
    let busy = count(ready.iter().filter(|r| r.busy));

    // Demand: waiting requests, windowed concurrency, floors.
    let fresh_functions = || {
        activators
            .iter()
            .filter(|a| a.fresh)
            .filter_map(|a| a.view.function.as_ref())
    };
    let waiting = fresh_functions().fold(0u32, |sum, f| sum.saturating_add(f.waiting));
    // Requests occupying ready instances; those on draining instances take
    // no capacity a waiting request could use.
    let in_flight: u64 = ready.iter().map(|r| u64::from(r.in_flight)).sum();
    let capacity = settings.capacity(tuning.soft_target);
    let stable_want = instances_for(view.stable, capacity);
    let panic_want = instances_for(view.panic, capacity);

    let over_threshold = panic_want > 0
        && f64::from(panic_want) >= tuning.panic_threshold * f64::from(count(ready.iter()).max(1));
    let mut panic_state = match (view.memory.panic, over_threshold) {
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
        || ready.iter().any(|r| r.in_flight > 0)
        || fresh_functions().any(|f| f.requests > 0 || f.concurrency > 0.0);
    if !active {
        panic_state = None;
    }
    match panic_state {
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
    if let Some(state) = panic_state.as_mut() {
        state.max_desired = state.max_desired.max(desired);
    }

    // Rollout: once a current instance is ready, replace the old ones,
    // keeping the busiest old ones only while current ready instances are
    // fewer than desired.
    let mut drain = Vec::new();
    let current_live = count(
        pool.iter()
            .filter(|i| i.current && !matches!(i.phase, Phase::Draining { .. })),
    );
    let current_ready = count(ready.iter().filter(|r| r.instance.current));
    let mut retired = BTreeSet::new();
    if current_ready > 0 {
        let mut old: Vec<&Ready<'_>> = ready.iter().filter(|r| !r.instance.current).collect();
        old.sort_by(|a, b| {
            b.in_flight
                .cmp(&a.in_flight)
                .then(b.instance.created.cmp(&a.instance.created))
                .then(a.instance.id.cmp(&b.instance.id))
        });
        let keep = desired.saturating_sub(current_ready) as usize;
        let outdated_starting = pool
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
    }

    // Keep-alive: reap expired idle instances, longest idle first (outdated
    // ones before current ones), while ready instances stay at desired.
    let serving: Vec<&Ready<'_>> = ready
        .iter()
        .filter(|r| !retired.contains(r.instance.id.as_str()))
        .collect();
    let mut allowed = (serving.len() as u64).saturating_sub(u64::from(desired));
    let observing = view.observing_until.is_some_and(|until| now < until);
    let blocked = if panic_state.is_some() {
        Some(Hold::Panic)
    } else if observing {
        Some(Hold::Observing)
    } else {
        None
    };
    let floor_hold = match why {
        Why::Floor if settings.min_instances > 0 => Hold::MinInstances,
        Why::Floor | Why::Busy { .. } => Hold::WarmInstances,
        Why::Demand { .. } | Why::Waiting { .. } | Why::Nothing => Hold::Demand,
    };
    let mut expired: Vec<&&Ready<'_>> = serving
        .iter()
        .filter(|r| !r.busy && r.expires_at <= now)
        .collect();
    expired.sort_by(|a, b| reap_order(a, b));
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
                        idle: now.saturating_duration_since(r.idle_since),
                        keep_alive: settings.keep_alive,
                    },
                });
            }
            _ => holds.push((r.instance.id.as_str(), blocked.unwrap_or(floor_hold))),
        }
    }

    // Draining -> deleted: every activator still remembered confirms, or
    // the timeout (plus margin) has passed.
    let mut delete = Vec::new();
    let mut wakeups: Vec<Instant> = Vec::new();
    let drain_limit = forget_after;
    for instance in pool {
        let Phase::Draining { since } = instance.phase else {
            continue;
        };
        let draining_for = now.saturating_duration_since(since);
        let confirmed = known().all(|a| {
            a.listing(&instance.id)
                .is_none_or(|i| i.draining && !i.is_busy())
        });
        let reason = if confirmed {
            Some(Reason::Drained { draining_for })
        } else if draining_for >= drain_limit {
            Some(Reason::DrainTimeout {
                draining_for,
                limit: drain_limit,
            })
        } else {
            wakeups.push(since + drain_limit);
            None
        };
        if let Some(reason) = reason {
            delete.push(Action {
                instance: instance.id.clone(),
                reason,
            });
        }
    }

    // Idle instances not yet expired that the floor will keep anyway: the
    // ones after the first `allowed` in reap order. They get no expiry, so
    // nobody is told an instance kept by minInstances will be destroyed.
    let mut waiting_to_expire: Vec<&&Ready<'_>> = serving
        .iter()
        .filter(|r| !r.busy && r.expires_at > now)
        .collect();
    waiting_to_expire.sort_by(|a, b| reap_order(a, b));
    for r in waiting_to_expire
        .into_iter()
        .skip(usize::try_from(allowed).unwrap_or(usize::MAX))
    {
        if !matches!(floor_hold, Hold::Demand) {
            holds.push((r.instance.id.as_str(), floor_hold));
        }
    }

    // Expiries of the ready instances that stay.
    let expiries: Vec<Expiry> = serving
        .iter()
        .filter(|r| !reaped.contains(r.instance.id.as_str()))
        .map(|r| {
            let held = holds
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
        .collect();

    wakeups.extend(
        expiries
            .iter()
            .filter_map(|e| e.expires_at)
            .filter(|at| *at > now),
    );
    if observing && !holds.is_empty() {
        wakeups.extend(view.observing_until);
    }
    if let Some(state) = panic_state {
        wakeups.push(state.last_trigger + tuning.stable_window);
    }
    wakeups.extend(silent.iter().map(|a| a.forget_at));
    let next_wakeup = wakeups.into_iter().filter(|at| *at > now).min();

    let counts = Counts {
        starting: count(pool.iter().filter(|i| i.phase == Phase::Starting)),
        ready: count(ready.iter()),
        busy,
        idle: count(ready.iter()) - busy,
        draining: count(
            pool.iter()
                .filter(|i| matches!(i.phase, Phase::Draining { .. })),
        ),
    };
    let create = desired.saturating_sub(current_live);
    let silent_ids: Vec<String> = silent.iter().map(|a| a.view.id.clone()).collect();
    let summary = summarize(Summary {
        settings: &settings,
        capacity,
        current_live,
        desired,
        wanted,
        why,
        drain: &drain,
        delete: &delete,
        silent: &silent,
        now,
    });
    Decision {
        desired,
        create,
        drain,
        delete,
        panic: panic_state.is_some(),
        expiries,
        next_wakeup,
        counts,
        silent: silent_ids,
        summary,
        memory: ScalerMemory { panic: panic_state },
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
    for a in activators.iter().filter(|a| !a.forgotten) {
        if let Some(listing) = a.listing(&instance.id) {
            in_flight = in_flight.saturating_add(listing.in_flight);
            busy |= listing.is_busy();
        }
    }
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
        idle_since,
        expires_at: idle_since + settings.keep_alive,
    }
}

struct Summary<'a> {
    settings: &'a Settings,
    capacity: f64,
    current_live: u32,
    desired: u32,
    wanted: u32,
    why: Why,
    drain: &'a [Action],
    delete: &'a [Action],
    silent: &'a [&'a Seen<'a>],
    now: Instant,
}

fn summarize(s: Summary<'_>) -> String {
    let settings = s.settings;
    let mut why = match s.why {
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
            s.capacity
        ),
        Why::Waiting { waiting: 1 } => "1 request waiting".to_owned(),
        Why::Waiting { waiting } => format!("{waiting} requests waiting"),
    };
    if s.wanted > s.desired {
        why.push_str(&format!(
            " (wants {}, capped at maxInstances {})",
            s.wanted, settings.max_instances
        ));
    }
    let mut out = if s.desired > s.current_live {
        format!("scaled {} -> {}: {why}", s.current_live, s.desired)
    } else if s.desired == s.current_live {
        format!("steady at {}: {why}", s.desired)
    } else {
        format!("{} live, desired {}: {why}", s.current_live, s.desired)
    };
    for action in s.drain {
        out.push_str(&format!("; drain {action}"));
    }
    for action in s.delete {
        out.push_str(&format!("; delete {action}"));
    }
    for a in s.silent {
        out.push_str(&format!(
            "; activator {} silent {}: reaping paused",
            a.view.id,
            GoStyle(s.now.saturating_duration_since(a.view.last_seen))
        ));
    }
    out
}
