//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes only pods that
//! tolerate `node.kubernetes.io/unschedulable:NoSchedule`.

use k8s_openapi::api::core::v1::{Pod, Taint};

use super::Filter;
use super::taints::tolerates;
use crate::scheduler::node_info::NodeInfo;

pub const REASON: &str = "node(s) were unschedulable";

#[derive(Debug)]
pub struct NodeUnschedulable;

impl Filter for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, _: &[NodeInfo]) -> Result<(), Vec<String>> {
        let cordoned = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if !cordoned {
            return Ok(());
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref());
        if tolerations
            .into_iter()
            .flatten()
            .any(|t| tolerates(t, &taint))
        {
            Ok(())
        } else {
            Err(vec![REASON.into()])
        }
    }
}
