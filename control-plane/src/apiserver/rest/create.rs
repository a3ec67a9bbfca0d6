//! POST to a collection: create. Name from `metadata.name` or `generateName` + a random
//! suffix; namespace lifecycle (no objects in a missing or terminating namespace);
//! server-set uid, creationTimestamp, generation; defaults, validation, allocations;
//! `dryRun=All` runs everything but the write.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Ctx, decode_object, invalid, object_response};
use crate::apiserver::admission::{certificates, defaults, node_restriction, validation};
use crate::apiserver::object::{self, meta_mut};
use crate::apiserver::request::{content_type, decode, read_body};
use crate::apiserver::status::{ApiError, ApiResult};

pub async fn create(ctx: Ctx, body: Body) -> ApiResult<Response> {
    let bytes = read_body(body, ctx.api.max_body).await?;
    let obj = decode(&bytes, &content_type(&ctx.headers))?;
    let (stored, code) = create_object(&ctx, obj).await?;
    object_response(&ctx, code, &stored).await
}

/// Creates `obj` (already decoded) in the context's collection.
pub async fn create_object(ctx: &Ctx, obj: Value) -> ApiResult<(Value, StatusCode)> {
    let def = &ctx.def;
    // In the version sent until the server's metadata is set: a conversion webhook
    // sees the object's name, namespace and uid, as upstream converts it when it is
    // encoded for the store.
    let mut obj = decode_object(ctx, obj)?;
    let dry_run = ctx.query.dry_run()?;
    let client_managed = {
        let meta = meta_mut(&mut obj)
            .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
        if def.namespaced {
            let path_ns = ctx.namespace.clone().unwrap_or_default();
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), json!(path_ns));
                }
                Some(ns) if ns == path_ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        } else {
            meta.remove("namespace");
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty()
            && let Some(prefix) = meta.get("generateName").and_then(Value::as_str)
            && !prefix.is_empty()
        {
            let generated = format!("{prefix}{}", object::random_suffix());
            meta.insert("name".into(), json!(generated));
        }
        meta.insert("uid".into(), json!(object::new_uid()));
        meta.insert("creationTimestamp".into(), json!(object::now()));
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        let client_managed = meta.remove("managedFields");
        meta.remove("selfLink");
        if def.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        client_managed
    };
    let mut obj = ctx.internal(obj).await?;
    let name = object::name(&obj).to_owned();
    if def.namespaced {
        ctx.api
            .check_namespace(ctx.namespace.as_deref().unwrap_or_default(), &def.kind)
            .await?;
    }
    // The API's defaults as kube-apiserver applies them on decode; managed fields are
    // of the object as sent with those defaults, before admission adds anything.
    defaults::apply_decoded(&def.kind, &mut obj);
    let managed = crate::apiserver::managed_fields::of_create(ctx, &obj, client_managed)?;
    node_restriction::admit_create(ctx.user.as_ref(), def, &obj)?;
    if def.group.is_empty() && def.kind == "Pod" {
        crate::apiserver::admission::priority::admit(&ctx.api.cache, &mut obj)?;
        let ns = ctx.namespace.as_deref().unwrap_or_default();
        crate::apiserver::admission::serviceaccount::admit(&ctx.api.cache, ns, &mut obj).await?;
    }
    if def.group == certificates::GROUP && def.kind == "CertificateSigningRequest" {
        certificates::prepare_create(&mut obj, ctx.user.as_ref());
        certificates::admit_create(&obj)?;
    }
    if def.group.is_empty() {
        crate::apiserver::admission::storage::admit_create(&ctx.api.cache, &def.kind, &mut obj);
    }
    crate::apiserver::authz::escalation::check_create(ctx, &obj)?;
    // Again, with the pod admission defaults, for what the built-in mutating plugins
    // added (a token volume's fields).
    defaults::apply(&def.kind, &mut obj);
    crate::apiserver::admission::resource_quota::prepare_create(def, &mut obj);
    // LimitRanger: after the API defaults (a container's requests default to its
    // limits first), as kube-apiserver runs it.
    if def.group.is_empty()
        && let Some(ns) = ctx.namespace.as_deref()
    {
        use crate::apiserver::admission::limit_ranger;
        match def.kind.as_str() {
            "Pod" => limit_ranger::admit_pod(&ctx.api.cache, ns, &mut obj)?,
            "PersistentVolumeClaim" => limit_ranger::admit_claim(&ctx.api.cache, ns, &obj)?,
            _ => {}
        }
    }
    // Mutating admission webhooks: after the built-in mutating plugins.
    crate::apiserver::admission::webhook::admit_create(ctx, &mut obj).await?;
    let mut causes = validation::validate(&def.kind, &obj);
    causes.extend(validation::validate_create(&def.kind, &obj));
    if def.group.is_empty() && def.kind == "Node" && causes.is_empty() {
        use crate::apiserver::admission::pod_cidrs;
        causes.extend(pod_cidrs::admit_overlap(
            &ctx.api.cache,
            &def.prefix(),
            &obj,
        ));
    }
    if !causes.is_empty() {
        return Err(invalid(def, &obj, causes));
    }
    // Pod Security: enforce and warn on pods, warn on workloads' pod templates.
    if let Some(ns) = ctx.namespace.as_deref() {
        use crate::apiserver::admission::pod_security;
        if def.group.is_empty() && def.kind == "Pod" {
            ctx.warn(pod_security::admit_pod(&ctx.api.cache, ns, None, &obj)?);
        } else if matches!(def.group.as_str(), "" | "apps" | "batch") {
            ctx.warn(pod_security::warn_template(
                &ctx.api.cache,
                ns,
                &def.kind,
                &obj,
            ));
        }
    }
    // ValidatingAdmissionPolicy, then the validating webhooks, as kube-apiserver orders them.
    crate::apiserver::admission::policy::validate_create(ctx, &obj)?;
    // Validating admission webhooks: after the built-in validation.
    crate::apiserver::admission::webhook::validate_create(ctx, &obj).await?;
    let service = def.group.is_empty() && def.kind == "Service";
    if service {
        use crate::apiserver::admission::service_ranges::AllocError;
        match ctx.api.services.allocate(&mut obj, dry_run).await {
            Ok(()) => {}
            Err(AllocError::Invalid(causes)) => return Err(invalid(def, &obj, causes)),
            Err(AllocError::Store(e)) => return Err(ctx.store_error(e, &name)),
        }
    }
    crate::apiserver::managed_fields::set_managed(&mut obj, managed);
    // ResourceQuota: the last admission, as in kube-apiserver; it charges the quotas
    // (unless this is a dry run) just before the write.
    use crate::apiserver::admission::resource_quota;
    let ns = ctx.namespace.as_deref();
    if let Err(e) = resource_quota::admit(&ctx.api, def, ns, None, &obj, dry_run).await {
        if service && !dry_run {
            ctx.api.services.release(&obj).await;
        }
        return Err(e);
    }
    if dry_run {
        return Ok((obj, StatusCode::CREATED));
    }
    let lease = if def.kind == "Event" {
        Some(
            ctx.api
                .event_lease()
                .await
                .map_err(|e| ctx.store_error(e, &name))?,
        )
    } else {
        None
    };
    let key = ctx.key(&name);
    match ctx.api.store.create(key, object::encode(&obj), lease).await {
        Ok(kv) => {
            object::set_resource_version(&mut obj, kv.mod_revision);
            Ok((obj, StatusCode::CREATED))
        }
        Err(err) => {
            if service {
                ctx.api.services.release(&obj).await;
            }
            Err(ctx.store_error(err, &name))
        }
    }
}
