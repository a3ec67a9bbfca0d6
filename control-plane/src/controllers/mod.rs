//! The core controllers, kube-controller-manager's: each a level-triggered loop over
//! informer caches ([`crate::client::Informers`]) draining a [`queue::Queue`] of object
//! keys. [`run`] runs them all while this process holds the controller Lease.

pub mod certificates;
pub mod clusterrole_aggregation;
pub mod credentials;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod ephemeral;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod job;
pub mod leader;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod pod_gc;
pub mod podautoscaler;
pub mod pods;
pub mod queue;
pub mod replicaset;
pub mod resource_quota;
pub mod root_ca_publisher;
pub mod service_lb;
pub mod serviceaccount;
pub mod statefulset;
pub mod ttl_after_finished;
pub mod update;
pub mod volume;

use std::time::Duration;

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
    /// The HorizontalPodAutoscaler controller's `--horizontal-pod-autoscaler-*` flags.
    pub autoscaling: podautoscaler::Options,
    /// The cluster CA (PEM) the root CA publisher puts in every namespace's
    /// `kube-root-ca.crt` (`--root-ca-file`); without one the publisher does not run.
    pub root_ca: Option<String>,
    /// The CA the CSR signer signs with; without one it does not run.
    pub signing: Option<certificates::signer::Ca>,
    /// The addresses LoadBalancer Services get (`--lb-pool`); without one the
    /// load-balancer controller does not run.
    pub lb_pool: Option<service_lb::Pool>,
    /// `--allocate-node-cidrs` with `--cluster-cidr` and the node mask sizes; without
    /// it the node IPAM controller does not run.
    pub node_ipam: Option<node_ipam::Config>,
    /// Which controllers run.
    pub controllers: Selection,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_monitor_grace_period: Duration::from_secs(40),
            terminated_pod_gc_threshold: 12_500,
            autoscaling: podautoscaler::Options::default(),
            root_ca: None,
            signing: None,
            lb_pool: None,
            node_ipam: None,
            controllers: Selection::all(),
        }
    }
}

/// Which controllers run (`--controllers`, as kube-controller-manager's: `*` for all,
/// names to add, `-name` to leave one out; `true` and `false` for all and none).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    all: bool,
    on: Vec<String>,
    off: Vec<String>,
}

/// The controllers' names, as kube-controller-manager calls them.
pub const NAMES: &[&str] = &[
    "replicaset",
    "deployment",
    "job",
    "statefulset",
    "daemonset",
    "disruption",
    "endpoint",
    "namespace",
    "garbagecollector",
    "serviceaccount",
    "cronjob",
    "clusterrole-aggregation",
    "ttl-after-finished",
    "horizontalpodautoscaling",
    "nodelifecycle",
    "nodeipam",
    "podgc",
    "csrapproving",
    "csrsigning",
    "root-ca-cert-publisher",
    "persistentvolume-binder",
    "pvc-protection",
    "pv-protection",
    "ephemeral-volume-controller",
    "service-lb-controller",
    "resourcequota",
];

impl Selection {
    pub fn all() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }

    pub fn enabled(&self, name: &str) -> bool {
        !self.off.iter().any(|n| n == name) && (self.all || self.on.iter().any(|n| n == name))
    }

    /// Whether any controller runs.
    pub fn any(&self) -> bool {
        NAMES.iter().any(|n| self.enabled(n))
    }
}

impl std::str::FromStr for Selection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "true" => return Ok(Self::all()),
            "false" | "" => return Ok(Self::default()),
            _ => {}
        }
        let mut sel = Self::default();
        for item in s.split(',').map(str::trim) {
            let (list, name) = match item.strip_prefix('-') {
                Some(n) => (&mut sel.off, n),
                None => (&mut sel.on, item),
            };
            if name == "*" {
                sel.all = true;
                continue;
            }
            if !NAMES.contains(&name) {
                return Err(format!(
                    "{name:?} is not a controller: {}",
                    NAMES.join(", ")
                ));
            }
            list.push(name.to_owned());
        }
        Ok(sel)
    }
}

