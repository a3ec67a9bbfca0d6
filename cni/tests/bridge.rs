//! berth-cni end to end (root): pods on one bridge in a test "node" namespace reach
//! each other and the node over TCP; DEL leaves nothing; 50 parallel ADDs never share
//! an address; CHECK notices damage; GC and STATUS; old result formats.

mod common;

use std::{collections::HashSet, net::Ipv4Addr};

use berth_cni::spec::code;
use berth_testkit::require_root;
use common::{Node, Pod, fetch, pod_ip, serve};
use serde_json::json;

#[test]
fn two_pods_reach_each_other_and_the_node_and_del_leaves_nothing() {
    require_root!();
    let node = Node::new();
    let list = node.list("1.1.0", vec![node.berth("10.61.0.0/24")]);
    let (a, b) = (Pod::new(), Pod::new());
    let ra = node.add(&list, &a).expect("ADD a");
    let rb = node.add(&list, &b).expect("ADD b");
    let (ip_a, ip_b) = (pod_ip(&ra), pod_ip(&rb));
    assert_eq!(
        ip_a,
        Ipv4Addr::new(10, 61, 0, 2),
        "first address after the gateway: {ra}"
    );
    assert_ne!(ip_a, ip_b);
    assert_eq!(
        ra["interfaces"][2]["sandbox"],
        a.ns.path().display().to_string()
    );
    assert_eq!(ra["ips"][0]["interface"], 2);
    assert_eq!(
        ra["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": "10.61.0.1"})
    );

    let at_a = serve(&a.ns, ip_a, "pod a");
    assert_eq!(fetch(&b.ns, at_a).expect("b -> a"), "pod a");
    let at_node = serve(&node.ns, Ipv4Addr::new(10, 61, 0, 1), "node");
    assert_eq!(fetch(&a.ns, at_node).expect("a -> node"), "node");
    // Hairpin: a pod's own port reflects its traffic (needed for pod -> own Service).
    let port = node.veths().into_iter().next().expect("a veth");
    let details = node.ns.ip(&["-d", "link", "show", &port]);
    assert!(
        details.contains("hairpin on"),
        "hairpin mode on {port}: {details}"
    );

    node.del(&list, &a, Some(&ra)).expect("DEL a");
    node.del(&list, &b, Some(&rb)).expect("DEL b");
    assert!(node.veths().is_empty(), "no veth left: {:?}", node.veths());
    assert!(
        a.links().is_empty() && b.links().is_empty(),
        "pod interfaces gone"
    );
    assert!(
        node.allocations().is_empty(),
        "addresses released: {:?}",
        node.allocations()
    );
    // DEL is idempotent: again, and for a container never seen.
    node.del(&list, &a, Some(&ra)).expect("second DEL");
    node.del(&list, &Pod::new(), None)
        .expect("DEL of an unknown container");
}

#[test]
fn fifty_parallel_adds_get_fifty_distinct_addresses() {
    require_root!();
    let node = Node::new();
    let list = node.list("1.1.0", vec![node.berth("10.62.0.0/24")]);
    let pods: Vec<Pod> = (0..50).map(|_| Pod::new()).collect();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(|| node.add(&list, p)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let ips: HashSet<Ipv4Addr> = results
        .iter()
        .map(|r| pod_ip(r.as_ref().expect("ADD")))
        .collect();
    assert_eq!(ips.len(), 50, "every pod got its own address");
    assert_eq!(node.allocations().len(), 50);
    std::thread::scope(|s| {
        for (p, r) in pods.iter().zip(&results) {
            let list = &list;
            let node = &node;
            s.spawn(move || node.del(list, p, r.as_ref().ok()).expect("DEL"));
        }
    });
    assert!(node.allocations().is_empty(), "all released");
    assert!(node.veths().is_empty());
}

#[test]
fn check_reports_a_deleted_veth_and_a_removed_address() {
    require_root!();
    let node = Node::new();
    let list = node.list("1.1.0", vec![node.berth("10.63.0.0/24")]);
    let pod = Pod::new();
    let result = node.add(&list, &pod).expect("ADD");
    node.check(&list, &pod, &result)
        .expect("CHECK right after ADD passes");

    let ip = pod_ip(&result);
    pod.ns
        .ip(&["addr", "del", &format!("{ip}/24"), "dev", "eth0"]);
    let err = node
        .check(&list, &pod, &result)
        .expect_err("address removed");
    assert_eq!(err.code, code::CHECK_FAILED);
    assert!(
        err.msg.contains(&ip.to_string()),
        "names the address: {}",
        err.msg
    );

    pod.ns.ip(&["link", "del", "eth0"]);
    let err = node.check(&list, &pod, &result).expect_err("veth deleted");
    assert_eq!(err.code, code::CHECK_FAILED);
    assert!(err.msg.contains("eth0"), "names the interface: {}", err.msg);
    node.del(&list, &pod, Some(&result))
        .expect("DEL after damage");
    assert!(node.allocations().is_empty());
}

#[test]
fn gc_releases_what_is_not_valid_and_status_tracks_exhaustion() {
    require_root!();
    let node = Node::new();
    // A /29 has five usable addresses after the gateway.
    let list = node.list("1.1.0", vec![node.berth("10.64.0.0/29")]);
    let pods: Vec<Pod> = (0..5).map(|_| Pod::new()).collect();
    let results: Vec<_> = pods
        .iter()
        .map(|p| node.add(&list, p).expect("ADD"))
        .collect();
    let err = node
        .ns
        .run(|| node.runner.status(&list))
        .expect_err("range full");
    assert_eq!(err.code, code::NOT_AVAILABLE);

    let keep = berth_cni::spec::Attachment {
        container_id: pods[0].id.clone(),
        ifname: "eth0".into(),
    };
    node.ns.run(|| node.runner.gc(&list, &[keep])).expect("GC");
    let left = node.allocations();
    assert_eq!(
        left.len(),
        1,
        "only the valid attachment keeps its address: {left:?}"
    );
    assert_eq!(left[0].1, pods[0].id);
    node.ns
        .run(|| node.runner.status(&list))
        .expect("ready again");
    for (p, r) in pods.iter().zip(&results) {
        node.del(&list, p, Some(r)).expect("DEL");
    }
}

#[test]
fn older_spec_versions_get_their_own_result_format() {
    require_root!();
    let node = Node::new();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let list = node.list(version, vec![node.berth("10.65.0.0/24")]);
        let pod = Pod::new();
        let r = node.add(&list, &pod).expect("ADD");
        assert_eq!(r["cniVersion"], version);
        let has_version = r["ips"][0].get("version").is_some();
        assert_eq!(
            has_version,
            version < "1.0.0",
            "ips[].version in {version}: {r}"
        );
        node.del(&list, &pod, Some(&r)).expect("DEL");
    }
}

