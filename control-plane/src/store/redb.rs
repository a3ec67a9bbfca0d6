//! The embedded store backend: MVCC on [redb](https://docs.rs/redb), a pure-Rust,
//! copy-on-write B-tree engine with ACID transactions and crash safety built in.
//!
//! Entry point: [`RedbStore::open`]; consistent copies for backup in [`snapshot`]; the
//! store read from another process without changing it in [`export`].
//! Layout (all in one file):
//! - `current`: key → the live record (what a read at the newest revision sees),
//! - `history`: (key, revision) → the record written at that revision, or a tombstone,
//!   for reads at past revisions and for watch replay,
//! - `log`: revision → (kind, key, previous revision): the change feed watches replay,
//! - `leases` and `lease_keys`: TTL leases and the keys attached to them,
//! - `meta`: the current and compacted revisions and the next lease id.
//!
//! All writes go through one writer thread that commits **groups**: it takes every
//! request waiting in its queue, applies them one by one (each compare-and-swap sees the
//! ones before it) in a single transaction, appends the group's changes to the
//! write-ahead log ([`super::wal`]) and `fdatasync`s it — one sync for the whole group —
//! then commits the transaction without redb's own (much slower) durable commit. A
//! request is acknowledged only after its log record is on disk, so an acknowledged
//! write survives `kill -9` and power loss (the log is replayed on open); if the log
//! write fails, every request in the group fails and no revision is consumed. Every
//! half minute (or 32 MiB of log) a checkpoint makes redb durable and starts a new log
//! epoch; it stalls writers for redb's durable commit (50–100 ms here), so it is rare.
//! Between checkpoints a background thread writes redb's dirty pages out
//! ([`start_writeback`]), so the syncs redb makes on its own find little to write.

pub mod export;
pub mod snapshot;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use super::wal::{self, Mutation, Wal};
use super::{
    BoxFuture, Event, EventKind, KeyValue, LeaseId, ListOptions, ListResult, Result, Revision,
    Store, StoreError, WatchStream, prefix_end,
};

const CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current");
const HISTORY: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("history");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const LEASES: TableDefinition<i64, (u64, u64)> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<(i64, &str), ()> = TableDefinition::new("lease_keys");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_NEXT_LEASE: &str = "next_lease";
/// The write-ahead log epoch whose records are not yet in a durable redb commit.
const META_WAL_EPOCH: &str = "wal_epoch";

/// redb's page cache. Writes need only the B-tree paths they change (reads are the
/// watch cache's): with 16 MiB rather than 32, `bench apiserver`'s RSS with 10 000 pods
/// was 217 and 211 MB against 239 MB (release build; two runs with 16 MiB, one with 32;
/// creates/s 4 829 and 4 304 against 4 567, within this machine's noise).
const STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Largest group one commit takes.
const MAX_GROUP: usize = 4096;
/// Live events buffered per watcher before it falls back to replaying the log: one
/// group's worth (the watch cache, the one steady watcher, drains it between groups;
/// every slot keeps its event's values alive until it is overwritten).
const BROADCAST_CAPACITY: usize = MAX_GROUP;
/// How often the redb file's dirty pages are written out in the background. Each
/// write-out ends in a flush of the disk's volatile cache, and a log `fdatasync` issued
/// meanwhile waits for it: every 200 ms, those waits set the write tail (35 of 53 log
/// syncs over 5 ms overlapped one, under `perf trace`); every second, the mixed phase's
/// create p99 was 8.9, 7.2, 10.6 and 9.7 ms against 16.6, 15.1, 14.2 and 11.5 ms
/// (alternating release-build runs of `apiserver-load --core-only`). Every 2 s was no
/// better (19.9, 7.7 ms), and with none the checkpoints' syncs grow.
const WRITEBACK_TICK: Duration = Duration::from_secs(1);
/// How often expired leases are revoked.
const LEASE_TICK: Duration = Duration::from_millis(500);

