//! The REST verbs on resources — get, list, watch, create, update, patch, delete,
//! deletecollection and the subresources — with Kubernetes' semantics. One file per
//! verb; this module routes a parsed request to them and holds what they share:
//! decoding and normalizing an object, and the single update path every write that
//! changes an existing object goes through (optimistic concurrency, status and
//! metadata rules, generation, finalization).

mod create;
mod delete;
mod eviction;
mod get;
mod list;
mod patch;
pub mod subresource;
mod update;
pub mod watch;

pub use create::create_object;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Api;
use super::admission::{certificates, defaults, validation};
use super::auth::UserInfo;
use super::conversion;
use super::field_order;
use super::object::{self, meta_mut};
use super::registry::ResourceDef;
use super::request::{Query, ResourcePath};
use super::status::{ApiError, ApiResult};
use super::table;
use crate::store::{Revision, StoreError};

/// How long a consistent read waits for the watch cache to reach the store's revision
/// before reading the store itself (kube-apiserver's `blockTimeout`).
const CONSISTENT_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Dispatches a resource request.
pub async fn handle(
    api: Arc<Api>,
    path: ResourcePath,
    user: Option<UserInfo>,
    req: Request<Body>,
) -> ApiResult<Response> {
    let def = api
        .registry
        .get(&path.group, &path.version, &path.resource)
        .ok_or_else(|| ApiError::path_not_found(req.uri().path()))?;
    if def.namespaced && path.namespace.is_none() && path.name.is_some() {
        return Err(ApiError::path_not_found(req.uri().path()));
    }
    if !def.namespaced && path.namespace.is_some() {
        return Err(ApiError::path_not_found(req.uri().path()));
    }
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let headers = req.headers().clone();
    let ctx = Ctx {
        api,
        def,
        namespace: path.namespace.clone(),
        query,
        headers,
        user,
        warnings: Default::default(),
    };
    check_write_options(&ctx, &method)?;
    if ctx.def.create_only {
        return super::reviews::handle(ctx, &method, path.name.as_deref(), req.into_body()).await;
    }
    if ctx.def.metrics {
        if path.subresource.is_some() || path.watch_prefix {
            return Err(ApiError::path_not_found(req.uri().path()));
        }
        return super::metrics_server::handle(ctx, &method, path.name.as_deref()).await;
    }
    let watch = path.watch_prefix || ctx.query.flag("watch");
    match (&method, path.name.as_deref(), path.subresource.as_deref()) {
        (&Method::GET, None, None) if watch => watch::watch(ctx).await,
        (&Method::GET, Some(name), None) if watch => watch::watch_one(ctx, name).await,
        (&Method::GET, None, None) => list::list(ctx).await,
        (&Method::GET, Some(name), None) => get::get(ctx, name).await,
        (&Method::POST, None, None) => create::create(ctx, req.into_body()).await,
        (&Method::PUT, Some(name), None) => update::put(ctx, name, None, req.into_body()).await,
        (&Method::PATCH, Some(name), None) => patch::patch(ctx, name, None, req.into_body()).await,
        (&Method::DELETE, Some(name), None) => delete::delete(ctx, name, req.into_body()).await,
        (&Method::DELETE, None, None) => delete::delete_collection(ctx, req.into_body()).await,
        (_, Some(name), Some(sub)) => {
            subresource::handle(ctx, method, name, sub, &path.rest, req).await
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {method} {}",
            ctx.def.qualified()
        ))),
    }
}