#[test]
fn ip_masq_keeps_one_rule_per_subnet_while_it_has_pods() {
    require_root!();
    let node = Node::new();
    let mut conf = node.berth("10.68.0.0/24");
    conf["ipMasq"] = json!(true);
    let list = node.list("1.1.0", vec![conf]);
    let rules = || {
        let out = node
            .ns
            .command("iptables")
            .args(["-t", "nat", "-S", "POSTROUTING"])
            .output()
            .expect("iptables");
        assert!(
            out.status.success(),
            "iptables -S failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("MASQUERADE"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (a, b) = (Pod::new(), Pod::new());
    let ra = node.add(&list, &a).expect("ADD a");
    let rb = node.add(&list, &b).expect("ADD b");
    let after_add = rules();
    assert_eq!(after_add.len(), 1, "one rule for the subnet: {after_add:?}");
    let rule = &after_add[0];
    assert!(
        rule.contains("-s 10.68.0.0/24")
            && rule.contains("! -d 10.68.0.0/24")
            && rule.contains("berth-cni:testnet"),
        "masquerade rule: {rule}"
    );
    node.del(&list, &a, Some(&ra)).expect("DEL a");
    assert_eq!(rules(), after_add, "b still has pods in the subnet");
    node.del(&list, &b, Some(&rb)).expect("DEL b");
    assert!(
        rules().is_empty(),
        "rule removed with the last pod: {:?}",
        rules()
    );
    // Back again with the next pod, and gone with it.
    let c = Pod::new();
    let rc = node.add(&list, &c).expect("ADD c");
    assert_eq!(rules().len(), 1, "{:?}", rules());
    node.del(&list, &c, Some(&rc)).expect("DEL c");
    assert!(rules().is_empty(), "{:?}", rules());
}

#[test]
fn an_add_that_finds_a_leftover_host_veth_replaces_it() {
    require_root!();
    let node = Node::new();
    let list = node.list("1.1.0", vec![node.berth("10.69.0.0/24")]);
    let first = Pod::new();
    let r1 = node.add(&list, &first).expect("first ADD");
    // The same container ID and ifname again, in a new netns, without a DEL between
    // (a runtime that lost track of the first attempt): the host-side name is taken.
    let mut second = Pod::new();
    second.id.clone_from(&first.id);
    let r2 = node
        .add(&list, &second)
        .expect("second ADD replaces the leftover");
    assert_eq!(pod_ip(&r1), pod_ip(&r2), "same owner keeps its address");
    assert_eq!(node.veths().len(), 1, "one host veth: {:?}", node.veths());
    assert!(
        first.links().is_empty(),
        "the leftover pair is gone with its host side"
    );
    assert_eq!(second.links(), ["eth0"]);
    node.del(&list, &second, Some(&r2)).expect("DEL");
    assert!(node.veths().is_empty());
}
