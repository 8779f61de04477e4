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
    let mut report = ActivatorReport::new(activator, 1, sequence, 1000);
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
            .ingest(ActivatorReport::new("a", 1, seq, 1000), clock.now())
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

fn accepted(store: &mut Autoscaler, report: ActivatorReport, at: Instant) -> bool {
    store.ingest(report, at).unwrap().accepted
}

fn of_epoch(epoch: u64, sequence: u64) -> ActivatorReport {
    let mut r = report("a", sequence, 1.0);
    r.epoch = epoch;
    r
}

#[test]
fn within_an_epoch_duplicates_and_late_reports_are_dropped() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    let now = clock.now();
    assert!(accepted(&mut store, of_epoch(7, 5), now));
    assert!(!accepted(&mut store, of_epoch(7, 5), now), "duplicate");
    assert!(!accepted(&mut store, of_epoch(7, 4), now), "late");
    assert!(accepted(&mut store, of_epoch(7, 6), now));
    // Sequence 0 within the same epoch is just an old report.
    assert!(!accepted(&mut store, of_epoch(7, 0), now));
}

#[test]
fn a_lost_report_does_not_make_the_next_one_unwelcome() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    assert!(accepted(&mut store, of_epoch(7, 1), clock.now()));
    // 2 is lost.
    clock.advance(Duration::from_secs(2));
    assert!(accepted(&mut store, of_epoch(7, 3), clock.now()));
    assert_eq!(
        store.activators().next().map(|(_, at)| at),
        Some(clock.now())
    );
}

#[test]
fn a_reordered_pair_loses_only_the_older_report() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    assert!(accepted(&mut store, of_epoch(7, 1), clock.now()));
    assert!(accepted(&mut store, of_epoch(7, 3), clock.now()));
    assert!(!accepted(&mut store, of_epoch(7, 2), clock.now()));
    assert!(accepted(&mut store, of_epoch(7, 4), clock.now()));
}

#[test]
fn a_restart_is_recognised_from_any_report_of_the_new_epoch() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    assert!(accepted(&mut store, of_epoch(7, 9000), clock.now()));
    // The new process's reports 0..=2 are lost: 3 still counts.
    assert!(accepted(&mut store, of_epoch(8, 3), clock.now()));
    assert!(accepted(&mut store, of_epoch(8, 4), clock.now()));
    assert!(!accepted(&mut store, of_epoch(8, 4), clock.now()));
}

#[test]
fn a_late_report_of_the_previous_process_is_refused() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    assert!(accepted(&mut store, of_epoch(7, 100), clock.now()));
    assert!(accepted(&mut store, of_epoch(8, 0), clock.now()));
    // The old process's last report arrives after the new one's first.
    assert!(!accepted(&mut store, of_epoch(7, 101), clock.now()));
    assert!(accepted(&mut store, of_epoch(8, 1), clock.now()));
    // And a report of the new epoch is not refused for being of a
    // restart: reports keep flowing.
    assert!(accepted(&mut store, of_epoch(8, 2), clock.now()));
}

#[test]
fn a_late_report_after_leaving_does_not_bring_the_activator_back() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    assert!(accepted(&mut store, of_epoch(7, 1), clock.now()));
    let mut bye = of_epoch(7, 3);
    bye.leaving = true;
    assert!(accepted(&mut store, bye, clock.now()));
    assert!(!accepted(&mut store, of_epoch(7, 2), clock.now()));
    assert_eq!(store.activators().count(), 0);
    // The same replica started again (same pod name, new process).
    assert!(accepted(&mut store, of_epoch(9, 0), clock.now()));
    assert_eq!(store.activators().count(), 1);
}

#[test]
fn a_restart_ends_the_requests_the_old_process_had_in_flight() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    let mut r = of_epoch(7, 1);
    r.functions[0].instances = vec![InstanceReport::busy("p", 2), InstanceReport::idle("q", 0)];
    store.ingest(r, clock.now()).unwrap();
    let q_active = clock.now();
    clock.advance(Duration::from_secs(2));
    // The new process knows both instances, has had no request on them.
    let mut r = of_epoch(8, 0);
    r.functions[0].instances = vec![InstanceReport::unused("p"), InstanceReport::unused("q")];
    store.ingest(r, clock.now()).unwrap();
    let view = store.view(&key(), clock.now());
    assert_eq!(view.last_active["p"], clock.now(), "ended by the restart");
    assert_eq!(view.last_active["q"], q_active, "unchanged");
}

#[test]
fn an_activator_without_requests_on_an_instance_gives_no_evidence() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    let mut r = report("a", 1, 0.0);
    r.functions[0].instances = vec![InstanceReport::unused("p")];
    store.ingest(r, clock.now()).unwrap();
    assert!(store.view(&key(), clock.now()).last_active.is_empty());
}

