//! Unit tests of one Function's throttle: placement, the queue, stats.

use super::*;

fn config(concurrency: u32) -> FunctionConfig {
    FunctionConfig {
        uid: "fn-uid".into(),
        hash: "h1".into(),
        limits: Limits {
            concurrency,
            target: 0.7,
        },
        max_pending: 3,
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
        ip: Some(IpAddr::from([10, 244, 0, ip])),
        port: Some(8080),
        readiness_path: None,
        owner_uid: Some("fn-uid".into()),
        hash: Some("h1".into()),
        kubelet_ready: None,
        draining: false,
        terminating: false,
        finished: false,
    }
}

/// A function with `concurrency` and ready instances `pods`.
fn state(concurrency: u32, pods: &[&str], now: Instant) -> FunctionState {
    let mut s = FunctionState::new(now);
    s.set_config(Some(config(concurrency)), now);
    for (i, name) in pods.iter().enumerate() {
        let ip = u8::try_from(i + 2).unwrap();
        let id = s.upsert_pod(pod(name, ip), now).expect("probe");
        s.probe_succeeded(id, now);
    }
    s
}

fn placed(admit: Admit) -> Slot {
    match admit {
        Admit::Placed(slot) => slot,
        other => panic!("expected a slot, got {other:?}"),
    }
}

fn queued(admit: Admit) -> (WaiterId, oneshot::Receiver<()>, bool, bool) {
    match admit {
        Admit::Queued {
            id,
            rx,
            first,
            cold,
        } => (id, rx, first, cold),
        other => panic!("expected to wait, got {other:?}"),
    }
}

