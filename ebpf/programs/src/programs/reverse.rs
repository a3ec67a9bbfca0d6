//! `cgroup/recvmsg4` and `cgroup/getpeername4`: where a socket's peer (or a
//! datagram's source) is a backend it was sent to through a frontend, the
//! application sees the frontend — it asked for the Service, not the pod.

use aya_ebpf::{
    EbpfContext, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use berth_ebpf_common::{RevNatKey, Stat};

use super::count;
use crate::maps::REVNAT;

/// recvmsg4 and getpeername4 must allow.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx)
}

fn restore(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every cgroup sock_addr program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: ctx.as_ptr() is the program's context, as the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevNatKey {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(frontend) = (unsafe { REVNAT.get(&key) }).copied() {
        sa.user_ip4 = frontend.addr;
        sa.user_port = u32::from(frontend.port);
        count(Stat::Reversed);
    }
    ALLOW
}