/// What every verb needs.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub api: Arc<Api>,
    pub def: Arc<ResourceDef>,
    pub namespace: Option<String>,
    pub query: Query,
    pub headers: HeaderMap,
    /// Who asked (after impersonation); `None` for the server's own writes.
    pub user: Option<UserInfo>,
    /// Admission warnings for the response's `Warning` headers (Pod Security's warn mode).
    pub warnings: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Ctx {
    pub fn key(&self, name: &str) -> String {
        self.def.key(self.namespace.as_deref(), name)
    }

    /// A server-side apply (`application/apply-patch+yaml`).
    pub fn is_apply(&self) -> bool {
        super::request::content_type(&self.headers) == "application/apply-patch+yaml"
    }

    /// Adds admission warnings to the response.
    pub fn warn(&self, warnings: Vec<String>) {
        if warnings.is_empty() {
            return;
        }
        // Each text once, as kube-apiserver's warning recorder keeps them.
        let mut kept = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        for w in warnings {
            if !kept.contains(&w) {
                kept.push(w);
            }
        }
    }

    pub fn not_found(&self, name: &str) -> ApiError {
        ApiError::not_found(&self.def.group, &self.def.plural, name)
    }

    pub fn store_error(&self, err: StoreError, name: &str) -> ApiError {
        ApiError::from_store(err, &self.def.group, &self.def.plural, name)
    }

    /// Whether the client asked for a `meta.k8s.io` Table.
    pub fn wants_table(&self) -> bool {
        table::wants_table(&self.headers)
    }

    /// Waits until the watch cache can answer a read at resourceVersion `rv`: `0` (any
    /// state), `N` (at least N), or unset (a consistent read: everything written so far,
    /// through any server). 504 "Too large resource version" when it does not catch up
    /// in time.
    pub async fn cache_at(&self, rv: Option<Revision>) -> ApiResult<()> {
        self.cache_caught_up(rv)
            .await?
            .map_err(|target| self.too_large(target))
    }

    /// [`Ctx::cache_at`] that reports a wait that timed out as `Err(target revision)`,
    /// for a caller that reads the store instead. A consistent read on a store other
    /// servers write too asks the store for its revision first and waits for the cache
    /// to reach it (kube-apiserver's consistent reads from cache, KEP-2340); on the
    /// embedded store this server's own revision is that revision already.
    pub async fn cache_caught_up(
        &self,
        rv: Option<Revision>,
    ) -> ApiResult<std::result::Result<(), Revision>> {
        let store = &self.api.store;
        let (target, wait) = match rv {
            Some(rv) => (rv, None),
            None if store.shared() => match store.consistent_revision().await {
                Ok(now) => (now, Some(CONSISTENT_READ_WAIT)),
                // etcd out of reach: the cache answers with what it last saw (reads
                // keep working while etcd is down; writes fail).
                Err(StoreError::Unavailable(_) | StoreError::Timeout(_)) => {
                    (store.current_revision(), None)
                }
                Err(e) => return Err(self.store_error(e, "")),
            },
            None => (store.current_revision(), None),
        };
        let cache = &self.api.cache;
        let caught_up = match wait {
            Some(wait) => cache.wait_until(target, wait).await,
            None => cache.wait_for(target).await,
        };
        Ok(if caught_up { Ok(()) } else { Err(target) })
    }

    /// The 504 of a read the watch cache could not catch up with in time.
    fn too_large(&self, target: Revision) -> ApiError {
        let mut err = ApiError::timeout(format!(
            "Too large resource version: {target}, current: {}",
            self.api.cache.revision()
        ));
        err.retry_after = Some(1);
        err
    }

    /// A stored object as the client's version serves it: through the CRD's conversion
    /// webhook when it has one.
    pub async fn external(&self, obj: Value) -> ApiResult<Value> {
        conversion::webhook::external(&self.api, &self.def, obj).await
    }

    /// An object in the client's version as it is stored: through the CRD's
    /// conversion webhook when it has one.
    pub async fn internal(&self, obj: Value) -> ApiResult<Value> {
        conversion::webhook::internal(&self.api, &self.def, obj).await
    }

    /// Stored bytes as the client's version serves them (shared when unchanged).
    pub async fn external_raw(&self, raw: Arc<[u8]>) -> ApiResult<Arc<[u8]>> {
        Ok(self
            .external_raws(vec![raw])
            .await?
            .pop()
            .unwrap_or_else(|| Arc::from(&b"{}"[..])))
    }

    /// Stored objects' bytes as the client's version serves them, through one call of
    /// the conversion webhook when the CRD has one.
    pub async fn external_raws(&self, raws: Vec<Arc<[u8]>>) -> ApiResult<Vec<Arc<[u8]>>> {
        if !self.def.converts() {
            return Ok(raws);
        }
        if self.def.conversion_webhook().is_none() {
            return Ok(raws
                .into_iter()
                .map(|raw| match self.def.external_raw(&raw) {
                    std::borrow::Cow::Borrowed(_) => raw,
                    std::borrow::Cow::Owned(converted) => Arc::from(converted),
                })
                .collect());
        }
        let served = self.def.api_version();
        let values: Vec<Value> = raws
            .iter()
            .map(|raw| serde_json::from_slice(raw).unwrap_or(Value::Null))
            .collect();
        // Objects already in the served version are not sent, and keep their bytes.
        let kept: Vec<bool> = values
            .iter()
            .map(|v| v.get("apiVersion").and_then(Value::as_str) == Some(served.as_str()))
            .collect();
        let converted = conversion::webhook::external_all(&self.api, &self.def, values).await?;
        Ok(raws
            .into_iter()
            .zip(converted)
            .zip(kept)
            .map(|((raw, value), kept)| {
                if kept {
                    raw
                } else {
                    Arc::from(field_order::to_vec(&value))
                }
            })
            .collect())
    }

    /// Reads the live object (fresh from the store: writes decide on it).
    /// The watch cache's copy of `name` and its revision, as [`Ctx::current`] reads the
    /// store's: possibly behind it.
    pub fn cached(&self, name: &str) -> Option<(Value, Revision)> {
        let cached = self.api.cache.get(&self.key(name))?;
        let value = serde_json::from_slice(&cached.raw).ok()?;
        Some((value, cached.revision))
    }

    pub async fn current(&self, name: &str) -> ApiResult<Option<(Value, Revision)>> {
        let key = self.key(name);
        let kv = self
            .api
            .store
            .get(&key, None)
            .await
            .map_err(|e| self.store_error(e, name))?;
        Ok(kv.map(|kv| {
            let raw = object::with_revision(&kv.value, kv.mod_revision);
            (
                serde_json::from_slice(&raw).unwrap_or(Value::Null),
                kv.mod_revision,
            )
        }))
    }
}

