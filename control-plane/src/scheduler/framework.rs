//! One scheduling decision: run the filters over every node, score the feasible ones,
//! pick the best (ties broken round-robin, where kube-scheduler picks at random), or
//! explain why no node fits in kube-scheduler's words:
//! `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {…}.`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Pod;

use super::filters::{self, Filter};
use super::node_info::NodeInfo;
use super::scores::{self, Score};

/// No node fits: per-reason node counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kube-scheduler sorts the "<count> <reason>" strings.
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        parts.sort();
        if parts.is_empty() {
            write!(f, "0/{} nodes are available.", self.nodes)
        } else {
            write!(
                f,
                "0/{} nodes are available: {}.",
                self.nodes,
                parts.join(", ")
            )
        }
    }
}

impl std::error::Error for FitError {}

/// The filter and score plugins.
pub struct Profile {
    pub filters: Vec<Box<dyn Filter>>,
    pub scores: Vec<Box<dyn Score>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field(
                "filters",
                &self.filters.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field(
                "scores",
                &self.scores.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            filters: filters::defaults(),
            scores: scores::defaults(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Profile {
    /// The nodes the pod fits on, or why it fits on none.
    pub fn feasible<'a>(
        &self,
        pod: &Pod,
        nodes: &'a [NodeInfo],
    ) -> Result<Vec<&'a NodeInfo>, FitError> {
        let mut fit = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for node in nodes {
            let mut failed = false;
            for f in &self.filters {
                if let Err(rs) = f.filter(pod, node, nodes) {
                    for r in rs {
                        *reasons.entry(r).or_default() += 1;
                    }
                    failed = true;
                    break;
                }
            }
            if !failed {
                fit.push(node);
            }
        }
        if fit.is_empty() {
            return Err(FitError {
                nodes: nodes.len(),
                reasons,
            });
        }
        Ok(fit)
    }

    /// Weighted, normalized total score per feasible node.
    pub fn score(&self, pod: &Pod, feasible: &[&NodeInfo]) -> Vec<i64> {
        let mut total = vec![0i64; feasible.len()];
        for plugin in &self.scores {
            let mut s: Vec<i64> = feasible
                .iter()
                .map(|n| plugin.score(pod, n, feasible))
                .collect();
            plugin.normalize(&mut s);
            for (t, v) in total.iter_mut().zip(s) {
                *t += v * plugin.weight();
            }
        }
        total
    }

    /// Picks the node for `pod`.
    pub fn schedule<'a>(&self, pod: &Pod, nodes: &'a [NodeInfo]) -> Result<&'a NodeInfo, FitError> {
        let feasible = self.feasible(pod, nodes)?;
        if feasible.len() == 1 {
            return Ok(feasible[0]);
        }
        let scores = self.score(pod, &feasible);
        let best = scores.iter().copied().max().unwrap_or(0);
        let ties: Vec<&NodeInfo> = feasible
            .iter()
            .zip(&scores)
            .filter(|(_, s)| **s == best)
            .map(|(n, _)| *n)
            .collect();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % ties.len();
        Ok(ties[i])
    }
}
