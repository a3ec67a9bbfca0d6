//! Expectations, as kube-controller-manager's controllers keep them: the pods a sync
//! created and deleted that the informer cache has not shown yet. Until it has (or
//! the expectation times out), the next sync of that owner does not create or delete
//! again, so a lagging cache never causes double creations.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};

/// How long unobserved creations and deletions hold the next sync back.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Expectation {
    adds: HashSet<String>,
    deletes: HashSet<String>,
    until: Instant,
}

/// The expectations of every owner, by its queue key (`K`).
#[derive(Debug)]
pub struct Expectations<K> {
    all: Mutex<HashMap<K, Expectation>>,
}

impl<K: Eq + Hash> Default for Expectations<K> {
    fn default() -> Self {
        Self {
            all: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash> Expectations<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Expectation>> {
        self.all.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the pod cache (`pods`, pods of namespace `ns`) has caught up with the
    /// owner's last creations and deletions; a met or expired expectation is dropped.
    pub fn satisfied(&self, key: &K, ns: &str, pods: &Store<Pod>) -> bool {
        let mut all = self.lock();
        let Some(e) = all.get(key) else {
            return true;
        };
        let seen = |name: &String| pods.get(&ObjectRef::new(name).within(ns));
        let done = Instant::now() > e.until
            || (e.adds.iter().all(|n| seen(n).is_some())
                && e.deletes
                    .iter()
                    .all(|n| seen(n).is_none_or(|p| p.metadata.deletion_timestamp.is_some())));
        if done {
            all.remove(key);
        }
        done
    }

    /// Records the pods (by name) a sync created and deleted.
    pub fn expect(&self, key: K, adds: HashSet<String>, deletes: HashSet<String>) {
        if adds.is_empty() && deletes.is_empty() {
            return;
        }
        self.lock().insert(
            key,
            Expectation {
                adds,
                deletes,
                until: Instant::now() + TIMEOUT,
            },
        );
    }

    /// Drops the owner's expectation (it is gone).
    pub fn forget(&self, key: &K) {
        self.lock().remove(key);
    }
}
