//! One file per job: socket-level balancing forward and back, NodePort on the
//! node's external interfaces, host routing between them, NetworkPolicy at the pods'
//! cgroup.
pub mod forward;
pub mod host_routing;
pub mod netpol;
pub mod nodeport;
pub mod reverse;

use berth_ebpf_common::Stat;

use crate::maps::STATS;

/// Counts one event in the per-CPU stats.
pub fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: the pointer comes from the per-CPU map and is valid for this program
        // run; per-CPU slots are only written by this CPU, so no atomics are needed.
        unsafe { *counter += 1 };
    }
}
