//! Cross-node pod routing: every other node's pod range (its Node's `spec.podCIDR`)
//! routed from this node, programmed with rtnetlink from the Node watch
//! ([`watch::run`]); the entry point for one sync is [`Router::sync`].
//!
//! Two ways to reach a peer, chosen by `--pod-network-mode` ([`Mode`]):
//! - routed (host-gw, as flannel's `host-gw` backend): `podCIDR via <node IP>` out
//!   of the interface carrying this node's IP — only possible when the peer's node IP
//!   is on a subnet of that interface (one L2 segment);
//! - VXLAN (flannel's `vxlan` backend, same parameters): a device [`VXLAN_DEVICE`]
//!   with VNI [`VNI`] on UDP port [`VXLAN_PORT`] over the node's interface, learning
//!   off, holding the `.0` address of this node's podCIDR as its VTEP address; for
//!   each peer a forwarding-database entry (the peer's VTEP MAC → its node IP), a
//!   permanent neighbour entry (its VTEP address → that MAC) and the route
//!   `podCIDR via <its VTEP address> dev berth.vxlan onlink`. Each node publishes its
//!   VTEP MAC as the annotation [`VTEP_MAC_ANNOTATION`] on its Node.
//!
//! `auto` routes directly where it can and tunnels the rest. berth's routes carry
//! their own protocol number ([`ROUTE_PROTOCOL`]), so a sync after a restart finds
//! what an earlier run made, keeps what is still right, and removes the rest: a sync
//! is idempotent. [`Router::teardown`] removes everything (the agent's
//! `--remove-all-pods`, when the node is taken down); a plain stop leaves the routes
//! in place, as it leaves the pods running.

mod netlink;
pub mod plan;
pub mod watch;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use berth_cni::spec::Ipv4Cidr;
use k8s_openapi::api::core::v1::Node;

pub use netlink::ROUTE_PROTOCOL;
use netlink::{Link, Netlink};
pub use plan::{Plan, Via};

/// The VXLAN device (the name fits IFNAMSIZ).
pub const VXLAN_DEVICE: &str = "berth.vxlan";
/// The VXLAN network identifier, flannel's default.
pub const VNI: u32 = 1;
/// The UDP port, flannel's (the Linux kernel's historical default) rather than
/// IANA's 4789, so berth and flannel nodes are configured alike.
pub const VXLAN_PORT: u16 = 8472;
/// The VXLAN encapsulation's overhead over IPv4: the device's MTU is the
/// interface's less this.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The Node annotation carrying its VTEP MAC (as flannel's
/// `flannel.alpha.coreos.com/backend-data`).
pub const VTEP_MAC_ANNOTATION: &str = "berth.dev/vtep-mac";

/// `--pod-network-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Direct routes to peers on this node's segment, VXLAN to the others.
    #[default]
    Auto,
    /// Direct routes only.
    Routed,
    /// VXLAN to every peer.
    Vxlan,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "routed" => Ok(Mode::Routed),
            "vxlan" => Ok(Mode::Vxlan),
            _ => Err(format!("{s:?}: the modes are auto, routed and vxlan")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Routed => "routed",
            Mode::Vxlan => "vxlan",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("the node IP {0} is on no interface of the pod network's namespace")]
    NoInterface(Ipv4Addr),
}

/// One node's routing settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub mode: Mode,
    /// The network namespace of the pod network, when not the agent's own.
    pub netns: Option<PathBuf>,
}

/// Cross-node routing on one node.
#[derive(Debug)]
pub struct Router {
    cfg: Config,
    nl: Netlink,
    mac: [u8; 6],
}

impl Router {
    /// Opens the netlink socket (in the pod network's namespace). Needs a tokio
    /// runtime.
    pub fn new(cfg: Config) -> Result<Self, Error> {
        let nl = Netlink::connect(cfg.netns.as_deref())?;
        // The same MAC on every run, so the annotation never goes stale.
        let mac = berth_cni::netlink::mac_from(&format!("{VXLAN_DEVICE}/{}", cfg.node_name));
        Ok(Self { cfg, nl, mac })
    }

