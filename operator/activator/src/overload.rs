//! Bounds that hold across every Function, so a flood of slow or queued
//! requests cannot grow the activator's memory without limit:
//!
//! - [`QueueBudget`]: requests waiting for an instance, all Functions
//!   together (each Function's own `maxPending` bounds it alone); beyond it
//!   a request gets 503 with Retry-After at once;
//! - [`ConnectionLimit`]: open client connections; beyond it a new
//!   connection gets a 503 with Retry-After and `Connection: close`, written
//!   before any of its bytes are read.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{io::AsyncWriteExt, net::TcpStream, sync::Semaphore};

/// Requests waiting across every Function.
#[derive(Debug)]
pub struct QueueBudget {
    queued: AtomicUsize,
    max: AtomicUsize,
}

impl Default for QueueBudget {
    /// Unbounded until [`QueueBudget::set_max`].
    fn default() -> Self {
        Self {
            queued: AtomicUsize::new(0),
            max: AtomicUsize::new(usize::MAX),
        }
    }
}

/// One waiting request's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct QueueTicket(Arc<QueueBudget>);

impl QueueBudget {
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// A ticket, unless the budget is spent.
    pub fn try_take(self: &Arc<Self>) -> Option<QueueTicket> {
        let max = self.max();
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| QueueTicket(self.clone()))
    }
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Open client connections.
#[derive(Clone, Debug)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

/// A connection's place; given back when dropped.
pub type ConnectionPermit = tokio::sync::OwnedSemaphorePermit;

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
        }
    }

    pub fn try_acquire(&self) -> Option<ConnectionPermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Answers a connection over the limit and closes it, within 1 s.
    pub async fn refuse(&self, mut stream: TcpStream) {
        let body = format!(
            "{{\"error\":\"the activator has its maximum of {} open connections; retry later\"}}",
            self.max
        );
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let budget = Arc::new(QueueBudget::default());
        budget.set_max(2);
        let a = budget.try_take().expect("first");
        let b = budget.try_take().expect("second");
        assert!(budget.try_take().is_none(), "over the budget");
        drop(a);
        let c = budget.try_take().expect("a freed place");
        assert_eq!(budget.queued(), 2);
        drop((b, c));
        assert_eq!(budget.queued(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_takers_never_exceed_the_budget() {
        let budget = Arc::new(QueueBudget::default());
        budget.set_max(100);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    let mut held = Vec::new();
                    for _ in 0..1000 {
                        if let Some(ticket) = budget.try_take() {
                            held.push(ticket);
                        }
                        assert!(budget.queued() <= 100);
                        if held.len() > 5 {
                            held.clear();
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(budget.queued(), 0);
    }
}
