//! Unit tests of the autoscaler's state: merging, ordering, pruning.

use super::*;
use crate::{
    clock::{Clock, ManualClock},
    stats::InstanceReport,
    view::RETAIN_FOR,
};

fn key() -> FunctionKey {
    FunctionKey::new("default", "hello")
}

fn report(activator: &str, sequence: u64, concurrency: f64) -> ActivatorReport {
    let mut report = ActivatorReport::new(activator, sequence, 1000);
    let mut function = FunctionReport::new("default", "hello");
    function.concurrency = concurrency;
    report.functions.push(function);
    report
}

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn windows_sum_activators_and_average_over_time() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    // Two activators, each reporting every second: a at 2.0, b at 1.0.
    for seq in 1..=60 {
        clock.advance(Duration::from_secs(1));
        store.ingest(report("a", seq, 2.0), clock.now()).unwrap();
        store.ingest(report("b", seq, 1.0), clock.now()).unwrap();
    }
    let view = store.view(&key(), clock.now());
    assert!(approx(view.stable, 3.0), "{}", view.stable);
    assert!(approx(view.panic, 3.0), "{}", view.panic);

    // A burst on a for the last 6 seconds moves the panic window fully
    // and the stable window by a tenth of it.
    for seq in 61..=66 {
        clock.advance(Duration::from_secs(1));
        store.ingest(report("a", seq, 12.0), clock.now()).unwrap();
        store.ingest(report("b", seq, 1.0), clock.now()).unwrap();
    }
    let view = store.view(&key(), clock.now());
    assert!(approx(view.panic, 13.0), "{}", view.panic);
    assert!(
        approx(view.stable, 2.0 * 0.9 + 12.0 * 0.1 + 1.0),
        "{}",
        view.stable
    );
}

#[test]
fn a_report_without_the_function_counts_as_zero() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    for seq in 1..=30 {
        clock.advance(Duration::from_secs(1));
        store.ingest(report("a", seq, 4.0), clock.now()).unwrap();
    }
    for seq in 31..=60 {
        clock.advance(Duration::from_secs(1));
        store
            .ingest(ActivatorReport::new("a", seq, 1000), clock.now())
            .unwrap();
    }
    let view = store.view(&key(), clock.now());
    assert!(approx(view.stable, 2.0), "{}", view.stable);
    assert!(approx(view.panic, 0.0), "{}", view.panic);
}

#[test]
fn silent_activators_leave_the_windows() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    clock.advance(Duration::from_secs(1));
    store.ingest(report("a", 1, 5.0), clock.now()).unwrap();
    clock.advance(Duration::from_secs(3));
    assert!(approx(store.view(&key(), clock.now()).stable, 5.0));
    clock.advance(Duration::from_millis(1));
    assert!(approx(store.view(&key(), clock.now()).stable, 0.0));
}

#[test]
fn old_sequences_are_dropped_and_zero_means_restart() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    assert!(
        store
            .ingest(report("a", 5, 1.0), clock.now())
            .unwrap()
            .accepted
    );
    assert!(
        !store
            .ingest(report("a", 5, 9.0), clock.now())
            .unwrap()
            .accepted
    );
    assert!(
        !store
            .ingest(report("a", 4, 9.0), clock.now())
            .unwrap()
            .accepted
    );
    assert!(
        store
            .ingest(report("a", 6, 1.0), clock.now())
            .unwrap()
            .accepted
    );
    assert!(
        store
            .ingest(report("a", 0, 1.0), clock.now())
            .unwrap()
            .accepted
    );
    assert!(
        store
            .ingest(report("a", 1, 1.0), clock.now())
            .unwrap()
            .accepted
    );
}

#[test]
fn invalid_reports_are_refused() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    let mut bad = report("a", 1, 1.0);
    bad.version = 2;
    assert_eq!(
        store.ingest(bad, clock.now()),
        Err(StatsError::UnsupportedVersion { version: 2 })
    );
    assert_eq!(store.activators().count(), 0);
}

#[test]
fn last_active_keeps_the_latest_evidence() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    clock.advance(Duration::from_secs(100));
    let t0 = clock.now();
    let mut r = report("a", 1, 0.0);
    r.functions[0].instances = vec![InstanceReport::idle("p", 10_000)];
    store.ingest(r, t0).unwrap();
    assert_eq!(
        store.view(&key(), t0).last_active["p"],
        t0 - Duration::from_secs(10)
    );
    // b says busy: active at its receive time.
    clock.advance(Duration::from_secs(1));
    let mut r = report("b", 1, 1.0);
    r.functions[0].instances = vec![InstanceReport::busy("p", 1)];
    store.ingest(r, clock.now()).unwrap();
    assert_eq!(
        store.view(&key(), clock.now()).last_active["p"],
        clock.now()
    );
    // a no longer lists it: the evidence stays.
    clock.advance(Duration::from_secs(1));
    store.ingest(report("a", 2, 0.0), clock.now()).unwrap();
    assert_eq!(
        store.view(&key(), clock.now()).last_active["p"],
        t0 + Duration::from_secs(1)
    );
}

#[test]
fn pokes_name_functions_with_waiting_requests() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    let mut r = report("a", 1, 0.0);
    r.poke = true;
    let mut other = FunctionReport::new("default", "other");
    other.waiting = 1;
    r.functions.push(other);
    let ingested = store.ingest(r, clock.now()).unwrap();
    assert_eq!(ingested.functions.len(), 2);
    assert_eq!(ingested.poked, vec![FunctionKey::new("default", "other")]);
}

#[test]
fn leaving_activators_are_forgotten_and_state_is_pruned() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    store.ingest(report("a", 1, 1.0), clock.now()).unwrap();
    store.expect_activator("b", clock.now());
    store.expect_activator("a", clock.now() + Duration::from_secs(9));
    assert_eq!(store.activators().count(), 2);
    assert_eq!(
        store
            .activators()
            .find(|(id, _)| *id == "a")
            .map(|(_, at)| at),
        Some(clock.now()),
        "expecting a known activator changes nothing"
    );
    let mut bye = ActivatorReport::new("a", 2, 1000);
    bye.leaving = true;
    store.ingest(bye, clock.now()).unwrap();
    assert_eq!(
        store.activators().map(|(id, _)| id).collect::<Vec<_>>(),
        ["b"]
    );

    clock.advance(RETAIN_FOR + Duration::from_secs(1));
    store
        .ingest(ActivatorReport::new("c", 1, 1000), clock.now())
        .unwrap();
    assert_eq!(
        store.activators().map(|(id, _)| id).collect::<Vec<_>>(),
        ["c"]
    );
    assert!(store.functions.is_empty(), "{:?}", store.functions);
}
