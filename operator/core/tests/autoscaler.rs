//! The autoscaler's rules, each driven with simulated time through the
//! public API: reports into a `Autoscaler`, decisions out of it.

mod support;

use support::*;
use thaw_core::{
    ActivatorReport, FunctionView, Hold, Instance, InstanceReport, Phase, Reason, Settings,
    StatsError, decide,
};

// ---------------------------------------------------------------- from zero

#[test]
fn one_waiting_request_scales_from_zero_to_one() {
    let mut sim = Sim::new(settings());
    let mut f = sim.function();
    f.waiting = 1;
    sim.send("act-a", Some(f), |r| {
        r.poke = true;
        r.interval_ms = 20;
    });
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (1, 1));
    assert_eq!(d.summary, "scaled 0 -> 1: 1 request waiting");
    assert!(!d.panic);
}

#[test]
fn seven_waiting_at_concurrency_one_start_seven() {
    let mut sim = Sim::new(settings());
    let mut f = sim.function();
    f.waiting = 7;
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (7, 7));
    assert_eq!(d.summary, "scaled 0 -> 7: 7 requests waiting");
}

#[test]
fn waiting_requests_across_activators_add_up() {
    let mut sim = Sim::new(settings());
    for (activator, waiting) in [("act-a", 2), ("act-b", 3)] {
        let mut f = sim.function();
        f.waiting = waiting;
        sim.report(activator, f);
    }
    assert_eq!(sim.decide().desired, 5);
}

#[test]
fn scale_from_zero_is_capped_by_max_instances() {
    let mut sim = Sim::new(Settings {
        max_instances: 3,
        ..settings()
    });
    let mut f = sim.function();
    f.waiting = 7;
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (3, 3));
    assert_eq!(
        d.summary,
        "scaled 0 -> 3: 7 requests waiting (wants 7, capped at maxInstances 3)"
    );
}

#[test]
fn waiting_needs_room_at_the_hard_limit_next_to_what_is_in_flight() {
    let mut sim = Sim::new(Settings {
        concurrency: 3,
        ..settings()
    });
    let mut f = sim.function();
    f.waiting = 7;
    sim.report("act-a", f);
    assert_eq!(sim.decide().desired, 3, "ceil(7 / 3)");

    // Two full instances (3 in flight each) and 4 waiting: 10 requests need 4.
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.add_ready("hello-b", t);
    sim.advance(SEC);
    let mut f = sim.function();
    f.waiting = 4;
    f.instances = vec![
        InstanceReport::busy("hello-a", 3),
        InstanceReport::busy("hello-b", 3),
    ];
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (4, 2));
}

#[test]
fn starting_instances_count_so_waiting_does_not_create_twice() {
    let mut sim = Sim::new(settings());
    let mut f = sim.function();
    f.waiting = 2;
    sim.report("act-a", f.clone());
    let d = sim.decide();
    assert_eq!(sim.apply(&d), ["hello-1", "hello-2"]);
    sim.advance(millis(300));
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (2, 0));
    assert_eq!(d.counts.starting, 2);
    assert_eq!(d.summary, "steady at 2: 2 requests waiting");
}

#[test]
fn max_instances_caps_demand_and_the_rest_queues() {
    let mut sim = Sim::new(Settings {
        max_instances: 5,
        ..settings()
    });
    let t = sim.now();
    let busy: Vec<InstanceReport> = (1..=5)
        .map(|n| {
            sim.add_ready(&format!("hello-{n}"), t);
            InstanceReport::busy(format!("hello-{n}"), 1)
        })
        .collect();
    for _ in 0..60 {
        sim.advance(SEC);
        let mut f = sim.function();
        f.concurrency = 25.0;
        f.waiting = 20;
        f.instances = busy.clone();
        sim.report("act-a", f);
    }
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (5, 0));
    assert!(
        d.summary.contains("capped at maxInstances 5"),
        "{}",
        d.summary
    );
    assert!(d.drain.is_empty());
}

// ------------------------------------------------------------- steady state

#[test]
fn steady_concurrency_wants_ceil_of_observed_over_capacity() {
    for (concurrency, want) in [
        (0.5, 1),
        (0.7, 1),
        (0.71, 2),
        (3.5, 5),
        (7.0, 10),
        (7.01, 11),
    ] {
        let mut sim = Sim::new(settings());
        let t = sim.now();
        for n in 0..12 {
            sim.add_ready(&format!("hello-{n}"), t);
        }
        sim.steady("act-a", concurrency, 60, &[]);
        let d = sim.decide();
        assert_eq!(d.desired, want, "concurrency {concurrency}: {}", d.summary);
        assert!(!d.panic);
    }
}

#[test]
fn steady_summary_names_the_window_and_capacity() {
    let mut sim = Sim::new(settings());
    let t = sim.now();
    for id in ["hello-a", "hello-b", "hello-c"] {
        sim.add_ready(id, t);
    }
    sim.steady("act-a", 3.5, 60, &[]);
    let d = sim.decide();
    assert_eq!(
        d.summary,
        "scaled 3 -> 5: concurrency 3.50 over 1m0s, 0.70 per instance"
    );
    assert_eq!(d.create, 2);
}

#[test]
fn concurrency_is_summed_across_activators() {
    let mut sim = Sim::new(settings());
    let t = sim.now();
    for n in 0..4 {
        sim.add_ready(&format!("hello-{n}"), t);
    }
    for _ in 0..60 {
        sim.advance(SEC);
        for activator in ["act-a", "act-b"] {
            let mut f = sim.function();
            f.concurrency = 1.4;
            sim.report(activator, f);
        }
    }
    assert_eq!(sim.decide().desired, 4, "2.8 / 0.7");
}

#[test]
fn unlimited_concurrency_uses_the_soft_target() {
    let mut sim = Sim::new(Settings {
        concurrency: 0,
        ..settings()
    });
    let mut f = sim.function();
    f.waiting = 5;
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!(
        d.desired, 1,
        "waiting with no instance: one, it takes them all"
    );

    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.add_ready("hello-b", t);
    sim.steady("act-a", 140.0, 60, &[]);
    let d = sim.decide();
    assert_eq!(d.desired, 2, "140 / (100 × 0.7)");
    sim.steady("act-a", 141.0, 60, &[]);
    assert_eq!(sim.decide().desired, 3);
}

