//! The versioned key-value store the apiserver keeps every object in — and the only
//! thing that touches it.
//!
//! The model is etcd's MVCC: one cluster-wide revision counter; each write bumps it and
//! stamps the key with its `mod_revision`; reads can be made at a past revision until
//! compaction discards it; watches replay every change after a revision, ordered and
//! without gaps, and report [`StoreError::Compacted`] (the apiserver's `410 Gone`) when
//! that history is gone. Updates and deletes are compare-and-swap on `mod_revision`, which
//! is how the apiserver implements optimistic concurrency. Leases expire keys (Events).
//!
//! [`Store`] is object-safe so the apiserver holds an `Arc<dyn Store>`: the embedded
//! backend ([`redb::RedbStore`], the default) or etcd ([`etcd::EtcdStore`],
//! `--etcd-servers`).

pub mod encryption;
pub mod etcd;
pub mod migrate;
pub mod redb;
pub mod wal;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A store revision. Positive; 0 means "before anything was written".
pub type Revision = i64;

/// A lease identifier ([`Store::grant_lease`]).
pub type LeaseId = i64;

/// A boxed future, so [`Store`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Arc<[u8]>,
    /// Revision of the write that created the key (as it exists now).
    pub create_revision: Revision,
    /// Revision of the last write to the key; for a delete event, the delete's revision.
    pub mod_revision: Revision,
    /// Lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For `Put` the new value; for `Delete` the last value, with `mod_revision` set to
    /// the revision of the delete.
    pub kv: KeyValue,
    /// The value before this change (`None` when the key was created).
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Errors of the store. The apiserver maps them to HTTP status codes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },
    #[error("key {key:?} not found")]
    NotFound { key: String },
    #[error("key {key:?} was modified at revision {actual}, not at {expected}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("revision {requested} has been compacted; the oldest available is {compacted}")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    #[error("the store is closed")]
    Closed,
    /// The backend cannot be reached (etcd down, no quorum): nothing was written.
    /// The apiserver answers 503.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time: a write may or may not have been applied,
    /// and was not acknowledged. The apiserver answers 504.
    #[error("storage request timed out: {0}")]
    Timeout(String),
    #[error("storage backend: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How to list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Read at this revision (default: the current one).
    pub revision: Option<Revision>,
    /// Only keys strictly greater than this one (pagination).
    pub start_after: Option<String>,
    /// At most this many keys.
    pub limit: Option<usize>,
}

/// A page of keys, read at `revision`.
#[derive(Debug, Clone)]
pub struct ListResult {
    pub kvs: Vec<KeyValue>,
    pub revision: Revision,
    /// More keys match after the last one returned.
    pub more: bool,
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    Event(Event),
    /// Every change under the watched prefix up to this revision was delivered before
    /// it, though the revision itself may belong to a write elsewhere (etcd's progress
    /// notification). How a watch cache learns it is current when the newest writes
    /// were to keys it does not watch.
    Progress(Revision),
}

/// Asks a watch's backend for a [`Watched::Progress`] soon (etcd's `RequestProgress`).
/// Requests made before the backend gets to them count as one.
#[derive(Debug, Clone, Default)]
pub struct ProgressRequest(Arc<tokio::sync::Notify>);

impl ProgressRequest {
    pub fn request(&self) {
        self.0.notify_one();
    }

    /// Waits for the next request (the backend's side).
    pub async fn requested(&self) {
        self.0.notified().await;
    }
}

/// A stream of events, in revision order. Ends with `Err` when the watch can no longer
/// continue (compaction overtook a slow watcher, or the store closed).
#[derive(Debug)]
pub struct WatchStream {
    feed: Feed,
    progress: Option<ProgressRequest>,
    map: Option<EventMap>,
    /// An error was passed on: the stream is over.
    ended: bool,
}

/// A change made to each event as the stream's reader takes it ([`WatchStream::map`]).
struct EventMap(Box<dyn Fn(Event) -> Result<Event> + Send + Sync>);

impl std::fmt::Debug for EventMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventMap")
    }
}

#[derive(Debug)]
enum Feed {
    Events(tokio::sync::mpsc::Receiver<Result<Event>>),
    Watched(tokio::sync::mpsc::Receiver<Result<Watched>>),
}

