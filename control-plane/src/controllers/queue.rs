//! The work queue every controller drains: object keys (`namespace/name`, or `name`
//! for cluster-scoped objects), each queued at most once however often it changes,
//! with delayed re-adds for time-driven work and per-key back-off after errors
//! (5 ms doubling to 30 s), like client-go's rate-limited queue. As client-go's, a key
//! is never worked on by two workers at once: one added while it is being worked on
//! is queued again when that work is done.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

const BASE_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    delayed: BTreeMap<(Instant, u64), String>,
    /// The earliest time each delayed key is due (one pending delay per key).
    due: HashMap<String, Instant>,
    seq: u64,
    failures: HashMap<String, u32>,
    /// Keys a worker holds now, and those of them added again meanwhile.
    processing: HashSet<String>,
    dirty: HashSet<String>,
}

#[derive(Debug, Default)]
pub struct Queue {
    state: Mutex<State>,
    notify: Notify,
}

impl Queue {
    pub fn new() -> Arc<Self> {
        Arc::new(Queue::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` now (once, however many times it is added before it is taken).
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut s = self.lock();
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.ready.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// A worker is done with `key`: queued again if it was added meanwhile.
    fn done(&self, key: &str) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.remove(key) && s.queued.insert(key.to_owned()) {
            s.ready.push_back(key.to_owned());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues `key` once `delay` has passed.
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        let at = Instant::now() + delay;
        let mut s = self.lock();
        if s.due.get(&key).is_some_and(|d| *d <= at) {
            return;
        }
        s.due.insert(key.clone(), at);
        s.seq += 1;
        let seq = s.seq;
        s.delayed.insert((at, seq), key);
        drop(s);
        self.notify.notify_one();
    }

    /// The next key to work on.
    pub async fn next(&self) -> String {
        loop {
            let wait = {
                let mut s = self.lock();
                let now = Instant::now();
                while let Some(entry) = s.delayed.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let (at, _) = *entry.key();
                    let key = entry.remove();
                    // Superseded by an earlier delay for the same key.
                    if s.due.get(&key) != Some(&at) {
                        continue;
                    }
                    s.due.remove(&key);
                    if s.processing.contains(&key) {
                        s.dirty.insert(key);
                    } else if s.queued.insert(key.clone()) {
                        s.ready.push_back(key);
                    }
                }
                if let Some(key) = s.ready.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    return key;
                }
                s.delayed
                    .keys()
                    .next()
                    .map(|(at, _)| at.saturating_duration_since(now))
            };
            match wait {
                Some(d) => {
                    let _ = tokio::time::timeout(d, self.notify.notified()).await;
                }
                None => self.notify.notified().await,
            }
        }
    }

    /// Runs `reconcile` for every key, one at a time, forever: `Ok(Some(d))` asks to
    /// look again after `d`, an error retries with the key's back-off.
    pub async fn work<F, Fut>(self: Arc<Self>, name: &'static str, reconcile: F)
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<Option<Duration>, kube::Error>>,
    {
        self.worker(name, reconcile).await
    }

    /// Like [`Queue::work`] with `workers` keys worked on at once (each key by one
    /// worker at a time), as kube-controller-manager's `--concurrent-*-syncs`.
    pub async fn work_concurrently<F, Fut>(
        self: Arc<Self>,
        name: &'static str,
        workers: usize,
        reconcile: F,
    ) where
        F: FnMut(String) -> Fut + Clone,
        Fut: Future<Output = Result<Option<Duration>, kube::Error>>,
    {
        let loops = (0..workers.max(1)).map(|_| self.clone().worker(name, reconcile.clone()));
        futures_util::future::join_all(loops).await;
    }

    async fn worker<F, Fut>(self: Arc<Self>, name: &'static str, mut reconcile: F)
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<Option<Duration>, kube::Error>>,
    {
        loop {
            let key = self.next().await;
            let result = Box::pin(reconcile(key.clone())).await;
            match result {
                Ok(again) => {
                    self.lock().failures.remove(&key);
                    self.done(&key);
                    if let Some(d) = again {
                        self.add_after(key, d);
                    }
                }
                Err(err) => {
                    let n = {
                        let mut s = self.lock();
                        let n = s.failures.entry(key.clone()).or_insert(0);
                        *n = n.saturating_add(1);
                        *n
                    };
                    let delay = BASE_DELAY.saturating_mul(1u32 << n.min(16)).min(MAX_DELAY);
                    tracing::debug!(controller = name, %key, %err, ?delay, "sync failed; retrying");
                    self.done(&key);
                    self.add_after(key, delay);
                }
            }
        }
    }
}

/// The queue key of a namespaced or cluster-scoped object.
pub fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or_default()),
        None => meta.name.clone().unwrap_or_default(),
    }
}

/// `(namespace, name)` of a key made by [`key_of`].
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_delays_respected() {
        let q = Queue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        q.add_after("c", Duration::from_millis(30));
        assert_eq!(q.next().await, "a");
        q.done("a");
        assert_eq!(q.next().await, "b");
        q.done("b");
        let t = Instant::now();
        assert_eq!(q.next().await, "c");
        q.done("c");
        assert!(t.elapsed() >= Duration::from_millis(20));
        q.add("a");
        assert_eq!(q.next().await, "a");
        q.done("a");
        // One pending delay per key: the earlier one wins, the later is dropped.
        q.add_after("d", Duration::from_millis(20));
        q.add_after("d", Duration::from_secs(60));
        q.add_after("e", Duration::from_millis(40));
        assert_eq!(q.next().await, "d");
        assert_eq!(q.next().await, "e");
    }

    #[tokio::test]
    async fn a_key_is_worked_on_by_one_worker_at_a_time() {
        let q = Queue::new();
        q.add("a");
        q.add("b");
        assert_eq!(q.next().await, "a");
        // Added again while held: not handed out until the holder is done.
        q.add("a");
        assert_eq!(q.next().await, "b");
        let waiting = tokio::time::timeout(Duration::from_millis(30), q.next()).await;
        assert!(waiting.is_err(), "a was handed out twice: {waiting:?}");
        q.done("a");
        assert_eq!(q.next().await, "a");
    }
}
