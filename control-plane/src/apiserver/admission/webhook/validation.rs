//! The configurations' own defaults (`pkg/apis/admissionregistration/v1/defaults.go`)
//! and validation with upstream's messages
//! (`pkg/apis/admissionregistration/validation/validation.go`,
//! `k8s.io/apiserver/pkg/util/webhook/validation.go`); `matchConditions` expressions
//! are compiled.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::conditions;
use super::config::{MUTATING_KIND, REVIEW_VERSIONS, VALIDATING_KIND};
use crate::apiserver::admission::validation::{
    dns_subdomain_msg, is_dns_subdomain, qualified_name_error,
};
use crate::apiserver::status::Cause;

/// Whether `kind` is one of the two webhook configuration kinds.
pub fn is_config_kind(kind: &str) -> bool {
    kind == MUTATING_KIND || kind == VALIDATING_KIND
}

fn default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.into(), value);
    }
}

/// `SetDefaults_ValidatingWebhook` / `SetDefaults_MutatingWebhook`, `SetDefaults_Rule`,
/// `SetDefaults_ServiceReference`.
pub fn apply_defaults(kind: &str, obj: &mut Value) {
    let Some(hooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) else {
        return;
    };
    for hook in hooks.iter_mut().filter_map(Value::as_object_mut) {
        default(hook, "failurePolicy", json!("Fail"));
        default(hook, "matchPolicy", json!("Equivalent"));
        default(hook, "namespaceSelector", json!({}));
        default(hook, "objectSelector", json!({}));
        default(hook, "timeoutSeconds", json!(10));
        if kind == MUTATING_KIND {
            default(hook, "reinvocationPolicy", json!("Never"));
        }
        for rule in hook
            .get_mut("rules")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            default(rule, "scope", json!("*"));
        }
        if let Some(service) = hook
            .get_mut("clientConfig")
            .and_then(|c| c.get_mut("service"))
            .and_then(Value::as_object_mut)
        {
            default(service, "port", json!(443));
        }
    }
}

/// A field value as `field.Invalid` prints it (strings quoted, others as JSON).
fn shown(v: &Value) -> String {
    v.to_string()
}

fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Cause {
    Cause::invalid(field, format!("Invalid value: {}: {detail}", shown(value)))
}

fn required(field: impl Into<String>, detail: &str) -> Cause {
    let mut c = Cause::required(field);
    if !detail.is_empty() {
        c.message = format!("Required value: {detail}");
    }
    c
}

fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    Cause {
        reason: "FieldValueNotSupported",
        field: field.into(),
        message: format!(
            "Unsupported value: \"{value}\": supported values: {}",
            list.join(", ")
        ),
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `utilvalidation.IsFullyQualifiedName`.
fn fully_qualified_name(path: &str, name: &str, causes: &mut Vec<Cause>) {
    if name.is_empty() {
        causes.push(required(path, ""));
        return;
    }
    if name.split('.').count() < 3 {
        causes.push(invalid(
            path,
            &json!(name),
            "should be a domain with at least three segments separated by dots",
        ));
        return;
    }
    if !is_dns_subdomain(name) {
        causes.push(Cause::invalid(path, dns_subdomain_msg(name)));
    }
}

/// `utilvalidation.IsDNS1035Label`.
fn dns1035_label_error(v: &str) -> Option<String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && v.as_bytes()[0].is_ascii_lowercase()
        && !v.ends_with('-');
    (!ok).then(|| {
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".to_owned()
    })
}

