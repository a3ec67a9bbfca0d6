//! GET of one object: from the watch cache once it caught up with the resourceVersion
//! asked for; from the store at an exact past resourceVersion; and without a
//! resourceVersion (a consistent read) from the watch cache after it caught up with the
//! embedded store, or from the store itself when other servers write it too (etcd) —
//! kube-apiserver serves consistent GETs from etcd, one quorum read of the key (KEP-2340
//! leaves them there: reading the key costs what asking etcd for its revision would).
//! While etcd is out of reach a consistent GET is answered from the watch cache.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::{Ctx, json_response, object_response, protobuf_response};
use crate::apiserver::object;
use crate::apiserver::protobuf;
use crate::apiserver::status::ApiResult;
use crate::store::StoreError;

pub async fn get(ctx: Ctx, name: &str) -> ApiResult<Response> {
    let key = ctx.key(name);
    let rv = ctx.query.int("resourceVersion")?;
    let exact = ctx.query.get("resourceVersionMatch") == Some("Exact");
    let from_store = match rv {
        Some(rv) if rv > 0 && exact => Some(Some(rv)),
        None if ctx.api.store.shared() => Some(None),
        _ => None,
    };
    let stored = match from_store {
        Some(at) => match ctx.api.store.get(&key, at).await {
            Ok(kv) => {
                let kv = kv.ok_or_else(|| ctx.not_found(name))?;
                Some(object::with_revision(&kv.value, kv.mod_revision))
            }
            // etcd out of reach: a consistent GET is answered from this server's watch
            // cache meanwhile (what it last saw), as reads keep working while etcd is
            // down; an exact past revision cannot be.
            Err(StoreError::Unavailable(why) | StoreError::Timeout(why)) if at.is_none() => {
                tracing::debug!(%why, %key, "the store is out of reach: GET from the watch cache");
                None
            }
            Err(e) => return Err(ctx.store_error(e, name)),
        },
        None => None,
    };
    let raw: Vec<u8> = match stored {
        Some(raw) => raw,
        None => {
            ctx.cache_at(rv).await?;
            let cached = ctx.api.cache.get(&key).ok_or_else(|| ctx.not_found(name))?;
            if !ctx.wants_table()
                && !ctx.def.converts()
                && protobuf::accepts(&ctx.headers)
                && let Some(bytes) = cached.protobuf()
            {
                let body = protobuf::envelope(&ctx.def.api_version(), &ctx.def.kind, &bytes);
                return Ok(protobuf_response(StatusCode::OK, body));
            }
            cached.raw.to_vec()
        }
    };
    if ctx.wants_table()
        || protobuf::accepts(&ctx.headers)
        || ctx.def.conversion_webhook().is_some()
    {
        // The stored version: object_response converts it for the client.
        let value: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        return object_response(&ctx, StatusCode::OK, &value).await;
    }
    Ok(json_response(
        StatusCode::OK,
        ctx.def.external_raw(&raw).into_owned(),
    ))
}
