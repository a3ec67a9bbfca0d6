//! Dynamic admission control (admissionregistration.k8s.io/v1), as kube-apiserver's
//! `MutatingAdmissionWebhook` and `ValidatingAdmissionWebhook` plugins: the webhooks
//! of the stored `MutatingWebhookConfiguration`s and `ValidatingWebhookConfiguration`s
//! (read from the watch cache, [`config`]; their defaults and validation in
//! [`validation`]) are matched against each write ([`rules`],
//! [`conditions`]) and sent an `AdmissionReview` over HTTPS ([`review`], [`client`]).
//!
//! Mutating webhooks run one after the other after the built-in mutating plugins
//! (defaults, LimitRanger, ServiceAccount…), each seeing the previous one's output,
//! their JSON patches applied and the result defaulted again; a webhook with
//! `reinvocationPolicy: IfNeeded` runs once more if a later one changed the object.
//! Validating webhooks run after the built-in validation, all at once. A refusal is
//! the webhook's Status (`admission webhook "<name>" denied the request: …`); a webhook
//! that cannot be called, times out or answers nonsense fails the request with 500
//! under `failurePolicy: Fail` and is skipped under `Ignore`. Warnings reach the client
//! as `Warning` headers, audit annotations the audit log, and every call's outcome
//! kube-apiserver's `apiserver_admission_webhook_*` metrics ([`observe`]).
//!
//! Entry points, one per verb: [`admit_create`] and [`validate_create`],
//! [`admit_update`] and [`validate_update`], [`admit_delete`], [`admit_connect`].

pub mod client;
pub mod conditions;
pub mod config;
mod mutating;
pub mod review;
pub mod rules;
mod validating;
pub mod validation;

use std::sync::Arc;

use serde_json::{Value, json};

use self::config::Hook;
use self::review::{Gvr, RequestInfo};
use self::rules::{Operation, Target};
use crate::apiserver::object;
use crate::apiserver::registry::{ResourceDef, compare_versions};
use crate::apiserver::rest::{Ctx, Part};
use crate::apiserver::status::{ApiError, ApiResult};

/// One admission request as the webhooks see it (objects in the storage version).
#[derive(Debug)]
pub struct Attributes {
    pub operation: Operation,
    pub subresource: &'static str,
    pub name: String,
    /// The request's namespace (a Namespace's own name for its updates and deletes).
    pub namespace: String,
    pub object: Option<Value>,
    pub old: Option<Value>,
    /// `CreateOptions`, `UpdateOptions`, `PatchOptions` or `DeleteOptions` (null for
    /// CONNECT).
    pub options: Value,
    pub dry_run: bool,
    /// The kind of `object` when it is not the resource's (a CONNECT's options,
    /// `PodExecOptions`…; a `/scale` write's `autoscaling/v1` Scale).
    pub kind: Option<ObjectKind>,
}

/// A kind an admission request's object has when it is not the resource's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
}

/// What a `/scale` write is admitted as (upstream's `autoscaling/v1` Scale).
pub const SCALE: ObjectKind = ObjectKind {
    group: "autoscaling",
    version: "v1",
    kind: "Scale",
};

/// A webhook to call, and the resource version it is called in.
#[derive(Debug)]
struct Invocation {
    def: Arc<ResourceDef>,
}

impl Invocation {
    fn gvr(&self, attrs: &Attributes) -> Gvr {
        gvr(&self.def, attrs)
    }

    /// A stored object in the version the webhook is called in (an object of another
    /// kind than the resource's as it is).
    async fn external(
        &self,
        ctx: &Ctx,
        attrs: &Attributes,
        obj: Option<&Value>,
    ) -> ApiResult<Option<Value>> {
        match obj {
            Some(o) if attrs.kind.is_some() => Ok(Some(o.clone())),
            Some(o) => {
                crate::apiserver::conversion::webhook::external(&ctx.api, &self.def, o.clone())
                    .await
                    .map(Some)
            }
            None => Ok(None),
        }
    }
}

