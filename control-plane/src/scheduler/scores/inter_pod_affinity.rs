//! InterPodAffinity (preferred): for each node, the weights of the pod's preferred
//! affinity terms satisfied by pods in its topology domain, minus those of its
//! preferred anti-affinity terms; plus, symmetrically, the terms of pods already placed
//! that select this pod (their required affinity counting with weight 1, kube-scheduler's
//! hardPodAffinityWeight). Normalized to 0–100 between the lowest and highest node.

use k8s_openapi::api::core::v1::{Pod, WeightedPodAffinityTerm};

use super::{MAX_SCORE, Score};
use crate::scheduler::filters::inter_pod_affinity::{required_affinity, same_domain, term_selects};
use crate::scheduler::node_info::NodeInfo;

const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

fn preferred(pod: &Pod, anti: bool) -> &[WeightedPodAffinityTerm] {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let terms = if anti {
        a.and_then(|a| a.pod_anti_affinity.as_ref()).and_then(|x| {
            x.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
    } else {
        a.and_then(|a| a.pod_affinity.as_ref()).and_then(|x| {
            x.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
    };
    terms.unwrap_or(&[])
}

#[derive(Debug)]
pub struct InterPodAffinityPreferred;

impl Score for InterPodAffinityPreferred {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn skip(&self, pod: &Pod, nodes: &[&NodeInfo]) -> bool {
        preferred(pod, false).is_empty()
            && preferred(pod, true).is_empty()
            && nodes.iter().all(|n| n.pods_with_affinity == 0)
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, nodes: &[&NodeInfo]) -> i64 {
        let mut score = 0i64;
        for (anti, sign) in [(false, 1i64), (true, -1i64)] {
            for w in preferred(pod, anti) {
                let term = &w.pod_affinity_term;
                for n in same_domain(node, &term.topology_key, nodes.iter().copied()) {
                    let count = n.pods.iter().filter(|p| term_selects(pod, term, p)).count() as i64;
                    score += sign * w.weight as i64 * count;
                }
            }
        }
        // Symmetry: pods already in this node's domains that want (or avoid) this pod.
        for n in nodes.iter().filter(|n| n.pods_with_affinity > 0) {
            for other in &n.pods {
                for term in required_affinity(other) {
                    if term_selects(other, term, pod) && in_domain(node, n, &term.topology_key) {
                        score += HARD_POD_AFFINITY_WEIGHT;
                    }
                }
                for (anti, sign) in [(false, 1i64), (true, -1i64)] {
                    for w in preferred(other, anti) {
                        let term = &w.pod_affinity_term;
                        if term_selects(other, term, pod) && in_domain(node, n, &term.topology_key)
                        {
                            score += sign * w.weight as i64;
                        }
                    }
                }
            }
        }
        score
    }
    fn normalize(&self, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        let min = scores.iter().copied().min().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max == min {
                0
            } else {
                MAX_SCORE * (*s - min) / (max - min)
            };
        }
    }
}

fn in_domain(a: &NodeInfo, b: &NodeInfo, key: &str) -> bool {
    let la = a.labels();
    la.contains_key(key) && la.get(key) == b.labels().get(key)
}
