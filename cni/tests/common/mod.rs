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

    /// Runs one plugin with a hand-made stdin (for bad-input tests).
    pub fn invoke_raw(
        &self,
        verb: &str,
        pod: &Pod,
        stdin: &Value,
    ) -> Result<Option<Value>, CniError> {
        self.ns.run(|| {
            self.runner
                .invoke("berth-cni", verb, Some(&pod.attach()), stdin)
        })
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
        !self.ns.ip(&["-o", "link", "show", "bcbr0"]).is_empty()
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
}

impl Pod {
    pub fn new() -> Self {
        let ns = NetNs::new("bcpod");
        let id = format!("ctr-{}", ns.name());
        Self {
            ns,
            id,
            ifname: "eth0".into(),
        }
    }

    pub fn attach(&self) -> Attach {
        Attach {
            container_id: self.id.clone(),
            netns: self.ns.path(),
            ifname: self.ifname.clone(),
            args: String::new(),
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
    let listener = ns.run(|| TcpListener::bind((addr, 0)).expect("bind in netns"));
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
