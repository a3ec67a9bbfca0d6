//! NodePort and external IPs on the node's external interfaces (tc). Ingress: a
//! TCP/UDP packet to a frontend address:port in `SERVICES` (an external IP), or to
//! one of the node's addresses (`NODE_IPS`) at a NodePort (a `SERVICES` entry with
//! address 0.0.0.0), is DNATed to a backend — chosen at random for a new flow and
//! remembered in `CT` — and the kernel routes it on. Egress: a reply from that
//! backend to the client gets the NodePort address back as its source. Checksums are
//! fixed incrementally. A new flow to a NodePort without endpoints is rejected as
//! kube-proxy's REJECT does: a TCP SYN gets a RST, a UDP datagram an ICMP port
//! unreachable (the client sees ECONNREFUSED at once). A service flagged
//! `SERVICE_SNAT` (externalTrafficPolicy: Cluster) is also masqueraded to the node's
//! address toward the backend, on this node or another, and the flow is redirected out
//! of the interface the FIB picks. An ingress packet for no service is offered to eBPF
//! host routing ([`super::host_routing`]).

use aya_ebpf::maps::lpm_trie::Key as LpmKey;
use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC,
        TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_NET, bpf_fib_lookup as FibLookup,
    },
    helpers::{
        bpf_fib_lookup, bpf_get_prandom_u32, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail,
    },
    macros::classifier,
    programs::TcContext,
};
use berth_ebpf_common::{
    CT_FORWARD, CT_REPLY, CT_SNAT, CtKey, CtValue, IPPROTO_TCP, IPPROTO_UDP, SERVICE_SNAT,
    SERVICE_SOURCE_RANGES, SOURCE_RANGE_FRONTEND_BITS, ServiceKey, SourceRangeKey, Stat,
};

use super::{count, forward::pick, host_routing};
use crate::maps::{ANNOUNCE, CT, IF_MACS, NODE_IPS, SERVICES, SOURCE_RANGES};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
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

    /// The flow-table key of this packet in `direction`.
    fn key(&self, direction: u8) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            protocol: self.protocol,
            direction,
            _pad: 0,
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

/// Rewrites the address at `addr_off` (from `old_addr` to `new_addr`) and the port
/// at `port_off` (from `old_port` to `new_port`), fixing the IP and L4 checksums;
/// None if the packet could not be written.
#[expect(
    clippy::too_many_arguments,
    reason = "each value is a distinct header field"
)]
fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Option<()> {
    let csum = flow.csum_offset();
    let flags = flow.l4_flags();
    ctx.l4_csum_replace(
        csum,
        u64::from(old_addr),
        u64::from(new_addr),
        flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
    )
    .ok()?;
    ctx.l3_csum_replace(IP_CSUM, u64::from(old_addr), u64::from(new_addr), 4)
        .ok()?;
    ctx.store(addr_off, &new_addr, 0).ok()?;
    ctx.l4_csum_replace(csum, u64::from(old_port), u64::from(new_port), flags | 2)
        .ok()?;
    ctx.store(port_off, &new_port, 0).ok()?;
    Some(())
}

#[classifier]
pub fn nodeport_ingress(ctx: TcContext) -> i32 {
    let Some(flow) = parse(&ctx) else {
        return arp_reply(&ctx).unwrap_or(TC_ACT_OK as i32);
    };
    // A reply of a masqueraded flow, arriving from the backend's side.
    if let Some(verdict) = snat_reply(&ctx, &flow) {
        return verdict;
    }
    let forward = flow.key(CT_FORWARD);
    // SAFETY: copied out at once.
    let t = match unsafe { CT.get(&forward) }.copied() {
        Some(t) => {
            count(Stat::NodePortTracked);
            t
        }
        None => match new_flow(&ctx, &flow, &forward) {
            Ok(t) => t,
            // Not for a service: pod-to-pod traffic may be forwarded here.
            Err(verdict) if verdict == TC_ACT_OK as i32 => {
                return host_routing::route(&ctx, flow.saddr, flow.daddr, flow.protocol, flow.l4);
            }
            Err(verdict) => return verdict,
        },
    };
    if rewrite(
        &ctx,
        &flow,
        IP_DST,
        flow.daddr,
        t.addr,
        flow.l4 + 2,
        flow.dport,
        t.port,
    )
    .is_none()
    {
        return TC_ACT_SHOT as i32;
    }
    if t.flags & CT_SNAT == 0 {
        return TC_ACT_OK as i32;
    }
    // Masqueraded: the source becomes the node's address toward the backend. The
    // stack would drop a received packet with a local source, so send it on here.
    if rewrite(
        &ctx, &flow, IP_SRC, flow.saddr, t.addr2, flow.l4, flow.sport, t.port2,
    )
    .is_none()
    {
        return TC_ACT_SHOT as i32;
    }
    redirect_neigh(t.ifindex)
}

