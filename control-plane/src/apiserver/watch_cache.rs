//! The watch cache: every object in memory, kept current by **one** store watch, so
//! LIST and WATCH are answered from memory and a thousand watchers cost one store watch
//! (Kubernetes' `cacher`). Objects are held as the bytes served (resourceVersion
//! already spliced in) plus their labels and selectable fields, so a LIST is a
//! concatenation and a watch event a copy of a pointer.
//!
//! Entry points: [`WatchCache::start`], [`WatchCache::list`], [`WatchCache::watch`],
//! [`WatchCache::wait_until`]. A bounded window of recent events lets watches resume from
//! a resourceVersion; older ones get `410 Gone` ("too old resource version").
//!
//! The cache's revision is its newest event's, or newer when the store's watch reports
//! progress ([`Watched::Progress`]: nothing under the prefix changed up to there). A
//! consistent read waits for the revision the store gives it (KEP-2340), and while it
//! waits asks the store for progress every 100 ms, as kube-apiserver's watch cache does,
//! so a revision written outside the cache's keys is reached too.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use bytes::Bytes;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::object;
use super::selectors;
use crate::store::{EventKind, ProgressRequest, Revision, Store, StoreError, Watched};

/// The whole key space the apiserver owns.
pub const ROOT: &str = "/registry/";
/// Recent events kept for watches that resume from a resourceVersion (each holds the
/// object before and after; deleted objects live on here until the window moves on).
const WINDOW: usize = 10_000;
/// Live events buffered per watcher; a watcher further behind is closed (it re-lists).
const LIVE_BUFFER: usize = 8_192;
/// The newest changes whose watch lines stay built for the next watcher. Each line is
/// a copy of its object; kept for the whole window, they sat among the objects that
/// stay, and when they went they left the allocator's pages those objects share
/// part-empty but resident.
const LINES_KEPT: usize = 1024;
/// How long [`WatchCache::wait_for`] waits for the cache to catch up.
const WAIT: Duration = Duration::from_secs(5);
/// How often a waiting read asks the store for progress again: a notification sent
/// while the watch is still delivering a burst reports less than asked for
/// (kube-apiserver's `conditionalProgressRequester` period).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// One object, ready to serve.
#[derive(Debug)]
pub struct Cached {
    pub key: String,
    pub revision: Revision,
    /// The object's JSON with its resourceVersion.
    pub raw: Arc<[u8]>,
    /// What selectors read, shared by the states of an object that agree on it (a
    /// delete event's last state and the object before it).
    pub attrs: Arc<Attrs>,
    /// The object as protobuf message bytes, encoded by the first protobuf client
    /// that asks and shared by the rest (`None`: the kind has no message, or it did
    /// not encode).
    proto: OnceLock<Option<Arc<[u8]>>>,
}

/// An object's labels and selectable fields.
#[derive(Debug, PartialEq, Eq)]
pub struct Attrs {
    pub labels: selectors::Labels,
    pub fields: selectors::Fields,
}

impl Cached {
    fn new(key: String, revision: Revision, stored: &[u8]) -> Self {
        let raw: Arc<[u8]> = object::with_revision(stored, revision).into();
        let parsed = selectors::selectable(&raw);
        Self {
            attrs: Arc::new(Attrs {
                labels: selectors::labels(&parsed),
                fields: selectors::field_values(&parsed),
            }),
            key,
            revision,
            raw,
            proto: OnceLock::new(),
        }
    }