/// The embedded store (see the module docs).
#[derive(Debug, Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Arc<Database>,
    requests: mpsc::Sender<Request>,
    revision: Arc<AtomicI64>,
    compacted: Arc<AtomicI64>,
    events: broadcast::Sender<Arc<Event>>,
    commits: Arc<AtomicU64>,
    /// Earliest lease expiry (unix ms), `u64::MAX` with no lease: the lease thread
    /// only wakes the writer when something is due, so an idle store does no fsync.
    next_expiry: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Op {
    Create {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact(Revision),
    GrantLease(Duration),
    KeepAlive(LeaseId),
    ExpireLeases,
}

#[derive(Debug)]
enum Outcome {
    Kv(KeyValue),
    Lease(LeaseId),
    Done,
}

#[derive(Debug)]
struct Request {
    op: Op,
    reply: Option<oneshot::Sender<Result<Outcome>>>,
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// A record in `current` or `history`.
#[derive(Debug, Clone)]
struct Record {
    create_revision: Revision,
    lease: Option<LeaseId>,
    /// `None` marks a deletion (history only).
    value: Option<Arc<[u8]>>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let value = self.value.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(17 + value.len());
        out.push(u8::from(self.value.is_some()));
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.lease.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 17 {
            return Err(StoreError::Backend(format!(
                "corrupt record of {} bytes",
                bytes.len()
            )));
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            i64::from_le_bytes(b)
        };
        let lease = word(9);
        Ok(Self {
            create_revision: word(1),
            lease: (lease != 0).then_some(lease),
            value: (bytes[0] == 1).then(|| Arc::from(&bytes[17..])),
        })
    }

    fn into_kv(self, key: &str, mod_revision: Revision) -> Option<KeyValue> {
        Some(KeyValue {
            key: key.to_owned(),
            value: self.value?,
            create_revision: self.create_revision,
            mod_revision,
            lease: self.lease,
        })
    }
}

/// A `log` entry: what happened at one revision.
fn encode_log(kind: EventKind, key: &str, prev: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.push(match kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    out.extend_from_slice(&prev.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

fn decode_log(bytes: &[u8]) -> Result<(EventKind, Revision, String)> {
    if bytes.len() < 9 {
        return Err(backend("corrupt log entry"));
    }
    let kind = if bytes[0] == 1 {
        EventKind::Delete
    } else {
        EventKind::Put
    };
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[1..9]);
    let key = String::from_utf8(bytes[9..].to_vec()).map_err(backend)?;
    Ok((kind, i64::from_le_bytes(b), key))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RedbStore {
    /// Opens (or creates) the store in `path` (a file).
    pub fn open(path: &Path) -> Result<Self> {
        // The apiserver serves reads from its watch cache; the store's page cache only
        // needs the working set of writes and the occasional read at a past revision
        // (redb's default, 1 GiB, would double the server's memory with no gain).
        let db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        let db = Arc::new(db);
        // Create the tables so that read transactions always find them.
        // Create the tables (so read transactions always find them), then replay what
        // the log holds beyond redb's last durable commit and start a new log epoch.
        let epoch = {
            let mut txn = db.begin_write().map_err(backend)?;
            txn.set_durability(Durability::Immediate).map_err(backend)?;
            let epoch = meta_get(&Tables::open(&txn)?.meta, META_WAL_EPOCH)?;
            txn.commit().map_err(backend)?;
            epoch
        };
        let (mut wal, replay) = Wal::open(&path.with_extension("wal"), epoch as u64)?;
        let (revision, compacted, next_expiry) = {
            let mut txn = db.begin_write().map_err(backend)?;
            txn.set_durability(Durability::Immediate).map_err(backend)?;
            let found = {
                let mut tables = Tables::open(&txn)?;
                if !replay.is_empty() {
                    tracing::info!(mutations = replay.len(), "replaying the store log");
                }
                for m in &replay {
                    tables.apply_mutation(m)?;
                }
                tables
                    .meta
                    .insert(META_WAL_EPOCH, epoch + 1)
                    .map_err(backend)?;
                (
                    meta_get(&tables.meta, META_REVISION)?,
                    meta_get(&tables.meta, META_COMPACTED)?,
                    earliest_expiry(&tables.leases)?,
                )
            };
            txn.commit().map_err(backend)?;
            found
        };
        wal.restart(epoch as u64 + 1);
        let next_expiry = Arc::new(AtomicU64::new(next_expiry));
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (requests, rx) = mpsc::channel();
        let revision = Arc::new(AtomicI64::new(revision));
        let compacted = Arc::new(AtomicI64::new(compacted));
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            wal,
            last_checkpoint: std::time::Instant::now(),
            next_expiry: next_expiry.clone(),
            commits: commits.clone(),
            db: db.clone(),
            revision: revision.clone(),
            compacted: compacted.clone(),
            events: events.clone(),
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(backend)?;
        let inner = Arc::new(Inner {
            db,
            requests,
            revision,
            compacted,
            events,
            commits,
            next_expiry,
        });
        every("store-leases", LEASE_TICK, &inner, |inner| {
            if inner.next_expiry.load(Ordering::Acquire) <= now_ms() {
                let _ = inner.requests.send(Request {
                    op: Op::ExpireLeases,
                    reply: None,
                });
            }
        })?;
        start_writeback(path, &inner)?;
        Ok(Self { inner })
    }

    /// Transactions committed since open (each one fsync); with group commit this
    /// grows slower than the number of writes.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    async fn submit(&self, op: Op) -> Result<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .requests
            .send(Request {
                op,
                reply: Some(tx),
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn submit_kv(&self, op: Op) -> Result<KeyValue> {
        match self.submit(op).await? {
            Outcome::Kv(kv) => Ok(kv),
            other => Err(backend(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(backend)?
    }
}

/// Checks `revision` against the readable window of a read transaction.
fn check_revision(
    meta: &impl ReadableTable<&'static str, i64>,
    revision: Revision,
) -> Result<Revision> {
    let current = meta_get(meta, META_REVISION)?;
    let compacted = meta_get(meta, META_COMPACTED)?;
    if revision > current {
        return Err(StoreError::FutureRevision {
            requested: revision,
            current,
        });
    }
    if revision < compacted {
        return Err(StoreError::Compacted {
            requested: revision,
            compacted,
        });
    }
    Ok(current)
}

fn earliest_expiry(leases: &impl ReadableTable<i64, (u64, u64)>) -> Result<u64> {
    let mut earliest = u64::MAX;
    for entry in leases.iter().map_err(backend)? {
        let (_, v) = entry.map_err(backend)?;
        earliest = earliest.min(v.value().1);
    }
    Ok(earliest)
}

fn meta_get(meta: &impl ReadableTable<&'static str, i64>, key: &str) -> Result<i64> {
    Ok(meta
        .get(key)
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// The latest version of `key` at or before `revision` in `history`.
fn history_at(
    history: &impl ReadableTable<(&'static str, i64), &'static [u8]>,
    key: &str,
    revision: Revision,
) -> Result<Option<(Revision, Record)>> {
    let mut range = history.range((key, 0)..=(key, revision)).map_err(backend)?;
    match range.next_back() {
        Some(entry) => {
            let (k, v) = entry.map_err(backend)?;
            Ok(Some((k.value().1, Record::decode(v.value())?)))
        }
        None => Ok(None),
    }
}

fn decode_current(bytes: &[u8]) -> Result<(Revision, Record)> {
    if bytes.len() < 8 {
        return Err(backend("corrupt current record"));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    Ok((i64::from_le_bytes(b), Record::decode(&bytes[8..])?))
}

fn encode_current(mod_revision: Revision, record: &Record) -> Vec<u8> {
    let mut out = mod_revision.to_le_bytes().to_vec();
    out.extend_from_slice(&record.encode());
    out
}

impl Store for RedbStore {
    fn current_revision(&self) -> Revision {
        self.inner.revision.load(Ordering::Acquire)
    }

    fn compacted_revision(&self) -> Revision {
        self.inner.compacted.load(Ordering::Acquire)
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        let key = key.to_owned();
        Box::pin(self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let current = meta_get(&meta, META_REVISION)?;
            match revision {
                Some(rev) if rev != current => {
                    check_revision(&meta, rev)?;
                    let history = txn.open_table(HISTORY).map_err(backend)?;
                    Ok(history_at(&history, &key, rev)?
                        .and_then(|(mod_rev, rec)| rec.into_kv(&key, mod_rev)))
                }
                _ => {
                    let table = txn.open_table(CURRENT).map_err(backend)?;
                    let Some(raw) = table.get(key.as_str()).map_err(backend)? else {
                        return Ok(None);
                    };
                    let (mod_rev, rec) = decode_current(raw.value())?;
                    Ok(rec.into_kv(&key, mod_rev))
                }
            }
        }))
    }

    fn list<'a>(&'a self, prefix: &'a str, opts: ListOptions) -> BoxFuture<'a, Result<ListResult>> {
        let prefix = prefix.to_owned();
        Box::pin(self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let current = meta_get(&meta, META_REVISION)?;
            let revision = opts.revision.unwrap_or(current);
            check_revision(&meta, revision)?;
            let end = prefix_end(&prefix);
            let start = match &opts.start_after {
                Some(after) if after.as_str() >= prefix.as_str() => {
                    let mut s = after.clone();
                    s.push('\0');
                    s
                }
                _ => prefix.clone(),
            };
            let limit = opts.limit.unwrap_or(usize::MAX);
            let mut kvs = Vec::new();
            let mut more = false;
            if start >= end {
                return Ok(ListResult {
                    kvs,
                    revision,
                    more,
                });
            }
            if revision == current {
                let table = txn.open_table(CURRENT).map_err(backend)?;
                for entry in table
                    .range::<&str>(start.as_str()..end.as_str())
                    .map_err(backend)?
                {
                    let (k, v) = entry.map_err(backend)?;
                    if kvs.len() == limit {
                        more = true;
                        break;
                    }
                    let (mod_rev, rec) = decode_current(v.value())?;
                    if let Some(kv) = rec.into_kv(k.value(), mod_rev) {
                        kvs.push(kv);
                    }
                }
            } else {
                let history = txn.open_table(HISTORY).map_err(backend)?;
                let mut pending: Option<(String, Revision, Record)> = None;
                let flush = |pending: Option<(String, Revision, Record)>,
                             kvs: &mut Vec<KeyValue>|
                 -> bool {
                    if let Some((key, mod_rev, rec)) = pending
                        && let Some(kv) = rec.into_kv(&key, mod_rev)
                    {
                        if kvs.len() == limit {
                            return false;
                        }
                        kvs.push(kv);
                    }
                    true
                };
                for entry in history
                    .range((start.as_str(), 0)..(end.as_str(), 0))
                    .map_err(backend)?
                {
                    let (k, v) = entry.map_err(backend)?;
                    let (key, rev) = k.value();
                    if rev > revision {
                        continue;
                    }
                    let same = pending.as_ref().is_some_and(|(p, _, _)| p == key);
                    if !same && !flush(pending.take(), &mut kvs) {
                        more = true;
                        break;
                    }
                    pending = Some((key.to_owned(), rev, Record::decode(v.value())?));
                }
                if !more && !flush(pending.take(), &mut kvs) {
                    more = true;
                }
            }
            Ok(ListResult {
                kvs,
                revision,
                more,
            })
        }))
    }

    fn create(
        &self,
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'_, Result<KeyValue>> {
        Box::pin(self.submit_kv(Op::Create { key, value, lease }))
    }

    fn update(
        &self,
        key: String,
        value: Vec<u8>,
        expected: Revision,
    ) -> BoxFuture<'_, Result<KeyValue>> {
        Box::pin(self.submit_kv(Op::Update {
            key,
            value,
            expected,
        }))
    }

    fn delete(&self, key: String, expected: Option<Revision>) -> BoxFuture<'_, Result<KeyValue>> {
        Box::pin(self.submit_kv(Op::Delete { key, expected }))
    }

    fn watch(&self, prefix: String, after: Revision) -> BoxFuture<'_, Result<WatchStream>> {
        Box::pin(async move {
            // Subscribe before replaying so nothing committed in between is missed.
            let live = self.inner.events.subscribe();
            let replay = self.replay(prefix.clone(), after).await?;
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            let store = self.clone();
            tokio::spawn(async move { store.forward(prefix, replay, live, tx).await });
            Ok(WatchStream::new(rx))
        })
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.submit(Op::Compact(revision)).await?;
            Ok(())
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>> {
        Box::pin(async move {
            match self.submit(Op::GrantLease(ttl)).await? {
                Outcome::Lease(id) => Ok(id),
                other => Err(backend(format!("unexpected outcome {other:?}"))),
            }
        })
    }

    fn keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.submit(Op::KeepAlive(id)).await?;
            Ok(())
        })
    }

    fn snapshot(&self, out: Box<dyn std::io::Write + Send>) -> BoxFuture<'_, Result<Revision>> {
        Box::pin(self.blocking(move |db| snapshot::write(db, out)))
    }
}

impl RedbStore {
    /// Every logged event under `prefix` after `after`, read in one snapshot.
    async fn replay(&self, prefix: String, after: Revision) -> Result<Vec<Event>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let compacted = meta_get(&meta, META_COMPACTED)?;
            if after < compacted {
                return Err(StoreError::Compacted {
                    requested: after,
                    compacted,
                });
            }
            let log = txn.open_table(LOG).map_err(backend)?;
            let history = txn.open_table(HISTORY).map_err(backend)?;
            let mut events = Vec::new();
            for entry in log.range((after + 1)..).map_err(backend)? {
                let (rev, raw) = entry.map_err(backend)?;
                let rev = rev.value();
                let (kind, prev_rev, key) = decode_log(raw.value())?;
                if !key.starts_with(&prefix) {
                    continue;
                }
                let version = |at: Revision| -> Result<Option<KeyValue>> {
                    if at == 0 {
                        return Ok(None);
                    }
                    let Some(raw) = history.get((key.as_str(), at)).map_err(backend)? else {
                        return Ok(None);
                    };
                    Ok(Record::decode(raw.value())?.into_kv(&key, at))
                };
                let prev = version(prev_rev)?;
                let event = match kind {
                    EventKind::Put => {
                        let Some(kv) = version(rev)? else {
                            return Err(backend(format!("history lost {key} at {rev}")));
                        };
                        Event { kind, kv, prev }
                    }
                    EventKind::Delete => {
                        let Some(mut kv) = prev.clone() else {
                            return Err(backend(format!("history lost {key} before {rev}")));
                        };
                        kv.mod_revision = rev;
                        Event { kind, kv, prev }
                    }
                };
                events.push(event);
            }
            Ok(events)
        })
        .await
    }

    async fn forward(
        &self,
        prefix: String,
        replay: Vec<Event>,
        mut live: broadcast::Receiver<Arc<Event>>,
        tx: tokio::sync::mpsc::Sender<Result<Event>>,
    ) {
        let mut last = Revision::MIN;
        let mut pending = replay;
        loop {
            for event in pending.drain(..) {
                last = event.revision();
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            // Follow the live feed until it skips something; then replay from the log.
            let resume = loop {
                match live.recv().await {
                    Ok(event) => {
                        if event.revision() <= last {
                            continue;
                        }
                        if !event.kv.key.starts_with(&prefix) {
                            continue;
                        }
                        last = event.revision();
                        if tx.send(Ok((*event).clone())).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break last,
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx.send(Err(StoreError::Closed)).await;
                        return;
                    }
                }
            };
            match self.replay(prefix.clone(), resume.max(0)).await {
                Ok(events) => pending = events,
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            }
        }
    }
}

/// Keeps the redb file's dirty pages few: every [`WRITEBACK_TICK`] with commits since the
/// last one, a background thread writes them out (`fdatasync` on its own handle).
/// Commits leave their pages to the kernel, which writes them out only after 30 s; but
/// redb syncs the whole file whenever it grows it, and a checkpoint syncs it too — with
/// seconds of pages still dirty, that one sync stalled the writer (and every write
/// waiting on it) for 30–60 ms, several times per minute under load. Written out as
/// they come, those syncs find little left to write.
fn start_writeback(path: &Path, inner: &Arc<Inner>) -> Result<()> {
    let file = std::fs::File::open(path)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
    let mut synced = 0;
    every("store-writeback", WRITEBACK_TICK, inner, move |inner| {
        let commits = inner.commits.load(Ordering::Relaxed);
        if commits == synced {
            return;
        }
        let started = std::time::Instant::now();
        if let Err(err) = file.sync_data() {
            tracing::warn!(%err, "store writeback");
        }
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                "store writeback took too long"
            );
        }
        synced = commits;
    })
}