fn validate_resources(resources: &[&str], path: &str, causes: &mut Vec<Cause>) {
    if resources.is_empty() {
        causes.push(required(path, ""));
    }
    let mut with_wildcard_sub = BTreeSet::new();
    let mut sub_with_wildcard_res = BTreeSet::new();
    let (mut double, mut single, mut plain) = (false, false, false);
    for (i, res_sub) in resources.iter().enumerate() {
        if res_sub.is_empty() {
            causes.push(required(format!("{path}[{i}]"), ""));
            continue;
        }
        if *res_sub == "*/*" {
            double = true;
        }
        if *res_sub == "*" {
            single = true;
        }
        let Some((res, sub)) = res_sub.split_once('/') else {
            plain = *res_sub != "*";
            continue;
        };
        if with_wildcard_sub.contains(res) {
            causes.push(invalid(
                format!("{path}[{i}]"),
                &json!(res_sub),
                &format!("if '{res}/*' is present, must not specify {res_sub}"),
            ));
        }
        if sub_with_wildcard_res.contains(sub) {
            causes.push(invalid(
                format!("{path}[{i}]"),
                &json!(res_sub),
                &format!("if '*/{sub}' is present, must not specify {res_sub}"),
            ));
        }
        if sub == "*" {
            with_wildcard_sub.insert(res);
        }
        if res == "*" {
            sub_with_wildcard_res.insert(sub);
        }
    }
    if resources.len() > 1 && double {
        causes.push(invalid(
            path,
            &json!(resources),
            "if '*/*' is present, must not specify other resources",
        ));
    }
    if single && plain {
        causes.push(invalid(
            path,
            &json!(resources),
            "if '*' is present, must not specify other resources without subresources",
        ));
    }
}

