//! Validation and defaults of the RBAC objects, as kube-apiserver's
//! `pkg/apis/rbac/validation` and `rbac/v1` defaults: every rule has verbs; a rule is
//! either about resources (with apiGroups and resources) or about non-resource URLs
//! (never both, and never in a Role); an aggregationRule has selectors; a binding's
//! roleRef names a Role or ClusterRole of `rbac.authorization.k8s.io` and does not
//! change; subjects are Users, Groups or ServiceAccounts (with a namespace outside a
//! namespace). Subjects' apiGroup defaults as upstream's `SetDefaults_Subject`.

use serde_json::{Value, json};

use crate::apiserver::status::Cause;

const GROUP: &str = "rbac.authorization.k8s.io";

fn required(field: String, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        field,
        message: if detail.is_empty() {
            "Required value".into()
        } else {
            format!("Required value: {detail}")
        },
    }
}

fn not_supported(field: String, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    Cause {
        reason: "FieldValueNotSupported",
        field,
        message: format!(
            "Unsupported value: \"{value}\": supported values: {}",
            list.join(", ")
        ),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Go's `%#v` of a `[]string`: `[]string{"/healthz"}`.
fn go_strings(list: &[String]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|s| super::super::authz::rules::go_quote(s))
        .collect();
    format!("[]string{{{}}}", items.join(", "))
}

/// `ValidatePolicyRule`.
fn rule(rule: &Value, path: &str, namespaced: bool, causes: &mut Vec<Cause>) {
    if strings(rule.get("verbs")).is_empty() {
        causes.push(required(
            format!("{path}.verbs"),
            "verbs must contain at least one value",
        ));
    }
    let urls = strings(rule.get("nonResourceURLs"));
    let groups = strings(rule.get("apiGroups"));
    let resources = strings(rule.get("resources"));
    if !urls.is_empty() {
        if namespaced {
            causes.push(Cause::invalid(
                format!("{path}.nonResourceURLs"),
                format!(
                    "Invalid value: {}: namespaced rules cannot apply to non-resource URLs",
                    go_strings(&urls)
                ),
            ));
        }
        if !groups.is_empty()
            || !resources.is_empty()
            || !strings(rule.get("resourceNames")).is_empty()
        {
            causes.push(Cause::invalid(
                format!("{path}.nonResourceURLs"),
                format!(
                    "Invalid value: {}: rules cannot apply to both regular resources and non-resource URLs",
                    go_strings(&urls)
                ),
            ));
        }
        return;
    }
    if groups.is_empty() {
        causes.push(required(
            format!("{path}.apiGroups"),
            "resource rules must supply at least one api group",
        ));
    }
    if resources.is_empty() {
        causes.push(required(
            format!("{path}.resources"),
            "resource rules must supply at least one resource",
        ));
    }
}

fn subject(s: &Value, path: &str, namespaced: bool, causes: &mut Vec<Cause>) {
    let get = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or_default();
    if get("name").is_empty() {
        causes.push(required(format!("{path}.name"), ""));
    }
    match get("kind") {
        "ServiceAccount" => {
            if !get("apiGroup").is_empty() {
                causes.push(not_supported(
                    format!("{path}.apiGroup"),
                    get("apiGroup"),
                    &[""],
                ));
            }
            if !namespaced && get("namespace").is_empty() {
                causes.push(required(format!("{path}.namespace"), ""));
            }
        }
        "User" | "Group" => {
            if get("apiGroup") != GROUP {
                causes.push(not_supported(
                    format!("{path}.apiGroup"),
                    get("apiGroup"),
                    &[GROUP],
                ));
            }
        }
        other => causes.push(not_supported(
            format!("{path}.kind"),
            other,
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

/// Validates a Role, ClusterRole, RoleBinding or ClusterRoleBinding.
pub fn validate(kind: &str, obj: &Value, causes: &mut Vec<Cause>) {
    let namespaced = matches!(kind, "Role" | "RoleBinding");
    match kind {
        "Role" | "ClusterRole" => {
            if let Some(rules) = obj.get("rules").and_then(Value::as_array) {
                for (i, r) in rules.iter().enumerate() {
                    rule(r, &format!("rules[{i}]"), namespaced, causes);
                }
            }
            if let Some(agg) = obj.get("aggregationRule").filter(|a| !a.is_null())
                && agg
                    .get("clusterRoleSelectors")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
            {
                causes.push(required(
                    "aggregationRule.clusterRoleSelectors".into(),
                    "at least one clusterRoleSelector required if aggregationRule is non-nil",
                ));
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let role_ref = obj.get("roleRef").unwrap_or(&Value::Null);
            let get = |k: &str| role_ref.get(k).and_then(Value::as_str).unwrap_or_default();
            if get("apiGroup") != GROUP {
                causes.push(not_supported(
                    "roleRef.apiGroup".into(),
                    get("apiGroup"),
                    &[GROUP],
                ));
            }
            let kinds: &[&str] = if namespaced {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            if !kinds.contains(&get("kind")) {
                causes.push(not_supported("roleRef.kind".into(), get("kind"), kinds));
            }
            if get("name").is_empty() {
                causes.push(required("roleRef.name".into(), ""));
            }
            if let Some(subjects) = obj.get("subjects").and_then(Value::as_array) {
                for (i, s) in subjects.iter().enumerate() {
                    subject(s, &format!("subjects[{i}]"), namespaced, causes);
                }
            }
        }
        _ => {}
    }
}

/// A binding's roleRef cannot change (`ValidateRoleBindingUpdate`).
pub fn validate_update(kind: &str, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    if matches!(kind, "RoleBinding" | "ClusterRoleBinding")
        && old.get("roleRef") != new.get("roleRef")
    {
        let r = new.get("roleRef").unwrap_or(&Value::Null);
        let get = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
        causes.push(Cause::invalid(
            "roleRef",
            format!(
                "Invalid value: rbac.RoleRef{{APIGroup:\"{}\", Kind:\"{}\", Name:\"{}\"}}: cannot change roleRef",
                get("apiGroup"),
                get("kind"),
                get("name")
            ),
        ));
    }
}

/// Subjects' apiGroup: `rbac.authorization.k8s.io` for Users and Groups, none for
/// ServiceAccounts.
pub fn default_subjects(obj: &mut Value) {
    if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects {
            let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
            let unset = s
                .get("apiGroup")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            if unset && matches!(kind, "User" | "Group") {
                s["apiGroup"] = json!(GROUP);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(kind: &str, obj: Value) -> Vec<String> {
        let mut out = Vec::new();
        validate(kind, &obj, &mut out);
        out.iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn rules_and_bindings_are_validated_as_upstream() {
        assert_eq!(
            causes(
                "ClusterRole",
                json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]})
            ),
            Vec::<String>::new(),
            "URL rules are fine in a ClusterRole"
        );
        assert_eq!(
            causes(
                "Role",
                json!({"rules": [{"verbs": ["get"], "apiGroups": [""]}]})
            ),
            [
                "rules[0].resources: Required value: resource rules must supply at least one resource"
            ]
        );
        assert_eq!(
            causes(
                "ClusterRole",
                json!({"aggregationRule": {"clusterRoleSelectors": []}})
            ),
            [
                "aggregationRule.clusterRoleSelectors: Required value: at least one clusterRoleSelector required if aggregationRule is non-nil"
            ]
        );
        let binding = |kind: &str, subject: Value| {
            causes(
                kind,
                json!({
                    "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"},
                    "subjects": [subject],
                }),
            )
        };
        assert_eq!(
            binding(
                "ClusterRoleBinding",
                json!({"kind": "ServiceAccount", "name": "sa"})
            ),
            [
                "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
                "subjects[0].namespace: Required value",
            ]
        );
        assert_eq!(
            binding("RoleBinding", json!({"kind": "Robot", "name": "x"})),
            [
                "subjects[0].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\""
            ]
        );
        assert_eq!(
            binding(
                "RoleBinding",
                json!({"kind": "User", "name": "u", "apiGroup": GROUP})
            ),
            Vec::<String>::new()
        );
        let mut update = Vec::new();
        validate_update(
            "RoleBinding",
            &json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "a"}}),
            &json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "b"}}),
            &mut update,
        );
        assert_eq!(
            update[0].message,
            "Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"b\"}: cannot change roleRef"
        );
    }

    #[test]
    fn subjects_api_group_defaults() {
        let mut obj = json!({"subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "s"}]});
        default_subjects(&mut obj);
        assert_eq!(obj["subjects"][0]["apiGroup"], GROUP);
        assert!(obj["subjects"][1].get("apiGroup").is_none());
    }
}
