//! The hard limit and the instance's own clock: at most `concurrency`
//! requests on the function, the rest held in FIFO order, and the counts
//! the operator reads (in flight, held, started, idle since). With
//! `max_requests` set, the instance admits that many requests in its life
//! and refuses every later one at once ([`Refused::Exhausted`]).

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::state::GateState;

/// Why a request did not get a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_waiting` requests are already held.
    Full,
    /// No slot freed within the hold limit.
    Timeout,
    /// The instance has admitted `max_requests` requests: it takes no more,
    /// ever.
    Exhausted,
}

#[derive(Debug)]
struct Counts {
    in_flight: u32,
    waiting: u32,
    started: u64,
    /// Requests admitted (running or held for a slot): the count
    /// `max_requests` limits. A held request that gets no slot gives its
    /// place back.
    admitted: u64,
    /// When the last request ended (or the gate started); `None` while busy.
    idle_since: Option<Instant>,
}

/// The gate's admission state. Shared by every connection.
#[derive(Debug)]
pub struct Limiter {
    /// `None`: unlimited. Tokio's semaphore is fair, so held requests go in
    /// arrival order.
    permits: Option<Arc<Semaphore>>,
    concurrency: u32,
    /// Most requests admitted in the instance's life; 0 = unlimited.
    max_requests: u64,
    max_waiting: u32,
    max_hold: Duration,
    counts: Mutex<Counts>,
}

/// A request's place on the function; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<Limiter>,
    _permit: Option<OwnedSemaphorePermit>,
    /// How long the request was held for this slot.
    pub waited: Duration,
}

impl Limiter {
    pub fn new(concurrency: u32, max_waiting: u32, max_hold: Duration) -> Self {
        Self::with_max_requests(concurrency, 0, max_waiting, max_hold)
    }

    /// A limiter that admits at most `max_requests` requests in its life
    /// (0 = unlimited).
    pub fn with_max_requests(
        concurrency: u32,
        max_requests: u32,
        max_waiting: u32,
        max_hold: Duration,
    ) -> Self {
        Self {
            permits: (concurrency > 0).then(|| Arc::new(Semaphore::new(concurrency as usize))),
            concurrency,
            max_requests: u64::from(max_requests),
            max_waiting,
            max_hold,
            counts: Mutex::new(Counts {
                in_flight: 0,
                waiting: 0,
                started: 0,
                admitted: 0,
                idle_since: Some(Instant::now()),
            }),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a slot on the function. An exhausted instance refuses at
    /// once; the count is taken under the same lock as the check, so two
    /// requests arriving together cannot both take the last place.
    pub async fn admit(self: &Arc<Self>) -> Result<Slot, Refused> {
        let arrived = Instant::now();
        {
            let mut counts = self.counts();
            if self.max_requests > 0 && counts.admitted >= self.max_requests {
                return Err(Refused::Exhausted);
            }
            counts.admitted += 1;
        }
        // Given back if the request gets no slot (held too long, queue
        // full, or its client left while held): it never ran.
        let ticket = Ticket(Some(self));
        let permit = match &self.permits {
            None => None,
            Some(permits) => match permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => Some(self.hold(permits.clone()).await?),
            },
        };
        ticket.keep();
        let mut counts = self.counts();
        counts.in_flight += 1;
        counts.started += 1;
        counts.idle_since = None;
        drop(counts);
        Ok(Slot {
            limiter: self.clone(),
            _permit: permit,
            waited: arrived.elapsed(),
        })
    }

    async fn hold(&self, permits: Arc<Semaphore>) -> Result<OwnedSemaphorePermit, Refused> {
        {
            let mut counts = self.counts();
            if counts.waiting >= self.max_waiting {
                return Err(Refused::Full);
            }
            counts.waiting += 1;
        }
        // Counted out however the wait ends, the client leaving included
        // (the request's future is then dropped mid-wait).
        let _held = Held(self);
        let acquired = tokio::time::timeout(self.max_hold, permits.acquire_owned()).await;
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout anyway.
            Ok(Err(_)) | Err(_) => Err(Refused::Timeout),
        }
    }

    fn release(&self) {
        let mut counts = self.counts();
        counts.in_flight = counts.in_flight.saturating_sub(1);
        if counts.in_flight == 0 {
            counts.idle_since = Some(Instant::now());
        }
    }