/// `validateRuleWithOperations`.
pub(crate) fn validate_rule(rule: &Value, path: &str, causes: &mut Vec<Cause>) {
    let ops = strings(rule.get("operations"));
    if ops.is_empty() {
        causes.push(required(format!("{path}.operations"), ""));
    }
    if ops.len() > 1 && ops.contains(&"*") {
        causes.push(invalid(
            format!("{path}.operations"),
            &json!(ops),
            "if '*' is present, must not specify other operations",
        ));
    }
    for (i, op) in ops.iter().enumerate() {
        if !matches!(*op, "*" | "CREATE" | "UPDATE" | "DELETE" | "CONNECT") {
            causes.push(not_supported(
                format!("{path}.operations[{i}]"),
                op,
                &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"],
            ));
        }
    }
    let groups = rule.get("apiGroups").and_then(Value::as_array);
    let group_list = strings(rule.get("apiGroups"));
    if groups.is_none_or(Vec::is_empty) {
        causes.push(required(format!("{path}.apiGroups"), ""));
    }
    if group_list.len() > 1 && group_list.contains(&"*") {
        causes.push(invalid(
            format!("{path}.apiGroups"),
            &json!(group_list),
            "if '*' is present, must not specify other API groups",
        ));
    }
    let versions = strings(rule.get("apiVersions"));
    if versions.is_empty() {
        causes.push(required(format!("{path}.apiVersions"), ""));
    }
    if versions.len() > 1 && versions.contains(&"*") {
        causes.push(invalid(
            format!("{path}.apiVersions"),
            &json!(versions),
            "if '*' is present, must not specify other API versions",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v.is_empty() {
            causes.push(required(format!("{path}.apiVersions[{i}]"), ""));
        }
    }
    validate_resources(
        &strings(rule.get("resources")),
        &format!("{path}.resources"),
        causes,
    );
    if let Some(scope) = rule.get("scope").and_then(Value::as_str)
        && !matches!(scope, "*" | "Cluster" | "Namespaced")
    {
        causes.push(not_supported(
            format!("{path}.scope"),
            scope,
            &["*", "Cluster", "Namespaced"],
        ));
    }
}

fn label_value_error(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let ok = v.is_empty()
        || (v.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric));
    (!ok).then(|| {
        format!(
            "Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        )
    })
}

/// `metav1validation.ValidateLabelSelector`.
fn validate_selector(sel: &Value, path: &str, causes: &mut Vec<Cause>) {
    for (i, req) in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = strings(req.get("values"));
        match req
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "In" | "NotIn" => {
                if values.is_empty() {
                    causes.push(required(
                        format!("{p}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    causes.push(Cause::forbidden(
                        format!("{p}.values"),
                        "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            other => causes.push(invalid(
                format!("{p}.operator"),
                &json!(other),
                "not a valid selector operator",
            )),
        }
        let key = req.get("key").and_then(Value::as_str).unwrap_or_default();
        if let Some(msg) = qualified_name_error(key) {
            causes.push(Cause::invalid(format!("{p}.key"), msg));
        }
        for (j, v) in values.iter().enumerate() {
            if let Some(msg) = label_value_error(v) {
                causes.push(Cause::invalid(format!("{p}.values[{j}]"), msg));
            }
        }
    }
    if let Some(labels) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(msg) = qualified_name_error(k) {
                causes.push(Cause::invalid(format!("{path}.matchLabels"), msg));
            }
            if let Some(msg) = label_value_error(v.as_str().unwrap_or_default()) {
                causes.push(Cause::invalid(format!("{path}.matchLabels"), msg));
            }
        }
    }
}

/// `webhook.ValidateWebhookURL` (https only).
fn validate_url(url: &str, path: &str, causes: &mut Vec<Cause>) {
    const FORM: &str = "; desired format: https://host[/path]";
    // Go's url.Parse takes a string without a scheme as a path (no scheme, no host).
    let scheme_len = url
        .find(':')
        .filter(|&i| {
            url.as_bytes()[..i]
                .first()
                .is_some_and(u8::is_ascii_alphabetic)
                && url.as_bytes()[..i]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        })
        .unwrap_or(0);
    if scheme_len == 0 {
        causes.push(invalid(
            path,
            &json!(""),
            &format!("'https' is the only allowed URL scheme{FORM}"),
        ));
        causes.push(invalid(
            path,
            &json!(""),
            &format!("host must be provided{FORM}"),
        ));
        return;
    }
    match reqwest::Url::parse(url) {
        Ok(u) => {
            if u.scheme() != "https" {
                causes.push(invalid(
                    path,
                    &json!(u.scheme()),
                    &format!("'https' is the only allowed URL scheme{FORM}"),
                ));
            }
            if u.host_str().is_none_or(str::is_empty) {
                causes.push(invalid(
                    path,
                    &json!(""),
                    &format!("host must be provided{FORM}"),
                ));
            }
            if !u.username().is_empty() || u.password().is_some() {
                let user = match u.password() {
                    Some(_) => format!("{}:xxxxx", u.username()),
                    None => u.username().to_owned(),
                };
                causes.push(invalid(
                    path,
                    &json!(user),
                    "user information is not permitted in the URL",
                ));
            }
            if let Some(f) = u.fragment().filter(|f| !f.is_empty()) {
                causes.push(invalid(
                    path,
                    &json!(f),
                    "fragments are not permitted in the URL",
                ));
            }
            if let Some(q) = u.query().filter(|q| !q.is_empty()) {
                causes.push(invalid(
                    path,
                    &json!(q),
                    "query parameters are not permitted in the URL",
                ));
            }
        }
        Err(e) => causes.push(required(
            path,
            &format!("url must be a valid URL: {e}{FORM}"),
        )),
    }
}

/// `webhook.ValidateWebhookService`.
fn validate_service(svc: &Value, path: &str, causes: &mut Vec<Cause>) {
    let text = |k: &str| svc.get(k).and_then(Value::as_str).unwrap_or_default();
    if text("name").is_empty() {
        causes.push(required(format!("{path}.name"), "service name is required"));
    }
    if text("namespace").is_empty() {
        causes.push(required(
            format!("{path}.namespace"),
            "service namespace is required",
        ));
    }
    let port = svc.get("port").and_then(Value::as_i64).unwrap_or(443);
    if !(1..=65535).contains(&port) {
        causes.push(invalid(
            format!("{path}.port"),
            &json!(port),
            "port is not valid: must be between 1 and 65535, inclusive",
        ));
    }
    let Some(url_path) = svc.get("path").and_then(Value::as_str) else {
        return;
    };
    let field = format!("{path}.path");
    if url_path.is_empty() || url_path == "/" {
        return;
    }
    if url_path == "//" {
        causes.push(invalid(
            &field,
            &json!(url_path),
            "segment[0] may not be empty",
        ));
        return;
    }
    if !url_path.starts_with('/') {
        causes.push(invalid(&field, &json!(url_path), "must start with a '/'"));
    }
    let rest = url_path.get(1..).unwrap_or_default();
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    for (i, step) in rest.split('/').enumerate() {
        if step.is_empty() {
            causes.push(invalid(
                &field,
                &json!(url_path),
                &format!("segment[{i}] may not be empty"),
            ));
        } else if !is_dns_subdomain(step) {
            causes.push(invalid(
                &field,
                &json!(url_path),
                &format!(
                    "segment[{i}]: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                ),
            ));
        }
    }
}

/// `validateMatchConditions`: names, and expressions that compile.
fn validate_match_conditions(conditions: &[Value], path: &str, causes: &mut Vec<Cause>) {
    if conditions.len() > 64 {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: path.into(),
            message: format!("Too many: {}: must have at most 64 items", conditions.len()),
        });
    }
    let mut names = BTreeSet::new();
    for (i, c) in conditions.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let expression = c
            .get("expression")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if expression.trim().is_empty() {
            causes.push(required(format!("{p}.expression"), ""));
        } else if let Some(e) = conditions::check(expression.trim()) {
            causes.push(invalid(format!("{p}.expression"), &json!(expression), &e));
        }
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            causes.push(required(format!("{p}.name"), ""));
        } else {
            if let Some(msg) = qualified_name_error(name) {
                causes.push(Cause::invalid(format!("{p}.name"), msg));
            }
            if !names.insert(name) {
                causes.push(Cause::duplicate(format!("{p}.name"), name));
            }
        }
    }
}