/// Sets up a new flow: picks the backend, and records both directions.
fn new_flow(ctx: &TcContext, flow: &Flow, forward: &CtKey) -> Result<CtValue, i32> {
    let Some(service) = frontend(flow) else {
        return Err(TC_ACT_OK as i32);
    };
    if service.flags & SERVICE_SOURCE_RANGES != 0 && !source_allowed(flow) {
        // Outside loadBalancerSourceRanges: dropped, as kube-proxy's firewall chain.
        return Err(TC_ACT_SHOT as i32);
    }
    if service.count == 0 {
        count(Stat::NodePortNoBackends);
        let reject = if flow.protocol == IPPROTO_TCP {
            reject_tcp(ctx, flow)
        } else {
            reject_udp(ctx, flow)
        };
        return Err(reject.unwrap_or(TC_ACT_SHOT as i32));
    }
    let b = pick(&service).ok_or(TC_ACT_OK as i32)?;
    let mut t = CtValue {
        addr: b.addr,
        port: b.port,
        flags: 0,
        addr2: 0,
        port2: 0,
        _pad: 0,
        ifindex: 0,
    };
    let (reply, restore) = if service.flags & SERVICE_SNAT != 0 {
        let (src, ifindex) = route_to(ctx, b.addr).ok_or(TC_ACT_SHOT as i32)?;
        let port = free_port(flow.protocol, b.addr, b.port, src).ok_or(TC_ACT_SHOT as i32)?;
        t = CtValue {
            flags: CT_SNAT,
            addr2: src,
            port2: port,
            ifindex,
            ..t
        };
        let reply = CtKey {
            saddr: b.addr,
            daddr: src,
            sport: b.port,
            dport: port,
            protocol: flow.protocol,
            direction: CT_REPLY,
            _pad: 0,
        };
        // SAFETY: reading the ingress ifindex of the program's own skb.
        let client_side = unsafe { (*ctx.skb.skb).ifindex };
        let restore = CtValue {
            addr: flow.daddr,
            port: flow.dport,
            flags: CT_SNAT,
            addr2: flow.saddr,
            port2: flow.sport,
            _pad: 0,
            ifindex: client_side,
        };
        (reply, restore)
    } else {
        let reply = CtKey {
            saddr: b.addr,
            daddr: flow.saddr,
            sport: b.port,
            dport: flow.sport,
            protocol: flow.protocol,
            direction: CT_REPLY,
            _pad: 0,
        };
        let restore = CtValue {
            addr: flow.daddr,
            port: flow.dport,
            flags: 0,
            addr2: 0,
            port2: 0,
            _pad: 0,
            ifindex: 0,
        };
        (reply, restore)
    };
    if CT.insert(&reply, &restore, 0).is_err() || CT.insert(forward, &t, 0).is_err() {
        return Err(TC_ACT_SHOT as i32);
    }
    count(Stat::NodePortNew);
    Ok(t)
}

/// A reply to a masqueraded flow: back to the frontend as source and the client as
/// destination, sent out where the client's packets came in. None if the packet is
/// not one.
fn snat_reply(ctx: &TcContext, flow: &Flow) -> Option<i32> {
    let key = flow.key(CT_REPLY);
    // SAFETY: copied out at once.
    let r = unsafe { CT.get(&key) }.copied()?;
    if r.flags & CT_SNAT == 0 {
        return None; // not masqueraded: restored on the way out (nodeport_egress)
    }
    count(Stat::NodePortTracked);
    if rewrite(
        ctx, flow, IP_SRC, flow.saddr, r.addr, flow.l4, flow.sport, r.port,
    )
    .is_none()
        || rewrite(
            ctx,
            flow,
            IP_DST,
            flow.daddr,
            r.addr2,
            flow.l4 + 2,
            flow.dport,
            r.port2,
        )
        .is_none()
    {
        return Some(TC_ACT_SHOT as i32);
    }
    Some(redirect_neigh(r.ifindex))
}

