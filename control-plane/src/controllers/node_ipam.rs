//! Node IPAM, kube-controller-manager's `nodeipam` controller with its range allocator
//! (`pkg/controller/nodeipam/ipam/range_allocator.go`), run with
//! `--allocate-node-cidrs --cluster-cidr=…`: each Node without a `spec.podCIDR` gets
//! the next free `--node-cidr-mask-size` block of the cluster CIDR (one per family for
//! a dual-stack `--cluster-cidr`) written to `spec.podCIDR` and `spec.podCIDRs`; the
//! agents configure their pod bridge from it and route to the other nodes' blocks.
//!
//! At start the CIDRs Nodes already hold are marked used, so a restart moves nothing.
//! A deleted Node frees its CIDR. As upstream's `cidrset`, the next allocation starts
//! after the last one handed out (round robin), so a block just freed — whose routes
//! may still linger on other nodes — is the last to be reused. An exhausted cluster
//! CIDR gives the Node the event upstream gives (`CIDRNotAvailable`) and the Node is
//! retried as blocks come free. A podCIDR set by hand (or by an agent's `--pod-cidr`)
//! is kept; one that overlaps another Node's is refused by the apiserver
//! (`apiserver::admission::pod_cidrs`), and when two such writes raced past that
//! check, the later Node gets a `PodCIDROverlap` warning and holds nothing here
//! (the agents do not route to it either). [`start`] runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::queue::Queue;
use crate::cidr::Cidr;
use crate::client::{Informers, Involved, record_event};

/// The events' source, as upstream's range allocator names it.
const COMPONENT: &str = "cidrAllocator";
/// Upstream's limit on the blocks of one cluster CIDR (`cidrset`: 16 bits).
const MAX_SUBNET_BITS: u8 = 16;
/// How often a Node the allocator could not serve is tried again, and how often the
/// holdings are checked against the Nodes (a Node deleted while the watch was down
/// leaves no event).
const RETRY: Duration = Duration::from_secs(30);

/// `--cluster-cidr` and the node mask sizes, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// One prefix per family, in the order given (the first is `spec.podCIDR`).
    pub cluster_cidrs: Vec<Cidr>,
    pub node_mask_ipv4: u8,
    pub node_mask_ipv6: u8,
}

impl Config {
    /// From kube-controller-manager's flags: `--cluster-cidr` (comma-separated, at most
    /// one per family), `--node-cidr-mask-size` (single-stack only) and the per-family
    /// `--node-cidr-mask-size-ipv4`/`-ipv6` (defaults 24 and 64).
    pub fn new(
        cluster_cidr: &str,
        mask: Option<u8>,
        mask_ipv4: Option<u8>,
        mask_ipv6: Option<u8>,
    ) -> Result<Self, String> {
        let mut cluster_cidrs: Vec<Cidr> = Vec::new();
        for item in cluster_cidr
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let cidr: Cidr = item.parse().map_err(|e| format!("--cluster-cidr: {e}"))?;
            if cluster_cidrs.iter().any(|c| c.is_ipv6() == cidr.is_ipv6()) {
                return Err(
                    "--cluster-cidr: may specify no more than one CIDR for each IP family".into(),
                );
            }
            cluster_cidrs.push(cidr);
        }
        if cluster_cidrs.is_empty() {
            return Err("--allocate-node-cidrs needs --cluster-cidr".into());
        }
        if cluster_cidrs.len() > 1 && mask.is_some() {
            return Err(
                "usage of --node-cidr-mask-size is not allowed with dual-stack clusters; use --node-cidr-mask-size-ipv4 and --node-cidr-mask-size-ipv6".into(),
            );
        }
        let config = Config {
            node_mask_ipv4: mask_ipv4.or(mask).unwrap_or(24),
            node_mask_ipv6: mask_ipv6.or(mask).unwrap_or(64),
            cluster_cidrs,
        };
        for cidr in &config.cluster_cidrs {
            CidrSet::new(*cidr, config.node_mask(cidr))?;
        }
        Ok(config)
    }

    fn node_mask(&self, cluster: &Cidr) -> u8 {
        if cluster.is_ipv6() {
            self.node_mask_ipv6
        } else {
            self.node_mask_ipv4
        }
    }
}

