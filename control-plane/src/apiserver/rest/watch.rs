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
use tokio::sync::broadcast;

use super::Ctx;
use super::list::Selectors;
use crate::apiserver::status::{ApiError, ApiResult};
use crate::apiserver::table;
use crate::apiserver::watch_cache::{Cached, Change, ChangeKind, WatchEventType, watch_line};
use crate::apiserver::{field_order, protobuf};
use crate::store::Revision;

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
        // Capped (at a year), so a huge value cannot overflow the deadline.
        Some(t) if t > 0 => Duration::from_secs((t as u64).min(365 * 24 * 3600)),
        _ => Duration::from_secs(
            1800 + (crate::apiserver::object::new_uid().as_bytes()[0] as u64 % 60) * 30,
        ),
    };
    let prefix = ctx.def.collection_prefix(ctx.namespace.as_deref());
    let cache = ctx.api.cache.clone();

    let from_snapshot = initial_events || rv.is_none_or(|r| r == 0);
    let (initial, watch) = if from_snapshot {
        if rv.is_none() && initial_events {
            // The initial events are a consistent list (KEP-3157 with KEP-2340).
            ctx.cache_at(None).await?;
        } else if rv.is_none() || initial_events {
            // "Start at most recent": what this server has seen, as kube-apiserver's
            // watch cache starts such a watch without asking etcd; a write through
            // another server not seen yet arrives as an event.
            ctx.cache_at(Some(ctx.api.store.current_revision())).await?;
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
                let line = watch_line("ERROR", &field_order::to_vec(&err.to_status()));
                return Ok(stream_response(vec![line], None, "application/json"));
            }
        }
    };

    let table = ctx.wants_table();
    let lines = Lines {
        protobuf: !table && ctx.def.typed.is_some() && protobuf::accepts(&ctx.headers),
        table,
        ctx: ctx.clone(),
        selectors,
        prefix,
    };
    let now = tokio::time::Instant::now();
    let feed = Feed {
        last: watch.after,
        initial: initial.into_iter(),
        initial_end: initial_events,
        backlog: watch.backlog.into_iter(),
        live: watch.live,
        ticker: bookmarks.then(|| tokio::time::interval_at(now + BOOKMARK_EVERY, BOOKMARK_EVERY)),
        deadline: now + timeout,
        ended: false,
        lines,
    };
    let content_type = if feed.lines.protobuf {
        protobuf::WATCH_CONTENT_TYPE
    } else {
        "application/json"
    };
    Ok(stream_response(Vec::new(), Some(feed), content_type))
}

/// The response body: `first`, then what `feed` yields until it ends. The feed is
/// polled by the response stream itself — no task or channel per watcher in between —
/// and dropped with it when the client goes away.
fn stream_response(first: Vec<Bytes>, feed: Option<Feed>, content_type: &'static str) -> Response {
    let head = futures_util::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
    let body = match feed {
        Some(feed) => {
            let tail = futures_util::stream::unfold(feed, |mut feed| async move {
                feed.next().await.map(|b| (Ok::<_, Infallible>(b), feed))
            });
            Body::from_stream(futures_util::StreamExt::chain(head, tail))
        }
        None => Body::from_stream(head),
    };
    (
        StatusCode::OK,
        [
            ("content-type", content_type),
            ("cache-control", "no-cache, private"),
        ],
        body,
    )
        .into_response()
}

/// One watch's stream of event lines: the initial objects (ADDED), the end-of-initial
/// bookmark when asked, the backlog from the window, then live changes and periodic
/// bookmarks until the timeout. Each chunk joins what is ready, up to [`BATCH_BYTES`].
struct Feed {
    lines: Lines,
    /// The revision of the last change sent; live changes at or below it are skipped.
    last: Revision,
    initial: std::vec::IntoIter<Arc<Cached>>,
    /// A `k8s.io/initial-events-end` bookmark is still to be sent.
    initial_end: bool,
    backlog: std::vec::IntoIter<Arc<Change>>,
    live: broadcast::Receiver<Arc<Change>>,
    ticker: Option<tokio::time::Interval>,
    deadline: tokio::time::Instant,
    /// A conversion failed: its `ERROR` event was the last.
    ended: bool,
}

