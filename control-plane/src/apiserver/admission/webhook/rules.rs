//! Which requests a webhook is called for, as upstream's predicates
//! (`k8s.io/apiserver/pkg/admission/plugin/webhook/predicates/{rules,namespace,object}`):
//! a rule matches an operation, API group, version and resource (`*` for all,
//! `pods/status` for a subresource, `*/*` for everything, `pods/*` for a resource and
//! all its subresources; a bare `*` for main resources only) and a scope; the
//! namespace selector is matched against the labels of the request's namespace (for a
//! Namespace itself, created or updated, against its own); the object selector against
//! the new or the old object's labels. Requests on the admission configuration
//! resources are never sent to webhooks.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::RuleWithOperations;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

/// The admission operation of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
        }
    }
}

/// What a rule is matched against: the request's operation, resource (possibly an
/// equivalent one) and namespace.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub operation: Operation,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    /// `""` for cluster-scoped requests.
    pub namespace: &'a str,
}

impl Target<'_> {
    fn is_namespace_resource(&self) -> bool {
        self.group.is_empty() && self.version == "v1" && self.resource == "namespaces"
    }
}

fn exact_or_wildcard(items: &[String], requested: &str) -> bool {
    items.iter().any(|i| i == "*" || i == requested)
}

/// `rules.Matcher.Matches`.
pub fn rule_matches(rule: &RuleWithOperations, t: &Target) -> bool {
    let list = |v: &Option<Vec<String>>| v.as_deref().unwrap_or_default().to_vec();
    let scope = match rule.scope.as_deref() {
        None | Some("*") => true,
        // A Namespace object is cluster-scoped even though its requests carry its name
        // as their namespace.
        Some("Namespaced") => !t.is_namespace_resource() && !t.namespace.is_empty(),
        Some("Cluster") => t.is_namespace_resource() || t.namespace.is_empty(),
        Some(_) => false,
    };
    let operation = rule
        .operations
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|op| op == "*" || op == t.operation.as_str());
    let resource = rule
        .resources
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|r| {
            let (res, sub) = r.split_once('/').unwrap_or((r, ""));
            (res == "*" || res == t.resource) && (sub == "*" || sub == t.subresource)
        });
    scope
        && operation
        && exact_or_wildcard(&list(&rule.api_groups), t.group)
        && exact_or_wildcard(&list(&rule.api_versions), t.version)
        && resource
}

/// Whether a request on `group`/`resource` is exempt from webhooks
/// (`rules.IsExemptAdmissionConfigurationResource`): webhooks and admission policies
/// must not be able to lock themselves in.
pub fn is_exempt(group: &str, resource: &str) -> bool {
    group == "admissionregistration.k8s.io"
        && matches!(
            resource,
            "validatingwebhookconfigurations"
                | "mutatingwebhookconfigurations"
                | "validatingadmissionpolicies"
                | "validatingadmissionpolicybindings"
                | "mutatingadmissionpolicies"
                | "mutatingadmissionpolicybindings"
        )
}

/// An object's `metadata.labels`.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a selector selects nothing more than everything (`{}` or absent).
pub fn selector_is_empty(sel: Option<&LabelSelector>) -> bool {
    sel.is_none_or(|s| {
        s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
            && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
    })
}

