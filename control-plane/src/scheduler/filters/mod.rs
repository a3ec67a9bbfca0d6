//! Filters: can this pod run on this node? Each returns the reasons it cannot, worded as
//! kube-scheduler words them (they are counted into the FailedScheduling message).

pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod ports;
pub mod resources;
pub mod taints;
pub mod topology_spread;
pub mod unschedulable;

use k8s_openapi::api::core::v1::Pod;

use super::node_info::NodeInfo;

/// A filter plugin.
pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;
    /// Ok, or the reasons the node does not fit. `cluster` is every node (for rules
    /// about other pods: inter-pod affinity, topology spread).
    fn filter(&self, pod: &Pod, node: &NodeInfo, cluster: &[NodeInfo]) -> Result<(), Vec<String>>;
    /// Whether this filter passes every node for `pod` (kube-scheduler's PreFilter
    /// "Skip"), decided once per pod before any node is filtered.
    fn skip(&self, _pod: &Pod, _cluster: &[NodeInfo]) -> bool {
        false
    }
}

/// kube-scheduler's default filters, in its order.
pub fn defaults() -> Vec<Box<dyn Filter>> {
    vec![
        Box::new(unschedulable::NodeUnschedulable),
        Box::new(node_name::NodeName),
        Box::new(taints::TaintToleration),
        Box::new(node_affinity::NodeAffinity),
        Box::new(ports::NodePorts),
        Box::new(resources::NodeResourcesFit),
        Box::new(topology_spread::PodTopologySpread),
        Box::new(inter_pod_affinity::InterPodAffinity),
    ]
}
