//! WATCH, served from the watch cache: newline-delimited `{"type","object"}` events.
//!
//! - no resourceVersion (or `0`): the current objects as ADDED events, then changes;
//! - `resourceVersion=N`: every change after N, or one `ERROR` event with a 410 Status
//!   when N is older than the cache's window ("too old resource version");
//! - `sendInitialEvents=true`: the current objects, then a BOOKMARK annotated
//!   `k8s.io/initial-events-end` (streaming lists);
//! - selectors see transitions as Kubernetes does: an object that stops matching is
//!   DELETED for the watcher, one that starts matching is ADDED;
//! - `allowWatchBookmarks`: a BOOKMARK with the current resourceVersion every minute;
//! - `timeoutSeconds`: the stream ends after it (default 30–60 min, as the apiserver's
//!   randomized request timeout).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Ctx;
use super::list::Selectors;
use crate::apiserver::status::{ApiError, ApiResult};
use crate::apiserver::table;
use crate::apiserver::watch_cache::{Cached, Change, ChangeKind, WatchEventType, watch_line};

const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// Up to this many bytes of already-queued events are sent as one write.
const BATCH_BYTES: usize = 64 * 1024;

/// Event lines sent together: one line stays the shared buffer it is, several are
/// joined.
#[derive(Default)]
struct Batch {
    first: Option<Bytes>,
    joined: Vec<u8>,
}

impl Batch {
    fn push(&mut self, line: Option<Bytes>) {
        let Some(line) = line else {
            return;
        };
        match self.first.take() {
            None if self.joined.is_empty() => self.first = Some(line),
            None => self.joined.extend_from_slice(&line),
            Some(first) => {
                self.joined.extend_from_slice(&first);
                self.joined.extend_from_slice(&line);
            }
        }
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(self.joined.len(), Bytes::len)
    }

    fn finish(self) -> Option<Bytes> {
        self.first
            .or_else(|| (!self.joined.is_empty()).then(|| Bytes::from(self.joined)))
    }
}

pub async fn watch(ctx: Ctx) -> ApiResult<Response> {
    let selectors = Selectors::from(&ctx)?;
    start(ctx, selectors).await
}

/// `GET …/{name}?watch=1` (the deprecated single-object watch).
pub async fn watch_one(ctx: Ctx, name: &str) -> ApiResult<Response> {
    let mut selectors = Selectors::from(&ctx)?;
    selectors.fields = crate::apiserver::selectors::FieldSelector::parse(
        &format!("metadata.name={name}"),
        &ctx.def.kind,
    )?;
    start(ctx, selectors).await
}

async fn start(ctx: Ctx, selectors: Selectors) -> ApiResult<Response> {
    let rv = ctx.query.int("resourceVersion")?;
    let bookmarks = ctx.query.flag("allowWatchBookmarks");
    let initial_events = ctx.query.flag("sendInitialEvents");
    let timeout = match ctx.query.int("timeoutSeconds")? {
        Some(t) if t > 0 => Duration::from_secs(t as u64),
        _ => Duration::from_secs(
            1800 + (crate::apiserver::object::new_uid().as_bytes()[0] as u64 % 60) * 30,
        ),
    };
    let prefix = ctx.def.collection_prefix(ctx.namespace.as_deref());
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let cache = ctx.api.cache.clone();

    let from_snapshot = initial_events || rv.is_none_or(|r| r == 0);
    let (initial, watch) = if from_snapshot {
        if rv.is_none() || initial_events {
            ctx.cache_at(None).await?;
        }
        let (objs, watch) = cache.snapshot_and_watch(&prefix);
        let objs: Vec<Arc<Cached>> = objs.into_iter().filter(|o| selectors.matches(o)).collect();
        (objs, watch)
    } else {
        let after = rv.unwrap_or(0);
        ctx.cache_at(Some(after)).await?;
        match cache.watch(after) {
            Ok(watch) => (Vec::new(), watch),
            Err(oldest) => {
                // Kubernetes answers 200 and a single ERROR event.
                let err = ApiError::gone(format!("too old resource version: {after} ({oldest})"));
                let line = format!("{{\"type\":\"ERROR\",\"object\":{}}}\n", err.to_status());
                return Ok(stream_response(vec![Bytes::from(line)], None));
            }
        }
    };

    let writer = Writer {
        table: ctx.wants_table(),
        ctx: ctx.clone(),
        selectors,
        prefix,
        tx,
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            timeout,
            writer.run(initial, watch, initial_events, bookmarks),
        )
        .await;
    });
    Ok(stream_response(Vec::new(), Some(rx)))
}

fn stream_response(first: Vec<Bytes>, rx: Option<mpsc::Receiver<Bytes>>) -> Response {
    let head = futures_util::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
    let body = match rx {
        Some(rx) => {
            let tail = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
            });
            Body::from_stream(futures_util::StreamExt::chain(head, tail))
        }
        None => Body::from_stream(head),
    };
    (
        StatusCode::OK,
        [
            ("content-type", "application/json"),
            ("cache-control", "no-cache, private"),
        ],
        body,
    )
        .into_response()
}

