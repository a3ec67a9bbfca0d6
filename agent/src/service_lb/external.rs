//! The node's external interfaces, where NodePorts, external IPs, load-balancer IPs
//! and hostPorts are answered: the tc programs are attached to the interface of the
//! node's InternalIP and to every interface with an address in `--nodeport-addresses`
//! (kube-proxy's flag), and to the pod bridge (replies of masqueraded flows come back
//! there). Their IPv4 addresses are the addresses NodePorts answer on. [`run`] checks
//! the interfaces every [`RESCAN`] and attaches to new ones (an interface re-created
//! under the same name is a new one), detaches from those no longer chosen, and
//! rewrites the address set when it changes. All of it happens in the pod network's
//! namespace (the host's, unless `--pod-network-netns`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_ebpf::SocketLb;

use super::{LbMetrics, ServiceSync};

/// How often the interfaces are looked at again.
pub const RESCAN: Duration = Duration::from_secs(2);

/// An IPv4 CIDR of `--nodeport-addresses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0-32"))?;
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        u32::from(a) & mask == u32::from(self.addr) & mask
    }
}

/// What the agent attaches to: the node's address, the CIDRs, the pod bridge.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_ip: Option<Ipv4Addr>,
    pub nodeport_addresses: Vec<Cidr>,
    pub pod_bridge: String,
    /// The pod network's namespace, when it is not the agent's own.
    pub netns: Option<PathBuf>,
    /// eBPF host routing's range (the cluster CIDR), or None to leave all
    /// forwarding to the kernel; see [`SocketLb::set_host_routing`].
    pub host_routing: Option<Cidr>,
}

/// The IPv4 addresses of each interface (loopback left out).
pub fn interfaces() -> BTreeMap<String, Vec<Ipv4Addr>> {
    let mut out: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for ifa in addrs {
        if ifa
            .flags
            .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let entry = out.entry(ifa.interface_name.clone()).or_default();
        if let Some(v4) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            entry.push(v4.ip());
        }
    }
    out
}

/// The external interfaces and the NodePort addresses, from the interfaces seen.
pub fn choose(
    cfg: &Config,
    seen: &BTreeMap<String, Vec<Ipv4Addr>>,
) -> (BTreeSet<String>, BTreeSet<Ipv4Addr>) {
    let mut ifaces = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    for (name, ips) in seen {
        let picked: Vec<Ipv4Addr> = ips
            .iter()
            .copied()
            .filter(|ip| {
                Some(*ip) == cfg.node_ip || cfg.nodeport_addresses.iter().any(|c| c.contains(*ip))
            })
            .collect();
        if !picked.is_empty() {
            ifaces.insert(name.clone());
            addrs.extend(picked);
        }
    }
    if seen.contains_key(&cfg.pod_bridge) {
        ifaces.insert(cfg.pod_bridge.clone());
    }
    (ifaces, addrs)
}

/// One pass: attach, detach and set the addresses as the interfaces are now.
fn reconcile(
    cfg: &Config,
    sync: &Mutex<ServiceSync<SocketLb>>,
    last: &mut BTreeSet<Ipv4Addr>,
    first: bool,
) -> Result<(), String> {
    let mut sync = sync
        .lock()
        .map_err(|_| "the LB lock is poisoned".to_owned())?;
    attach(cfg, sync.target_mut(), last, first)
}

