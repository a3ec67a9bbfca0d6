//! The etcd v3 backend: [`EtcdStore`] keeps berth's objects in an etcd cluster, as
//! kube-apiserver does, with the same semantics as the embedded store
//! ([`super::redb`]) because both are etcd's MVCC model.
//!
//! Entry point: [`EtcdStore::connect`] (one attempt) or [`EtcdStore::connect_retrying`]
//! (what `berth-server --etcd-servers` uses). Mapping:
//! - revisions are etcd's (a fresh etcd starts at 1, not 0);
//! - create is a transaction `create_revision == 0 → put`; update and delete are
//!   `version > 0 ∧ mod_revision == expected → put/delete` with a `get` in the else
//!   branch, which tells a [`StoreError::Conflict`] from a [`StoreError::NotFound`];
//!   an update keeps the key's lease (`ignore_lease`), as the embedded store does;
//! - reads at a revision are etcd range reads at it; etcd's "required revision has been
//!   compacted" and "is a future revision" become [`StoreError::Compacted`] and
//!   [`StoreError::FutureRevision`];
//! - watches are etcd watches from `after + 1` with `prev_kv` ([`watch`]; without it
//!   for [`Store::watch_without_prev`], the watch cache's, which spares etcd a read of
//!   each update's and delete's previous value from its history), re-created
//!   from the last revision delivered when the connection drops, ending with
//!   [`StoreError::Compacted`] only when etcd says that history is gone; this store's
//!   own creates, updates and deletes reach its watches as soon as their txns are
//!   answered (each one's event is published then, [`watch::LocalWrite`]), ahead of
//!   etcd's watch, in order with everything else;
//! - leases are etcd leases (whole seconds, at least etcd's minimum TTL);
//! - keys are translated to kube-apiserver's layout ([`keys`]); values are stored as
//!   they are (JSON, or `k8s:enc:` bytes under [`super::encryption`]).
//!
//! Failures of etcd itself become [`StoreError::Unavailable`] (nothing was written;
//! the apiserver answers 503) or [`StoreError::Timeout`] (no answer in time: a write
//! may or may not have been applied, and is not acknowledged; 504). No write is ever
//! retried here: retrying a compare-and-swap whose outcome is unknown could report a
//! conflict with itself. Reads are not retried either; the client reconnects on its own.
//!
//! [`Store::current_revision`] is the newest revision of a change under the prefix this
//! store knows of — its own writes and a background watch on the whole prefix — so the
//! watch cache, which sees exactly those changes, can always catch up with it (writes
//! elsewhere in a shared etcd move etcd's revision without an event under the prefix).
//! Other servers write the same etcd, so a read that must see every acknowledged write
//! asks etcd instead: [`Store::consistent_revision`] is one quorum read's header
//! revision, which may be such a write elsewhere; watches then carry etcd's progress
//! notifications ([`super::Watched::Progress`]) for the watch cache to reach it, when
//! etcd sends them in order ([`progress`]).

pub mod import;
pub mod keys;
mod options;
mod progress;
mod request;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{
    BoxFuture, Event, EventKind, KeyValue, LeaseId, ListOptions, ListResult, Result, Revision,
    Store, StoreError, WatchStream,
};
use keys::Layout;
pub use options::Options;
use request::classify;
pub(crate) use request::{Failure, call};

/// How long one request to etcd may take before it fails with [`StoreError::Timeout`]
/// (etcd's own proposal timeout is 5 s plus two election timeouts).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the `/readyz` check waits for a quorum read.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read from etcd (kube-apiserver's client allows as much; the
/// gRPC default, 4 MiB, is one big ConfigMap and a few more).
const MAX_MESSAGE: usize = i32::MAX as usize;
/// Keys read per range request of a list.
const LIST_PAGE: usize = 1000;
/// The key the health check reads (kube-apiserver's and `etcdctl endpoint health`'s).
const HEALTH_KEY: &str = "health";

/// What the store and its background tasks share.
#[derive(Debug)]
pub(crate) struct Revisions {
    current: AtomicI64,
    compacted: AtomicI64,
    /// How many watch streams follow the whole prefix ([`watch::follow`] rests while
    /// one does: their events raise `current` as its would).
    covering: tokio::sync::watch::Sender<usize>,
}

