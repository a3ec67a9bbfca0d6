//! NodeName: a pod that names its node fits only there.

use k8s_openapi::api::core::v1::Pod;

use super::Filter;
use crate::scheduler::node_info::NodeInfo;

pub const REASON: &str = "node(s) didn't match the requested node name";

#[derive(Debug)]
pub struct NodeName;

impl Filter for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, _: &[NodeInfo]) -> Result<(), Vec<String>> {
        match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(n) if !n.is_empty() && n != node.name => Err(vec![REASON.into()]),
            _ => Ok(()),
        }
    }
}
