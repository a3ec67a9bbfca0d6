//! A test node: a network namespace playing the node (its bridge, its iptables),
//! pods as further namespaces, and plugins run from inside the node namespace the
//! way a runtime runs them (`berth_cni::exec`).

#![allow(dead_code, reason = "each test file uses a different part")]

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use berth_cni::{
    exec::{Attach, ConfList, Runner},
    spec::CniError,
};
use berth_testkit::{NetNs, unique_name};
use serde_json::{Value, json};

/// Where the Debian reference plugins live.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

pub fn berth_cni_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_berth-cni"))
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

pub struct Node {
    pub ns: NetNs,
    pub data: PathBuf,
    pub runner: Runner,
}

impl Node {
    pub fn new() -> Self {
        let data = std::env::temp_dir().join(unique_name("berth-cni-test-"));
        Self {
            ns: NetNs::new("bcnode"),
            data,
            runner: Runner::new(vec![berth_cni_dir(), REFERENCE_DIR.into()]),
        }
    }

    /// berth-cni's own entry with the built-in IPAM on `subnet`.
    pub fn berth(&self, subnet: &str) -> Value {
        json!({
            "type": "berth-cni",
            "bridge": "bcbr0",
            "isGateway": true,
            "hairpinMode": true,
            "ipam": {"type": "berth-ipam", "subnet": subnet, "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.data},
        })
    }

    /// A conflist of `plugins` at `version`.
    pub fn list(&self, version: &str, plugins: Vec<Value>) -> ConfList {
        let v = json!({"cniVersion": version, "name": "testnet", "plugins": plugins});
        ConfList::parse(v.to_string().as_bytes()).expect("valid conflist")
    }

    pub fn add(&self, list: &ConfList, pod: &Pod) -> Result<Value, CniError> {
        self.ns.run(|| self.runner.add(list, &pod.attach()))
    }

    pub fn del(&self, list: &ConfList, pod: &Pod, prev: Option<&Value>) -> Result<(), CniError> {
        self.ns.run(|| self.runner.del(list, &pod.attach(), prev))
    }

    pub fn check(&self, list: &ConfList, pod: &Pod, prev: &Value) -> Result<(), CniError> {
        self.ns.run(|| self.runner.check(list, &pod.attach(), prev))
    }

    /// Runs berth-cni in the node namespace with exactly `env` and `stdin` (for
    /// bad-input tests); returns whether it exited 0 and the JSON it printed.
    pub fn run_raw(&self, env: &[(&str, String)], stdin: &[u8]) -> (bool, Value) {
        self.ns.run(|| {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth-cni"))
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("run berth-cni");
            if let Some(mut input) = child.stdin.take() {
                std::io::Write::write_all(&mut input, stdin).expect("stdin");
            }
            let out = child.wait_with_output().expect("wait");
            let printed = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "berth-cni printed no JSON ({e}): {:?}",
                    String::from_utf8_lossy(&out.stdout)
                )
            });
            (out.status.success(), printed)
        })
    }

    /// The `CNI_*` variables for an ADD of `pod`.
    pub fn add_env(&self, pod: &Pod) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", pod.id.clone()),
            ("CNI_NETNS", pod.ns.path().display().to_string()),
            ("CNI_IFNAME", pod.ifname.clone()),
            ("CNI_PATH", berth_cni_dir().display().to_string()),
        ]
    }

    /// A single-plugin config (as a runtime would pass it) for raw invocations.
    pub fn raw_conf(&self, version: &str, subnet: &str) -> Value {
        let mut conf = self.berth(subnet);
        conf["cniVersion"] = json!(version);
        conf["name"] = json!("testnet");
        conf
    }

    /// The veth interfaces in the node namespace.
    pub fn veths(&self) -> Vec<String> {
        self.ns
            .ip(&["-o", "link", "show", "type", "veth"])
            .lines()
            .filter_map(|l| {
                l.split(':')
                    .nth(1)
                    .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            })
            .collect()
    }

    pub fn has_bridge(&self) -> bool {
        self.ns.link_exists("bcbr0")
    }

    /// The built-in IPAM's allocations (address → containerID).
    pub fn allocations(&self) -> Vec<(String, String)> {
        let path = self.data.join("testnet/state.json");
        let Ok(bytes) = std::fs::read(&path) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_slice(&bytes).expect("state is JSON");
        v["allocations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(ip, o)| {
                        (
                            ip.clone(),
                            o["containerID"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

pub struct Pod {
    pub ns: NetNs,
    pub id: String,
    pub ifname: String,
    pub capability_args: serde_json::Map<String, Value>,
}

impl Pod {
    pub fn new() -> Self {
        let ns = NetNs::new("bcpod");
        let id = format!("ctr-{}", ns.name());
        Self {
            ns,
            id,
            ifname: "eth0".into(),
            capability_args: serde_json::Map::new(),
        }
    }

    pub fn attach(&self) -> Attach {
        Attach {
            container_id: self.id.clone(),
            netns: self.ns.path(),
            ifname: self.ifname.clone(),
            args: String::new(),
            capability_args: self.capability_args.clone(),
        }
    }

    /// The non-loopback links in the pod namespace.
    pub fn links(&self) -> Vec<String> {
        self.ns
            .ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| {
                l.split(':')
                    .nth(1)
                    .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            })
            .filter(|n| n != "lo")
            .collect()
    }
}

/// The pod address in a CNI result (the ips entry of the sandbox interface).
pub fn pod_ip(result: &Value) -> Ipv4Addr {
    let ips = result["ips"].as_array().expect("ips");
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    let ip = ips
        .iter()
        .find(|ip| {
            ip["interface"]
                .as_u64()
                .is_some_and(|i| ifaces[i as usize].get("sandbox").is_some())
        })
        .expect("an ip on the sandbox interface");
    ip["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("address")
}

/// Serves one TCP connection per accept on `addr` inside `ns`, answering `reply`.
pub fn serve(ns: &NetNs, addr: Ipv4Addr, reply: &'static str) -> SocketAddr {
    serve_on(ns, addr, 0, reply)
}

/// Like [`serve`], on `port` (0: any).
pub fn serve_on(ns: &NetNs, addr: Ipv4Addr, port: u16, reply: &'static str) -> SocketAddr {
    let listener = ns.run(|| TcpListener::bind((addr, port)).expect("bind in netns"));
    let local = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let _ = std::io::Write::write_all(&mut s, reply.as_bytes());
        }
    });
    local
}

/// Connects from inside `ns` and returns what the server sent.
pub fn fetch(ns: &NetNs, to: SocketAddr) -> std::io::Result<String> {
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out)?;
        Ok(out)
    })
}
