//! One scheduling decision: run the filters over the nodes (as many as kube-scheduler's
//! adaptive percentageOfNodesToScore asks for), score the feasible ones,
//! pick the best (ties broken round-robin, where kube-scheduler picks at random), or
//! explain why no node fits in kube-scheduler's words:
//! `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {…}.`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Pod;

use super::filters::{self, Filter};
use super::node_info::NodeInfo;
use super::scores::{self, Score};

/// How many feasible nodes to look for among `all` (kube-scheduler's default
/// percentageOfNodesToScore: every node below 100, else 50% minus 1% per 125 nodes,
/// at least 5% and at least 100 nodes).
pub fn nodes_to_find(all: usize) -> usize {
    const MIN_NODES: usize = 100;
    if all < MIN_NODES {
        return all.max(1);
    }
    let percentage = 50usize.saturating_sub(all / 125).max(5);
    (all * percentage / 100).max(MIN_NODES)
}

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
        if self.nodes == 0 {
            // kube-scheduler's ErrNoNodesAvailable.
            write!(f, "no nodes available to schedule pods")
        } else if parts.is_empty() {
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

/// A filter for one pod with state its PreFilter computed (kube-scheduler's
/// CycleState): the volume plugins, built per pod from the volume informers
/// ([`super::volumes::VolumeCheck`]). It runs after NodeResourcesFit, where
/// kube-scheduler runs VolumeRestrictions, NodeVolumeLimits and VolumeBinding.
pub trait PodFilter {
    fn filter(&self, node: &NodeInfo) -> Result<(), Vec<String>>;
}

/// The default filter the per-pod filter runs after.
const PER_POD_AFTER: &str = "NodeResourcesFit";

/// The filter and score plugins.
pub struct Profile {
    pub filters: Vec<Box<dyn Filter>>,
    pub scores: Vec<Box<dyn Score>>,
    next: AtomicUsize,
    /// Where the next search for feasible nodes starts (kube-scheduler's
    /// nextStartNodeIndex), so successive pods spread over all nodes.
    start: AtomicUsize,
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
            start: AtomicUsize::new(0),
        }
    }
}

impl Profile {
    /// The nodes the pod fits on, or why it fits on none. Like kube-scheduler, the
    /// search stops once [`nodes_to_find`] feasible nodes are found, starting where the
    /// previous search stopped.
    pub fn feasible<'a>(
        &self,
        pod: &Pod,
        nodes: &'a [NodeInfo],
    ) -> Result<Vec<&'a NodeInfo>, FitError> {
        self.feasible_with(pod, nodes, None)
    }

    /// [`Profile::feasible`] with a per-pod filter besides the profile's.
    pub fn feasible_with<'a>(
        &self,
        pod: &Pod,
        nodes: &'a [NodeInfo],
        extra: Option<&dyn PodFilter>,
    ) -> Result<Vec<&'a NodeInfo>, FitError> {
        let mut fit = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let want = nodes_to_find(nodes.len());
        let start = match nodes.len() {
            0 => 0,
            n => self.start.load(Ordering::Relaxed) % n,
        };
        let mut processed = 0;
        let active: Vec<&dyn Filter> = self
            .filters
            .iter()
            .filter(|f| !f.skip(pod, nodes))
            .map(|f| f.as_ref())
            .collect();
        // Where the per-pod filter runs among the active ones.
        let extra_at = active
            .iter()
            .position(|f| f.name() == PER_POD_AFTER)
            .map_or(active.len(), |i| i + 1);
        for node in nodes[start..].iter().chain(&nodes[..start]) {
            processed += 1;
            let mut verdict = Ok(());
            for (i, f) in active.iter().enumerate() {
                if i == extra_at
                    && let Some(x) = extra
                {
                    verdict = x.filter(node);
                    if verdict.is_err() {
                        break;
                    }
                }
                verdict = f.filter(pod, node, nodes);
                if verdict.is_err() {
                    break;
                }
            }
            if verdict.is_ok()
                && extra_at == active.len()
                && let Some(x) = extra
            {
                verdict = x.filter(node);
            }
            let failed = verdict.is_err();
            if let Err(rs) = verdict {
                for r in rs {
                    *reasons.entry(r).or_default() += 1;
                }
            }
            if !failed {
                fit.push(node);
                if fit.len() >= want {
                    break;
                }
            }
        }
        self.start.store(start + processed, Ordering::Relaxed);
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
            if plugin.skip(pod, feasible) {
                continue;
            }
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
        self.schedule_with(pod, nodes, None)
    }

    /// Picks the node for `pod`, filtering with `extra` besides the profile's filters.
    pub fn schedule_with<'a>(
        &self,
        pod: &Pod,
        nodes: &'a [NodeInfo],
        extra: Option<&dyn PodFilter>,
    ) -> Result<&'a NodeInfo, FitError> {
        let feasible = self.feasible_with(pod, nodes, extra)?;
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

#[cfg(test)]
mod tests {
    use super::nodes_to_find;

    #[test]
    fn nodes_to_find_follows_kube_scheduler() {
        assert_eq!(nodes_to_find(3), 3);
        assert_eq!(nodes_to_find(99), 99);
        assert_eq!(nodes_to_find(100), 100);
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
        assert_eq!(nodes_to_find(50_000), 2500);
    }

    #[test]
    fn no_nodes_reads_like_kube_scheduler() {
        let e = super::FitError {
            nodes: 0,
            reasons: Default::default(),
        };
        assert_eq!(e.to_string(), "no nodes available to schedule pods");
    }
}