/// The blocks of one cluster CIDR and which are used (upstream's `cidrset`).
#[derive(Debug, Clone)]
pub struct CidrSet {
    cluster: Cidr,
    node_mask: u8,
    used: Vec<bool>,
    free: u64,
    /// Where the next search starts: after the last block handed out.
    next: u64,
}

impl CidrSet {
    pub fn new(cluster: Cidr, node_mask: u8) -> Result<Self, String> {
        if node_mask < cluster.prefix() || node_mask > cluster.width() {
            return Err(format!(
                "--cluster-cidr {cluster}: the node mask size {node_mask} must be between the cluster CIDR's ({}) and {}",
                cluster.prefix(),
                cluster.width()
            ));
        }
        if node_mask - cluster.prefix() > MAX_SUBNET_BITS {
            return Err(format!(
                "--cluster-cidr {cluster}: the node CIDR size is too big: node mask {node_mask} may be at most {MAX_SUBNET_BITS} bits longer than the cluster CIDR's /{}",
                cluster.prefix()
            ));
        }
        let count = cluster.subnet_count(node_mask).unwrap_or(0);
        Ok(Self {
            cluster,
            node_mask,
            used: vec![false; usize::try_from(count).unwrap_or(0)],
            free: count,
            next: 0,
        })
    }

    /// The next free block after the last one handed out, marked used.
    pub fn allocate_next(&mut self) -> Option<Cidr> {
        let count = self.used.len() as u64;
        for step in 0..count {
            let i = (self.next + step) % count;
            if !self.used[i as usize] {
                self.used[i as usize] = true;
                self.free -= 1;
                self.next = (i + 1) % count;
                return self.cluster.subnet(self.node_mask, i);
            }
        }
        None
    }

    /// Marks the blocks `cidr` covers as used; false when it is outside the cluster
    /// CIDR (nothing to mark).
    pub fn occupy(&mut self, cidr: &Cidr) -> bool {
        self.mark(cidr, true)
    }

    /// Marks the blocks `cidr` covers as free.
    pub fn release(&mut self, cidr: &Cidr) {
        self.mark(cidr, false);
    }

    fn mark(&mut self, cidr: &Cidr, used: bool) -> bool {
        let Some((first, last)) = self.cluster.subnet_range(self.node_mask, cidr) else {
            return false;
        };
        for i in first..=last {
            let slot = &mut self.used[i as usize];
            if *slot != used {
                *slot = used;
                if used {
                    self.free -= 1;
                } else {
                    self.free += 1;
                }
            }
        }
        true
    }

    pub fn free(&self) -> u64 {
        self.free
    }
}

/// Why a Node holds no CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Its podCIDR overlaps the one Node `.0` holds (`.1`).
    Overlap(String, Cidr, Cidr),
    /// A cluster CIDR has no free block.
    Exhausted(Cidr),
}

/// What each Node holds, over the cluster CIDRs' sets.
#[derive(Debug)]
pub struct Allocator {
    sets: Vec<CidrSet>,
    held: BTreeMap<String, Vec<Cidr>>,
}

impl Allocator {
    pub fn new(config: &Config) -> Result<Self, String> {
        let sets = config
            .cluster_cidrs
            .iter()
            .map(|c| CidrSet::new(*c, config.node_mask(c)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sets,
            held: BTreeMap::new(),
        })
    }

    /// What `node` holds.
    pub fn held(&self, node: &str) -> Option<&[Cidr]> {
        self.held.get(node).map(Vec::as_slice)
    }

    /// Records that `node` holds `cidrs` (its `spec.podCIDRs`); refused when one of
    /// them overlaps another Node's.
    pub fn adopt(&mut self, node: &str, cidrs: &[Cidr]) -> Result<(), Refused> {
        if self.held(node) == Some(cidrs) {
            return Ok(());
        }
        for (other, theirs) in self.held.iter().filter(|(n, _)| n.as_str() != node) {
            for mine in cidrs {
                if let Some(t) = theirs.iter().find(|t| t.overlaps(mine)) {
                    return Err(Refused::Overlap(other.clone(), *t, *mine));
                }
            }
        }
        self.release(node);
        for cidr in cidrs {
            for set in &mut self.sets {
                set.occupy(cidr);
            }
        }
        self.held.insert(node.to_owned(), cidrs.to_vec());
        Ok(())
    }

