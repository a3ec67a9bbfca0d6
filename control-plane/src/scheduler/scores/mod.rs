//! Scores: how well does this pod fit this node, 0–100 after normalization, weighted
//! with kube-scheduler's default weights and summed.

pub mod image_locality;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod resources;
pub mod taints;
pub mod topology_spread;

use k8s_openapi::api::core::v1::Pod;

use super::node_info::NodeInfo;

pub const MAX_SCORE: i64 = 100;

/// A score plugin.
pub trait Score: Send + Sync {
    fn name(&self) -> &'static str;
    fn weight(&self) -> i64;
    /// The raw score of one node; `nodes` are all feasible nodes (for spread terms).
    fn score(&self, pod: &Pod, node: &NodeInfo, nodes: &[&NodeInfo]) -> i64;
    /// Maps raw scores onto 0–100 (default: already in range).
    fn normalize(&self, _scores: &mut [i64]) {}
    /// Whether every node scores 0 for `pod` (kube-scheduler's PreScore "Skip").
    fn skip(&self, _pod: &Pod, _nodes: &[&NodeInfo]) -> bool {
        false
    }
}

/// Scales scores so the largest becomes 100 (`reverse`: the smallest does).
pub fn normalize_to_max(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = match (max, reverse) {
            (0, false) => 0,
            (0, true) => MAX_SCORE,
            (m, false) => *s * MAX_SCORE / m,
            (m, true) => MAX_SCORE - *s * MAX_SCORE / m,
        };
    }
}

/// kube-scheduler's default score plugins and weights (v1.37): NodeResourcesFit
/// (LeastAllocated) 1, NodeResourcesBalancedAllocation 1, ImageLocality 1,
/// InterPodAffinity 2, NodeAffinity 2, PodTopologySpread 2, TaintToleration 3.
pub fn defaults() -> Vec<Box<dyn Score>> {
    vec![
        Box::new(resources::LeastAllocated),
        Box::new(resources::BalancedAllocation),
        Box::new(image_locality::ImageLocality),
        Box::new(inter_pod_affinity::InterPodAffinityPreferred),
        Box::new(node_affinity::NodeAffinityPreferred),
        Box::new(topology_spread::PodTopologySpreadPreferred),
        Box::new(taints::PreferNoSchedule),
    ]
}