fn gvr(def: &ResourceDef, attrs: &Attributes) -> Gvr {
    Gvr {
        group: def.group.clone(),
        version: def.version.clone(),
        resource: def.plural.clone(),
        kind: attrs
            .kind
            .map_or_else(|| def.kind.clone(), |k| k.kind.to_owned()),
        kind_group_version: attrs
            .kind
            .map(|k| (k.group.to_owned(), k.version.to_owned())),
    }
}

/// Why a call did not give an answer to act on.
#[derive(Debug)]
enum Failure {
    /// Upstream's `ErrCallingWebhook`: the failure policy decides. `code`: the HTTP
    /// status the webhook answered with, else the one upstream gives the failure.
    Calling { why: String, code: u16 },
    /// The webhook refused (upstream's `ErrWebhookRejection`).
    Rejected(ApiError),
    /// Anything else: the request fails.
    Other(ApiError),
}

impl Failure {
    fn calling(why: String, code: u16) -> Self {
        Self::Calling { why, code }
    }
}

/// The status upstream's dispatchers give a call that got no HTTP answer (a
/// connection error, a timeout, an undecodable body): 503 for a mutating webhook, 400
/// for a validating one.
fn unanswered(mutating: bool) -> u16 {
    if mutating { 503 } else { 400 }
}

/// Records one call of `hook` in kube-apiserver's webhook metrics: its latency and
/// count by whether it rejected the request (a refusal, an error, or a failure under
/// `failurePolicy: Fail`) and the HTTP code, the rejections by cause, and the calls
/// failing open. `kind` is upstream's `type` label: `admit` or `validating`.
fn observe<T>(
    ctx: &Ctx,
    hook: &Hook,
    attrs: &Attributes,
    kind: &'static str,
    started: std::time::Instant,
    result: &Result<T, Failure>,
) {
    use crate::apiserver::metrics::WebhookCall;
    let (rejected, code, rejection) = match result {
        Ok(_) => (false, 200, None),
        Err(Failure::Calling { code, .. }) if hook.fail_open => (false, *code, None),
        Err(Failure::Calling { code, .. }) => (true, *code, Some(("calling_webhook_error", *code))),
        Err(Failure::Rejected(e)) => (true, e.code, Some(("no_error", e.code))),
        Err(Failure::Other(_)) => (true, 0, Some(("apiserver_internal_error", 0))),
    };
    let call = WebhookCall {
        name: &hook.name,
        kind,
        operation: attrs.operation.as_str(),
    };
    let metrics = &ctx.api.metrics;
    metrics.webhook_call(&call, rejected, code, started.elapsed());
    if let Some((error_type, code)) = rejection {
        metrics.webhook_rejection(&call, error_type, code);
    }
    if matches!(result, Err(Failure::Calling { .. })) && hook.fail_open {
        metrics.webhook_fail_open(&call);
    }
}

fn is_namespace(ctx: &Ctx) -> bool {
    ctx.def.group.is_empty() && ctx.def.kind == "Namespace"
}

/// Whether webhooks can apply to requests on this resource at all.
fn applies(ctx: &Ctx) -> bool {
    ctx.def.typed.is_some() || ctx.def.crd.is_some()
}

fn request_namespace(ctx: &Ctx, operation: Operation, name: &str) -> String {
    if is_namespace(ctx) {
        // Upstream's request info names the namespace of `/namespaces/<name>`.
        return if operation == Operation::Create {
            String::new()
        } else {
            name.to_owned()
        };
    }
    if ctx.def.namespaced {
        ctx.namespace.clone().unwrap_or_default()
    } else {
        String::new()
    }
}

fn write_options(ctx: &Ctx, kind: &str, dry_run: bool) -> Value {
    let mut o = json!({"kind": kind, "apiVersion": "meta.k8s.io/v1"});
    if dry_run {
        o["dryRun"] = json!(["All"]);
    }
    for key in ["fieldManager", "fieldValidation"] {
        if let Some(v) = ctx.query.get(key) {
            o[key] = json!(v);
        }
    }
    if kind == "PatchOptions" && ctx.query.flag("force") {
        o["force"] = json!(true);
    }
    o
}

