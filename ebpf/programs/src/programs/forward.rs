//! `cgroup/connect4` and `cgroup/sendmsg4`: a connect() — or, for unconnected UDP,
//! a sendto() — to a service frontend is rewritten, before any packet exists, to
//! one of the service's backends, chosen at random. The socket + backend → frontend
//! pair is remembered in `REVNAT` so the reverse programs can show the frontend back
//! to the application. A service without backends refuses with ECONNREFUSED, as
//! kube-proxy's REJECT rule does. With ClientIP affinity, a client (its netns) keeps
//! its backend until it has not used it for the timeout, or the service changes.
//! A connect to one of the node's addresses at a NodePort goes to that NodePort's
//! backends, as kube-proxy answers NodePorts on every node address — and, in the
//! host's own network namespace (`HOST_NETNS`), on loopback addresses too, as
//! kube-proxy allows the host. A pod's 127.0.0.1 is its own and is left alone.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use berth_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, RevNatKey, RevNatValue, ServiceKey,
    ServiceValue, Stat,
};

use super::count;
use crate::maps::{AFFINITY, BACKENDS, HOST_NETNS, NODE_IPS, REVNAT, SERVICES};

/// Verdicts for cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
/// ECONNREFUSED, as the syscall's return value.
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

fn translate(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every cgroup sock_addr program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    let dst = sa.user_ip4;
    let mut key = ServiceKey {
        addr: dst,
        // user_port holds the network-order port in its low 16 bits.
        port: sa.user_port as u16,
        protocol: sa.protocol as u8,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once; user space may update it concurrently,
    // which at worst gives us the previous or the next complete value.
    let service = match (unsafe { SERVICES.get(&key) }).copied() {
        Some(s) => s,
        None => {
            // SAFETY: only checks presence.
            let node_address = unsafe { NODE_IPS.get(&dst) }.is_some()
                // 127.0.0.0/8 (its first octet is the low byte of the network-order
                // value), from the host's namespace only.
                || (dst & 0xff == 127 && in_host_netns(ctx));
            if !node_address {
                return ALLOW;
            }
            key.addr = 0;
            // SAFETY: as above.
            match (unsafe { SERVICES.get(&key) }).copied() {
                Some(s) => s,
                None => return ALLOW,
            }
        }
    };
    if service.count == 0 {
        count(Stat::NoBackends);
        // SAFETY: a plain helper call; sets the value the syscall returns.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    let Some(backend) = choose(ctx, &key, &service) else {
        count(Stat::MissingBackend);
        return ALLOW;
    };
    sa.user_ip4 = backend.addr;
    sa.user_port = u32::from(backend.port);
    // SAFETY: ctx.as_ptr() is the program's context, which the helper accepts for
    // cgroup sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev_key = RevNatKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        _pad: 0,
    };
    let frontend = RevNatValue {
        addr: dst,
        port: key.port,
        _pad: 0,
    };
    // A full LRU map evicts the oldest entry, so this cannot fail for lack of room.
    let _ = REVNAT.insert(&rev_key, &frontend, 0);
    count(Stat::Translated);
    ALLOW
}

/// Whether the socket belongs to the host's network namespace.
fn in_host_netns(ctx: &SockAddrContext) -> bool {
    let Some(host) = HOST_NETNS.get(0).copied() else {
        return false;
    };
    // SAFETY: ctx.as_ptr() is the program's context, as the helper expects.
    host != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == host
}

/// Picks the backend: the affinity pin if live, else a random slot (pinned anew
/// when the service has affinity).
fn choose(ctx: &SockAddrContext, key: &ServiceKey, service: &ServiceValue) -> Option<Backend> {
    if service.affinity_timeout == 0 {
        return pick(service);
    }
    // SAFETY: ctx.as_ptr() is the program's context, as the helper expects.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let affinity_key = AffinityKey {
        netns_cookie,
        frontend: *key,
    };
    let timeout_ns = u64::from(service.affinity_timeout) * 1_000_000_000;
    // SAFETY: copied out at once.
    if let Some(pin) = (unsafe { AFFINITY.get(&affinity_key) }).copied() {
        if pin.group == service.group && now.wrapping_sub(pin.last_used_ns) < timeout_ns {
            count(Stat::AffinityHit);
            let _ = AFFINITY.insert(
                &affinity_key,
                &AffinityValue {
                    last_used_ns: now,
                    ..pin
                },
                0,
            );
            return Some(pin.backend);
        }
        count(Stat::AffinityExpired);
    }
    let backend = pick(service)?;
    let pin = AffinityValue {
        group: service.group,
        _pad: 0,
        backend,
        last_used_ns: now,
    };
    let _ = AFFINITY.insert(&affinity_key, &pin, 0);
    Some(backend)
}

/// A random backend of the service's current group.
pub fn pick(service: &ServiceValue) -> Option<Backend> {
    // SAFETY: a plain helper call with no arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % service.count;
    // SAFETY: copied out at once; user space may update it concurrently, which at
    // worst gives the previous or the next complete value.
    (unsafe {
        BACKENDS.get(&BackendKey {
            group: service.group,
            slot,
        })
    })
    .copied()
}