/// `admissionReviewVersions` or a CRD's `conversionReviewVersions` (`empty`: what an
/// empty list is told).
fn validate_review_versions(
    versions: Option<&Value>,
    path: &str,
    empty: &str,
    causes: &mut Vec<Cause>,
) {
    let list = strings(versions);
    if list.is_empty() {
        causes.push(required(path, empty));
        return;
    }
    let mut seen = BTreeSet::new();
    for (i, v) in list.iter().enumerate() {
        if !seen.insert(*v) {
            causes.push(invalid(
                format!("{path}[{i}]"),
                &json!(v),
                "duplicate version",
            ));
            continue;
        }
        if let Some(msg) = dns1035_label_error(v) {
            causes.push(invalid(format!("{path}[{i}]"), &json!(v), &msg));
        }
    }
    if !list.iter().any(|v| REVIEW_VERSIONS.contains(v)) {
        causes.push(invalid(
            path,
            &json!(list),
            &format!(
                "must include at least one of {}",
                REVIEW_VERSIONS.join(", ")
            ),
        ));
    }
}

fn validate_hook(kind: &str, hook: &Value, path: &str, causes: &mut Vec<Cause>) {
    let text = |k: &str| hook.get(k).and_then(Value::as_str);
    fully_qualified_name(
        &format!("{path}.name"),
        text("name").unwrap_or_default(),
        causes,
    );
    for (i, rule) in hook
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        validate_rule(rule, &format!("{path}.rules[{i}]"), causes);
    }
    if let Some(p) = text("failurePolicy")
        && !matches!(p, "Fail" | "Ignore")
    {
        causes.push(not_supported(
            format!("{path}.failurePolicy"),
            p,
            &["Fail", "Ignore"],
        ));
    }
    if let Some(p) = text("matchPolicy")
        && !matches!(p, "Equivalent" | "Exact")
    {
        causes.push(not_supported(
            format!("{path}.matchPolicy"),
            p,
            &["Equivalent", "Exact"],
        ));
    }
    // k8s-openapi writes a missing sideEffects as "": both are upstream's nil.
    match text("sideEffects").unwrap_or_default() {
        "" => causes.push(required(
            format!("{path}.sideEffects"),
            "must specify one of None, NoneOnDryRun",
        )),
        "None" | "NoneOnDryRun" => {}
        other => causes.push(not_supported(
            format!("{path}.sideEffects"),
            other,
            &["None", "NoneOnDryRun"],
        )),
    }
    if let Some(t) = hook.get("timeoutSeconds").and_then(Value::as_i64)
        && !(1..=30).contains(&t)
    {
        causes.push(invalid(
            format!("{path}.timeoutSeconds"),
            &json!(t),
            "the timeout value must be between 1 and 30 seconds",
        ));
    }
    for key in ["namespaceSelector", "objectSelector"] {
        if let Some(sel) = hook.get(key).filter(|s| s.is_object()) {
            validate_selector(sel, &format!("{path}.{key}"), causes);
        }
    }
    if kind == MUTATING_KIND
        && let Some(p) = text("reinvocationPolicy")
        && !matches!(p, "IfNeeded" | "Never")
    {
        causes.push(not_supported(
            format!("{path}.reinvocationPolicy"),
            p,
            &["IfNeeded", "Never"],
        ));
    }
    let cc = hook.get("clientConfig").unwrap_or(&Value::Null);
    let url = cc.get("url").and_then(Value::as_str);
    let service = cc.get("service").filter(|s| s.is_object());
    match (url, service) {
        (Some(u), None) => validate_url(u, &format!("{path}.clientConfig.url"), causes),
        (None, Some(s)) => validate_service(s, &format!("{path}.clientConfig.service"), causes),
        _ => causes.push(required(
            format!("{path}.clientConfig"),
            "exactly one of url or service is required",
        )),
    }
    if let Some(conditions) = hook.get("matchConditions").and_then(Value::as_array) {
        validate_match_conditions(conditions, &format!("{path}.matchConditions"), causes);
    }
    validate_review_versions(
        hook.get("admissionReviewVersions"),
        &format!("{path}.admissionReviewVersions"),
        &format!("must specify one of {}", REVIEW_VERSIONS.join(", ")),
        causes,
    );
}