/// The `DeleteOptions` a delete's webhooks are sent.
pub fn delete_options(grace: Option<i64>, propagation: Option<&str>, dry_run: bool) -> Value {
    let mut o = json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"});
    if let Some(g) = grace {
        o["gracePeriodSeconds"] = json!(g);
    }
    if let Some(p) = propagation {
        o["propagationPolicy"] = json!(p);
    }
    if dry_run {
        o["dryRun"] = json!(["All"]);
    }
    o
}

/// The subresource an update of `part` writes; `None` for pod bindings, which upstream
/// admits as a `Binding` create this update path does not have.
fn subresource(part: Part) -> Option<&'static str> {
    match part {
        Part::Main => Some(""),
        Part::Status => Some("status"),
        Part::Finalize => Some("finalize"),
        Part::Approval => Some("approval"),
        Part::EphemeralContainers => Some("ephemeralcontainers"),
        Part::Scale => Some("scale"),
        Part::Bind => None,
    }
}

/// Other served versions of the same resource, most preferred first (what
/// `matchPolicy: Equivalent` also matches: HorizontalPodAutoscalers in autoscaling/v1
/// and v2).
fn equivalents(ctx: &Ctx) -> Vec<Arc<ResourceDef>> {
    let mut out: Vec<Arc<ResourceDef>> = ctx
        .api
        .registry
        .all()
        .into_iter()
        .filter(|d| {
            d.group == ctx.def.group
                && d.plural == ctx.def.plural
                && d.version != ctx.def.version
                && !d.metrics
                && !d.create_only
        })
        .collect();
    out.sort_by(|a, b| compare_versions(&b.version, &a.version));
    out
}

/// The labels the namespace selector is matched against (`GetNamespaceLabels`).
async fn namespace_labels(
    ctx: &Ctx,
    attrs: &Attributes,
) -> ApiResult<std::collections::BTreeMap<String, String>> {
    if is_namespace(ctx)
        && attrs.subresource.is_empty()
        && matches!(attrs.operation, Operation::Create | Operation::Update)
    {
        return Ok(attrs
            .object
            .as_ref()
            .map(rules::labels_of)
            .unwrap_or_default());
    }
    let key = format!("/registry/core/namespaces/{}", attrs.namespace);
    if let Some(ns) = ctx.api.cache.get(&key) {
        return Ok(rules::labels_of(&ns.value()));
    }
    // The cache may lag: ask the store before calling the namespace missing.
    match ctx.api.store.get(&key, None).await {
        Ok(Some(kv)) => Ok(rules::labels_of(
            &serde_json::from_slice(&kv.value).unwrap_or(Value::Null),
        )),
        Ok(None) => Err(ApiError::not_found("", "namespaces", &attrs.namespace)),
        Err(e) => Err(ApiError::from_store(e, "", "namespaces", &attrs.namespace)),
    }
}

fn target<'a>(attrs: &'a Attributes, def: &'a ResourceDef) -> Target<'a> {
    Target {
        operation: attrs.operation,
        group: &def.group,
        version: &def.version,
        resource: &def.plural,
        subresource: attrs.subresource,
        namespace: &attrs.namespace,
    }
}