/// A JSON response.
pub fn json_response(code: StatusCode, body: impl Into<Body>) -> Response {
    (code, [("content-type", "application/json")], body.into()).into_response()
}

pub fn value_response(code: StatusCode, value: &Value) -> Response {
    json_response(code, field_order::to_vec(value))
}

/// A protobuf response body (already enveloped).
pub fn protobuf_response(code: StatusCode, body: Vec<u8>) -> Response {
    (
        code,
        [("content-type", super::protobuf::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// `value` in the client's preferred encoding: protobuf when its `Accept` prefers it
/// and the kind has a message (not custom resources or Tables), JSON otherwise.
pub fn negotiated_response(headers: &HeaderMap, code: StatusCode, value: &Value) -> Response {
    if super::protobuf::accepts(headers) {
        match super::protobuf::encode(value) {
            Some(Ok(body)) => return protobuf_response(code, body),
            Some(Err(e)) => tracing::warn!(error = %e, "protobuf encoding failed; answering JSON"),
            None => {}
        }
    }
    value_response(code, value)
}

/// The `Status` a successful delete of a resource without a returned object gives.
pub fn success_status(def: &ResourceDef, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": def.group, "kind": def.plural, "uid": uid},
    })
}

/// Decodes, type-checks and canonicalizes an incoming object for `def`, then converts
/// it to the storage version (everything after decoding — defaults, validation, the
/// store — works on that).
pub async fn normalize(ctx: &Ctx, obj: Value) -> ApiResult<Value> {
    let decoded = decode_object(ctx, obj)?;
    ctx.internal(decoded).await
}

/// Decodes, type-checks and canonicalizes an incoming object for `def`, in the version
/// it was sent in: apiVersion/kind checked and set, the typed round trip (unknown
/// fields dropped, or rejected with `fieldValidation=Strict`), custom resource schemas
/// applied.
pub fn decode_object(ctx: &Ctx, mut obj: Value) -> ApiResult<Value> {
    let def = &ctx.def;
    if !obj.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    let api_version = def.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = json!(api_version),
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(def.kind),
        Some(k) if k == def.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )));
        }
    }
    if let Some(typed) = &def.typed {
        let strict = ctx.query.strict()?;
        let input = strict.then(|| obj.clone());
        let mut out = typed.decode(obj).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                def.kind, def.version, def.kind
            ))
        })?;
        if let Some(input) = input {
            let mut unknown = Vec::new();
            unknown_fields(&input, &out, "", &mut unknown);
            if !unknown.is_empty() {
                return Err(ApiError::unknown_fields(&unknown));
            }
        }
        // Keep an explicitly empty metadata map stable.
        if out.get("metadata").is_none() {
            out["metadata"] = json!({});
        }
        Ok(out)
    } else if let Some(schema) = &def.crd {
        schema.apply(&mut obj, ctx.query.strict()?)?;
        Ok(obj)
    } else {
        Ok(obj)
    }
}

