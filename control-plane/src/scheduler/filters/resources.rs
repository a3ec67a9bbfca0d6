//! NodeResourcesFit: the pod's requests (init containers, sidecars and overhead
//! included) must fit in what the node's allocatable leaves after the pods already
//! there; the pod count too. Reasons: `Insufficient cpu`, `Insufficient memory`,
//! `Too many pods`, `Insufficient <resource>`.

use k8s_openapi::api::core::v1::Pod;

use super::Filter;
use crate::scheduler::node_info::{NodeInfo, pod_requests};

#[derive(Debug)]
pub struct NodeResourcesFit;

impl Filter for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, _: &[NodeInfo]) -> Result<(), Vec<String>> {
        let want = pod_requests(pod);
        let have = &node.allocatable;
        let used = &node.requested;
        let mut reasons = Vec::new();
        if used.pods + 1 > have.pods {
            reasons.push("Too many pods".to_string());
        }
        if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > have.milli_cpu {
            reasons.push("Insufficient cpu".into());
        }
        if want.memory > 0 && used.memory + want.memory > have.memory {
            reasons.push("Insufficient memory".into());
        }
        if want.ephemeral_storage > 0
            && used.ephemeral_storage + want.ephemeral_storage > have.ephemeral_storage
        {
            reasons.push("Insufficient ephemeral-storage".into());
        }
        for (name, amount) in &want.scalar {
            if *amount == 0 {
                continue;
            }
            let cap = have.scalar.get(name).copied().unwrap_or(0);
            let taken = used.scalar.get(name).copied().unwrap_or(0);
            if taken + amount > cap {
                reasons.push(format!("Insufficient {name}"));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}