/// The ServiceAccounts (upstream's names) each controller acts as.
const ACCOUNTS: &[(&str, &[&str])] = &[
    (
        "replicaset",
        &["replicaset-controller", "replication-controller"],
    ),
    ("deployment", &["deployment-controller"]),
    ("job", &["job-controller"]),
    ("statefulset", &["statefulset-controller"]),
    ("daemonset", &["daemon-set-controller"]),
    ("disruption", &["disruption-controller"]),
    (
        "endpoint",
        &["endpointslice-controller", "endpoint-controller"],
    ),
    ("namespace", &["namespace-controller"]),
    ("garbagecollector", &["generic-garbage-collector"]),
    ("serviceaccount", &["service-account-controller"]),
    ("cronjob", &["cronjob-controller"]),
    (
        "clusterrole-aggregation",
        &["clusterrole-aggregation-controller"],
    ),
    ("ttl-after-finished", &["ttl-after-finished-controller"]),
    ("horizontalpodautoscaling", &["horizontal-pod-autoscaler"]),
    ("nodelifecycle", &["node-controller"]),
    ("nodeipam", &["node-controller"]),
    ("podgc", &["pod-garbage-collector"]),
    ("csrapproving", &["certificate-controller"]),
    ("csrsigning", &["certificate-controller"]),
    ("root-ca-cert-publisher", &["root-ca-cert-publisher"]),
    ("persistentvolume-binder", &["persistent-volume-binder"]),
    ("pvc-protection", &["pvc-protection-controller"]),
    ("pv-protection", &["pv-protection-controller"]),
    (
        "ephemeral-volume-controller",
        &["ephemeral-volume-controller"],
    ),
    ("service-lb-controller", &["service-controller"]),
    ("resourcequota", &["resourcequota-controller"]),
];