/// Paths present in `input` but dropped by the typed round trip.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None if !v.is_null() => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// kube-apiserver's validation of a write's options (`ValidateCreateOptions`,
/// `ValidateUpdateOptions`, `ValidatePatchOptions`, `ValidateDeleteOptions`), before
/// anything is read: `dryRun` only `All`, `fieldValidation` one of its values and
/// `fieldManager` printable and at most 128 bytes, else a 422 naming the options kind
/// (`PatchOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: …`).
fn check_write_options(ctx: &Ctx, method: &Method) -> ApiResult<()> {
    let kind = match *method {
        Method::POST => "CreateOptions",
        Method::PUT => "UpdateOptions",
        Method::PATCH => "PatchOptions",
        Method::DELETE => "DeleteOptions",
        _ => return Ok(()),
    };
    let mut causes = Vec::new();
    if let Some(v) = ctx.query.get("dryRun")
        && v != "All"
    {
        causes.push(super::status::Cause {
            reason: "FieldValueNotSupported",
            field: "dryRun".into(),
            message: format!("Unsupported value: []string{{{v:?}}}: supported values: \"All\""),
        });
    }
    if kind != "DeleteOptions"
        && let Some(v) = ctx.query.get("fieldValidation")
        && !matches!(v, "Ignore" | "Warn" | "Strict")
    {
        causes.push(super::status::Cause {
            reason: "FieldValueNotSupported",
            field: "fieldValidation".into(),
            message: format!(
                "Unsupported value: {v:?}: supported values: \"\", \"Ignore\", \"Strict\", \"Warn\""
            ),
        });
    }
    if kind != "DeleteOptions" {
        causes.extend(super::managed_fields::manager_causes(
            ctx.query.get("fieldManager").unwrap_or_default(),
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("meta.k8s.io", kind, "", causes))
    }
}

/// Validation failures as a 422.
pub fn invalid(def: &ResourceDef, obj: &Value, causes: Vec<super::status::Cause>) -> ApiError {
    let group = def.group.clone();
    ApiError::invalid(&group, &def.kind, object::name(obj), causes)
}

/// Which part of the object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: everything but status (when there is a status subresource).
    Main,
    /// `/status`: only status.
    Status,
    /// `namespaces/{name}/finalize`: only spec.finalizers.
    Finalize,
    /// `pods/{name}/binding`: the main resource, where setting spec.nodeName is allowed.
    Bind,
    /// `certificatesigningrequests/{name}/approval`: only status.conditions.
    Approval,
    /// `pods/{name}/ephemeralcontainers`: only spec.ephemeralContainers.
    EphemeralContainers,
    /// `{name}/scale`: the replicas of the main resource, admitted as a Scale.
    Scale,
}

impl Part {
    /// The subresource a write through this part goes to (empty for the resource).
    pub fn subresource(self) -> &'static str {
        match self {
            Part::Main => "",
            Part::Status => "status",
            Part::Finalize => "finalize",
            Part::Bind => "binding",
            Part::Approval => "approval",
            Part::EphemeralContainers => "ephemeralcontainers",
            Part::Scale => "scale",
        }
    }
}