/// A CustomResourceDefinition's `spec.conversion`, as apiextensions' validation checks
/// it; paths are upstream's (its internal type's: `webhookClientConfig`,
/// `conversionReviewVersions` right under `spec.conversion`).
pub fn validate_crd_conversion(spec: &Value, causes: &mut Vec<Cause>) {
    let Some(conversion) = spec.get("conversion").filter(|c| c.is_object()) else {
        return;
    };
    let path = "spec.conversion";
    let strategy = conversion
        .get("strategy")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match strategy {
        "" => causes.push(required(format!("{path}.strategy"), "")),
        "None" | "Webhook" => {}
        other => causes.push(not_supported(
            format!("{path}.strategy"),
            other,
            &["None", "Webhook"],
        )),
    }
    let webhook = conversion.get("webhook").filter(|w| w.is_object());
    let client_config = webhook
        .and_then(|w| w.get("clientConfig"))
        .filter(|c| c.is_object());
    let review_versions = webhook
        .and_then(|w| w.get("conversionReviewVersions"))
        .filter(|v| !strings(Some(v)).is_empty());
    if strategy == "Webhook" {
        if spec.get("preserveUnknownFields") == Some(&Value::Bool(true)) {
            causes.push(invalid(
                format!("{path}.strategy"),
                &json!(strategy),
                "must be None if spec.preserveUnknownFields is true",
            ));
        }
        match client_config {
            None => causes.push(required(
                format!("{path}.webhookClientConfig"),
                "required when strategy is set to Webhook",
            )),
            Some(cc) => {
                let url = cc.get("url").and_then(Value::as_str);
                let service = cc.get("service").filter(|s| s.is_object());
                match (url, service) {
                    (Some(u), None) => {
                        validate_url(u, &format!("{path}.webhookClientConfig.url"), causes)
                    }
                    (None, Some(s)) => {
                        validate_service(s, &format!("{path}.webhookClientConfig.service"), causes)
                    }
                    _ => causes.push(required(
                        format!("{path}.webhookClientConfig"),
                        "exactly one of url or service is required",
                    )),
                }
            }
        }
        validate_review_versions(
            webhook.and_then(|w| w.get("conversionReviewVersions")),
            &format!("{path}.conversionReviewVersions"),
            "",
            causes,
        );
    } else {
        if client_config.is_some() {
            causes.push(Cause::forbidden(
                format!("{path}.webhookClientConfig"),
                "Forbidden: should not be set when strategy is not set to Webhook",
            ));
        }
        if review_versions.is_some() {
            causes.push(Cause::forbidden(
                format!("{path}.conversionReviewVersions"),
                "Forbidden: should not be set when strategy is not set to Webhook",
            ));
        }
    }
}

/// A CustomResourceDefinition's conversion defaults (v1): strategy `None`, a service's
/// port 443.
pub fn default_crd_conversion(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let conversion = spec
        .entry("conversion")
        .or_insert_with(|| json!({"strategy": "None"}));
    if let Some(service) = conversion
        .pointer_mut("/webhook/clientConfig/service")
        .and_then(Value::as_object_mut)
    {
        default(service, "port", json!(443));
    }
}

