//! berth-cni with the Debian reference plugins, invoked the way libcni invokes a
//! chain: berth-cni first, then `portmap`, `tuning` and `bandwidth`; and berth-cni
//! delegating its IPAM to the reference `host-local`.

mod common;

use std::{net::SocketAddr, path::Path};

use berth_testkit::{require_root, skip};
use common::{Node, Pod, REFERENCE_DIR, fetch, pod_ip, serve, serve_on};
use serde_json::json;

fn reference_plugins_present(names: &[&str]) -> bool {
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !Path::new(REFERENCE_DIR).join(n).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip(&format!(
        "reference plugins {missing:?} missing from {REFERENCE_DIR} (cargo xtask setup)"
    ));
    false
}

/// The output of `program args` run inside `ns`; panics if it fails, so a check on
/// its output ("no portmap rule left") cannot pass on an empty failed run.
fn in_ns(ns: &berth_testkit::NetNs, program: &str, args: &[&str]) -> String {
    let out = ns
        .command(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", ns.name()));
    assert!(
        out.status.success(),
        "`{program} {}` in {} failed ({}): {}",
        args.join(" "),
        ns.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn chained_with_portmap_tuning_and_bandwidth() {
    require_root!();
    if !reference_plugins_present(&["portmap", "tuning", "bandwidth"]) {
        return;
    }
    let node = Node::new();
    let list = node.list(
        "1.0.0",
        vec![
            node.berth("10.66.0.0/24"),
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "1234"}}),
            json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
        ],
    );
    let mut pod = Pod::new();
    pod.capability_args = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000, "egressBurst": 1_000_000},
    })
    .as_object()
    .cloned()
    .unwrap_or_default();

    let result = node.add(&list, &pod).expect("ADD through the chain");
    assert_eq!(result["cniVersion"], "1.0.0");
    let ip = pod_ip(&result);
    assert_eq!(
        result["interfaces"][2]["name"], "eth0",
        "berth-cni's result survives the chain: {result}"
    );

    // tuning wrote the sysctl inside the pod's namespace.
    assert_eq!(
        in_ns(&pod.ns, "cat", &["/proc/sys/net/core/somaxconn"]).trim(),
        "1234"
    );
    // bandwidth put a token bucket on the host side of the veth.
    let host_veth = result["interfaces"][1]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    let qdisc = in_ns(&node.ns, "tc", &["qdisc", "show", "dev", &host_veth]);
    assert!(
        qdisc.contains("tbf"),
        "bandwidth shaped {host_veth}: {qdisc}"
    );
    // portmap: the node's port 18080 reaches the pod's 8080.
    serve_on(&pod.ns, ip, 8080, "through portmap");
    let hostport: SocketAddr = "10.66.0.1:18080".parse().expect("addr");
    assert_eq!(
        fetch(&node.ns, hostport).expect("node -> hostPort"),
        "through portmap"
    );

    // CHECK through the chain minus portmap: the Debian portmap (plugins 1.1.1) fails
    // its own CHECK on a node without IPv6 NAT chains ("could not check ipv6 dnat").
    let mut without_portmap = list.clone();
    without_portmap.plugins.retain(|p| p["type"] != "portmap");
    node.check(&without_portmap, &pod, &result)
        .expect("CHECK through berth-cni, tuning and bandwidth");
    node.del(&list, &pod, Some(&result))
        .expect("DEL through the chain");
    assert!(node.veths().is_empty(), "veth gone");
    assert!(node.allocations().is_empty(), "address released");
    let nat = in_ns(&node.ns, "iptables-save", &["-t", "nat"]);
    assert!(!nat.contains(&pod.id), "portmap rules removed: {nat}");
    let links = node.ns.ip(&["-o", "link", "show", "type", "ifb"]);
    assert!(
        links.trim().is_empty(),
        "bandwidth's ifb device removed: {links}"
    );
}

#[test]
fn reference_host_local_as_the_ipam() {
    require_root!();
    if !reference_plugins_present(&["host-local"]) {
        return;
    }
    let node = Node::new();
    let data = node.data.join("host-local");
    let mut conf = node.berth("10.67.0.0/24");
    conf["ipam"] = json!({"type": "host-local", "subnet": "10.67.0.0/24", "rangeStart": "10.67.0.100", "dataDir": data});
    let list = node.list("1.0.0", vec![conf]);
    let (a, b) = (Pod::new(), Pod::new());
    let ra = node.add(&list, &a).expect("ADD a via host-local");
    let rb = node.add(&list, &b).expect("ADD b via host-local");
    assert_eq!(
        pod_ip(&ra).to_string(),
        "10.67.0.100",
        "host-local's rangeStart: {ra}"
    );
    assert_eq!(pod_ip(&rb).to_string(), "10.67.0.101");
    let at_a = serve(&a.ns, pod_ip(&ra), "a");
    assert_eq!(fetch(&b.ns, at_a).expect("b -> a"), "a");
    let held = data.join("testnet/10.67.0.100");
    assert!(
        held.exists(),
        "host-local recorded the lease at {}",
        held.display()
    );
    node.del(&list, &a, Some(&ra)).expect("DEL a");
    node.del(&list, &b, Some(&rb)).expect("DEL b");
    assert!(!held.exists(), "host-local released the lease");
    assert!(node.veths().is_empty());
}
