//! NodePort and external IPs on the node's external interfaces (tc). Ingress: a
//! TCP/UDP packet to a frontend address:port in `SERVICES` (an external IP), or to
//! one of the node's addresses (`NODE_IPS`) at a NodePort (a `SERVICES` entry with
//! address 0.0.0.0), is DNATed to a backend — chosen at random for a new flow and
//! remembered in `CT` — and the kernel routes it on. Egress: a reply from that
//! backend to the client gets the NodePort address back as its source. Checksums are
//! fixed incrementally. A TCP SYN to a NodePort without endpoints is answered with
//! a RST, as kube-proxy's REJECT does (the client sees ECONNREFUSED at once); other
//! packets for it are dropped. Not yet: SNAT for backends on other nodes
//! (externalTrafficPolicy: Cluster across nodes).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_change_tail},
    macros::classifier,
    programs::TcContext,
};
use berth_ebpf_common::{
    CT_FORWARD, CT_REPLY, CtKey, CtValue, IPPROTO_TCP, IPPROTO_UDP, ServiceKey, Stat,
};

use super::{count, forward::pick};
use crate::maps::{CT, NODE_IPS, SERVICES};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;

/// The parts of a packet NodePort needs; addresses and ports as on the wire.
struct Flow {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    protocol: u8,
    /// Offset of the L4 header.
    l4: usize,
}

impl Flow {
    fn csum_offset(&self) -> usize {
        if self.protocol == IPPROTO_TCP {
            self.l4 + 16
        } else {
            self.l4 + 6
        }
    }

    fn l4_flags(&self) -> u64 {
        // A UDP checksum of 0 means "none" and must stay so.
        if self.protocol == IPPROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        }
    }
}

fn parse(ctx: &TcContext) -> Option<Flow> {
    let ethertype: u16 = ctx.load(12).ok()?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let frag: u16 = ctx.load(ETH_HLEN + 6).ok()?;
    if u16::from_be(frag) & 0x1fff != 0 {
        return None; // a later fragment carries no ports
    }
    let protocol: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return None;
    }
    let l4 = ETH_HLEN + ihl;
    Some(Flow {
        saddr: ctx.load(IP_SRC).ok()?,
        daddr: ctx.load(IP_DST).ok()?,
        sport: ctx.load(l4).ok()?,
        dport: ctx.load(l4 + 2).ok()?,
        protocol,
        l4,
    })
}

/// Rewrites the address at `addr_off` and the port at `port_off` (fixing the IP
/// and L4 checksums); returns None if the packet could not be written.
fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    addr_off: usize,
    old_addr: u32,
    new: CtValue,
    port_off: usize,
    old_port: u16,
) -> Option<()> {
    let csum = flow.csum_offset();
    let flags = flow.l4_flags();
    ctx.l4_csum_replace(
        csum,
        u64::from(old_addr),
        u64::from(new.addr),
        flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
    )
    .ok()?;
    ctx.l3_csum_replace(IP_CSUM, u64::from(old_addr), u64::from(new.addr), 4)
        .ok()?;
    ctx.store(addr_off, &new.addr, 0).ok()?;
    ctx.l4_csum_replace(csum, u64::from(old_port), u64::from(new.port), flags | 2)
        .ok()?;
    ctx.store(port_off, &new.port, 0).ok()?;
    Some(())
}

#[classifier]
pub fn nodeport_ingress(ctx: TcContext) -> i32 {
    let Some(flow) = parse(&ctx) else {
        return TC_ACT_OK as i32;
    };
    let forward = CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        protocol: flow.protocol,
        direction: CT_FORWARD,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let backend = match unsafe { CT.get(&forward) }.copied() {
        Some(b) => {
            count(Stat::NodePortTracked);
            b
        }
        None => {
            let Some(service) = frontend(&flow) else {
                return TC_ACT_OK as i32;
            };
            if service.count == 0 {
                count(Stat::NodePortNoBackends);
                if flow.protocol == IPPROTO_TCP {
                    return reject_tcp(&ctx, &flow).unwrap_or(TC_ACT_SHOT as i32);
                }
                return TC_ACT_SHOT as i32;
            }
            let Some(b) = pick(&service) else {
                return TC_ACT_OK as i32;
            };
            let chosen = CtValue {
                addr: b.addr,
                port: b.port,
                _pad: 0,
            };
            let reply = CtKey {
                saddr: b.addr,
                daddr: flow.saddr,
                sport: b.port,
                dport: flow.sport,
                protocol: flow.protocol,
                direction: CT_REPLY,
                _pad: 0,
            };
            let nodeport = CtValue {
                addr: flow.daddr,
                port: flow.dport,
                _pad: 0,
            };
            if CT.insert(&reply, &nodeport, 0).is_err() || CT.insert(&forward, &chosen, 0).is_err()
            {
                return TC_ACT_SHOT as i32;
            }
            count(Stat::NodePortNew);
            chosen
        }
    };
    match rewrite(
        &ctx,
        &flow,
        IP_DST,
        flow.daddr,
        backend,
        flow.l4 + 2,
        flow.dport,
    ) {
        Some(()) => TC_ACT_OK as i32,
        None => TC_ACT_SHOT as i32,
    }
}

