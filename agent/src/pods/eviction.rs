//! Node-pressure eviction, as the kubelet's eviction manager does it: every 10 s the
//! node's memory signal is compared with `--eviction-hard` (`memory.available<100Mi`
//! by default); while it is crossed, one pod per round is evicted — BestEffort first,
//! then Burstable, then Guaranteed, the largest memory user first within a class.
//! An evicted pod is marked Failed with reason `Evicted` and its containers stopped;
//! its owner (a ReplicaSet…) makes a replacement elsewhere.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;

use super::{Ctx, resources};

pub const INTERVAL: Duration = Duration::from_secs(10);

/// `--eviction-hard` thresholds the agent understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Bytes of memory.available below which the node is under memory pressure.
    pub memory_available: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            memory_available: 100 * 1024 * 1024,
        }
    }
}

impl Thresholds {
    /// Parses `memory.available<100Mi[,…]` (other signals are accepted and ignored,
    /// with the kubelet's defaults for them).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut t = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part.split_once('<').ok_or_else(|| {
                format!("eviction threshold {part:?}: expected <signal><<quantity>")
            })?;
            match signal.trim() {
                "memory.available" => {
                    let q = k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                        value.trim().to_owned(),
                    );
                    let bytes = resources::units(&q).filter(|b| *b >= 0).ok_or_else(|| {
                        format!("eviction threshold {part:?}: bad quantity {value:?}")
                    })?;
                    t.memory_available = bytes as u64;
                }
                "nodefs.available" | "nodefs.inodesFree" | "imagefs.available"
                | "pid.available" => {}
                other => return Err(format!("unknown eviction signal {other:?}")),
            }
        }
        Ok(t)
    }

    /// Whether the node is under memory pressure now.
    pub fn memory_pressure(&self) -> bool {
        crate::node::meminfo("MemAvailable:").is_some_and(|a| a < self.memory_available)
    }
}

fn qos_rank(qos: &str) -> u8 {
    match qos {
        "BestEffort" => 0,
        "Burstable" => 1,
        _ => 2,
    }
}

/// The pod's memory use from its cgroup.
fn usage(ctx: &Ctx, pod: &Pod) -> u64 {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let cgroup = resources::pod_cgroup(&ctx.cgroup_root, resources::qos_class(pod), &uid);
    berth_runtime::cgroups::Cgroup::load(&cgroup).memory_usage()
}

/// Runs the eviction loop until the future is dropped, choosing among the pods in
/// `pods` (the pod workers' reflector store).
pub async fn run(ctx: Arc<Ctx>, thresholds: Thresholds, pods: Store<Pod>) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        if !thresholds.memory_pressure() {
            continue;
        }
        let ctx2 = ctx.clone();
        let candidates: Vec<Pod> = pods
            .state()
            .into_iter()
            .map(|p| (*p).clone())
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .filter(|p| !super::static_pods::is_mirror(p))
            .collect();
        let ranked = tokio::task::spawn_blocking(move || {
            let mut r: Vec<(u8, std::cmp::Reverse<u64>, Pod)> = candidates
                .into_iter()
                .map(|p| {
                    (
                        qos_rank(resources::qos_class(&p)),
                        std::cmp::Reverse(usage(&ctx2, &p)),
                        p,
                    )
                })
                .collect();
            r.sort_by_key(|a| (a.0, a.1));
            r
        })
        .await
        .unwrap_or_default();
        let Some((_, std::cmp::Reverse(bytes), victim)) = ranked.into_iter().next() else {
            continue;
        };
        let ns = victim.metadata.namespace.clone().unwrap_or_default();
        let name = victim.metadata.name.clone().unwrap_or_default();
        let message = format!(
            "The node was low on resource: memory. Threshold quantity: {}, available: {}Ki. Pod was using {}Ki.",
            thresholds.memory_available,
            crate::node::meminfo("MemAvailable:").unwrap_or(0) / 1024,
            bytes / 1024
        );
        tracing::warn!(pod = %format!("{ns}/{name}"), %message, "evicting");
        let patch = json!({"status": {"phase": "Failed", "reason": "Evicted", "message": message}});
        if let Err(err) = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(%err, "marking the pod evicted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(Thresholds::parse("").expect("empty"), Thresholds::default());
        assert_eq!(
            Thresholds::parse("memory.available<1Gi,nodefs.available<10%")
                .expect("valid")
                .memory_available,
            1024 * 1024 * 1024
        );
        assert!(Thresholds::parse("memory.available>1Gi").is_err());
        assert!(Thresholds::parse("cpu.available<1").is_err());
        assert!(Thresholds::parse("memory.available<lots").is_err());
    }
}
