//! berth-cni: a CNI 1.1 plugin — a Linux bridge on the node, a veth pair per
//! container interface, and a host-local-style IPAM (or a delegated IPAM plugin) —
//! invoked by the agent exactly as any container runtime invokes a CNI plugin.
//!
//! - [`spec`]: the CNI specification's data (configs, results, errors, versions);
//! - [`env`]: the `CNI_*` parameters;
//! - [`plugin`]: the verbs ADD, DEL, CHECK, VERSION, GC, STATUS;
//! - [`ipam`]: the built-in allocator and delegation;
//! - [`netlink`]: links, addresses and routes over rtnetlink;
//! - [`exec`]: the runtime side — conflists and invoking plugins as libcni does.

pub mod env;
pub mod exec;
pub mod ipam;
pub mod masq;
pub mod netlink;
pub mod plugin;
pub mod spec;
