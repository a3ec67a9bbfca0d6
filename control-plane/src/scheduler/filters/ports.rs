//! NodePorts: a pod's hostPorts must be free on the node (same protocol and port, with
//! overlapping host IPs: `0.0.0.0` overlaps every address).

use k8s_openapi::api::core::v1::Pod;

use super::Filter;
use crate::scheduler::node_info::{NodeInfo, host_ports};

pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";

#[derive(Debug)]
pub struct NodePorts;

impl Filter for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, _: &[NodeInfo]) -> Result<(), Vec<String>> {
        for (proto, ip, port) in host_ports(pod) {
            let conflict = node.used_ports.iter().any(|(p2, ip2, port2)| {
                *p2 == proto
                    && *port2 == port
                    && (ip == "0.0.0.0" || *ip2 == "0.0.0.0" || *ip2 == ip)
            });
            if conflict {
                return Err(vec![REASON.into()]);
            }
        }
        Ok(())
    }
}
