//! DELETE of one object and of a collection. Objects with finalizers, and pods on a
//! node with a grace period, are marked (deletionTimestamp, deletionGracePeriodSeconds)
//! rather than removed; `propagationPolicy` Orphan / Foreground is recorded as the
//! `orphan` / `foregroundDeletion` finalizer for the garbage collector, as Kubernetes
//! does. Preconditions (uid, resourceVersion) are checked.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::list::Selectors;
use super::{Ctx, json_response, object_response, success_status, value_response};
use crate::apiserver::request::read_body;
use crate::apiserver::status::{ApiError, ApiResult};
use crate::apiserver::{field_order, object};

/// `DeleteOptions` from the body and the query.
#[derive(Debug, Default, Clone)]
struct Options {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    dry_run: bool,
}

async fn options(ctx: &Ctx, body: Body) -> ApiResult<Options> {
    let bytes = read_body(body, ctx.api.max_body).await?;
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let mut o = Options {
        grace: body.get("gracePeriodSeconds").and_then(Value::as_i64),
        propagation: body
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_owned),
        uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        resource_version: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        dry_run: body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"))
            || ctx.query.dry_run()?,
    };
    if let Some(g) = ctx.query.int("gracePeriodSeconds")? {
        o.grace = Some(g);
    }
    if let Some(p) = ctx.query.get("propagationPolicy") {
        o.propagation = Some(p.to_owned());
    }
    if body.get("orphanDependents") == Some(&Value::Bool(true)) && o.propagation.is_none() {
        o.propagation = Some("Orphan".into());
    }
    if let Some(p) = &o.propagation
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
            ),
        ));
    }
    Ok(o)
}

pub async fn delete(ctx: Ctx, name: &str, body: Body) -> ApiResult<Response> {
    let opts = options(&ctx, body).await?;
    let (obj, gone) = delete_one(&ctx, name, &opts).await?;
    if gone && !returns_deleted_object(&ctx) {
        let uid = object::meta_str(&obj, "uid").unwrap_or_default();
        return Ok(value_response(
            StatusCode::OK,
            &success_status(&ctx.def, name, uid),
        ));
    }
    object_response(&ctx, StatusCode::OK, &obj).await
}

/// Whether a delete that removed the object answers with it rather than a `Status`:
/// the registries that set `ReturnDeletedObject: true` in kube-apiserver (their
/// OpenAPI DELETE response is the object, not `Status` — as the generated clients'
/// return types show, e.g. the Python client's `delete_namespaced_service` →
/// `V1Service`), plus Namespaces and CustomResourceDefinitions (whose own `Delete`
/// answers with the object) and custom resources. A delete that only marks the object
/// (finalizers, a grace period) answers with it everywhere, as the generic store does.
fn returns_deleted_object(ctx: &Ctx) -> bool {
    if ctx.def.crd.is_some() {
        return true;
    }
    matches!(
        (ctx.def.group.as_str(), ctx.def.kind.as_str()),
        (
            "",
            "Pod"
                | "PodTemplate"
                | "Service"
                | "ServiceAccount"
                | "PersistentVolume"
                | "PersistentVolumeClaim"
                | "ResourceQuota"
                | "Namespace"
        ) | (
            "storage.k8s.io",
            "StorageClass" | "CSIDriver" | "CSINode" | "VolumeAttachment" | "VolumeAttributesClass"
        ) | (
            "resource.k8s.io",
            "DeviceClass" | "ResourceClaim" | "ResourceClaimTemplate" | "ResourceSlice"
        ) | ("apiextensions.k8s.io", "CustomResourceDefinition")
    )
}

