//! NetworkPolicy at the pods' cgroup (`cgroup_skb` ingress and egress): every IPv4
//! packet a pod's socket sends or receives is checked against the policies that
//! select the pod. A pod in `NP_PODS` isolated in the packet's direction passes only
//! what its rules allow: the peer's address is looked up in `NP_RULES` (an LPM trie
//! of pod + direction + peer prefix, so ipBlocks with excepts and single pods are
//! one lookup) and the destination port and protocol must be in the port set found.
//! Always allowed: a pod talking to itself, the node's own addresses (`NP_HOST`,
//! probes and the kubelet API — but a NodePort flow the node masqueraded is judged by
//! its real client, from the NodePort flow table), and the packets of flows already
//! allowed, both ways
//! at this pod's side (`NP_CT`, per pod: the reply of an allowed connection is never
//! dropped, and one pod's record does not open the other's side). Denied packets
//! are counted per pod and direction (`NP_DENIED`). Not IPv4: allowed.
//!
//! TCP is decided on the connection request alone: only a SYN without ACK is
//! checked, every other segment passes at once. The kernel delivers a segment that
//! is not a SYN only to a socket whose connection exists (its SYN passed this check
//! at both ends) or refuses it — the same thing conntrack's ESTABLISHED accept does
//! for iptables-based policies — so the per-packet cost of an allowed connection is
//! one header read. UDP, SCTP and ICMP go through the per-pod flow table.

use aya_ebpf::{macros::cgroup_skb, maps::lpm_trie::Key as LpmKey, programs::SkBuffContext};
use berth_ebpf_common::{
    CT_REPLY, CT_SNAT, CtKey, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, NP_EGRESS, NP_INGRESS,
    NP_MAX_RANGES, NP_RULE_FIXED_BITS, NpCtKey, NpDeniedKey, NpRuleKey,
};

use crate::maps::{CT, NP_CT, NP_DENIED, NP_HOST, NP_PODS, NP_PORTS, NP_RULES};

const ALLOW: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(ingress)]
pub fn netpol_ingress(ctx: SkBuffContext) -> i32 {
    decide(&ctx, false)
}

#[cgroup_skb(egress)]
pub fn netpol_egress(ctx: SkBuffContext) -> i32 {
    decide(&ctx, true)
}

struct Packet {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    protocol: u8,
    /// TCP with SYN and not ACK: a connection request — or a TCP packet whose flags
    /// cannot be read (a later fragment, a truncated header), which is checked like
    /// one rather than waved through.
    tcp_request: bool,
}

/// The IPv4 header (cgroup skb data starts at it) and the ports of TCP, UDP and
/// SCTP (0 for other protocols and later fragments).
fn parse(ctx: &SkBuffContext) -> Option<Packet> {
    // Two copies at most: the fixed header, then the ports (and TCP's flags). Each
    // load is a helper call; this runs for every packet of every pod.
    let ip: [u8; 20] = ctx.load(0).ok()?;
    if ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let protocol = ip[9];
    let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    // Without readable ports (later fragments, truncated headers) a packet is checked
    // with port 0: only rules allowing every port let it through.
    let (mut sport, mut dport) = (0u16, 0u16);
    let mut tcp_request = protocol == IPPROTO_TCP;
    if first_fragment && ihl >= 20 {
        // Ports as on the wire (network order), like the addresses.
        if protocol == IPPROTO_TCP {
            const SYN: u8 = 0x02;
            const ACK: u8 = 0x10;
            if let Ok(tcp) = ctx.load::<[u8; 14]>(ihl) {
                sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
                dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
                tcp_request = tcp[13] & (SYN | ACK) == SYN;
            }
        } else if (protocol == IPPROTO_UDP || protocol == IPPROTO_SCTP)
            && let Ok(ports) = ctx.load::<[u8; 4]>(ihl)
        {
            sport = u16::from_ne_bytes([ports[0], ports[1]]);
            dport = u16::from_ne_bytes([ports[2], ports[3]]);
        }
    }
    Some(Packet {
        saddr: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        daddr: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        sport,
        dport,
        protocol,
        tcp_request,
    })
}

