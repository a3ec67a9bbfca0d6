//! Watches over etcd: [`Watcher::watch`] turns an etcd watch (from `after + 1`, with
//! `prev_kv`) into the store's [`WatchStream`], and keeps it going across connection
//! losses — a broken stream is re-created from the revision after the last one
//! delivered, so the events stay ordered and without gaps or repeats (etcd never splits
//! one revision's events over two responses). The stream ends with
//! [`StoreError::Compacted`] only when etcd cancels the watch because the history it
//! needs is compacted. [`follow`] is the store's own watch on the whole prefix that
//! keeps [`super::EtcdStore`]'s current revision up to date with other servers' writes
//! and expired leases.
//!
//! When etcd sends them in order ([`super::progress`]), a stream also passes on etcd's
//! progress notifications as [`Watched::Progress`] and sends etcd a `RequestProgress`
//! whenever its [`ProgressRequest`] asks (kube-apiserver's watch cache does the same
//! for consistent reads, KEP-2340): a notification at revision N says every event up to
//! N was sent, so the watch also resumes after N when it breaks.
//!
//! # Local writes
//!
//! A write comes back on etcd's watch streams apart from the answer to its txn, often
//! after it. So that this server's watch cache need not wait for that,
//! [`super::EtcdStore`] publishes each of its own successful single-key writes (create,
//! update, delete) the moment its txn is answered, as a [`LocalWrite`]: the [`Event`]
//! etcd's watch will send for that revision, exactly as [`Watcher::event`] makes it,
//! and its etcd key. Every stream subscribes before it opens its etcd watch, and its
//! task takes local writes in its range alongside etcd's responses, keeping the stream
//! ordered, without gaps and without repeats ([`Sequence`]):
//!
//! - the stream knows `through`, the newest revision up to which every event in its
//!   range was passed on — by etcd's events and the fast path, not by progress
//!   notifications, which etcd before 3.4.31 and 3.5.13 can send ahead of events when
//!   they are forced on ([`super::Options::watch_progress`]);
//! - a local write at `through + 1` is passed on at once: a single-key txn's revision
//!   holds exactly that one event, so nothing in the range can be missing before it.
//!   A later one waits (at most [`MAX_PENDING`], the oldest dropped beyond) until
//!   etcd's stream or another local write brings `through` to the revision before it,
//!   or is dropped once etcd's stream passes its revision (etcd sent it then);
//! - etcd's events at or before `through` are skipped, unconverted: the fast path
//!   passed them on. A revision of several events (another process's txn, an import
//!   batch) or one nobody here wrote (another server's write, an expired lease) only
//!   ever comes from etcd, which never splits a revision over two responses, so no such
//!   revision is ever half delivered when a local write is passed on after it;
//! - a local write outside the range, or at or before `through`, is dropped; one this
//!   stream never gets (it subscribed after the write was answered, or fell behind the
//!   broadcast — then it drops what waits, too) comes from etcd as any other write.
//!
//! Progress notifications are passed on past the newest revision delivered, event's or
//! notification's, and a broken watch is re-created after that revision, as before: the
//! fast path only ever delivers earlier what etcd would deliver next.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchClient, WatchOptions, WatchResponse};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::keys::{Layout, Range};
use super::{Failure, REQUEST_TIMEOUT, Revisions, call, convert};
use crate::store::{
    Event, EventKind, KeyValue, ProgressRequest, Result, Revision, StoreError, WatchStream, Watched,
};

/// Events buffered for a slow receiver before etcd's stream is no longer read (etcd
/// then buffers, and eventually cancels a watcher that stays behind).
const BUFFER: usize = 1024;
/// The longest wait between attempts to re-create a broken watch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Local writes a stream's task may fall behind by before it misses some (they come
/// from etcd then).
const LOCAL_BUFFER: usize = 1024;
/// Local writes a stream keeps waiting for the revisions before theirs; beyond, the
/// oldest are dropped (they come from etcd).
const MAX_PENDING: usize = 4096;

/// One of this store's own single-key writes, published when etcd answered its txn
/// (see the module docs).
#[derive(Debug)]
pub(crate) struct LocalWrite {
    /// The etcd key, to check against a watch's range.
    pub key: Vec<u8>,
    /// What etcd's watch sends for the write's revision (its only event).
    pub event: Event,
}

/// Where [`super::EtcdStore`] publishes its [`LocalWrite`]s.
pub(crate) fn local_writes() -> broadcast::Sender<Arc<LocalWrite>> {
    broadcast::channel(LOCAL_BUFFER).0
}