impl Default for Revisions {
    fn default() -> Self {
        Self {
            current: AtomicI64::new(0),
            compacted: AtomicI64::new(0),
            covering: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Revisions {
    pub(crate) fn saw(&self, revision: Revision) {
        self.current.fetch_max(revision, Ordering::AcqRel);
    }

    pub(crate) fn compacted_at(&self, revision: Revision) {
        self.compacted.fetch_max(revision, Ordering::AcqRel);
    }

    fn current(&self) -> Revision {
        self.current.load(Ordering::Acquire)
    }

    fn compacted(&self) -> Revision {
        self.compacted.load(Ordering::Acquire)
    }
}

/// The etcd store (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: etcd_client::Client,
    layout: Layout,
    endpoints: String,
    revisions: Arc<Revisions>,
    /// Whether watches ask for and pass on progress notifications ([`progress`]); set
    /// at connect.
    progress: AtomicBool,
    /// This store's own single-key writes, for its watches (see [`watch`]).
    local: tokio::sync::broadcast::Sender<Arc<watch::LocalWrite>>,
    /// Dropped with the last handle: stops the background watch.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("layout", &self.inner.layout)
            .field("revisions", &self.inner.revisions)
            .field("progress", &self.inner.progress)
            .finish()
    }
}

/// An etcd key-value as the store's.
pub(crate) fn convert(layout: &Layout, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = layout.from_etcd(kv.key()).ok_or_else(|| {
        StoreError::Backend(format!(
            "etcd key {:?} is not one of berth's",
            String::from_utf8_lossy(kv.key())
        ))
    })?;
    Ok(KeyValue {
        key,
        value: Arc::from(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(etcd_client::ResponseHeader::revision)
        .ok_or_else(|| StoreError::Backend("etcd answered without a response header".into()))
}

impl EtcdStore {
    /// Connects to etcd once: reads its revision and compacted revision and starts
    /// following the prefix. [`StoreError::Unavailable`] or [`StoreError::Timeout`]
    /// when etcd does not answer; [`StoreError::Backend`] for bad options.
    pub async fn connect(options: &Options) -> Result<Self> {
        let layout = Layout::new(&options.prefix).map_err(StoreError::Backend)?;
        let connect = options.connect_options()?;
        let endpoints = options.endpoints_text();
        let client = etcd_client::Client::connect(&options.endpoints, Some(connect.clone()))
            .await
            .map_err(|e| match classify(e, &endpoints) {
                Failure::Store(err) => err,
                other => StoreError::Backend(format!("connecting to etcd: {other:?}")),
            })?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let store = Self {
            inner: Arc::new(Inner {
                client,
                layout,
                endpoints,
                revisions: Arc::new(Revisions::default()),
                progress: AtomicBool::new(false),
                local: watch::local_writes(),
                _stop: stop,
            }),
        };
        let now = store.etcd_revision().await?;
        store.inner.revisions.saw(now);
        let compacted = store.probe_compacted(now).await?;
        store.inner.revisions.compacted_at(compacted);
        // Asked once etcd answers, before the first watch.
        let progress = match options.watch_progress {
            Some(progress) => progress,
            None => progress::supported(&options.endpoints, &connect).await,
        };
        store.inner.progress.store(progress, Ordering::Release);
        watch::follow(store.watcher(), now, store.inner.revisions.clone(), stopped).await?;
        Ok(store)
    }

    /// [`EtcdStore::connect`] until etcd answers, waiting longer after each failure
    /// (0.5 s doubling to 10 s) and logging each one with the endpoints. Fails only
    /// for options that can never work (a bad URL, an unreadable certificate).
    pub async fn connect_retrying(options: &Options) -> Result<Self> {
        let mut backoff = Duration::from_millis(500);
        loop {
            match Self::connect(options).await {
                Ok(store) => return Ok(store),
                Err(err @ (StoreError::Unavailable(_) | StoreError::Timeout(_))) => {
                    tracing::error!(
                        endpoints = %options.endpoints_text(),
                        %err,
                        retry_in = ?backoff,
                        "etcd is unreachable; the server is not ready until it answers"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.inner
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn watcher(&self) -> watch::Watcher {
        watch::Watcher {
            client: self
                .inner
                .client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE),
            layout: self.inner.layout.clone(),
            endpoints: self.inner.endpoints.clone(),
            revisions: self.inner.revisions.clone(),
            progress: self.inner.progress.load(Ordering::Acquire),
            local: self.inner.local.clone(),
        }
    }

    /// Tells this store's watches of its own write to `key` (an etcd key), answered
    /// just now: `event` is what etcd's watch sends for the write's revision, which must
    /// hold no other event (a single-key txn); built only when a watch listens, and
    /// `None` leaves the write to etcd's watch.
    fn publish(&self, key: Vec<u8>, event: impl FnOnce() -> Option<Event>) {
        if self.inner.local.receiver_count() == 0 {
            return;
        }
        if let Some(event) = event() {
            // No receiver left since: nobody to tell.
            let _ = self
                .inner
                .local
                .send(Arc::new(watch::LocalWrite { key, event }));
        }
    }

    /// etcd's revision now: the header of a linearizable read that returns no key (a
    /// count of the prefix's own key), so at or after every write etcd acknowledged.
    async fn etcd_revision(&self) -> Result<Revision> {
        let resp = self
            .read_key(
                self.inner.layout.base(),
                GetOptions::new().with_count_only(),
                REQUEST_TIMEOUT,
            )
            .await
            .map_err(|f| self.plain(f))?;
        header_revision(resp.header())
    }

    /// The oldest readable revision: etcd does not report its compaction revision, so
    /// this searches for the first revision a read at succeeds (about 20 reads of one
    /// key; at connect and after a compaction error only). 0 when nothing was compacted.
    async fn probe_compacted(&self, now: Revision) -> Result<Revision> {
        let readable = |rev: Revision| async move {
            let opts = GetOptions::new().with_count_only().with_revision(rev);
            match self.read_key(HEALTH_KEY, opts, REQUEST_TIMEOUT).await {
                Ok(_) => Ok(true),
                Err(Failure::Compacted) => Ok(false),
                Err(f) => Err(self.plain(f)),
            }
        };
        if now <= 1 || readable(1).await? {
            return Ok(0);
        }
        // Invariant: `low` is compacted away, `high` is readable.
        let (mut low, mut high) = (1, now);
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if readable(mid).await? {
                high = mid;
            } else {
                low = mid;
            }
        }
        Ok(high)
    }

    /// A range read of `key` (with `opts`' range end, if any).
    async fn read_key(
        &self,
        key: impl Into<Vec<u8>>,
        opts: GetOptions,
        timeout: Duration,
    ) -> std::result::Result<etcd_client::GetResponse, Failure> {
        let key = key.into();
        call(&self.inner.endpoints, "a read", timeout, || {
            let (mut kv, key, opts) = (self.kv(), key.clone(), opts.clone());
            async move { kv.get(key, Some(opts)).await }
        })
        .await
    }

    /// A [`Failure`] without a request context.
    fn plain(&self, failure: Failure) -> StoreError {
        match failure {
            Failure::Store(err) => err,
            other => StoreError::Backend(format!("etcd ({}): {other:?}", self.inner.endpoints)),
        }
    }

    /// A read at `revision` failed.
    async fn read_failed(&self, failure: Failure, revision: Revision) -> StoreError {
        match failure {
            Failure::Compacted => {
                // Someone (another server) compacted beyond what this one knows.
                let now = self.inner.revisions.current();
                if let Ok(c) = self.probe_compacted(now).await {
                    self.inner.revisions.compacted_at(c);
                }
                StoreError::Compacted {
                    requested: revision,
                    compacted: self.inner.revisions.compacted(),
                }
            }
            Failure::FutureRevision => StoreError::FutureRevision {
                requested: revision,
                current: self.inner.revisions.current(),
            },
            other => self.plain(other),
        }
    }

    /// A watch of `prefix` after `after`, with previous values when `prev`; 410 when
    /// that history is compacted.
    async fn watch_from(&self, prefix: String, after: Revision, prev: bool) -> Result<WatchStream> {
        let compacted = self.compacted_revision();
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        self.watcher().watch(prefix, after, prev).await
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        convert(&self.inner.layout, kv)
    }

    /// A transaction whose else branch reads the key: its outcome, or the key as it is
    /// when the compare failed.
    async fn txn(&self, what: &str, txn: Txn) -> Result<(bool, Revision, Vec<TxnOpResponse>)> {
        let resp = self.send_txn(what, txn).await.map_err(|f| self.plain(f))?;
        let revision = header_revision(resp.header())?;
        if resp.succeeded() {
            self.inner.revisions.saw(revision);
        }
        Ok((resp.succeeded(), revision, resp.op_responses()))
    }

    async fn send_txn(
        &self,
        what: &str,
        txn: Txn,
    ) -> std::result::Result<etcd_client::TxnResponse, Failure> {
        call(&self.inner.endpoints, what, REQUEST_TIMEOUT, || {
            let (mut kv, txn) = (self.kv(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// Why a guarded update or delete of `key` did not apply, from the else branch's
    /// read.
    fn refused(&self, key: &str, expected: Option<Revision>, ops: &[TxnOpResponse]) -> StoreError {
        let current = ops.iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| kv.mod_revision())),
            _ => None,
        });
        match (current.flatten(), expected) {
            (Some(actual), Some(expected)) => StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual,
            },
            // Present, and nothing expected: only absence fails the compare.
            (Some(_), None) | (None, _) => StoreError::NotFound {
                key: key.to_owned(),
            },
        }
    }
}

impl Store for EtcdStore {
    fn current_revision(&self) -> Revision {
        self.inner.revisions.current()
    }

    fn compacted_revision(&self) -> Revision {
        self.inner.revisions.compacted()
    }

    fn shared(&self) -> bool {
        true
    }

    fn remote(&self) -> bool {
        true
    }

    fn consistent_revision(&self) -> BoxFuture<'_, Result<Revision>> {
        Box::pin(self.etcd_revision())
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(async move {
            let ekey = self.inner.layout.to_etcd(key)?;
            let mut opts = GetOptions::new();
            if let Some(rev) = revision.filter(|r| *r > 0) {
                opts = opts.with_revision(rev);
            }
            let resp = match self.read_key(ekey, opts, REQUEST_TIMEOUT).await {
                Ok(resp) => resp,
                Err(f) => return Err(self.read_failed(f, revision.unwrap_or(0)).await),
            };
            resp.kvs().first().map(|kv| self.to_kv(kv)).transpose()
        })
    }

    fn list<'a>(&'a self, prefix: &'a str, opts: ListOptions) -> BoxFuture<'a, Result<ListResult>> {
        Box::pin(async move {
            let Some(range) = self.inner.layout.range(prefix) else {
                let revision = match opts.revision {
                    Some(r) => r,
                    None => self.etcd_revision().await?,
                };
                return Ok(ListResult {
                    kvs: Vec::new(),
                    revision,
                    more: false,
                });
            };
            let mut start = range.start.clone();
            if let Some(after) = &opts.start_after
                && let Ok(mut after) = self.inner.layout.to_etcd(after)
            {
                after.push(0);
                start = start.max(after);
            }
            let limit = opts.limit.unwrap_or(usize::MAX);
            // Every page of this list is read at the revision of the first.
            let mut revision = opts.revision.filter(|r| *r > 0);
            let mut kvs = Vec::new();
            let mut more = false;
            while start < range.end {
                // One more than wanted, to learn whether there are more; a long list
                // in pages, so no one answer is huge.
                let want = limit
                    .saturating_sub(kvs.len())
                    .saturating_add(1)
                    .min(LIST_PAGE);
                let mut get = GetOptions::new()
                    .with_range(range.end.clone())
                    .with_limit(i64::try_from(want).unwrap_or(LIST_PAGE as i64));
                if let Some(rev) = revision {
                    get = get.with_revision(rev);
                }
                let resp = match self.read_key(start.clone(), get, REQUEST_TIMEOUT).await {
                    Ok(resp) => resp,
                    Err(f) => {
                        return Err(self.read_failed(f, revision.unwrap_or(0)).await);
                    }
                };
                if revision.is_none() {
                    revision = Some(header_revision(resp.header())?);
                }
                for item in resp.kvs() {
                    let kv = self.to_kv(item)?;
                    if range.filter && !kv.key.starts_with(prefix) {
                        continue;
                    }
                    if kvs.len() == limit {
                        more = true;
                        break;
                    }
                    kvs.push(kv);
                }
                let Some(last) = resp.kvs().last() else {
                    break;
                };
                if more || !resp.more() {
                    break;
                }
                start = last.key().to_vec();
                start.push(0);
            }
            Ok(ListResult {
                kvs,
                revision: revision.unwrap_or_else(|| self.current_revision()),
                more,
            })
        })
    }

    fn create(
        &self,
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'_, Result<KeyValue>> {
        Box::pin(async move {
            let ekey = self.inner.layout.to_etcd(&key)?;
            let put = lease.map_or_else(PutOptions::new, |id| PutOptions::new().with_lease(id));
            let value: Arc<[u8]> = value.into();
            let txn = Txn::new()
                .when([Compare::create_revision(ekey.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(ekey.clone(), value.to_vec(), Some(put))]);
            let resp = match self.send_txn("a create", txn).await {
                Ok(resp) => resp,
                Err(Failure::LeaseNotFound) => {
                    return Err(StoreError::LeaseNotFound(lease.unwrap_or_default()));
                }
                Err(f) => return Err(self.plain(f)),
            };
            if !resp.succeeded() {
                return Err(StoreError::AlreadyExists { key });
            }
            let revision = header_revision(resp.header())?;
            self.inner.revisions.saw(revision);
            let kv = KeyValue {
                key,
                value,
                create_revision: revision,
                mod_revision: revision,
                lease,
            };
            self.publish(ekey, || {
                Some(Event {
                    kind: EventKind::Put,
                    // Lease 0 is none to etcd.
                    kv: KeyValue {
                        lease: lease.filter(|id| *id != 0),
                        ..kv.clone()
                    },
                    prev: None,
                })
            });
            Ok(kv)
        })
    }

    fn update(
        &self,
        key: String,
        value: Vec<u8>,
        expected: Revision,
    ) -> BoxFuture<'_, Result<KeyValue>> {
        Box::pin(async move {
            let ekey = self.inner.layout.to_etcd(&key)?;
            let value: Arc<[u8]> = value.into();
            let txn = Txn::new()
                .when([
                    Compare::version(ekey.clone(), CompareOp::Greater, 0),
                    Compare::mod_revision(ekey.clone(), CompareOp::Equal, expected),
                ])
                .and_then([TxnOp::put(
                    ekey.clone(),
                    value.to_vec(),
                    Some(PutOptions::new().with_ignore_lease().with_prev_key()),
                )])
                .or_else([TxnOp::get(ekey.clone(), None)]);
            let (succeeded, revision, ops) = self.txn("an update", txn).await?;
            if !succeeded {
                return Err(self.refused(&key, Some(expected), &ops));
            }
            let prev = ops.iter().find_map(|op| match op {
                TxnOpResponse::Put(put) => put.prev_key(),
                _ => None,
            });
            let (create_revision, lease) =
                prev.map_or((revision, 0), |kv| (kv.create_revision(), kv.lease()));
            let kv = KeyValue {
                key,
                value,
                create_revision,
                mod_revision: revision,
                lease: (lease != 0).then_some(lease),
            };
            // Without the previous value (etcd always sends it) the event is left to
            // etcd's watch.
            self.publish(ekey, || {
                Some(Event {
                    kind: EventKind::Put,
                    kv: kv.clone(),
                    prev: Some(self.to_kv(prev?).ok()?),
                })
            });
            Ok(kv)
        })
    }

    fn delete(&self, key: String, expected: Option<Revision>) -> BoxFuture<'_, Result<KeyValue>> {
        Box::pin(async move {
            let ekey = self.inner.layout.to_etcd(&key)?;
            let mut when = vec![Compare::version(ekey.clone(), CompareOp::Greater, 0)];
            if let Some(expected) = expected {
                when.push(Compare::mod_revision(
                    ekey.clone(),
                    CompareOp::Equal,
                    expected,
                ));
            }
            let txn = Txn::new()
                .when(when)
                .and_then([TxnOp::delete(
                    ekey.clone(),
                    Some(DeleteOptions::new().with_prev_key()),
                )])
                .or_else([TxnOp::get(ekey.clone(), None)]);
            let (succeeded, revision, ops) = self.txn("a delete", txn).await?;
            if !succeeded {
                return Err(self.refused(&key, expected, &ops));
            }
            let prev = ops.iter().find_map(|op| match op {
                TxnOpResponse::Delete(del) => del.prev_kvs().first(),
                _ => None,
            });
            let Some(prev) = prev else {
                return Err(StoreError::Backend(format!(
                    "etcd deleted {key:?} without its previous value"
                )));
            };
            let mut kv = self.to_kv(prev)?;
            let prev_revision = kv.mod_revision;
            kv.mod_revision = revision;
            // As the watch makes it (`watch::Watcher::event`): the last value at the
            // delete's revision, and that value as it was.
            self.publish(ekey, || {
                Some(Event {
                    kind: EventKind::Delete,
                    kv: kv.clone(),
                    prev: Some(KeyValue {
                        mod_revision: prev_revision,
                        ..kv.clone()
                    }),
                })
            });
            Ok(kv)
        })
    }

    fn watch(&self, prefix: String, after: Revision) -> BoxFuture<'_, Result<WatchStream>> {
        Box::pin(self.watch_from(prefix, after, true))
    }

    fn watch_without_prev(
        &self,
        prefix: String,
        after: Revision,
    ) -> BoxFuture<'_, Result<WatchStream>> {
        Box::pin(self.watch_from(prefix, after, false))
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if revision <= self.compacted_revision() {
                return Ok(());
            }
            let compacted = call(
                &self.inner.endpoints,
                "a compaction",
                REQUEST_TIMEOUT,
                || {
                    let mut kv = self.kv();
                    async move { kv.compact(revision, None).await }
                },
            )
            .await;
            match compacted {
                Ok(_) => {
                    self.inner.revisions.compacted_at(revision);
                    Ok(())
                }
                // Already compacted further (by another server): nothing to do.
                Err(Failure::Compacted) => {
                    let now = self.current_revision();
                    let c = self.probe_compacted(now).await?;
                    self.inner.revisions.compacted_at(c.max(revision));
                    Ok(())
                }
                Err(f) => Err(self.read_failed(f, revision).await),
            }
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>> {
        Box::pin(async move {
            // etcd's TTLs are whole seconds (and at least its minimum, ~2 s).
            let secs = i64::try_from(ttl.as_millis().div_ceil(1000))
                .unwrap_or(i64::MAX)
                .max(1);
            let resp = call(
                &self.inner.endpoints,
                "a lease grant",
                REQUEST_TIMEOUT,
                || {
                    let mut lease = self.inner.client.lease_client();
                    async move { lease.grant(secs, None).await }
                },
            )
            .await
            .map_err(|f| self.plain(f))?;
            Ok(resp.id())
        })
    }

    fn keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // One LeaseKeepAlive exchange (the client reads etcd's answer itself): a
            // TTL of 0 is a lease etcd no longer has.
            let alive = call(
                &self.inner.endpoints,
                "a lease keep-alive",
                REQUEST_TIMEOUT,
                || {
                    let mut lease = self.inner.client.lease_client();
                    async move {
                        match lease.keep_alive(id).await {
                            Ok(_) => Ok(true),
                            Err(etcd_client::Error::LeaseKeepAliveError(m))
                                if m.contains("not found") =>
                            {
                                Ok(false)
                            }
                            Err(e) => Err(e),
                        }
                    }
                },
            )
            .await
            .map_err(|f| match f {
                Failure::LeaseNotFound => StoreError::LeaseNotFound(id),
                f => self.plain(f),
            })?;
            if !alive {
                return Err(StoreError::LeaseNotFound(id));
            }
            Ok(())
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.read_key(
                HEALTH_KEY,
                GetOptions::new().with_count_only(),
                HEALTH_TIMEOUT,
            )
            .await
            .map(drop)
            .map_err(|f| self.plain(f))
        })
    }
}
