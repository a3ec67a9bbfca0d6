//! InterPodAffinity (required terms): the pod's affinity terms must find a matching pod
//! in the candidate's topology domain (unless no pod anywhere matches and the pod
//! matches its own term: the first of a group), its anti-affinity terms must find none,
//! and no pod already placed may have an anti-affinity term against it in that domain.

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};

use super::Filter;
use crate::scheduler::labels::{in_term_namespaces, matches, pod_labels};
use crate::scheduler::node_info::NodeInfo;

pub const AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

/// Whether `term` (of `owner`) selects `other`.
pub fn term_selects(owner: &Pod, term: &PodAffinityTerm, other: &Pod) -> bool {
    in_term_namespaces(
        owner,
        term.namespaces.as_ref(),
        term.namespace_selector.as_ref(),
        other,
    ) && matches(term.label_selector.as_ref(), &pod_labels(other))
}

/// The nodes in the same topology domain as `node` for `key` (none when `node` lacks it).
pub fn same_domain<'a>(
    node: &NodeInfo,
    key: &str,
    cluster: impl IntoIterator<Item = &'a NodeInfo>,
) -> Vec<&'a NodeInfo> {
    let Some(value) = node.labels().get(key).cloned() else {
        return Vec::new();
    };
    cluster
        .into_iter()
        .filter(|n| n.labels().get(key) == Some(&value))
        .collect()
}

pub fn required_affinity(pod: &Pod) -> &[PodAffinityTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or(&[])
}

pub fn required_anti_affinity(pod: &Pod) -> &[PodAffinityTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or(&[])
}

#[derive(Debug)]
pub struct InterPodAffinity;

impl Filter for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn skip(&self, pod: &Pod, cluster: &[NodeInfo]) -> bool {
        required_affinity(pod).is_empty()
            && required_anti_affinity(pod).is_empty()
            && cluster
                .iter()
                .all(|n| n.pods_with_required_anti_affinity == 0)
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, cluster: &[NodeInfo]) -> Result<(), Vec<String>> {
        // Existing pods' anti-affinity against this pod.
        for other_node in cluster
            .iter()
            .filter(|n| n.pods_with_required_anti_affinity > 0)
        {
            for other in &other_node.pods {
                for term in required_anti_affinity(other) {
                    if term_selects(other, term, pod)
                        && other_node.labels().contains_key(&term.topology_key)
                        && other_node.labels().get(&term.topology_key)
                            == node.labels().get(&term.topology_key)
                    {
                        return Err(vec![EXISTING_ANTI_AFFINITY.into()]);
                    }
                }
            }
        }
        for term in required_affinity(pod) {
            let domain = same_domain(node, &term.topology_key, cluster);
            let found = domain
                .iter()
                .any(|n| n.pods.iter().any(|p| term_selects(pod, term, p)));
            if !found {
                let anywhere = cluster
                    .iter()
                    .any(|n| n.pods.iter().any(|p| term_selects(pod, term, p)));
                let self_match = term_selects(pod, term, pod);
                if anywhere || !self_match || !node.labels().contains_key(&term.topology_key) {
                    return Err(vec![AFFINITY.into()]);
                }
            }
        }
        for term in required_anti_affinity(pod) {
            let domain = same_domain(node, &term.topology_key, cluster);
            if domain
                .iter()
                .any(|n| n.pods.iter().any(|p| term_selects(pod, term, p)))
            {
                return Err(vec![ANTI_AFFINITY.into()]);
            }
        }
        Ok(())
    }
}