    /// This node's VTEP MAC, for [`VTEP_MAC_ANNOTATION`].
    pub fn vtep_mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    /// Brings the kernel in line with `nodes` (all the cluster's Nodes, this one
    /// included) and returns what was applied.
    pub async fn sync(&self, nodes: &[Node]) -> Result<Plan, Error> {
        let (iface, subnets) = self
            .nl
            .interface_of(self.cfg.node_ip)
            .await?
            .ok_or(Error::NoInterface(self.cfg.node_ip))?;
        let (own_cidr, peers, skipped) = plan::peers(nodes, &self.cfg.node_name);
        let local = plan::Local {
            name: self.cfg.node_name.clone(),
            node_ip: self.cfg.node_ip,
            subnets,
            pod_cidr: own_cidr,
        };
        let mut plan = plan::plan(self.cfg.mode, &local, &peers);
        plan.skipped.splice(0..0, skipped);
        let vxlan = match plan.vtep {
            Some(vtep) => Some(self.ensure_vxlan(&iface, vtep).await?),
            None => None,
        };
        for route in self.nl.routes().await? {
            if !plan.routes.contains_key(&route.dst) {
                tracing::info!(dst = %format!("{}/{}", route.dst.0, route.dst.1), "removing a route to pods of a node that is gone");
                self.nl.delete_route(route).await?;
            }
        }
        let current = self.nl.routes().await?;
        let is = |dst: &(Ipv4Addr, u8), gw: Ipv4Addr, oif: u32| {
            current
                .iter()
                .any(|r| r.dst == *dst && r.gateway == Some(gw) && r.oif == Some(oif))
        };
        let mut fdb = BTreeSet::new();
        let mut neighbours = BTreeSet::new();
        for (dst, via) in &plan.routes {
            match (*via, &vxlan) {
                (Via::Direct { gateway }, _) => {
                    if !is(dst, gateway, iface.index) {
                        self.nl
                            .replace_route(*dst, gateway, iface.index, false)
                            .await?;
                    }
                }
                (Via::Vxlan { vtep, mac, remote }, Some(dev)) => {
                    self.nl.replace_fdb(dev.index, mac, remote).await?;
                    self.nl.replace_neighbour(dev.index, vtep, mac).await?;
                    fdb.insert((mac, remote));
                    neighbours.insert((vtep, mac));
                    if !is(dst, vtep, dev.index) {
                        self.nl.replace_route(*dst, vtep, dev.index, true).await?;
                    }
                }
                // plan() asks for the device whenever it tunnels.
                (Via::Vxlan { .. }, None) => {}
            }
        }
        match &vxlan {
            Some(dev) => {
                for e in self.nl.entries(dev.index, true).await? {
                    let wanted = e.permanent
                        && matches!((e.mac, e.ip), (Some(m), Some(ip)) if fdb.contains(&(m, ip)));
                    if !wanted {
                        self.nl.delete_entry(e).await?;
                    }
                }
                for e in self.nl.entries(dev.index, false).await? {
                    let wanted = e.permanent
                        && matches!((e.ip, e.mac), (Some(ip), Some(m)) if neighbours.contains(&(ip, m)));
                    if !wanted {
                        self.nl.delete_entry(e).await?;
                    }
                }
            }
            None => self.remove_vxlan().await?,
        }
        Ok(plan)
    }

    /// The VXLAN device as it should be (made again when its parameters differ).
    async fn ensure_vxlan(&self, iface: &Link, vtep: Ipv4Addr) -> Result<Link, Error> {
        let want = netlink::Vxlan {
            vni: Some(VNI),
            local: Some(self.cfg.node_ip),
            dev: Some(iface.index),
            port: Some(VXLAN_PORT),
        };
        let dev = match self.nl.link(VXLAN_DEVICE).await? {
            Some(l) if l.vxlan == Some(want) && l.mac == Some(self.mac) => {
                self.nl.set_up(l.index).await?;
                l
            }
            existing => {
                if let Some(l) = existing {
                    tracing::info!(
                        device = VXLAN_DEVICE,
                        "recreating the VXLAN device with new parameters"
                    );
                    self.nl.delete_link(l.index).await?;
                }
                let mtu = iface.mtu.map(|m| m.saturating_sub(VXLAN_OVERHEAD));
                self.nl
                    .create_vxlan(
                        VXLAN_DEVICE,
                        (VNI, VXLAN_PORT),
                        iface.index,
                        self.cfg.node_ip,
                        self.mac,
                        mtu,
                    )
                    .await?
            }
        };
        let addr = Ipv4Cidr::new(vtep, 32).ok_or_else(|| Error::Setup("VTEP address".into()))?;
        self.nl.set_only_address(dev.index, addr).await?;
        Ok(dev)
    }

    async fn remove_vxlan(&self) -> Result<(), Error> {
        if let Some(l) = self.nl.link(VXLAN_DEVICE).await? {
            self.nl.delete_link(l.index).await?;
        }
        Ok(())
    }

    /// Removes every route, entry and device this module made.
    pub async fn teardown(&self) -> Result<(), Error> {
        for route in self.nl.routes().await? {
            self.nl.delete_route(route).await?;
        }
        self.remove_vxlan().await
    }
}