fn assigned(take: Take) -> Slot {
    match take {
        Take::Assigned(slot) => slot,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

fn woken(rx: &mut oneshot::Receiver<()>) -> bool {
    rx.try_recv().is_ok()
}

#[test]
fn unknown_and_invalid_functions() {
    let now = Instant::now();
    let mut s = FunctionState::new(now);
    assert!(matches!(s.admit(now), Admit::Unknown));
    s.set_invalid("bad spec".into(), now);
    assert!(matches!(s.admit(now), Admit::Invalid(m) if m == "bad spec"));
    s.set_config(Some(config(1)), now);
    assert!(matches!(s.admit(now), Admit::Queued { .. }));
}

#[test]
fn places_directly_while_there_is_room_and_packs() {
    let now = Instant::now();
    let mut s = state(10, &["a", "b"], now);
    for _ in 0..7 {
        assert_eq!(placed(s.admit(now)).pod, "a");
    }
    assert_eq!(placed(s.admit(now)).pod, "b", "a is at the soft cap");
    assert_eq!(s.in_flight(), 8);
}

#[test]
fn the_queue_is_fifo_and_bounded() {
    let now = Instant::now();
    let mut s = state(1, &["a"], now);
    let first = placed(s.admit(now));
    let (w1, mut rx1, is_first, cold) = queued(s.admit(now));
    assert!(is_first && !cold);
    let (w2, mut rx2, is_first, _) = queued(s.admit(now));
    assert!(!is_first);
    let (w3, mut rx3, _, _) = queued(s.admit(now));
    assert!(matches!(s.admit(now), Admit::Full { max_pending: 3 }));
    assert_eq!(s.waiting(), 3);

    s.release(first.instance, now);
    assert!(woken(&mut rx1) && !woken(&mut rx2) && !woken(&mut rx3));
    let slot = assigned(s.take(w1, now));
    assert_eq!(slot.pod, "a");
    // A new request cannot jump the queue even if it arrived as a slot frees.
    s.release(slot.instance, now);
    let (w4, mut rx4, _, _) = queued(s.admit(now));
    assert!(woken(&mut rx2));
    let slot = assigned(s.take(w2, now));
    s.release(slot.instance, now);
    assert!(woken(&mut rx3));
    let slot = assigned(s.take(w3, now));
    s.release(slot.instance, now);
    assert!(woken(&mut rx4));
    let slot = assigned(s.take(w4, now));
    assert_eq!(s.waiting(), 0);
    s.release(slot.instance, now);
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn max_pending_zero_never_queues() {
    let now = Instant::now();
    let mut s = FunctionState::new(now);
    let mut c = config(1);
    c.max_pending = 0;
    s.set_config(Some(c), now);
    assert!(matches!(s.admit(now), Admit::Full { max_pending: 0 }));
}

#[test]
fn a_waiter_that_leaves_frees_its_place() {
    let now = Instant::now();
    let mut s = state(1, &["a"], now);
    let held = placed(s.admit(now));
    let (w1, _rx1, _, _) = queued(s.admit(now));
    let (w2, mut rx2, _, _) = queued(s.admit(now));
    s.cancel(w1, now);
    assert_eq!(s.waiting(), 1);
    s.release(held.instance, now);
    assert!(woken(&mut rx2), "the next one gets the slot");
    assigned(s.take(w2, now));
}

#[test]
fn a_waiter_that_leaves_after_being_handed_a_slot_passes_it_on() {
    let now = Instant::now();
    let mut s = state(1, &["a"], now);
    let held = placed(s.admit(now));
    let (w1, mut rx1, _, _) = queued(s.admit(now));
    let (w2, mut rx2, _, _) = queued(s.admit(now));
    s.release(held.instance, now);
    assert!(woken(&mut rx1));
    // The client of w1 disconnects before its task picked the slot up.
    s.cancel(w1, now);
    assert!(woken(&mut rx2));
    let slot = assigned(s.take(w2, now));
    assert_eq!(s.in_flight(), 1);
    s.release(slot.instance, now);
    assert_eq!(s.in_flight(), 0);
    // Cancelling twice, or after taking, changes nothing.
    s.cancel(w1, now);
    s.cancel(w2, now);
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn a_cold_function_waits_and_the_first_ready_instance_wakes_the_head() {
    let now = Instant::now();
    let mut s = FunctionState::new(now);
    s.set_config(Some(config(1)), now);
    let (w1, mut rx1, first, cold) = queued(s.admit(now));
    assert!(first && cold);
    let (w2, mut rx2, first, cold) = queued(s.admit(now));
    assert!(!first && cold);
    let id = s.upsert_pod(pod("a", 2), now).expect("probe it");
    assert!(!woken(&mut rx1), "not before it is probed");
    // A second upsert while probing does not start a second prober.
    assert_eq!(s.upsert_pod(pod("a", 2), now), None);
    s.probe_succeeded(id, now);
    assert!(woken(&mut rx1) && !woken(&mut rx2));
    let slot = assigned(s.take(w1, now));
    assert_eq!(slot.addr, "10.244.0.2:8080".parse().unwrap());
    s.release(slot.instance, now);
    assert!(woken(&mut rx2));
    assigned(s.take(w2, now));
}

#[test]
fn a_pod_removed_while_its_slot_is_being_handed_over_requeues_the_waiter_first() {
    let now = Instant::now();
    let mut s = state(1, &["a", "b"], now);
    let on_a = placed(s.admit(now));
    let on_b = placed(s.admit(now));
    let (w1, mut rx1, _, _) = queued(s.admit(now));
    let (_w2, mut rx2, _, _) = queued(s.admit(now));
    s.release(on_a.instance, now);
    assert!(woken(&mut rx1));
    // Pod a is deleted before w1 picks its slot up.
    s.remove_pod("a", now);
    let mut rx1 = match s.take(w1, now) {
        Take::Waiting(rx) => rx,
        other => panic!("expected to wait again, got {other:?}"),
    };
    assert_eq!(s.waiting(), 2);
    // w1 is ahead of w2 for the next slot.
    s.release(on_b.instance, now);
    assert!(woken(&mut rx1) && !woken(&mut rx2));
    assert_eq!(assigned(s.take(w1, now)).pod, "b");
    assert_eq!(s.pod_names(), vec!["b".to_owned()]);
}

#[test]
fn a_deleted_pod_is_kept_while_requests_run_on_it_and_reported_draining() {
    let now = Instant::now();
    let mut s = state(2, &["a"], now);
    let slot = placed(s.admit(now));
    s.remove_pod("a", now);
    assert!(s.pod_names().is_empty());
    assert_eq!(s.instances().len(), 1);
    let report = s.report("ns", "f", Duration::from_secs(1), now);
    assert_eq!(report.instances.len(), 1);
    assert!(report.instances[0].draining);
    assert_eq!(report.instances[0].in_flight, 1);
    // Nothing new goes there.
    assert!(matches!(s.admit(now), Admit::Queued { .. }));
    s.release(slot.instance, now);
    assert!(s.instances().is_empty());
}

#[test]
fn a_pod_recreated_under_the_same_name_is_a_new_instance() {
    let now = Instant::now();
    let mut s = state(1, &["a"], now);
    let slot = placed(s.admit(now));
    let mut again = pod("a", 9);
    again.uid = "uid-a-2".into();
    let id = s.upsert_pod(again, now).expect("probe the new one");
    assert_ne!(id, slot.instance);
    s.probe_succeeded(id, now);
    let next = placed(s.admit(now));
    assert_eq!(next.instance, id);
    assert_eq!(next.addr, "10.244.0.9:8080".parse().unwrap());
    s.release(slot.instance, now);
    assert_eq!(s.instances().len(), 1);
}

#[test]
fn draining_terminating_and_finished_instances_get_nothing_new() {
    let now = Instant::now();
    for change in [
        |p: &mut PodInfo| p.draining = true,
        |p: &mut PodInfo| p.terminating = true,
        |p: &mut PodInfo| p.finished = true,
    ] {
        let mut s = state(5, &["a", "b"], now);
        let first = placed(s.admit(now));
        assert_eq!(first.pod, "a");
        let mut changed = pod("a", 2);
        change(&mut changed);
        assert_eq!(s.upsert_pod(changed, now), None);
        assert_eq!(placed(s.admit(now)).pod, "b");
        // The request already on a finishes normally.
        s.release(first.instance, now);
    }
    let mut s = state(5, &["a"], now);
    let mut draining = pod("a", 2);
    draining.draining = true;
    s.upsert_pod(draining, now);
    let report = s.report("ns", "f", Duration::from_secs(1), now);
    assert!(report.instances[0].draining);
}

#[test]
fn pods_that_are_not_instances_of_this_function_get_nothing() {
    let now = Instant::now();
    let mut s = state(5, &[], now);
    for change in [
        |p: &mut PodInfo| p.owner_uid = Some("other".into()),
        |p: &mut PodInfo| p.owner_uid = None,
        |p: &mut PodInfo| p.hash = None,
    ] {
        let mut p = pod("x", 2);
        change(&mut p);
        if let Some(id) = s.upsert_pod(p, now) {
            s.probe_succeeded(id, now);
        }
        assert!(matches!(s.admit(now), Admit::Queued { .. }));
    }
    // A pod without an IP is not probed.
    let mut p = pod("y", 3);
    p.ip = None;
    assert_eq!(s.upsert_pod(p, now), None);
}

#[test]
fn outdated_instances_serve_until_a_current_one_is_ready() {
    let now = Instant::now();
    let mut s = state(5, &["old"], now);
    let mut c = config(5);
    c.hash = "h2".into();
    s.set_config(Some(c), now);
    assert_eq!(placed(s.admit(now)).pod, "old", "no current one yet");
    let mut new = pod("new", 3);
    new.hash = Some("h2".into());
    let id = s.upsert_pod(new, now).expect("probe");
    assert_eq!(placed(s.admit(now)).pod, "old", "not probed yet");
    s.probe_succeeded(id, now);
    for _ in 0..5 {
        assert_eq!(placed(s.admit(now)).pod, "new");
    }
    assert!(
        matches!(s.admit(now), Admit::Queued { .. }),
        "the outdated one gets nothing even with the current one full"
    );
}

#[test]
fn kubelet_ready_going_false_stops_placement_until_true_again() {
    let now = Instant::now();
    let mut s = state(5, &[], now);
    let mut p = pod("a", 2);
    p.kubelet_ready = Some(false);
    let id = s.upsert_pod(p.clone(), now).expect("probe");
    s.probe_succeeded(id, now);
    // Probed before kubelet saw it ready: takes traffic at once.
    let slot = placed(s.admit(now));
    s.release(slot.instance, now);
    p.kubelet_ready = Some(true);
    s.upsert_pod(p.clone(), now);
    p.kubelet_ready = Some(false);
    s.upsert_pod(p.clone(), now);
    let (w, mut rx, _, cold) = queued(s.admit(now));
    assert!(cold);
    p.kubelet_ready = Some(true);
    s.upsert_pod(p, now);
    assert!(woken(&mut rx));
    assigned(s.take(w, now));
}

#[test]
fn a_failed_connection_makes_the_instance_unready_until_probed() {
    let now = Instant::now();
    let mut s = state(5, &["a", "b"], now);
    let slot = placed(s.admit(now));
    assert_eq!(slot.pod, "a");
    let probe = s.connect_failed(slot.instance).expect("re-probe");
    assert_eq!(s.connect_failed(slot.instance), None, "one prober");
    s.release(slot.instance, now);
    match s.readmit(now) {
        Admit::Placed(other) => assert_eq!(other.pod, "b"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.probe_target(probe),
        Some(ProbeTarget {
            addr: "10.244.0.2:8080".parse().unwrap(),
            path: None
        })
    );
    s.probe_succeeded(probe, now);
    assert_eq!(s.probe_target(probe), None, "ready: the prober stops");
    assert_eq!(placed(s.admit(now)).pod, "b", "b is busiest below the cap");
}

#[test]
fn a_readmitted_request_goes_ahead_of_the_queue_and_past_max_pending() {
    let now = Instant::now();
    let mut s = state(1, &["a"], now);
    let held = placed(s.admit(now));
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(queued(s.admit(now)));
    }
    let (retry, mut retry_rx, _, _) = queued(s.readmit(now));
    assert_eq!(s.waiting(), 4);
    s.release(held.instance, now);
    assert!(woken(&mut retry_rx));
    assigned(s.take(retry, now));
    assert!(!woken(&mut waiting[0].1));
}

#[test]
fn the_probe_target_stops_for_retired_or_gone_instances() {
    let now = Instant::now();
    let mut s = state(1, &[], now);
    let mut p = pod("a", 2);
    p.readiness_path = Some("/healthz".into());
    p.port = None;
    let id = s.upsert_pod(p.clone(), now).expect("probe");
    assert_eq!(
        s.probe_target(id),
        Some(ProbeTarget {
            addr: "10.244.0.2:8080".parse().unwrap(),
            path: Some("/healthz".into())
        })
    );
    p.terminating = true;
    s.upsert_pod(p, now);
    assert_eq!(s.probe_target(id), None);
    s.remove_pod("a", now);
    assert_eq!(s.probe_target(id), None);
}

#[test]
fn a_deleted_function_sends_its_waiters_away() {
    let now = Instant::now();
    let mut s = FunctionState::new(now);
    s.set_config(Some(config(1)), now);
    let (w, mut rx, _, _) = queued(s.admit(now));
    s.set_config(None, now);
    assert!(rx.try_recv().is_err(), "the sender is gone");
    assert!(matches!(s.take(w, now), Take::Gone));
    assert!(s.is_unused());
    assert!(matches!(s.admit(now), Admit::Unknown));
}

#[test]
fn raising_concurrency_wakes_waiters() {
    let now = Instant::now();
    let mut s = state(1, &["a"], now);
    placed(s.admit(now));
    let (w, mut rx, _, _) = queued(s.admit(now));
    s.set_config(Some(config(2)), now);
    assert!(woken(&mut rx));
    assert_eq!(assigned(s.take(w, now)).pod, "a");
}

#[test]
fn a_spurious_take_keeps_the_place_in_line() {
    let now = Instant::now();
    let mut s = state(1, &["a"], now);
    let held = placed(s.admit(now));
    let (w, _rx, _, _) = queued(s.admit(now));
    let mut rx = match s.take(w, now) {
        Take::Waiting(rx) => rx,
        other => panic!("{other:?}"),
    };
    assert_eq!(s.waiting(), 1);
    s.release(held.instance, now);
    assert!(woken(&mut rx));
    assigned(s.take(w, now));
    assert!(matches!(s.take(99, now), Take::Gone));
}

#[test]
fn reports_time_weighted_concurrency_requests_and_idle_times() {
    let t0 = Instant::now();
    let mut s = state(1, &["a", "b"], t0);
    let ms = Duration::from_millis;
    // 0-250 ms: one in flight; 250-500: two; 500-750: two in flight
    // plus one waiting; 750-1000: one (b).
    let a = placed(s.admit(t0 + ms(0)));
    let b = placed(s.admit(t0 + ms(250)));
    let (w, _rx, _, _) = queued(s.admit(t0 + ms(500)));
    s.cancel(w, t0 + ms(750));
    s.release(a.instance, t0 + ms(750));
    let report = s.report("ns", "f", ms(1000), t0 + ms(1000));
    assert_eq!(report.namespace, "ns");
    assert_eq!(report.name, "f");
    assert_eq!(report.requests, 3);
    assert_eq!(report.waiting, 0);
    assert!(
        (report.concurrency - 1.75).abs() < 1e-9,
        "{}",
        report.concurrency
    );
    let by_pod = |pod: &str| {
        report
            .instances
            .iter()
            .find(|i| i.pod == pod)
            .cloned()
            .expect("listed")
    };
    assert_eq!(by_pod("a").idle_for_ms, Some(250));
    assert_eq!(by_pod("a").in_flight, 0);
    assert_eq!(by_pod("b").idle_for_ms, None, "busy");
    assert_eq!(by_pod("b").in_flight, 1);

    // The next interval starts empty: one in flight all along.
    let report = s.report("ns", "f", ms(1000), t0 + ms(2000));
    assert_eq!(report.requests, 0);
    assert!((report.concurrency - 1.0).abs() < 1e-9);
    s.release(b.instance, t0 + ms(2000));
    let report = s.report("ns", "f", ms(500), t0 + ms(2500));
    assert_eq!(report.concurrency, 0.0);
    assert!(report.instances.iter().all(|i| !i.is_busy()));
}

#[test]
fn an_instance_without_a_request_from_this_activator_reports_no_idle_time() {
    // A new (or restarted) activator must not claim the instance idle
    // since it learned of it: that would move its keep-alive later.
    let t0 = Instant::now();
    let mut s = state(1, &["a"], t0);
    let report = s.report("ns", "f", Duration::ZERO, t0 + Duration::from_millis(40));
    assert_eq!(report.instances[0], InstanceReport::unused("a"));
    assert_eq!(report.concurrency, 0.0);
    // Once a request of its own has ended, it knows since when.
    let slot = placed(s.admit(t0 + Duration::from_millis(50)));
    s.release(slot.instance, t0 + Duration::from_millis(60));
    let report = s.report("ns", "f", Duration::ZERO, t0 + Duration::from_millis(100));
    assert_eq!(report.instances[0].idle_for_ms, Some(40));
}

/// A function with `maxRequestsPerInstance` and ready instances `pods`.
fn limited(concurrency: u32, max_requests: u32, pods: &[&str], now: Instant) -> FunctionState {
    let mut s = state(concurrency, pods, now);
    s.set_config(
        Some(FunctionConfig {
            max_requests,
            ..config(concurrency)
        }),
        now,
    );
    s
}

#[test]
fn an_instance_gets_at_most_max_requests_from_this_activator() {
    let now = Instant::now();
    let mut s = limited(1, 2, &["a", "b"], now);
    let first = placed(s.admit(now));
    assert_eq!(first.pod, "a");
    s.release(first.instance, now);
    let second = placed(s.admit(now));
    assert_eq!(second.pod, "a");
    // The second made `a` spent: the autoscaler hears it at once.
    assert!(s.take_spent_news());
    s.release(second.instance, now);
    assert!(s.take_spent_news(), "spent and idle now: it can go");
    assert_eq!(placed(s.admit(now)).pod, "b", "a started its 2");
    let report = s.report("ns", "fn", Duration::from_secs(1), now);
    let a = report.instances.iter().find(|i| i.pod == "a").expect("a");
    assert_eq!((a.started, a.exhausted), (2, true));
    let b = report.instances.iter().find(|i| i.pod == "b").expect("b");
    assert_eq!((b.started, b.exhausted), (1, false));
}

#[test]
fn a_waiter_handed_an_instances_last_request_keeps_it() {
    let now = Instant::now();
    let mut s = limited(1, 2, &["a"], now);
    let held = placed(s.admit(now));
    let (w, mut rx, _, _) = queued(s.admit(now));
    s.release(held.instance, now);
    assert!(woken(&mut rx));
    // Taking the slot made `a` spent; the hand-over stands all the same.
    let slot = assigned(s.take(w, now));
    assert_eq!(slot.pod, "a");
    s.release(slot.instance, now);
    let (_, _, _, cold) = queued(s.admit(now));
    assert!(cold, "no instance left that takes requests: a cold start");
}

#[test]
fn the_gates_refusal_retires_an_instance_at_once() {
    let now = Instant::now();
    let mut s = limited(1, 5, &["a", "b"], now);
    let slot = placed(s.admit(now));
    assert_eq!(slot.pod, "a");
    // Another activator filled `a` up: its gate refused this one.
    s.exhausted(slot.instance);
    assert!(s.take_spent_news());
    s.release(slot.instance, now);
    assert_eq!(placed(s.readmit(now)).pod, "b");
    let report = s.report("ns", "fn", Duration::from_secs(1), now);
    let a = report.instances.iter().find(|i| i.pod == "a").expect("a");
    assert!(a.exhausted);
}

#[test]
fn without_max_requests_nothing_is_ever_spent() {
    let now = Instant::now();
    let mut s = state(1, &["a"], now);
    for _ in 0..50 {
        let slot = placed(s.admit(now));
        s.release(slot.instance, now);
    }
    assert!(!s.take_spent_news());
    let report = s.report("ns", "fn", Duration::from_secs(1), now);
    assert_eq!(
        (report.instances[0].started, report.instances[0].exhausted),
        (50, false)
    );
}
