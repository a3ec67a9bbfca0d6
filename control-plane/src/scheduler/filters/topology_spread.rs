//! PodTopologySpread (`whenUnsatisfiable: DoNotSchedule`): placing the pod must keep
//! the number of matching pods per topology domain within `maxSkew` of the least
//! loaded eligible domain. Eligible nodes are those matching the pod's node affinity
//! and selector (nodeAffinityPolicy Honor, the default) and carrying the key.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, TopologySpreadConstraint};

use super::Filter;
use super::node_affinity::pod_matches_node;
use crate::scheduler::labels::{matches, namespace, pod_labels};
use crate::scheduler::node_info::NodeInfo;

pub const REASON: &str = "node(s) didn't match pod topology spread constraints";
pub const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

pub fn constraints<'a>(pod: &'a Pod, when: &str) -> Vec<&'a TopologySpreadConstraint> {
    pod.spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.when_unsatisfiable == when)
        .collect()
}

/// Matching pods per domain value, over eligible nodes.
pub fn domain_counts<'a>(
    pod: &Pod,
    c: &TopologySpreadConstraint,
    cluster: impl IntoIterator<Item = &'a NodeInfo>,
) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for n in cluster {
        let Some(value) = n.labels().get(&c.topology_key).cloned() else {
            continue;
        };
        if !pod_matches_node(pod, n) {
            continue;
        }
        let matching = n
            .pods
            .iter()
            .filter(|p| namespace(p) == namespace(pod))
            .filter(|p| matches(c.label_selector.as_ref(), &pod_labels(p)))
            .count() as i64;
        *counts.entry(value).or_insert(0) += matching;
    }
    counts
}

#[derive(Debug)]
pub struct PodTopologySpread;

impl Filter for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, cluster: &[NodeInfo]) -> Result<(), Vec<String>> {
        for c in constraints(pod, "DoNotSchedule") {
            let Some(value) = node.labels().get(&c.topology_key).cloned() else {
                return Err(vec![MISSING_LABEL.into()]);
            };
            let counts = domain_counts(pod, c, cluster);
            let mut min = counts.values().copied().min().unwrap_or(0);
            // Fewer eligible domains than minDomains: the global minimum counts as 0.
            if let Some(md) = c.min_domains
                && (counts.len() as i32) < md
            {
                min = 0;
            }
            let self_match = i64::from(matches(c.label_selector.as_ref(), &pod_labels(pod)));
            let here = counts.get(&value).copied().unwrap_or(0);
            if here + self_match - min > c.max_skew as i64 {
                return Err(vec![REASON.into()]);
            }
        }
        Ok(())
    }
}
