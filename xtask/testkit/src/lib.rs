//! Test support shared by every berth crate's integration and e2e tests.
//!
//! - [`skip`] and [`require_root!`]: a privileged test run without privileges returns
//!   early *and says so*: it prints the reason and records it where `cargo xtask test`
//!   (which sets `BERTH_TEST_SKIP_DIR`) counts it as skipped, not passed.
//! - RAII guards ([`NetNs`], [`Cgroup2Child`], [`ChildGuard`], [`BpfFs`]) that make a
//!   network namespace, a child cgroup, a process or a private bpffs mount and remove
//!   it on drop, so a failing test leaks nothing; [`Segment`] joins netns "hosts" on
//!   one L2 segment for multi-node network tests.
//! - [`BerthServer`], [`Agent`], [`CsiDriver`], [`Etcd`]: the cluster's processes,
//!   started for a test or a bench and stopped by PID on drop.
//! - [`tools`]: where the real kubectl and Python client live, and their pinned versions.

mod agent;
mod bpffs;
mod cgroup;
mod csi;
mod etcd;
pub mod kubectl;
mod netns;
mod process;
mod registry;
mod segment;
mod server;
mod skip;
pub mod tools;

pub use agent::{Agent, CLUSTER_DNS, DNS_LISTENER, workspace_bin};
pub use bpffs::BpfFs;
pub use cgroup::{Cgroup2Child, cgroup2_mount};
pub use csi::CsiDriver;
pub use etcd::{Etcd, EtcdTls};
pub use kubectl::Kubectl;
pub use netns::NetNs;
pub use process::ChildGuard;
pub use registry::{AUTH_PASSWORD, AUTH_USER, Registry, skopeo};
pub use segment::{Segment, cable, forwarding_host};
pub use server::BerthServer;
pub use skip::{is_root, skip, unique_name};

/// Returns from the calling test, recorded as skipped, unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            $crate::skip("needs root (netns, cgroups, eBPF)");
            return;
        }
    };
}

/// The eBPF object `cargo xtask build-ebpf` built, or — when it is missing —
/// returns from the calling test, recorded as skipped with the reason.
#[macro_export]
macro_rules! require_ebpf_object {
    () => {
        $crate::require_ebpf_object!(())
    };
    ($skipped:expr) => {{
        let object = $crate::tools::ebpf_object();
        if !object.exists() {
            $crate::skip(&format!(
                "{} is not built (cargo xtask build-ebpf)",
                object.display()
            ));
            return $skipped;
        }
        object
    }};
}
