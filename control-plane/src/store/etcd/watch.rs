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

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchClient, WatchOptions, WatchResponse};
use tokio::sync::{mpsc, oneshot};

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

/// What a watch needs of the store.
#[derive(Clone)]
pub(crate) struct Watcher {
    pub client: WatchClient,
    pub layout: Layout,
    pub endpoints: String,
    pub revisions: Arc<Revisions>,
    /// Whether to ask for and pass on progress notifications.
    pub progress: bool,
}

impl Watcher {
    /// Every change under `prefix` after `after` (see the module docs).
    pub async fn watch(&self, prefix: String, after: Revision) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let Some(range) = self.layout.range(&prefix) else {
            // No key can ever match: a stream that stays open and silent.
            tokio::spawn(async move { tx.closed().await });
            return Ok(WatchStream::with_progress(rx, None));
        };
        let stream = self.open(&range, after).await?;
        let progress = self.progress.then(ProgressRequest::default);
        let forward = Forward {
            prefix,
            range,
            last: after,
            progress: progress.clone(),
            tx,
        };
        tokio::spawn(self.clone().forward(forward, stream));
        Ok(WatchStream::with_progress(rx, progress))
    }

    /// An etcd watch of `range` from `after + 1`, once etcd confirmed it.
    async fn open(&self, range: &Range, after: Revision) -> Result<etcd_client::WatchStream> {
        let options = WatchOptions::new()
            .with_range(range.end.clone())
            .with_start_revision(after + 1)
            .with_prev_key();
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

    /// Delivers the events of `stream` (and progress, when asked for), re-creating it
    /// when it breaks.
    async fn forward(self, mut f: Forward, stream: etcd_client::WatchStream) {
        let (mut requests, mut responses) = stream.split();
        loop {
            let broke = loop {
                let message = tokio::select! {
                    m = responses.message() => m,
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
                            requested: f.last,
                            compacted,
                        }))
                        .await;
                    return;
                }
                if resp.canceled() {
                    break format!("etcd canceled the watch: {}", resp.cancel_reason());
                }
                if let Some(revision) = progress_notification(&resp) {
                    if f.progress.is_some() && revision > f.last {
                        f.last = revision;
                        if f.tx.send(Ok(Watched::Progress(revision))).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                for raw in resp.events() {
                    let event = match self.event(raw) {
                        Ok(event) => event,
                        Err(err) => {
                            let _ = f.tx.send(Err(err)).await;
                            return;
                        }
                    };
                    f.last = f.last.max(event.revision());
                    if f.range.filter && !event.kv.key.starts_with(&f.prefix) {
                        continue;
                    }
                    if f.tx.send(Ok(Watched::Event(event))).await.is_err() {
                        return;
                    }
                }
            };
            tracing::warn!(
                endpoints = %self.endpoints,
                prefix = %f.prefix,
                from = f.last + 1,
                why = %broke,
                "etcd watch broke; re-creating it"
            );
            let mut backoff = Duration::from_millis(100);
            let stream = loop {
                if f.tx.is_closed() {
                    return;
                }
                match self.open(&f.range, f.last).await {
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
            tracing::info!(endpoints = %self.endpoints, prefix = %f.prefix, from = f.last + 1, "etcd watch re-created");
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
    /// The newest revision delivered (an event's or a progress notification's).
    last: Revision,
    progress: Option<ProgressRequest>,
    tx: mpsc::Sender<Result<Watched>>,
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
pub(crate) async fn follow(
    watcher: Watcher,
    from: Revision,
    revisions: Arc<Revisions>,
    mut stopped: oneshot::Receiver<()>,
) -> Result<()> {
    let mut stream = watcher.watch(super::keys::ROOT.into(), from).await?;
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = &mut stopped => return,
            };
            match next {
                Some(Ok(event)) => revisions.saw(event.revision()),
                Some(Err(err)) => {
                    tracing::warn!(%err, "the store's etcd watch ended; following from now");
                    stream = loop {
                        if !matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                            return;
                        }
                        let from = revisions.current().max(revisions.compacted());
                        match watcher.watch(super::keys::ROOT.into(), from).await {
                            Ok(stream) => break stream,
                            Err(err) => {
                                tracing::debug!(%err, "following etcd again failed");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    };
                }
                None => return,
            }
        }
    });
    Ok(())
}
