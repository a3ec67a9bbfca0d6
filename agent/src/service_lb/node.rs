//! The socket-LB on a node: loaded from the eBPF object, attached to the cgroup2
//! directory of the node's pods (`<cgroup2 mount>/<cgroup root>`) — never the host's
//! cgroup root — and fed by [`super::watch::run`]. On a hybrid cgroup host (v1
//! controllers, a cgroup2 mount beside them) containers are placed in the v1
//! hierarchies only, so the agent joins that cgroup2 directory itself: the monitors
//! and containers it starts inherit the membership, and their connects are balanced.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_ebpf::SocketLb;

use super::{LbMetrics, ServiceSync};

/// The cgroup2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        before.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A running socket-LB: its sync state and metrics.
pub struct NodeLb {
    pub sync: Arc<Mutex<ServiceSync<SocketLb>>>,
    pub metrics: Arc<Mutex<LbMetrics>>,
    pub cgroup: PathBuf,
}

impl std::fmt::Debug for NodeLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLb")
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

/// Loads and attaches the socket-LB for pods under `cgroup_root`, and for the host's
/// processes under `host_cgroup` (relative to the cgroup2 mount; empty or `/`: all of
/// them) when given: they then reach ClusterIPs, and NodePorts on the node's addresses
/// and on 127.0.0.1, as kube-proxy lets the host.
pub fn start(
    object: &Path,
    pins: Option<&Path>,
    cgroup_root: &str,
    host_cgroup: Option<&str>,
    node: &str,
) -> anyhow::Result<NodeLb> {
    let mount = cgroup2_mount().ok_or_else(|| anyhow::anyhow!("no cgroup2 mount on this host"))?;
    let rel = cgroup_root.trim_matches('/');
    if rel.is_empty() {
        anyhow::bail!("refusing to attach the socket-LB at the cgroup2 root; give a --cgroup-root");
    }
    let cgroup = mount.join(rel);
    std::fs::create_dir_all(&cgroup)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", cgroup.display()))?;
    if !berth_runtime::cgroups::is_v2() {
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| anyhow::anyhow!("joining {}: {e}", cgroup.display()))?;
    }
    if let Some(dir) = pins {
        ensure_bpffs(dir)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    let mut lb = SocketLb::open(object, pins)?;
    lb.attach(&cgroup)?;
    if let Some(host) = host_cgroup {
        let dir = mount.join(host.trim_matches('/'));
        lb.attach_host(&dir)
            .map_err(|e| anyhow::anyhow!("attaching the socket LB at {}: {e}", dir.display()))?;
        lb.set_host_netns(berth_ebpf::netns_cookie()?)?;
    } else {
        lb.set_host_netns(0)?;
        lb.detach_host()?;
    }
    Ok(NodeLb {
        sync: Arc::new(Mutex::new(ServiceSync::new(lb, node))),
        metrics: Arc::new(Mutex::new(LbMetrics::new())),
        cgroup,
    })
}

/// Mounts a bpffs unless `pins` is already on one, as Cilium does on hosts that do not
/// mount it: at `/sys/fs/bpf` for pins below it (sysfs allows no directories of its
/// own there, so a deeper mount point could not be made), else on the parent of
/// `pins`.
fn ensure_bpffs(pins: &Path) -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let on_bpffs = mounts.lines().any(|line| {
        let Some((before, after)) = line.split_once(" - ") else {
            return false;
        };
        after.split_whitespace().next() == Some("bpf")
            && before
                .split_whitespace()
                .nth(4)
                .is_some_and(|m| pins.starts_with(m))
    });
    if on_bpffs {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    let parent = if pins.starts_with(default) {
        default
    } else {
        pins.parent().unwrap_or(default)
    };
    std::fs::create_dir_all(parent)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
    nix::mount::mount(
        Some("bpf"),
        parent,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("mounting a bpffs at {}: {e}", parent.display()))
}
