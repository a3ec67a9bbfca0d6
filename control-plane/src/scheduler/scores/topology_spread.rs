//! PodTopologySpread (`whenUnsatisfiable: ScheduleAnyway`): nodes whose domains hold
//! fewer matching pods score higher (`100 × (max + min − s) / max`, as kube-scheduler
//! normalizes).

use k8s_openapi::api::core::v1::Pod;

use super::{MAX_SCORE, Score};
use crate::scheduler::filters::topology_spread::{constraints, domain_counts};
use crate::scheduler::node_info::NodeInfo;

#[derive(Debug)]
pub struct PodTopologySpreadPreferred;

impl Score for PodTopologySpreadPreferred {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, nodes: &[&NodeInfo]) -> i64 {
        let mut s = 0;
        for c in constraints(pod, "ScheduleAnyway") {
            let counts = domain_counts(pod, c, nodes.iter().copied());
            if let Some(v) = node.labels().get(&c.topology_key) {
                s += counts.get(v).copied().unwrap_or(0);
            }
        }
        s
    }
    fn normalize(&self, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        let min = scores.iter().copied().min().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max == 0 {
                MAX_SCORE
            } else {
                MAX_SCORE * (max + min - *s) / max
            };
        }
    }
}
