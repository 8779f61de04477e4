//! Which instance pods belong to which Function: an index by the
//! `thaw.dev/function` label, maintained from the same watch events that
//! fill the pod cache, so a reconcile reads only its own Function's pods
//! (work proportional to the Function, not to the cluster).
//!
//! It holds pod names only; the pods themselves stay in the reflector's
//! store (one copy). A relist (`Init` .. `InitDone`) builds a new index and
//! swaps it in at `InitDone`, as the store does, so both always describe the
//! same list.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{PoisonError, RwLock},
};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use thaw_api::keys::FUNCTION_LABEL;
use thaw_core::FunctionKey;

/// Pod names by Function.
#[derive(Debug, Default)]
pub struct PodIndex {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    live: Index,
    /// The index being built by a relist, swapped in at `InitDone`.
    relist: Option<Index>,
}

#[derive(Debug, Default)]
struct Index {
    by_function: HashMap<FunctionKey, BTreeSet<String>>,
    /// Where each pod (namespace, name) is filed, so a relabelled or
    /// deleted pod leaves the right entry.
    filed: HashMap<(String, String), FunctionKey>,
}

impl Index {
    fn insert(&mut self, pod: &Pod) {
        let Some(place) = place(pod) else { return };
        let key = function_of(pod);
        if let Some(previous) = self.filed.get(&place)
            && Some(previous) != key.as_ref()
        {
            let previous = previous.clone();
            self.remove_at(&place, &previous);
        }
        if let Some(key) = key {
            self.by_function
                .entry(key.clone())
                .or_default()
                .insert(place.1.clone());
            self.filed.insert(place, key);
        }
    }

    fn remove(&mut self, pod: &Pod) {
        let Some(place) = place(pod) else { return };
        if let Some(key) = self.filed.get(&place).cloned() {
            self.remove_at(&place, &key);
        }
    }

    fn remove_at(&mut self, place: &(String, String), key: &FunctionKey) {
        self.filed.remove(place);
        if let Some(names) = self.by_function.get_mut(key) {
            names.remove(&place.1);
            if names.is_empty() {
                self.by_function.remove(key);
            }
        }
    }
}

impl PodIndex {
    /// Applies one watch event (after the pod cache applied it).
    pub fn apply(&self, event: &Event<Pod>) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Apply(pod) => inner.live.insert(pod),
            Event::Delete(pod) => inner.live.remove(pod),
            Event::Init => inner.relist = Some(Index::default()),
            Event::InitApply(pod) => inner.relist.get_or_insert_default().insert(pod),
            Event::InitDone => {
                if let Some(index) = inner.relist.take() {
                    inner.live = index;
                }
            }
        }
    }

    /// Names of the pods labelled as instances of `key`, in its namespace.
    pub fn pods_of(&self, key: &FunctionKey) -> Vec<String> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .by_function
            .get(key)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many Functions have pods.
    pub fn functions(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .by_function
            .len()
    }
}

fn place(pod: &Pod) -> Option<(String, String)> {
    Some((pod.metadata.namespace.clone()?, pod.metadata.name.clone()?))
}

fn function_of(pod: &Pod) -> Option<FunctionKey> {
    let namespace = pod.metadata.namespace.as_deref()?;
    let function = pod.metadata.labels.as_ref()?.get(FUNCTION_LABEL)?;
    Some(FunctionKey::new(namespace, function))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, name: &str, function: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some(namespace.into());
        pod.metadata.name = Some(name.into());
        pod.metadata.labels = function.map(|f| [(FUNCTION_LABEL.to_owned(), f.to_owned())].into());
        pod
    }

    fn key(namespace: &str, name: &str) -> FunctionKey {
        FunctionKey::new(namespace, name)
    }

    #[test]
    fn two_functions_never_see_each_others_pods() {
        let index = PodIndex::default();
        for (ns, name, f) in [
            ("ns", "a-1", "a"),
            ("ns", "a-2", "a"),
            ("ns", "b-1", "b"),
            // Same Function name, other namespace: another Function.
            ("other", "a-9", "a"),
        ] {
            index.apply(&Event::Apply(pod(ns, name, Some(f))));
        }
        assert_eq!(index.pods_of(&key("ns", "a")), ["a-1", "a-2"]);
        assert_eq!(index.pods_of(&key("ns", "b")), ["b-1"]);
        assert_eq!(index.pods_of(&key("other", "a")), ["a-9"]);
        assert!(index.pods_of(&key("ns", "c")).is_empty());
        assert_eq!(index.functions(), 3);
    }

    #[test]
    fn relabelled_and_deleted_pods_leave_their_function() {
        let index = PodIndex::default();
        index.apply(&Event::Apply(pod("ns", "p", Some("a"))));
        index.apply(&Event::Apply(pod("ns", "p", Some("b"))));
        assert!(index.pods_of(&key("ns", "a")).is_empty());
        assert_eq!(index.pods_of(&key("ns", "b")), ["p"]);
        index.apply(&Event::Apply(pod("ns", "p", None)));
        assert!(index.pods_of(&key("ns", "b")).is_empty());
        index.apply(&Event::Apply(pod("ns", "p", Some("b"))));
        index.apply(&Event::Delete(pod("ns", "p", Some("b"))));
        assert!(index.pods_of(&key("ns", "b")).is_empty());
        assert_eq!(index.functions(), 0);
    }

    #[test]
    fn a_relist_replaces_the_index_when_it_is_done() {
        let index = PodIndex::default();
        index.apply(&Event::Apply(pod("ns", "gone", Some("a"))));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("ns", "new", Some("a"))));
        // Until the list is complete, the old one stands (as in the cache).
        assert_eq!(index.pods_of(&key("ns", "a")), ["gone"]);
        index.apply(&Event::InitDone);
        assert_eq!(index.pods_of(&key("ns", "a")), ["new"]);
    }
}