/// Runs `tick` on a thread of its own every `period` for as long as the store is open.
fn every(
    name: &str,
    period: Duration,
    inner: &Arc<Inner>,
    mut tick: impl FnMut(&Inner) + Send + 'static,
) -> Result<()> {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                let Some(inner) = weak.upgrade() else { return };
                tick(&inner);
            }
        })
        .map_err(backend)?;
    Ok(())
}

/// The thread that owns all writes (see the module docs).
struct Writer {
    wal: Wal,
    last_checkpoint: std::time::Instant,
    next_expiry: Arc<AtomicU64>,
    commits: Arc<AtomicU64>,
    db: Arc<Database>,
    revision: Arc<AtomicI64>,
    compacted: Arc<AtomicI64>,
    events: broadcast::Sender<Arc<Event>>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(req) => group.push(req),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        // Closing: leave redb durable and the log empty.
        if let Err(err) = checkpoint(&self.db, &mut self.wal) {
            tracing::error!(%err, "store checkpoint at close failed; the log will be replayed");
        }
    }

    fn commit_group(&mut self, group: Vec<Request>) {
        let mut revision = self.revision.load(Ordering::Acquire);
        let mut compacted = self.compacted.load(Ordering::Acquire);
        let mut outcomes: Vec<Result<Outcome>> = Vec::with_capacity(group.len());
        let mut events: Vec<Event> = Vec::new();
        let mut next_expiry = self.next_expiry.load(Ordering::Acquire);
        let mut timing = CommitTiming::start();
        let result = (|| -> Result<()> {
            let mut txn = self.db.begin_write().map_err(backend)?;
            // Durable through the log, not through redb (see the module docs).
            txn.set_durability(Durability::None).map_err(backend)?;
            let journal = {
                let mut tables = Tables::open(&txn)?;
                for req in &group {
                    let outcome =
                        tables.apply(&req.op, &mut revision, &mut compacted, &mut events)?;
                    outcomes.push(outcome);
                }
                if group.iter().any(|r| {
                    matches!(
                        r.op,
                        Op::GrantLease(_) | Op::KeepAlive(_) | Op::ExpireLeases
                    )
                }) {
                    next_expiry = earliest_expiry(&tables.leases)?;
                }
                if !tables.journal.is_empty() {
                    tables.mutate(Mutation::Meta(META_REVISION.into(), revision))?;
                    tables.mutate(Mutation::Meta(META_COMPACTED.into(), compacted))?;
                }
                std::mem::take(&mut tables.journal)
            };
            if journal.is_empty() {
                return txn.abort().map_err(backend);
            }
            timing.step(Step::Apply);
            self.wal.append(&journal)?;
            timing.step(Step::LogSync);
            txn.commit().map_err(backend)?;
            timing.step(Step::Commit);
            Ok(())
        })();
        timing.report(group.len());
        if let Err(err) = result {
            tracing::error!(%err, requests = group.len(), "store commit failed");
            for req in group {
                if let Some(reply) = req.reply {
                    let _ = reply.send(Err(err.clone()));
                }
            }
            return;
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.next_expiry.store(next_expiry, Ordering::Release);
        self.revision.store(revision, Ordering::Release);
        self.compacted.store(compacted, Ordering::Release);
        for event in events {
            let _ = self.events.send(Arc::new(event));
        }
        for (req, outcome) in group.into_iter().zip(outcomes) {
            if let Some(reply) = req.reply {
                let _ = reply.send(outcome);
            }
        }
        if self.last_checkpoint.elapsed() >= wal::CHECKPOINT_EVERY
            || self.wal.size() >= wal::CHECKPOINT_BYTES
        {
            let started = std::time::Instant::now();
            let log_bytes = self.wal.size();
            let result = checkpoint(&self.db, &mut self.wal);
            let took = started.elapsed();
            if took >= SLOW_COMMIT {
                tracing::warn!(
                    took_ms = took.as_millis() as u64,
                    log_bytes,
                    "store checkpoint took too long"
                );
            } else {
                tracing::debug!(
                    took_us = took.as_micros() as u64,
                    log_bytes,
                    "store checkpoint"
                );
            }
            if let Err(err) = result {
                tracing::error!(%err, "store checkpoint failed; the log keeps growing");
            }
            self.last_checkpoint = std::time::Instant::now();
        }
    }
}

