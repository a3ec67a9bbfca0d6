//! eBPF host routing: the NodePort ingress program, on a packet it has no service
//! for, forwards pod-to-pod traffic itself. A TCP or UDP packet whose source and
//! destination are both in the cluster's pod range (`HOST_ROUTING`), addressed to
//! this host at L2, is looked up in the kernel's FIB as the stack would; when the
//! route leaves by another interface these programs are attached to (`IF_MACS`: the
//! node's uplink and the pod bridge) and the route back to the source is the
//! interface it came in on (a strict reverse-path check: no spoofed or local
//! sources), the TTL is decremented and the packet handed straight to that
//! interface's neighbour (`bpf_redirect_neigh`). The stack's IP receive, forwarding
//! and netfilter hooks are skipped; segmented (GSO) packets go the same way, so a
//! flow's packets keep one path and their order. Anything else — fragments, IP
//! options, an expiring TTL, a packet too big for the route, local or unroutable
//! destinations — is left to the kernel unchanged.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_OK, TC_ACT_SHOT, bpf_check_mtu_flags::BPF_MTU_CHK_SEGS,
        bpf_fib_lookup as FibLookup, bpf_redir_neigh,
    },
    helpers::{bpf_check_mtu, bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use berth_ebpf_common::Stat;

use super::count;
use crate::maps::{HOST_ROUTING, IF_MACS};

const ETH_HLEN: usize = 14;
const IP_TOT_LEN: usize = ETH_HLEN + 2;
const IP_FRAG: usize = ETH_HLEN + 6;
const IP_TTL: usize = ETH_HLEN + 8;
const IP_CSUM: usize = ETH_HLEN + 10;
const PACKET_HOST: u32 = 0;
const AF_INET: u32 = 2;

/// The packet's verdict: redirected to the next hop, or `TC_ACT_OK` (the kernel
/// routes it). `saddr`/`daddr` are as on the wire; `l4` is the L4 header's offset
/// (only option-free headers are forwarded here).
pub fn route(ctx: &TcContext, saddr: u32, daddr: u32, protocol: u8, l4: usize) -> i32 {
    forward(ctx, saddr, daddr, protocol, l4).unwrap_or(TC_ACT_OK as i32)
}

/// A forwarding lookup of `dst` as if the packet came in on `ingress`; the egress
/// ifindex and the next hop (network order), or None unless the kernel would
/// forward it (`tot_len` 0: no MTU check).
fn lookup(ctx: &TcContext, ingress: u32, src: u32, dst: u32, tot_len: u16) -> Option<(u32, u32)> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut params: FibLookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET as u8;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ingress;
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: params lives on our stack for the call; its size is passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &mut params,
            core::mem::size_of::<FibLookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    // Anything but a forwarding route (local, blackhole, forwarding off on the
    // ingress interface, too big) is not ours.
    if rc != 0 {
        return None;
    }
    // SAFETY: a successful lookup wrote the next hop (the gateway, or the
    // destination on a connected route) into ipv4_dst.
    Some((params.ifindex, unsafe { params.__bindgen_anon_4.ipv4_dst }))
}

fn forward(ctx: &TcContext, saddr: u32, daddr: u32, protocol: u8, l4: usize) -> Option<i32> {
    let range = HOST_ROUTING.get(0)?;
    if range.mask == 0 || saddr & range.mask != range.net || daddr & range.mask != range.net {
        return None;
    }
    let skb = ctx.skb.skb;
    // SAFETY: reads of the program's own __sk_buff context fields.
    let (pkt_type, gso_size, ingress) =
        unsafe { ((*skb).pkt_type, (*skb).gso_size, (*skb).ifindex) };
    if pkt_type != PACKET_HOST || l4 != ETH_HLEN + 20 {
        return None;
    }
    // Fragments (the first one too: the kernel reassembles the others) stay whole
    // with the kernel.
    let frag: u16 = ctx.load(IP_FRAG).ok()?;
    if u16::from_be(frag) & 0x3fff != 0 {
        return None;
    }
    let ttl: u8 = ctx.load(IP_TTL).ok()?;
    if ttl <= 1 {
        return None; // the kernel answers with ICMP time exceeded
    }
    let tot_len: u16 = ctx.load(IP_TOT_LEN).ok()?;
    // A segmented packet's length is its segments'; the MTU is checked per segment
    // below instead.
    let check_len = if gso_size == 0 {
        u16::from_be(tot_len)
    } else {
        0
    };
    let (egress, next_hop) = lookup(ctx, ingress, saddr, daddr, check_len)?;
    if egress == ingress {
        return None;
    }
    // SAFETY: only checks presence.
    unsafe { IF_MACS.get(&egress) }?;
    // The kernel's reverse-path filter, strictly: the source must be reached back
    // through the interface the packet came in on (a local or spoofed source is not).
    let (back, _) = lookup(ctx, ingress, daddr, saddr, 0)?;
    if back != ingress {
        return None;
    }
    if gso_size != 0 {
        let mut mtu: u32 = 0;
        // SAFETY: mtu lives on our stack for the call.
        let rc =
            unsafe { bpf_check_mtu(skb.cast(), egress, &mut mtu, 0, u64::from(BPF_MTU_CHK_SEGS)) };
        if rc != 0 {
            return None;
        }
    }
    // TTL and the protocol share a 16-bit word of the header checksum.
    let old = u16::from_be_bytes([ttl, protocol]);
    let new = u16::from_be_bytes([ttl - 1, protocol]);
    if ctx
        .l3_csum_replace(IP_CSUM, u64::from(old.to_be()), u64::from(new.to_be()), 2)
        .is_err()
    {
        return None;
    }
    // The checksum is changed: from here the packet is ours to send or drop.
    if ctx.store(IP_TTL, &(ttl - 1), 0).is_err() {
        return Some(TC_ACT_SHOT as i32);
    }
    let mut nh = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: next_hop },
    };
    count(Stat::HostRouted);
    // SAFETY: nh lives on our stack for the call; its size is passed.
    Some(unsafe {
        bpf_redirect_neigh(
            egress,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    })
}