/// `ValidateMutatingWebhookConfiguration` / `ValidateValidatingWebhookConfiguration`
/// (object metadata is checked by the generic validation).
pub fn validate(kind: &str, obj: &Value, causes: &mut Vec<Cause>) {
    let mut names = BTreeSet::new();
    for (i, hook) in obj
        .get("webhooks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("webhooks[{i}]");
        validate_hook(kind, hook, &path, causes);
        let name = hook.get("name").and_then(Value::as_str).unwrap_or_default();
        if !name.is_empty() && !names.insert(name) {
            causes.push(Cause::duplicate(format!("{path}.name"), name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(kind: &str, obj: Value) -> Vec<String> {
        let mut obj = obj;
        apply_defaults(kind, &mut obj);
        let mut causes = Vec::new();
        validate(kind, &obj, &mut causes);
        causes
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn defaults_are_upstreams() {
        let mut obj = json!({"webhooks": [{
            "name": "a.example.com",
            "clientConfig": {"service": {"namespace": "ns", "name": "svc"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        }]});
        apply_defaults(MUTATING_KIND, &mut obj);
        let h = &obj["webhooks"][0];
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["matchPolicy"], "Equivalent");
        assert_eq!(h["namespaceSelector"], json!({}));
        assert_eq!(h["objectSelector"], json!({}));
        assert_eq!(h["timeoutSeconds"], 10);
        assert_eq!(h["reinvocationPolicy"], "Never");
        assert_eq!(h["rules"][0]["scope"], "*");
        assert_eq!(h["clientConfig"]["service"]["port"], 443);
        let mut v = json!({"webhooks": [{"name": "a.example.com"}]});
        apply_defaults(VALIDATING_KIND, &mut v);
        assert!(v["webhooks"][0].get("reinvocationPolicy").is_none());
    }

    #[test]
    fn validation_messages_are_upstreams() {
        let errs = messages(
            VALIDATING_KIND,
            json!({"webhooks": [{
                "name": "short.name",
                "clientConfig": {"url": "http://example.com/x?y=1"},
                "rules": [{"operations": ["*", "CREATE"], "apiGroups": [], "apiVersions": ["v1"], "resources": ["*/*", "pods"], "scope": "Everywhere"}],
                "sideEffects": "Some",
                "timeoutSeconds": 31,
                "admissionReviewVersions": ["v2"],
            }]}),
        );
        let want = [
            "webhooks[0].name: Invalid value: \"short.name\": should be a domain with at least three segments separated by dots",
            "webhooks[0].rules[0].operations: Invalid value: [\"*\",\"CREATE\"]: if '*' is present, must not specify other operations",
            "webhooks[0].rules[0].apiGroups: Required value",
            "webhooks[0].rules[0].resources: Invalid value: [\"*/*\",\"pods\"]: if '*/*' is present, must not specify other resources",
            "webhooks[0].rules[0].scope: Unsupported value: \"Everywhere\": supported values: \"*\", \"Cluster\", \"Namespaced\"",
            "webhooks[0].sideEffects: Unsupported value: \"Some\": supported values: \"None\", \"NoneOnDryRun\"",
            "webhooks[0].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds",
            "webhooks[0].clientConfig.url: Invalid value: \"http\": 'https' is the only allowed URL scheme; desired format: https://host[/path]",
            "webhooks[0].clientConfig.url: Invalid value: \"y=1\": query parameters are not permitted in the URL",
            "webhooks[0].admissionReviewVersions: Invalid value: [\"v2\"]: must include at least one of v1, v1beta1",
        ];
        assert_eq!(errs, want, "{errs:#?}");
    }

    #[test]
    fn required_fields() {
        let errs = messages(
            MUTATING_KIND,
            json!({"webhooks": [
                {"name": "a.example.com", "clientConfig": {}},
                {"name": "a.example.com", "clientConfig": {"service": {"name": "", "namespace": "x", "path": "no-slash"}},
                 "sideEffects": "None", "admissionReviewVersions": ["v1"]},
            ]}),
        );
        let want = [
            "webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun",
            "webhooks[0].clientConfig: Required value: exactly one of url or service is required",
            "webhooks[0].admissionReviewVersions: Required value: must specify one of v1, v1beta1",
            "webhooks[1].clientConfig.service.name: Required value: service name is required",
            "webhooks[1].clientConfig.service.path: Invalid value: \"no-slash\": must start with a '/'",
            "webhooks[1].name: Duplicate value: \"a.example.com\"",
        ];
        assert_eq!(errs, want, "{errs:#?}");
    }
}
