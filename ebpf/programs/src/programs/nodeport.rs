//! NodePort and external IPs on the node's external interfaces (tc). Ingress: a
//! TCP/UDP packet to a frontend address:port in `SERVICES` (an external IP), or to
//! one of the node's addresses (`NODE_IPS`) at a NodePort (a `SERVICES` entry with
//! address 0.0.0.0), is DNATed to a backend — chosen at random for a new flow and
//! remembered in `CT` — and the kernel routes it on. Egress: a reply from that
//! backend to the client gets the NodePort address back as its source. Checksums are
//! fixed incrementally. Not yet: SNAT for backends on other nodes
//! (externalTrafficPolicy: Cluster across nodes).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
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
