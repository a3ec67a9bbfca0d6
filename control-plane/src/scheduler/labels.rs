//! Label selectors (`metav1.LabelSelector`) over pods, and the namespaces a pod
//! affinity term or spread constraint looks at.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `sel` selects `labels`. An empty selector selects everything; a missing one
/// (None) nothing.
pub fn matches(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel else {
        return false;
    };
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let have = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or(&[]);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => !have.is_some_and(|v| values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

pub fn pod_labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

pub fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// Whether `other` is in the namespaces a term of `owner` names (its own namespace
/// when the term names none; a namespaceSelector is treated as "all namespaces" when
/// empty, since namespace labels are not in the scheduler's view yet).
pub fn in_term_namespaces(
    owner: &Pod,
    namespaces: Option<&Vec<String>>,
    namespace_selector: Option<&LabelSelector>,
    other: &Pod,
) -> bool {
    let ns = namespace(other);
    let listed = namespaces
        .map(|v| v.iter().any(|n| n == ns))
        .unwrap_or(false);
    let selected_all = namespace_selector.is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    });
    if namespaces.is_none_or(|v| v.is_empty()) && namespace_selector.is_none() {
        return ns == namespace(owner);
    }
    listed || selected_all
}