/// The selected controllers, until the future is dropped. Each acts with the client
/// `credentials` give it (its own ServiceAccount, upstream's name, with
/// `--use-service-account-credentials`).
pub async fn run(credentials: credentials::Credentials, options: Options) {
    // One set of informers for all of them, listing and watching as the controller
    // manager: one watch and one cache per resource.
    let mut informers = crate::client::Informers::watching_as(credentials.manager());
    let mut accounts = credentials::Accounts::new(credentials);
    let i = &mut informers;
    let on = |name: &str| options.controllers.enabled(name);
    let wanted: Vec<&str> = ACCOUNTS
        .iter()
        .filter(|(controller, _)| on(controller))
        .flat_map(|(_, accounts)| accounts.iter().copied())
        .collect();
    accounts.prepare(&wanted).await;
    // Each loop is boxed: together they are too large a future for a worker's stack.
    let mut loops: Vec<futures_util::future::BoxFuture<'static, ()>> = Vec::new();
    let a = &mut accounts;
    if on("replicaset") {
        let rs = a.client("replicaset-controller").await;
        let rc = a.client("replication-controller").await;
        loops.push(Box::pin(replicaset::start(rs, rc, i)));
    }
    if on("deployment") {
        let c = a.client("deployment-controller").await;
        loops.push(Box::pin(deployment::start(c, i)));
    }
    if on("job") {
        loops.push(Box::pin(job::start(a.client("job-controller").await, i)));
    }
    if on("statefulset") {
        let c = a.client("statefulset-controller").await;
        loops.push(Box::pin(statefulset::start(c, i)));
    }
    if on("daemonset") {
        let c = a.client("daemon-set-controller").await;
        loops.push(Box::pin(daemonset::start(c, i)));
    }
    if on("disruption") {
        let c = a.client("disruption-controller").await;
        loops.push(Box::pin(disruption::start(c, i)));
    }
    if on("endpoint") {
        let slices = a.client("endpointslice-controller").await;
        let endpoints = a.client("endpoint-controller").await;
        loops.push(Box::pin(endpoints::start(slices, endpoints, i)));
    }
    if on("namespace") {
        let c = a.client("namespace-controller").await;
        loops.push(Box::pin(namespace::start(c, i)));
    }
    if on("garbagecollector") {
        let gc = gc::start(a.client("generic-garbage-collector").await, i).await;
        loops.push(Box::pin(gc));
    }
    if on("serviceaccount") {
        let c = a.client("service-account-controller").await;
        loops.push(Box::pin(serviceaccount::start(c, i)));
    }
    if on("cronjob") {
        let c = a.client("cronjob-controller").await;
        loops.push(Box::pin(cronjob::start(c, i)));
    }
    if on("clusterrole-aggregation") {
        let c = a.client("clusterrole-aggregation-controller").await;
        loops.push(Box::pin(clusterrole_aggregation::start(c, i)));
    }
    if on("ttl-after-finished") {
        let c = a.client("ttl-after-finished-controller").await;
        loops.push(Box::pin(ttl_after_finished::start(c, i)));
    }
    if on("horizontalpodautoscaling") {
        let c = a.client("horizontal-pod-autoscaler").await;
        loops.push(Box::pin(podautoscaler::start(c, options.autoscaling, i)));
    }
    if on("nodelifecycle") {
        let c = a.client("node-controller").await;
        let grace = options.node_monitor_grace_period;
        loops.push(Box::pin(node_lifecycle::start(c, grace, i)));
    }
    if on("nodeipam") {
        match options.node_ipam.clone() {
            Some(config) => {
                let c = a.client("node-controller").await;
                loops.push(Box::pin(node_ipam::start(c, config, i)));
            }
            None => tracing::debug!("no --allocate-node-cidrs: nodes get no podCIDR from berth"),
        }
    }
    if on("podgc") {
        let c = a.client("pod-garbage-collector").await;
        let threshold = options.terminated_pod_gc_threshold;
        loops.push(Box::pin(pod_gc::start(c, threshold, i)));
    }
    if on("csrapproving") {
        let c = a.client("certificate-controller").await;
        loops.push(Box::pin(certificates::approver::start(c, i)));
    }
    if on("csrsigning") {
        match options.signing.clone() {
            Some(ca) => {
                let c = a.client("certificate-controller").await;
                loops.push(Box::pin(certificates::signer::start(c, ca, i)));
            }
            None => tracing::warn!("no signing CA: CertificateSigningRequests are not signed"),
        }
    }
    if on("root-ca-cert-publisher") {
        match options.root_ca.clone() {
            Some(ca) => {
                let c = a.client("root-ca-cert-publisher").await;
                loops.push(Box::pin(root_ca_publisher::start(c, ca, i)));
            }
            None => tracing::warn!("no root CA: the root CA publisher does not run"),
        }
    }
    if on("persistentvolume-binder") {
        let c = a.client("persistent-volume-binder").await;
        loops.push(Box::pin(volume::binder::start(c, i)));
    }
    if on("pvc-protection") {
        let c = a.client("pvc-protection-controller").await;
        loops.push(Box::pin(volume::protection::start_pvc(c, i)));
    }
    if on("pv-protection") {
        let c = a.client("pv-protection-controller").await;
        loops.push(Box::pin(volume::protection::start_pv(c, i)));
    }
    if on("ephemeral-volume-controller") {
        let c = a.client("ephemeral-volume-controller").await;
        loops.push(Box::pin(ephemeral::start(c, i)));
    }
    if on("service-lb-controller") {
        match options.lb_pool.clone() {
            Some(pool) => {
                let c = a.client("service-controller").await;
                loops.push(Box::pin(service_lb::start(c, pool, i)));
            }
            None => tracing::info!("no --lb-pool: LoadBalancer Services get no address from berth"),
        }
    }
    if on("resourcequota") {
        let c = a.client("resourcequota-controller").await;
        loops.push(Box::pin(resource_quota::start(c, i).await));
    }
    loops.extend(accounts.renewals());
    informers.run(futures_util::future::join_all(loops)).await;
}