/// `ShouldCallHook`: selectors, rules (then equivalent resources), match conditions.
async fn should_call(
    ctx: &Ctx,
    hook: &Hook,
    attrs: &Attributes,
    info: &RequestInfo<'_>,
    equivalents: &[Arc<ResourceDef>],
) -> ApiResult<Option<Invocation>> {
    let cluster_scoped = attrs.namespace.is_empty() && !is_namespace(ctx);
    let ns_match = if cluster_scoped || rules::selector_is_empty(hook.namespace_selector.as_ref()) {
        Ok(true)
    } else {
        match (namespace_labels(ctx, attrs).await, &hook.namespace_selector) {
            (Ok(labels), Some(sel)) => Ok(rules::selector_matches(sel, &labels)),
            (Ok(_), None) => Ok(true),
            (Err(e), _) => Err(e),
        }
    };
    if matches!(ns_match, Ok(false)) {
        return Ok(None);
    }
    if !rules::object_selector_matches(
        hook.object_selector.as_ref(),
        attrs.object.as_ref(),
        attrs.old.as_ref(),
    ) {
        return Ok(None);
    }
    let target = |def| target(attrs, def);
    let mut invocation = hook
        .rules
        .iter()
        .any(|r| rules::rule_matches(r, &target(&ctx.def)))
        .then(|| Invocation {
            def: ctx.def.clone(),
        });
    if invocation.is_none() && !hook.exact {
        // Earlier rules first, then the preferred equivalent.
        invocation = hook.rules.iter().find_map(|r| {
            equivalents
                .iter()
                .find(|d| rules::rule_matches(r, &target(d)))
                .map(|d| Invocation { def: d.clone() })
        });
    }
    let Some(invocation) = invocation else {
        return Ok(None);
    };
    ns_match?;
    if !hook.match_conditions.is_empty() {
        let object = invocation
            .external(ctx, attrs, attrs.object.as_ref())
            .await?;
        let old = invocation.external(ctx, attrs, attrs.old.as_ref()).await?;
        // `request` without its objects: they are `object` and `oldObject`.
        let request = review::request("v1", "", info, &invocation.gvr(attrs), None, None);
        let outcome = conditions::evaluate(
            &ctx.api,
            ctx.user.as_ref(),
            &hook.match_conditions,
            object.as_ref(),
            old.as_ref(),
            &request["request"],
        );
        match outcome {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(_) if hook.fail_open => return Ok(None),
            Err(e) => {
                tracing::warn!(webhook = %hook.name, error = %e, "failed evaluating match conditions, failing closed");
                let name = if attrs.name.is_empty() {
                    "Unknown"
                } else {
                    &attrs.name
                };
                return Err(ApiError::forbidden(format!(
                    "{} \"{name}\" is forbidden: {e}",
                    ctx.def.qualified()
                ))
                .with_details(&ctx.def.group, &ctx.def.plural, name));
            }
        }
    }
    Ok(Some(invocation))
}

/// One call: the request built in the invocation's version, sent, verified; warnings
/// and audit annotations recorded. A refusal is [`Failure::Rejected`].
async fn call(
    ctx: &Ctx,
    hook: &Hook,
    invocation: &Invocation,
    info: &RequestInfo<'_>,
    attrs: &Attributes,
    mutating: bool,
) -> Result<(review::Response, Option<Value>), Failure> {
    if attrs.dry_run && !matches!(hook.side_effects.as_str(), "None" | "NoneOnDryRun") {
        return Err(Failure::Other(review::dry_run_unsupported(&hook.name)));
    }
    let version = review::review_version(&hook.review_versions)
        .map_err(|e| Failure::calling(format!("could not create admission objects: {e}"), 400))?;
    let uid = object::new_uid();
    let object = invocation
        .external(ctx, attrs, attrs.object.as_ref())
        .await
        .map_err(Failure::Other)?;
    let old = invocation
        .external(ctx, attrs, attrs.old.as_ref())
        .await
        .map_err(Failure::Other)?;
    let body = review::request(
        version,
        &uid,
        info,
        &invocation.gvr(attrs),
        object.as_ref(),
        old.as_ref(),
    );
    let dest = client::destination(&ctx.api.cache, &hook.client).map_err(|e| {
        // Upstream: no REST client for the webhook.
        let code = if mutating { 500 } else { 400 };
        Failure::calling(format!("failed to call webhook: {e}"), code)
    })?;
    let answer = client::post(
        &hook.client,
        &dest,
        crate::apiserver::field_order::to_vec(&body),
        hook.timeout,
    )
    .await
    .map_err(|e| {
        let code = if e.code == 0 {
            unanswered(mutating)
        } else {
            e.code
        };
        Failure::calling(e.message, code)
    })?;
    let resp = review::verify(version, &uid, mutating, &answer)
        .map_err(|e| Failure::calling(format!("received invalid webhook response: {e}"), 503))?;
    // Annotations and warnings count for a refusal too.
    for (k, v) in &resp.audit_annotations {
        crate::apiserver::audit::annotate(&format!("{}/{k}", hook.name), v.clone());
    }
    ctx.warn(resp.warnings.clone());
    if !resp.allowed {
        return Err(Failure::Rejected(review::rejection(
            &hook.name,
            resp.status.as_ref(),
        )));
    }
    Ok((resp, object))
}