#[test]
fn target_one_packs_instances_full() {
    let mut sim = Sim::new(Settings {
        concurrency: 10,
        target: 1.0,
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.add_ready("hello-b", t);
    sim.steady("act-a", 20.0, 60, &[]);
    assert_eq!(sim.decide().desired, 2);
}

// -------------------------------------------------------------------- panic

#[test]
fn panic_starts_on_a_burst_holds_for_a_stable_window_then_ends() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(1),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.add_ready("hello-b", t);
    sim.steady("act-a", 1.0, 60, &[]);
    let d = sim.decide();
    assert_eq!((d.desired, d.panic), (2, false));

    // Five seconds of 7 concurrent requests: the panic window wants 9
    // (35 / 6 / 0.7 -> 9) >= 2 × 2 ready.
    sim.steady("act-a", 7.0, 5, &[]);
    let d = sim.decide();
    assert!(d.panic, "{}", d.summary);
    assert!(
        d.summary.starts_with("scaled 2 -> 9: panic: concurrency"),
        "{}",
        d.summary
    );
    let mut trigger = d.memory.panic.unwrap().last_trigger;
    assert_eq!(trigger, sim.now());

    // Load drops back to a trickle; panic keeps desired at its peak and
    // reaps nothing, even an instance idle past its keep-alive. The panic
    // window stays over the threshold for a few more seconds, each a new
    // trigger.
    let pods: Vec<(&str, std::time::Instant)> = vec![("hello-a", t), ("hello-b", t)];
    while sim.now() + SEC < trigger + secs(60) {
        sim.advance(SEC);
        sim.report_idle("act-a", &pods, 0.2);
        let d = sim.decide();
        assert!(d.panic);
        assert_eq!(d.desired, 9);
        assert!(d.drain.is_empty());
        assert_eq!(expiry(&d, "hello-a").held, Some(Hold::Panic));
        trigger = d.memory.panic.unwrap().last_trigger;
        assert_eq!(d.next_wakeup, Some(trigger + secs(60)));
    }
    assert!(
        trigger > sim.now() - secs(60),
        "retriggered after the burst"
    );
    sim.advance(trigger + secs(60) - MS - sim.now());
    let d = sim.decide();
    assert!(d.panic, "59.999s after the last trigger");
    sim.advance(MS);
    let d = sim.decide();
    assert!(!d.panic, "60s after the last trigger: {}", d.summary);
    assert_eq!(d.desired, 1, "the trickle still wants one instance");
    assert_eq!(
        drained(&d).len(),
        1,
        "the other, idle past keep-alive, goes"
    );
}

#[test]
fn traffic_stopping_ends_panic_and_every_instance_lives_exactly_its_keep_alive() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(5),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.add_ready("hello-b", t);
    sim.steady("act-a", 7.0, 5, &[]);
    assert!(sim.decide().panic);
    // The burst ends: a last request on hello-a, an earlier one on hello-b.
    let last_a = sim.now();
    let last_b = last_a - secs(2);
    sim.advance(SEC);
    sim.report_idle("act-a", &[("hello-a", last_a), ("hello-b", last_b)], 0.0);
    let d = sim.decide();
    assert!(!d.panic, "no traffic, no panic: {}", d.summary);
    assert_eq!(
        d.desired, 0,
        "a window remembering the burst creates nothing"
    );
    assert_eq!(expiry(&d, "hello-a").expires_at, Some(last_a + secs(5)));
    assert_eq!(expiry(&d, "hello-b").expires_at, Some(last_b + secs(5)));
    // Each goes at its own expiry, not a moment before.
    sim.advance(last_b + secs(5) - MS - sim.now());
    sim.report_idle("act-a", &[("hello-a", last_a), ("hello-b", last_b)], 0.0);
    assert!(sim.decide().drain.is_empty());
    sim.advance(MS);
    assert_eq!(drained(&sim.decide()), ["hello-b"]);
}

#[test]
fn panic_is_extended_by_every_new_trigger_and_desired_only_grows() {
    let mut sim = Sim::new(settings());
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.steady("act-a", 3.0, 6, &[]);
    let d = sim.decide();
    assert!(d.panic);
    assert_eq!(d.desired, 5, "ceil(3 / 0.7)");
    // Still over threshold 30 s later (5 wanted >= 2 × 1 ready): the panic
    // is extended and desired never shrinks.
    sim.steady("act-a", 1.5, 30, &[]);
    let d = sim.decide();
    assert!(d.panic);
    assert_eq!(d.desired, 5);
    let trigger = sim.now();
    // Calm afterwards, with 5 ready: exits 60 s after the last trigger.
    for n in 1..=4 {
        sim.add_ready(&format!("hello-{n}"), t);
    }
    sim.steady("act-a", 0.5, 59, &[]);
    assert!(sim.decide().panic);
    sim.advance(trigger + secs(60) - sim.now());
    sim.report_nothing("act-a");
    let d = sim.decide();
    assert!(!d.panic);
    assert_eq!(d.memory.panic, None);
}

#[test]
fn no_panic_when_ready_instances_keep_up() {
    let mut sim = Sim::new(settings());
    let t = sim.now();
    for n in 0..5 {
        sim.add_ready(&format!("hello-{n}"), t);
    }
    // Wants 9 < 2 × 5: a scale-up, not a panic.
    sim.steady("act-a", 0.0, 54, &[]);
    sim.steady("act-a", 6.0, 6, &[]);
    let d = sim.decide();
    assert!(!d.panic);
    assert_eq!(
        d.desired, 1,
        "the stable window has barely moved: 36 / 60 / 0.7"
    );
}

// --------------------------------------------------------------- keep-alive

