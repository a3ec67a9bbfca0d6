//! Bad input gets the spec's error object on stdout, a non-zero exit, and leaves
//! nothing half-made: no veth, no leaked address, no bridge change.

mod common;

use berth_cni::spec::code;
use berth_testkit::require_root;
use common::{Node, Pod};
use serde_json::{Value, json};

/// What the node looks like, to compare before and after a failed call.
#[derive(Debug, PartialEq)]
struct Snapshot {
    veths: Vec<String>,
    bridge: bool,
    allocations: Vec<(String, String)>,
    /// `None`: no bridge to hold any.
    bridge_addrs: Option<String>,
}

fn snapshot(node: &Node) -> Snapshot {
    Snapshot {
        veths: node.veths(),
        bridge: node.has_bridge(),
        allocations: node.allocations(),
        bridge_addrs: node
            .ns
            .ip_on_device(&["-o", "addr", "show", "dev", "bcbr0"]),
    }
}

/// Runs berth-cni and asserts it failed with `code`, printing a well-formed error.
fn expect_error(node: &Node, env: &[(&str, String)], stdin: &[u8], code: u32) -> Value {
    let (ok, printed) = node.run_raw(env, stdin);
    assert!(!ok, "must exit non-zero; printed {printed}");
    assert_eq!(printed["code"], code, "error code; printed {printed}");
    assert!(
        printed["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "a message: {printed}"
    );
    assert!(
        printed["cniVersion"].is_string(),
        "cniVersion in the error: {printed}"
    );
    printed
}

#[test]
fn malformed_config_unknown_version_and_bad_env() {
    require_root!();
    let node = Node::new();
    let pod = Pod::new();
    let env = node.add_env(&pod);
    let before = snapshot(&node);

    expect_error(
        &node,
        &env,
        b"{\"cniVersion\": \"1.1.0\", \"name\": ",
        code::DECODING_FAILURE,
    );
    let conf = node.raw_conf("0.2.0", "10.70.0.0/24");
    expect_error(
        &node,
        &env,
        conf.to_string().as_bytes(),
        code::INCOMPATIBLE_VERSION,
    );
    let mut bad_subnet = node.raw_conf("1.1.0", "10.70.0.0/24");
    bad_subnet["ipam"]["subnet"] = json!("10.70.0.0/33");
    let e = expect_error(
        &node,
        &env,
        bad_subnet.to_string().as_bytes(),
        code::INVALID_CONFIG,
    );
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("10.70.0.0/33"),
        "names the subnet: {e}"
    );

    let good = node.raw_conf("1.1.0", "10.70.0.0/24").to_string();
    for missing in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
    ] {
        let env: Vec<_> = env.iter().filter(|(k, _)| *k != missing).cloned().collect();
        let e = expect_error(&node, &env, good.as_bytes(), code::INVALID_ENV);
        assert!(
            e["msg"].as_str().unwrap_or_default().contains(missing),
            "names {missing}: {e}"
        );
    }
    assert_eq!(snapshot(&node), before, "nothing changed on the node");
    assert!(pod.links().is_empty(), "nothing in the pod");
}

#[test]
fn a_netns_that_does_not_exist() {
    require_root!();
    let node = Node::new();
    let pod = Pod::new();
    let mut env = node.add_env(&pod);
    env.retain(|(k, _)| *k != "CNI_NETNS");
    env.push(("CNI_NETNS", "/run/netns/berth-no-such-ns".into()));
    let conf = node.raw_conf("1.1.0", "10.71.0.0/24").to_string();
    let e = expect_error(&node, &env, conf.as_bytes(), code::INVALID_ENV);
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("berth-no-such-ns"),
        "names the path: {e}"
    );
    assert!(!node.has_bridge(), "no bridge was created");
    assert!(node.allocations().is_empty(), "no address leaked");
    assert!(node.veths().is_empty());
}

#[test]
fn an_exhausted_range_fails_the_next_add_cleanly() {
    require_root!();
    let node = Node::new();
    // A /30 has one address to give after the gateway.
    let list = node.list("1.1.0", vec![node.berth("10.72.0.0/30")]);
    let first = Pod::new();
    let result = node.add(&list, &first).expect("the only address");
    let before = snapshot(&node);
    let second = Pod::new();
    let e = expect_error(
        &node,
        &node.add_env(&second),
        node.raw_conf("1.1.0", "10.72.0.0/30")
            .to_string()
            .as_bytes(),
        code::RANGE_EXHAUSTED,
    );
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("no free address"),
        "{e}"
    );
    assert_eq!(snapshot(&node), before, "the failed ADD changed nothing");
    assert!(second.links().is_empty(), "no interface in the second pod");
    node.del(&list, &first, Some(&result)).expect("DEL");
}

#[test]
fn an_interface_name_already_taken_in_the_pod() {
    require_root!();
    let node = Node::new();
    let list = node.list("1.1.0", vec![node.berth("10.73.0.0/24")]);
    let other = Pod::new();
    let r = node.add(&list, &other).expect("bridge exists with one pod");
    let pod = Pod::new();
    pod.ns.ip_ok(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    let before = snapshot(&node);
    let e = expect_error(
        &node,
        &node.add_env(&pod),
        node.raw_conf("1.1.0", "10.73.0.0/24")
            .to_string()
            .as_bytes(),
        code::INTERFACE_EXISTS,
    );
    assert!(
        e["msg"].as_str().unwrap_or_default().contains("eth0"),
        "{e}"
    );
    assert_eq!(snapshot(&node), before, "nothing changed on the node");
    assert_eq!(
        pod.links(),
        ["eth0peer", "eth0"],
        "the pod's own eth0 is untouched"
    );
    node.del(&list, &other, Some(&r)).expect("DEL");
}

#[test]
fn a_failure_after_the_lease_rolls_everything_back() {
    require_root!();
    let node = Node::new();
    // "bcbr0" exists but is not a bridge: enslaving the veth to it fails after IPAM
    // has handed out an address.
    node.ns.ip_ok(&[
        "link",
        "add",
        "bcbr0",
        "type",
        "veth",
        "peer",
        "name",
        "bcbr0peer",
    ]);
    let pod = Pod::new();
    let before = snapshot(&node);
    let (ok, printed) = node.run_raw(
        &node.add_env(&pod),
        node.raw_conf("1.1.0", "10.74.0.0/24")
            .to_string()
            .as_bytes(),
    );
    assert!(!ok, "ADD must fail: {printed}");
    assert_eq!(printed["code"], code::NETLINK, "{printed}");
    let after = snapshot(&node);
    assert_eq!(
        after.veths, before.veths,
        "the pod's veth removed, the fake bridge kept"
    );
    assert!(
        after.allocations.is_empty(),
        "lease released: {:?}",
        after.allocations
    );
    assert!(pod.links().is_empty(), "nothing left in the pod");
}

#[test]
fn a_delegated_ipam_plugin_that_is_not_on_cni_path() {
    require_root!();
    let node = Node::new();
    let pod = Pod::new();
    let mut conf = node.raw_conf("1.1.0", "10.75.0.0/24");
    conf["ipam"] = json!({"type": "no-such-ipam", "subnet": "10.75.0.0/24"});
    let e = expect_error(
        &node,
        &node.add_env(&pod),
        conf.to_string().as_bytes(),
        code::IPAM_DELEGATE,
    );
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("no-such-ipam"),
        "{e}"
    );
    assert!(
        node.veths().is_empty() && !node.has_bridge(),
        "nothing made"
    );
}
