//! ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1), as kube-apiserver's
//! plugin of that name (`k8s.io/apiserver/pkg/admission/plugin/policy/validating`):
//! after the built-in validation of a create, update or delete, every
//! ValidatingAdmissionPolicy with a ValidatingAdmissionPolicyBinding whose
//! `matchConstraints` and binding `matchResources` select the request ([`matching`])
//! is evaluated ([`evaluate`]) in CEL ([`cel`], [`library`], [`authz`]), with
//! `object`, `oldObject` (null on create; `object` null on delete), `request`,
//! `namespaceObject`, `params` (the binding's `paramRef`, by name or selector, in the
//! policy's `paramKind`), `variables` and `authorizer`.
//!
//! A validation that does not hold is acted on by the binding's
//! `validationActions`: `Deny` refuses the request with upstream's wording
//! (`<resource> "<name>" is forbidden: ValidatingAdmissionPolicy '<policy>' with
//! binding '<binding>' denied request: <message>`, code from the validation's
//! `reason`: Invalid 422 by default, Forbidden 403, Unauthorized 401,
//! RequestEntityTooLarge 413), `Warn` adds a `Warning` header, `Audit` an audit
//! annotation. Evaluation errors and broken configuration (a missing parameter, an
//! unknown `paramKind`) refuse under `failurePolicy: Fail` and are ignored under
//! `Ignore`. Requests on the policy resources themselves are exempt.
//!
//! The compiled policies are kept per stored revision ([`compiled`]) and read from
//! the watch cache, never the store. The policy objects' own defaults and validation
//! (every expression compiled at create and update) are in [`validation`].
//!
//! Entry points: [`validate_create`], [`validate_update`], [`validate_delete`].

pub mod authz;
pub mod cel;
pub mod compiled;
pub mod evaluate;
pub mod library;
pub mod matching;
pub mod network;
pub mod semver;
pub mod validation;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

pub use self::compiled::Policies;
use self::compiled::{Binding, Hook, Policy};
use self::evaluate::Decision;
use self::matching::Request;
use super::webhook::rules::{self, Operation};
use super::webhook::{ObjectKind, SCALE};
use crate::apiserver::audit;
use crate::apiserver::object;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::rest::{Ctx, Part};
use crate::apiserver::status::{ApiError, ApiResult};

pub use self::validation::{apply_defaults, validate};

/// Whether `kind` is one of this module's resources (for defaults and validation).
pub fn is_policy_kind(kind: &str) -> bool {
    matches!(
        kind,
        "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding"
    )
}

/// One admission request as policies see it.
#[derive(Debug)]
struct Attributes<'a> {
    operation: Operation,
    subresource: &'static str,
    name: &'a str,
    namespace: String,
    object: Option<&'a Value>,
    old: Option<&'a Value>,
    dry_run: bool,
    options: &'static str,
    /// The object's kind when it is not the resource's (a `/scale` write's Scale).
    kind: Option<ObjectKind>,
}

fn is_namespace(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.kind == "Namespace"
}