    /// A delete event's object: the last stored state at the delete's revision, and
    /// whether that is the state the cache holds (`prev`), as it is unless the store
    /// says otherwise. Then its attributes are copied rather than parsed again — copied,
    /// not shared: the event outlives the object by up to a window, and sharing would
    /// keep the object's allocations from its create alive with it, each pinning the
    /// allocator's page it sits on (after 50 000 pods created and deleted, over 100 MB).
    fn deleted(
        key: String,
        revision: Revision,
        stored: &[u8],
        prev: Option<&Cached>,
    ) -> (Self, bool) {
        let raw: Arc<[u8]> = object::with_revision(stored, revision).into();
        match prev {
            Some(p) if object::with_revision(stored, p.revision) == *p.raw => (
                Self {
                    attrs: Arc::new(Attrs {
                        labels: p.attrs.labels.clone(),
                        fields: p.attrs.fields.clone(),
                    }),
                    key,
                    revision,
                    raw,
                    proto: OnceLock::new(),
                },
                true,
            ),
            _ => (Self::new(key, revision, stored), false),
        }
    }

    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.raw).unwrap_or(Value::Null)
    }

    /// The object's protobuf message bytes (no envelope), encoded once.
    pub fn protobuf(&self) -> Option<Arc<[u8]>> {
        self.proto
            .get_or_init(|| match super::protobuf::message_bytes(&self.raw)? {
                Ok(bytes) => Some(bytes.into()),
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "protobuf encoding failed");
                    None
                }
            })
            .clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One change; `object` is the new state (for `Deleted`, the last state at the delete's
/// revision), `prev` the state before (for `Deleted`, only when the store's last state
/// differs from what the cache held; otherwise `object` is that state).
#[derive(Debug)]
pub struct Change {
    pub kind: ChangeKind,
    pub revision: Revision,
    pub object: Arc<Cached>,
    pub prev: Option<Arc<Cached>>,
    /// The JSON watch-event lines for `object` (ADDED, MODIFIED, DELETED), each built
    /// once by the first watcher that sends it and shared by the rest, while the change
    /// is among the newest [`LINES_KEPT`]; `None` after.
    lines: Mutex<Option<[Option<Bytes>; 3]>>,
}

impl Change {
    fn new(
        kind: ChangeKind,
        revision: Revision,
        object: Arc<Cached>,
        prev: Option<Arc<Cached>>,
    ) -> Self {
        Self {
            kind,
            revision,
            object,
            prev,
            lines: Mutex::new(Some(Default::default())),
        }
    }

    /// `{"type":"<kind>","object":<object>}` and a newline, for a watch stream.
    pub fn line(&self, kind: WatchEventType) -> Bytes {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        match lines.as_mut() {
            Some(lines) => lines[kind as usize]
                .get_or_insert_with(|| watch_line(kind.as_str(), &self.object.raw))
                .clone(),
            None => {
                drop(lines);
                watch_line(kind.as_str(), &self.object.raw)
            }
        }
    }

    /// Drops the built lines and keeps no more: a watcher this far behind builds its
    /// own.
    fn forget_lines(&self) {
        *self.lines.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// The event types a watch stream sends for an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventType {
    Added = 0,
    Modified = 1,
    Deleted = 2,
}

impl WatchEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One line of a JSON watch stream.
pub fn watch_line(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + kind.len() + 24);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Arc<Cached>>,
    window: VecDeque<Arc<Change>>,
    revision: Revision,
    /// Watches must start at or after this revision.
    oldest: Revision,
}

/// See the module docs.
#[derive(Debug)]
pub struct WatchCache {
    state: RwLock<State>,
    revision: watch::Sender<Revision>,
    live: broadcast::Sender<Arc<Change>>,
    /// Asks the store's watch for a progress notification (`None`: it sends none).
    progress: Option<ProgressRequest>,
}

/// A started watch: the replayed backlog, then the live feed.
#[derive(Debug)]
pub struct CacheWatch {
    pub backlog: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
    /// Live changes at or below this revision were already in the backlog.
    pub after: Revision,
}

impl WatchCache {
    /// Loads everything and follows the store.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<Self>, StoreError> {
        // Start up to a window's worth of revisions in the past (as far as compaction
        // allows) and replay from there, so that watches resumed from before a restart
        // still find their changes.
        let current = store.current_revision();
        let back = current.saturating_sub(WINDOW as Revision).max(1);
        let listed = match store
            .list(
                ROOT,
                crate::store::ListOptions {
                    revision: Some(back),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(l) => l,
            Err(_) => store.list(ROOT, Default::default()).await?,
        };
        let mut state = State {
            revision: listed.revision,
            oldest: listed.revision,
            ..State::default()
        };
        for kv in listed.kvs {
            let cached = Cached::new(kv.key.clone(), kv.mod_revision, &kv.value);
            state.objects.insert(kv.key, Arc::new(cached));
        }
        let (revision, _) = watch::channel(listed.revision);
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        // The cache holds every value: its events need no `prev`.
        let mut events = store
            .watch_without_prev(ROOT.into(), listed.revision)
            .await?;
        let cache = Arc::new(Self {
            state: RwLock::new(state),
            revision,
            live,
            progress: events.progress_request(),
        });
        let follower = cache.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next_watched().await {
                match event {
                    Ok(Watched::Event(event)) => follower.apply(event),
                    Ok(Watched::Progress(revision)) => follower.progressed(revision),
                    Err(err) => {
                        // The cache cannot go on without a gap; the server exits so it is
                        // restarted (Kubernetes re-lists; a restart here is the same).
                        tracing::error!(%err, "watch cache lost the store watch");
                        std::process::exit(70);
                    }
                }
            }
        });
        Ok(cache)
    }

    fn apply(&self, event: crate::store::Event) {
        let revision = event.revision();
        let key = event.kv.key.clone();
        // Built before taking the lock: readers wait only for the map update (a delete's
        // object reuses what the cache knows of the key; only this task writes the map).
        let (object, as_cached) = match event.kind {
            EventKind::Delete => {
                let prev = self.get(&key);
                // A store watch without `prev` may send a delete without the last value:
                // it is the cached one.
                let stored = match &prev {
                    Some(p) if event.kv.value.is_empty() => p.raw.clone(),
                    _ => event.kv.value.clone(),
                };
                Cached::deleted(key.clone(), revision, &stored, prev.as_deref())
            }
            EventKind::Put => (Cached::new(key.clone(), revision, &event.kv.value), false),
        };
        let object = Arc::new(object);
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = state.objects.get(&key).cloned();
        let kind = match event.kind {
            EventKind::Put if prev.is_some() => ChangeKind::Modified,
            EventKind::Put => ChangeKind::Added,
            EventKind::Delete => ChangeKind::Deleted,
        };
        match kind {
            ChangeKind::Deleted => state.objects.remove(&key),
            _ => state.objects.insert(key, object.clone()),
        };
        // A delete of the state the cache held needs no `prev`: `object` is that state
        // (see [`Cached::deleted`]).
        let change = Arc::new(Change::new(
            kind,
            revision,
            object,
            prev.filter(|_| !as_cached),
        ));
        state.window.push_back(change.clone());
        if let Some(older) = state
            .window
            .len()
            .checked_sub(LINES_KEPT + 1)
            .and_then(|i| state.window.get(i))
        {
            older.forget_lines();
        }
        while state.window.len() > WINDOW {
            if let Some(old) = state.window.pop_front() {
                state.oldest = old.revision;
            }
        }
        state.revision = revision;
        // Sent under the lock so a watch that snapshots the window under the same lock
        // and subscribes there sees every change exactly once.
        let _ = self.live.send(change);
        drop(state);
        self.revision.send_replace(revision);
    }

    /// Nothing changed under the cache's keys after its newest event up to `revision`.
    fn progressed(&self, revision: Revision) {
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if revision <= state.revision {
            return;
        }
        state.revision = revision;
        drop(state);
        self.revision.send_replace(revision);
    }

    pub fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    /// [`WatchCache::wait_until`] with the default wait (5 s).
    pub async fn wait_for(&self, revision: Revision) -> bool {
        self.wait_until(revision, WAIT).await
    }

    /// Waits up to `timeout` until the cache has caught up with `revision`; false if it
    /// has not. Woken by the cache's own revision changes; meanwhile it asks the
    /// store for progress every [`PROGRESS_EVERY`] when the store offers that.
    pub async fn wait_until(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        if *rx.borrow_and_update() >= revision {
            return true;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let until = match &self.progress {
                Some(progress) => {
                    progress.request();
                    deadline.min(tokio::time::Instant::now() + PROGRESS_EVERY)
                }
                None => deadline,
            };
            match tokio::time::timeout_at(until, rx.wait_for(|r| *r >= revision)).await {
                Ok(Ok(_)) => return true,
                // The store's watch ended (the server is exiting).
                Ok(Err(_)) => return false,
                Err(_) if until >= deadline => return false,
                Err(_) => {}
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic under the lock cannot leave the maps half-updated in a way reads
        // mind (each change is one insert or remove), so a poisoned lock is still read.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.read().objects.get(key).cloned()
    }

    /// Objects under `prefix` (in key order) and the revision they were read at.
    pub fn list(
        &self,
        prefix: &str,
        mut keep: impl FnMut(&Cached) -> bool,
    ) -> (Vec<Arc<Cached>>, Revision) {
        let state = self.read();
        let items = state.under(prefix).filter(|o| keep(o)).cloned().collect();
        (items, state.revision)
    }

    /// How many objects are under `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.read().under(prefix).count()
    }

    /// Changes after `after`; `Err(oldest)` if they are no longer in the window.
    pub fn watch(&self, after: Revision) -> Result<CacheWatch, Revision> {
        let state = self.read();
        if after < state.oldest {
            return Err(state.oldest);
        }
        let start = state.window.partition_point(|c| c.revision <= after);
        let backlog = state.window.iter().skip(start).cloned().collect();
        let live = self.live.subscribe();
        Ok(CacheWatch {
            backlog,
            live,
            after: state.revision,
        })
    }

    /// A snapshot of every object under `prefix` and a watch of what follows it.
    pub fn snapshot_and_watch(&self, prefix: &str) -> (Vec<Arc<Cached>>, CacheWatch) {
        let state = self.read();
        let items = state.under(prefix).cloned().collect();
        let live = self.live.subscribe();
        let watch = CacheWatch {
            backlog: Vec::new(),
            live,
            after: state.revision,
        };
        (items, watch)
    }
}

