//! Wake-ups from the stats endpoint to the controller: bounded, and only
//! on the leader.
//!
//! Every replica accepts reports (a follower taking over starts with warm
//! stats), but only the leader runs the controller that drains wake-ups.
//! A follower queues nothing; the leader's queue is bounded, and a wake-up
//! that does not fit is dropped and counted: the Function is reconciled at
//! its next wake-up time or on the next report anyway.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use prometheus::IntCounter;
use thaw_core::FunctionKey;
use tokio::sync::mpsc;

/// Wake-ups that may wait for the controller at once.
pub const WAKE_QUEUE: usize = 4096;

#[derive(Clone)]
pub struct Wakeups {
    tx: mpsc::Sender<FunctionKey>,
    leading: Arc<AtomicBool>,
    dropped: IntCounter,
}

impl Wakeups {
    /// The sending side, and the receiver the controller drains once it leads.
    pub fn new(dropped: IntCounter) -> (Self, mpsc::Receiver<FunctionKey>) {
        let (tx, rx) = mpsc::channel(WAKE_QUEUE);
        let wakeups = Self {
            tx,
            leading: Arc::new(AtomicBool::new(false)),
            dropped,
        };
        (wakeups, rx)
    }

    /// From now on wake-ups are queued for the controller.
    pub fn start_leading(&self) {
        self.leading.store(true, Ordering::Release);
    }

    /// Asks the controller to reconcile `key` now.
    pub fn wake(&self, key: FunctionKey) {
        if !self.leading.load(Ordering::Acquire) {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(key) {
            self.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_follower_queues_nothing_and_a_full_queue_counts_drops() {
        let dropped = IntCounter::new("dropped", "dropped").expect("counter");
        let (wakeups, mut rx) = Wakeups::new(dropped.clone());
        for i in 0..10 {
            wakeups.wake(FunctionKey::new("ns", format!("f{i}")));
        }
        assert!(rx.try_recv().is_err(), "a follower queued a wake-up");
        wakeups.start_leading();
        for i in 0..WAKE_QUEUE + 5 {
            wakeups.wake(FunctionKey::new("ns", format!("f{i}")));
        }
        assert_eq!(dropped.get(), 5);
        assert_eq!(rx.recv().await, Some(FunctionKey::new("ns", "f0")));
    }
}
