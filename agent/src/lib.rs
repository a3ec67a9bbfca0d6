//! berth's node agent (`berth-agent`): a kubelet. [`node`] registers the Node and
//! keeps its Lease and status; [`pods`] runs the pods bound to the node with
//! `berth-runtime` (sandboxes, containers, probes, volumes, status) and [`network`]
//! (CNI), and [`routes`] routes pod traffic to the other nodes' pod ranges;
//! [`kubelet_api`] is the kubelet API (logs, health, metrics); [`service_lb`]
//! turns Services and EndpointSlices into the eBPF socket-LB maps of `berth-ebpf`;
//! [`dns`] answers the cluster's DNS on this node; both follow the one Service watch
//! of [`services`]; [`certificates`] joins the cluster with a bootstrap token and
//! keeps the node's client certificate fresh; [`csi`] drives the node's CSI drivers
//! (registration, provisioning, expansion, and the mounts of claims in pods);
//! [`failover`] reaches any of several berth-servers.

pub mod certificates;
pub mod config;
pub mod csi;
pub mod dns;
pub mod failover;
pub mod kubelet_api;
pub mod netns;
pub mod netpol;
pub mod network;
pub mod node;
pub mod pods;
pub mod routes;
pub mod service_lb;
pub mod services;

/// The version this agent reports as `nodeInfo.kubeletVersion`.
pub const KUBELET_VERSION: &str = "v1.37.0-berth";

/// Makes `config`'s clients send the agent's User-Agent: the apiserver names the
/// agent's writes' field manager `kubelet` after it, as in a Kubernetes cluster.
pub fn identify(config: &mut kube::Config) -> anyhow::Result<()> {
    config.headers.push((
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_str(&user_agent())?,
    ));
    Ok(())
}

/// The agent's User-Agent toward the apiserver, as the kubelet's reads
/// (`kubelet/v1.37.0-berth (linux/amd64) berth/0.1.0`).
fn user_agent() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!(
        "kubelet/{KUBELET_VERSION} ({}/{arch}) berth/{}",
        std::env::consts::OS,
        env!("CARGO_PKG_VERSION")
    )
}