#[test]
fn keep_alive_reaps_exactly_at_keep_alive_and_not_a_millisecond_before() {
    let mut sim = Sim::new(settings());
    let ready = sim.now();
    sim.add_ready("hello-a", ready);
    sim.advance(secs(2));
    let idle_since = sim.now();
    // Reports every second for almost five minutes: idle since idle_since.
    while sim.now() + SEC < idle_since + secs(300) {
        sim.advance(SEC);
        sim.report_idle("act-a", &[("hello-a", idle_since)], 0.0);
    }
    sim.advance(idle_since + secs(300) - MS - sim.now());
    let d = sim.decide();
    assert!(d.drain.is_empty(), "{}", d.summary);
    let e = expiry(&d, "hello-a");
    assert_eq!(e.idle_since, Some(idle_since));
    assert_eq!(e.expires_at, Some(idle_since + secs(300)));
    assert_eq!(e.held, None);
    assert_eq!(d.next_wakeup, Some(idle_since + secs(300)));

    sim.advance(MS);
    let d = sim.decide();
    assert_eq!(drained(&d), ["hello-a"]);
    assert_eq!(
        d.drain[0].reason,
        Reason::KeepAlive {
            idle: secs(300),
            keep_alive: secs(300)
        }
    );
    assert_eq!(
        d.drain[0].to_string(),
        "instance hello-a idle 5m0s, keep-alive 5m0s"
    );
    assert_eq!(
        d.summary,
        "1 live, desired 0: no demand; drain instance hello-a idle 5m0s, keep-alive 5m0s"
    );
    assert!(d.expiries.is_empty());
}

#[test]
fn an_instance_no_activator_reports_is_idle_since_it_became_ready() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(60),
        ..settings()
    });
    let ready = sim.now();
    sim.add_ready("hello-a", ready);
    sim.steady("act-a", 0.0, 59, &[]);
    let d = sim.decide();
    assert_eq!(expiry(&d, "hello-a").idle_since, Some(ready));
    assert!(d.drain.is_empty());
    sim.steady("act-a", 0.0, 1, &[]);
    assert_eq!(drained(&sim.decide()), ["hello-a"]);
}

#[test]
fn idle_time_before_the_instance_was_ready_does_not_count() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(60),
        ..settings()
    });
    let ready = sim.now();
    sim.add_ready("hello-a", ready);
    sim.advance(SEC);
    // The activator claims 10 minutes of idleness (it knew the pod earlier).
    let mut f = sim.function();
    f.instances = vec![InstanceReport::idle("hello-a", 600_000)];
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!(expiry(&d, "hello-a").idle_since, Some(ready));
    assert!(d.drain.is_empty());
}

#[test]
fn a_busy_instance_is_never_reaped_even_when_the_windows_say_zero() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(1),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    // Ten minutes of one long request; the activator's average says 0 (as a
    // buggy or idle-looking report could).
    for _ in 0..600 {
        sim.advance(SEC);
        let mut f = sim.function();
        f.instances = vec![InstanceReport::busy("hello-a", 1)];
        sim.report("act-a", f);
        let d = sim.decide();
        assert!(d.drain.is_empty());
        let e = expiry(&d, "hello-a");
        assert_eq!((e.in_flight, e.idle_since, e.expires_at), (1, None, None));
        assert_eq!(d.desired, 1, "a busy instance counts: {}", d.summary);
    }
    // It finishes: idle from the last time it was seen busy.
    let last_busy = sim.now();
    sim.advance(SEC);
    sim.report_idle("act-a", &[("hello-a", last_busy + millis(500))], 0.0);
    let d = sim.decide();
    assert!(d.drain.is_empty(), "idle for 500ms only");
    assert_eq!(
        expiry(&d, "hello-a").idle_since,
        Some(last_busy + millis(500))
    );
    sim.advance(millis(500));
    assert_eq!(drained(&sim.decide()), ["hello-a"]);
}

#[test]
fn reaping_takes_the_longest_idle_first_and_stops_at_desired() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(10),
        ..settings()
    });
    let t = sim.now();
    for id in ["hello-a", "hello-b", "hello-c", "hello-d"] {
        sim.add_ready(id, t);
    }
    sim.steady("act-a", 1.0, 59, &[]);
    sim.advance(SEC);
    let now = sim.now();
    // a idle 30 s, b idle 50 s, c idle 20 s, d busy; 1.0 concurrency wants 2.
    let mut f = sim.function();
    f.concurrency = 1.0;
    f.instances = vec![
        InstanceReport::idle("hello-a", 30_000),
        InstanceReport::idle("hello-b", 50_000),
        InstanceReport::idle("hello-c", 20_000),
        InstanceReport::busy("hello-d", 1),
    ];
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!(d.desired, 2);
    assert_eq!(drained(&d), ["hello-b", "hello-a"]);
    let c = expiry(&d, "hello-c");
    assert_eq!(c.idle_since, Some(now - secs(20)));
    assert_eq!(c.held, Some(Hold::Demand));
    assert_eq!(d.counts.ready, 4);
    assert_eq!((d.counts.busy, d.counts.idle), (1, 3));
}

#[test]
fn a_starting_instance_is_never_reaped_nor_counted_as_ready_capacity() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(5),
        min_instances: 1,
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.add_starting("hello-b");
    sim.steady("act-a", 0.0, 30, &[]);
    let d = sim.decide();
    assert!(
        d.drain.is_empty(),
        "the only ready instance stays: {}",
        d.summary
    );
    assert_eq!(expiry(&d, "hello-a").held, Some(Hold::MinInstances));
    sim.mark_ready("hello-b");
    let d = sim.decide();
    assert_eq!(drained(&d), ["hello-a"], "now the ready one can go");
}

#[test]
fn from_zero_to_zero() {
    // Scale from zero, serve, go idle, be destroyed exactly at keep-alive.
    let mut sim = Sim::new(Settings {
        keep_alive: secs(120),
        ..settings()
    });
    let mut f = sim.function();
    f.waiting = 1;
    sim.send("act-a", Some(f), |r| r.poke = true);
    let d = sim.decide();
    assert_eq!(sim.apply(&d), ["hello-1"]);
    sim.advance(millis(800));
    sim.mark_ready("hello-1");
    // One request for 3 s.
    for _ in 0..3 {
        sim.advance(SEC);
        let mut f = sim.function();
        f.concurrency = 1.0;
        f.requests = 1;
        f.instances = vec![InstanceReport::busy("hello-1", 1)];
        sim.report("act-a", f);
        let d = sim.decide();
        assert_eq!((d.desired, d.create), (1, 0), "{}", d.summary);
    }
    assert_eq!(sim.autoscaler.last_request(&sim.key), Some(sim.now()));
    let idle_from = sim.now();
    let reaped_at = loop {
        sim.advance(SEC);
        sim.report_idle("act-a", &[("hello-1", idle_from)], 0.0);
        let d = sim.decide();
        sim.apply(&d);
        if !d.drain.is_empty() {
            assert_eq!(drained(&d), ["hello-1"]);
            break sim.now();
        }
        assert_eq!(
            expiry(&d, "hello-1").expires_at,
            Some(idle_from + secs(120))
        );
        assert!(sim.now() < idle_from + secs(600), "never reaped");
    };
    assert_eq!(reaped_at, idle_from + secs(120));
    // The activator confirms the drain; the instance is deleted.
    sim.advance(SEC);
    let mut drained_report = InstanceReport::idle("hello-1", 121_000);
    drained_report.draining = true;
    let mut f = sim.function();
    f.instances = vec![drained_report];
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!(deleted(&d), ["hello-1"]);
    sim.apply(&d);
    assert!(sim.pool.is_empty());
    assert_eq!(sim.decide().summary, "steady at 0: no demand");
}

