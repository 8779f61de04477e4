//! Checking a report against what the operator knows before it is merged:
//! an activator can only speak for itself (authentication), and what it
//! says is bounded by the cluster's state. [`decide`](crate::decide())
//! already ignores listings of instances outside the pool; vetting also
//! keeps them out of the store (where each would be retained for a day)
//! and caps claims no activator could make.

use crate::{stats::ActivatorReport, view::FunctionKey};

/// What the operator knows of one Function.
pub trait KnownFunction {
    /// Most requests one activator can hold waiting for it (`queue.maxPending`).
    fn max_pending(&self) -> u32;
    /// Whether `pod` is an instance pod of the Function.
    fn has_pod(&self, pod: &str) -> bool;
}

/// What vetting changed in a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vetting {
    /// Instance listings dropped: not pods of that Function.
    pub ignored_instances: u64,
    /// Functions whose `waiting` was cut to their `maxPending`.
    pub capped_waiting: u64,
}

/// Drops instances that are not pods of their Function and caps `waiting`
/// at `maxPending`; `known` answers `None` for a Function the operator does
/// not know (then every instance listing is dropped and `waiting` is capped
/// at `max_pending_limit`, the largest `maxPending` the API allows).
pub fn vet_report<K: KnownFunction>(
    report: &mut ActivatorReport,
    max_pending_limit: u32,
    known: impl Fn(&FunctionKey) -> Option<K>,
) -> Vetting {
    let mut vetting = Vetting::default();
    for function in &mut report.functions {
        let known = known(&function.key());
        let before = function.instances.len();
        function
            .instances
            .retain(|i| known.as_ref().is_some_and(|k| k.has_pod(&i.pod)));
        vetting.ignored_instances += (before - function.instances.len()) as u64;
        let cap = known
            .as_ref()
            .map_or(max_pending_limit, KnownFunction::max_pending);
        if function.waiting > cap {
            function.waiting = cap;
            vetting.capped_waiting += 1;
        }
    }
    vetting
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{FunctionReport, InstanceReport};

    struct Fixed(u32, &'static [&'static str]);

    impl KnownFunction for &Fixed {
        fn max_pending(&self) -> u32 {
            self.0
        }
        fn has_pod(&self, pod: &str) -> bool {
            self.1.contains(&pod)
        }
    }

    #[test]
    fn unknown_instances_go_and_waiting_is_capped() {
        let hello = Fixed(10, &["hello-a", "hello-b"]);
        let mut report = ActivatorReport::new("act-0", 7, 1, 1000);
        let mut f = FunctionReport::new("ns", "hello");
        f.waiting = 5000;
        f.instances = vec![
            InstanceReport::busy("hello-a", 1),
            InstanceReport::busy("other-pod", 3),
            InstanceReport::idle("hello-b", 10),
        ];
        report.functions.push(f);
        let mut unknown = FunctionReport::new("ns", "ghost");
        unknown.waiting = 20_000;
        unknown.instances = vec![InstanceReport::busy("ghost-a", 1)];
        report.functions.push(unknown);
        let mut fine = FunctionReport::new("ns", "hello");
        fine.waiting = 10;
        report.functions.push(fine);

        let vetting = vet_report(&mut report, 10_000, |key| {
            (key.name == "hello").then_some(&hello)
        });
        assert_eq!(
            vetting,
            Vetting {
                ignored_instances: 2,
                capped_waiting: 2
            }
        );
        let pods: Vec<&str> = report.functions[0]
            .instances
            .iter()
            .map(|i| i.pod.as_str())
            .collect();
        assert_eq!(pods, ["hello-a", "hello-b"]);
        assert_eq!(report.functions[0].waiting, 10);
        assert_eq!(report.functions[1].waiting, 10_000);
        assert!(report.functions[1].instances.is_empty());
        assert_eq!(report.functions[2].waiting, 10, "at the cap is kept");
    }
}
