//! Pod networking through CNI, invoked as any runtime invokes a plugin: the first
//! conflist (by name) in the config dir, plugins from the bin dirs. With no conflist
//! and a pod CIDR, the agent writes one for berth-cni (bridge `--pod-bridge`, `berth0`
//! by default; built-in IPAM; masquerade for traffic leaving `--cluster-cidr`). The
//! pod CIDR is `--pod-cidr`, else the Node's `spec.podCIDR` from the control plane's
//! node IPAM ([`pod_cidr_from_node`]), as the kubelet hands its runtime a CNI config
//! templated from the podCIDR. The pod network may live in another network namespace
//! than the agent's (a nested node, or a test's netns): plugins are then started from a
//! thread inside it.

use std::path::{Path, PathBuf};

use berth_cni::exec::{Attach, ConfList, Runner};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Network {
    runner: Runner,
    list: ConfList,
    /// Where the node's pod network lives, when not in the agent's own netns.
    node_netns: Option<PathBuf>,
}

/// The file name of the conflist the agent writes.
pub const OWN_CONFLIST: &str = "10-berth.conflist";

/// Where the pod network's configuration comes from and what the agent's own
/// conflist holds besides the pod CIDR.
#[derive(Debug, Clone)]
pub struct Settings {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub bridge: String,
    pub ipam_dir: PathBuf,
    pub node_netns: Option<PathBuf>,
    /// The cluster's pod range (`--cluster-cidr`): pod traffic to it is not
    /// masqueraded, so pods on other nodes see the pod's own address.
    pub cluster_cidr: Option<String>,
}

/// The first conflist (by name) in `conf_dir`.
fn find_conflist(conf_dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
        .collect();
    files.sort();
    files.into_iter().next()
}

/// Whether, without `--pod-cidr`, the pod network is templated from the Node's
/// podCIDR: `conf_dir` holds no conflist, or only the agent's own.
pub fn templated_from_node(conf_dir: &Path) -> bool {
    find_conflist(conf_dir).is_none_or(|p| p.file_name().is_some_and(|n| n == OWN_CONFLIST))
}

/// Waits until the Node `name` has a podCIDR (the control plane's
/// `--allocate-node-cidrs`) and returns its IPv4 one (berth-cni's family).
pub async fn pod_cidr_from_node(client: &kube::Client, name: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Node;
    let ipv4 = |node: &Node| -> Option<String> {
        let spec = node.spec.as_ref()?;
        let mut all: Vec<&String> = spec.pod_cidrs.iter().flatten().collect();
        all.extend(spec.pod_cidr.as_ref());
        all.into_iter()
            .find(|c| c.parse::<berth_cni::spec::Ipv4Cidr>().is_ok())
            .cloned()
    };
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    tracing::info!(node = %name, "no --pod-cidr: waiting for the node's podCIDR (berth-server --allocate-node-cidrs)");
    let node = kube::runtime::wait::await_condition(api, name, |n: Option<&Node>| {
        n.and_then(ipv4).is_some()
    })
    .await?;
    node.as_ref()
        .and_then(ipv4)
        .ok_or_else(|| anyhow::anyhow!("node {name} was deleted while waiting for its podCIDR"))
}

/// The conflist berth writes for `cidr`.
pub fn default_conflist(
    cidr: &str,
    bridge: &str,
    data_dir: &Path,
    cluster_cidr: Option<&str>,
) -> Value {
    let mut list = json!({
        "cniVersion": "1.1.0",
        "name": "berth",
        "plugins": [{
            "type": "berth-cni",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "berth-ipam",
                "subnet": cidr,
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": data_dir,
            },
        }],
    });
    // The IPv4 prefix of a dual-stack --cluster-cidr.
    let exempt = cluster_cidr.and_then(|c| {
        c.split(',')
            .map(str::trim)
            .find(|c| c.parse::<berth_cni::spec::Ipv4Cidr>().is_ok())
    });
    if let Some(c) = exempt {
        list["plugins"][0]["nonMasqueradeCIDR"] = json!(c);
    }
    list
}