/// Builds the object to store from the live `old` and the client's `new`: server-owned
/// metadata kept, status or spec kept per `part`, defaults, validation, generation.
pub fn merge_update(ctx: &Ctx, old: &Value, mut new: Value, part: Part) -> ApiResult<Value> {
    let def = &ctx.def;
    // A scale write changes the main resource, under its rules.
    let part = if part == Part::Scale {
        Part::Main
    } else {
        part
    };
    match part {
        Part::Main | Part::Bind | Part::Scale => {
            if def.status {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            if part == Part::Bind {
                // As kube-apiserver's binding: node and PodScheduled=True in one write.
                let mut conditions: Vec<Value> = new
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                conditions.retain(|c| c.get("type") != Some(&json!("PodScheduled")));
                conditions.push(json!({"type": "PodScheduled", "status": "True",
                    "lastProbeTime": null, "lastTransitionTime": object::now()}));
                new["status"]["conditions"] = Value::Array(conditions);
            }
        }
        Part::Status => {
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        Part::EphemeralContainers => {
            // As kube-apiserver's ephemeralContainersStrategy: everything but the list is
            // the stored pod's (metadata included).
            let list = new.pointer("/spec/ephemeralContainers").cloned();
            new = old.clone();
            match list {
                Some(l) if !l.is_null() => new["spec"]["ephemeralContainers"] = l,
                _ => {
                    if let Some(s) = new.get_mut("spec").and_then(Value::as_object_mut) {
                        s.remove("ephemeralContainers");
                    }
                }
            }
        }
        Part::Finalize => {
            let finalizers = new.pointer("/spec/finalizers").cloned();
            new = old.clone();
            new["spec"]["finalizers"] = finalizers.unwrap_or_else(|| json!([]));
        }
        Part::Approval => {
            let conditions = new.pointer("/status/conditions").cloned();
            let meta = new.get("metadata").cloned();
            new = old.clone();
            if let Some(m) = meta {
                new["metadata"] = m;
            }
            match conditions {
                Some(c) => new["status"]["conditions"] = c,
                None => {
                    if let Some(s) = new.get_mut("status").and_then(Value::as_object_mut) {
                        s.remove("conditions");
                    }
                }
            }
        }
    }
    if part == Part::Status && def.group.is_empty() && def.kind == "PersistentVolume" {
        super::admission::storage::prepare_volume_status(old, &mut new);
    }
    let csr = def.group == certificates::GROUP && def.kind == "CertificateSigningRequest";
    if csr {
        // The spec never changes after create; /status cannot touch the approval.
        new["spec"] = old.get("spec").cloned().unwrap_or(Value::Null);
        if part == Part::Status {
            let decided = |c: &&Value| {
                matches!(
                    c.get("type").and_then(Value::as_str),
                    Some("Approved" | "Denied")
                )
            };
            let kept: Vec<Value> = old
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(decided)
                .cloned()
                .collect();
            let mut conditions: Vec<Value> = new
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|c| !decided(c))
                .cloned()
                .collect();
            conditions.splice(0..0, kept);
            if new.get("status").is_some_and(Value::is_object) {
                new["status"]["conditions"] = Value::Array(conditions);
            }
        }
        let sub = match part {
            Part::Approval => "approval",
            Part::Status => "status",
            _ => "",
        };
        certificates::admit_update(
            ctx.api.authorizer.as_ref(),
            ctx.user.as_ref(),
            sub,
            old,
            &new,
        )?;
    }
    let old_meta = object::meta(old).cloned().unwrap_or_default();
    {
        let meta = meta_mut(&mut new)
            .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
        for key in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match old_meta.get(key) {
                Some(v) => {
                    meta.insert(key.into(), v.clone());
                }
                None => {
                    meta.remove(key);
                }
            }
        }
        meta.remove("managedFields");
        meta.remove("selfLink");
        // Once deleting, finalizers can only be removed.
        if old_meta.contains_key("deletionTimestamp") {
            let old_f: Vec<Value> = old_meta
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let new_f: Vec<Value> = meta
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if new_f.iter().any(|f| !old_f.contains(f)) {
                return Err(invalid(
                    def,
                    old,
                    vec![super::status::Cause::forbidden(
                        "metadata.finalizers",
                        "Forbidden: no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
    }
    defaults::apply(&def.kind, &mut new);
    let mut causes = validation::validate(&def.kind, &new);
    if part == Part::Main {
        causes.extend(validation::validate_update(&def.kind, old, &new));
        if def.group.is_empty()
            && def.kind == "Node"
            && causes.is_empty()
            && super::admission::pod_cidrs::newly_set(old, &new)
        {
            use super::admission::pod_cidrs;
            causes.extend(pod_cidrs::admit_overlap(
                &ctx.api.cache,
                &def.prefix(),
                &new,
            ));
        }
    }
    if part == Part::EphemeralContainers {
        causes.extend(validation::validate_ephemeral_update(old, &new));
    }
    if csr {
        certificates::validate_update(old, &new, &mut causes);
    }
    super::admission::node_restriction::admit_update(
        ctx.user.as_ref(),
        def,
        part == Part::Status,
        old,
        &new,
    )?;
    if !causes.is_empty() {
        return Err(invalid(def, &new, causes));
    }
    if matches!(part, Part::Main | Part::EphemeralContainers)
        && let Some(ns) = ctx.namespace.as_deref()
    {
        use super::admission::pod_security;
        if def.group.is_empty() && def.kind == "Pod" {
            ctx.warn(pod_security::admit_pod(
                &ctx.api.cache,
                ns,
                Some(old),
                &new,
            )?);
        } else if matches!(def.group.as_str(), "" | "apps" | "batch") {
            ctx.warn(pod_security::warn_template(
                &ctx.api.cache,
                ns,
                &def.kind,
                &new,
            ));
        }
    }
    if part == Part::Main && def.group.is_empty() && def.kind == "PersistentVolumeClaim" {
        super::admission::storage::admit_update(&ctx.api.cache, old, &new)?;
    }
    if def.generation && spec_changed(old, &new) {
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        if let Some(meta) = meta_mut(&mut new) {
            meta.insert("generation".into(), json!(generation + 1));
        }
    }
    Ok(new)
}

/// Whether two JSON objects differ in any top-level field but those in `skip`
/// (compared in place: this runs on every write).
fn differs_except(old: &Value, new: &Value, skip: &[&str]) -> bool {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return old != new;
    };
    let kept = |m: &serde_json::Map<String, Value>| {
        m.keys().filter(|k| !skip.contains(&k.as_str())).count()
    };
    kept(o) != kept(n)
        || o.iter()
            .any(|(k, v)| !skip.contains(&k.as_str()) && n.get(k) != Some(v))
}

/// Anything but metadata and status differs.
fn spec_changed(old: &Value, new: &Value) -> bool {
    differs_except(old, new, &["metadata", "status"])
}

/// The same object (managed fields included, but not their times), ignoring
/// resourceVersion: a write that would change only when a manager last wrote is none,
/// as upstream's `IgnoreManagedFieldsTimestampsTransformer` makes it.
pub fn unchanged(old: &Value, new: &Value) -> bool {
    let empty = Value::Null;
    let (old_meta, new_meta) = (
        old.get("metadata").unwrap_or(&empty),
        new.get("metadata").unwrap_or(&empty),
    );
    !differs_except(old, new, &["metadata"])
        && !differs_except(old_meta, new_meta, &["resourceVersion", "managedFields"])
        && same_but_times(old_meta.get("managedFields"), new_meta.get("managedFields"))
}

/// Two `managedFields` lists alike but for their entries' `time`.
fn same_but_times(old: Option<&Value>, new: Option<&Value>) -> bool {
    match (old.and_then(Value::as_array), new.and_then(Value::as_array)) {
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| !differs_except(x, y, &["time"]))
        }
        _ => old == new,
    }
}

/// A change that leaves a deleting object without finalizers (for a namespace, also
/// without spec.finalizers) deletes it.
pub fn finalized(obj: &Value) -> bool {
    let meta = object::meta(obj);
    let empty = |v: Option<&Value>| v.and_then(Value::as_array).is_none_or(Vec::is_empty);
    meta.is_some_and(|m| m.contains_key("deletionTimestamp"))
        && empty(meta.and_then(|m| m.get("finalizers")))
        && (obj.get("kind").and_then(Value::as_str) != Some("Namespace")
            || empty(obj.pointer("/spec/finalizers")))
}

/// Writes `new` over the object last seen at `revision`, or deletes it if this change
/// finalized it. Returns the stored object (with its new resourceVersion).
pub async fn write_update(
    ctx: &Ctx,
    name: &str,
    new: Value,
    revision: Revision,
) -> ApiResult<Value> {
    let key = ctx.key(name);
    if finalized(&new) {
        let kv = ctx
            .api
            .store
            .delete(key, Some(revision))
            .await
            .map_err(|e| ctx.store_error(e, name))?;
        ctx.api.after_delete(&ctx.def, &new).await;
        let mut out = new;
        object::set_resource_version(&mut out, kv.mod_revision);
        return Ok(out);
    }
    let kv = ctx
        .api
        .store
        .update(key, object::encode(&new), revision)
        .await
        .map_err(|e| ctx.store_error(e, name))?;
    let mut out = new;
    object::set_resource_version(&mut out, kv.mod_revision);
    Ok(out)
}

/// The resourceVersion a client put in an object, if any.
pub fn client_revision(obj: &Value) -> ApiResult<Option<Revision>> {
    match object::meta_str(obj, "resourceVersion") {
        None | Some("") => Ok(None),
        Some(rv) => rv.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("invalid resourceVersion {rv:?}: not a number"))
        }),
    }
}