/// What a watch needs of the store.
#[derive(Clone)]
pub(crate) struct Watcher {
    pub client: WatchClient,
    pub layout: Layout,
    pub endpoints: String,
    pub revisions: Arc<Revisions>,
    /// Whether to ask for and pass on progress notifications.
    pub progress: bool,
    /// The store's own writes ([`LocalWrite`]).
    pub local: broadcast::Sender<Arc<LocalWrite>>,
}

impl Watcher {
    /// Every change under `prefix` after `after` (see the module docs); with `prev`,
    /// each carrying the value before it (etcd's `prev_kv`), else without, and deletes
    /// without their last value ([`crate::store::Store::watch_without_prev`]).
    pub async fn watch(&self, prefix: String, after: Revision, prev: bool) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let Some(range) = self.layout.range(&prefix) else {
            // No key can ever match: a stream that stays open and silent.
            tokio::spawn(async move { tx.closed().await });
            return Ok(WatchStream::with_progress(rx, None));
        };
        // Before etcd's watch starts, so that no local write answered from then on is
        // left to etcd.
        let local = self.local.subscribe();
        let stream = self.open(&range, after, prev).await?;
        let progress = self.progress.then(ProgressRequest::default);
        let covering = self
            .layout
            .range(super::keys::ROOT)
            .is_some_and(|root| root == range)
            .then(|| Covering::new(self.revisions.clone()));
        let forward = Forward {
            prefix,
            range,
            prev,
            _covering: covering,
            seq: Sequence::new(after),
            progress: progress.clone(),
            tx,
            local: Some(local),
        };
        tokio::spawn(self.clone().forward(forward, stream));
        Ok(WatchStream::with_progress(rx, progress))
    }

    /// An etcd watch of `range` from `after + 1` (with `prev_kv` when `prev`), once etcd
    /// confirmed it.
    async fn open(
        &self,
        range: &Range,
        after: Revision,
        prev: bool,
    ) -> Result<etcd_client::WatchStream> {
        let mut options = WatchOptions::new()
            .with_range(range.end.clone())
            .with_start_revision(after + 1);
        if prev {
            options = options.with_prev_key();
        }
        let opened = call(&self.endpoints, "a watch", REQUEST_TIMEOUT, || {
            let (mut client, start, options) =
                (self.client.clone(), range.start.clone(), options.clone());
            async move {
                let mut stream = client.watch(start, Some(options)).await?;
                let first = stream.message().await?;
                Ok((stream, first))
            }
        })
        .await;
        let unavailable = |why: String| {
            StoreError::Unavailable(format!("etcd ({}) watch: {why}", self.endpoints))
        };
        let (stream, first) = match opened {
            Ok(opened) => opened,
            Err(Failure::Store(err)) => return Err(err),
            Err(other) => return Err(unavailable(format!("{other:?}"))),
        };
        match first {
            Some(resp) if resp.compact_revision() > 0 => {
                let compacted = resp.compact_revision();
                self.revisions.compacted_at(compacted);
                Err(StoreError::Compacted {
                    requested: after,
                    compacted,
                })
            }
            Some(resp) if resp.canceled() => {
                Err(unavailable(format!("canceled: {}", resp.cancel_reason())))
            }
            Some(resp) if resp.created() => Ok(stream),
            Some(_) => Err(unavailable("no confirmation".into())),
            None => Err(unavailable("closed before it started".into())),
        }
    }

    /// Delivers the events of `stream` (and progress, when asked for) and the local
    /// writes that come first, re-creating `stream` when it breaks.
    async fn forward(self, mut f: Forward, stream: etcd_client::WatchStream) {
        let (mut requests, mut responses) = stream.split();
        loop {
            let broke = loop {
                let message = tokio::select! {
                    m = responses.message() => m,
                    write = next_local(f.local.as_mut()) => {
                        if f.local_write(write).await {
                            continue;
                        }
                        return;
                    }
                    () = requested(f.progress.as_ref()) => {
                        match requests.request_progress().await {
                            Ok(()) => continue,
                            Err(err) => break err.to_string(),
                        }
                    }
                    () = f.tx.closed() => return,
                };
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    Ok(None) => break "etcd closed the watch".to_owned(),
                    Err(err) => break err.to_string(),
                };
                if resp.compact_revision() > 0 {
                    let compacted = resp.compact_revision();
                    self.revisions.compacted_at(compacted);
                    let _ =
                        f.tx.send(Err(StoreError::Compacted {
                            requested: f.seq.last,
                            compacted,
                        }))
                        .await;
                    return;
                }
                if resp.canceled() {
                    break format!("etcd canceled the watch: {}", resp.cancel_reason());
                }
                if let Some(revision) = progress_notification(&resp) {
                    // No proof for local writes, so none is next now.
                    if f.progress.is_some()
                        && f.seq.progress(revision)
                        && !f.send(Watched::Progress(revision)).await
                    {
                        return;
                    }
                    continue;
                }
                if let Some(newest) = newest_revision(&resp) {
                    self.revisions.saw(newest);
                }
                let delivered = f.seq.through;
                for raw in resp.events() {
                    // Skipped before converting it when the fast path passed it on.
                    if let Some(kv) = raw.kv()
                        && !f.seq.etcd_event(delivered, kv.mod_revision())
                    {
                        continue;
                    }
                    let event = match self.event(raw) {
                        Ok(event) => event,
                        Err(err) => {
                            let _ = f.tx.send(Err(err)).await;
                            return;
                        }
                    };
                    if f.range.filter && !event.kv.key.starts_with(&f.prefix) {
                        continue;
                    }
                    if !f.send(Watched::Event(event)).await {
                        return;
                    }
                }
                if !f.drain().await {
                    return;
                }
            };
            tracing::warn!(
                endpoints = %self.endpoints,
                prefix = %f.prefix,
                from = f.seq.last + 1,
                why = %broke,
                "etcd watch broke; re-creating it"
            );
            let mut backoff = Duration::from_millis(100);
            let stream = loop {
                if f.tx.is_closed() {
                    return;
                }
                match self.open(&f.range, f.seq.last, f.prev).await {
                    Ok(stream) => break stream,
                    Err(err @ StoreError::Compacted { .. }) => {
                        let _ = f.tx.send(Err(err)).await;
                        return;
                    }
                    Err(err) => {
                        tracing::debug!(%err, ?backoff, "re-creating the etcd watch failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
            (requests, responses) = stream.split();
            // A request the broken stream took may have gone unanswered.
            if let Some(progress) = &f.progress {
                progress.request();
            }
            tracing::info!(endpoints = %self.endpoints, prefix = %f.prefix, from = f.seq.last + 1, "etcd watch re-created");
        }
    }

    /// One etcd event as the store's: a delete carries the last value at the delete's
    /// revision.
    fn event(&self, raw: &etcd_client::Event) -> Result<Event> {
        let Some(kv) = raw.kv() else {
            return Err(StoreError::Backend(
                "etcd sent a watch event without a key".into(),
            ));
        };
        let revision = kv.mod_revision();
        let prev = raw
            .prev_kv()
            .map(|p| convert(&self.layout, p))
            .transpose()?;
        Ok(match raw.event_type() {
            EventType::Put => Event {
                kind: EventKind::Put,
                kv: convert(&self.layout, kv)?,
                prev,
            },
            EventType::Delete => {
                let mut last = match &prev {
                    Some(p) => p.clone(),
                    // etcd leaves prev_kv out when that revision is compacted already.
                    None => KeyValue {
                        value: Arc::from(&b""[..]),
                        create_revision: 0,
                        lease: None,
                        ..convert(&self.layout, kv)?
                    },
                };
                last.mod_revision = revision;
                Event {
                    kind: EventKind::Delete,
                    kv: last,
                    prev,
                }
            }
        })
    }
}

/// What [`Watcher::forward`] carries across re-creating the etcd watch.
struct Forward {
    prefix: String,
    range: Range,
    /// Whether events carry the value before them (`prev_kv`).
    prev: bool,
    /// Held by a stream of the whole prefix, which [`follow`] rests for.
    _covering: Option<Covering>,
    /// What was delivered, and the local writes waiting for their turn.
    seq: Sequence,
    progress: Option<ProgressRequest>,
    tx: mpsc::Sender<Result<Watched>>,
    /// The store's own writes; `None` once that channel closed.
    local: Option<broadcast::Receiver<Arc<LocalWrite>>>,
}

impl Forward {
    /// Passes `watched` on; false once the receiver is gone.
    async fn send(&self, watched: Watched) -> bool {
        self.tx.send(Ok(watched)).await.is_ok()
    }

    /// Passes on the waiting local writes that are next now; false once the receiver
    /// is gone.
    async fn drain(&mut self) -> bool {
        while let Some(event) = self.seq.next_pending() {
            if !self.send(Watched::Event(event)).await {
                return false;
            }
        }
        true
    }

    /// One local write: passed on now if it is next (with those waiting behind it),
    /// kept if it is to come, dropped otherwise. False once the receiver is gone.
    async fn local_write(&mut self, write: Result<Arc<LocalWrite>, RecvError>) -> bool {
        let write = match write {
            Ok(write) => write,
            // Missed writes come from etcd; what waits goes too (etcd sends it
            // anyway), so the stream starts afresh.
            Err(RecvError::Lagged(_)) => {
                self.seq.lagged();
                return true;
            }
            Err(RecvError::Closed) => {
                self.local = None;
                return true;
            }
        };
        if !covers(&self.range, &self.prefix, &write) {
            return true;
        }
        match self.seq.local(&write.event) {
            Some(event) => self.send(Watched::Event(event)).await && self.drain().await,
            None => true,
        }
    }
}

/// A watch stream of the whole prefix, counted in [`Revisions`]'s `covering` while it
/// lives.
struct Covering(Arc<Revisions>);

impl Covering {
    fn new(revisions: Arc<Revisions>) -> Self {
        revisions.covering.send_modify(|n| *n += 1);
        Self(revisions)
    }
}

impl Drop for Covering {
    fn drop(&mut self) {
        self.0.covering.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The newest revision of an etcd watch response's events.
fn newest_revision(resp: &WatchResponse) -> Option<Revision> {
    resp.events()
        .iter()
        .filter_map(|e| e.kv())
        .map(|kv| kv.mod_revision())
        .max()
}

/// Whether `write` is to a key a watch of `prefix` (etcd range `range`) follows.
fn covers(range: &Range, prefix: &str, write: &LocalWrite) -> bool {
    let key = write.key.as_slice();
    // An end of `\0` is etcd's "every key from start on".
    key >= range.start.as_slice()
        && (key < range.end.as_slice() || range.end == [0])
        && (!range.filter || write.event.kv.key.starts_with(prefix))
}

/// The order a stream keeps (see the module docs): what it delivered, and local
/// writes in its range that wait for the revisions before them.
#[derive(Debug)]
struct Sequence {
    /// The newest revision delivered, an event's or a progress notification's.
    last: Revision,
    /// Every event in the range up to this revision was passed on (by etcd's events
    /// and local writes; at most `last`).
    through: Revision,
    /// Local writes after `through + 1`, by revision.
    pending: BTreeMap<Revision, Event>,
    /// Most entries in `pending`.
    bound: usize,
}

impl Sequence {
    fn new(after: Revision) -> Self {
        Self::with_bound(after, MAX_PENDING)
    }

    fn with_bound(after: Revision, bound: usize) -> Self {
        Self {
            last: after,
            through: after,
            pending: BTreeMap::new(),
            bound,
        }
    }

    /// An event of an etcd response at `revision`, where `delivered` was `through`
    /// before the response: whether it is to be passed on. One at or before `delivered`
    /// came by the fast path (which delivers only revisions of one event; etcd sends
    /// every event of a revision in one response, and no revision twice).
    fn etcd_event(&mut self, delivered: Revision, revision: Revision) -> bool {
        if revision <= delivered {
            return false;
        }
        self.delivered(revision);
        true
    }

    /// A progress notification at `revision`: whether it is news to pass on.
    fn progress(&mut self, revision: Revision) -> bool {
        if revision <= self.last {
            return false;
        }
        self.last = revision;
        true
    }

    /// A local write in the range: the event to pass on now, when it is next; else
    /// `None`, and it is kept when it is to come (beyond `bound` the oldest kept go).
    fn local(&mut self, event: &Event) -> Option<Event> {
        let revision = event.revision();
        if revision <= self.through {
            return None;
        }
        if revision == self.through + 1 {
            self.delivered(revision);
            return Some(event.clone());
        }
        self.pending.insert(revision, event.clone());
        while self.pending.len() > self.bound {
            self.pending.pop_first();
        }
        None
    }

    /// The kept local write that is next now, if any; drops those passed already.
    fn next_pending(&mut self) -> Option<Event> {
        while let Some(entry) = self.pending.first_entry() {
            let revision = *entry.key();
            if revision > self.through + 1 {
                return None;
            }
            let event = entry.remove();
            if revision == self.through + 1 {
                self.delivered(revision);
                return Some(event);
            }
        }
        None
    }

    /// The events in the range up to `revision` were passed on.
    fn delivered(&mut self, revision: Revision) {
        self.through = self.through.max(revision);
        self.last = self.last.max(revision);
    }

    /// Local writes were missed: drops what waits.
    fn lagged(&mut self) {
        self.pending.clear();
    }
}

/// The next local write; never when there are none to come.
async fn next_local(
    local: Option<&mut broadcast::Receiver<Arc<LocalWrite>>>,
) -> Result<Arc<LocalWrite>, RecvError> {
    match local {
        Some(local) => local.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when `progress` asks for a notification; never without one.
async fn requested(progress: Option<&ProgressRequest>) {
    match progress {
        Some(progress) => progress.requested().await,
        None => std::future::pending().await,
    }
}

/// The revision of a progress notification: a response with no events that neither
/// starts, cancels nor compacts the watch (client-go's `IsProgressNotify`).
fn progress_notification(resp: &WatchResponse) -> Option<Revision> {
    let revision = resp.header().map_or(0, |h| h.revision());
    (resp.events().is_empty()
        && !resp.created()
        && !resp.canceled()
        && resp.compact_revision() == 0
        && revision != 0)
        .then_some(revision)
}

/// Follows every change under the prefix from `from`, raising `revisions`' current
/// revision, until `stopped` fires (the store's last handle dropped). A watch that
/// falls behind compaction starts again from the newest revision known.
///
/// It needs only revisions, so it is etcd's plain watch of the prefix: without
/// `prev_kv` (which etcd reads from its backend for every event of every watcher that
/// asks), without converting a key or value and without the local writes a
/// [`Watcher::watch`] stream orders in. While a [`Watcher::watch`] stream of the whole
/// prefix lives (the watch cache's, from its start to the server's exit), that
/// stream's events raise the revision and this watch is closed, so etcd sends every
/// event once, not twice; it is opened again, from the newest revision seen, when no
/// such stream is left.
pub(crate) async fn follow(
    watcher: Watcher,
    from: Revision,
    revisions: Arc<Revisions>,
    mut stopped: oneshot::Receiver<()>,
) -> Result<()> {
    let Some(range) = watcher.layout.range(super::keys::ROOT) else {
        return Ok(());
    };
    let mut stream = Some(open_plain(&watcher, &range, from).await?);
    let mut covering = revisions.covering.subscribe();
    tokio::spawn(async move {
        loop {
            let Some(open) = stream.as_mut() else {
                tokio::select! {
                    r = covering.wait_for(|n| *n == 0) => {
                        if r.is_err() {
                            return;
                        }
                    }
                    _ = &mut stopped => return,
                }
                match reopen(&watcher, &range, &revisions, &mut stopped).await {
                    Some(reopened) => stream = Some(reopened),
                    None => return,
                }
                continue;
            };
            let message = tokio::select! {
                m = open.message() => m,
                _ = &mut stopped => return,
                r = covering.wait_for(|n| *n > 0) => {
                    if r.is_err() {
                        return;
                    }
                    stream = None;
                    continue;
                }
            };
            let why = match message {
                Ok(Some(resp)) if resp.compact_revision() > 0 => {
                    revisions.compacted_at(resp.compact_revision());
                    format!("compacted at {}", resp.compact_revision())
                }
                Ok(Some(resp)) if resp.canceled() => {
                    format!("canceled: {}", resp.cancel_reason())
                }
                Ok(Some(resp)) => {
                    if let Some(newest) = newest_revision(&resp) {
                        revisions.saw(newest);
                    }
                    continue;
                }
                Ok(None) => "etcd closed it".to_owned(),
                Err(err) => err.to_string(),
            };
            tracing::warn!(%why, "the store's etcd watch ended; following from now");
            match reopen(&watcher, &range, &revisions, &mut stopped).await {
                Some(reopened) => stream = Some(reopened),
                None => return,
            }
        }
    });
    Ok(())
}

/// [`follow`]'s watch again, from the newest revision known, retried each second;
/// `None` once `stopped` fired.
async fn reopen(
    watcher: &Watcher,
    range: &Range,
    revisions: &Revisions,
    stopped: &mut oneshot::Receiver<()>,
) -> Option<etcd_client::WatchStream> {
    loop {
        if !matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            return None;
        }
        let from = revisions.current().max(revisions.compacted());
        match open_plain(watcher, range, from).await {
            Ok(stream) => return Some(stream),
            Err(err) => {
                tracing::debug!(%err, "following etcd again failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// etcd's watch of `range` from `after + 1`, without previous values.
async fn open_plain(
    watcher: &Watcher,
    range: &Range,
    after: Revision,
) -> Result<etcd_client::WatchStream> {
    let options = WatchOptions::new()
        .with_range(range.end.clone())
        .with_start_revision(after + 1);
    let opened = call(&watcher.endpoints, "a watch", REQUEST_TIMEOUT, || {
        let (mut client, start, options) =
            (watcher.client.clone(), range.start.clone(), options.clone());
        async move { client.watch(start, Some(options)).await }
    })
    .await;
    match opened {
        Ok(stream) => Ok(stream),
        Err(Failure::Store(err)) => Err(err),
        Err(other) => Err(StoreError::Unavailable(format!(
            "etcd ({}) watch: {other:?}",
            watcher.endpoints
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new("/registry").expect("a valid prefix")
    }

    /// A put of `key` at `revision`, told apart from others by `key` alone.
    fn put(key: &str, revision: Revision) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_owned(),
                value: Arc::from(format!("{key}@{revision}").as_bytes()),
                create_revision: revision,
                mod_revision: revision,
                lease: None,
            },
            prev: None,
        }
    }

    fn local(event: &Event) -> LocalWrite {
        LocalWrite {
            key: layout().to_etcd(&event.kv.key).expect("a berth key"),
            event: event.clone(),
        }
    }

    /// A watch's task, without etcd: what it does with each thing that comes, as
    /// [`Watcher::forward`] and [`Forward`] do it, collecting what it passes on.
    struct Sim {
        prefix: String,
        range: Range,
        seq: Sequence,
        progress: bool,
        out: Vec<Watched>,
        /// Events passed on by the fast path: at once, and after waiting.
        fast: usize,
        waited: usize,
    }

    impl Sim {
        fn new(prefix: &str, after: Revision, bound: usize, progress: bool) -> Self {
            Self {
                prefix: prefix.to_owned(),
                range: layout().range(prefix).expect("a range"),
                seq: Sequence::with_bound(after, bound),
                progress,
                out: Vec::new(),
                fast: 0,
                waited: 0,
            }
        }

        fn drain(&mut self) {
            while let Some(event) = self.seq.next_pending() {
                self.waited += 1;
                self.out.push(Watched::Event(event));
            }
        }

        /// One etcd response (whole revisions, in order).
        fn etcd(&mut self, events: &[Event]) {
            let delivered = self.seq.through;
            for event in events {
                if !self.seq.etcd_event(delivered, event.revision()) {
                    continue;
                }
                if self.range.filter && !event.kv.key.starts_with(&self.prefix) {
                    continue;
                }
                self.out.push(Watched::Event(event.clone()));
            }
            self.drain();
        }

        fn progress(&mut self, revision: Revision) {
            if self.progress && self.seq.progress(revision) {
                self.out.push(Watched::Progress(revision));
            }
        }

        fn local(&mut self, write: &LocalWrite) {
            if !covers(&self.range, &self.prefix, write) {
                return;
            }
            if let Some(event) = self.seq.local(&write.event) {
                self.fast += 1;
                self.out.push(Watched::Event(event));
                self.drain();
            }
        }

        fn events(&self) -> Vec<Revision> {
            self.out
                .iter()
                .filter_map(|w| match w {
                    Watched::Event(e) => Some(e.revision()),
                    Watched::Progress(_) => None,
                })
                .collect()
        }
    }

    #[test]
    fn local_writes_go_first_in_order_and_etcd_fills_the_gaps() {
        let pod = |n: Revision| put(&format!("/registry/core/pods/ns/p{n}"), n);
        let mut sim = Sim::new("/registry/core/pods/", 10, MAX_PENDING, true);
        // 12 waits for 11; 11 then passes both on.
        sim.local(&local(&pod(12)));
        assert!(sim.out.is_empty());
        sim.local(&local(&pod(11)));
        assert_eq!(sim.events(), [11, 12]);
        // etcd's copies are skipped; what only etcd has passes on.
        sim.etcd(&[pod(11), pod(12), pod(13)]);
        assert_eq!(sim.events(), [11, 12, 13]);
        // Late, or at or before `after`: dropped.
        sim.local(&local(&pod(13)));
        sim.local(&local(&pod(5)));
        // 16 waits for 14 (another server's txn of two keys) and 15 (mine).
        sim.local(&local(&pod(16)));
        let other = put("/registry/core/pods/ns/other", 14);
        sim.etcd(&[pod(14), other.clone()]);
        assert_eq!(sim.events(), [11, 12, 13, 14, 14]);
        sim.local(&local(&pod(15)));
        assert_eq!(sim.events(), [11, 12, 13, 14, 14, 15, 16]);
        sim.etcd(&[pod(15), pod(16)]);
        // Progress it passed already is no news; progress past it is, but no proof for
        // local writes (etcd can send it ahead of events when forced on): 21 waits for
        // etcd's 21, and 22 is next then.
        sim.progress(16);
        sim.progress(20);
        sim.local(&local(&pod(21)));
        assert_eq!(sim.events(), [11, 12, 13, 14, 14, 15, 16]);
        assert_eq!(sim.out[7], Watched::Progress(20));
        sim.etcd(&[pod(21)]);
        sim.local(&local(&pod(22)));
        assert_eq!(sim.events(), [11, 12, 13, 14, 14, 15, 16, 21, 22]);
        // A write outside the range is no proof of anything either: 24 waits, and is
        // etcd's to deliver once etcd sends it (etcd has no 23 for this range).
        sim.local(&local(&put("/registry/core/services/ns/s", 23)));
        sim.local(&local(&pod(24)));
        assert_eq!(sim.events().last(), Some(&22));
        sim.etcd(&[pod(24)]);
        assert_eq!(sim.events().last(), Some(&24));
        assert!(sim.seq.pending.is_empty());
        assert_eq!(sim.out.len(), 11);
    }

    /// etcd before 3.4.31 and 3.5.13, with progress forced on, can send a notification
    /// ahead of the events it covers: those events still come, once each, in order.
    #[test]
    fn progress_ahead_of_events_loses_none() {
        let pod = |n: Revision| put(&format!("/registry/core/pods/ns/p{n}"), n);
        let mut sim = Sim::new("/registry/", 5, MAX_PENDING, true);
        sim.progress(10);
        sim.local(&local(&pod(8)));
        sim.local(&local(&pod(6)));
        sim.etcd(&[pod(6), pod(7)]);
        sim.etcd(&[pod(8), pod(9)]);
        sim.local(&local(&pod(10)));
        assert_eq!(sim.events(), [6, 7, 8, 9, 10]);
        assert_eq!(sim.out[0], Watched::Progress(10));
        sim.progress(10);
        assert_eq!(sim.out.len(), 6);
    }

    #[test]
    fn waiting_writes_are_bounded_and_dropped_when_the_broadcast_lags() {
        let pod = |n: Revision| put(&format!("/registry/core/pods/ns/p{n}"), n);
        let mut sim = Sim::new("/registry/", 0, 2, false);
        for n in [3, 4, 5] {
            sim.local(&local(&pod(n)));
        }
        // 3, the oldest, went; etcd sends it, and 4 and 5 follow at once.
        assert_eq!(sim.seq.pending.keys().copied().collect::<Vec<_>>(), [4, 5]);
        sim.etcd(&[pod(1), pod(2)]);
        assert_eq!(sim.events(), [1, 2]);
        sim.etcd(&[pod(3)]);
        assert_eq!(sim.events(), [1, 2, 3, 4, 5]);
        sim.local(&local(&pod(7)));
        sim.seq.lagged();
        assert!(sim.seq.pending.is_empty());
        sim.etcd(&[pod(4), pod(5), pod(6), pod(7)]);
        assert_eq!(sim.events(), [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_local_write_counts_only_in_the_watched_range() {
        let l = layout();
        let check = |prefix: &str, key: &str| {
            let range = l.range(prefix).expect("a range");
            covers(&range, prefix, &local(&put(key, 1)))
        };
        assert!(check("/registry/core/pods/", "/registry/core/pods/ns/a"));
        assert!(!check("/registry/core/pods/", "/registry/core/podsx/ns/a"));
        assert!(!check(
            "/registry/core/pods/ns/",
            "/registry/core/pods/ns2/a"
        ));
        assert!(check("/registry/", "/registry/apps/deployments/ns/a"));
        // In the etcd range of `/registry/core/po` (`/registry/po…`), not under it.
        assert!(check("/registry/core/po", "/registry/core/pods/ns/a"));
        assert!(!check("/registry/core/po", "/registry/policy/pdbs/ns/a"));
        let everything = Range {
            start: b"/registry/".to_vec(),
            end: vec![0],
            filter: false,
        };
        assert!(covers(
            &everything,
            "/",
            &local(&put("/registry/core/a/b", 1))
        ));
    }

    /// xorshift64*: enough randomness for the simulation, the same on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// What one etcd watch stream sends, in order.
    enum Sent {
        Response(Vec<Event>),
        Progress(Revision),
    }

    /// Random histories of local single-key writes and other writers' txns (of one to
    /// three keys, in and out of the watched range), watched from a random revision,
    /// with local writes arriving in a jumbled order, some never, interleaved any which
    /// way with etcd's responses and progress notifications: what the watch passes on
    /// is always exactly etcd's events in its range, in order, once each, with progress
    /// only past every event it covers.
    #[test]
    fn any_interleaving_delivers_etcds_events_in_order_once() {
        let l = layout();
        let keys = [
            "/registry/core/pods/ns/a",
            "/registry/core/pods/other/b",
            "/registry/policy/poddisruptionbudgets/ns/c",
            "/registry/core/services/ns/d",
        ];
        let (mut fast, mut waited) = (0, 0);
        for seed in 1..=400u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let prefix =
                ["/registry/core/pods/", "/registry/core/po", "/registry/"][(seed % 3) as usize];
            let range = l.range(prefix).expect("a range");
            let after = rng.below(6) as Revision;
            let progress = rng.chance(50);
            // Notifications ahead of the events they cover (an old etcd, forced on).
            let misordered = progress && rng.chance(30);
            let bound = if rng.chance(30) { 2 } else { MAX_PENDING };
            let mut history = Vec::new();
            let mut locals = Vec::new();
            for revision in 1..=150 {
                let mine = rng.chance(60);
                let n = if mine { 1 } else { 1 + rng.below(3) };
                let events: Vec<Event> = (0..n)
                    .map(|i| {
                        let key = keys[rng.below(keys.len() as u64) as usize];
                        put(&format!("{key}-{revision}-{i}"), revision)
                    })
                    .collect();
                if mine && rng.chance(90) {
                    let at = revision + rng.below(12) as Revision;
                    locals.push((at, local(&events[0])));
                }
                history.push(events);
            }
            locals.sort_by_key(|(at, _)| *at);
            // etcd's stream: the range's events after `after`, whole revisions per
            // response, with progress notifications between responses.
            let in_etcd_range = |e: &Event| {
                let key = l.to_etcd(&e.kv.key).expect("a berth key");
                key >= range.start && key < range.end
            };
            let mut sent = Vec::new();
            let mut response = Vec::new();
            let mut covered = after;
            for events in &history[usize::try_from(after).expect("small")..] {
                let revision = events[0].revision();
                let mine: Vec<Event> = events
                    .iter()
                    .filter(|e| in_etcd_range(e))
                    .cloned()
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                if !response.is_empty() && rng.chance(50) {
                    sent.push(Sent::Response(std::mem::take(&mut response)));
                    if rng.chance(30) {
                        let ahead = if misordered { 20 } else { revision - covered };
                        let to = covered + rng.below(ahead as u64) as Revision;
                        sent.push(Sent::Progress(to));
                    }
                }
                covered = revision;
                response.extend(mine);
            }
            sent.push(Sent::Response(response));
            sent.push(Sent::Progress(150));
            let expected: Vec<Event> = history
                .iter()
                .flatten()
                .filter(|e| e.revision() > after && in_etcd_range(e))
                .filter(|e| !range.filter || e.kv.key.starts_with(prefix))
                .cloned()
                .collect();

            let mut sim = Sim::new(prefix, after, bound, progress);
            let (mut sent, mut locals) = (sent.into_iter().peekable(), locals.into_iter());
            let etcd_first = 20 + rng.below(60);
            let mut next_local = locals.next();
            while sent.peek().is_some() || next_local.is_some() {
                if rng.chance(2) {
                    sim.seq.lagged();
                }
                let take_etcd =
                    next_local.is_none() || (sent.peek().is_some() && rng.chance(etcd_first));
                if take_etcd {
                    match sent.next() {
                        Some(Sent::Response(events)) => sim.etcd(&events),
                        Some(Sent::Progress(revision)) => sim.progress(revision),
                        None => {}
                    }
                } else if let Some((_, write)) = next_local.take() {
                    sim.local(&write);
                    next_local = locals.next();
                }
            }
            let events: Vec<&Event> = sim
                .out
                .iter()
                .filter_map(|w| match w {
                    Watched::Event(e) => Some(e),
                    Watched::Progress(_) => None,
                })
                .collect();
            assert_eq!(events, expected.iter().collect::<Vec<_>>(), "seed {seed}");
            // Progress never precedes an event it covers, nor repeats (unless etcd sent
            // it ahead).
            let order: Vec<(Revision, bool)> = sim
                .out
                .iter()
                .map(|w| match w {
                    Watched::Event(e) => (e.revision(), false),
                    Watched::Progress(r) => (*r, true),
                })
                .collect();
            assert!(
                misordered
                    || order
                        .windows(2)
                        .all(|w| w[0] <= w[1] && !(w[0].1 && w[0] == w[1])),
                "seed {seed}: {order:?}"
            );
            fast += sim.fast;
            waited += sim.waited;
        }
        assert!(
            fast > 100 && waited > 100,
            "fast path: {fast} at once, {waited} after waiting"
        );
    }
}