// ------------------------------------------------------------- floors, warm

#[test]
fn min_instances_keep_instances_past_keep_alive() {
    let mut sim = Sim::new(Settings {
        min_instances: 1,
        keep_alive: secs(10),
        ..settings()
    });
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (1, 1));
    assert_eq!(d.summary, "scaled 0 -> 1: minInstances 1");

    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.add_ready("hello-b", t + SEC);
    sim.steady("act-a", 0.0, 60, &[]);
    let d = sim.decide();
    assert_eq!(drained(&d), ["hello-a"], "longest idle goes, one stays");
    let b = expiry(&d, "hello-b");
    assert_eq!(b.held, Some(Hold::MinInstances));
    assert_eq!(
        b.expires_at, None,
        "a kept instance is not announced as expiring"
    );
    assert_eq!(d.next_wakeup, None, "nothing changes without new stats");
}

#[test]
fn an_instance_the_floor_keeps_has_no_expiry_even_before_keep_alive() {
    let mut sim = Sim::new(Settings {
        min_instances: 1,
        keep_alive: secs(10),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.add_ready("hello-b", t + SEC);
    sim.report_idle("act-a", &[("hello-a", t), ("hello-b", t + SEC)], 0.0);
    let d = sim.decide();
    // hello-a goes first at its expiry; hello-b is the one minInstances keeps.
    let a = expiry(&d, "hello-a");
    assert_eq!((a.held, a.expires_at), (None, Some(t + secs(10))));
    let b = expiry(&d, "hello-b");
    assert_eq!((b.held, b.expires_at), (Some(Hold::MinInstances), None));
    assert_eq!(b.idle_since, Some(t + SEC));
}

#[test]
fn warm_instances_alone_keep_one_idle_instance() {
    let mut sim = Sim::new(Settings {
        warm_instances: 1,
        keep_alive: secs(10),
        ..settings()
    });
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (1, 1));
    assert_eq!(d.summary, "scaled 0 -> 1: warmInstances 1");
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.steady("act-a", 0.0, 60, &[]);
    let d = sim.decide();
    assert!(d.drain.is_empty());
    assert_eq!(expiry(&d, "hello-a").held, Some(Hold::WarmInstances));
}

#[test]
fn warm_instances_sit_on_top_of_busy_ones() {
    let mut sim = Sim::new(Settings {
        warm_instances: 1,
        keep_alive: secs(10),
        ..settings()
    });
    let t = sim.now();
    for id in ["hello-a", "hello-b", "hello-c", "hello-d"] {
        sim.add_ready(id, t);
    }
    let busy = [
        InstanceReport::busy("hello-a", 1),
        InstanceReport::busy("hello-b", 1),
    ];
    sim.steady("act-a", 0.0, 60, &busy);
    let d = sim.decide();
    assert_eq!(d.desired, 3);
    assert_eq!(
        d.summary.split(';').next().unwrap(),
        "4 live, desired 3: 2 busy + warmInstances 1"
    );
    assert_eq!(drained(&d), ["hello-c"], "ties go by creation, then id");
    assert_eq!(expiry(&d, "hello-d").held, Some(Hold::WarmInstances));

    // A third one gets busy: one more warm instance is created.
    let busy = [
        InstanceReport::busy("hello-a", 1),
        InstanceReport::busy("hello-b", 1),
        InstanceReport::busy("hello-d", 1),
    ];
    sim.set_phase("hello-c", Phase::Draining { since: sim.now() });
    sim.steady("act-a", 0.0, 1, &busy);
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (4, 1));
}

#[test]
fn floors_are_capped_at_max_instances() {
    let mut sim = Sim::new(Settings {
        min_instances: 2,
        warm_instances: 2,
        max_instances: 3,
        ..settings()
    });
    let d = sim.decide();
    assert_eq!(d.desired, 3);
}

// ------------------------------------------------------ partial information

#[test]
fn a_silent_activator_blocks_reaping_but_not_scale_up() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(10),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.report_idle("act-a", &[("hello-a", t)], 0.0);
    sim.report_idle("act-b", &[("hello-a", t)], 0.0);
    let b_last = sim.now();
    // b goes quiet; a keeps reporting, and a burst of waiting requests comes.
    sim.advance(secs(3));
    sim.report_idle("act-a", &[("hello-a", t)], 0.0);
    let d = sim.decide();
    assert!(d.silent.is_empty(), "3 s is still fresh");
    sim.advance(MS);
    let mut f = sim.function();
    f.waiting = 3;
    f.instances = vec![InstanceReport::idle("hello-a", 3_001)];
    sim.report("act-a", f);
    sim.advance(secs(20));
    sim.report_idle("act-a", &[("hello-a", t)], 0.0);
    let mut f = sim.function();
    f.waiting = 3;
    f.instances = vec![InstanceReport::idle("hello-a", 23_001)];
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!(d.silent, ["act-b"]);
    assert_eq!(
        (d.desired, d.create),
        (3, 2),
        "scale-up goes on: {}",
        d.summary
    );
    assert!(
        d.drain.is_empty(),
        "idle 23 s past a 10 s keep-alive, yet kept"
    );
    let forget_at = b_last + secs(30) + secs(10);
    let e = expiry(&d, "hello-a");
    assert_eq!(e.idle_since, Some(forget_at));
    assert_eq!(e.expires_at, Some(forget_at + secs(10)));
    assert_eq!(d.next_wakeup, Some(forget_at));
    assert!(
        d.summary
            .contains("activator act-b silent 23.001s: reaping paused"),
        "{}",
        d.summary
    );
}