/// One pass on `lb` itself, in the calling thread's network namespace: attach and
/// detach as the interfaces are now, and (on the `first` pass or when they changed)
/// set the NodePort addresses and host routing's range. The agent runs it every
/// [`RESCAN`]; `bench crossnode` runs it once per node.
pub fn attach(
    cfg: &Config,
    lb: &mut SocketLb,
    last: &mut BTreeSet<Ipv4Addr>,
    first: bool,
) -> Result<(), String> {
    let seen = interfaces();
    let (wanted, addrs) = choose(cfg, &seen);
    if first {
        lb.forget_gone_interfaces();
    }
    // Every pass (one map write): a failed write is retried, and a value an earlier
    // agent pinned is replaced.
    let range = cfg
        .host_routing
        .filter(|c| c.prefix > 0)
        .map(|c| (c.addr, c.prefix));
    let mut errors = Vec::new();
    match lb.set_host_routing(range) {
        Ok(()) if first => match range {
            Some((addr, prefix)) => {
                tracing::info!(range = %format!("{addr}/{prefix}"), "eBPF host routing on");
            }
            None => tracing::info!("eBPF host routing off"),
        },
        Ok(()) => {}
        Err(e) => errors.push(format!("eBPF host routing: {e}")),
    }
    for (name, index) in lb.external_interfaces() {
        let current = nix::net::if_::if_nametoindex(name.as_str()).ok();
        if !wanted.contains(&name) || current != Some(index) {
            lb.detach_external(&name);
            tracing::info!(interface = %name, "NodePort programs detached");
        }
    }
    let attached: BTreeSet<String> = lb
        .external_interfaces()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for name in wanted.difference(&attached) {
        match lb.attach_external(name) {
            Ok(()) => tracing::info!(interface = %name, "NodePort programs attached"),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    if first || *last != addrs {
        let list: Vec<Ipv4Addr> = addrs.iter().copied().collect();
        lb.set_node_ips(&list).map_err(|e| e.to_string())?;
        tracing::info!(addresses = ?list, "NodePort addresses");
        *last = addrs;
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Keeps the external interfaces attached until the task is dropped, and copies the
/// kernel programs' counters into `metrics` after each pass.
pub async fn run(
    cfg: Config,
    sync: Arc<Mutex<ServiceSync<SocketLb>>>,
    metrics: Arc<Mutex<LbMetrics>>,
) {
    let mut last = BTreeSet::new();
    let mut first = true;
    let mut last_error = String::new();
    loop {
        let (c, s) = (cfg.clone(), sync.clone());
        let mut l = std::mem::take(&mut last);
        let pass = tokio::task::spawn_blocking(move || {
            let result = match c.netns.clone() {
                Some(ns) => crate::netns::run_in(&ns, || Ok(reconcile(&c, &s, &mut l, first))),
                None => Ok(reconcile(&c, &s, &mut l, first)),
            };
            (result.and_then(|r| r), l)
        })
        .await;
        match pass {
            Ok((result, l)) => {
                last = l;
                match result {
                    Ok(()) => last_error.clear(),
                    Err(e) if e != last_error => {
                        tracing::warn!(error = %e, "attaching the NodePort programs");
                        last_error = e;
                    }
                    Err(_) => {}
                }
            }
            Err(e) => tracing::warn!(error = %e, "the interface scan failed"),
        }
        first = false;
        let stats = sync.lock().ok().and_then(|s| s.target().stats().ok());
        if let (Some(stats), Ok(mut m)) = (stats, metrics.lock()) {
            m.observe_kernel(&stats);
        }
        tokio::time::sleep(RESCAN).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().expect("address")
    }

    #[test]
    fn the_node_ip_interface_the_cidrs_and_the_bridge_are_chosen() {
        let seen: BTreeMap<String, Vec<Ipv4Addr>> = [
            ("eth0", vec![a("192.168.1.5")]),
            ("eth1", vec![a("10.9.0.2"), a("172.16.0.1")]),
            ("docker0", vec![a("172.17.0.1")]),
            ("berth0", vec![a("10.77.0.1")]),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
        let cfg = Config {
            node_ip: Some(a("192.168.1.5")),
            nodeport_addresses: vec!["10.9.0.0/16".parse().expect("cidr")],
            pod_bridge: "berth0".into(),
            netns: None,
            host_routing: None,
        };
        let (ifaces, addrs) = choose(&cfg, &seen);
        assert_eq!(
            ifaces.into_iter().collect::<Vec<_>>(),
            ["berth0", "eth0", "eth1"]
        );
        // Only the matching addresses answer NodePorts; the bridge's does not.
        assert_eq!(
            addrs.into_iter().collect::<Vec<_>>(),
            [a("10.9.0.2"), a("192.168.1.5")]
        );
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/40".parse::<Cidr>().is_err());
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .expect("all")
                .contains(a("8.8.8.8"))
        );
    }
}