/// What the request's own resource is, for `requestKind`/`requestResource`.
fn requested(ctx: &Ctx, attrs: &Attributes) -> Gvr {
    gvr(&ctx.def, attrs)
}

fn info<'a>(ctx: &'a Ctx, attrs: &'a Attributes, requested: &'a Gvr) -> RequestInfo<'a> {
    RequestInfo {
        operation: attrs.operation,
        name: &attrs.name,
        namespace: &attrs.namespace,
        subresource: attrs.subresource,
        requested,
        user: ctx.user.as_ref(),
        dry_run: attrs.dry_run,
        options: &attrs.options,
    }
}

/// Keeps what the server decided on a new object (its identity) whatever the mutating
/// webhooks did to it.
fn keep_identity(before: &Value, after: &mut Value) {
    let Some(meta) = object::meta_mut(after) else {
        return;
    };
    let old = object::meta(before);
    for key in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "generation",
    ] {
        match old.and_then(|m| m.get(key)) {
            Some(v) => {
                meta.insert(key.into(), v.clone());
            }
            None => {
                meta.remove(key);
            }
        }
    }
}

/// Mutating webhooks on a create (after the built-in mutating plugins).
/// Whether a mutating webhook is configured that may see this request.
pub fn may_mutate(ctx: &Ctx) -> bool {
    applies(ctx)
        && !rules::is_exempt(&ctx.def.group, &ctx.def.plural)
        && !config::mutating(&ctx.api.cache).is_empty()
}

pub async fn admit_create(ctx: &Ctx, obj: &mut Value) -> ApiResult<()> {
    if !applies(ctx) || rules::is_exempt(&ctx.def.group, &ctx.def.plural) {
        return Ok(());
    }
    let hooks = config::mutating(&ctx.api.cache);
    if hooks.is_empty() {
        return Ok(());
    }
    let dry_run = ctx.query.dry_run()?;
    let name = object::name(obj).to_owned();
    let mut attrs = Attributes {
        operation: Operation::Create,
        subresource: "",
        namespace: request_namespace(ctx, Operation::Create, &name),
        name,
        object: Some(obj.clone()),
        old: None,
        options: write_options(ctx, "CreateOptions", dry_run),
        dry_run,
        kind: None,
    };
    if mutating::run(ctx, &hooks, &mut attrs).await?
        && let Some(mut new) = attrs.object
    {
        keep_identity(obj, &mut new);
        super::defaults::apply(&ctx.def.kind, &mut new);
        *obj = new;
    }
    Ok(())
}

/// Validating webhooks on a create (after the built-in validation).
pub async fn validate_create(ctx: &Ctx, obj: &Value) -> ApiResult<()> {
    if !applies(ctx) || rules::is_exempt(&ctx.def.group, &ctx.def.plural) {
        return Ok(());
    }
    let hooks = config::validating(&ctx.api.cache);
    if hooks.is_empty() {
        return Ok(());
    }
    let dry_run = ctx.query.dry_run()?;
    let name = object::name(obj).to_owned();
    let attrs = Attributes {
        operation: Operation::Create,
        subresource: "",
        namespace: request_namespace(ctx, Operation::Create, &name),
        name,
        object: Some(obj.clone()),
        old: None,
        options: write_options(ctx, "CreateOptions", dry_run),
        dry_run,
        kind: None,
    };
    validating::run(ctx, &hooks, &attrs).await
}

fn update_options(ctx: &Ctx, dry_run: bool) -> Value {
    let media = crate::apiserver::request::content_type(&ctx.headers);
    let kind = if media.contains("patch") {
        "PatchOptions"
    } else {
        "UpdateOptions"
    };
    write_options(ctx, kind, dry_run)
}