#[test]
fn a_forgotten_activator_stops_blocking_and_idle_clocks_restart_at_its_forget_time() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(10),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.add_ready("hello-b", t);
    // b had a request in flight on hello-b when it went silent.
    let mut f = sim.function();
    f.instances = vec![InstanceReport::busy("hello-b", 1)];
    sim.report("act-b", f);
    let b_last = sim.now();
    let forget_at = b_last + secs(40);
    let mut last = None;
    while sim.now() + SEC <= forget_at {
        sim.advance(SEC);
        sim.report_idle("act-a", &[("hello-a", t), ("hello-b", t)], 0.0);
        let d = sim.decide();
        assert!(d.drain.is_empty());
        assert_eq!(
            expiry(&d, "hello-b").idle_since,
            None,
            "busy on b until forgotten"
        );
        last = Some(d);
    }
    assert_eq!(last.unwrap().silent, ["act-b"]);
    sim.advance(MS);
    sim.report_idle("act-a", &[("hello-a", t), ("hello-b", t)], 0.0);
    let d = sim.decide();
    assert!(d.silent.is_empty(), "forgotten: {}", d.summary);
    assert_eq!(expiry(&d, "hello-b").idle_since, Some(forget_at));
    assert_eq!(expiry(&d, "hello-a").expires_at, Some(forget_at + secs(10)));
    assert_eq!(d.next_wakeup, Some(forget_at + secs(10)));
    assert!(d.drain.is_empty());

    while sim.now() + SEC < forget_at + secs(10) {
        sim.advance(SEC);
        sim.report_idle("act-a", &[("hello-a", t), ("hello-b", t)], 0.0);
        assert!(sim.decide().drain.is_empty());
    }
    sim.advance(forget_at + secs(10) - sim.now());
    let d = sim.decide();
    assert_eq!(drained(&d), ["hello-a", "hello-b"]);
}

#[test]
fn instances_ready_after_a_silent_activator_fenced_itself_are_not_held() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(5),
        ..settings()
    });
    sim.report_nothing("act-b");
    let b_last = sim.now();
    // hello-a becomes ready after b stopped placing requests (3 s later).
    sim.advance(secs(4));
    let ready = sim.now();
    sim.add_ready("hello-a", ready);
    sim.steady("act-a", 0.0, 5, &[]);
    let d = sim.decide();
    assert_eq!(d.silent, ["act-b"]);
    assert_eq!(drained(&d), ["hello-a"], "b cannot have used it");
    assert!(b_last < ready);
}

#[test]
fn an_expected_activator_that_never_reports_blocks_reaping() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(5),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    let now = sim.now();
    sim.autoscaler.expect_activator("act-b", now);
    sim.steady("act-a", 0.0, 10, &[]);
    let d = sim.decide();
    assert_eq!(d.silent, ["act-b"]);
    assert!(d.drain.is_empty());
    assert_eq!(
        expiry(&d, "hello-a").expires_at,
        Some(now + secs(40) + secs(5))
    );
}

#[test]
fn a_leaving_activator_is_forgotten_at_once() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(5),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.send("act-b", None, |r| r.leaving = true);
    sim.steady("act-a", 0.0, 5, &[]);
    let d = sim.decide();
    assert!(d.silent.is_empty());
    assert_eq!(drained(&d), ["hello-a"]);
}

