//! berth-cni: a CNI 1.1 plugin (bridge, veth, host-local style IPAM) invoked by the
//! agent exactly as any container runtime invokes a CNI plugin.
//!
//! Nothing is implemented here yet; the modules arrive with the "berth-cni" issue.
