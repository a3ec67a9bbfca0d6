//! What this node's routing table should hold for the other nodes' pods, decided from
//! the Node objects alone (no I/O): each peer's pod range (its IPv4 `spec.podCIDRs`
//! entry), its InternalIP, its VTEP MAC annotation, and whether it is reached
//! directly (host-gw: the peer's InternalIP is on a subnet of this node's interface)
//! or through the VXLAN device. [`peers`] reads the Nodes, [`plan`] decides.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use berth_cni::spec::Ipv4Cidr;
use k8s_openapi::api::core::v1::Node;

use super::{Mode, VTEP_MAC_ANNOTATION};

/// Another node, as far as routing to its pods goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub pod_cidr: Ipv4Cidr,
    pub node_ip: Ipv4Addr,
    /// Its VXLAN device's MAC, from [`VTEP_MAC_ANNOTATION`].
    pub vtep_mac: Option<[u8; 6]>,
}

/// This node: its name, its InternalIP, the prefixes of the interface that carries
/// it, and its own pod range once it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub subnets: Vec<Ipv4Cidr>,
    pub pod_cidr: Option<Ipv4Cidr>,
}

/// How a peer's pod range is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `podCIDR via <node IP>` out of the node's interface.
    Direct { gateway: Ipv4Addr },
    /// `podCIDR via <vtep> dev berth.vxlan onlink`, the VTEP's MAC in the neighbour
    /// table and its node IP in the device's forwarding database.
    Vxlan {
        vtep: Ipv4Addr,
        mac: [u8; 6],
        remote: Ipv4Addr,
    },
}

/// The routing this node should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Each peer's pod range (network address, prefix) and how to reach it.
    pub routes: BTreeMap<(Ipv4Addr, u8), Via>,
    /// This node's VTEP address when the VXLAN device is wanted.
    pub vtep: Option<Ipv4Addr>,
    /// Peers not routed to, with why.
    pub skipped: Vec<(String, String)>,
}

/// The normalised form of a prefix (host bits cleared).
pub fn key(cidr: Ipv4Cidr) -> (Ipv4Addr, u8) {
    (cidr.network(), cidr.prefix)
}

