//! Watches over etcd: [`Watcher::watch`] turns an etcd watch (from `after + 1`, with
//! `prev_kv`) into the store's [`WatchStream`], and keeps it going across connection
//! losses — a broken stream is re-created from the revision after the last one
//! delivered, so the events stay ordered and without gaps or repeats (etcd never splits
//! one revision's events over two responses). The stream ends with
//! [`StoreError::Compacted`] only when etcd cancels the watch because the history it
//! needs is compacted. [`follow`] is the store's own watch on the whole prefix that
//! keeps [`super::EtcdStore`]'s current revision up to date with other servers' writes
//! and expired leases.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchClient, WatchOptions};
use tokio::sync::{mpsc, oneshot};

use super::keys::{Layout, Range};
use super::{Failure, REQUEST_TIMEOUT, Revisions, call, convert};
use crate::store::{Event, EventKind, KeyValue, Result, Revision, StoreError, WatchStream};

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
}

impl Watcher {
    /// Every change under `prefix` after `after` (see the module docs).
    pub async fn watch(&self, prefix: String, after: Revision) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let Some(range) = self.layout.range(&prefix) else {
            // No key can ever match: a stream that stays open and silent.
            tokio::spawn(async move { tx.closed().await });
            return Ok(WatchStream::new(rx));
        };
        let stream = self.open(&range, after).await?;
        tokio::spawn(self.clone().forward(prefix, range, after, stream, tx));
        Ok(WatchStream::new(rx))
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

    /// Delivers the events of `stream`, re-creating it when it breaks.
    async fn forward(
        self,
        prefix: String,
        range: Range,
        mut last: Revision,
        mut stream: etcd_client::WatchStream,
        tx: mpsc::Sender<Result<Event>>,
    ) {
        loop {
            let broke = loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    () = tx.closed() => return,
                };
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    Ok(None) => break "etcd closed the watch".to_owned(),
                    Err(err) => break err.to_string(),
                };
                if resp.compact_revision() > 0 {
                    let compacted = resp.compact_revision();
                    self.revisions.compacted_at(compacted);
                    let _ = tx
                        .send(Err(StoreError::Compacted {
                            requested: last,
                            compacted,
                        }))
                        .await;
                    return;
                }
                if resp.canceled() {
                    break format!("etcd canceled the watch: {}", resp.cancel_reason());
                }
                for raw in resp.events() {
                    let event = match self.event(raw) {
                        Ok(event) => event,
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    };
                    last = last.max(event.revision());
                    if range.filter && !event.kv.key.starts_with(&prefix) {
                        continue;
                    }
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            };
            tracing::warn!(
                endpoints = %self.endpoints,
                %prefix,
                from = last + 1,
                why = %broke,
                "etcd watch broke; re-creating it"
            );
            let mut backoff = Duration::from_millis(100);
            stream = loop {
                if tx.is_closed() {
                    return;
                }
                match self.open(&range, last).await {
                    Ok(stream) => break stream,
                    Err(err @ StoreError::Compacted { .. }) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                    Err(err) => {
                        tracing::debug!(%err, ?backoff, "re-creating the etcd watch failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
            tracing::info!(endpoints = %self.endpoints, %prefix, from = last + 1, "etcd watch re-created");
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