    /// A block of each cluster CIDR for `node` (or what it holds already).
    pub fn allocate(&mut self, node: &str) -> Result<Vec<Cidr>, Refused> {
        if let Some(held) = self.held.get(node) {
            return Ok(held.clone());
        }
        let mut got: Vec<Cidr> = Vec::new();
        for i in 0..self.sets.len() {
            match self.sets[i].allocate_next() {
                Some(c) => got.push(c),
                None => {
                    for (set, c) in self.sets.iter_mut().zip(&got) {
                        set.release(c);
                    }
                    return Err(Refused::Exhausted(self.sets[i].cluster));
                }
            }
        }
        self.held.insert(node.to_owned(), got.clone());
        Ok(got)
    }

    /// Frees what `node` holds.
    pub fn release(&mut self, node: &str) -> Option<Vec<Cidr>> {
        let cidrs = self.held.remove(node)?;
        for cidr in &cidrs {
            for set in &mut self.sets {
                set.release(cidr);
            }
        }
        Some(cidrs)
    }

    /// The Nodes holding something.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.held.keys().map(String::as_str)
    }
}

/// A Node's `spec.podCIDRs` (else its `spec.podCIDR`), parsed; `Err` names a bad one.
pub fn pod_cidrs(node: &Node) -> Result<Vec<Cidr>, String> {
    let spec = node.spec.as_ref();
    let list: Vec<String> = match spec.and_then(|s| s.pod_cidrs.clone()) {
        Some(l) if !l.is_empty() => l,
        _ => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    };
    list.iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<Cidr>())
        .collect()
}

