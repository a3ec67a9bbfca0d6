//! User-space side of berth's eBPF dataplane.
//!
//! [`SocketLb`] loads the object built by `cargo xtask build-ebpf`, attaches its
//! `cgroup/connect4` program to a cgroup (cgroup2), and programs services through a
//! [`ServiceTable`], which writes a service's backends before it points the service at
//! them so no connect sees half an update. [`attach_device_filter`] gives a container's
//! cgroup its device allow-list (cgroup v2). NetworkPolicy is enforced by the same
//! object's cgroup skb programs ([`SocketLb::attach_network_policy`], `netpol`).

mod devices;
mod error;
mod netpol;
mod service_table;
mod socket_lb;

pub use berth_ebpf_common::DeviceRule;
pub use berth_ebpf_common::{NP_EGRESS, NP_INGRESS, NP_MAX_RANGES, NpPortRange};
pub use devices::attach_device_filter;
pub use error::Error;
pub use netpol::{PolicyRule, PolicyState, PolicyWrites};
pub use service_table::{Frontend, LbMaps, Protocol, ServiceOptions, ServiceTable};
pub use socket_lb::{SocketLb, Stats, netns_cookie};