/// The request's namespace as admission sees it (a Namespace's own name for its
/// updates and deletes, none for its create).
fn request_namespace(ctx: &Ctx, operation: Operation, name: &str) -> String {
    if is_namespace(&ctx.def) {
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

/// The policies' verdict on a create of `obj` (after defaults and validation).
pub fn validate_create(ctx: &Ctx, obj: &Value) -> ApiResult<()> {
    let name = object::name(obj);
    admit(
        ctx,
        &Attributes {
            operation: Operation::Create,
            subresource: "",
            name,
            namespace: request_namespace(ctx, Operation::Create, name),
            object: Some(obj),
            old: None,
            dry_run: ctx.query.dry_run()?,
            options: "CreateOptions",
            kind: None,
        },
    )
}

/// The policies' verdict on an update of `old` to `new` through `part`.
pub fn validate_update(ctx: &Ctx, old: &Value, new: &Value, part: Part) -> ApiResult<()> {
    // A pod binding is upstream's create of a Binding, which this path does not have.
    if part == Part::Bind {
        return Ok(());
    }
    let name = object::name(old);
    // A scale update is admitted as its Scale, as upstream's.
    let scales = match (part, &ctx.def.scale) {
        (Part::Scale, Some(paths)) => {
            use crate::apiserver::rest::subresource::scale_of;
            Some((scale_of(paths, new), scale_of(paths, old)))
        }
        _ => None,
    };
    let (object, old_object) = scales.as_ref().map_or((new, old), |(n, o)| (n, o));
    admit(
        ctx,
        &Attributes {
            operation: Operation::Update,
            subresource: part.subresource(),
            name,
            namespace: request_namespace(ctx, Operation::Update, name),
            object: Some(object),
            old: Some(old_object),
            dry_run: ctx.query.dry_run()?,
            options: "UpdateOptions",
            kind: scales.is_some().then_some(SCALE),
        },
    )
}

/// The policies' verdict on a delete of `old`.
pub fn validate_delete(ctx: &Ctx, old: &Value, dry_run: bool) -> ApiResult<()> {
    let name = object::name(old);
    admit(
        ctx,
        &Attributes {
            operation: Operation::Delete,
            subresource: "",
            name,
            namespace: request_namespace(ctx, Operation::Delete, name),
            object: None,
            old: Some(old),
            dry_run,
            options: "DeleteOptions",
            kind: None,
        },
    )
}

/// A request refused by a policy (or its broken configuration).
#[derive(Debug)]
struct Denial {
    policy: String,
    binding: Option<String>,
    message: String,
    reason: Option<String>,
}

fn admit(ctx: &Ctx, attrs: &Attributes) -> ApiResult<()> {
    let def = &ctx.def;
    if rules::is_exempt(&def.group, &def.plural) || def.create_only || def.metrics {
        return Ok(());
    }
    let hooks = ctx.api.policies.hooks(&ctx.api.cache);
    if hooks.is_empty() {
        return Ok(());
    }
    let equivalents: Vec<String> = ctx
        .api
        .registry
        .all()
        .into_iter()
        .filter(|d| d.group == def.group && d.plural == def.plural && d.version != def.version)
        .map(|d| d.version.clone())
        .collect();
    let req = Request {
        operation: attrs.operation,
        group: &def.group,
        version: &def.version,
        resource: &def.plural,
        subresource: attrs.subresource,
        name: attrs.name,
        namespace: &attrs.namespace,
        object: attrs.object,
        old: attrs.old,
        equivalent_versions: &equivalents,
    };
    let labels = || namespace_labels(ctx, attrs);
    let matched: Vec<&Hook> = hooks
        .iter()
        .filter(|h| h.policy.constraints.matches(&req, &labels).unwrap_or(false))
        .collect();
    if matched.is_empty() {
        return Ok(());
    }

    let request = request_object(ctx, attrs);
    let namespace = namespace_object(ctx, attrs);
    let null = Value::Null;
    let mut root = ::cel::Context::with_env(cel::env());
    root.add_variable_as_val("object", cel::json_to_val(attrs.object.unwrap_or(&null)));
    root.add_variable_as_val("oldObject", cel::json_to_val(attrs.old.unwrap_or(&null)));
    root.add_variable_as_val("request", cel::json_to_val(&request));
    root.add_variable_as_val(
        "namespaceObject",
        cel::json_to_val(namespace.as_ref().unwrap_or(&null)),
    );
    root.add_variable_from_value(
        "authorizer",
        authz::authorizer(ctx.api.clone(), ctx.user.as_ref()),
    );

    let mut denied = Vec::new();
    let mut warnings = Vec::new();
    for hook in matched {
        let policy = &hook.policy;
        let config_error = |denied: &mut Vec<Denial>, binding: Option<&Binding>, e: &str| {
            if policy.ignore_failures {
                return;
            }
            let what = if binding.is_some() {
                "binding"
            } else {
                "policy"
            };
            denied.push(Denial {
                policy: policy.name.clone(),
                binding: binding.map(|b| b.name.clone()),
                message: format!("failed to configure {what}: {e}"),
                reason: None,
            });
        };
        let param_def = match param_def(ctx, policy) {
            Ok(d) => d,
            Err(e) => {
                config_error(&mut denied, None, &e);
                continue;
            }
        };
        let mut published: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for binding in &hook.bindings {
            match binding
                .constraints
                .as_ref()
                .map(|c| c.matches(&req, &labels))
            {
                Some(Ok(false)) => continue,
                Some(Err(e)) => {
                    config_error(&mut denied, Some(binding), &e.message);
                    continue;
                }
                None | Some(Ok(true)) => {}
            }
            let params = match collect_params(ctx, param_def.as_deref(), binding, &attrs.namespace)
            {
                Ok(p) => p,
                Err(e) => {
                    config_error(&mut denied, Some(binding), &e);
                    continue;
                }
            };
            for param in &params {
                let outcome = evaluate::evaluate(&root, policy, param.as_ref());
                for d in outcome.decisions.iter().filter(|d| d.deny) {
                    act(ctx, policy, binding, d, &mut denied, &mut warnings);
                }
                for took in outcome.ignored {
                    ctx.api.metrics.policy_check(
                        &policy.name,
                        &binding.name,
                        "allow",
                        INVALID,
                        took,
                    );
                }
                for (e, took) in outcome.annotation_errors {
                    // Denied whatever the binding's actions, and counted so.
                    ctx.api.metrics.policy_check(
                        &policy.name,
                        &binding.name,
                        "deny",
                        INVALID,
                        took,
                    );
                    denied.push(Denial {
                        policy: policy.name.clone(),
                        binding: Some(binding.name.clone()),
                        message: e,
                        reason: None,
                    });
                }
                for (key, value) in outcome.annotations {
                    let values = published.entry(key).or_default();
                    if !values.contains(&value) {
                        values.push(value);
                    }
                }
            }
        }
        for (key, values) in published {
            audit::annotate(&format!("{}/{key}", policy.name), values.join(", "));
        }
    }
    ctx.warn(warnings);
    match denied.first() {
        Some(d) => Err(refusal(ctx, attrs, d)),
        None => Ok(()),
    }
}

/// The `error_type` of a validation that did not pass, as upstream's policy metrics
/// label it (no cost budget here, so never `out_of_budget`).
const INVALID: &str = "invalid_error";

/// A denying decision through the binding's `validationActions`, each counted in the
/// policy check metrics.
fn act(
    ctx: &Ctx,
    policy: &Policy,
    binding: &Binding,
    d: &Decision,
    denied: &mut Vec<Denial>,
    warnings: &mut Vec<String>,
) {
    for action in &binding.actions {
        let counted = action.to_ascii_lowercase();
        if matches!(counted.as_str(), "deny" | "warn" | "audit") {
            ctx.api
                .metrics
                .policy_check(&policy.name, &binding.name, &counted, INVALID, d.elapsed);
        }
        match action.as_str() {
            "Deny" => denied.push(Denial {
                policy: policy.name.clone(),
                binding: Some(binding.name.clone()),
                message: d.message.clone(),
                reason: d.reason.clone(),
            }),
            "Warn" => warnings.push(format!(
                "Validation failed for ValidatingAdmissionPolicy '{}' with binding '{}': {}",
                policy.name, binding.name, d.message
            )),
            "Audit" => audit::annotate(
                "validation.policy.admission.k8s.io/validation_failure",
                json!([{
                    "message": d.message,
                    "policy": policy.name,
                    "binding": binding.name,
                    "expressionIndex": d.index,
                    "validationActions": binding.actions,
                }])
                .to_string(),
            ),
            _ => {}
        }
    }
}

/// The refusal of the first denial, as upstream's `admission.NewForbidden` with the
/// validation's reason and code.
fn refusal(ctx: &Ctx, attrs: &Attributes, d: &Denial) -> ApiError {
    let message = match &d.binding {
        Some(b) => format!(
            "ValidatingAdmissionPolicy '{}' with binding '{b}' denied request: {}",
            d.policy, d.message
        ),
        None => format!(
            "ValidatingAdmissionPolicy '{}' denied request: {}",
            d.policy, d.message
        ),
    };
    let (code, reason) = match d.reason.as_deref() {
        Some("Forbidden") => (403, "Forbidden"),
        Some("Unauthorized") => (401, "Unauthorized"),
        Some("RequestEntityTooLarge") => (413, "RequestEntityTooLarge"),
        _ => (422, "Invalid"),
    };
    let resource = ctx.def.qualified();
    let full = if attrs.name.is_empty() {
        format!("{resource} is forbidden: {message}")
    } else {
        format!("{resource} \"{}\" is forbidden: {message}", attrs.name)
    };
    let mut e = ApiError::new(code, reason, full);
    e.details = Some(json!({
        "name": attrs.name,
        "group": ctx.def.group,
        "kind": ctx.def.plural,
        "causes": [{"message": message}],
    }));
    e
}

/// The labels the namespace selectors are matched against (`GetNamespaceLabels`).
fn namespace_labels(ctx: &Ctx, attrs: &Attributes) -> ApiResult<BTreeMap<String, String>> {
    if is_namespace(&ctx.def)
        && attrs.subresource.is_empty()
        && matches!(attrs.operation, Operation::Create | Operation::Update)
    {
        return Ok(attrs.object.map(rules::labels_of).unwrap_or_default());
    }
    let key = format!("/registry/core/namespaces/{}", attrs.namespace);
    match ctx.api.cache.get(&key) {
        Some(ns) => Ok(rules::labels_of(&ns.value())),
        None => Err(ApiError::not_found("", "namespaces", &attrs.namespace)),
    }
}

/// `namespaceObject`: the request's namespace, without its managed fields.
fn namespace_object(ctx: &Ctx, attrs: &Attributes) -> Option<Value> {
    if attrs.namespace.is_empty() || is_namespace(&ctx.def) {
        return None;
    }
    let mut ns = ctx
        .api
        .cache
        .get(&format!("/registry/core/namespaces/{}", attrs.namespace))?
        .value();
    if let Some(meta) = object::meta_mut(&mut ns) {
        meta.remove("managedFields");
        meta.remove("ownerReferences");
    }
    Some(ns)
}

/// `request`: the AdmissionRequest (`cel.CreateAdmissionRequest`), empty fields
/// omitted as its JSON omits them.
fn request_object(ctx: &Ctx, attrs: &Attributes) -> Value {
    let def = &ctx.def;
    let kind = match attrs.kind {
        Some(k) => json!({"group": k.group, "version": k.version, "kind": k.kind}),
        None => json!({"group": def.group, "version": def.version, "kind": def.kind}),
    };
    let resource = json!({"group": def.group, "version": def.version, "resource": def.plural});
    let mut user = json!({});
    if let Some(u) = &ctx.user {
        if !u.name.is_empty() {
            user["username"] = json!(u.name);
        }
        if !u.uid.is_empty() {
            user["uid"] = json!(u.uid);
        }
        if !u.groups.is_empty() {
            user["groups"] = json!(u.groups);
        }
        if !u.extra.is_empty() {
            user["extra"] = json!(u.extra);
        }
    }
    let mut options = json!({"kind": attrs.options, "apiVersion": "meta.k8s.io/v1"});
    if attrs.dry_run {
        options["dryRun"] = json!(["All"]);
    }
    let mut r = json!({
        "uid": object::new_uid(),
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "operation": attrs.operation.as_str(),
        "userInfo": user,
        "dryRun": attrs.dry_run,
        "options": options,
    });
    for (key, value) in [
        ("subResource", attrs.subresource),
        ("requestSubResource", attrs.subresource),
        ("name", attrs.name),
        ("namespace", attrs.namespace.as_str()),
    ] {
        if !value.is_empty() {
            r[key] = json!(value);
        }
    }
    r
}

/// The resource of the policy's `paramKind` (`None` without one).
fn param_def(ctx: &Ctx, policy: &Policy) -> Result<Option<Arc<ResourceDef>>, String> {
    let Some((api_version, kind)) = &policy.param_kind else {
        return Ok(None);
    };
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ctx.api
        .registry
        .all()
        .into_iter()
        .find(|d| d.group == group && d.version == version && d.kind == *kind && !d.create_only)
        .map(Some)
        .ok_or_else(|| {
            format!("failed to find resource referenced by paramKind: '{api_version}, Kind={kind}'")
        })
}

/// The parameters a binding evaluates its policy with (`generic.CollectParams`):
/// `[None]` without a `paramKind` or `paramRef`; none found is an error under
/// `parameterNotFoundAction: Deny`.
fn collect_params(
    ctx: &Ctx,
    def: Option<&ResourceDef>,
    binding: &Binding,
    request_ns: &str,
) -> Result<Vec<Option<Value>>, String> {
    let (Some(def), Some(r)) = (def, &binding.param_ref) else {
        return Ok(vec![None]);
    };
    let ns = r.namespace.as_deref().unwrap_or_default();
    let ns = if def.namespaced {
        if !ns.is_empty() {
            ns
        } else if !request_ns.is_empty() {
            request_ns
        } else {
            return Err(
                "cannot use namespaced paramRef in policy binding that matches cluster-scoped resources"
                    .into(),
            );
        }
    } else if !ns.is_empty() {
        return Err(
            "paramRef.namespace must not be provided for a cluster-scoped `paramKind`".into(),
        );
    } else {
        ""
    };
    let scope = (!ns.is_empty()).then_some(ns);
    let params: Vec<Option<Value>> = match (r.name.as_deref(), &r.selector) {
        (Some(name), _) if !name.is_empty() => ctx
            .api
            .cache
            .get(&def.key(scope, name))
            .map(|c| Some(def.external(c.value())))
            .into_iter()
            .collect(),
        (_, Some(selector)) => {
            let (items, _) = ctx.api.cache.list(&def.collection_prefix(scope), |_| true);
            items
                .iter()
                .map(|c| c.value())
                .filter(|v| rules::selector_matches(selector, &rules::labels_of(v)))
                .map(|v| Some(def.external(v)))
                .collect()
        }
        _ => return Err("one of name or selector must be provided".into()),
    };
    if params.is_empty() && r.parameter_not_found_action.as_deref() == Some("Deny") {
        return Err(
            "no params found for policy binding with `Deny` parameterNotFoundAction".into(),
        );
    }
    Ok(params)
}

#[cfg(test)]
mod tests;