/// The node's source address and the interface toward `dst` (network order).
fn route_to(ctx: &TcContext, dst: u32) -> Option<(u32, u32)> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut params: FibLookup = unsafe { core::mem::zeroed() };
    params.family = 2; // AF_INET
    // SAFETY: reading the ingress ifindex of the program's own skb.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_4.ipv4_dst = dst;
    // A forwarding lookup from the ingress interface (the packet is forwarded).
    let flags = BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH;
    // SAFETY: params lives on our stack for the call; its size is passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &mut params,
            core::mem::size_of::<FibLookup>() as i32,
            flags,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: the lookup filled ipv4_src (BPF_FIB_LOOKUP_SRC).
    Some((unsafe { params.__bindgen_anon_3.ipv4_src }, params.ifindex))
}

/// A source port for a masqueraded flow to `backend`, unused by another.
fn free_port(protocol: u8, backend: u32, backend_port: u16, src: u32) -> Option<u16> {
    let mut tries = 0;
    while tries < 4 {
        tries += 1;
        // SAFETY: a plain helper call with no arguments.
        let port = (32_768 + unsafe { bpf_get_prandom_u32() } % 28_232) as u16;
        let key = CtKey {
            saddr: backend,
            daddr: src,
            sport: backend_port,
            dport: port.to_be(),
            protocol,
            direction: CT_REPLY,
            _pad: 0,
        };
        // SAFETY: only checks presence.
        if unsafe { CT.get(&key) }.is_none() {
            return Some(port.to_be());
        }
    }
    None
}

