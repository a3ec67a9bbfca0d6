//! The IPAM of a network configuration: the built-in store or a delegated plugin.

use std::net::Ipv4Addr;

use serde_json::Value;

use crate::{
    env::Invocation,
    ipam::{BUILTIN_TYPE, IpamConf, Store, delegate},
    masq,
    spec::{Attachment, CniError, CniResult, Ipv4Cidr, NetConf, Route, code},
};

/// An address lease: what IPAM gave one interface.
#[derive(Debug, Clone)]
pub struct Lease {
    pub address: Ipv4Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub routes: Vec<Route>,
}

/// Where addresses come from for this network.
#[derive(Debug)]
pub enum Ipam {
    Builtin { store: Store, conf: IpamConf },
    Delegate { plugin: String },
}

impl Ipam {
    pub fn from_conf(conf: &NetConf) -> Result<Self, CniError> {
        let raw = conf.ipam.as_ref().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "the network configuration has no \"ipam\" section",
            )
        })?;
        let plugin = raw.get("type").and_then(Value::as_str).unwrap_or_default();
        if plugin == BUILTIN_TYPE {
            let ipam = IpamConf::parse(raw)?;
            let store = Store::new(&ipam.data_dir, &conf.name, ipam.ranges.clone());
            Ok(Self::Builtin { store, conf: ipam })
        } else if plugin.is_empty() {
            Err(CniError::new(code::INVALID_CONFIG, "ipam.type is missing"))
        } else {
            Ok(Self::Delegate {
                plugin: plugin.to_string(),
            })
        }
    }

    /// ADD: an address for `inv`'s container interface.
    pub fn allocate(&self, inv: &Invocation, stdin: &[u8]) -> Result<Lease, CniError> {
        match self {
            Self::Builtin { store, conf } => {
                let (address, range) = store.allocate(&inv.container_id, &inv.ifname)?;
                Ok(Lease {
                    address,
                    gateway: Some(range.gateway),
                    routes: conf.routes.clone(),
                })
            }
            Self::Delegate { plugin } => {
                let result = delegate::run(inv, plugin, "ADD", stdin)?.unwrap_or_default();
                lease_from_result(plugin, &result)
            }
        }
    }

    /// DEL: releases what `inv` holds; returns the address when known.
    pub fn release(&self, inv: &Invocation, stdin: &[u8]) -> Result<Option<Ipv4Addr>, CniError> {
        match self {
            Self::Builtin { store, .. } => store.release(&inv.container_id, &inv.ifname),
            Self::Delegate { plugin } => delegate::run(inv, plugin, "DEL", stdin).map(|_| None),
        }
    }

    /// CHECK: the lease in `expected` is still held.
    pub fn check(
        &self,
        inv: &Invocation,
        stdin: &[u8],
        expected: Ipv4Addr,
    ) -> Result<(), CniError> {
        match self {
            Self::Builtin { store, .. } => {
                let held = store.allocations()?;
                let ok = held
                    .get(&expected)
                    .is_some_and(|o| o.container_id == inv.container_id && o.ifname == inv.ifname);
                if ok {
                    Ok(())
                } else {
                    Err(CniError::new(
                        code::CHECK_FAILED,
                        format!(
                            "IPAM holds no allocation of {expected} for {}/{}",
                            inv.container_id, inv.ifname
                        ),
                    ))
                }
            }
            Self::Delegate { plugin } => delegate::run(inv, plugin, "CHECK", stdin).map(|_| ()),
        }
    }

    /// GC: releases every allocation not in `valid`; returns the released addresses.
    pub fn gc(
        &self,
        inv: &Invocation,
        stdin: &[u8],
        valid: &[Attachment],
    ) -> Result<Vec<Ipv4Addr>, CniError> {
        match self {
            Self::Builtin { store, .. } => store.gc(valid),
            Self::Delegate { plugin } => {
                delegate::run(inv, plugin, "GC", stdin).map(|_| Vec::new())
            }
        }
    }

    /// STATUS: ready to serve ADD?
    pub fn status(&self, inv: &Invocation, stdin: &[u8]) -> Result<(), CniError> {
        match self {
            Self::Builtin { store, .. } => {
                if store.free()? == 0 {
                    Err(CniError::new(
                        code::NOT_AVAILABLE,
                        "the IPAM range has no free address",
                    ))
                } else {
                    Ok(())
                }
            }
            Self::Delegate { plugin } => delegate::run(inv, plugin, "STATUS", stdin).map(|_| ()),
        }
    }

    /// The subnet the addresses come from (for masquerading), when known here.
    pub fn subnet_of(&self, ip: Ipv4Addr) -> Option<Ipv4Cidr> {
        match self {
            Self::Builtin { conf, .. } => conf
                .ranges
                .iter()
                .find(|r| r.subnet.contains(ip))
                .map(|r| r.subnet),
            Self::Delegate { .. } => None,
        }
    }
}

impl Ipam {
    /// `ipMasq` after ADD gave `address`: the rule of its subnet (built-in IPAM) or of
    /// the address itself (delegated IPAM); see [`masq`].
    /// Traffic to `exempt` (`nonMasqueradeCIDR`, else the subnet) keeps its source.
    pub fn masquerade(
        &self,
        network: &str,
        address: Ipv4Cidr,
        exempt: Option<Ipv4Cidr>,
    ) -> Result<(), CniError> {
        match self {
            Self::Builtin { store, .. } => {
                let subnet = self.subnet_of(address.addr).unwrap_or(address);
                masq::SubnetMasq {
                    dir: store.dir(),
                    network,
                    subnet,
                    exempt: exempt.unwrap_or(subnet),
                }
                .ensure()
            }
            Self::Delegate { .. } => masq::add(network, address.addr, exempt.unwrap_or(address)),
        }
    }

    /// `ipMasq` after DEL or GC released addresses: with the built-in IPAM, each
    /// subnet's rule goes once none of its addresses is handed out; with a delegated
    /// one, the rules of `released` (addresses with their subnets) go.
    pub fn unmasquerade(
        &self,
        network: &str,
        released: &[Ipv4Cidr],
        exempt: Option<Ipv4Cidr>,
    ) -> Result<(), CniError> {
        match self {
            Self::Builtin { store, conf } => {
                for range in &conf.ranges {
                    let subnet = range.subnet;
                    let m = masq::SubnetMasq {
                        dir: store.dir(),
                        network,
                        subnet,
                        exempt: exempt.unwrap_or(subnet),
                    };
                    m.release_if_unused(|| {
                        Ok(store.allocations()?.keys().any(|ip| subnet.contains(*ip)))
                    })?;
                }
                Ok(())
            }
            Self::Delegate { .. } => {
                for a in released {
                    masq::del(network, a.addr, exempt.unwrap_or(*a))?;
                }
                Ok(())
            }
        }
    }
}

fn lease_from_result(plugin: &str, result: &CniResult) -> Result<Lease, CniError> {
    let ip = result.ips.first().ok_or_else(|| {
        CniError::new(
            code::IPAM_DELEGATE,
            format!("IPAM plugin {plugin} returned no IPv4 address"),
        )
    })?;
    Ok(Lease {
        address: ip.address,
        gateway: ip.gateway,
        routes: result.routes.clone(),
    })
}