/// Mutating webhooks on an update of `part`: `new` is the decoded object the client
/// asked for, before the server's update rules (as upstream's update transformers).
pub async fn admit_update(ctx: &Ctx, part: Part, old: &Value, new: &mut Value) -> ApiResult<()> {
    let Some(subresource) = subresource(part) else {
        return Ok(());
    };
    if !applies(ctx) || rules::is_exempt(&ctx.def.group, &ctx.def.plural) {
        return Ok(());
    }
    let hooks = config::mutating(&ctx.api.cache);
    if hooks.is_empty() {
        return Ok(());
    }
    let dry_run = ctx.query.dry_run()?;
    let name = object::name(old).to_owned();
    let (object, old_object, kind) = objects(ctx, part, old, new);
    let mut attrs = Attributes {
        operation: Operation::Update,
        subresource,
        namespace: request_namespace(ctx, Operation::Update, &name),
        name,
        object: Some(object),
        old: Some(old_object),
        options: update_options(ctx, dry_run),
        dry_run,
        kind,
    };
    if mutating::run(ctx, &hooks, &mut attrs).await?
        && let Some(changed) = attrs.object
    {
        match (part, &ctx.def.scale) {
            // What a webhook changed of a Scale is its replicas.
            (Part::Scale, Some(paths)) => {
                let replicas = changed
                    .pointer("/spec/replicas")
                    .cloned()
                    .unwrap_or(Value::Null);
                crate::apiserver::rest::subresource::set_replicas(paths, new, replicas);
            }
            _ => *new = changed,
        }
    }
    Ok(())
}

/// The objects (new, old) and their kind that an update through `part` is admitted
/// with: the resource's own, or for `/scale` their Scale views, as upstream admits a
/// scale update (`autoscaling/v1` Scale, subresource `scale`).
fn objects(ctx: &Ctx, part: Part, old: &Value, new: &Value) -> (Value, Value, Option<ObjectKind>) {
    match (part, &ctx.def.scale) {
        (Part::Scale, Some(paths)) => {
            use crate::apiserver::rest::subresource::scale_of;
            (scale_of(paths, new), scale_of(paths, old), Some(SCALE))
        }
        _ => (new.clone(), old.clone(), None),
    }
}

/// Validating webhooks on an update of `part`, on the object about to be stored.
pub async fn validate_update(ctx: &Ctx, part: Part, old: &Value, new: &Value) -> ApiResult<()> {
    let Some(subresource) = subresource(part) else {
        return Ok(());
    };
    if !applies(ctx) || rules::is_exempt(&ctx.def.group, &ctx.def.plural) {
        return Ok(());
    }
    let hooks = config::validating(&ctx.api.cache);
    if hooks.is_empty() {
        return Ok(());
    }
    let dry_run = ctx.query.dry_run()?;
    let name = object::name(old).to_owned();
    let (object, old_object, kind) = objects(ctx, part, old, new);
    let attrs = Attributes {
        operation: Operation::Update,
        subresource,
        namespace: request_namespace(ctx, Operation::Update, &name),
        name,
        object: Some(object),
        old: Some(old_object),
        options: update_options(ctx, dry_run),
        dry_run,
        kind,
    };
    validating::run(ctx, &hooks, &attrs).await
}

/// The webhooks of a delete of `old`: mutating ones first, without objects (as
/// upstream's delete handler admits it), then validating ones with the object being
/// deleted as `oldObject`. `options` from [`delete_options`].
pub async fn admit_delete(ctx: &Ctx, old: &Value, options: Value) -> ApiResult<()> {
    if !applies(ctx) || rules::is_exempt(&ctx.def.group, &ctx.def.plural) {
        return Ok(());
    }
    let mutating_hooks = config::mutating(&ctx.api.cache);
    let validating_hooks = config::validating(&ctx.api.cache);
    if mutating_hooks.is_empty() && validating_hooks.is_empty() {
        return Ok(());
    }
    let dry_run = options
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"));
    let name = object::name(old).to_owned();
    let mut attrs = Attributes {
        operation: Operation::Delete,
        subresource: "",
        namespace: request_namespace(ctx, Operation::Delete, &name),
        name,
        object: None,
        old: None,
        options,
        dry_run,
        kind: None,
    };
    if !mutating_hooks.is_empty() {
        mutating::run(ctx, &mutating_hooks, &mut attrs).await?;
    }
    if !validating_hooks.is_empty() {
        attrs.old = Some(old.clone());
        validating::run(ctx, &validating_hooks, &attrs).await?;
    }
    Ok(())
}

