//! berth's node agent (`berth-agent`): node registration and lease, pod workers,
//! probes, volumes, status, the kubelet HTTP API, service load-balancer sync into the
//! eBPF maps of `berth-ebpf`, and cluster DNS.
//!
//! Nothing is implemented here yet; the modules arrive with the "Node agent" issue.