/// The VTEP address of a node with `pod_cidr`: its network address, on no pod (as
/// flannel gives `flannel.1` the `.0` of the node's subnet).
pub fn vtep_of(pod_cidr: Ipv4Cidr) -> Ipv4Addr {
    pod_cidr.network()
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    berth_cni::netlink::format_mac(mac)
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// The first IPv4 entry of the Node's podCIDRs (else its podCIDR).
pub fn pod_cidr(node: &Node) -> Option<Ipv4Cidr> {
    let spec = node.spec.as_ref()?;
    let mut all: Vec<&String> = spec.pod_cidrs.iter().flatten().collect();
    all.extend(spec.pod_cidr.as_ref());
    all.into_iter()
        .find_map(|c| c.parse::<Ipv4Cidr>().ok())
        .map(|c| c.with_addr(c.network()))
}

/// The Node's IPv4 InternalIP.
pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

fn overlaps(a: Ipv4Cidr, b: Ipv4Cidr) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The peers of node `own` among `nodes`, and this node's own pod range. Nodes
/// without a podCIDR or an InternalIP are left out; of Nodes whose pod ranges
/// overlap, the oldest (then the first by name) keeps its range and the others are
/// skipped — the same choice on every node, and the one the control plane makes.
pub fn peers(nodes: &[Node], own: &str) -> (Option<Ipv4Cidr>, Vec<Peer>, Vec<(String, String)>) {
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by(|a, b| {
        let t = |n: &Node| n.metadata.creation_timestamp.clone().map(|t| t.0);
        t(a).cmp(&t(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let mut claimed: Vec<(Ipv4Cidr, String)> = Vec::new();
    let mut own_cidr = None;
    let mut list = Vec::new();
    let mut skipped = Vec::new();
    for node in sorted {
        let name = node.metadata.name.clone().unwrap_or_default();
        let Some(cidr) = pod_cidr(node) else {
            continue;
        };
        if let Some((_, holder)) = claimed.iter().find(|(c, _)| overlaps(*c, cidr)) {
            skipped.push((
                name,
                format!("its podCIDR {cidr} overlaps that of node {holder}"),
            ));
            continue;
        }
        claimed.push((cidr, name.clone()));
        if name == own {
            own_cidr = Some(cidr);
            continue;
        }
        let Some(node_ip) = internal_ip(node) else {
            skipped.push((name, "it has no IPv4 InternalIP".into()));
            continue;
        };
        let vtep_mac = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(VTEP_MAC_ANNOTATION))
            .and_then(|m| parse_mac(m));
        list.push(Peer {
            name,
            pod_cidr: cidr,
            node_ip,
            vtep_mac,
        });
    }
    (own_cidr, list, skipped)
}

/// Whether `ip` is on a subnet of this node's interface (one L2 segment, as far
/// as the node can tell: reached without a router).
pub fn on_link(local: &Local, ip: Ipv4Addr) -> bool {
    local
        .subnets
        .iter()
        .any(|s| s.prefix < 32 && s.contains(ip))
}

/// The routing for `peers` in `mode`: `routed` sends each peer's range to its node
/// IP (only possible on one L2 segment), `vxlan` tunnels every range, `auto` routes
/// directly where it can and tunnels the rest.
pub fn plan(mode: Mode, local: &Local, peers: &[Peer]) -> Plan {
    let mut out = Plan::default();
    let own_vtep = local.pod_cidr.map(vtep_of);
    for peer in peers {
        if peer.node_ip == local.node_ip || peer.node_ip.is_loopback() {
            out.skipped.push((
                peer.name.clone(),
                format!("its node IP {} is not another host's", peer.node_ip),
            ));
            continue;
        }
        let direct = on_link(local, peer.node_ip);
        let tunnel = match mode {
            Mode::Routed if !direct => {
                out.skipped.push((
                    peer.name.clone(),
                    format!(
                        "its node IP {} is not on a subnet of this node's interface: routed mode needs one L2 segment (use --pod-network-mode=vxlan or auto)",
                        peer.node_ip
                    ),
                ));
                continue;
            }
            Mode::Routed => false,
            Mode::Vxlan => true,
            Mode::Auto => !direct,
        };
        let via = if tunnel {
            if own_vtep.is_none() {
                out.skipped.push((
                    peer.name.clone(),
                    "this node has no podCIDR yet (its VTEP address comes from it)".into(),
                ));
                continue;
            }
            let Some(mac) = peer.vtep_mac else {
                out.skipped.push((
                    peer.name.clone(),
                    format!("it has no {VTEP_MAC_ANNOTATION} annotation yet"),
                ));
                continue;
            };
            Via::Vxlan {
                vtep: vtep_of(peer.pod_cidr),
                mac,
                remote: peer.node_ip,
            }
        } else {
            Via::Direct {
                gateway: peer.node_ip,
            }
        };
        out.routes.insert(key(peer.pod_cidr), via);
    }
    let tunnels = out.routes.values().any(|v| matches!(v, Via::Vxlan { .. }));
    if mode == Mode::Vxlan || tunnels {
        out.vtep = own_vtep;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn node(name: &str, created: &str, pod_cidr: Option<&str>, addr: Option<&str>) -> Node {
        let mut v = json!({
            "metadata": {"name": name, "creationTimestamp": created,
                "annotations": {VTEP_MAC_ANNOTATION: "02:00:00:00:00:01"}},
            "spec": {},
            "status": {"addresses": [{"type": "Hostname", "address": name}]},
        });
        if let Some(c) = pod_cidr {
            v["spec"] = json!({"podCIDR": c, "podCIDRs": ["fd00::/64", c]});
        }
        if let Some(a) = addr {
            v["status"]["addresses"] = json!([{"type": "InternalIP", "address": a}]);
        }
        serde_json::from_value(v).expect("node")
    }

    fn local(pod_cidr: Option<&str>) -> Local {
        Local {
            name: "a".into(),
            node_ip: ip("192.168.1.10"),
            subnets: vec![cidr("192.168.1.10/24")],
            pod_cidr: pod_cidr.map(cidr),
        }
    }

    fn peer(name: &str, pod: &str, node_ip: &str, mac: Option<[u8; 6]>) -> Peer {
        Peer {
            name: name.into(),
            pod_cidr: cidr(pod),
            node_ip: ip(node_ip),
            vtep_mac: mac,
        }
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn peers_are_read_from_nodes_and_overlaps_go_to_the_older_node() {
        let t = "2030-01-01T00:00:0";
        let nodes = [
            node(
                "a",
                &format!("{t}1Z"),
                Some("10.244.0.0/24"),
                Some("192.168.1.10"),
            ),
            node(
                "b",
                &format!("{t}2Z"),
                Some("10.244.1.0/24"),
                Some("192.168.1.11"),
            ),
            node(
                "late",
                &format!("{t}5Z"),
                Some("10.244.1.128/25"),
                Some("192.168.1.12"),
            ),
            node("nocidr", &format!("{t}3Z"), None, Some("192.168.1.13")),
            node("noip", &format!("{t}4Z"), Some("10.244.4.0/24"), None),
        ];
        let (own, peers, skipped) = peers(&nodes, "a");
        assert_eq!(own, Some(cidr("10.244.0.0/24")));
        assert_eq!(
            peers,
            [peer("b", "10.244.1.0/24", "192.168.1.11", Some(MAC))],
            "IPv4 podCIDR picked out of a dual-stack list"
        );
        let names: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["noip", "late"]);
        assert!(
            skipped[1].1.contains("overlaps that of node b"),
            "{skipped:?}"
        );
    }

    #[test]
    fn auto_routes_directly_on_the_segment_and_tunnels_beyond_it() {
        let peers = [
            peer("b", "10.244.1.0/24", "192.168.1.11", Some(MAC)),
            peer("c", "10.244.2.0/24", "172.16.0.5", Some(MAC)),
        ];
        let p = plan(Mode::Auto, &local(Some("10.244.0.0/24")), &peers);
        assert_eq!(
            p.routes[&(ip("10.244.1.0"), 24)],
            Via::Direct {
                gateway: ip("192.168.1.11")
            }
        );
        assert_eq!(
            p.routes[&(ip("10.244.2.0"), 24)],
            Via::Vxlan {
                vtep: ip("10.244.2.0"),
                mac: MAC,
                remote: ip("172.16.0.5")
            }
        );
        assert_eq!(p.vtep, Some(ip("10.244.0.0")));
        // All on one segment: no VXLAN device.
        let p = plan(Mode::Auto, &local(Some("10.244.0.0/24")), &peers[..1]);
        assert_eq!(p.vtep, None);
    }

    #[test]
    fn routed_mode_skips_peers_off_the_segment() {
        let peers = [
            peer("b", "10.244.1.0/24", "192.168.1.11", None),
            peer("c", "10.244.2.0/24", "172.16.0.5", None),
        ];
        let p = plan(Mode::Routed, &local(None), &peers);
        assert_eq!(p.routes.len(), 1, "{p:?}");
        let same_host = [peer("twin", "10.244.9.0/24", "192.168.1.10", None)];
        let twin = plan(Mode::Auto, &local(None), &same_host);
        assert!(twin.routes.is_empty() && twin.skipped[0].1.contains("not another host's"));
        assert_eq!(p.skipped[0].0, "c");
        assert!(p.skipped[0].1.contains("one L2 segment"));
        assert_eq!(p.vtep, None);
    }

    #[test]
    fn vxlan_mode_tunnels_everything_once_both_ends_are_known() {
        let peers = [
            peer("b", "10.244.1.0/24", "192.168.1.11", Some(MAC)),
            peer("c", "10.244.2.0/24", "192.168.1.12", None),
        ];
        let p = plan(Mode::Vxlan, &local(Some("10.244.0.0/24")), &peers);
        assert!(matches!(
            p.routes[&(ip("10.244.1.0"), 24)],
            Via::Vxlan { .. }
        ));
        assert_eq!(p.routes.len(), 1);
        assert!(p.skipped[0].1.contains(VTEP_MAC_ANNOTATION));
        assert_eq!(p.vtep, Some(ip("10.244.0.0")));
        // Without a podCIDR of its own the node has no VTEP address.
        let p = plan(Mode::Vxlan, &local(None), &peers[..1]);
        assert!(p.routes.is_empty() && p.vtep.is_none());
        assert!(p.skipped[0].1.contains("no podCIDR"));
    }

    #[test]
    fn macs_round_trip() {
        assert_eq!(
            parse_mac("0a:58:0A:f4:01:00"),
            Some([10, 88, 10, 244, 1, 0])
        );
        assert_eq!(format_mac([10, 88, 10, 244, 1, 0]), "0a:58:0a:f4:01:00");
        for bad in [
            "",
            "0a:58",
            "0a:58:0a:f4:01:00:00",
            "zz:58:0a:f4:01:00",
            "a:58:0a:f4:01:00",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
