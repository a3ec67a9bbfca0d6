//! The core controllers, kube-controller-manager's: each a level-triggered loop over
//! informer caches ([`crate::client::Informers`]) draining a [`queue::Queue`] of object
//! keys. [`run`] runs them all while this process holds the controller Lease.

pub mod certificates;
pub mod clusterrole_aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod job;
pub mod leader;
pub mod namespace;
pub mod node_lifecycle;
pub mod pod_gc;
pub mod pods;
pub mod queue;
pub mod replicaset;
pub mod root_ca_publisher;
pub mod serviceaccount;
pub mod statefulset;
pub mod ttl_after_finished;

use std::time::Duration;

use kube::Client;

/// The Lease in kube-system the controllers are elected through.
pub const LEASE: &str = "kube-controller-manager";

#[derive(Debug, Clone)]
pub struct Options {
    /// How long a node's Lease may go unrenewed before the node is Unknown
    /// (`--node-monitor-grace-period`, 40 s in Kubernetes).
    pub node_monitor_grace_period: Duration,
    /// Terminated pods kept before the oldest are deleted
    /// (`--terminated-pod-gc-threshold`, 12 500).
    pub terminated_pod_gc_threshold: usize,
    /// The cluster CA (PEM) the root CA publisher puts in every namespace's
    /// `kube-root-ca.crt` (`--root-ca-file`); without one the publisher does not run.
    pub root_ca: Option<String>,
    /// The CA the CSR signer signs with; without one it does not run.
    pub signing: Option<certificates::signer::Ca>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_monitor_grace_period: Duration::from_secs(40),
            terminated_pod_gc_threshold: 12_500,
            root_ca: None,
            signing: None,
        }
    }
}

/// Every controller, until the future is dropped.
pub async fn run(client: Client, options: Options) {
    // One set of informers for all of them: one watch and one cache per resource.
    let mut informers = crate::client::Informers::default();
    let i = &mut informers;
    // Each loop is boxed: together they are too large a future for a worker's stack.
    let gc = gc::start(client.clone(), i).await;
    let client_for_ca = client.clone();
    let mut loops: Vec<futures_util::future::BoxFuture<'static, ()>> = vec![
        Box::pin(replicaset::start(client.clone(), i)),
        Box::pin(deployment::start(client.clone(), i)),
        Box::pin(job::start(client.clone(), i)),
        Box::pin(statefulset::start(client.clone(), i)),
        Box::pin(daemonset::start(client.clone(), i)),
        Box::pin(disruption::start(client.clone(), i)),
        Box::pin(endpoints::start(client.clone(), i)),
        Box::pin(namespace::start(client.clone(), i)),
        Box::pin(gc),
        Box::pin(serviceaccount::start(client.clone(), i)),
        Box::pin(cronjob::start(client.clone(), i)),
        Box::pin(clusterrole_aggregation::start(client.clone(), i)),
        Box::pin(ttl_after_finished::start(client.clone(), i)),
        Box::pin(node_lifecycle::start(
            client.clone(),
            options.node_monitor_grace_period,
            i,
        )),
        Box::pin(pod_gc::start(
            client,
            options.terminated_pod_gc_threshold,
            i,
        )),
    ];
    loops.push(Box::pin(certificates::approver::start(
        client_for_ca.clone(),
        i,
    )));
    match options.signing {
        Some(ca) => loops.push(Box::pin(certificates::signer::start(
            client_for_ca.clone(),
            ca,
            i,
        ))),
        None => tracing::warn!("no signing CA: CertificateSigningRequests are not signed"),
    }
    match options.root_ca {
        Some(ca) => loops.push(Box::pin(root_ca_publisher::start(client_for_ca, ca, i))),
        None => tracing::warn!("no root CA: the root CA publisher does not run"),
    }
    informers.run(futures_util::future::join_all(loops)).await;
}
