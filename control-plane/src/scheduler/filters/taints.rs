//! TaintToleration: every NoSchedule and NoExecute taint of the node must be tolerated.
//! Reason: `node(s) had untolerated taint {key: value}`.

use k8s_openapi::api::core::v1::{Pod, Taint, Toleration};

use super::Filter;
use crate::scheduler::node_info::NodeInfo;

/// Whether `t` tolerates `taint` (Kubernetes' `Toleration.ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    let op = t.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        // An empty key with Exists matches every taint.
        return op == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match op {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

pub fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

pub fn taints(node: &NodeInfo) -> &[Taint] {
    node.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

#[derive(Debug)]
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, _: &[NodeInfo]) -> Result<(), Vec<String>> {
        let tols = tolerations(pod);
        for taint in taints(node) {
            if taint.effect != "NoSchedule" && taint.effect != "NoExecute" {
                continue;
            }
            if !tols.iter().any(|t| tolerates(t, taint)) {
                return Err(vec![format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint.key,
                    taint.value.as_deref().unwrap_or("")
                )]);
            }
        }
        Ok(())
    }
}
