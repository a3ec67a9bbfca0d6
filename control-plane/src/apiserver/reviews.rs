//! The review APIs: objects that are created, evaluated and returned, never stored.
//! - `authentication.k8s.io/v1` TokenReview (is this token valid, and whose is it)
//!   and SelfSubjectReview (who am I: `kubectl auth whoami`);
//! - `authorization.k8s.io/v1` SubjectAccessReview (may this user do this),
//!   LocalSubjectAccessReview (the same, in one namespace), SelfSubjectAccessReview
//!   (may I: `kubectl auth can-i`) and SelfSubjectRulesReview (what may I do here:
//!   `kubectl auth can-i --list`).
//!
//! Entry point: [`handle`], for a resource the registry marks `create_only`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::auth::UserInfo;
use super::authz::{Attributes, Rule};
use super::request::{content_type, decode, read_body};
use super::rest::{Ctx, invalid, negotiated_response, normalize};
use super::status::{ApiError, ApiResult, Cause};

/// Answers a POST of a review; any other method is not allowed.
pub async fn handle(
    ctx: Ctx,
    method: &Method,
    name: Option<&str>,
    body: Body,
) -> ApiResult<Response> {
    if *method != Method::POST || name.is_some() {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {method} {}",
            ctx.def.qualified()
        )));
    }
    let bytes = read_body(body, ctx.api.max_body).await?;
    let obj = decode(&bytes, &content_type(&ctx.headers))?;
    let mut obj = normalize(&ctx, obj).await?;
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    let requester = ctx.user.clone().unwrap_or_else(super::auth::anonymous);
    let status = match ctx.def.kind.as_str() {
        "TokenReview" => token_review(&ctx, &obj),
        "SelfSubjectReview" => json!({"userInfo": user_info(&requester)}),
        "SubjectAccessReview" => {
            let user = spec_user(&ctx, &obj)?;
            access(&ctx, &obj, user, None)?
        }
        "LocalSubjectAccessReview" => {
            let user = spec_user(&ctx, &obj)?;
            let namespace = ctx.namespace.clone().unwrap_or_default();
            access(&ctx, &obj, user, Some(&namespace))?
        }
        "SelfSubjectAccessReview" => access(&ctx, &obj, requester, None)?,
        "SelfSubjectRulesReview" => rules_review(&ctx, &obj, &requester)?,
        other => {
            return Err(ApiError::internal(format!("no review for kind {other}")));
        }
    };
    obj["status"] = status;
    Ok(negotiated_response(&ctx.headers, StatusCode::CREATED, &obj))
}

/// `authentication.k8s.io/v1` UserInfo.
fn user_info(user: &UserInfo) -> Value {
    let mut info = Map::new();
    info.insert("username".into(), json!(user.name));
    if !user.uid.is_empty() {
        info.insert("uid".into(), json!(user.uid));
    }
    if !user.groups.is_empty() {
        info.insert("groups".into(), json!(user.groups));
    }
    if !user.extra.is_empty() {
        info.insert("extra".into(), json!(user.extra));
    }
    Value::Object(info)
}

fn token_review(ctx: &Ctx, obj: &Value) -> Value {
    let token = obj
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let audiences: Vec<String> = obj
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    match ctx.api.authenticate_token(token, &audiences) {
        Some((user, audiences)) => json!({
            "authenticated": true,
            "user": user_info(&user),
            "audiences": audiences,
        }),
        None => json!({"user": {}}),
    }
}

/// The user a SubjectAccessReview asks about.
fn spec_user(ctx: &Ctx, obj: &Value) -> ApiResult<UserInfo> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let name = spec.get("user").and_then(Value::as_str).unwrap_or_default();
    let groups = strings(spec.get("groups"));
    if name.is_empty() && groups.is_empty() {
        return Err(invalid(
            &ctx.def,
            obj,
            vec![Cause::invalid(
                "spec.user",
                "Invalid value: \"\": at least one of user or group must be specified",
            )],
        ));
    }
    let extra: BTreeMap<String, Vec<String>> = spec
        .get("extra")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), strings(Some(v))))
                .collect()
        })
        .unwrap_or_default();
    Ok(UserInfo {
        name: name.to_owned(),
        uid: spec
            .get("uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        groups,
        extra,
    })
}

/// Evaluates an access review's attributes for `user`; `local` is a
/// LocalSubjectAccessReview's namespace.
fn access(ctx: &Ctx, obj: &Value, user: UserInfo, local: Option<&str>) -> ApiResult<Value> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let resource = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let non_resource = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    let s = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let attrs = match (resource, non_resource) {
        (Some(r), None) => {
            let namespace = s(r, "namespace");
            if let Some(local) = local
                && namespace != local
            {
                return Err(invalid(
                    &ctx.def,
                    obj,
                    vec![Cause::invalid(
                        "spec.resourceAttributes.namespace",
                        format!("Invalid value: \"{namespace}\": must match metadata.namespace"),
                    )],
                ));
            }
            Attributes {
                user,
                verb: s(r, "verb"),
                resource_request: true,
                api_group: s(r, "group"),
                api_version: s(r, "version"),
                namespace,
                resource: s(r, "resource"),
                subresource: s(r, "subresource"),
                name: s(r, "name"),
                path: String::new(),
                field_selector: r
                    .pointer("/fieldSelector/rawSelector")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }
        }
        (None, Some(n)) if local.is_none() => Attributes {
            user,
            verb: s(n, "verb"),
            path: s(n, "path"),
            ..Attributes::default()
        },
        (None, Some(_)) => {
            return Err(invalid(
                &ctx.def,
                obj,
                vec![Cause::invalid(
                    "spec.nonResourceAttributes",
                    "Invalid value: \"object\": disallowed on this kind of request",
                )],
            ));
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                &ctx.def,
                obj,
                vec![Cause::invalid(
                    "spec.nonResourceAttributes",
                    "Invalid value: \"object\": cannot be specified in combination with resourceAttributes",
                )],
            ));
        }
        (None, None) => {
            return Err(invalid(
                &ctx.def,
                obj,
                vec![Cause {
                    reason: "FieldValueRequired",
                    field: "spec.resourceAttributes".into(),
                    message: "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
                }],
            ));
        }
    };
    let decision = ctx.api.authorizer.authorize(&attrs);
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    Ok(status)
}

fn rules_review(ctx: &Ctx, obj: &Value, user: &UserInfo) -> ApiResult<Value> {
    let namespace = obj
        .pointer("/spec/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let set = ctx.api.authorizer.rules_for(user, namespace);
    let (non_resource, resource): (Vec<&Rule>, Vec<&Rule>) = set
        .rules
        .iter()
        .partition(|r| !r.non_resource_urls.is_empty());
    let resource_rules: Vec<Value> = resource
        .iter()
        .map(|r| {
            let mut v =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            v
        })
        .collect();
    let non_resource_rules: Vec<Value> = non_resource
        .iter()
        .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
        .collect();
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": !set.errors.is_empty(),
    });
    if !set.errors.is_empty() {
        status["evaluationError"] = json!(set.errors.join(", "));
    }
    Ok(status)
}