#[test]
fn a_fresh_operator_observes_before_reaping() {
    let mut sim = Sim::fresh_operator(Settings {
        keep_alive: secs(5),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.advance(secs(1));
    sim.report_nothing("act-a");
    // At 5.001 s the observing hold (3 s) is over, but act-a has been
    // silent for 4.001 s: reaping waits for it.
    sim.advance(secs(4) + MS);
    let d = sim.decide();
    assert_eq!(d.silent, ["act-a"]);
    assert!(d.drain.is_empty());
    sim.report_nothing("act-a");
    let d = sim.decide();
    assert_eq!(drained(&d), ["hello-a"], "heard again, nothing on hello-a");

    let mut sim = Sim::fresh_operator(Settings {
        keep_alive: secs(1),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.advance(secs(2));
    sim.report_nothing("act-a");
    let d = sim.decide();
    assert!(d.drain.is_empty());
    assert_eq!(expiry(&d, "hello-a").held, Some(Hold::Observing));
    assert_eq!(d.next_wakeup, Some(sim.started + secs(3)));
    sim.advance(SEC);
    assert_eq!(drained(&sim.decide()), ["hello-a"]);
}

// ------------------------------------------------------- merging instances

#[test]
fn idle_since_is_the_latest_across_activators_and_busy_anywhere_is_busy() {
    let mut sim = Sim::new(settings());
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.advance(secs(30));
    let now = sim.now();
    let mut f = sim.function();
    f.instances = vec![InstanceReport::idle("hello-a", 10_000)];
    sim.report("act-a", f);
    let mut f = sim.function();
    f.instances = vec![InstanceReport::idle("hello-a", 2_000)];
    sim.report("act-b", f);
    let d = sim.decide();
    let e = expiry(&d, "hello-a");
    assert_eq!(e.idle_since, Some(now - secs(2)));
    assert_eq!(e.expires_at, Some(now - secs(2) + secs(300)));

    sim.advance(SEC);
    let mut f = sim.function();
    f.instances = vec![InstanceReport::busy("hello-a", 2)];
    sim.report("act-a", f);
    let mut f = sim.function();
    f.instances = vec![InstanceReport::idle("hello-a", 3_000)];
    sim.report("act-b", f);
    let d = sim.decide();
    let e = expiry(&d, "hello-a");
    assert_eq!((e.in_flight, e.idle_since, e.expires_at), (2, None, None));
    assert_eq!((d.counts.busy, d.counts.idle), (1, 0));

    let mut f = sim.function();
    f.instances = vec![InstanceReport::busy("hello-a", 1)];
    sim.report("act-b", f);
    assert_eq!(expiry(&sim.decide(), "hello-a").in_flight, 3, "summed");
}

#[test]
fn an_activator_that_stops_listing_an_instance_does_not_make_it_older() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(60),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.advance(secs(100));
    let mut f = sim.function();
    f.instances = vec![InstanceReport::busy("hello-a", 1)];
    sim.report("act-a", f);
    let busy_at = sim.now();
    sim.advance(SEC);
    sim.report_nothing("act-a");
    let d = sim.decide();
    assert_eq!(expiry(&d, "hello-a").idle_since, Some(busy_at));
}

// ------------------------------------------------- activator restarts

/// A Function with `keepAlive: 20s` and one ready instance that `act-a`
/// served one request on, ending at the returned instant; `act-a` has
/// reported it idle since, up to 6 s after the request.
fn served_once(sim: &mut Sim) -> std::time::Instant {
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.advance(SEC);
    let mut f = sim.function();
    f.requests = 1;
    f.concurrency = 0.5;
    f.instances = vec![InstanceReport::busy("hello-a", 1)];
    sim.report("act-a", f);
    sim.advance(millis(500));
    let last = sim.now();
    for _ in 0..6 {
        sim.advance(SEC);
        let idle = u64::try_from((sim.now() - last).as_millis()).expect("fits");
        let mut f = sim.function();
        f.instances = vec![InstanceReport::idle("hello-a", idle)];
        sim.report("act-a", f);
    }
    last
}

fn keep_alive_20s() -> Settings {
    Settings {
        keep_alive: secs(20),
        ..settings()
    }
}

/// The restarted `act-a` reports every second, knowing the instance but
/// having had no request on it, until `until`.
fn report_unused_until(sim: &mut Sim, until: std::time::Instant) {
    while sim.now() + SEC <= until {
        sim.advance(SEC);
        let mut f = sim.function();
        f.instances = vec![InstanceReport::unused("hello-a")];
        sim.report("act-a", f);
    }
    let rest = until.saturating_duration_since(sim.now());
    sim.advance(rest);
}

#[test]
fn instance_whose_activator_restarted_after_its_last_request_is_reaped_keep_alive_after_that_request()
 {
    for graceful in [true, false] {
        let mut sim = Sim::new(keep_alive_20s());
        let last = served_once(&mut sim);
        if graceful {
            let mut f = sim.function();
            let idle = u64::try_from((sim.now() - last).as_millis()).expect("fits");
            f.instances = vec![InstanceReport::idle("hello-a", idle)];
            sim.leave("act-a", Some(f));
        }
        // The new process starts 1 s later (a crash: no goodbye).
        sim.advance(SEC);
        sim.restart("act-a");
        report_unused_until(&mut sim, last + secs(20) - MS);
        let d = sim.decide();
        assert!(d.drain.is_empty(), "graceful {graceful}: {}", d.summary);
        sim.advance(MS);
        let d = sim.decide();
        assert_eq!(
            drained(&d),
            ["hello-a"],
            "graceful {graceful}: {}",
            d.summary
        );
        assert_eq!(
            d.drain[0].reason,
            Reason::KeepAlive {
                idle: secs(20),
                keep_alive: secs(20)
            }
        );
    }
}

#[test]
fn expires_at_computed_before_the_restart_is_unchanged_after_it() {
    // A graceful restart, a quick crash, and a crash long enough for the
    // old process to go silent (reaping pauses meanwhile, but once the new
    // process reports, the expiry is what it was).
    for (graceful, down) in [(true, SEC), (false, SEC), (false, secs(5))] {
        let mut sim = Sim::new(keep_alive_20s());
        let last = served_once(&mut sim);
        let before = sim.decide();
        assert_eq!(expiry(&before, "hello-a").expires_at, Some(last + secs(20)));
        if graceful {
            sim.leave("act-a", None);
        }
        sim.advance(down);
        sim.restart("act-a");
        let mut f = sim.function();
        f.instances = vec![InstanceReport::unused("hello-a")];
        sim.report("act-a", f);
        let after = sim.decide();
        assert_eq!(
            expiry(&after, "hello-a").expires_at,
            expiry(&before, "hello-a").expires_at,
            "graceful {graceful}, down {down:?}: {}",
            after.summary
        );
        assert!(after.silent.is_empty());
    }
}

#[test]
fn a_new_activator_beside_the_old_one_does_not_move_the_idle_clock() {
    let mut sim = Sim::new(keep_alive_20s());
    let last = served_once(&mut sim);
    let mut f = sim.function();
    f.instances = vec![InstanceReport::unused("hello-a")];
    sim.report("act-b", f);
    assert_eq!(
        expiry(&sim.decide(), "hello-a").expires_at,
        Some(last + secs(20))
    );
}

#[test]
fn a_restart_that_cut_requests_off_counts_them_ended_when_it_is_seen() {
    let mut sim = Sim::new(keep_alive_20s());
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.advance(SEC);
    let mut f = sim.function();
    f.instances = vec![InstanceReport::busy("hello-a", 1)];
    sim.report("act-a", f);
    // It crashes with the request in flight; the new process reports 2 s on.
    sim.advance(secs(2));
    sim.restart("act-a");
    let back = sim.now();
    let mut f = sim.function();
    f.instances = vec![InstanceReport::unused("hello-a")];
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!(expiry(&d, "hello-a").idle_since, Some(back));
}

// ----------------------------------------------------------------- draining

fn draining_report(
    sim: &Sim,
    pod: &str,
    in_flight: u32,
    draining: bool,
) -> thaw_core::FunctionReport {
    let mut f = sim.function();
    let mut i = if in_flight > 0 {
        InstanceReport::busy(pod, in_flight)
    } else {
        InstanceReport::idle(pod, 1_000)
    };
    i.draining = draining;
    f.instances = vec![i];
    f
}

#[test]
fn a_draining_instance_is_deleted_once_every_activator_confirms() {
    let mut sim = Sim::new(settings());
    let t = sim.now();
    sim.pool
        .push(Instance::new("hello-a", Phase::Draining { since: t }, t));

    let f = draining_report(&sim, "hello-a", 0, true);
    sim.report("act-a", f);
    let f = draining_report(&sim, "hello-a", 0, false);
    sim.report("act-b", f);
    let d = sim.decide();
    assert!(d.delete.is_empty(), "b has not seen the drain yet");
    assert_eq!(d.next_wakeup, Some(t + secs(40)));
    assert_eq!(d.counts.draining, 1);

    sim.advance(SEC);
    let f = draining_report(&sim, "hello-a", 1, true);
    sim.report("act-b", f);
    assert!(
        sim.decide().delete.is_empty(),
        "b still has a request on it"
    );

    sim.advance(SEC);
    let f = draining_report(&sim, "hello-a", 0, true);
    sim.report("act-b", f);
    let d = sim.decide();
    assert_eq!(deleted(&d), ["hello-a"]);
    assert_eq!(
        d.delete[0].reason,
        Reason::Drained {
            draining_for: secs(2)
        }
    );
    assert!(
        d.summary.ends_with(
            "delete instance hello-a drained after 2s: every activator confirmed nothing in flight"
        ),
        "{}",
        d.summary
    );
}

#[test]
fn an_activator_that_does_not_know_a_draining_instance_confirms_it() {
    let mut sim = Sim::new(settings());
    let t = sim.now();
    sim.pool
        .push(Instance::new("hello-a", Phase::Draining { since: t }, t));
    let d = sim.decide();
    assert_eq!(deleted(&d), ["hello-a"], "no activator at all");

    sim.report_nothing("act-a");
    let f = draining_report(&sim, "hello-a", 0, true);
    sim.report("act-b", f);
    let mut f = sim.function();
    f.instances = vec![InstanceReport::idle("hello-other", 5)];
    sim.report("act-c", f);
    assert_eq!(deleted(&sim.decide()), ["hello-a"]);
}

#[test]
fn a_draining_instance_is_deleted_after_timeout_and_margin_regardless() {
    let mut sim = Sim::new(settings());
    let t = sim.now();
    sim.pool
        .push(Instance::new("hello-a", Phase::Draining { since: t }, t));
    let mut d = None;
    while sim.now() + SEC < t + secs(40) {
        sim.advance(SEC);
        let f = draining_report(&sim, "hello-a", 1, true);
        sim.report("act-a", f);
        let decision = sim.decide();
        assert!(decision.delete.is_empty());
        d = Some(decision);
    }
    assert_eq!(d.unwrap().next_wakeup, Some(t + secs(40)));
    sim.advance(t + secs(40) - MS - sim.now());
    assert!(sim.decide().delete.is_empty());
    sim.advance(MS);
    let d = sim.decide();
    assert_eq!(
        d.delete[0].reason,
        Reason::DrainTimeout {
            draining_for: secs(40),
            limit: secs(40)
        }
    );
}

#[test]
fn a_silent_activator_must_have_confirmed_too() {
    let mut sim = Sim::new(settings());
    let t = sim.now();
    sim.pool
        .push(Instance::new("hello-a", Phase::Draining { since: t }, t));
    let f = draining_report(&sim, "hello-a", 0, false);
    sim.report("act-b", f);
    sim.advance(secs(5));
    let f = draining_report(&sim, "hello-a", 0, true);
    sim.report("act-a", f);
    assert!(
        sim.decide().delete.is_empty(),
        "b, silent, never saw the drain"
    );

    // A silent activator that had confirmed before going silent is enough.
    let mut sim = Sim::new(settings());
    let t = sim.now();
    sim.pool
        .push(Instance::new("hello-a", Phase::Draining { since: t }, t));
    let f = draining_report(&sim, "hello-a", 0, true);
    sim.report("act-b", f);
    sim.advance(secs(5));
    let f = draining_report(&sim, "hello-a", 0, true);
    sim.report("act-a", f);
    assert_eq!(deleted(&sim.decide()), ["hello-a"]);
}

// ------------------------------------------------------------------ rollout

#[test]
fn rollout_replaces_outdated_instances_once_a_current_one_is_ready() {
    let mut sim = Sim::new(settings());
    let t = sim.now();
    sim.pool
        .push(Instance::new("old-a", Phase::Ready { since: t }, t).outdated());
    sim.pool
        .push(Instance::new("old-b", Phase::Ready { since: t }, t).outdated());
    sim.pool
        .push(Instance::new("old-c", Phase::Starting, t).outdated());
    let busy = [
        InstanceReport::busy("old-a", 1),
        InstanceReport::idle("old-b", 1_000),
    ];
    sim.steady("act-a", 0.0, 1, &busy);
    let d = sim.decide();
    assert_eq!(
        (d.desired, d.create),
        (1, 1),
        "desired counts current instances"
    );
    assert!(d.drain.is_empty(), "no current instance ready yet");
    let created = sim.apply(&d);

    sim.steady("act-a", 0.0, 1, &busy);
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (1, 0));
    assert!(d.drain.is_empty());

    sim.mark_ready(&created[0]);
    sim.steady("act-a", 0.0, 1, &busy);
    let d = sim.decide();
    assert_eq!(drained(&d), ["old-a", "old-b", "old-c"]);
    assert!(d.drain.iter().all(|a| a.reason == Reason::Rollout));
    assert!(
        d.summary
            .contains("drain instance old-a replaced by an instance of the current spec")
    );
}

#[test]
fn rollout_keeps_the_busiest_outdated_instances_until_enough_current_ones_are_ready() {
    let mut sim = Sim::new(Settings {
        min_instances: 3,
        ..settings()
    });
    let t = sim.now();
    for id in ["old-a", "old-b", "old-c"] {
        sim.pool
            .push(Instance::new(id, Phase::Ready { since: t }, t).outdated());
    }
    sim.add_ready("new-a", t);
    sim.add_starting("new-b");
    sim.add_starting("new-c");
    let busy = [
        InstanceReport::idle("old-a", 1_000),
        InstanceReport::busy("old-b", 1),
        InstanceReport::busy("old-c", 2),
    ];
    sim.steady("act-a", 0.0, 1, &busy);
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (3, 0));
    assert_eq!(
        drained(&d),
        ["old-a"],
        "two old ones cover the two starting"
    );
    sim.apply(&d);

    sim.mark_ready("new-b");
    sim.steady("act-a", 0.0, 1, &busy);
    assert_eq!(drained(&sim.decide()), ["old-b"]);
}

#[test]
fn idle_outdated_instances_expire_like_any_other() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(10),
        ..settings()
    });
    let t = sim.now();
    sim.pool
        .push(Instance::new("old-a", Phase::Ready { since: t }, t).outdated());
    sim.steady("act-a", 0.0, 9, &[]);
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (0, 0));
    assert!(d.drain.is_empty());
    sim.steady("act-a", 0.0, 1, &[]);
    assert_eq!(drained(&sim.decide()), ["old-a"]);
}

