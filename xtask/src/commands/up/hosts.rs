//! The machines of a multi-node `cargo xtask up`: network-namespace "hosts" on one L2
//! segment. The segment is a bridge in a namespace of its own (`<bridge>-seg`), so
//! frames between nodes never pass this host's netfilter; every node is a namespace
//! `<bridge>-node<k>` plugged into it by a veth (`eth0` on the node's side) with an
//! address of `--node-subnet`, forwarding IPv4 as a node does; this host joins the
//! segment through one veth (`<bridge>-h`) holding the servers' addresses. The
//! namespaces are named (under /run/netns), so `down` finds them after `up` is gone.
//! Deleting the segment's namespace takes every veth with it.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The addresses of the segment: `--node-subnet`, at least a /27.
#[derive(Debug, Clone, Copy)]
pub struct Subnet {
    base: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/len` (len 8..=27).
    pub fn parse(text: &str) -> Result<Self> {
        let (addr, len) = text
            .split_once('/')
            .with_context(|| format!("--node-subnet {text:?}: not a CIDR (a.b.c.0/24)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("--node-subnet {text:?}: not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .with_context(|| format!("--node-subnet {text:?}: not a prefix length"))?;
        if !(8..=27).contains(&prefix) {
            bail!("--node-subnet {text:?}: the prefix must be between /8 and /27");
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + n)
    }
    /// The address of server `i` (1-based) on this host: .1, .2.
    pub fn server(&self, i: u32) -> Ipv4Addr {
        self.nth(i)
    }
    /// The address of node `k` (1-based): .11, .12, …
    pub fn node(&self, k: u32) -> Ipv4Addr {
        self.nth(10 + k)
    }
    /// How many nodes fit (.11 up to the last address before broadcast).
    pub fn max_nodes(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 12
    }
    fn with_prefix(&self, ip: Ipv4Addr) -> String {
        format!("{ip}/{}", self.prefix)
    }
}

/// The names one cluster's machines take, from its bridge name.
#[derive(Debug, Clone)]
pub struct Names {
    bridge: String,
}

impl Names {
    pub fn new(bridge: &str) -> Self {
        Self {
            bridge: bridge.to_owned(),
        }
    }
    pub fn segment(&self) -> String {
        format!("{}-seg", self.bridge)
    }
    /// This host's end of its veth to the segment (`<bridge>-h`; [`Names::check`]
    /// keeps it an interface name).
    pub fn host_link(&self) -> String {
        format!("{}-h", self.bridge)
    }
    /// Refuses a bridge name whose `-h` link would not be a distinct interface name
    /// (at most 15 bytes, ASCII).
    pub fn check(&self) -> Result<()> {
        if self.bridge.len() > 13 || !self.bridge.is_ascii() {
            bail!(
                "--bridge {:?}: a multi-node cluster names this host's link to its nodes `<bridge>-h`, so the bridge name must be ASCII and at most 13 bytes",
                self.bridge
            );
        }
        Ok(())
    }
    pub fn node_netns(&self, node: &str) -> String {
        format!("{}-{node}", self.bridge)
    }
    /// Where `ip netns` pins a namespace.
    pub fn netns_path(name: &str) -> PathBuf {
        Path::new("/run/netns").join(name)
    }
    /// The nodes' namespaces present on this host (after `up`, or left by one that
    /// died): node names.
    pub fn present_nodes(&self) -> Vec<String> {
        let prefix = format!("{}-", self.bridge);
        let mut nodes: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix(&prefix).map(str::to_owned))
            .filter(|n| {
                n.strip_prefix("node")
                    .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        nodes.sort();
        nodes
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Makes the segment and joins this host to it with the servers' `addresses`.
pub fn make_segment(names: &Names, subnet: &Subnet, servers: u32) -> Result<()> {
    let seg = names.segment();
    // What a previous `up` that died may have left.
    remove_segment(names);
    // Another cluster (another --bridge) on the same subnet would share its routes.
    let mask = u32::MAX << (32 - subnet.prefix);
    for (iface, addrs) in berth_agent::service_lb::external::interfaces() {
        if let Some(a) = addrs
            .iter()
            .find(|a| u32::from(**a) & mask == u32::from(subnet.base))
        {
            bail!(
                "--node-subnet {}/{}: interface {iface} of this host already has {a} in it (another cluster's segment?); choose another --node-subnet",
                subnet.base,
                subnet.prefix
            );
        }
    }
    ip(&["netns", "add", &seg])?;
    ip(&["-n", &seg, "link", "set", "lo", "up"])?;
    ip(&["-n", &seg, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &seg, "link", "set", "br0", "up"])?;
    let host = names.host_link();
    ip(&[
        "link", "add", &host, "type", "veth", "peer", "name", "host", "netns", &seg,
    ])?;
    ip(&["-n", &seg, "link", "set", "host", "master", "br0", "up"])?;
    for i in 1..=servers {
        ip(&[
            "addr",
            "add",
            &subnet.with_prefix(subnet.server(i)),
            "dev",
            &host,
        ])?;
    }
    ip(&["link", "set", &host, "up"])
}

/// Makes node `k`'s namespace, plugged into the segment as `eth0`.
pub fn make_node(names: &Names, subnet: &Subnet, node: &str, k: u32) -> Result<()> {
    let ns = names.node_netns(node);
    let seg = names.segment();
    let _ = ip(&["netns", "del", &ns]);
    ip(&["netns", "add", &ns])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    let port = format!("p{k}");
    ip(&[
        "-n", &seg, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&["-n", &seg, "link", "set", &port, "master", "br0", "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &subnet.with_prefix(subnet.node(k)),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    // A node forwards its pods' traffic (sysctls under net/ are per namespace).
    let status = in_netns(
        Command::new("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]),
        &ns,
        None,
    )
    .stdout(Stdio::null())
    .status()
    .context("running sysctl")?;
    if !status.success() {
        bail!("sysctl net.ipv4.ip_forward=1 in {ns} failed");
    }
    Ok(())
}

/// Deletes node `node`'s namespace (its pods' veths go with it).
pub fn remove_node(names: &Names, node: &str) {
    let _ = ip(&["netns", "del", &names.node_netns(node)]);
}

/// Deletes this host's link and the segment's namespace (and so every veth into it).
/// The link is deleted by name: a deleted namespace is torn down asynchronously, so
/// its veth peers would linger for a moment.
pub fn remove_segment(names: &Names) {
    let _ = ip(&["link", "del", &names.host_link()]);
    let _ = ip(&["netns", "del", &names.segment()]);
}

/// `cmd` set to run in namespace `netns` (only the network namespace: the mounts,
/// cgroups and bpffs stay this host's), and with `hostname` in a UTS namespace of its
/// own when given.
pub fn in_netns<'a>(cmd: &'a mut Command, netns: &str, hostname: Option<&str>) -> &'a mut Command {
    let path = Names::netns_path(netns);
    let hostname = hostname.map(str::to_owned);
    // SAFETY: between fork and exec only async-signal-safe calls are made (open,
    // setns, unshare, sethostname), on values prepared before the fork.
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_default();
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            if let Some(name) = &hostname {
                if libc::unshare(libc::CLONE_NEWUTS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::sethostname(name.as_ptr().cast(), name.len()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subnet_hands_out_server_and_node_addresses() {
        let s = Subnet::parse("172.30.77.9/24").expect("a subnet");
        assert_eq!(s.server(1), Ipv4Addr::new(172, 30, 77, 1));
        assert_eq!(s.server(2), Ipv4Addr::new(172, 30, 77, 2));
        assert_eq!(s.node(3), Ipv4Addr::new(172, 30, 77, 13));
        assert_eq!(s.max_nodes(), 244);
        assert_eq!(s.with_prefix(s.node(1)), "172.30.77.11/24");
        for bad in ["172.30.77.0", "x/24", "10.0.0.0/30", "10.0.0.0/abc"] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_fit_interface_limits() {
        assert!(Names::new("berthtest-up123x45").check().is_err());
        assert!(Names::new("bérth").check().is_err());
        let n = Names::new("bup12345x0");
        assert!(n.check().is_ok() && n.host_link().len() <= 15);
        assert_eq!(Names::new("berth0").host_link(), "berth0-h");
        assert_eq!(Names::new("berth0").node_netns("node2"), "berth0-node2");
    }
}