impl Feed {
    async fn next(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        let mut batch = Batch::default();
        let webhook = self.lines.ctx.def.conversion_webhook().is_some();
        while batch.len() < BATCH_BYTES {
            // Through a conversion webhook, a group of objects in one review.
            let group: Vec<Arc<[u8]>> = self
                .initial
                .by_ref()
                .take(if webhook { INITIAL_GROUP } else { 1 })
                .map(|obj| obj.raw.clone())
                .collect();
            if group.is_empty() {
                break;
            }
            if !webhook {
                for raw in &group {
                    let line = self
                        .lines
                        .object("ADDED", &self.lines.ctx.def.external_raw(raw));
                    batch.push(Some(line));
                }
                continue;
            }
            match self.lines.ctx.external_raws(group).await {
                Ok(converted) => {
                    for raw in &converted {
                        batch.push(Some(self.lines.object("ADDED", raw)));
                    }
                }
                Err(err) => {
                    batch.push(Some(conversion_failed(&err)));
                    self.ended = true;
                    break;
                }
            }
        }
        if let Some(bytes) = batch.finish() {
            return Some(bytes);
        }
        if std::mem::take(&mut self.initial_end) {
            return Some(self.lines.bookmark(self.last, true));
        }
        let mut batch = Batch::default();
        while batch.len() < BATCH_BYTES {
            let Some(change) = self.backlog.next() else {
                break;
            };
            self.last = change.revision;
            let line = self.lines.line(&change).await;
            let failed = self.lines.is_error(line.as_ref());
            batch.push(line);
            if failed {
                self.ended = true;
                break;
            }
        }
        if let Some(bytes) = batch.finish() {
            return Some(bytes);
        }
        loop {
            tokio::select! {
                received = self.live.recv() => match received {
                    Ok(change) => {
                        if change.revision <= self.last {
                            continue;
                        }
                        self.last = change.revision;
                        let mut batch = Batch::default();
                        let line = self.lines.line(&change).await;
                        let failed = self.lines.is_error(line.as_ref());
                        batch.push(line);
                        if failed {
                            self.ended = true;
                            return batch.finish();
                        }
                        // Changes already queued go out in the same write (one HTTP/2
                        // frame, one TLS record) instead of one each.
                        while batch.len() < BATCH_BYTES {
                            match self.live.try_recv() {
                                Ok(next) if next.revision <= self.last => {}
                                Ok(next) => {
                                    self.last = next.revision;
                                    let line = self.lines.line(&next).await;
                                    let failed = self.lines.is_error(line.as_ref());
                                    batch.push(line);
                                    if failed {
                                        self.ended = true;
                                        break;
                                    }
                                }
                                Err(broadcast::error::TryRecvError::Empty) => break,
                                // Too far behind (or the cache is gone): end the watch
                                // after what is in hand; the client resumes from its
                                // last resourceVersion (within the window) or re-lists.
                                Err(_) => {
                                    self.deadline = tokio::time::Instant::now();
                                    break;
                                }
                            }
                        }
                        if let Some(bytes) = batch.finish() {
                            return Some(bytes);
                        }
                    }
                    Err(_) => return None,
                },
                () = tick(&mut self.ticker) => {
                    let rv = self.lines.ctx.api.cache.revision().max(self.last);
                    return Some(self.lines.bookmark(rv, false));
                }
                () = tokio::time::sleep_until(self.deadline) => return None,
            }
        }
    }
}

/// Initial objects converted in one review by a CRD's conversion webhook.
const INITIAL_GROUP: usize = 100;

/// A failed conversion's `ERROR` event, after which the watch ends (kube-apiserver
/// ends a watch whose event it cannot encode; the event says why).
fn conversion_failed(err: &ApiError) -> Bytes {
    tracing::warn!(error = %err.message, "watch: conversion failed; ending the watch");
    watch_line("ERROR", &field_order::to_vec(&err.to_status()))
}

