//! Time as an input. Every decision takes `now: Instant` explicitly; the
//! [`Clock`] trait is how long-running callers (the operator's loops) get
//! that `now`, so tests can drive them with a [`ManualClock`] instead of
//! sleeping.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

/// A source of monotonic time.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to: simulated time for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl ManualClock {
    /// A clock standing at the real current instant.
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    /// A clock standing at `start`.
    pub fn starting_at(start: Instant) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }

    /// Moves the clock to `to`; an instant before the current one is ignored,
    /// as a monotonic clock never goes back.
    pub fn set(&self, to: Instant) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        if to > *now {
            *now = to;
        }
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Box<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - start, Duration::from_millis(1500));
        clock.set(start);
        assert_eq!(
            clock.now() - start,
            Duration::from_millis(1500),
            "never goes back"
        );
        clock.set(start + Duration::from_secs(10));
        assert_eq!(clock.now() - start, Duration::from_secs(10));
    }

    #[test]
    fn clocks_are_usable_as_trait_objects() {
        let manual = Arc::new(ManualClock::new());
        let clocks: Vec<Box<dyn Clock>> = vec![Box::new(SystemClock), Box::new(manual.clone())];
        let before = clocks[1].now();
        manual.advance(Duration::from_secs(1));
        assert_eq!(clocks[1].now() - before, Duration::from_secs(1));
        let _ = clocks[0].now();
    }
}
