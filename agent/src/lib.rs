//! berth's node agent (`berth-agent`): node registration and lease, pod workers,
//! probes, volumes, status, the kubelet HTTP API, service load-balancer sync into the
//! eBPF maps of `berth-ebpf`, and cluster DNS.
//!
//! So far: [`service_lb`], the Service + EndpointSlice → socket-LB translation and
//! sync. The rest arrives with the "Node agent" issue.

pub mod service_lb;
