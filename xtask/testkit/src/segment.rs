//! An L2 segment for network-namespace "hosts": a namespace of its own holding a
//! bridge, and hosts plugged into it by veth pairs (the host's side named as asked,
//! e.g. `eth0`, with an address, up). Multi-node tests and benches build their
//! machines from these: two hosts on one segment share a subnet (host-gw routing
//! works), hosts on two segments joined by a router namespace do not (only an
//! overlay or the router gets across). The veths go with the namespaces; the
//! segment's namespace is deleted on drop. [`cable`] joins two hosts directly.

use crate::NetNs;

/// A bridge in a namespace of its own.
#[derive(Debug)]
pub struct Segment {
    ns: NetNs,
    ports: std::sync::atomic::AtomicU32,
}

impl Segment {
    /// A new segment (its namespace named after `prefix`).
    ///
    /// # Panics
    /// If the namespace or the bridge cannot be made.
    pub fn new(prefix: &str) -> Self {
        let ns = NetNs::new(prefix);
        ns.ip_ok(&["link", "add", "br0", "type", "bridge"]);
        ns.ip_ok(&["link", "set", "br0", "up"]);
        Self {
            ns,
            ports: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The segment's own namespace (where the bridge is).
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// Plugs `host` into the segment: a veth whose end in `host` is `ifname`, up,
    /// with `addr` (`192.168.77.1/24`).
    ///
    /// # Panics
    /// If `ip` fails.
    pub fn attach(&self, host: &NetNs, ifname: &str, addr: &str) {
        let n = self
            .ports
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = format!("p{n}");
        self.ns.ip_ok(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            host.name(),
        ]);
        self.ns
            .ip_ok(&["link", "set", &port, "master", "br0", "up"]);
        host.ip_ok(&["addr", "add", addr, "dev", ifname]);
        host.ip_ok(&["link", "set", ifname, "up"]);
    }
}

/// Joins two hosts point to point, as a cable between two NICs: a veth pair whose
/// ends are `a.1` in `a.0` and `b.1` in `b.0`, each up with its address (`a.2`,
/// `b.2`).
///
/// # Panics
/// If `ip` fails.
pub fn cable(a: (&NetNs, &str, &str), b: (&NetNs, &str, &str)) {
    let tmp = crate::unique_name("cb");
    a.0.ip_ok(&[
        "link",
        "add",
        a.1,
        "type",
        "veth",
        "peer",
        "name",
        &tmp,
        "netns",
        b.0.name(),
    ]);
    b.0.ip_ok(&["link", "set", &tmp, "name", b.1]);
    for (ns, ifname, addr) in [a, b] {
        ns.ip_ok(&["addr", "add", addr, "dev", ifname]);
        ns.ip_ok(&["link", "set", ifname, "up"]);
    }
}

/// A host namespace that forwards IPv4 (a node, or a router between segments).
///
/// # Panics
/// If the namespace cannot be made or `sysctl` fails.
pub fn forwarding_host(prefix: &str) -> NetNs {
    let ns = NetNs::new(prefix);
    let status = ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "sysctl net.ipv4.ip_forward=1 in {}: {status:?}",
        ns.name()
    );
    ns
}
