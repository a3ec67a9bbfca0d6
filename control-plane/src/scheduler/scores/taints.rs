//! TaintToleration (scoring): fewer untolerated `PreferNoSchedule` taints is better;
//! the node with the most gets 0.

use k8s_openapi::api::core::v1::Pod;

use super::{Score, normalize_to_max};
use crate::scheduler::filters::taints::{taints, tolerates, tolerations};
use crate::scheduler::node_info::NodeInfo;

#[derive(Debug)]
pub struct PreferNoSchedule;

impl Score for PreferNoSchedule {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn weight(&self) -> i64 {
        3
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, _: &[&NodeInfo]) -> i64 {
        // Only tolerations that apply to PreferNoSchedule (or to every effect) count.
        let tols: Vec<_> = tolerations(pod)
            .iter()
            .filter(|t| {
                matches!(
                    t.effect.as_deref(),
                    None | Some("") | Some("PreferNoSchedule")
                )
            })
            .collect();
        taints(node)
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|t| !tols.iter().any(|tol| tolerates(tol, t)))
            .count() as i64
    }
    fn normalize(&self, scores: &mut [i64]) {
        normalize_to_max(scores, true);
    }
}