/// The next bookmark tick, or never without bookmarks.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// What a watcher's lines look like: its selectors, its key prefix, JSON or Table.
struct Lines {
    /// The client asked for Table rows (decided once per watch).
    table: bool,
    /// The client prefers protobuf: length-prefixed `WatchEvent` frames.
    protobuf: bool,
    ctx: Ctx,
    selectors: Selectors,
    prefix: String,
}

impl Lines {
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

    /// A stored object through the CRD's conversion webhook, when it has one; its
    /// failure is an `ERROR` event with the 500 Status, the watch's last.
    async fn converted(&self, raw: &Arc<[u8]>) -> Result<Option<Arc<[u8]>>, Bytes> {
        if self.ctx.def.conversion_webhook().is_none() {
            return Ok(None);
        }
        match self.ctx.external_raw(raw.clone()).await {
            Ok(raw) => Ok(Some(raw)),
            Err(err) => Err(conversion_failed(&err)),
        }
    }

    /// Whether `line` is a failed conversion's `ERROR` event (which ends the watch).
    fn is_error(&self, line: Option<&Bytes>) -> bool {
        self.ctx.def.conversion_webhook().is_some()
            && line.is_some_and(|l| l.starts_with(b"{\"type\":\"ERROR\""))
    }

    /// The line for `change`'s event, if it is one for this watcher.
    async fn line(&self, change: &Change) -> Option<Bytes> {
        let kind = self.event(change)?;
        match self.converted(&change.object.raw).await {
            Ok(Some(raw)) => return Some(self.object(kind.as_str(), &raw)),
            Ok(None) => {}
            Err(line) => return Some(line),
        }
        // Converted: this watcher's own line. An object stored as served (a custom
        // resource read in its storage version) takes the shared one below.
        if self.ctx.def.converts()
            && let std::borrow::Cow::Owned(raw) = self.ctx.def.external_raw(&change.object.raw)
        {
            return Some(if self.table || self.protobuf {
                self.object(kind.as_str(), &raw)
            } else {
                watch_line(kind.as_str(), &raw)
            });
        }
        if self.protobuf
            && !self.table
            && let Some(bytes) = change.object.protobuf()
        {
            let object =
                protobuf::envelope(&self.ctx.def.api_version(), &self.ctx.def.kind, &bytes);
            match protobuf::watch_frame_raw(kind.as_str(), &object) {
                Ok(frame) => return Some(Bytes::from(frame)),
                Err(e) => tracing::warn!(error = %e, "protobuf watch frame failed; sending JSON"),
            }
        }
        Some(if self.table || self.protobuf {
            self.object(kind.as_str(), &change.object.raw)
        } else {
            change.line(kind)
        })
    }

    fn bookmark(&self, revision: Revision, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.ctx.def.kind, "apiVersion": self.ctx.def.api_version(), "metadata": meta});
        if self.protobuf
            && let Some(frame) = self.frame("BOOKMARK", &obj)
        {
            return frame;
        }
        watch_line("BOOKMARK", &field_order::to_vec(&obj))
    }

    fn table_line(&self, kind: &str, raw: &[u8]) -> Bytes {
        let value: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
        let t = table::table(&self.ctx.def, &[value], None, &self.ctx.query);
        watch_line(kind, &field_order::to_vec(&t))
    }

    /// A protobuf frame for one event (`None` if the object cannot be encoded).
    fn frame(&self, kind: &str, obj: &Value) -> Option<Bytes> {
        match protobuf::watch_frame(kind, obj)? {
            Ok(frame) => Some(Bytes::from(frame)),
            Err(e) => {
                tracing::warn!(error = %e, "protobuf watch frame failed; sending JSON");
                None
            }
        }
    }

    /// An object's line (JSON, Table or a protobuf frame).
    fn object(&self, kind: &str, raw: &[u8]) -> Bytes {
        if self.protobuf {
            let value: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
            if let Some(frame) = self.frame(kind, &value) {
                return frame;
            }
        }
        if self.table {
            self.table_line(kind, raw)
        } else {
            watch_line(kind, raw)
        }
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
