//! The load balancer's side of the node's Service watch ([`crate::services`]): each
//! changed Service is recomputed and applied through [`ServiceSync`]; once the
//! initial lists are in, frontends no Service claims (adopted from pinned maps of an
//! earlier agent) are pruned.
//!
//! The cluster DNS Service (`kube-system/kube-dns`) has no pods behind it: every
//! agent answers for it itself. When the agent runs its DNS server, the LB sends
//! the Service's ports to that node-local listener instead of to endpoints — a local
//! redirect, like Cilium's for NodeLocal DNSCache — so a pod's query never leaves
//! its node.

use std::{
    net::SocketAddrV4,
    sync::{Arc, Mutex},
    time::Instant,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::Client;
use serde_json::json;

use super::{
    metrics::LbMetrics,
    sync::{LbTarget, ServiceSync},
};
use crate::services::{SERVICE_NAME_LABEL, ServiceConsumer};

/// The cluster DNS Service every agent answers for locally.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// The load balancer as a [`ServiceConsumer`].
pub struct LbConsumer<T: LbTarget> {
    pub sync: Arc<Mutex<ServiceSync<T>>>,
    pub metrics: Arc<Mutex<LbMetrics>>,
    /// Where this node's DNS server listens, when it runs one.
    pub local_dns: Option<SocketAddrV4>,
}

impl<T: LbTarget> std::fmt::Debug for LbConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbConsumer")
            .field("local_dns", &self.local_dns)
            .finish_non_exhaustive()
    }
}

/// An EndpointSlice putting every port of `service` on `local` (the node's DNS
/// listener), matched by port name as the LB model matches real slices.
fn local_slice(service: &Service, local: SocketAddrV4) -> Option<EndpointSlice> {
    let ports: Vec<serde_json::Value> = service
        .spec
        .as_ref()?
        .ports
        .iter()
        .flatten()
        .map(|p| {
            json!({
                "name": p.name.clone().unwrap_or_default(),
                "port": local.port(),
                "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{}-node-local", DNS_SERVICE.1),
            "namespace": DNS_SERVICE.0,
            "labels": {SERVICE_NAME_LABEL: DNS_SERVICE.1},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [local.ip().to_string()], "conditions": {"ready": true}}],
        "ports": ports,
    }))
    .ok()
}

impl<T: LbTarget + Send> ServiceConsumer for LbConsumer<T> {
    fn changed(
        &mut self,
        namespace: &str,
        name: &str,
        service: Option<&Service>,
        slices: &[&EndpointSlice],
    ) {
        let started = Instant::now();
        let Ok(mut sync) = self.sync.lock() else {
            return;
        };
        let result = match service {
            Some(service) => {
                let slices: Vec<EndpointSlice> = match self.local_dns {
                    Some(local) if (namespace, name) == DNS_SERVICE => {
                        local_slice(service, local).into_iter().collect()
                    }
                    _ => slices.iter().map(|s| (*s).clone()).collect(),
                };
                sync.apply(service, &slices)
            }
            None => sync.delete(namespace, name),
        };
        if let Err(error) = result {
            tracing::warn!(%error, service = %format!("{namespace}/{name}"), "service not synced");
        }
        if let Ok(mut m) = self.metrics.lock() {
            m.observe_sync(started.elapsed(), &sync.stats(), sync.target_slots());
        }
    }

    fn synced(&mut self) {
        if let Ok(mut sync) = self.sync.lock() {
            match sync.prune_unclaimed() {
                Ok(n) if n > 0 => tracing::info!(removed = n, "pruned frontends no Service claims"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "pruning stale frontends failed"),
            }
        }
    }
}

/// Watches every Service and EndpointSlice through `client` and keeps `sync` (and
/// `metrics`) up to date, with no other consumer; runs until the watches end.
pub async fn run<T: LbTarget + Send + 'static>(
    client: Client,
    sync: Arc<Mutex<ServiceSync<T>>>,
    metrics: Arc<Mutex<LbMetrics>>,
) {
    crate::services::run(
        client,
        vec![Box::new(LbConsumer {
            sync,
            metrics,
            local_dns: None,
        })],
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_service_goes_to_the_local_listener() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ]},
        }))
        .expect("service");
        let local: SocketAddrV4 = "10.77.0.1:53".parse().expect("addr");
        let slice = local_slice(&service, local).expect("slice");
        let entries = super::super::model::entries(&service, &[slice], "n1").expect("entries");
        assert_eq!(entries.len(), 2, "{entries:?}");
        for e in entries {
            assert_eq!(e.backends, vec![local], "{e:?}");
        }
    }
}
