//! Placement: which instance takes the next request. Pure.
//!
//! Requests are **packed**: each goes to the busiest instance that still has
//! room below the soft cap (the autoscaler's per-instance target), then to
//! the busiest below the hard limit (`concurrency`). Surplus instances get
//! nothing, go idle and expire after their keep-alive; round-robin would
//! keep every instance warm forever. Among equally busy instances the one
//! the activator learned of first wins, so the same instance keeps the
//! traffic.

/// Per-instance limits of one function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// `spec.concurrency`: the hard limit, 0 = unlimited.
    pub concurrency: u32,
    /// `spec.scaling.target`, in (0, 1].
    pub target: f64,
}

impl Limits {
    /// `max(1, floor(concurrency × target))`; `floor(100 × target)` when
    /// unlimited: the autoscaler's per-instance target, by the same formula.
    pub fn soft(&self) -> u32 {
        let per_instance = thaw_core::per_instance_target(
            self.concurrency,
            self.target,
            thaw_api::UNLIMITED_SOFT_TARGET,
        );
        // 1e-9 tolerates floating-point noise: 10 × 0.7 is 7, not 6.
        let soft = (per_instance + 1e-9).floor();
        // `soft` is at most 1000 here, so the cast is exact.
        (soft as u32).max(1)
    }

    /// The hard limit; `None` when unlimited.
    pub fn hard(&self) -> Option<u32> {
        (self.concurrency > 0).then_some(self.concurrency)
    }
}

/// What placement needs to know of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// May take requests at all: ready, not draining or terminating, owned.
    pub placeable: bool,
    /// Built from the Function's current spec.
    pub current: bool,
    pub in_flight: u32,
}

/// The index of the instance that takes the next request, or `None` when
/// none has room. `candidates` are in the order the activator learned of
/// them (ties go to the earliest).
///
/// Outdated instances are used only while no current instance is
/// placeable. With unlimited concurrency and every instance at or above the
/// soft cap there is no hard limit to pack up to; the least busy instance
/// takes the request then, so one instance does not take all the overflow.
pub fn pick(candidates: &[Candidate], limits: Limits) -> Option<usize> {
    pick_from(candidates.iter().copied(), limits)
}

