//! The node IPAM controller inside a real berth-server (`--allocate-node-cidrs
//! --cluster-cidr=10.210.0.0/22 --node-cidr-mask-size=24`: four node CIDRs), driven
//! with the real kubectl: nodes get the blocks in order; the fifth, with none left,
//! gets upstream's `CIDRNotAvailable` event and the block a deleted node frees; a
//! hand-set podCIDR overlapping another node's is refused, one outside the cluster
//! CIDR is kept, and a set podCIDR cannot change; after a restart every node keeps
//! its block and no block is handed out twice.

use std::time::{Duration, Instant};

use berth_testkit::{BerthServer, Kubectl};
use serde_json::Value;

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn node(name: &str, pod_cidr: Option<&str>) -> String {
    let spec = pod_cidr.map_or_else(String::new, |c| format!("spec: {{podCIDR: {c}}}\n"));
    format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n{spec}")
}

/// The node's (podCIDR, podCIDRs) once it has them.
fn cidrs(k: &Kubectl, name: &str) -> Option<(String, Vec<String>)> {
    let out = k.run(&["get", "node", name, "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let one = v.pointer("/spec/podCIDR")?.as_str()?.to_owned();
    let many = v
        .pointer("/spec/podCIDRs")?
        .as_array()?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    Some((one, many))
}

fn wait_cidr(k: &Kubectl, name: &str) -> String {
    let (one, many) = wait_for(
        &format!("node {name}'s podCIDR"),
        Duration::from_secs(30),
        || cidrs(k, name),
    );
    assert_eq!(
        many,
        std::slice::from_ref(&one),
        "podCIDRs of {name} is [podCIDR]"
    );
    one
}

/// Whether node `name` has had the `CIDRNotAvailable` event.
fn cidr_not_available(k: &Kubectl, name: &str) -> bool {
    let events = k.json(&["get", "events", "-n", "default"]);
    events["items"].as_array().into_iter().flatten().any(|e| {
        e["involvedObject"]["name"] == name
            && e["involvedObject"]["kind"] == "Node"
            && e["reason"] == "CIDRNotAvailable"
            && e["message"] == format!("Node {name} status is now: CIDRNotAvailable").as_str()
    })
}

#[test]
fn nodes_get_cidrs_in_order_exhaustion_waits_for_a_free_block_and_overlaps_are_refused() {
    let home = tempfile::tempdir().expect("temp home");
    let mut server = BerthServer::start_with(
        env!("CARGO_BIN_EXE_berth-server").as_ref(),
        home.path(),
        &[
            "--allocate-node-cidrs",
            "--cluster-cidr=10.210.0.0/22",
            "--node-cidr-mask-size=24",
        ],
    );
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    for (i, name) in ["n1", "n2", "n3", "n4"].iter().enumerate() {
        k.apply(&node(name, None));
        assert_eq!(wait_cidr(&k, name), format!("10.210.{i}.0/24"), "{name}");
    }
    k.apply(&node("n5", None));
    wait_for(
        "n5's CIDRNotAvailable event",
        Duration::from_secs(30),
        || cidr_not_available(&k, "n5").then_some(()),
    );
    assert_eq!(cidrs(&k, "n5"), None, "nothing left for n5");
    k.ok(&["delete", "node", "n2"]);
    assert_eq!(
        wait_cidr(&k, "n5"),
        "10.210.1.0/24",
        "n5 gets the block n2 freed"
    );

    // Set by hand: refused when it overlaps another node's, kept when it does not.
    let out = k.run_with_stdin(&["create", "-f", "-"], &node("hand", Some("10.210.0.0/25")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("overlaps podCIDR 10.210.0.0/24 of node n1")
            && err.contains("spec.podCIDRs[0]"),
        "an overlapping podCIDR is refused: {err}"
    );
    k.apply(&node("outside", Some("192.168.50.0/24")));
    assert_eq!(wait_cidr(&k, "outside"), "192.168.50.0/24");
    let err = k.fails(&[
        "patch",
        "node",
        "n1",
        "-p",
        r#"{"spec":{"podCIDR":"10.210.9.0/24","podCIDRs":["10.210.9.0/24"]}}"#,
    ]);
    assert!(
        err.contains("node updates may not change podCIDR except from \"\" to valid"),
        "a set podCIDR is immutable: {err}"
    );
    let err = k.fails(&[
        "patch",
        "node",
        "outside",
        "-p",
        r#"{"spec":{"podCIDRs":["192.168.50.0/24","192.168.51.0/24"]}}"#,
    ]);
    assert!(
        err.contains("may specify no more than one CIDR for each IP family")
            || err.contains("may not change podCIDR"),
        "{err}"
    );

    // A restart moves nothing and hands out nothing twice: all four blocks are held.
    server.restart();
    for (name, cidr) in [
        ("n1", "10.210.0.0/24"),
        ("n5", "10.210.1.0/24"),
        ("n3", "10.210.2.0/24"),
        ("n4", "10.210.3.0/24"),
    ] {
        assert_eq!(wait_cidr(&k, name), cidr, "{name} after the restart");
    }
    k.apply(&node("n6", None));
    wait_for(
        "n6's CIDRNotAvailable event",
        Duration::from_secs(30),
        || cidr_not_available(&k, "n6").then_some(()),
    );
    k.ok(&["delete", "node", "n3"]);
    assert_eq!(wait_cidr(&k, "n6"), "10.210.2.0/24");
}
