//! Unit tests of the registry: entries, leases, waiters, pruning.

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
        max_requests: 0,
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
                        let _ =
                            tokio::time::timeout(Duration::from_micros(50), waiter.wait()).await;
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
