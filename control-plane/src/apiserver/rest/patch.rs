//! PATCH: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and, for built-in types,
//! strategic merge patch — applied to the live object, then stored through the same
//! update path as PUT (retried on a race, 409 only if the patch pinned a
//! resourceVersion). Server-side apply (`application/apply-patch+yaml`) is not
//! implemented yet and says so with a 415.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::{Ctx, Part, object_response, update_loop};
use crate::apiserver::patch::strategic_merge;
use crate::apiserver::request::{content_type, read_body};
use crate::apiserver::status::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Json,
    Merge,
    Strategic,
}

pub async fn patch(ctx: Ctx, name: &str, part: Option<Part>, body: Body) -> ApiResult<Response> {
    let obj = apply_patch(&ctx, name, part.unwrap_or(Part::Main), body).await?;
    Ok(object_response(&ctx, StatusCode::OK, &obj))
}

/// Patches `name` (or the part of it) and returns the stored object.
pub async fn apply_patch(ctx: &Ctx, name: &str, part: Part, body: Body) -> ApiResult<Value> {
    let media = content_type(&ctx.headers);
    let kind = match media.as_str() {
        "application/json-patch+json" => Kind::Json,
        "application/merge-patch+json" => Kind::Merge,
        "application/strategic-merge-patch+json" => Kind::Strategic,
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            return Err(ApiError::unsupported_media_type(
                "server-side apply (application/apply-patch+yaml) is not supported by berth yet; use client-side apply (kubectl apply without --server-side)",
            ));
        }
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other:?}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
            )));
        }
    };
    let definition = match (&ctx.def.typed, kind) {
        (Some(t), _) => t.definition.clone(),
        (None, Kind::Strategic) => {
            return Err(ApiError::unsupported_media_type(format!(
                "strategic merge patch is not supported for {}; use a JSON merge patch (--type merge) or a JSON patch (--type json)",
                ctx.def.qualified()
            )));
        }
        (None, _) => String::new(),
    };
    let bytes = read_body(body, ctx.api.max_body).await?;
    let patch: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let json_patch = match kind {
        Kind::Json => Some(
            serde_json::from_value::<json_patch::Patch>(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?,
        ),
        _ => None,
    };
    if matches!(kind, Kind::Merge | Kind::Strategic) && !patch.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    let (obj, _) = update_loop(ctx, name, part, |old| {
        let mut doc = old.clone();
        // The patch decides on conflicts only if it names a resourceVersion itself.
        if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        match kind {
            Kind::Json => {
                if let Some(p) = &json_patch {
                    json_patch::patch(&mut doc, p).map_err(|e| {
                        ApiError::new(
                            422,
                            "Invalid",
                            format!("the JSON patch could not be applied: {e}"),
                        )
                    })?;
                }
            }
            Kind::Merge => json_patch::merge(&mut doc, &patch),
            Kind::Strategic => doc = strategic_merge(&doc, &patch, &definition)?,
        }
        Ok(doc)
    })
    .await?;
    Ok(obj)
}