/// What one attempt of [`update_loop`] came to.
enum Attempt {
    /// Written (or, dry run, would be): the object and whether it changed.
    Done((Value, bool)),
    /// Nothing to write: the object read is what the change gives.
    Unchanged(Value),
    /// Lost a race: try again on the newer object.
    Raced,
    /// The write itself failed (the store out of reach, a timeout): its outcome may be
    /// unknown, so it is reported as it is, never made again.
    Failed(ApiError),
}

/// Runs an update against the live object, retrying on races when the client did not
/// pin a resourceVersion. `change` turns the live object into the desired one.
///
/// Over etcd ([`Store::remote`]) the first attempt starts from the watch cache's copy
/// of the object rather than a read of etcd, as kube-apiserver's `GuaranteedUpdate`
/// starts from the cached object: the write is a compare-and-swap on the copy's
/// revision, so a copy behind the store never overwrites a newer object. An attempt on
/// the copy that is refused — a lost race, a resourceVersion that does not match, a
/// check against the old object — or finds nothing to change is checked against the
/// store: its outcome stands when the copy was current, else the update is made again
/// from the store. A dry run reads the store. The embedded store is read directly: a
/// read there is a lookup in this process, cheaper than a compare-and-swap refused for
/// a copy the watch cache has not caught up on yet (an update right after a write).
///
/// [`Store::remote`]: crate::store::Store::remote
pub async fn update_loop(
    ctx: &Ctx,
    name: &str,
    part: Part,
    mut change: impl FnMut(&Value) -> ApiResult<Value>,
) -> ApiResult<(Value, bool)> {
    let dry_run = ctx.query.dry_run()?;
    let mut from_cache = !dry_run && ctx.api.store.remote();
    for _ in 0..8 {
        let current = if from_cache {
            ctx.cached(name)
        } else {
            ctx.current(name).await?
        };
        let Some((old, revision)) = current else {
            if std::mem::take(&mut from_cache) {
                continue;
            }
            return Err(ctx.not_found(name));
        };
        let attempt = attempt_update(ctx, name, part, &mut change, old, revision, dry_run).await;
        match attempt {
            Ok(Attempt::Done(done)) => return Ok(done),
            Ok(Attempt::Unchanged(old)) if from_cache => {
                // The copy may be behind: unchanged only if the store has it too.
                match ctx.current(name).await? {
                    Some((_, stored)) if stored == revision => return Ok((old, false)),
                    _ => from_cache = false,
                }
            }
            Ok(Attempt::Unchanged(old)) => return Ok((old, false)),
            Ok(Attempt::Raced) => from_cache = false,
            Ok(Attempt::Failed(e)) => return Err(e),
            Err(e) if from_cache => {
                // Refused on the copy: the refusal stands if the copy was current.
                match ctx.current(name).await? {
                    Some((_, stored)) if stored == revision => return Err(e),
                    Some(_) => from_cache = false,
                    None => return Err(ctx.not_found(name)),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(&ctx.def.group, &ctx.def.plural, name))
}

/// One attempt of [`update_loop`] on `old`, read at `revision`.
async fn attempt_update(
    ctx: &Ctx,
    name: &str,
    part: Part,
    change: &mut impl FnMut(&Value) -> ApiResult<Value>,
    old: Value,
    revision: Revision,
    dry_run: bool,
) -> ApiResult<Attempt> {
    // The client's change applies to the object in the version it speaks.
    let converted;
    let view = if ctx.def.converts() {
        converted = ctx.external(old.clone()).await?;
        &converted
    } else {
        &old
    };
    let desired = change(view)?;
    let pinned = client_revision(&desired)?;
    if let Some(rv) = pinned
        && rv != revision
    {
        return Err(ApiError::conflict(&ctx.def.group, &ctx.def.plural, name));
    }
    let desired_name = object::name(&desired);
    if !desired_name.is_empty() && desired_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({desired_name}) does not match the name on the URL ({name})"
        )));
    }
    if ctx.def.namespaced
        && let Some(ns) = object::meta_str(&desired, "namespace").filter(|n| !n.is_empty())
        && Some(ns) != ctx.namespace.as_deref()
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    // An empty uid is the live one's (upstream's BeforeUpdate); another is a change of
    // an immutable field.
    if let Some(uid) = object::meta_str(&desired, "uid").filter(|u| !u.is_empty())
        && Some(uid) != object::meta_str(&old, "uid")
    {
        return Err(invalid(
            &ctx.def,
            &desired,
            vec![super::status::Cause::invalid(
                "metadata.uid",
                format!("Invalid value: \"{uid}\": field is immutable"),
            )],
        ));
    }
    let mut desired = normalize(ctx, desired).await?;
    let client_managed = desired.pointer("/metadata/managedFields").cloned();
    // Mutating admission webhooks: on the decoded object, before the update rules.
    let before = super::admission::webhook::may_mutate(ctx).then(|| desired.clone());
    super::admission::webhook::admit_update(ctx, part, &old, &mut desired).await?;
    let before = before.filter(|b| *b != desired);
    let mut new = merge_update(ctx, &old, desired, part)?;
    match before {
        None => super::managed_fields::on_update(
            ctx,
            &old,
            &mut new,
            client_managed,
            part.subresource(),
        )?,
        Some(before) => {
            // As kube-apiserver records them: before mutating admission, so what a
            // webhook changed is owned by no one.
            let mut view = merge_update(ctx, &old, before, part)?;
            super::managed_fields::on_update(
                ctx,
                &old,
                &mut view,
                client_managed,
                part.subresource(),
            )?;
            let managed = object::meta_mut(&mut view).and_then(|m| m.remove("managedFields"));
            super::managed_fields::set_managed(&mut new, managed);
        }
    }
    super::authz::escalation::check_update(ctx, &old, &new)?;
    // ValidatingAdmissionPolicy, then the validating webhooks.
    super::admission::policy::validate_update(ctx, &old, &new, part)?;
    // Validating admission webhooks: after the built-in validation.
    super::admission::webhook::validate_update(ctx, part, &old, &new).await?;
    // A Service's node ports and cluster IP follow its type and ports.
    let service = if part == Part::Main && ctx.def.group.is_empty() && ctx.def.kind == "Service" {
        use super::admission::service_ranges::AllocError;
        match ctx.api.services.update(&old, &mut new, dry_run).await {
            Ok(change) => Some(change),
            Err(AllocError::Invalid(causes)) => return Err(invalid(&ctx.def, &new, causes)),
            Err(AllocError::Store(e)) => return Err(ctx.store_error(e, name)),
        }
    } else {
        None
    };
    let settle = |written: bool| {
        let service = &service;
        async move {
            if let Some(change) = service {
                if written {
                    ctx.api.services.commit(change).await;
                } else {
                    ctx.api.services.abort(change).await;
                }
            }
        }
    };
    // A value stored by another encryption provider or key than the one that
    // writes now is rewritten even when nothing changed (upstream's "stale" read:
    // how `kubectl replace` re-encrypts after a key rotation).
    if unchanged(&old, &new)
        && !ctx
            .api
            .store
            .stale(&ctx.key(name))
            .await
            .map_err(|e| ctx.store_error(e, name))?
    {
        settle(false).await;
        return Ok(Attempt::Unchanged(old));
    }
    // ResourceQuota, last: what the change adds is charged before the write.
    if part == Part::Main {
        let ns = ctx.namespace.as_deref();
        let quota = super::admission::resource_quota::admit(
            &ctx.api,
            &ctx.def,
            ns,
            Some(&old),
            &new,
            dry_run,
        );
        if let Err(e) = quota.await {
            settle(false).await;
            return Err(e);
        }
    }
    if dry_run {
        settle(false).await;
        let mut out = new;
        object::set_resource_version(&mut out, revision);
        return Ok(Attempt::Done((out, true)));
    }
    let result = write_update(ctx, name, new, revision).await;
    settle(result.is_ok()).await;
    match result {
        Err(e) if e.code == 409 && pinned.is_none() => Ok(Attempt::Raced),
        // A refused compare-and-swap (409: changed; 404: deleted) wrote nothing.
        Err(e) if matches!(e.code, 404 | 409) => Err(e),
        Err(e) => Ok(Attempt::Failed(e)),
        Ok(v) => Ok(Attempt::Done((v, true))),
    }
}