fn redirect_neigh(ifindex: u32) -> i32 {
    // SAFETY: a plain helper call; no neighbour parameters, so the kernel resolves
    // the next hop of the packet's destination on `ifindex`.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
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

/// Whether the client of `flow` is in its frontend's `loadBalancerSourceRanges`.
fn source_allowed(flow: &Flow) -> bool {
    let key = LpmKey::new(
        SOURCE_RANGE_FRONTEND_BITS + 32,
        SourceRangeKey {
            frontend: ServiceKey {
                addr: flow.daddr,
                port: flow.dport,
                protocol: flow.protocol,
                _pad: 0,
            },
            client: flow.saddr,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// Answers an ARP request for a load-balancer address this node announces
/// (MetalLB's layer-2 mode): the request is turned into the reply, with the
/// interface's MAC, and sent back out. None for any other frame.
fn arp_reply(ctx: &TcContext) -> Option<i32> {
    const ARP_REQUEST: u16 = 1;
    const ARP_REPLY: u16 = 2;
    let ethertype: u16 = ctx.load(12).ok()?;
    if u16::from_be(ethertype) != ETH_P_ARP {
        return None;
    }
    // Ethernet/IPv4 ARP: htype 1, ptype 0x0800, hlen 6, plen 4, then the operation.
    let head: [u8; 8] = ctx.load(ETH_HLEN).ok()?;
    if head != [0, 1, 8, 0, 6, 4, 0, ARP_REQUEST as u8] {
        return None;
    }
    // Sender MAC, sender IP, target MAC, target IP.
    let sender_mac: [u8; 6] = ctx.load(ETH_HLEN + 8).ok()?;
    let sender_ip: [u8; 4] = ctx.load(ETH_HLEN + 14).ok()?;
    let target_ip: u32 = ctx.load(ETH_HLEN + 24).ok()?;
    // SAFETY: only checks presence.
    unsafe { ANNOUNCE.get(&target_ip) }?;
    // SAFETY: reading the ingress ifindex of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out at once.
    let ours = unsafe { IF_MACS.get(&ifindex) }.copied()?.mac;
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&sender_mac);
    eth[6..].copy_from_slice(&ours);
    ctx.store(0, &eth, 0).ok()?;
    let t = target_ip.to_ne_bytes();
    let reply: [u8; 22] = [
        0,
        ARP_REPLY as u8,
        ours[0],
        ours[1],
        ours[2],
        ours[3],
        ours[4],
        ours[5],
        t[0],
        t[1],
        t[2],
        t[3],
        sender_mac[0],
        sender_mac[1],
        sender_mac[2],
        sender_mac[3],
        sender_mac[4],
        sender_mac[5],
        sender_ip[0],
        sender_ip[1],
        sender_ip[2],
        sender_ip[3],
    ];
    ctx.store(ETH_HLEN + 6, &reply, 0).ok()?;
    Some(send_back(ctx))
}

#[classifier]
pub fn nodeport_egress(ctx: TcContext) -> i32 {
    let Some(flow) = parse(&ctx) else {
        return TC_ACT_OK as i32;
    };
    let reply = flow.key(CT_REPLY);
    // SAFETY: copied out at once.
    let Some(nodeport) = unsafe { CT.get(&reply) }.copied() else {
        return TC_ACT_OK as i32;
    };
    count(Stat::NodePortTracked);
    match rewrite(
        &ctx,
        &flow,
        IP_SRC,
        flow.saddr,
        nodeport.addr,
        flow.l4,
        flow.sport,
        nodeport.port,
    ) {
        Some(()) => TC_ACT_OK as i32,
        None => TC_ACT_SHOT as i32,
    }
}

/// One's-complement sum of big-endian 16-bit words (N even), unfolded.
fn csum_add<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += (u32::from(bytes[i]) << 8) | u32::from(bytes[i + 1]);
        i += 2;
    }
    sum
}

fn csum_fold(mut sum: u32) -> [u8; 2] {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Swaps the Ethernet addresses `macs` (as read from offset 0) into the packet, so
/// it goes back where it came from.
fn swap_macs(ctx: &TcContext, macs: &[u8; 12]) -> Option<()> {
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &eth, 0).ok()
}

/// A 20-byte IPv4 header (no options, TTL 64) with its checksum.
fn ip_header(
    src: [u8; 4],
    dst: [u8; 4],
    total_len: u8,
    protocol: u8,
    dont_fragment: bool,
) -> [u8; 20] {
    let df = if dont_fragment { 0x40 } else { 0 };
    let mut ip = [
        0x45, 0, 0, total_len, 0, 0, df, 0, 64, protocol, 0, 0, src[0], src[1], src[2], src[3],
        dst[0], dst[1], dst[2], dst[3],
    ];
    let csum = csum_fold(csum_add(0, &ip));
    ip[10] = csum[0];
    ip[11] = csum[1];
    ip
}

/// Sends the (rewritten) packet back out of the interface it came in on.
fn send_back(ctx: &TcContext) -> i32 {
    // SAFETY: reading the ingress ifindex of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain helper call; flags 0 sends the packet out of `ifindex`.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
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
    swap_macs(ctx, &macs)?;

    let (src, dst) = (flow.daddr.to_ne_bytes(), flow.saddr.to_ne_bytes());
    let ip = ip_header(src, dst, 40, IPPROTO_TCP, true);
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

    Some(send_back(ctx))
}

/// Turns a UDP datagram into an ICMP port unreachable back to its sender (the
/// datagram's IP header and first 8 bytes quoted, as RFC 792 asks) and sends it
/// out the interface it came in on. Only datagrams without IP options.
fn reject_udp(ctx: &TcContext, flow: &Flow) -> Option<i32> {
    if flow.l4 != ETH_HLEN + 20 {
        return None;
    }
    let macs: [u8; 12] = ctx.load(0).ok()?;
    let quoted_ip: [u8; 20] = ctx.load(ETH_HLEN).ok()?;
    // Keep IP + UDP header, then open 28 bytes after the IP header for the new IP
    // header's room shift and the ICMP header: [IP'][ICMP][quoted IP][quoted UDP].
    // SAFETY: the skb pointer is the program's own context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + 28) as u32, 0) } != 0 {
        return None;
    }
    ctx.adjust_room(28, BPF_ADJ_ROOM_NET, 0).ok()?;
    let quoted_udp: [u8; 8] = ctx.load(ETH_HLEN + 48).ok()?;

    swap_macs(ctx, &macs)?;

    let (src, dst) = (flow.daddr.to_ne_bytes(), flow.saddr.to_ne_bytes());
    let ip = ip_header(src, dst, 56, 1, false);

    // Type 3 (destination unreachable), code 3 (port unreachable).
    let mut icmp = [3u8, 3, 0, 0, 0, 0, 0, 0];
    let sum = csum_add(csum_add(csum_add(0, &icmp), &quoted_ip), &quoted_udp);
    let icmp_csum = csum_fold(sum);
    icmp[2] = icmp_csum[0];
    icmp[3] = icmp_csum[1];

    ctx.store(ETH_HLEN, &ip, 0).ok()?;
    ctx.store(ETH_HLEN + 20, &icmp, 0).ok()?;
    ctx.store(ETH_HLEN + 28, &quoted_ip, 0).ok()?;
    Some(send_back(ctx))
}