/// A commit group slower than this is logged with where its time went, as etcd warns
/// of "apply request took too long" past 100 ms.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy)]
enum Step {
    Apply,
    LogSync,
    Commit,
}

/// Where one commit group's time goes, for the slow-commit warning.
struct CommitTiming {
    started: std::time::Instant,
    last: std::time::Instant,
    /// Microseconds in each [`Step`].
    steps: [u64; 3],
}

impl CommitTiming {
    fn start() -> Self {
        let now = std::time::Instant::now();
        Self {
            started: now,
            last: now,
            steps: [0; 3],
        }
    }

    fn step(&mut self, step: Step) {
        let now = std::time::Instant::now();
        self.steps[step as usize] = now.duration_since(self.last).as_micros() as u64;
        self.last = now;
    }

    fn report(&self, requests: usize) {
        let took = self.started.elapsed();
        if took >= SLOW_COMMIT {
            let [apply_us, log_sync_us, commit_us] = self.steps;
            // Time in no finished step: a group that failed or had nothing to log.
            let other_us =
                (took.as_micros() as u64).saturating_sub(apply_us + log_sync_us + commit_us);
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                requests,
                apply_us,
                log_sync_us,
                commit_us,
                other_us,
                "store commit took too long"
            );
        }
    }
}

/// Makes everything committed so far durable in redb, together with a new log epoch,
/// and starts the log over.
fn checkpoint(db: &Database, wal: &mut Wal) -> Result<()> {
    let epoch = wal.epoch() + 1;
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate).map_err(backend)?;
    {
        let mut meta = txn.open_table(META).map_err(backend)?;
        meta.insert(META_WAL_EPOCH, epoch as i64).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    wal.restart(epoch);
    Ok(())
}