impl Network {
    /// Loads the conflist from `conf_dir`, writing berth's default for `pod_cidr`
    /// first when the directory has none. With `from_node` (the pod CIDR is the
    /// Node's), the agent's own conflist is written again when its subnet differs.
    pub fn load(s: &Settings, pod_cidr: Option<&str>, from_node: bool) -> anyhow::Result<Self> {
        let own = s.conf_dir.join(OWN_CONFLIST);
        let write = |cidr: &str| -> anyhow::Result<PathBuf> {
            std::fs::create_dir_all(&s.conf_dir)?;
            let conf = default_conflist(cidr, &s.bridge, &s.ipam_dir, s.cluster_cidr.as_deref());
            std::fs::write(&own, serde_json::to_vec_pretty(&conf)?)?;
            Ok(own.clone())
        };
        let path = match (find_conflist(&s.conf_dir), pod_cidr) {
            (Some(p), Some(cidr)) if from_node && p == own => {
                let current = ConfList::load(&p).ok().and_then(|l| {
                    let subnet = l.plugins.first()?.get("ipam")?.get("subnet")?;
                    subnet.as_str().map(str::to_owned)
                });
                if current.as_deref() == Some(cidr) {
                    p
                } else {
                    tracing::warn!(old = ?current, new = %cidr, "the node's podCIDR changed: rewriting the pod network's conflist");
                    write(cidr)?
                }
            }
            (Some(p), _) => p,
            (None, Some(cidr)) => write(cidr)?,
            (None, None) => anyhow::bail!(
                "no CNI network config (*.conflist) in {} and no --pod-cidr to write one",
                s.conf_dir.display()
            ),
        };
        let list =
            ConfList::load(&path).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.msg))?;
        Ok(Self {
            runner: Runner::new(s.bin_dirs.clone()),
            list,
            node_netns: s.node_netns.clone(),
        })
    }

    /// Whether the pod network is berth-cni's bridge, which [`crate::routes`] routes
    /// between nodes (another CNI network routes for itself).
    pub fn is_berth_cni(&self) -> bool {
        self.list
            .plugins
            .first()
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            == Some("berth-cni")
    }

    fn attach(sandbox_id: &str, netns: &Path, pod: &str) -> Attach {
        Attach {
            container_id: sandbox_id.to_owned(),
            netns: netns.to_path_buf(),
            ifname: "eth0".into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={sandbox_id}",
                pod.split('/').next().unwrap_or(""),
                pod.split('/').nth(1).unwrap_or("")
            ),
            capability_args: Default::default(),
        }
    }

    /// The network namespace holding the pod network, when not the agent's own.
    pub fn node_netns(&self) -> Option<&Path> {
        self.node_netns.as_deref()
    }

    /// The pod subnet and the gateway pods route through, from the first plugin's
    /// IPAM (`gateway`, else the subnet's first address — host-local's and
    /// berth-ipam's default), in `subnet` or `ranges[0][0]` form.
    pub fn pod_gateway(&self) -> Option<(std::net::Ipv4Addr, u8)> {
        let ipam = self.list.plugins.first()?.get("ipam")?;
        let range = ipam
            .get("ranges")
            .and_then(|r| r.get(0)?.get(0))
            .unwrap_or(ipam);
        let (net, len) = range.get("subnet")?.as_str()?.split_once('/')?;
        let net: std::net::Ipv4Addr = net.parse().ok()?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 30)?;
        let gateway = match range.get("gateway").and_then(Value::as_str) {
            Some(g) => g.parse().ok()?,
            None => std::net::Ipv4Addr::from(u32::from(net) + 1),
        };
        Some((gateway, len))
    }

    fn in_node_netns<T: Send>(
        &self,
        f: impl FnOnce() -> Result<T, String> + Send,
    ) -> Result<T, String> {
        match &self.node_netns {
            Some(ns) => crate::netns::run_in(ns, f),
            None => f(),
        }
    }

    /// CNI ADD; returns the pod's IPv4 address. `lo` of the pod is brought up first
    /// (what runtimes do with the `loopback` plugin): traffic to the pod's own address
    /// goes through it.
    pub fn add(&self, sandbox_id: &str, netns: &Path, pod: &str) -> Result<String, String> {
        loopback_up(netns)?;
        let attach = Self::attach(sandbox_id, netns, pod);
        let result = self.in_node_netns(|| {
            self.runner
                .add(&self.list, &attach)
                .map_err(|e| format!("CNI ADD ({}): {}", self.list.name, e.msg))
        })?;
        result
            .get("ips")
            .and_then(Value::as_array)
            .and_then(|ips| ips.iter().find_map(|ip| ip.get("address")?.as_str()))
            .and_then(|a| a.split('/').next())
            .map(str::to_owned)
            .ok_or_else(|| format!("CNI ADD ({}) returned no IP address", self.list.name))
    }

    /// CNI DEL (idempotent).
    pub fn del(&self, sandbox_id: &str, netns: &Path, pod: &str) -> Result<(), String> {
        let attach = Self::attach(sandbox_id, netns, pod);
        self.in_node_netns(|| {
            self.runner
                .del(&self.list, &attach, None)
                .map_err(|e| format!("CNI DEL ({}): {}", self.list.name, e.msg))
        })
    }
}