impl WatchStream {
    /// A stream of events only.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Result<Event>>) -> Self {
        Self {
            feed: Feed::Events(rx),
            progress: None,
            map: None,
            ended: false,
        }
    }

    /// A stream that may carry [`Watched::Progress`] between its events, and that
    /// `progress` (if any) asks for one.
    pub fn with_progress(
        rx: tokio::sync::mpsc::Receiver<Result<Watched>>,
        progress: Option<ProgressRequest>,
    ) -> Self {
        Self {
            feed: Feed::Watched(rx),
            progress,
            map: None,
            ended: false,
        }
    }

    /// This stream with `f` applied to each event (not to progress) in the reader's
    /// task as it takes it — no task or channel of its own between the two; after any
    /// map given before. An `Err` from `f` is passed on in the event's place and ends
    /// the stream, as the store's own errors do.
    pub fn map(mut self, f: impl Fn(Event) -> Result<Event> + Send + Sync + 'static) -> Self {
        self.map = Some(EventMap(match self.map.take() {
            Some(EventMap(first)) => Box::new(move |event| f(first(event)?)),
            None => Box::new(f),
        }));
        self
    }

    /// The next event, passing over progress; `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            match self.next_watched().await? {
                Ok(Watched::Event(event)) => return Some(Ok(event)),
                Ok(Watched::Progress(_)) => {}
                Err(err) => return Some(Err(err)),
            }
        }
    }

    /// The next event or progress notification; `None` once the stream ended.
    pub async fn next_watched(&mut self) -> Option<Result<Watched>> {
        if self.ended {
            return None;
        }
        let next = match &mut self.feed {
            Feed::Events(rx) => rx.recv().await?.map(Watched::Event),
            Feed::Watched(rx) => rx.recv().await?,
        };
        let next = match (next, &self.map) {
            (Ok(Watched::Event(event)), Some(map)) => map.0(event).map(Watched::Event),
            (other, _) => other,
        };
        if next.is_err() {
            // Over: the store's side stops at once rather than filling the channel.
            self.ended = true;
            match &mut self.feed {
                Feed::Events(rx) => rx.close(),
                Feed::Watched(rx) => rx.close(),
            }
        }
        Some(next)
    }

    /// How to ask this stream for a progress notification; `None` when it sends none
    /// (the embedded store, whose current revision is always an event's, or an etcd
    /// whose notifications can overtake events — see [`etcd::Options::watch_progress`]).
    pub fn progress_request(&self) -> Option<ProgressRequest> {
        self.progress.clone()
    }
}