fn decide(ctx: &SkBuffContext, egress: bool) -> i32 {
    let Some(p) = parse(ctx) else {
        return ALLOW;
    };
    if p.protocol == IPPROTO_TCP && !p.tcp_request {
        return ALLOW;
    }
    let (pod, peer, direction) = if egress {
        (p.saddr, p.daddr, NP_EGRESS)
    } else {
        (p.daddr, p.saddr, NP_INGRESS)
    };
    // SAFETY: copied out at once.
    let Some(selected) = unsafe { NP_PODS.get(&pod) }.copied() else {
        return ALLOW;
    };
    let own = NpCtKey {
        pod,
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        protocol: p.protocol,
        _pad: [0; 3],
    };
    if selected.flags & direction == 0 {
        // Not isolated this way: remember the flow (once), so its replies pass the
        // other direction's isolation.
        // SAFETY: only checks presence.
        if unsafe { NP_CT.get(&own) }.is_none() {
            let _ = NP_CT.insert(&own, &1, 0);
        }
        return ALLOW;
    }
    let mut peer = peer;
    // SAFETY: only checks presence.
    if unsafe { NP_HOST.get(&peer) }.is_some() {
        // From the node — unless it is a NodePort flow the node masqueraded: then the
        // policy judges the real client, whom the NodePort flow table remembers.
        match masqueraded_client(&p) {
            Some(client) if !egress => peer = client,
            _ => return ALLOW,
        }
    }
    if pod == peer {
        return ALLOW;
    }
    let reply = NpCtKey {
        pod,
        saddr: p.daddr,
        daddr: p.saddr,
        sport: p.dport,
        dport: p.sport,
        protocol: p.protocol,
        _pad: [0; 3],
    };
    // SAFETY: only checks presence.
    if unsafe { NP_CT.get(&own) }.is_some() || unsafe { NP_CT.get(&reply) }.is_some() {
        return ALLOW;
    }
    if allowed(&p, pod, peer, direction) {
        let _ = NP_CT.insert(&own, &1, 0);
        return ALLOW;
    }
    let key = NpDeniedKey { pod, direction };
    match NP_DENIED.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of the value, valid for this program run and
        // written by this CPU only.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = NP_DENIED.insert(&key, &1, 0);
        }
    }
    DROP
}

/// The client of a masqueraded NodePort flow this packet (arriving at the backend)
/// belongs to: the NodePort program's reply entry for it carries the client.
fn masqueraded_client(p: &Packet) -> Option<u32> {
    let key = CtKey {
        saddr: p.daddr,
        daddr: p.saddr,
        sport: p.dport,
        dport: p.sport,
        protocol: p.protocol,
        direction: CT_REPLY,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let entry = unsafe { CT.get(&key) }.copied()?;
    (entry.flags & CT_SNAT != 0).then_some(entry.addr2)
}

/// Whether a rule of `pod` for `direction` lets `peer` use the packet's destination
/// port and protocol.
fn allowed(p: &Packet, pod: u32, peer: u32, direction: u32) -> bool {
    let key = LpmKey::new(
        NP_RULE_FIXED_BITS + 32,
        NpRuleKey {
            pod,
            direction,
            peer,
        },
    );
    let Some(set_id) = NP_RULES.get(&key).copied() else {
        return false;
    };
    // SAFETY: the set is only read; user space replaces sets whole (a new id).
    let Some(set) = (unsafe { NP_PORTS.get(&set_id) }) else {
        return false;
    };
    let port = u16::from_be(p.dport);
    let mut i = 0;
    while i < NP_MAX_RANGES {
        if i as u32 >= set.count {
            break;
        }
        let r = set.ranges[i];
        if (r.protocol == 0 || r.protocol == p.protocol) && r.lo <= port && port <= r.hi {
            return true;
        }
        i += 1;
    }
    false
}