/// Sets `lo` up in the network namespace at `netns`.
fn loopback_up(netns: &Path) -> Result<(), String> {
    crate::netns::run_in(netns, || {
        // SAFETY: a plain socket and two ioctls on a zeroed, NUL-terminated ifreq.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let mut req: libc::ifreq = std::mem::zeroed();
            for (i, b) in b"lo".iter().enumerate() {
                req.ifr_name[i] = *b as libc::c_char;
            }
            let mut result = Ok(());
            // The request is a c_ulong in glibc's ioctl and a c_int in musl's: `as _`
            // builds on both.
            if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
                result = Err(format!(
                    "SIOCGIFFLAGS lo: {}",
                    std::io::Error::last_os_error()
                ));
            } else {
                req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) < 0 {
                    result = Err(format!(
                        "SIOCSIFFLAGS lo: {}",
                        std::io::Error::last_os_error()
                    ));
                }
            }
            libc::close(fd);
            result
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_conflist_exempts_the_clusters_ipv4_range_from_masquerade() {
        let dir = Path::new("/var/lib/berth/ipam");
        let list = default_conflist(
            "10.244.3.0/24",
            "berth0",
            dir,
            Some("fd00:10:244::/56, 10.244.0.0/16"),
        );
        let plugin = &list["plugins"][0];
        assert_eq!(plugin["ipam"]["subnet"], "10.244.3.0/24");
        assert_eq!(plugin["ipMasq"], true);
        assert_eq!(plugin["nonMasqueradeCIDR"], "10.244.0.0/16");
        let alone = default_conflist("10.244.3.0/24", "berth0", dir, None);
        assert!(alone["plugins"][0].get("nonMasqueradeCIDR").is_none());
    }

    #[test]
    fn only_an_empty_dir_or_the_agents_own_conflist_is_templated_from_the_node() {
        let dir = std::env::temp_dir().join(format!("berth-netconf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(templated_from_node(&dir), "no directory");
        std::fs::create_dir_all(&dir).expect("mkdir");
        assert!(templated_from_node(&dir), "empty");
        std::fs::write(dir.join(OWN_CONFLIST), "{}").expect("write");
        assert!(templated_from_node(&dir), "only the agent's own");
        std::fs::write(dir.join("05-other.conflist"), "{}").expect("write");
        assert!(!templated_from_node(&dir), "another network comes first");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