/// `metav1.LabelSelectorAsSelector(sel).Matches(labels)`; an unknown operator selects
/// nothing (validation refuses it).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = sel.match_expressions.iter().flatten().all(|req| {
        let value = labels.get(&req.key);
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// `object.Matcher.MatchObjectSelector`: the new or the old object's labels.
pub fn object_selector_matches(
    sel: Option<&LabelSelector>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> bool {
    let Some(sel) = sel.filter(|s| !selector_is_empty(Some(s))) else {
        return true;
    };
    [object, old]
        .into_iter()
        .flatten()
        .any(|o| selector_matches(sel, &labels_of(o)))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn rule(
        ops: &[&str],
        groups: &[&str],
        versions: &[&str],
        resources: &[&str],
    ) -> RuleWithOperations {
        let v = |s: &[&str]| Some(s.iter().map(|x| (*x).to_owned()).collect());
        RuleWithOperations {
            operations: v(ops),
            api_groups: v(groups),
            api_versions: v(versions),
            resources: v(resources),
            scope: None,
        }
    }

    fn target<'a>(
        op: Operation,
        group: &'a str,
        resource: &'a str,
        sub: &'a str,
        ns: &'a str,
    ) -> Target<'a> {
        Target {
            operation: op,
            group,
            version: "v1",
            resource,
            subresource: sub,
            namespace: ns,
        }
    }

    #[test]
    fn operations_groups_versions() {
        let r = rule(&["CREATE"], &[""], &["v1"], &["configmaps"]);
        assert!(rule_matches(
            &r,
            &target(Operation::Create, "", "configmaps", "", "ns")
        ));
        assert!(!rule_matches(
            &r,
            &target(Operation::Update, "", "configmaps", "", "ns")
        ));
        assert!(!rule_matches(
            &r,
            &target(Operation::Create, "apps", "configmaps", "", "ns")
        ));
        assert!(!rule_matches(
            &r,
            &target(Operation::Create, "", "secrets", "", "ns")
        ));
        let all = rule(&["*"], &["*"], &["*"], &["*"]);
        for op in [
            Operation::Create,
            Operation::Update,
            Operation::Delete,
            Operation::Connect,
        ] {
            assert!(rule_matches(
                &all,
                &target(op, "apps", "deployments", "", "ns")
            ));
        }
        let mut v2 = rule(&["*"], &["*"], &["v2"], &["*"]);
        assert!(!rule_matches(
            &v2,
            &target(Operation::Create, "", "pods", "", "ns")
        ));
        v2.api_versions = Some(vec!["v1".into()]);
        assert!(rule_matches(
            &v2,
            &target(Operation::Create, "", "pods", "", "ns")
        ));
    }

    #[test]
    fn subresources() {
        let main = rule(&["*"], &["*"], &["*"], &["*"]);
        assert!(!rule_matches(
            &main,
            &target(Operation::Update, "", "pods", "status", "ns")
        ));
        let everything = rule(&["*"], &["*"], &["*"], &["*/*"]);
        assert!(rule_matches(
            &everything,
            &target(Operation::Update, "", "pods", "status", "ns")
        ));
        assert!(rule_matches(
            &everything,
            &target(Operation::Update, "", "pods", "", "ns")
        ));
        let status = rule(&["*"], &[""], &["v1"], &["pods/status"]);
        assert!(rule_matches(
            &status,
            &target(Operation::Update, "", "pods", "status", "ns")
        ));
        assert!(!rule_matches(
            &status,
            &target(Operation::Update, "", "pods", "", "ns")
        ));
        assert!(!rule_matches(
            &status,
            &target(Operation::Update, "", "services", "status", "ns")
        ));
        let pods_any = rule(&["*"], &[""], &["v1"], &["pods/*"]);
        assert!(rule_matches(
            &pods_any,
            &target(Operation::Connect, "", "pods", "exec", "ns")
        ));
        // As upstream: `sub == "*"` also matches no subresource.
        assert!(rule_matches(
            &pods_any,
            &target(Operation::Create, "", "pods", "", "ns")
        ));
        let any_status = rule(&["*"], &["*"], &["*"], &["*/status"]);
        assert!(rule_matches(
            &any_status,
            &target(Operation::Update, "apps", "deployments", "status", "ns")
        ));
        assert!(!rule_matches(
            &any_status,
            &target(Operation::Update, "apps", "deployments", "scale", "ns")
        ));
    }

    #[test]
    fn scopes() {
        let mut r = rule(&["*"], &["*"], &["*"], &["*"]);
        r.scope = Some("Namespaced".into());
        assert!(rule_matches(
            &r,
            &target(Operation::Create, "", "configmaps", "", "ns")
        ));
        assert!(!rule_matches(
            &r,
            &target(Operation::Create, "", "nodes", "", "")
        ));
        // A namespace's own requests carry its name as namespace; it is still cluster-scoped.
        assert!(!rule_matches(
            &r,
            &target(Operation::Update, "", "namespaces", "", "team")
        ));
        r.scope = Some("Cluster".into());
        assert!(!rule_matches(
            &r,
            &target(Operation::Create, "", "configmaps", "", "ns")
        ));
        assert!(rule_matches(
            &r,
            &target(Operation::Create, "", "nodes", "", "")
        ));
        assert!(rule_matches(
            &r,
            &target(Operation::Update, "", "namespaces", "", "team")
        ));
        r.scope = Some("*".into());
        assert!(rule_matches(
            &r,
            &target(Operation::Create, "", "configmaps", "", "ns")
        ));
        assert!(rule_matches(
            &r,
            &target(Operation::Create, "", "nodes", "", "")
        ));
    }

    #[test]
    fn exempt_resources() {
        assert!(is_exempt(
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations"
        ));
        assert!(is_exempt(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations"
        ));
        assert!(!is_exempt("", "configmaps"));
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "front".to_owned()),
        ]
        .into();
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        };
        let sel = |ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: (!ml.is_empty()).then(|| {
                ml.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        };
        assert!(selector_matches(&sel(&[("app", "web")], vec![]), &labels));
        assert!(!selector_matches(&sel(&[("app", "db")], vec![]), &labels));
        assert!(selector_matches(
            &sel(&[], vec![req("tier", "In", &["front", "back"])]),
            &labels
        ));
        assert!(!selector_matches(
            &sel(&[], vec![req("tier", "NotIn", &["front"])]),
            &labels
        ));
        assert!(selector_matches(
            &sel(&[], vec![req("env", "NotIn", &["prod"])]),
            &labels
        ));
        assert!(selector_matches(
            &sel(&[], vec![req("app", "Exists", &[])]),
            &labels
        ));
        assert!(!selector_matches(
            &sel(&[], vec![req("app", "DoesNotExist", &[])]),
            &labels
        ));
        assert!(!selector_matches(
            &sel(&[], vec![req("app", "Bogus", &[])]),
            &labels
        ));
        assert!(selector_is_empty(Some(&sel(&[], vec![]))));
        assert!(selector_is_empty(None));

        // The object selector: either the new or the old object.
        let s = sel(&[("watch", "me")], vec![]);
        let new = serde_json::json!({"metadata": {"labels": {"watch": "me"}}});
        let old = serde_json::json!({"metadata": {}});
        assert!(object_selector_matches(Some(&s), Some(&new), Some(&old)));
        assert!(object_selector_matches(Some(&s), Some(&old), Some(&new)));
        assert!(!object_selector_matches(Some(&s), Some(&old), None));
        assert!(!object_selector_matches(Some(&s), None, None));
        assert!(object_selector_matches(Some(&sel(&[], vec![])), None, None));
    }
}
