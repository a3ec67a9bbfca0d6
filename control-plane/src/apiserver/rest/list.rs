//! LIST: from the watch cache (unset resourceVersion after catching up with the store,
//! `0`, or NotOlderThan) — or, for `limit`/`continue` pages and Exact reads, from the
//! store at one revision, so every page of a list is the same snapshot, as on
//! Kubernetes. Label and field selectors filter either way. An unset resourceVersion
//! is a consistent read from the cache (KEP-2340, [`Ctx::cache_caught_up`]); when the
//! cache does not reach the store's revision in time the list is read from the store,
//! as kube-apiserver falls back to etcd.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};

use super::{Ctx, json_response, protobuf_response, value_response};
use crate::apiserver::object;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::selectors::{FieldSelector, LabelSelector, field_values, labels};
use crate::apiserver::status::{ApiError, ApiResult};
use crate::apiserver::table;
use crate::apiserver::watch_cache::Cached;
use crate::store::{ListOptions, Revision};

/// The selectors of a request.
#[derive(Debug, Clone)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn from(ctx: &Ctx) -> ApiResult<Self> {
        Ok(Self {
            labels: LabelSelector::parse(ctx.query.get("labelSelector").unwrap_or_default())?,
            fields: FieldSelector::parse(
                ctx.query.get("fieldSelector").unwrap_or_default(),
                &ctx.def.kind,
            )?,
        })
    }

    pub fn matches(&self, obj: &Cached) -> bool {
        self.labels.matches(&obj.attrs.labels) && self.fields.matches(&obj.attrs.fields)
    }

    pub fn matches_value(&self, obj: &Value) -> bool {
        self.labels.matches(&labels(obj)) && self.fields.matches(&field_values(obj))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    v: String,
    rv: Revision,
    start: String,
}

pub async fn list(ctx: Ctx) -> ApiResult<Response> {
    let selectors = Selectors::from(&ctx)?;
    let prefix = ctx.def.collection_prefix(ctx.namespace.as_deref());
    let rv = ctx.query.int("resourceVersion")?;
    let limit = ctx.query.int("limit")?.filter(|l| *l > 0);
    let token = ctx.query.get("continue");
    let exact = ctx.query.get("resourceVersionMatch") == Some("Exact");
    let paged = token.is_some() || (limit.is_some() && rv != Some(0)) || exact;

    // The cached objects of an unpaged list: their protobuf bytes are kept per object.
    let mut cached = None;
    let (items, revision, next) = if paged {
        let (at, start) = match token {
            Some(t) => {
                let c = decode_continue(t)?;
                (Some(c.rv), Some(c.start))
            }
            None if exact => (rv, None),
            None => (None, None),
        };
        page(
            &ctx,
            &prefix,
            &selectors,
            at,
            start,
            limit.map(|l| l as usize),
        )
        .await?
    } else {
        match ctx.cache_caught_up(rv).await? {
            Ok(()) => {
                let (objs, revision) = ctx.api.cache.list(&prefix, |o| selectors.matches(o));
                let raws = objs.iter().map(|o| o.raw.clone()).collect();
                cached = Some(objs);
                (raws, revision, None)
            }
            Err(target) if rv.is_none() => {
                tracing::debug!(
                    %prefix,
                    target,
                    cache = ctx.api.cache.revision(),
                    "the watch cache did not catch up in time; a consistent list reads the store"
                );
                page(&ctx, &prefix, &selectors, None, None, None).await?
            }
            Err(target) => return Err(ctx.too_large(target)),
        }
    };
    // Another version than the stored one: every item converted (and the kept
    // protobuf bytes, which are the stored version's, not used).
    let items: Vec<Arc<[u8]>> = if ctx.def.converts() {
        cached = None;
        ctx.external_raws(items).await?
    } else {
        items
    };

    if ctx.wants_table() {
        let values: Vec<Value> = items
            .iter()
            .map(|raw| serde_json::from_slice(raw).unwrap_or(Value::Null))
            .collect();
        let mut t = table::table(&ctx.def, &values, Some(revision), &ctx.query);
        if let Some(next) = &next {
            t["metadata"]["continue"] = json!(next);
        }
        return Ok(value_response(StatusCode::OK, &t));
    }
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if let Some(next) = &next {
        meta["continue"] = json!(next);
    }
    if crate::apiserver::protobuf::accepts(&ctx.headers)
        && let Some(body) = protobuf_list(&ctx.def, &meta, &items, cached.as_deref())
    {
        return Ok(protobuf_response(StatusCode::OK, body));
    }
    Ok(json_response(
        StatusCode::OK,
        list_body(&ctx.def, &meta, &items),
    ))
}