    /// What the operator reads.
    pub fn state(&self) -> GateState {
        let counts = self.counts();
        let mut state = GateState::new(
            self.concurrency,
            counts.in_flight,
            counts.waiting,
            counts.started,
            counts
                .idle_since
                .map(|since| u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)),
        );
        state.max_requests = self.max_requests;
        state.exhausted = self.max_requests > 0 && counts.admitted >= self.max_requests;
        state
    }
}

/// A request's place in `max_requests`, given back unless kept.
struct Ticket<'a>(Option<&'a Limiter>);

impl Ticket<'_> {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(limiter) = self.0 {
            let mut counts = limiter.counts();
            counts.admitted = counts.admitted.saturating_sub(1);
        }
    }
}

/// One held request, counted in `waiting` while it lives.
struct Held<'a>(&'a Limiter);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut counts = self.0.counts();
        counts.waiting = counts.waiting.saturating_sub(1);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn never_more_than_concurrency_at_once() {
        let limiter = Arc::new(Limiter::new(3, 1000, Duration::from_secs(10)));
        let running = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (limiter, running, peak) = (limiter.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    let slot = limiter.admit().await.expect("slot");
                    let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    drop(slot);
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
        let state = limiter.state();
        assert_eq!((state.in_flight, state.waiting, state.started), (0, 0, 64));
        assert!(state.idle_for_ms.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn held_requests_go_in_order_and_time_out() {
        let limiter = Arc::new(Limiter::new(1, 1, Duration::from_secs(2)));
        let first = limiter.admit().await.expect("first");
        assert_eq!(limiter.state().idle_for_ms, None);
        let held = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.admit().await.map(|s| s.waited) })
        };
        tokio::task::yield_now().await;
        assert_eq!(limiter.state().waiting, 1);
        // A third finds the hold queue full.
        assert_eq!(limiter.admit().await.err(), Some(Refused::Full));
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(first);
        let waited = held.await.expect("task").expect("slot");
        assert_eq!(waited, Duration::from_millis(500));
        // The slot is free again: taken at once; the next one is held until
        // the hold limit.
        let again = limiter.admit().await.expect("free slot");
        let timed_out = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.admit().await.err() })
        };
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(timed_out.await.expect("task"), Some(Refused::Timeout));
        drop(again);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn admits_at_most_max_requests_then_refuses_at_once() {
        let limiter = Arc::new(Limiter::with_max_requests(
            2,
            5,
            1000,
            Duration::from_secs(10),
        ));
        let ran = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let (limiter, ran) = (limiter.clone(), ran.clone());
                tokio::spawn(async move {
                    match limiter.admit().await {
                        Ok(slot) => {
                            ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            drop(slot);
                            true
                        }
                        Err(refused) => {
                            assert_eq!(refused, Refused::Exhausted);
                            false
                        }
                    }
                })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += u32::from(task.await.expect("task"));
        }
        assert_eq!(admitted, 5);
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 5);
        let state = limiter.state();
        assert_eq!((state.started, state.max_requests), (5, 5));
        assert!(state.exhausted && state.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_that_gets_no_slot_gives_its_place_back() {
        let limiter = Arc::new(Limiter::with_max_requests(1, 2, 10, Duration::from_secs(1)));
        let first = limiter.admit().await.expect("first");
        let held = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.admit().await.err() })
        };
        tokio::task::yield_now().await;
        assert!(
            limiter.state().exhausted,
            "two admitted: one running, one held"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(held.await.expect("task"), Some(Refused::Timeout));
        assert!(!limiter.state().exhausted, "the held one never ran");
        drop(first);
        let second = limiter.admit().await.expect("second");
        drop(second);
        assert_eq!(limiter.admit().await.err(), Some(Refused::Exhausted));
        assert_eq!(limiter.state().started, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_clock_runs_from_the_last_request_end() {
        let limiter = Arc::new(Limiter::new(0, 0, Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(limiter.state().idle_for_ms, Some(5000));
        let a = limiter.admit().await.expect("a");
        let b = limiter.admit().await.expect("b");
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(a);
        assert_eq!(limiter.state().idle_for_ms, None, "still busy with b");
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(b);
        tokio::time::advance(Duration::from_millis(250)).await;
        let state = limiter.state();
        assert_eq!((state.idle_for_ms, state.started), (Some(250), 2));
    }
}
