//! `cgroup/connect4`: socket-level load balancing. A connect() (or a connected UDP
//! socket's connect) to a service frontend is rewritten, before any packet exists, to
//! one of the service's backends chosen at random.

use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::cgroup_sock_addr, programs::SockAddrContext};
use berth_ebpf_common::{BackendKey, ServiceKey, Stat};

use crate::maps::{BACKENDS, SERVICES, STATS};

/// Verdicts for cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every cgroup/connect4 program a valid bpf_sock_addr.
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
        return REJECT;
    }
    // SAFETY: a plain helper call with no arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % service.count;
    let backend_key = BackendKey {
        group: service.group,
        slot,
    };
    // SAFETY: copied out at once, as above.
    let Some(backend) = (unsafe { BACKENDS.get(&backend_key) }).copied() else {
        count(Stat::MissingBackend);
        return ALLOW;
    };
    sa.user_ip4 = backend.addr;
    sa.user_port = u32::from(backend.port);
    count(Stat::Translated);
    ALLOW
}

fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: the pointer comes from the per-CPU map and is valid for this program
        // run; per-CPU slots are only written by this CPU, so no atomics are needed.
        unsafe { *counter += 1 };
    }
}
