//! The policy objects themselves: upstream's defaults
//! (`pkg/apis/admissionregistration/v1/defaults.go`: `failurePolicy: Fail`,
//! `matchPolicy: Equivalent`, empty namespace and object selectors, rule scope `*`)
//! and validation (`pkg/apis/admissionregistration/validation`), with every CEL
//! expression compiled and an expression that does not compile refused with 422 at
//! its field (`spec.validations[0].expression: Invalid value: "…": compilation
//! failed: …`).

use serde_json::{Map, Value, json};

use super::cel::{Decls, Returns, compile};
use crate::apiserver::admission::validation::qualified_name_error;
use crate::apiserver::admission::webhook::validation::validate_rule;
use crate::apiserver::status::Cause;

fn default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_owned(), value);
    }
}

fn default_match_resources(m: &mut Value) {
    let Some(m) = m.as_object_mut() else {
        return;
    };
    default(m, "matchPolicy", json!("Equivalent"));
    default(m, "namespaceSelector", json!({}));
    default(m, "objectSelector", json!({}));
    for rules in ["resourceRules", "excludeResourceRules"] {
        for rule in m
            .get_mut(rules)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(rule) = rule.as_object_mut() {
                default(rule, "scope", json!("*"));
            }
        }
    }
}

/// Upstream's defaults for a ValidatingAdmissionPolicy or its binding.
pub fn apply_defaults(kind: &str, obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let field = match kind {
        "ValidatingAdmissionPolicy" => {
            default(spec, "failurePolicy", json!("Fail"));
            "matchConstraints"
        }
        _ => "matchResources",
    };
    if let Some(m) = spec.get_mut(field) {
        default_match_resources(m);
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn quoted(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn not_supported(field: String, value: &str, supported: &[&str]) -> Cause {
    Cause {
        reason: "FieldValueNotSupported",
        field,
        message: format!(
            "Unsupported value: \"{value}\": supported values: {}",
            quoted(supported)
        ),
    }
}

fn invalid_value(field: String, value: &Value, message: &str) -> Cause {
    let shown = match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    Cause::invalid(field, format!("Invalid value: {shown}: {message}"))
}

fn required(field: String, detail: &str) -> Cause {
    let mut c = Cause::required(field);
    if !detail.is_empty() {
        c.message = format!("Required value: {detail}");
    }
    c
}

/// A CEL expression, compiled: a cause if it does not.
fn expression(
    causes: &mut Vec<Cause>,
    field: String,
    source: &str,
    decls: &Decls,
    returns: Returns,
) {
    if let Err(e) = compile(source, decls, returns) {
        causes.push(invalid_value(field, &json!(source), &e));
    }
}

fn validate_selector(sel: Option<&Value>, path: String, causes: &mut Vec<Cause>) {
    let Some(sel) = sel.filter(|s| !s.is_null()) else {
        causes.push(required(path, ""));
        return;
    };
    for (i, e) in list(sel, "matchExpressions").iter().enumerate() {
        let op = text(e, "operator");
        let values = list(e, "values");
        let field = format!("{path}.matchExpressions[{i}]");
        match op {
            "In" | "NotIn" if values.is_empty() => causes.push(required(
                format!("{field}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => causes.push(Cause::forbidden(
                format!("{field}.values"),
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(invalid_value(
                format!("{field}.operator"),
                &json!(other),
                "not a valid selector operator",
            )),
        }
    }
}

fn validate_match_resources(m: &Value, path: &str, causes: &mut Vec<Cause>) {
    match m.get("matchPolicy").and_then(Value::as_str) {
        None => causes.push(required(format!("{path}.matchPolicy"), "")),
        Some("Exact" | "Equivalent") => {}
        Some(other) => causes.push(not_supported(
            format!("{path}.matchPolicy"),
            other,
            &["Equivalent", "Exact"],
        )),
    }
    validate_selector(
        m.get("namespaceSelector"),
        format!("{path}.namespaceSelector"),
        causes,
    );
    validate_selector(
        m.get("objectSelector"),
        format!("{path}.objectSelector"),
        causes,
    );
    for key in ["resourceRules", "excludeResourceRules"] {
        for (i, rule) in list(m, key).iter().enumerate() {
            validate_rule(rule, &format!("{path}.{key}[{i}]"), causes);
        }
    }
}

fn is_cel_identifier(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && !RESERVED.contains(&name)
}

/// `ValidateValidatingAdmissionPolicy` for the spec (metadata is checked as every
/// object's).
fn validate_policy(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let policy_name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match spec.get("failurePolicy").and_then(Value::as_str) {
        None => causes.push(required("spec.failurePolicy".into(), "")),
        Some("Fail" | "Ignore") => {}
        Some(other) => causes.push(not_supported(
            "spec.failurePolicy".into(),
            other,
            &["Fail", "Ignore"],
        )),
    }
    let params = spec.get("paramKind").is_some_and(|p| !p.is_null());
    if let Some(pk) = spec.get("paramKind").filter(|p| !p.is_null()) {
        if text(pk, "apiVersion").is_empty() {
            causes.push(required("spec.paramKind.apiVersion".into(), ""));
        } else if text(pk, "apiVersion").matches('/').count() > 1 {
            let v = text(pk, "apiVersion");
            causes.push(invalid_value(
                "spec.paramKind.apiVersion".into(),
                &json!(v),
                &format!("unexpected GroupVersion string: {v}"),
            ));
        }
        if text(pk, "kind").is_empty() {
            causes.push(required("spec.paramKind.kind".into(), ""));
        }
    }
    match spec.get("matchConstraints").filter(|m| !m.is_null()) {
        None => causes.push(required("spec.matchConstraints".into(), "")),
        Some(m) => {
            validate_match_resources(m, "spec.matchConstraints", causes);
            if list(m, "resourceRules").is_empty() {
                causes.push(required("spec.matchConstraints.resourceRules".into(), ""));
            }
        }
    }
    fn with(params: bool, variables: Option<&[String]>, authorizer: bool) -> Decls<'_> {
        Decls {
            params,
            authorizer,
            variables,
        }
    }
    let mut names = Vec::new();
    for (i, c) in list(spec, "matchConditions").iter().enumerate() {
        let path = format!("spec.matchConditions[{i}]");
        let expr = text(c, "expression");
        if expr.trim().is_empty() {
            causes.push(required(format!("{path}.expression"), ""));
        } else {
            expression(
                causes,
                format!("{path}.expression"),
                expr,
                &with(params, None, true),
                Returns::Bool,
            );
        }
        let name = text(c, "name");
        if name.is_empty() {
            causes.push(required(format!("{path}.name"), ""));
        } else {
            if let Some(msg) = qualified_name_error(name) {
                causes.push(Cause::invalid(format!("{path}.name"), msg));
            }
            if names.contains(&name) {
                causes.push(Cause::duplicate(format!("{path}.name"), name));
            } else {
                names.push(name);
            }
        }
    }
    let variables: Vec<String> = list(spec, "variables")
        .iter()
        .map(|v| text(v, "name").to_owned())
        .collect();
    let declared = (!variables.is_empty()).then_some(variables.as_slice());
    for (i, v) in list(spec, "variables").iter().enumerate() {
        let path = format!("spec.variables[{i}]");
        let name = text(v, "name");
        if name.trim().is_empty() {
            causes.push(required(format!("{path}.name"), "name is not specified"));
        } else if !is_cel_identifier(name) {
            causes.push(invalid_value(
                format!("{path}.name"),
                &json!(name),
                "name is not a valid CEL identifier",
            ));
        }
        let expr = text(v, "expression");
        if expr.trim().is_empty() {
            causes.push(required(
                format!("{path}.expression"),
                "expression is not specified",
            ));
        } else {
            // A variable reads only those declared before it.
            let earlier = &variables[..i];
            expression(
                causes,
                format!("{path}.expression"),
                expr,
                &with(params, Some(earlier), true),
                Returns::Any,
            );
        }
    }
    let validations = list(spec, "validations");
    let annotations = list(spec, "auditAnnotations");
    if validations.is_empty() && annotations.is_empty() {
        let msg = "validations or auditAnnotations must contain at least one item";
        causes.push(required("spec.validations".into(), msg));
        causes.push(required("spec.auditAnnotations".into(), msg));
    }
    for (i, v) in validations.iter().enumerate() {
        let path = format!("spec.validations[{i}]");
        let expr = text(v, "expression");
        if expr.trim().is_empty() {
            causes.push(required(
                format!("{path}.expression"),
                "expression is not specified",
            ));
        } else {
            expression(
                causes,
                format!("{path}.expression"),
                expr,
                &with(params, declared, true),
                Returns::Bool,
            );
        }
        if let Some(me) = v.get("messageExpression").and_then(Value::as_str) {
            if !me.is_empty() && me.trim().is_empty() {
                causes.push(invalid_value(
                    format!("{path}.messageExpression"),
                    &json!(me),
                    "must be non-empty if specified",
                ));
            } else if !me.trim().is_empty() {
                expression(
                    causes,
                    format!("{path}.messageExpression"),
                    me,
                    &with(params, declared, false),
                    Returns::String,
                );
            }
        }
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            if !m.is_empty() && m.trim().is_empty() {
                causes.push(invalid_value(
                    format!("{path}.message"),
                    &json!(m),
                    "message must be non-empty if specified",
                ));
            } else if m.trim().contains(['\n', '\r']) {
                causes.push(invalid_value(
                    format!("{path}.message"),
                    &json!(m),
                    "message must not contain line breaks",
                ));
            }
        }
        if let Some(r) = v.get("reason").and_then(Value::as_str)
            && !matches!(r, "Forbidden" | "Invalid" | "RequestEntityTooLarge")
        {
            causes.push(not_supported(
                format!("{path}.reason"),
                r,
                &["Forbidden", "Invalid", "RequestEntityTooLarge"],
            ));
        }
    }
    if annotations.len() > 20 {
        causes.push(Cause::invalid(
            "spec.auditAnnotations",
            "must not have more than 20 auditAnnotations",
        ));
    }
    let mut keys = Vec::new();
    for (i, a) in annotations.iter().enumerate() {
        let path = format!("spec.auditAnnotations[{i}]");
        let key = text(a, "key");
        if key.is_empty() {
            causes.push(required(format!("{path}.key"), ""));
        } else if let Some(msg) = qualified_name_error(&format!("{policy_name}/{key}")) {
            // The annotation is published as `<policy name>/<key>`.
            causes.push(Cause::invalid(format!("{path}.key"), msg));
        }
        if keys.contains(&key) {
            causes.push(Cause::duplicate(format!("{path}.key"), key));
        }
        keys.push(key);
        let expr = text(a, "valueExpression");
        if expr.trim().is_empty() {
            causes.push(required(
                format!("{path}.valueExpression"),
                "valueExpression is not specified",
            ));
        } else if expr.trim().len() > 5 * 1024 {
            causes.push(required(
                format!("{path}.valueExpression"),
                "must not exceed 5120 bytes in length",
            ));
        } else {
            expression(
                causes,
                format!("{path}.valueExpression"),
                expr,
                &with(params, declared, true),
                Returns::Any,
            );
        }
    }
}

fn validate_binding(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let policy = text(spec, "policyName");
    if policy.is_empty() {
        causes.push(required("spec.policyName".into(), ""));
    } else if !super::super::validation::is_dns_subdomain(policy) {
        causes.push(Cause::invalid(
            "spec.policyName",
            super::super::validation::dns_subdomain_msg(policy),
        ));
    }
    if let Some(pr) = spec.get("paramRef").filter(|p| !p.is_null()) {
        let name = text(pr, "name");
        let selector = pr.get("selector").filter(|s| !s.is_null());
        if !name.is_empty() && selector.is_some() {
            let msg = "Forbidden: name and selector are mutually exclusive";
            causes.push(Cause::forbidden("spec.paramRef.name", msg));
            causes.push(Cause::forbidden("spec.paramRef.selector", msg));
        }
        if let Some(sel) = selector {
            validate_selector(Some(sel), "spec.paramRef.selector".into(), causes);
        }
        if name.is_empty() && selector.is_none() {
            causes.push(required(
                "spec.paramRef".into(),
                "one of name or selector must be specified",
            ));
        }
        match pr.get("parameterNotFoundAction").and_then(Value::as_str) {
            None | Some("") => {
                causes.push(required("spec.paramRef.parameterNotFoundAction".into(), ""))
            }
            Some("Allow" | "Deny") => {}
            Some(other) => causes.push(not_supported(
                "spec.paramRef.parameterNotFoundAction".into(),
                other,
                &["Deny", "Allow"],
            )),
        }
    }
    if let Some(m) = spec.get("matchResources").filter(|m| !m.is_null()) {
        // Upstream's path has this spelling.
        validate_match_resources(m, "spec.matchResouces", causes);
    }
    let actions: Vec<&str> = list(spec, "validationActions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for (i, a) in actions.iter().enumerate() {
        if !matches!(*a, "Deny" | "Warn" | "Audit") {
            causes.push(not_supported(
                format!("spec.validationActions[{i}]"),
                a,
                &["Audit", "Deny", "Warn"],
            ));
        }
        if actions[..i].contains(a) {
            causes.push(Cause::duplicate(format!("spec.validationActions[{i}]"), a));
        }
    }
    if actions.contains(&"Deny") && actions.contains(&"Warn") {
        causes.push(invalid_value(
            "spec.validationActions".into(),
            &json!(actions),
            "must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)",
        ));
    }
    if actions.is_empty() {
        causes.push(required(
            "spec.validationActions".into(),
            "at least one validation action is required",
        ));
    }
}

/// The spec checks of a ValidatingAdmissionPolicy or its binding.
pub fn validate(kind: &str, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    match kind {
        "ValidatingAdmissionPolicy" => validate_policy(obj, &mut causes),
        "ValidatingAdmissionPolicyBinding" => validate_binding(obj, &mut causes),
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(validations: Value) -> Value {
        let mut p = json!({
            "metadata": {"name": "p"},
            "spec": {
                "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                    "operations": ["CREATE"], "resources": ["deployments"]}]},
                "validations": validations,
            }
        });
        apply_defaults("ValidatingAdmissionPolicy", &mut p);
        p
    }

    #[test]
    fn defaults_are_upstreams() {
        let p = policy(json!([{"expression": "true"}]));
        assert_eq!(p["spec"]["failurePolicy"], "Fail");
        let m = &p["spec"]["matchConstraints"];
        assert_eq!(m["matchPolicy"], "Equivalent");
        assert_eq!(m["namespaceSelector"], json!({}));
        assert_eq!(m["objectSelector"], json!({}));
        assert_eq!(m["resourceRules"][0]["scope"], "*");
        assert!(validate("ValidatingAdmissionPolicy", &p).is_empty());
    }

    #[test]
    fn invalid_cel_names_the_field() {
        let p =
            policy(json!([{"expression": "object.spec.replicas <="}, {"expression": "nope > 1"}]));
        let causes = validate("ValidatingAdmissionPolicy", &p);
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert_eq!(causes[0].field, "spec.validations[0].expression");
        assert!(
            causes[0].message.starts_with(
                "Invalid value: \"object.spec.replicas <=\": compilation failed: ERROR: <input>:1:"
            ),
            "{}",
            causes[0].message
        );
        assert_eq!(causes[1].field, "spec.validations[1].expression");
        assert!(
            causes[1]
                .message
                .contains("undeclared reference to 'nope' (in container '')"),
            "{}",
            causes[1].message
        );
        // params only with a paramKind; a literal string is no condition.
        let p = policy(json!([{"expression": "params.max > 1"}, {"expression": "'yes'"}]));
        let causes = validate("ValidatingAdmissionPolicy", &p);
        assert!(
            causes[0]
                .message
                .contains("undeclared reference to 'params'"),
            "{causes:?}"
        );
        assert!(
            causes[1].message.ends_with("must evaluate to bool"),
            "{causes:?}"
        );
    }

    #[test]
    fn bindings_need_actions_and_a_policy() {
        let b = json!({"spec": {"validationActions": ["Deny", "Warn"]}});
        let causes = validate("ValidatingAdmissionPolicyBinding", &b);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.policyName", "spec.validationActions"],
            "{causes:?}"
        );
        let b = json!({"spec": {"policyName": "p", "validationActions": ["Deny"],
            "paramRef": {"name": "x", "parameterNotFoundAction": "Deny"}}});
        assert!(validate("ValidatingAdmissionPolicyBinding", &b).is_empty());
    }
}
