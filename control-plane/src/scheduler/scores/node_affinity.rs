//! NodeAffinity (preferred): the summed weights of the preferred terms a node matches,
//! scaled so the best node gets 100.

use k8s_openapi::api::core::v1::Pod;

use super::{Score, normalize_to_max};
use crate::scheduler::filters::node_affinity::term_matches;
use crate::scheduler::node_info::NodeInfo;

#[derive(Debug)]
pub struct NodeAffinityPreferred;

impl Score for NodeAffinityPreferred {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, _: &[&NodeInfo]) -> i64 {
        let preferred = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        let labels = node.labels();
        preferred
            .into_iter()
            .flatten()
            .filter(|t| t.weight != 0 && term_matches(&t.preference, labels, &node.name))
            .map(|t| t.weight as i64)
            .sum()
    }
    fn normalize(&self, scores: &mut [i64]) {
        normalize_to_max(scores, false);
    }
}