/// [`update_loop`] for the server's own writes (bootstrap objects, controllers inside
/// the apiserver): `change` edits the live object, and the edit is made again on the
/// newer object after a race — with another server on the same store, say — rather
/// than failing with 409 as a client's pinned resourceVersion would.
pub async fn update_live(
    ctx: &Ctx,
    name: &str,
    part: Part,
    mut change: impl FnMut(&Value) -> ApiResult<Value>,
) -> ApiResult<(Value, bool)> {
    update_loop(ctx, name, part, |live| {
        let mut next = change(live)?;
        if let Some(meta) = object::meta_mut(&mut next) {
            meta.remove("resourceVersion");
        }
        Ok(next)
    })
    .await
}

/// Serializes a stored object for the client, in its version (as a Table if asked).
pub async fn object_response(ctx: &Ctx, code: StatusCode, obj: &Value) -> ApiResult<Response> {
    let converted;
    let obj = if ctx.def.converts() {
        converted = ctx.external(obj.clone()).await?;
        &converted
    } else {
        obj
    };
    let mut resp = if ctx.wants_table() {
        let t = table::table(&ctx.def, std::slice::from_ref(obj), None, &ctx.query);
        value_response(code, &t)
    } else {
        negotiated_response(&ctx.headers, code, obj)
    };
    // `Warning: 299 - "<text>"`, as kube-apiserver sends admission warnings (kubectl
    // prints them as `Warning: <text>`).
    for w in ctx
        .warnings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        // Quotes and backslashes escaped (upstream's `NewWarningHeader`); line breaks
        // sent as spaces, as Go's server writes header values; UTF-8 as it is.
        let text = w
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace(['\n', '\r'], " ");
        if let Ok(v) = axum::http::HeaderValue::from_bytes(format!("299 - \"{text}\"").as_bytes()) {
            resp.headers_mut().append(axum::http::header::WARNING, v);
        }
    }
    Ok(resp)
}
