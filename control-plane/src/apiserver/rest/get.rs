//! GET of one object, from the watch cache after it caught up with the store (a
//! consistent read, as Kubernetes serves an unset resourceVersion), or from the store at
//! an exact past resourceVersion.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::{Ctx, json_response, object_response, protobuf_response};
use crate::apiserver::object;
use crate::apiserver::protobuf;
use crate::apiserver::status::ApiResult;

pub async fn get(ctx: Ctx, name: &str) -> ApiResult<Response> {
    let key = ctx.key(name);
    let rv = ctx.query.int("resourceVersion")?;
    let raw: Vec<u8> = match rv {
        Some(rv) if rv > 0 && ctx.query.get("resourceVersionMatch") == Some("Exact") => {
            let kv = ctx
                .api
                .store
                .get(&key, Some(rv))
                .await
                .map_err(|e| ctx.store_error(e, name))?
                .ok_or_else(|| ctx.not_found(name))?;
            object::with_revision(&kv.value, kv.mod_revision)
        }
        _ => {
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
    if ctx.wants_table() || protobuf::accepts(&ctx.headers) {
        // The stored version: object_response converts it for the client.
        let value: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        return Ok(object_response(&ctx, StatusCode::OK, &value));
    }
    Ok(json_response(
        StatusCode::OK,
        ctx.def.external_raw(&raw).into_owned(),
    ))
}