struct Writer {
    /// The client asked for Table rows (decided once per watch).
    table: bool,
    ctx: Ctx,
    selectors: Selectors,
    prefix: String,
    tx: mpsc::Sender<Bytes>,
}

impl Writer {
    async fn run(
        self,
        initial: Vec<Arc<Cached>>,
        mut watch: crate::apiserver::watch_cache::CacheWatch,
        initial_events: bool,
        bookmarks: bool,
    ) -> Option<()> {
        for obj in &initial {
            self.send("ADDED", &obj.raw).await?;
        }
        let mut last = watch.after;
        if initial_events {
            self.bookmark(last, true).await?;
        }
        for change in std::mem::take(&mut watch.backlog) {
            last = change.revision;
            self.change(&change).await?;
        }
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        loop {
            tokio::select! {
                received = watch.live.recv() => match received {
                    Ok(change) => {
                        if change.revision <= last {
                            continue;
                        }
                        last = change.revision;
                        let mut batch = Batch::default();
                        batch.push(self.line(&change));
                        // Changes already queued go out in the same write (one HTTP/2
                        // frame, one TLS record) instead of one each.
                        while batch.len() < BATCH_BYTES {
                            match watch.live.try_recv() {
                                Ok(next) if next.revision <= last => {}
                                Ok(next) => {
                                    last = next.revision;
                                    batch.push(self.line(&next));
                                }
                                Err(broadcast::error::TryRecvError::Empty) => break,
                                Err(_) => return None,
                            }
                        }
                        if let Some(bytes) = batch.finish() {
                            self.tx.send(bytes).await.ok()?;
                        }
                    }
                    // Too far behind: end the watch; the client resumes from its last
                    // resourceVersion (within the window) or re-lists.
                    Err(broadcast::error::RecvError::Lagged(_)) => return None,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = ticker.tick(), if bookmarks => {
                    let rv = self.ctx.api.cache.revision().max(last);
                    self.bookmark(rv, false).await?;
                }
                _ = self.tx.closed() => return None,
            }
        }
    }

    /// The event `change` is for this watcher, if any: selectors see transitions as
    /// Kubernetes does.
    fn event(&self, change: &Change) -> Option<WatchEventType> {
        if !change.object.key.starts_with(&self.prefix) {
            return None;
        }
        let now = self.selectors.matches(&change.object);
        let before = change
            .prev
            .as_ref()
            .is_some_and(|p| self.selectors.matches(p));
        match change.kind {
            ChangeKind::Added if now => Some(WatchEventType::Added),
            ChangeKind::Modified if now && before => Some(WatchEventType::Modified),
            ChangeKind::Modified if now => Some(WatchEventType::Added),
            ChangeKind::Modified if before => Some(WatchEventType::Deleted),
            ChangeKind::Deleted if before || now => Some(WatchEventType::Deleted),
            _ => None,
        }
    }

    /// The line for `change`'s event, if it is one for this watcher.
    fn line(&self, change: &Change) -> Option<Bytes> {
        let kind = self.event(change)?;
        Some(if self.table {
            self.table_line(kind.as_str(), &change.object.raw)
        } else {
            change.line(kind)
        })
    }

    async fn change(&self, change: &Change) -> Option<()> {
        match self.line(change) {
            Some(line) => self.tx.send(line).await.ok(),
            None => Some(()),
        }
    }

    async fn bookmark(&self, revision: i64, initial_end: bool) -> Option<()> {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.ctx.def.kind, "apiVersion": self.ctx.def.api_version(), "metadata": meta});
        self.send("BOOKMARK", &serde_json::to_vec(&obj).unwrap_or_default())
            .await
    }

    fn table_line(&self, kind: &str, raw: &[u8]) -> Bytes {
        let value: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
        let t = table::table(&self.ctx.def, &[value], None, &self.ctx.query);
        Bytes::from(format!("{{\"type\":\"{kind}\",\"object\":{t}}}\n"))
    }

    async fn send(&self, kind: &str, raw: &[u8]) -> Option<()> {
        let line = if self.table && kind != "BOOKMARK" {
            self.table_line(kind, raw)
        } else {
            watch_line(kind, raw)
        };
        self.tx.send(line).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_one_line_is_that_line_and_more_are_joined_in_order() {
        let mut one = Batch::default();
        let line = watch_line("ADDED", b"{}");
        one.push(Some(line.clone()));
        one.push(None);
        assert_eq!(one.len(), line.len());
        let sent = one.finish().expect("a line");
        // The shared buffer itself, not a copy.
        assert_eq!(sent.as_ptr(), line.as_ptr());

        let mut many = Batch::default();
        for kind in ["ADDED", "MODIFIED", "DELETED"] {
            many.push(Some(watch_line(kind, b"{\"a\":1}")));
        }
        let joined = many.finish().expect("lines");
        let text = std::str::from_utf8(&joined).expect("utf-8");
        let kinds: Vec<&str> = text
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("one JSON event per line");
                assert_eq!(v["object"]["a"], 1);
                match v["type"].as_str() {
                    Some("ADDED") => "ADDED",
                    Some("MODIFIED") => "MODIFIED",
                    _ => "DELETED",
                }
            })
            .collect();
        assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
        assert!(Batch::default().finish().is_none());
    }
}
