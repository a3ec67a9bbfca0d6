//! LeastAllocated (NodeResourcesFit's default scoring strategy) and
//! BalancedAllocation, over CPU and memory with weight 1 each, counting containers
//! without requests as 100m CPU and 200 MiB (kube-scheduler's non-zero defaults).

use k8s_openapi::api::core::v1::Pod;

use super::{MAX_SCORE, Score};
use crate::scheduler::node_info::{NodeInfo, nonzero_requests};

fn fractions(pod: &Pod, node: &NodeInfo) -> [(i64, i64); 2] {
    let (pc, pm) = nonzero_requests(pod);
    [
        (node.nonzero_requested.0 + pc, node.allocatable.milli_cpu),
        (node.nonzero_requested.1 + pm, node.allocatable.memory),
    ]
}

#[derive(Debug)]
pub struct LeastAllocated;

impl Score for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn weight(&self) -> i64 {
        1
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, _: &[&NodeInfo]) -> i64 {
        let per: Vec<i64> = fractions(pod, node)
            .iter()
            .map(|(req, cap)| {
                if *cap == 0 || req > cap {
                    0
                } else {
                    (cap - req) * MAX_SCORE / cap
                }
            })
            .collect();
        per.iter().sum::<i64>() / per.len() as i64
    }
}

#[derive(Debug)]
pub struct BalancedAllocation;

impl Score for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
    fn weight(&self) -> i64 {
        1
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, _: &[&NodeInfo]) -> i64 {
        let f: Vec<f64> = fractions(pod, node)
            .iter()
            .map(|(req, cap)| {
                if *cap == 0 {
                    1.0
                } else {
                    (*req as f64 / *cap as f64).min(1.0)
                }
            })
            .collect();
        // The population standard deviation of two fractions is half their distance.
        let std = (f[0] - f[1]).abs() / 2.0;
        ((1.0 - std) * MAX_SCORE as f64) as i64
    }
}
