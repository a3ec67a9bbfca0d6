//! Pod networking through CNI, invoked as any runtime invokes a plugin: the first
//! conflist (by name) in the config dir, plugins from the bin dirs. With no conflist
//! and a pod CIDR, the agent writes one for berth-cni (bridge `--pod-bridge`, `berth0`
//! by default; built-in IPAM). The pod network may live in another network namespace
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

/// The conflist berth writes for `cidr`.
pub fn default_conflist(cidr: &str, bridge: &str, data_dir: &Path) -> Value {
    json!({
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
    })
}

impl Network {
    /// Loads the conflist from `conf_dir`, writing berth's default for `pod_cidr`
    /// first when the directory has none.
    pub fn load(
        conf_dir: &Path,
        bin_dirs: Vec<PathBuf>,
        pod_cidr: Option<&str>,
        bridge: &str,
        ipam_dir: &Path,
        node_netns: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let find = || -> Option<PathBuf> {
            let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
                .collect();
            files.sort();
            files.into_iter().next()
        };
        let path = match (find(), pod_cidr) {
            (Some(p), _) => p,
            (None, Some(cidr)) => {
                std::fs::create_dir_all(conf_dir)?;
                let p = conf_dir.join("10-berth.conflist");
                let conf = default_conflist(cidr, bridge, ipam_dir);
                std::fs::write(&p, serde_json::to_vec_pretty(&conf)?)?;
                p
            }
            (None, None) => anyhow::bail!(
                "no CNI network config (*.conflist) in {} and no --pod-cidr to write one",
                conf_dir.display()
            ),
        };
        let list =
            ConfList::load(&path).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.msg))?;
        Ok(Self {
            runner: Runner::new(bin_dirs),
            list,
            node_netns,
        })
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
            if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
                result = Err(format!(
                    "SIOCGIFFLAGS lo: {}",
                    std::io::Error::last_os_error()
                ));
            } else {
                req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
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
