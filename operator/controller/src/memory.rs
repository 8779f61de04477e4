//! What the controller remembers between reconciles of a Function, beyond
//! what its watch caches show: writes not yet seen in the pod cache
//! (expectations, as Kubernetes' own ReplicaSet controller keeps), and the
//! crash backoff.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use thaw_api::FunctionStatus;

use crate::coldstart::Timeline;

/// First delay before replacing a crashed instance; doubles per crash.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between replacements.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// How long a write may stay unseen in the cache before it is forgotten
/// (the watch will have delivered it long before).
const EXPECTATION_TTL: Duration = Duration::from_secs(30);

/// One Function's memory.
#[derive(Debug, Default)]
pub struct FunctionMemory {
    /// Pods created, with when, not yet seen in the cache.
    pub created: HashMap<String, Instant>,
    /// Pods marked draining, not yet seen so in the cache.
    pub drained: HashMap<String, Instant>,
    /// Pods deleted, still in the cache.
    pub deleted: HashMap<String, Instant>,
    /// Failed instances already counted (each is counted once).
    pub counted_failures: HashSet<String>,
    /// Crashes since the last instance became ready.
    pub crashes: u32,
    /// No replacement before this.
    pub next_attempt: Option<Instant>,
    /// The last crash, for the Ready condition.
    pub last_crash: Option<String>,
    /// Cold starts under way, by pod.
    pub timelines: HashMap<String, Timeline>,
    /// The last decision that created, drained or deleted something, for
    /// the `Scaling` condition (so the status changes with decisions, not
    /// with every stats tick).
    pub last_action: Option<String>,
    /// The last status written, and what the cache showed before it.
    pub status_written: StatusWrite,
}

/// The controller's last status write of a Function.
#[derive(Debug, Default)]
pub struct StatusWrite {
    last: Option<(Option<FunctionStatus>, FunctionStatus)>,
}

impl StatusWrite {
    /// Remembers that `written` replaced `cached`.
    pub fn record(&mut self, cached: Option<FunctionStatus>, written: FunctionStatus) {
        self.last = Some((cached, written));
    }

    /// Whether writing `desired` now would repeat the last write to a cache
    /// that has not caught up with it: the cache still shows what it showed
    /// before that write, and the write was `desired`. Anything else (the
    /// status changed under us, or we want something new) is written.
    pub fn is_echo(&self, cached: Option<&FunctionStatus>, desired: &FunctionStatus) -> bool {
        self.last
            .as_ref()
            .is_some_and(|(before, written)| before.as_ref() == cached && written == desired)
    }
}

impl FunctionMemory {
    /// Drops expectations the cache has confirmed or that are too old.
    pub fn settle(
        &mut self,
        in_cache: &HashSet<String>,
        draining_in_cache: &HashSet<String>,
        now: Instant,
    ) {
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < EXPECTATION_TTL;
        self.created
            .retain(|name, t| !in_cache.contains(name) && fresh(t));
        self.drained
            .retain(|name, t| !draining_in_cache.contains(name) && fresh(t));
        self.deleted
            .retain(|name, t| in_cache.contains(name) && fresh(t));
        self.counted_failures.retain(|name| in_cache.contains(name));
        self.timelines.retain(|name, t| {
            in_cache.contains(name) || now.saturating_duration_since(t.decided) < EXPECTATION_TTL
        });
    }

    /// Records a crashed instance and pushes the next replacement back.
    pub fn record_crash(&mut self, message: String, now: Instant) {
        self.crashes = self.crashes.saturating_add(1);
        self.next_attempt = Some(now + backoff(self.crashes));
        self.last_crash = Some(message);
    }

    /// An instance became ready: crashes are behind us.
    pub fn reset_crashes(&mut self) {
        self.crashes = 0;
        self.next_attempt = None;
        self.last_crash = None;
    }

    /// How long creation is still held back, if it is.
    pub fn backoff_remaining(&self, now: Instant) -> Option<Duration> {
        self.next_attempt
            .map(|at| at.saturating_duration_since(now))
            .filter(|d| !d.is_zero())
    }
}

/// Delay after `crashes` consecutive crashes: 1s, 2s, 4s, ... up to 5m.
pub fn backoff(crashes: u32) -> Duration {
    let exponent = crashes.saturating_sub(1).min(16);
    (BACKOFF_BASE * 2u32.pow(exponent)).min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(30), BACKOFF_CAP);
    }

    #[test]
    fn expectations_settle_when_seen_or_stale() {
        let t0 = Instant::now();
        let mut m = FunctionMemory::default();
        m.created.insert("a".into(), t0);
        m.created.insert("b".into(), t0);
        m.deleted.insert("c".into(), t0);
        let cache: HashSet<String> = ["a".to_owned(), "c".to_owned()].into();
        m.settle(&cache, &HashSet::new(), t0);
        assert!(!m.created.contains_key("a"));
        assert!(m.created.contains_key("b"));
        assert!(m.deleted.contains_key("c"));
        m.settle(&HashSet::new(), &HashSet::new(), t0 + EXPECTATION_TTL);
        assert!(m.created.is_empty() && m.deleted.is_empty());
    }

    #[test]
    fn a_status_write_the_cache_has_not_shown_yet_is_not_repeated() {
        let old = FunctionStatus {
            desired_instances: Some(0),
            ..FunctionStatus::default()
        };
        let new = FunctionStatus {
            desired_instances: Some(1),
            ..FunctionStatus::default()
        };
        let mut w = StatusWrite::default();
        assert!(!w.is_echo(Some(&old), &new), "nothing written yet");
        w.record(Some(old.clone()), new.clone());
        assert!(w.is_echo(Some(&old), &new), "stale cache, same status");
        let newer = FunctionStatus {
            desired_instances: Some(2),
            ..FunctionStatus::default()
        };
        assert!(!w.is_echo(Some(&old), &newer), "something new to say");
        assert!(!w.is_echo(None, &new), "changed under us");
    }

    #[test]
    fn crashes_hold_back_creation_until_reset() {
        let t0 = Instant::now();
        let mut m = FunctionMemory::default();
        m.record_crash("exit 1".into(), t0);
        m.record_crash("exit 1".into(), t0);
        assert_eq!(m.backoff_remaining(t0), Some(Duration::from_secs(2)));
        assert_eq!(m.backoff_remaining(t0 + Duration::from_secs(2)), None);
        m.reset_crashes();
        assert_eq!(m.backoff_remaining(t0), None);
    }
}