/// Oldest first, then by name: the order in which Nodes' claims win.
fn by_age(nodes: &mut [Arc<Node>]) {
    nodes.sort_by(|a, b| {
        let t = |n: &Node| n.metadata.creation_timestamp.clone().map(|t| t.0);
        t(a).cmp(&t(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

struct Controller {
    client: Client,
    nodes: Store<Node>,
    allocator: Mutex<Allocator>,
    /// Nodes refused for an overlap or exhaustion, tried again when a CIDR comes free.
    waiting: Mutex<BTreeSet<String>>,
    queue: Arc<Queue>,
}

/// Runs the controller with `config`.
pub fn start(
    client: Client,
    config: Config,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let nodes = informers.add(Api::<Node>::all(client.clone()), {
        let q = queue.clone();
        move |node: &Node| q.add(node.metadata.name.clone().unwrap_or_default())
    });
    async move {
        let _ = nodes.wait_until_ready().await;
        let mut allocator = match Allocator::new(&config) {
            Ok(a) => a,
            Err(err) => {
                tracing::error!(%err, "node IPAM: bad configuration; no CIDRs are allocated");
                return;
            }
        };
        // Occupy what the Nodes hold before handing anything out, the oldest first.
        let mut existing = nodes.state();
        by_age(&mut existing);
        for node in &existing {
            let name = node.metadata.name.clone().unwrap_or_default();
            match pod_cidrs(node) {
                Ok(cidrs) if !cidrs.is_empty() => {
                    if let Err(refused) = allocator.adopt(&name, &cidrs) {
                        tracing::warn!(node = %name, ?refused, "node IPAM: podCIDR not adopted");
                    }
                }
                _ => {}
            }
        }
        tracing::info!(cluster_cidrs = ?config.cluster_cidrs, "node IPAM: allocating node CIDRs");
        let ctl = Arc::new(Controller {
            client,
            nodes,
            allocator: Mutex::new(allocator),
            waiting: Mutex::new(BTreeSet::new()),
            queue: queue.clone(),
        });
        let resync = {
            let ctl = ctl.clone();
            async move {
                loop {
                    tokio::time::sleep(RETRY).await;
                    ctl.resync();
                }
            }
        };
        let work = queue.work(COMPONENT, move |key| {
            let ctl = ctl.clone();
            async move { ctl.sync(&key).await }
        });
        futures_util::future::join(work, resync).await;
    }
}

impl Controller {
    fn allocator(&self) -> std::sync::MutexGuard<'_, Allocator> {
        self.allocator.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the Nodes held here that are gone (their delete was not seen), and
    /// those waiting for a CIDR.
    fn resync(&self) {
        let gone: Vec<String> = self
            .allocator()
            .nodes()
            .filter(|n| self.nodes.get(&ObjectRef::new(n)).is_none())
            .map(str::to_owned)
            .collect();
        let waiting: Vec<String> = self.waiting().iter().cloned().collect();
        for name in gone.into_iter().chain(waiting) {
            self.queue.add(name);
        }
    }

    /// A CIDR came free: the Nodes waiting for one are tried again.
    fn freed(&self) {
        let waiting = std::mem::take(&mut *self.waiting());
        for name in waiting {
            self.queue.add(name);
        }
    }

    async fn sync(&self, name: &str) -> Result<Option<Duration>, kube::Error> {
        let Some(node) = self.nodes.get(&ObjectRef::new(name)) else {
            self.waiting().remove(name);
            if let Some(cidrs) = self.allocator().release(name) {
                tracing::info!(node = %name, ?cidrs, "node IPAM: released the CIDRs of a deleted node");
                self.freed();
            }
            return Ok(None);
        };
        if node.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let cidrs = match pod_cidrs(&node) {
            Ok(c) => c,
            Err(err) => {
                // The apiserver validates podCIDRs; an object stored before that
                // is left alone.
                tracing::warn!(node = %name, %err, "node IPAM: unparsable podCIDR");
                return Ok(None);
            }
        };
        if !cidrs.is_empty() {
            let adopted = self.allocator().adopt(name, &cidrs);
            match adopted {
                Ok(()) => {
                    self.waiting().remove(name);
                }
                Err(Refused::Overlap(other, theirs, mine)) => {
                    let first = self.waiting().insert(name.to_owned());
                    if first {
                        let msg = format!(
                            "podCIDR {mine} overlaps {theirs} of node {other}: refused, pod traffic is not routed to this node"
                        );
                        self.event(&node, "Warning", "PodCIDROverlap", &msg).await;
                    }
                }
                Err(Refused::Exhausted(_)) => {}
            }
            return Ok(None);
        }
        let allocated = self.allocator().allocate(name);
        let cidrs = match allocated {
            Ok(c) => c,
            Err(refused) => {
                self.waiting().insert(name.to_owned());
                tracing::warn!(node = %name, ?refused, "node IPAM: no CIDR available");
                // As upstream's RecordNodeStatusChange.
                let msg = format!("Node {name} status is now: CIDRNotAvailable");
                self.event(&node, "Normal", "CIDRNotAvailable", &msg).await;
                return Ok(Some(RETRY));
            }
        };
        let texts: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
        let patch = json!({"spec": {"podCIDR": texts[0], "podCIDRs": texts}});
        let api: Api<Node> = Api::all(self.client.clone());
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.waiting().remove(name);
                tracing::info!(node = %name, cidrs = ?texts, "node IPAM: allocated");
                Ok(None)
            }
            Err(err) => {
                self.allocator().release(name);
                if matches!(&err, kube::Error::Api(s) if s.code == 404) {
                    return Ok(None);
                }
                let msg = format!("Node {name} status is now: CIDRAssignmentFailed");
                self.event(&node, "Normal", "CIDRAssignmentFailed", &msg)
                    .await;
                Err(err)
            }
        }
    }

    async fn event(&self, node: &Node, type_: &str, reason: &str, message: &str) {
        record_event(
            &self.client,
            COMPONENT,
            &Involved::of(node),
            type_,
            reason,
            message,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn config(cluster: &str) -> Config {
        Config::new(cluster, None, None, None).unwrap_or_else(|e| panic!("{cluster}: {e}"))
    }

    #[test]
    fn flags_are_checked_as_kube_controller_managers() {
        let one = config("10.244.0.0/16");
        assert_eq!((one.node_mask_ipv4, one.node_mask_ipv6), (24, 64));
        let dual = config("10.244.0.0/16,fd00:10:244::/56");
        assert_eq!(dual.cluster_cidrs.len(), 2);
        assert!(Config::new("", None, None, None).is_err());
        assert!(Config::new("10.0.0.0/16,10.1.0.0/16", None, None, None).is_err());
        assert!(
            Config::new("10.244.0.0/16,fd00::/56", Some(24), None, None).is_err(),
            "--node-cidr-mask-size is single-stack only"
        );
        assert!(
            Config::new("10.244.0.0/24", Some(16), None, None).is_err(),
            "a node CIDR larger than the cluster's"
        );
        assert!(
            Config::new("10.0.0.0/8", Some(26), None, None).is_err(),
            "more than 2^16 blocks"
        );
        assert_eq!(
            Config::new("10.0.0.0/16", Some(26), None, None)
                .expect("/26 blocks")
                .node_mask_ipv4,
            26
        );
    }

    #[test]
    fn blocks_are_handed_out_round_robin_and_reused_after_the_rest() {
        let mut al = Allocator::new(&config("10.244.0.0/22")).expect("allocator");
        assert_eq!(al.allocate("a"), Ok(vec![c("10.244.0.0/24")]));
        assert_eq!(al.allocate("b"), Ok(vec![c("10.244.1.0/24")]));
        assert_eq!(al.allocate("a"), Ok(vec![c("10.244.0.0/24")]), "held");
        assert_eq!(al.release("a"), Some(vec![c("10.244.0.0/24")]));
        assert_eq!(al.allocate("c"), Ok(vec![c("10.244.2.0/24")]));
        assert_eq!(al.allocate("d"), Ok(vec![c("10.244.3.0/24")]));
        assert_eq!(
            al.allocate("e"),
            Ok(vec![c("10.244.0.0/24")]),
            "the freed block, once the others are used"
        );
        assert_eq!(
            al.allocate("f"),
            Err(Refused::Exhausted(c("10.244.0.0/22")))
        );
        al.release("c");
        assert_eq!(al.allocate("f"), Ok(vec![c("10.244.2.0/24")]));
    }

    #[test]
    fn held_cidrs_are_occupied_and_overlaps_refused() {
        let mut al = Allocator::new(&config("10.244.0.0/22")).expect("allocator");
        al.adopt("old", &[c("10.244.0.0/24")]).expect("adopt");
        // A hand-set /23 covers two blocks.
        al.adopt("big", &[c("10.244.2.0/23")]).expect("adopt a /23");
        // Outside the cluster CIDR: held, nothing to mark.
        al.adopt("outside", &[c("192.168.5.0/24")]).expect("adopt");
        assert_eq!(
            al.adopt("clash", &[c("10.244.3.0/24")]),
            Err(Refused::Overlap(
                "big".into(),
                c("10.244.2.0/23"),
                c("10.244.3.0/24")
            ))
        );
        assert_eq!(
            al.adopt("clash2", &[c("192.168.5.128/25")]),
            Err(Refused::Overlap(
                "outside".into(),
                c("192.168.5.0/24"),
                c("192.168.5.128/25")
            ))
        );
        assert_eq!(al.allocate("new"), Ok(vec![c("10.244.1.0/24")]));
        assert!(matches!(al.allocate("more"), Err(Refused::Exhausted(_))));
        al.release("big");
        assert_eq!(al.allocate("more"), Ok(vec![c("10.244.2.0/24")]));
        assert!(al.adopt("clash", &[c("10.244.3.0/24")]).is_ok());
        assert_eq!(al.sets[0].free(), 0);
    }

    #[test]
    fn dual_stack_nodes_get_one_block_of_each_family_or_none() {
        let mut al = Allocator::new(
            &Config::new("10.244.0.0/24,fd00:10:244::/63", None, Some(24), Some(64))
                .expect("config"),
        )
        .expect("allocator");
        assert_eq!(
            al.allocate("a"),
            Ok(vec![c("10.244.0.0/24"), c("fd00:10:244::/64")])
        );
        // The IPv4 side is full: the IPv6 block taken for b is given back.
        assert!(matches!(al.allocate("b"), Err(Refused::Exhausted(_))));
        assert_eq!(al.sets[1].free(), 1);
    }

    #[test]
    fn pod_cidrs_come_from_the_list_else_the_single_field() {
        let node = |spec: serde_json::Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": spec})).expect("node")
        };
        assert_eq!(
            pod_cidrs(&node(json!({"podCIDR": "10.1.0.0/24"}))),
            Ok(vec![c("10.1.0.0/24")])
        );
        assert_eq!(
            pod_cidrs(&node(
                json!({"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24", "fd00::/64"]})
            )),
            Ok(vec![c("10.1.0.0/24"), c("fd00::/64")])
        );
        assert_eq!(pod_cidrs(&node(json!({}))), Ok(vec![]));
        assert!(pod_cidrs(&node(json!({"podCIDR": "nonsense"}))).is_err());
    }
}