// --------------------------------------------------------------- the rest

#[test]
fn reports_of_an_unknown_version_are_refused() {
    let mut sim = Sim::new(settings());
    let mut report = ActivatorReport::new("act-a", 1, 1, 1000);
    report.version = 4;
    let now = sim.now();
    assert_eq!(
        sim.autoscaler.ingest(report, now),
        Err(StatsError::UnsupportedVersion { version: 4 })
    );
    let json = r#"{"version":9,"activator":"act-a","sequence":1,"intervalMs":1000}"#;
    let error = serde_json::from_str::<ActivatorReport>(json).unwrap_err();
    assert!(
        error.to_string().contains("version 9 is not supported"),
        "{error}"
    );
    assert_eq!(sim.decide().summary, "steady at 0: no demand");
}

#[test]
fn next_wakeup_is_the_earliest_expiry() {
    let mut sim = Sim::new(Settings {
        keep_alive: secs(60),
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.add_ready("hello-b", t);
    sim.advance(secs(10));
    let now = sim.now();
    let mut f = sim.function();
    f.instances = vec![
        InstanceReport::idle("hello-a", 2_000),
        InstanceReport::idle("hello-b", 7_000),
    ];
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!(d.next_wakeup, Some(now - secs(7) + secs(60)));
}

#[test]
fn decide_works_on_a_view_without_stats() {
    let now = std::time::Instant::now();
    let pool = [Instance::new("hello-a", Phase::Starting, now)];
    let d = decide(&settings(), &pool, &FunctionView::default(), now);
    assert_eq!((d.desired, d.create), (0, 0));
    assert_eq!(d.summary, "1 live, desired 0: no demand");
    assert!(d.drain.is_empty() && d.expiries.is_empty());
    assert_eq!(d.counts.starting, 1);
}

#[test]
fn absurd_settings_do_not_panic() {
    let now = std::time::Instant::now();
    let pool = [Instance::new("hello-a", Phase::Ready { since: now }, now)];
    let settings = Settings {
        concurrency: u32::MAX,
        target: f64::NAN,
        min_instances: u32::MAX,
        max_instances: 0,
        warm_instances: u32::MAX,
        keep_alive: std::time::Duration::MAX,
        timeout: std::time::Duration::MAX,
        max_requests_per_instance: u32::MAX,
    };
    let d = decide(&settings, &pool, &FunctionView::default(), now);
    assert_eq!(d.desired, 0);
}

// ------------------------------------------------- maxRequestsPerInstance

fn fresh_settings() -> Settings {
    Settings {
        concurrency: 1,
        max_requests_per_instance: 1,
        warm_instances: 2,
        ..settings()
    }
}

#[test]
fn a_used_instance_is_neither_warm_nor_live_and_is_replaced_at_once() {
    let mut sim = Sim::new(fresh_settings());
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.add_ready("hello-b", t);
    sim.advance(SEC);
    // One request placed on hello-a: it is spent the moment it started its
    // one request, so its replacement starts while it still runs.
    let mut f = sim.function();
    f.requests = 1;
    let mut busy = InstanceReport::busy("hello-a", 1);
    busy.started = 1;
    f.instances = vec![busy, InstanceReport::unused("hello-b")];
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!((d.desired, d.create), (2, 1), "{}", d.summary);
    assert!(d.drain.is_empty(), "busy: not drained yet");

    // The request ended: hello-a is drained at once, whatever its keep-alive.
    sim.advance(millis(100));
    let mut f = sim.function();
    let mut done = InstanceReport::idle("hello-a", 50);
    done.started = 1;
    f.instances = vec![done, InstanceReport::unused("hello-b")];
    sim.report("act-a", f);
    let d = sim.decide();
    assert_eq!(d.drain.len(), 1, "{}", d.summary);
    assert_eq!(d.drain[0].instance, "hello-a");
    assert!(matches!(
        d.drain[0].reason,
        Reason::Exhausted {
            started: 1,
            max_requests: 1
        }
    ));
    assert!(d.expiries.iter().all(|e| e.instance != "hello-a"));
}

#[test]
fn requests_placed_by_two_activators_add_up_to_the_limit() {
    let mut sim = Sim::new(Settings {
        concurrency: 1,
        max_requests_per_instance: 5,
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.advance(SEC);
    for (activator, started) in [("act-a", 2), ("act-b", 2)] {
        let mut f = sim.function();
        let mut idle = InstanceReport::idle("hello-a", 10);
        idle.started = started;
        f.instances = vec![idle];
        sim.report(activator, f);
    }
    assert!(sim.decide().drain.is_empty(), "4 of 5 started");
    let mut f = sim.function();
    let mut idle = InstanceReport::idle("hello-a", 10);
    idle.started = 3;
    f.instances = vec![idle];
    sim.report("act-b", f);
    let d = sim.decide();
    assert_eq!(d.drain.len(), 1, "5 of 5 started: {}", d.summary);

    // The gate's refusal, reported by one activator, says the same alone.
    let mut sim = Sim::new(Settings {
        concurrency: 1,
        max_requests_per_instance: 5,
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.advance(SEC);
    let mut f = sim.function();
    let mut refused = InstanceReport::idle("hello-a", 10);
    refused.exhausted = true;
    f.instances = vec![refused];
    sim.report("act-a", f);
    assert_eq!(sim.decide().drain.len(), 1);
}

#[test]
fn without_max_requests_started_counts_change_nothing() {
    let mut sim = Sim::new(Settings {
        warm_instances: 1,
        ..settings()
    });
    let t = sim.now();
    sim.add_ready("hello-a", t);
    sim.advance(SEC);
    let mut f = sim.function();
    let mut idle = InstanceReport::idle("hello-a", 10);
    idle.started = 1000;
    f.instances = vec![idle];
    sim.report("act-a", f);
    let d = sim.decide();
    assert!(d.drain.is_empty());
    assert_eq!(d.create, 0);
}