impl State {
    /// The objects whose keys start with `prefix`, in key order.
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Arc<Cached>> + 'a {
        self.objects
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, o)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;

    fn pod(name: &str, app: &str) -> Vec<u8> {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"default","labels":{{"app":"{app}"}}}}}}"#
        )
        .into_bytes()
    }

    /// The window's changes after `after`, once the cache has caught up to `revision`.
    async fn changes(cache: &WatchCache, after: Revision, revision: Revision) -> Vec<Arc<Change>> {
        assert!(cache.wait_for(revision).await, "the cache caught up");
        cache.watch(after).expect("within the window").backlog
    }

    #[tokio::test]
    async fn a_delete_keeps_a_copy_of_the_object_and_no_prev() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(RedbStore::open(&dir.path().join("store")).expect("open"));
        let cache = WatchCache::start(store.clone()).await.expect("start");
        let key = "/registry/core/pods/default/web".to_owned();
        let created = store
            .create(key.clone(), pod("web", "shop"), None)
            .await
            .expect("create");
        let updated = store
            .update(key.clone(), pod("web", "cart"), created.mod_revision)
            .await
            .expect("update");
        let held = {
            assert!(cache.wait_for(updated.mod_revision).await);
            cache.get(&key).expect("cached")
        };
        let deleted = store.delete(key.clone(), None).await.expect("delete");
        let all = changes(&cache, created.mod_revision - 1, deleted.mod_revision).await;
        let kinds: Vec<ChangeKind> = all.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [ChangeKind::Added, ChangeKind::Modified, ChangeKind::Deleted]
        );
        // An update still carries the state before it, for selectors' transitions.
        assert_eq!(
            all[1].prev.as_ref().map(|p| p.revision),
            Some(created.mod_revision)
        );
        let delete = &all[2];
        assert!(delete.prev.is_none(), "the deleted state is the object");
        assert_eq!(delete.object.revision, deleted.mod_revision);
        assert_eq!(delete.object.attrs, held.attrs);
        assert_eq!(delete.object.attrs.labels.get("app"), Some("cart"));
        assert!(
            !Arc::ptr_eq(&delete.object.attrs, &held.attrs),
            "copied, so the object's own allocations go with it"
        );
        let line = delete.line(WatchEventType::Deleted);
        assert!(line.starts_with(br#"{"type":"DELETED","object":{"#));
        assert!(line.ends_with(b"}\n"));
    }

    #[tokio::test]
    async fn watch_lines_are_kept_for_the_newest_changes_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(RedbStore::open(&dir.path().join("store")).expect("open"));
        let cache = WatchCache::start(store.clone()).await.expect("start");
        let first = store
            .create(
                "/registry/core/pods/default/p0".into(),
                pod("p0", "a"),
                None,
            )
            .await
            .expect("create");
        let mut last = first.mod_revision;
        let mut all = changes(&cache, first.mod_revision - 1, last).await;
        let line = all[0].line(WatchEventType::Added);
        // The same shared buffer for the next watcher.
        assert_eq!(
            all[0].line(WatchEventType::Added).as_ptr(),
            line.as_ptr(),
            "built once"
        );
        for i in 1..=LINES_KEPT {
            last = store
                .create(
                    format!("/registry/core/pods/default/p{i}"),
                    pod(&format!("p{i}"), "a"),
                    None,
                )
                .await
                .expect("create")
                .mod_revision;
        }
        all = changes(&cache, first.mod_revision - 1, last).await;
        assert_eq!(all.len(), LINES_KEPT + 1);
        let lines = |c: &Change| c.lines.lock().map(|l| l.is_some()).unwrap_or(false);
        assert!(
            !lines(&all[0]),
            "{LINES_KEPT} newer changes: no longer kept"
        );
        assert!(lines(&all[1]));
        // A watcher that far behind still gets the same line, built for it.
        let again = all[0].line(WatchEventType::Added);
        assert_eq!(again, line);
        assert_ne!(again.as_ptr(), line.as_ptr());
        assert!(!lines(&all[0]), "and not kept");
    }
}