/// The list as protobuf: the items' message bytes (kept per object by the watch cache
/// when the list came from it) concatenated into `<Kind>List`. `None` when the kind
/// has no message (custom resources) or an item did not encode — then JSON.
fn protobuf_list(
    def: &ResourceDef,
    meta: &Value,
    items: &[Arc<[u8]>],
    cached: Option<&[Arc<Cached>]>,
) -> Option<Vec<u8>> {
    use crate::apiserver::protobuf;
    let bytes: Option<Vec<Arc<[u8]>>> = match cached {
        Some(objs) => objs.iter().map(|o| o.protobuf()).collect(),
        None => items
            .iter()
            .map(|raw| protobuf::message_bytes(raw)?.ok().map(Arc::from))
            .collect(),
    };
    let bytes = bytes?;
    match protobuf::list(&def.api_version(), &def.list_kind, meta, &bytes)? {
        Ok(body) => Some(body),
        Err(e) => {
            tracing::warn!(error = %e, "protobuf list failed; answering JSON");
            None
        }
    }
}

/// A `…List` object from items already encoded (concatenated, not re-encoded).
pub fn list_body<T: AsRef<[u8]>>(def: &ResourceDef, meta: &Value, items: &[T]) -> Vec<u8> {
    let head = format!(
        "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":",
        def.list_kind,
        def.api_version(),
    );
    let size = head.len() + 128 + items.iter().map(|i| i.as_ref().len() + 1).sum::<usize>();
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head.as_bytes());
    // ListMeta order: resourceVersion, continue, remainingItemCount.
    crate::apiserver::field_order::write_meta(&mut body, meta, None);
    body.extend_from_slice(b",\"items\":[");
    for (i, raw) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(raw.as_ref());
    }
    body.extend_from_slice(b"]}");
    body
}

fn decode_continue(token: &str) -> ApiResult<Continue> {
    let bad = || ApiError::bad_request("continue key is not valid: invalid continue token");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|_| bad())?;
    let c: Continue = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if c.v != "meta.k8s.io/v1" {
        return Err(bad());
    }
    Ok(c)
}

fn encode_continue(rv: Revision, start: &str) -> String {
    let c = Continue {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: start.into(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&c).unwrap_or_default())
}

/// One page from the store at revision `at` (default: now), filtered.
async fn page(
    ctx: &Ctx,
    prefix: &str,
    selectors: &Selectors,
    at: Option<Revision>,
    start: Option<String>,
    limit: Option<usize>,
) -> ApiResult<(Vec<Arc<[u8]>>, Revision, Option<String>)> {
    let mut items = Vec::new();
    let mut after = start;
    let mut revision = at;
    loop {
        let want = limit.map(|l| l - items.len());
        let result = ctx
            .api
            .store
            .list(
                prefix,
                ListOptions {
                    revision,
                    start_after: after.clone(),
                    limit: want,
                },
            )
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Compacted { .. } => ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ),
                other => ctx.store_error(other, ""),
            })?;
        revision = Some(result.revision);
        for kv in &result.kvs {
            let raw = object::with_revision(&kv.value, kv.mod_revision);
            let keep = selectors.labels.is_empty() && selectors.fields.is_empty() || {
                let v: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                selectors.matches_value(&v)
            };
            if keep {
                items.push(Arc::<[u8]>::from(raw));
            }
        }
        after = result.kvs.last().map(|kv| kv.key.clone()).or(after);
        let full = limit.is_some_and(|l| items.len() >= l);
        if !result.more {
            return Ok((items, result.revision, None));
        }
        if full {
            let next = after
                .as_deref()
                .map(|a| encode_continue(result.revision, a));
            return Ok((items, result.revision, next));
        }
    }
}