/// Deletes or marks one object; `true` if it is gone.
async fn delete_one(ctx: &Ctx, name: &str, opts: &Options) -> ApiResult<(Value, bool)> {
    for _ in 0..8 {
        let Some((old, revision)) = ctx.current(name).await? else {
            return Err(ctx.not_found(name));
        };
        crate::apiserver::admission::node_restriction::admit_delete(
            ctx.user.as_ref(),
            &ctx.def,
            &old,
            false,
        )?;
        let meta = object::meta(&old).cloned().unwrap_or_default();
        if let Some(uid) = &opts.uid
            && meta.get("uid").and_then(Value::as_str) != Some(uid)
        {
            return Err(ApiError::conflict(&ctx.def.group, &ctx.def.plural, name));
        }
        if let Some(rv) = &opts.resource_version
            && *rv != revision.to_string()
        {
            return Err(ApiError::conflict(&ctx.def.group, &ctx.def.plural, name));
        }
        // ValidatingAdmissionPolicy (`object` null, `oldObject` the object).
        crate::apiserver::admission::policy::validate_delete(ctx, &old, opts.dry_run)?;
        // Admission webhooks (mutating, then validating on the object being deleted).
        let options = crate::apiserver::admission::webhook::delete_options(
            opts.grace,
            opts.propagation.as_deref(),
            opts.dry_run,
        );
        crate::apiserver::admission::webhook::admit_delete(ctx, &old, options).await?;
        let mut new = old.clone();
        let mut finalizers: Vec<Value> = meta
            .get("finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let add = match opts.propagation.as_deref() {
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            _ => None,
        };
        if let Some(f) = add
            && !finalizers.iter().any(|x| x == f)
        {
            finalizers.push(json!(f));
        }
        let grace = graceful_period(ctx, &old, opts.grace);
        let deleting = meta.contains_key("deletionTimestamp");
        // A namespace waits for the namespace controller (its `kubernetes` spec finalizer).
        let spec_finalizers = ctx.def.kind == "Namespace"
            && ctx.def.group.is_empty()
            && old
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        let mark = !finalizers.is_empty() || grace > 0 || spec_finalizers;
        if !mark {
            if opts.dry_run {
                return Ok((old, true));
            }
            match ctx.api.store.delete(ctx.key(name), Some(revision)).await {
                Ok(kv) => {
                    ctx.api.after_delete(&ctx.def, &old).await;
                    let mut out = old;
                    object::set_resource_version(&mut out, kv.mod_revision);
                    return Ok((out, true));
                }
                Err(crate::store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ctx.store_error(e, name)),
            }
        }
        {
            let Some(m) = object::meta_mut(&mut new) else {
                return Err(ApiError::internal("stored object without metadata"));
            };
            if !finalizers.is_empty() {
                m.insert("finalizers".into(), Value::Array(finalizers));
            }
            let shorter = m
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .is_none_or(|g| grace < g);
            if !deleting || shorter {
                // A grace period past the calendar's end marks the latest time there is.
                let at = jiff::Timestamp::now()
                    .checked_add(jiff::SignedDuration::from_secs(grace))
                    .unwrap_or(jiff::Timestamp::MAX);
                m.insert(
                    "deletionTimestamp".into(),
                    json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
        }
        if ctx.def.kind == "Namespace" && ctx.def.group.is_empty() {
            new["status"]["phase"] = json!("Terminating");
        }
        if super::unchanged(&old, &new) || opts.dry_run {
            return Ok((new, false));
        }
        match ctx
            .api
            .store
            .update(ctx.key(name), object::encode(&new), revision)
            .await
        {
            Ok(kv) => {
                object::set_resource_version(&mut new, kv.mod_revision);
                return Ok((new, false));
            }
            Err(crate::store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ctx.store_error(e, name)),
        }
    }
    Err(ApiError::conflict(&ctx.def.group, &ctx.def.plural, name))
}

/// The grace period a delete gets: pods bound to a node and still running get theirs
/// (default `spec.terminationGracePeriodSeconds`), everything else is immediate.
fn graceful_period(ctx: &Ctx, pod: &Value, requested: Option<i64>) -> i64 {
    if ctx.def.kind != "Pod" || !ctx.def.group.is_empty() {
        return 0;
    }
    let scheduled = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    if !scheduled || matches!(phase, Some("Succeeded" | "Failed")) {
        return 0;
    }
    let grace = requested.unwrap_or_else(|| {
        pod.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30)
    });
    grace.max(0)
}

/// How many deletes of a collection are in flight at once (they share commits).
const DELETE_COLLECTION_WORKERS: usize = 16;

pub async fn delete_collection(ctx: Ctx, body: Body) -> ApiResult<Response> {
    use futures_util::StreamExt;
    let opts = options(&ctx, body).await?;
    let selectors = Selectors::from(&ctx)?;
    let prefix = ctx.def.collection_prefix(ctx.namespace.as_deref());
    ctx.cache_at(None).await?;
    let (objs, revision) = ctx.api.cache.list(&prefix, |o| selectors.matches(o));
    // Each deleted object is kept encoded, not as a JSON tree: a namespace of tens of
    // thousands of objects must not cost their parsed size at once.
    let results: Vec<ApiResult<Option<Vec<u8>>>> = futures_util::stream::iter(objs)
        .map(|o| {
            let ctx = &ctx;
            let opts = &opts;
            async move {
                let value = o.value();
                let name = object::name(&value).to_owned();
                let item_ctx = Ctx {
                    namespace: object::meta_str(&value, "namespace")
                        .map(str::to_owned)
                        .or(ctx.namespace.clone()),
                    ..ctx.clone()
                };
                match delete_one(&item_ctx, &name, opts).await {
                    Ok((obj, _)) => Ok(Some(field_order::to_vec(&obj))),
                    Err(e) if e.code == 404 => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .buffered(DELETE_COLLECTION_WORKERS)
        .collect()
        .await;
    let mut items: Vec<std::sync::Arc<[u8]>> = Vec::with_capacity(results.len());
    for r in results {
        if let Some(raw) = r? {
            items.push(raw.into());
        }
    }
    // In the client's version, a conversion webhook's in one review.
    let items = ctx.external_raws(items).await?;
    let meta = json!({"resourceVersion": revision.to_string()});
    Ok(json_response(
        StatusCode::OK,
        super::list::list_body(&ctx.def, &meta, &items),
    ))
}
