//! `cgroup/connect4` and `cgroup/sendmsg4`: a connect() — or, for unconnected UDP,
//! a sendto() — to a service frontend is rewritten, before any packet exists, to
//! one of the service's backends, chosen at random. The socket + backend → frontend
//! pair is remembered in `REVNAT` so the reverse programs can show the frontend back
//! to the application. A service without backends refuses with ECONNREFUSED, as
//! kube-proxy's REJECT rule does.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie, generated::bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use berth_ebpf_common::{BackendKey, RevNatKey, RevNatValue, ServiceKey, Stat};

use super::count;
use crate::maps::{BACKENDS, REVNAT, SERVICES};

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
    let key = ServiceKey {
        addr: sa.user_ip4,
        // user_port holds the network-order port in its low 16 bits.
        port: sa.user_port as u16,
        protocol: sa.protocol as u8,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once; user space may update it concurrently,
    // which at worst gives us the previous or the next complete value.
    let Some(service) = (unsafe { SERVICES.get(&key) }).copied() else {
        return ALLOW;
    };
    if service.count == 0 {
        count(Stat::NoBackends);
        // SAFETY: a plain helper call; sets the value the syscall returns.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    // SAFETY: a plain helper call with no arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % service.count;
    // SAFETY: copied out at once, as above.
    let Some(backend) = (unsafe {
        BACKENDS.get(&BackendKey {
            group: service.group,
            slot,
        })
    })
    .copied() else {
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
        addr: key.addr,
        port: key.port,
        _pad: 0,
    };
    // A full LRU map evicts the oldest entry, so this cannot fail for lack of room.
    let _ = REVNAT.insert(&rev_key, &frontend, 0);
    count(Stat::Translated);
    ALLOW
}