/// A versioned, watchable key-value store (see the module docs).
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The newest revision written.
    fn current_revision(&self) -> Revision;

    /// Whether other processes write this store too (several berth-servers over one
    /// etcd): then [`Store::current_revision`] is only what this one has seen, and a
    /// read that must see every acknowledged write asks the store
    /// ([`Store::consistent_revision`], or a read of the store itself).
    fn shared(&self) -> bool {
        false
    }

    /// Whether a read is a round trip to another process (etcd) rather than a lookup in
    /// this one's own file: then an update starts from the watch cache's copy of the
    /// object instead of reading it first, as kube-apiserver's do.
    fn remote(&self) -> bool {
        false
    }

    /// A revision at or after every write acknowledged before the call, by any
    /// process: what a consistent read (no resourceVersion) must reflect. kube-apiserver's
    /// `GetCurrentResourceVersion` (KEP-2340); etcd answers it with one quorum read. A
    /// store only this process writes knows it without asking.
    fn consistent_revision(&self) -> BoxFuture<'_, Result<Revision>> {
        Box::pin(std::future::ready(Ok(self.current_revision())))
    }

    /// The oldest revision still readable (0 before any compaction).
    fn compacted_revision(&self) -> Revision;

    /// The key's value at `revision` (default: now).
    fn get<'a>(
        &'a self,
        key: &'a str,
        revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<Option<KeyValue>>>;

    /// Keys starting with `prefix`, in key order.
    fn list<'a>(&'a self, prefix: &'a str, opts: ListOptions) -> BoxFuture<'a, Result<ListResult>>;

    /// Creates the key; [`StoreError::AlreadyExists`] if it exists.
    fn create(
        &self,
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'_, Result<KeyValue>>;

    /// Replaces the value if the key's `mod_revision` is `expected`
    /// ([`StoreError::Conflict`] otherwise, [`StoreError::NotFound`] if absent).
    fn update(
        &self,
        key: String,
        value: Vec<u8>,
        expected: Revision,
    ) -> BoxFuture<'_, Result<KeyValue>>;

    /// Deletes the key, if its `mod_revision` is `expected` when given. Returns the
    /// deleted value with `mod_revision` set to the delete's revision.
    fn delete(&self, key: String, expected: Option<Revision>) -> BoxFuture<'_, Result<KeyValue>>;

    /// Every change to keys under `prefix` with a revision greater than `after`.
    fn watch(&self, prefix: String, after: Revision) -> BoxFuture<'_, Result<WatchStream>>;

    /// [`Store::watch`] for a watcher that holds every key's value itself (the
    /// apiserver's watch cache): its events need not carry `prev`, and a delete event's
    /// value may be empty, the last value being the watcher's. A backend that reads
    /// previous values at a cost (etcd reads each one from its history for every
    /// watcher asking for `prev_kv`) leaves them out; the others watch as `watch` does.
    fn watch_without_prev(
        &self,
        prefix: String,
        after: Revision,
    ) -> BoxFuture<'_, Result<WatchStream>> {
        self.watch(prefix, after)
    }

    /// Discards history before `revision`; reads and watches from before it then fail
    /// with [`StoreError::Compacted`].
    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>>;

    /// A lease that deletes its keys `ttl` after it was granted.
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>>;

    /// Renews lease `id` for another of its TTLs from now (etcd's LeaseKeepAlive), or
    /// [`StoreError::LeaseNotFound`] once it has expired. How a berth-server keeps its
    /// master lease, the key that lists it among the `kubernetes` Service's endpoints
    /// (`apiserver::endpoint_reconciler`).
    fn keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Err(StoreError::LeaseNotFound(id))))
    }

    /// Whether the key's stored bytes differ from what writing the same object now
    /// would store — encrypted by another provider or key than the one that writes
    /// ([`encryption`]). An update that changes nothing still rewrites such a value, as
    /// kube-apiserver does for a "stale" read. Plain stores: never.
    fn stale<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        let _ = key;
        Box::pin(std::future::ready(Ok(false)))
    }

    /// Whether the backend answers now (`/readyz`'s `etcd` check): etcd must serve a
    /// quorum read within a deadline; the embedded store always does.
    fn health(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Writes a consistent copy of the whole store to `out` (`berth-server snapshot
    /// save`): every write acknowledged before the call is in it, nothing of a later
    /// one; returns the revision it holds. The embedded store's format is
    /// [`redb::snapshot`]; a backend with a tool of its own says so (etcd: `etcdctl
    /// snapshot save`).
    fn snapshot(&self, out: Box<dyn std::io::Write + Send>) -> BoxFuture<'_, Result<Revision>> {
        drop(out);
        Box::pin(std::future::ready(Err(StoreError::Backend(
            "this store backend has no berth snapshot; use its own tool (etcd: etcdctl snapshot save)"
                .into(),
        ))))
    }
}

/// The first key after every key starting with `prefix` (for range scans).
pub fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.to_owned();
    end.push(char::MAX);
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, revision: Revision) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.into(),
                value: Arc::from(&b"{}"[..]),
                create_revision: revision,
                mod_revision: revision,
                lease: None,
            },
            prev: None,
        }
    }

    /// A mapped stream changes events (maps in the order given), passes progress as it
    /// is, and ends after the first error a map returns.
    #[tokio::test]
    async fn a_mapped_watch_changes_events_and_ends_at_its_first_error() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        for watched in [
            Watched::Event(put("a", 1)),
            Watched::Progress(1),
            Watched::Event(put("bad", 2)),
            Watched::Event(put("c", 3)),
        ] {
            tx.send(Ok(watched)).await.expect("sent");
        }
        drop(tx);
        let mut stream = WatchStream::with_progress(rx, None)
            .map(|mut event| {
                if event.kv.key == "bad" {
                    return Err(StoreError::Backend("cannot decrypt bad".into()));
                }
                event.kv.key.push('!');
                Ok(event)
            })
            .map(|mut event| {
                // A second map runs after the first.
                event.kv.key.push('?');
                Ok(event)
            });
        match stream.next_watched().await {
            Some(Ok(Watched::Event(e))) => assert_eq!(e.kv.key, "a!?"),
            other => panic!("first: {other:?}"),
        }
        assert!(matches!(
            stream.next_watched().await,
            Some(Ok(Watched::Progress(1)))
        ));
        assert!(matches!(
            stream.next_watched().await,
            Some(Err(StoreError::Backend(m))) if m.contains("bad")
        ));
        assert!(
            stream.next_watched().await.is_none(),
            "ended after the error"
        );
    }
}