/// The options object of a CONNECT, from its query (and, for proxies, its path).
fn connect_options(kind: &str, query: Option<&str>, rest: &[String]) -> Value {
    let mut o = json!({"kind": kind, "apiVersion": "v1"});
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "command" => match o.get_mut("command").and_then(Value::as_array_mut) {
                Some(list) => list.push(json!(value)),
                None => o["command"] = json!([value]),
            },
            "ports" => {
                let port = value
                    .parse::<i64>()
                    .map_or_else(|_| json!(value), |p| json!(p));
                match o.get_mut("ports").and_then(Value::as_array_mut) {
                    Some(list) => list.push(port),
                    None => o["ports"] = json!([port]),
                }
            }
            "container" | "path" => o[key.as_ref()] = json!(value),
            "stdin" | "stdout" | "stderr" | "tty" => {
                o[key.as_ref()] = json!(matches!(value.as_ref(), "true" | "1"));
            }
            _ => {}
        }
    }
    if kind.ends_with("ProxyOptions") && o.get("path").is_none() && !rest.is_empty() {
        o["path"] = json!(format!("/{}", rest.join("/")));
    }
    o
}

/// The webhooks of a CONNECT (`pods/exec`, `attach`, `portforward`, `*/proxy`), with
/// the options as the object, as upstream's connect handler admits it (before the
/// connection is made). A mutating webhook may not change the options here.
pub async fn admit_connect(
    ctx: &Ctx,
    name: &str,
    sub: &str,
    query: Option<&str>,
    rest: &[String],
) -> ApiResult<()> {
    let (kind, subresource) = match (ctx.def.group.as_str(), ctx.def.kind.as_str(), sub) {
        ("", "Pod", "exec") => ("PodExecOptions", "exec"),
        ("", "Pod", "attach") => ("PodAttachOptions", "attach"),
        ("", "Pod", "portforward") => ("PodPortForwardOptions", "portforward"),
        ("", "Pod", "proxy") => ("PodProxyOptions", "proxy"),
        ("", "Node", "proxy") => ("NodeProxyOptions", "proxy"),
        ("", "Service", "proxy") => ("ServiceProxyOptions", "proxy"),
        _ => return Ok(()),
    };
    let mutating_hooks = config::mutating(&ctx.api.cache);
    let validating_hooks = config::validating(&ctx.api.cache);
    if mutating_hooks.is_empty() && validating_hooks.is_empty() {
        return Ok(());
    }
    let mut attrs = Attributes {
        operation: Operation::Connect,
        subresource,
        name: name.to_owned(),
        namespace: request_namespace(ctx, Operation::Connect, name),
        object: Some(connect_options(kind, query, rest)),
        old: None,
        options: Value::Null,
        dry_run: false,
        kind: Some(ObjectKind {
            group: "",
            version: "v1",
            kind,
        }),
    };
    if !mutating_hooks.is_empty() {
        mutating::run(ctx, &mutating_hooks, &mut attrs).await?;
    }
    if !validating_hooks.is_empty() {
        validating::run(ctx, &validating_hooks, &attrs).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_options_from_the_query() {
        let o = connect_options(
            "PodExecOptions",
            Some("command=sh&command=-c&command=echo+hi&container=c&stdin=true&tty=1&stdout=false"),
            &[],
        );
        assert_eq!(
            o,
            json!({"kind": "PodExecOptions", "apiVersion": "v1", "command": ["sh", "-c", "echo hi"],
                   "container": "c", "stdin": true, "tty": true, "stdout": false})
        );
        let o = connect_options("PodPortForwardOptions", Some("ports=8080&ports=9090"), &[]);
        assert_eq!(o["ports"], json!([8080, 9090]));
        let o = connect_options(
            "NodeProxyOptions",
            None,
            &["stats".into(), "summary".into()],
        );
        assert_eq!(o["path"], "/stats/summary");
    }

    #[test]
    fn delete_options_carry_what_was_asked() {
        let o = delete_options(Some(0), Some("Foreground"), true);
        assert_eq!(
            o,
            json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1", "gracePeriodSeconds": 0,
                   "propagationPolicy": "Foreground", "dryRun": ["All"]})
        );
    }
}