/// [`pick`] over any re-iterable sequence of candidates (no allocation).
pub fn pick_from<I>(candidates: I, limits: Limits) -> Option<usize>
where
    I: Iterator<Item = Candidate> + Clone,
{
    let any_current = candidates.clone().any(|c| c.placeable && c.current);
    let eligible = || {
        candidates
            .clone()
            .enumerate()
            .filter(move |(_, c)| c.placeable && (c.current || !any_current))
    };
    let busiest_below = |cap: u32| {
        eligible()
            .filter(|(_, c)| c.in_flight < cap)
            // max_by_key returns the last maximum; reverse the index so the
            // earliest wins ties.
            .max_by_key(|(i, c)| (c.in_flight, std::cmp::Reverse(*i)))
            .map(|(i, _)| i)
    };
    if let Some(i) = busiest_below(limits.soft()) {
        return Some(i);
    }
    match limits.hard() {
        Some(hard) => busiest_below(hard),
        None => eligible()
            .min_by_key(|(i, c)| (c.in_flight, *i))
            .map(|(i, _)| i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(in_flight: u32) -> Candidate {
        Candidate {
            placeable: true,
            current: true,
            in_flight,
        }
    }

    fn outdated(in_flight: u32) -> Candidate {
        Candidate {
            current: false,
            ..ready(in_flight)
        }
    }

    fn unplaceable(in_flight: u32) -> Candidate {
        Candidate {
            placeable: false,
            ..ready(in_flight)
        }
    }

    const C10: Limits = Limits {
        concurrency: 10,
        target: 0.7,
    };

    #[test]
    fn soft_and_hard_caps() {
        assert_eq!(C10.soft(), 7);
        assert_eq!(C10.hard(), Some(10));
        let one = Limits {
            concurrency: 1,
            target: 0.7,
        };
        assert_eq!(one.soft(), 1, "at least 1");
        let unlimited = Limits {
            concurrency: 0,
            target: 0.7,
        };
        assert_eq!(unlimited.soft(), 70);
        assert_eq!(unlimited.hard(), None);
        let full = Limits {
            concurrency: 3,
            target: 1.0,
        };
        assert_eq!(full.soft(), 3);
        let odd = Limits {
            concurrency: 1000,
            target: 0.33,
        };
        assert_eq!(odd.soft(), 330);
        let broken = Limits {
            concurrency: 4,
            target: f64::NAN,
        };
        // A target that is not a number reads as the default 0.7, in the
        // autoscaler too: floor(4 × 0.7).
        assert_eq!(broken.soft(), 2);
    }

    #[test]
    fn packs_onto_the_busiest_instance_below_the_soft_cap() {
        assert_eq!(pick(&[ready(0), ready(3), ready(1)], C10), Some(1));
        // Ties go to the earliest.
        assert_eq!(pick(&[ready(2), ready(2)], C10), Some(0));
        assert_eq!(pick(&[ready(0), ready(0), ready(0)], C10), Some(0));
        // An instance at the soft cap is skipped while another has room...
        assert_eq!(pick(&[ready(7), ready(1)], C10), Some(1));
        // ...and filled up to the hard limit when none has.
        assert_eq!(pick(&[ready(7), ready(8)], C10), Some(1));
        assert_eq!(pick(&[ready(10), ready(8)], C10), Some(1));
        assert_eq!(pick(&[ready(10), ready(10)], C10), None);
        assert_eq!(pick(&[], C10), None);
    }

    #[test]
    fn sequential_requests_keep_one_instance_warm() {
        // One request at a time: always the first instance, the others idle.
        let mut pool = vec![ready(0), ready(0), ready(0)];
        for _ in 0..10 {
            let i = pick(&pool, C10).expect("room");
            assert_eq!(i, 0);
            pool[i].in_flight += 1;
            pool[i].in_flight -= 1;
        }
        // Load that fits the soft cap of one instance stays on it.
        for _ in 0..7 {
            let i = pick(&pool, C10).expect("room");
            pool[i].in_flight += 1;
        }
        assert_eq!(pool[0].in_flight, 7);
        assert_eq!(pool[1].in_flight + pool[2].in_flight, 0);
        // The overflow goes to the next instance, not spread over all.
        let i = pick(&pool, C10).expect("room");
        assert_eq!(i, 1);
    }

    #[test]
    fn concurrency_one_never_places_twice() {
        let one = Limits {
            concurrency: 1,
            target: 0.7,
        };
        assert_eq!(pick(&[ready(1), ready(0)], one), Some(1));
        assert_eq!(pick(&[ready(1), ready(1)], one), None);
    }

    #[test]
    fn unlimited_spreads_only_above_the_soft_cap() {
        let unlimited = Limits {
            concurrency: 0,
            target: 0.7,
        };
        assert_eq!(pick(&[ready(5), ready(69)], unlimited), Some(1));
        assert_eq!(pick(&[ready(70), ready(90)], unlimited), Some(0));
        assert_eq!(pick(&[ready(500)], unlimited), Some(0));
    }

    #[test]
    fn outdated_instances_only_until_a_current_one_is_ready() {
        assert_eq!(pick(&[outdated(0), ready(0)], C10), Some(1));
        // Even when the current one is full: the request waits.
        assert_eq!(pick(&[outdated(0), ready(10)], C10), None);
        // No current instance placeable: outdated ones serve.
        assert_eq!(pick(&[outdated(2), unplaceable(0)], C10), Some(0));
        assert_eq!(pick(&[outdated(0), outdated(4)], C10), Some(1));
    }

    #[test]
    fn unplaceable_instances_get_nothing() {
        assert_eq!(pick(&[unplaceable(0), unplaceable(0)], C10), None);
        assert_eq!(pick(&[unplaceable(5), ready(0)], C10), Some(1));
    }
}