/// The service a new flow is for: an exact frontend (external IP), else a NodePort
/// if the destination is one of the node's addresses.
fn frontend(flow: &Flow) -> Option<berth_ebpf_common::ServiceValue> {
    let exact = ServiceKey {
        addr: flow.daddr,
        port: flow.dport,
        protocol: flow.protocol,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(service) = unsafe { SERVICES.get(&exact) }.copied() {
        return Some(service);
    }
    // SAFETY: copied out at once.
    unsafe { NODE_IPS.get(&flow.daddr) }?;
    let nodeport = ServiceKey {
        addr: 0,
        port: flow.dport,
        protocol: flow.protocol,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    unsafe { SERVICES.get(&nodeport) }.copied()
}

#[classifier]
pub fn nodeport_egress(ctx: TcContext) -> i32 {
    let Some(flow) = parse(&ctx) else {
        return TC_ACT_OK as i32;
    };
    let reply = CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        protocol: flow.protocol,
        direction: CT_REPLY,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let Some(nodeport) = unsafe { CT.get(&reply) }.copied() else {
        return TC_ACT_OK as i32;
    };
    count(Stat::NodePortTracked);
    match rewrite(
        &ctx, &flow, IP_SRC, flow.saddr, nodeport, flow.l4, flow.sport,
    ) {
        Some(()) => TC_ACT_OK as i32,
        None => TC_ACT_SHOT as i32,
    }
}

/// One's-complement sum of big-endian 16-bit words, folded.
fn csum_add(mut sum: u32, bytes: &[u8; 20]) -> u32 {
    let mut i = 0;
    while i < 20 {
        sum += (u32::from(bytes[i]) << 8) | u32::from(bytes[i + 1]);
        i += 2;
    }
    sum
}

fn csum_fold(mut sum: u32) -> [u8; 2] {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Turns a TCP SYN into a RST+ACK back to its sender and sends it out the
/// interface it came in on. Only plain SYNs without IP options are answered.
fn reject_tcp(ctx: &TcContext, flow: &Flow) -> Option<i32> {
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    let flags: u8 = ctx.load(flow.l4 + 13).ok()?;
    if flags & SYN == 0 || flags & (RST | ACK) != 0 || flow.l4 != ETH_HLEN + 20 {
        return None;
    }
    let seq: u32 = ctx.load(flow.l4 + 4).ok()?;
    let macs: [u8; 12] = ctx.load(0).ok()?;
    // SAFETY: the skb pointer is the program's own context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + 40) as u32, 0) } != 0 {
        return None;
    }
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &eth, 0).ok()?;

    let (src, dst) = (flow.daddr.to_ne_bytes(), flow.saddr.to_ne_bytes());
    let mut ip = [
        0x45,
        0,
        0,
        40,
        0,
        0,
        0x40,
        0,
        64,
        IPPROTO_TCP,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let ip_csum = csum_fold(csum_add(0, &ip));
    ip[10] = ip_csum[0];
    ip[11] = ip_csum[1];
    ctx.store(ETH_HLEN, &ip, 0).ok()?;

    let (sport, dport) = (flow.dport.to_ne_bytes(), flow.sport.to_ne_bytes());
    let ack = u32::from_be(seq).wrapping_add(1).to_be_bytes();
    let mut tcp = [
        sport[0],
        sport[1],
        dport[0],
        dport[1],
        0,
        0,
        0,
        0,
        ack[0],
        ack[1],
        ack[2],
        ack[3],
        5 << 4,
        RST | ACK,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    // Pseudo header: source, destination, protocol, TCP length (20).
    let pseudo = (u32::from(src[0]) << 8 | u32::from(src[1]))
        + (u32::from(src[2]) << 8 | u32::from(src[3]))
        + (u32::from(dst[0]) << 8 | u32::from(dst[1]))
        + (u32::from(dst[2]) << 8 | u32::from(dst[3]))
        + u32::from(IPPROTO_TCP)
        + 20;
    let tcp_csum = csum_fold(csum_add(pseudo, &tcp));
    tcp[16] = tcp_csum[0];
    tcp[17] = tcp_csum[1];
    ctx.store(ETH_HLEN + 20, &tcp, 0).ok()?;

    // SAFETY: reading the ingress ifindex of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain helper call; flags 0 sends the packet out of `ifindex`.
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}
