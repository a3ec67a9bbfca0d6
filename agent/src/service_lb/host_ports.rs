//! Pods' hostPorts (`containers[].ports[].hostPort`), answered by the same tc
//! programs as NodePorts instead of CNI portmap's iptables rules: each running pod of
//! the node gets its frontends ([`super::host_port_entries`]) under the owner
//! `pod:<namespace>/<name>`, removed when the pod finishes or goes. [`run`] follows
//! the agent's pod cache.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_ebpf::SocketLb;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;

use super::{ServiceSync, host_port_entries};

/// How often the pod cache is compared with the programmed hostPorts.
pub const RESYNC: Duration = Duration::from_secs(1);

/// Keeps the hostPorts of the pods in `pods` programmed until the task is dropped.
pub async fn run(pods: Store<Pod>, sync: Arc<Mutex<ServiceSync<SocketLb>>>) {
    let _ = pods.wait_until_ready().await;
    let mut owners: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut now = BTreeSet::new();
        let wanted: Vec<(String, Vec<super::LbEntry>)> = pods
            .state()
            .iter()
            .map(|pod| {
                let owner = format!(
                    "pod:{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.name.as_deref().unwrap_or_default()
                );
                (owner, host_port_entries(pod))
            })
            .filter(|(_, entries)| !entries.is_empty())
            .collect();
        if let Ok(mut sync) = sync.lock() {
            for (owner, entries) in wanted {
                now.insert(owner.clone());
                if let Err(error) = sync.apply_entries(owner, entries) {
                    tracing::warn!(%error, "hostPort not programmed");
                }
            }
            for gone in owners.difference(&now) {
                if let Err(error) = sync.delete_owner(gone.clone()) {
                    tracing::warn!(%error, "hostPort not removed");
                }
            }
        }
        owners = now;
        tokio::time::sleep(RESYNC).await;
    }
}
