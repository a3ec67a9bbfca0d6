//! Quota scopes: `spec.scopes` and `spec.scopeSelector` as one list of
//! `ScopedResourceSelectorRequirement`s (`getScopeSelectorsFromQuota`), and which
//! scopes and resource names go together (`IsResourceQuotaScopeValidForResource`).

use serde_json::Value;

pub const TERMINATING: &str = "Terminating";
pub const NOT_TERMINATING: &str = "NotTerminating";
pub const BEST_EFFORT: &str = "BestEffort";
pub const NOT_BEST_EFFORT: &str = "NotBestEffort";
pub const PRIORITY_CLASS: &str = "PriorityClass";
pub const CROSS_NAMESPACE_POD_AFFINITY: &str = "CrossNamespacePodAffinity";

/// The scopes a quota may name.
pub const STANDARD: &[&str] = &[
    TERMINATING,
    NOT_TERMINATING,
    BEST_EFFORT,
    NOT_BEST_EFFORT,
    PRIORITY_CLASS,
    CROSS_NAMESPACE_POD_AFFINITY,
];

/// One scope requirement (`operator` is `In`, `NotIn`, `Exists` or `DoesNotExist`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub scope: String,
    pub operator: String,
    pub values: Vec<String>,
}

impl Selector {
    /// `operator` over the one "label" a pod has for the scope (its priority class
    /// name, when it has one) — a label selector's semantics, so `NotIn` holds for a
    /// pod without one.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        match self.operator.as_str() {
            "In" => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            "NotIn" => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    }
}

/// The quota's scopes (each as an `Exists` requirement) and its scope selector's
/// expressions, in that order.
pub fn selectors(spec: &Value) -> Vec<Selector> {
    let scopes = spec
        .get("scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| Selector {
            scope: s.to_owned(),
            operator: "Exists".into(),
            values: Vec::new(),
        });
    let expressions = spec
        .pointer("/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Selector {
            scope: text(e, "scopeName"),
            operator: text(e, "operator"),
            values: e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        });
    scopes.chain(expressions).collect()
}

fn text(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The resource names a quota may limit without a domain prefix
/// (`standardQuotaResources`, plus the hugepages prefixes).
pub fn is_standard_resource(name: &str) -> bool {
    const STANDARD_RESOURCES: &[&str] = &[
        "cpu",
        "memory",
        "ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.storage",
        "requests.ephemeral-storage",
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "pods",
        "resourcequotas",
        "services",
        "replicationcontrollers",
        "secrets",
        "persistentvolumeclaims",
        "configmaps",
        "services.nodeports",
        "services.loadbalancers",
    ];
    STANDARD_RESOURCES.contains(&name)
        || name.starts_with("hugepages-")
        || name.starts_with("requests.hugepages-")
}

/// Resource names counted in whole objects (`IsIntegerResourceName`).
pub fn is_integer_resource(name: &str) -> bool {
    matches!(
        name,
        "pods"
            | "resourcequotas"
            | "services"
            | "replicationcontrollers"
            | "secrets"
            | "configmaps"
            | "persistentvolumeclaims"
            | "services.nodeports"
            | "services.loadbalancers"
    )
}

/// `IsResourceQuotaScopeValidForResource`: pod scopes go with pod counts and pod
/// compute resources only; `BestEffort` with the pod count only.
pub fn valid_for_resource(scope: &str, resource: &str) -> bool {
    let pod_count = resource == "pods";
    let pod_compute = matches!(
        resource,
        "cpu" | "memory" | "limits.cpu" | "limits.memory" | "requests.cpu" | "requests.memory"
    );
    match scope {
        TERMINATING
        | NOT_TERMINATING
        | NOT_BEST_EFFORT
        | PRIORITY_CLASS
        | CROSS_NAMESPACE_POD_AFFINITY => pod_count || pod_compute,
        BEST_EFFORT => pod_count,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scopes_and_the_selector_read_as_one_list() {
        let spec = json!({
            "scopes": ["BestEffort"],
            "scopeSelector": {"matchExpressions": [
                {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]},
            ]},
        });
        let s = selectors(&spec);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].operator, "Exists");
        assert!(s[1].matches_value(Some("high")));
        assert!(!s[1].matches_value(Some("low")));
        assert!(!s[1].matches_value(None));
        let not_in = Selector {
            operator: "NotIn".into(),
            ..s[1].clone()
        };
        assert!(not_in.matches_value(None), "NotIn holds without the label");
        assert!(!not_in.matches_value(Some("high")));
        assert!(valid_for_resource(BEST_EFFORT, "pods"));
        assert!(!valid_for_resource(BEST_EFFORT, "requests.cpu"));
        assert!(valid_for_resource(TERMINATING, "limits.memory"));
        assert!(!valid_for_resource(TERMINATING, "services"));
    }
}
