//! PATCH: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and, for built-in types,
//! strategic merge patch — applied to the live object, then stored through the same
//! update path as PUT (retried on a race, 409 only if the patch pinned a
//! resourceVersion) — and server-side apply (`application/apply-patch+yaml`), which
//! creates the object if it does not exist ([`crate::apiserver::managed_fields`]).

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::{Ctx, Part, create_object, object_response, update_loop};
use crate::apiserver::managed_fields;
use crate::apiserver::object;
use crate::apiserver::patch::strategic_merge;
use crate::apiserver::request::{content_type, decode, read_body};
use crate::apiserver::status::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Json,
    Merge,
    Strategic,
}

pub async fn patch(ctx: Ctx, name: &str, part: Option<Part>, body: Body) -> ApiResult<Response> {
    let part = part.unwrap_or(Part::Main);
    if ctx.is_apply() {
        let (obj, code) = server_side_apply(&ctx, name, part, body).await?;
        return object_response(&ctx, code, &obj).await;
    }
    let obj = apply_patch(&ctx, name, part, body).await?;
    object_response(&ctx, StatusCode::OK, &obj).await
}

/// Server-side apply of the request's configuration to `name` (or the part of it):
/// an update if the object exists (200), else a create (201, main resource only).
async fn server_side_apply(
    ctx: &Ctx,
    name: &str,
    part: Part,
    body: Body,
) -> ApiResult<(Value, StatusCode)> {
    managed_fields::check_patch_options(ctx, true)?;
    let bytes = read_body(body, ctx.api.max_body).await?;
    let config = decode(&bytes, "application/apply-patch+yaml")?;
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "error decoding YAML: the apply configuration must be an object",
        ));
    }
    let def = &ctx.def;
    check_apply_type(&config, &def.group, &def.version, &def.kind)?;
    let config_name = object::name(&config);
    if !config_name.is_empty() && config_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({config_name}) does not match the name on the URL ({name})"
        )));
    }
    let subresource = part.subresource();
    for _ in 0..4 {
        if ctx.current(name).await?.is_none() {
            if part != Part::Main {
                return Err(ctx.not_found(name));
            }
            if let Some(uid) = object::meta_str(&config, "uid").filter(|u| !u.is_empty()) {
                return Err(ApiError::conflict_because(
                    &def.group,
                    &def.plural,
                    name,
                    &format!(
                        "uid mismatch: the provided object specified uid {uid}, and no existing object was found"
                    ),
                ));
            }
            let mut obj = managed_fields::apply(ctx, None, &config, subresource)?;
            if let Some(meta) = object::meta_mut(&mut obj) {
                meta.insert("name".into(), Value::String(name.to_owned()));
            }
            match create_object(ctx, obj).await {
                Err(e) if e.code == 409 && e.reason == "AlreadyExists" => continue,
                other => return other,
            }
        }
        let (obj, _) = update_loop(ctx, name, part, |old| {
            managed_fields::apply(ctx, Some(old), &config, subresource)
        })
        .await?;
        return Ok((obj, StatusCode::OK));
    }
    Err(ApiError::conflict(&def.group, &def.plural, name))
}

/// What kube-apiserver's field manager checks of an apply configuration before it
/// merges: the type it names is the endpoint's (`invalid object type: apps/v1,
/// Kind=Deployment`, the version-check manager's words), and it carries no
/// managedFields.
pub fn check_apply_type(config: &Value, group: &str, version: &str, kind: &str) -> ApiResult<()> {
    let text = |k: &str| config.get(k).and_then(Value::as_str).unwrap_or_default();
    let (api_version, applied_kind) = (text("apiVersion"), text("kind"));
    let expected = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    if api_version != expected || applied_kind != kind {
        // `GroupVersionKind.String()`: `/v1, Kind=Secret` for the core group.
        let gv = if api_version.contains('/') {
            api_version.to_owned()
        } else {
            format!("/{api_version}")
        };
        return Err(ApiError::bad_request(format!(
            "invalid object type: {gv}, Kind={applied_kind}"
        )));
    }
    if config
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    Ok(())
}

/// Patches `name` (or the part of it) and returns the stored object.
pub async fn apply_patch(ctx: &Ctx, name: &str, part: Part, body: Body) -> ApiResult<Value> {
    let media = content_type(&ctx.headers);
    let kind = match media.as_str() {
        "application/json-patch+json" => Kind::Json,
        "application/merge-patch+json" => Kind::Merge,
        "application/strategic-merge-patch+json" => Kind::Strategic,
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other:?}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
            )));
        }
    };
    managed_fields::check_patch_options(ctx, false)?;
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
    // A JSON patch that replaces or tests the resourceVersion (kubectl's managed-fields
    // migration does) needs it in the document; its result then pins it.
    let names_version = patch.as_array().is_some_and(|ops| {
        ops.iter()
            .any(|op| op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion"))
    });
    let (obj, _) = update_loop(ctx, name, part, |old| {
        let mut doc = old.clone();
        // The patch decides on conflicts only if it names a resourceVersion itself.
        if !(matches!(kind, Kind::Json) && names_version)
            && let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut)
        {
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