struct Tables<'t> {
    current: redb::Table<'t, &'static str, &'static [u8]>,
    history: redb::Table<'t, (&'static str, i64), &'static [u8]>,
    log: redb::Table<'t, i64, &'static [u8]>,
    leases: redb::Table<'t, i64, (u64, u64)>,
    lease_keys: redb::Table<'t, (i64, &'static str), ()>,
    meta: redb::Table<'t, &'static str, i64>,
    /// Every change made through [`Tables::mutate`], for the write-ahead log.
    journal: Vec<Mutation>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self> {
        Ok(Self {
            current: txn.open_table(CURRENT).map_err(backend)?,
            history: txn.open_table(HISTORY).map_err(backend)?,
            log: txn.open_table(LOG).map_err(backend)?,
            leases: txn.open_table(LEASES).map_err(backend)?,
            lease_keys: txn.open_table(LEASE_KEYS).map_err(backend)?,
            meta: txn.open_table(META).map_err(backend)?,
            journal: Vec::new(),
        })
    }

    /// Makes one change and records it for the log.
    fn mutate(&mut self, m: Mutation) -> Result<()> {
        self.apply_mutation(&m)?;
        self.journal.push(m);
        Ok(())
    }

    /// Makes one change, recording `logged` for the log instead: the same change
    /// written more compactly.
    fn mutate_logged_as(&mut self, m: Mutation, logged: Mutation) -> Result<()> {
        self.apply_mutation(&m)?;
        self.journal.push(logged);
        Ok(())
    }

    /// Makes one change (also how the log is replayed).
    fn apply_mutation(&mut self, m: &Mutation) -> Result<()> {
        match m {
            Mutation::CurrentPut(k, v) => self.current.insert(k.as_str(), v.as_slice()).map(drop),
            Mutation::CurrentDel(k) => self.current.remove(k.as_str()).map(drop),
            Mutation::HistoryPut(k, r, v) => self
                .history
                .insert((k.as_str(), *r), v.as_slice())
                .map(drop),
            Mutation::HistoryFromCurrent(k, r) => {
                let Some((_, record)) = self.live(k)? else {
                    return Err(backend(format!("log: no current record of {k:?} to copy")));
                };
                self.history
                    .insert((k.as_str(), *r), record.encode().as_slice())
                    .map(drop)
            }
            Mutation::HistoryDel(k, r) => self.history.remove((k.as_str(), *r)).map(drop),
            Mutation::LogPut(r, v) => self.log.insert(*r, v.as_slice()).map(drop),
            Mutation::LogDel(r) => self.log.remove(*r).map(drop),
            Mutation::LeasePut(id, ttl, exp) => self.leases.insert(*id, (*ttl, *exp)).map(drop),
            Mutation::LeaseDel(id) => self.leases.remove(*id).map(drop),
            Mutation::LeaseKeyPut(id, k) => self.lease_keys.insert((*id, k.as_str()), ()).map(drop),
            Mutation::LeaseKeyDel(id, k) => self.lease_keys.remove((*id, k.as_str())).map(drop),
            Mutation::Meta(k, v) => self.meta.insert(k.as_str(), *v).map(drop),
        }
        .map_err(backend)
    }

    /// Applies one request. `Err` aborts the whole group (an engine failure);
    /// `Ok(Err(..))` is this request's own failure.
    fn apply(
        &mut self,
        op: &Op,
        revision: &mut Revision,
        compacted: &mut Revision,
        events: &mut Vec<Event>,
    ) -> Result<Result<Outcome>> {
        match op {
            Op::Create { key, value, lease } => {
                if self.live(key)?.is_some() {
                    return Ok(Err(StoreError::AlreadyExists { key: key.clone() }));
                }
                if let Some(id) = lease
                    && self.leases.get(*id).map_err(backend)?.is_none()
                {
                    return Ok(Err(StoreError::LeaseNotFound(*id)));
                }
                *revision += 1;
                let record = Record {
                    create_revision: *revision,
                    lease: *lease,
                    value: Some(Arc::from(value.as_slice())),
                };
                if let Some(id) = lease {
                    self.mutate(Mutation::LeaseKeyPut(*id, key.clone()))?;
                }
                let kv = self.put(key, record, *revision, None, events)?;
                Ok(Ok(Outcome::Kv(kv)))
            }
            Op::Update {
                key,
                value,
                expected,
            } => {
                let Some((mod_rev, old)) = self.live(key)? else {
                    return Ok(Err(StoreError::NotFound { key: key.clone() }));
                };
                if mod_rev != *expected {
                    return Ok(Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        actual: mod_rev,
                    }));
                }
                *revision += 1;
                let prev = old.clone().into_kv(key, mod_rev);
                let record = Record {
                    create_revision: old.create_revision,
                    lease: old.lease,
                    value: Some(Arc::from(value.as_slice())),
                };
                let kv = self.put(key, record, *revision, prev, events)?;
                Ok(Ok(Outcome::Kv(kv)))
            }
            Op::Delete { key, expected } => {
                let Some((mod_rev, old)) = self.live(key)? else {
                    return Ok(Err(StoreError::NotFound { key: key.clone() }));
                };
                if let Some(expected) = expected
                    && mod_rev != *expected
                {
                    return Ok(Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        actual: mod_rev,
                    }));
                }
                *revision += 1;
                let kv = self.remove(key, mod_rev, old, *revision, events)?;
                Ok(Ok(Outcome::Kv(kv)))
            }
            Op::Compact(target) => {
                if *target > *revision {
                    return Ok(Err(StoreError::FutureRevision {
                        requested: *target,
                        current: *revision,
                    }));
                }
                if *target > *compacted {
                    self.compact(*target)?;
                    *compacted = *target;
                }
                Ok(Ok(Outcome::Done))
            }
            Op::GrantLease(ttl) => {
                let id = meta_get(&self.meta, META_NEXT_LEASE)?.max(1);
                self.mutate(Mutation::Meta(META_NEXT_LEASE.into(), id + 1))?;
                let ttl_ms = ttl.as_millis() as u64;
                self.mutate(Mutation::LeasePut(id, ttl_ms, now_ms() + ttl_ms))?;
                Ok(Ok(Outcome::Lease(id)))
            }
            Op::KeepAlive(id) => {
                let Some(ttl_ms) = self.leases.get(*id).map_err(backend)?.map(|v| v.value().0)
                else {
                    return Ok(Err(StoreError::LeaseNotFound(*id)));
                };
                self.mutate(Mutation::LeasePut(*id, ttl_ms, now_ms() + ttl_ms))?;
                Ok(Ok(Outcome::Done))
            }
            Op::ExpireLeases => {
                let now = now_ms();
                let mut expired = Vec::new();
                for entry in self.leases.iter().map_err(backend)? {
                    let (id, v) = entry.map_err(backend)?;
                    if v.value().1 <= now {
                        expired.push(id.value());
                    }
                }
                for id in expired {
                    let mut keys = Vec::new();
                    for entry in self
                        .lease_keys
                        .range((id, "")..(id + 1, ""))
                        .map_err(backend)?
                    {
                        let (k, _) = entry.map_err(backend)?;
                        keys.push(k.value().1.to_owned());
                    }
                    for key in keys {
                        self.mutate(Mutation::LeaseKeyDel(id, key.clone()))?;
                        if let Some((mod_rev, old)) = self.live(&key)?
                            && old.lease == Some(id)
                        {
                            *revision += 1;
                            self.remove(&key, mod_rev, old, *revision, events)?;
                        }
                    }
                    self.mutate(Mutation::LeaseDel(id))?;
                }
                Ok(Ok(Outcome::Done))
            }
        }
    }

    fn live(&self, key: &str) -> Result<Option<(Revision, Record)>> {
        match self.current.get(key).map_err(backend)? {
            Some(raw) => Ok(Some(decode_current(raw.value())?)),
            None => Ok(None),
        }
    }

    fn put(
        &mut self,
        key: &str,
        record: Record,
        revision: Revision,
        prev: Option<KeyValue>,
        events: &mut Vec<Event>,
    ) -> Result<KeyValue> {
        let prev_rev = prev.as_ref().map_or(0, |p| p.mod_revision);
        self.mutate(Mutation::CurrentPut(
            key.to_owned(),
            encode_current(revision, &record),
        ))?;
        // The value goes to the log once: its history entry is logged as a copy of
        // the current record just written.
        self.mutate_logged_as(
            Mutation::HistoryPut(key.to_owned(), revision, record.encode()),
            Mutation::HistoryFromCurrent(key.to_owned(), revision),
        )?;
        self.mutate(Mutation::LogPut(
            revision,
            encode_log(EventKind::Put, key, prev_rev),
        ))?;
        let kv = record
            .into_kv(key, revision)
            .ok_or_else(|| backend("put without a value"))?;
        events.push(Event {
            kind: EventKind::Put,
            kv: kv.clone(),
            prev,
        });
        Ok(kv)
    }

    fn remove(
        &mut self,
        key: &str,
        mod_rev: Revision,
        old: Record,
        revision: Revision,
        events: &mut Vec<Event>,
    ) -> Result<KeyValue> {
        self.mutate(Mutation::CurrentDel(key.to_owned()))?;
        let tombstone = Record {
            create_revision: old.create_revision,
            lease: None,
            value: None,
        };
        self.mutate(Mutation::HistoryPut(
            key.to_owned(),
            revision,
            tombstone.encode(),
        ))?;
        self.mutate(Mutation::LogPut(
            revision,
            encode_log(EventKind::Delete, key, mod_rev),
        ))?;
        let prev = old
            .into_kv(key, mod_rev)
            .ok_or_else(|| backend("live key without a value"))?;
        let mut kv = prev.clone();
        kv.mod_revision = revision;
        events.push(Event {
            kind: EventKind::Delete,
            kv: kv.clone(),
            prev: Some(prev),
        });
        Ok(kv)
    }

    /// Drops every version superseded at or before `target` and the log up to it.
    fn compact(&mut self, target: Revision) -> Result<()> {
        let mut keys = BTreeSet::new();
        let mut revisions = Vec::new();
        for entry in self.log.range(..=target).map_err(backend)? {
            let (rev, raw) = entry.map_err(backend)?;
            revisions.push(rev.value());
            keys.insert(decode_log(raw.value())?.2);
        }
        for key in &keys {
            let mut versions = Vec::new();
            for entry in self
                .history
                .range((key.as_str(), 0)..=(key.as_str(), target))
                .map_err(backend)?
            {
                let (k, v) = entry.map_err(backend)?;
                versions.push((k.value().1, v.value().first() == Some(&0)));
            }
            let Some(&(latest, latest_is_tombstone)) = versions.last() else {
                continue;
            };
            for (rev, _) in versions {
                if rev != latest || latest_is_tombstone {
                    self.mutate(Mutation::HistoryDel(key.clone(), rev))?;
                }
            }
        }
        for rev in revisions {
            self.mutate(Mutation::LogDel(rev))?;
        }
        Ok(())
    }
}