#[test]
fn invalid_reports_are_refused() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    let mut bad = report("a", 1, 1.0);
    bad.version = 4;
    assert_eq!(
        store.ingest(bad, clock.now()),
        Err(StatsError::UnsupportedVersion { version: 4 })
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
    let mut bye = ActivatorReport::new("a", 1, 2, 1000);
    bye.leaving = true;
    store.ingest(bye, clock.now()).unwrap();
    assert_eq!(
        store.activators().map(|(id, _)| id).collect::<Vec<_>>(),
        ["b"]
    );

    clock.advance(RETAIN_FOR + Duration::from_secs(1));
    store
        .ingest(ActivatorReport::new("c", 1, 1, 1000), clock.now())
        .unwrap();
    assert_eq!(
        store.activators().map(|(id, _)| id).collect::<Vec<_>>(),
        ["c"]
    );
    assert!(store.functions.is_empty(), "{:?}", store.functions);
    assert!(store.functions().is_empty());
}

#[test]
fn reports_wake_only_functions_whose_numbers_moved() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    let other = FunctionKey::new("default", "other");
    let idle = |seq: u64, idle_ms: u64, other_in_flight: u32| {
        let mut r = report("a", seq, 0.0);
        r.functions[0].instances = vec![InstanceReport::idle("p", idle_ms)];
        let mut f = FunctionReport::new("default", "other");
        f.instances = vec![if other_in_flight > 0 {
            InstanceReport::busy("q", other_in_flight)
        } else {
            InstanceReport::unused("q")
        }];
        r.functions.push(f);
        r
    };
    let woken = |store: &mut Autoscaler, r: ActivatorReport, at: Instant| {
        store.ingest(r, at).unwrap().functions
    };
    // The first report of an activator wakes everything it mentions.
    assert_eq!(woken(&mut store, idle(1, 5_000, 0), clock.now()).len(), 2);
    // The same idle picture a second later (a few ms of transit jitter):
    // nothing moved.
    clock.advance(Duration::from_millis(1_004));
    assert!(woken(&mut store, idle(2, 6_000, 0), clock.now()).is_empty());
    // A request on `other`: only it.
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        woken(&mut store, idle(3, 7_000, 1), clock.now()),
        std::slice::from_ref(&other)
    );
    // `p`'s last activity moved (a request came and went in between).
    clock.advance(Duration::from_secs(1));
    assert_eq!(woken(&mut store, idle(4, 100, 1), clock.now()), [key()]);
    // A duplicate wakes nothing.
    assert!(woken(&mut store, idle(4, 100, 1), clock.now()).is_empty());
    // Traffic shows in the windows: woken while concurrency is non-zero,
    // and once more when it drops to zero.
    clock.advance(Duration::from_secs(1));
    let mut busy = idle(5, 1_100, 1);
    busy.functions[0].concurrency = 0.3;
    assert_eq!(woken(&mut store, busy, clock.now()), [key()]);
    clock.advance(Duration::from_secs(1));
    assert_eq!(woken(&mut store, idle(6, 2_100, 1), clock.now()), [key()]);
    clock.advance(Duration::from_secs(1));
    assert!(woken(&mut store, idle(7, 3_100, 1), clock.now()).is_empty());
    // A Function the activator stops listing is woken.
    clock.advance(Duration::from_secs(1));
    let mut r = idle(8, 4_100, 1);
    r.functions.truncate(1);
    assert_eq!(woken(&mut store, r, clock.now()), [other]);
    // A new process wakes everything it mentions.
    clock.advance(Duration::from_secs(1));
    let mut r = idle(0, 5_100, 1);
    r.epoch = 2;
    assert_eq!(woken(&mut store, r, clock.now()).len(), 2);
}

#[test]
fn waiting_requests_wake_their_function_on_every_report_until_none_wait() {
    let clock = ManualClock::new();
    let mut store = Autoscaler::new(Tuning::default(), clock.now());
    let waiting = |seq: u64, waiting: u32| {
        let mut r = report("a", seq, 0.0);
        r.functions[0].waiting = waiting;
        r
    };
    let mut woken = |seq: u64, count: u32| {
        clock.advance(Duration::from_secs(1));
        store
            .ingest(waiting(seq, count), clock.now())
            .unwrap()
            .functions
    };
    assert_eq!(woken(1, 0), [key()], "a first report wakes everything");
    assert!(woken(2, 0).is_empty(), "nothing waits, nothing moved");
    // The same request still waiting: woken again each time, so a wake-up
    // lost before the controller could act on it is made up a report later.
    assert_eq!(woken(3, 1), [key()]);
    assert_eq!(woken(4, 1), [key()]);
    assert_eq!(woken(5, 1), [key()]);
    // Once more when the last one stopped waiting, then quiet.
    assert_eq!(woken(6, 0), [key()]);
    assert!(woken(7, 0).is_empty());
}
