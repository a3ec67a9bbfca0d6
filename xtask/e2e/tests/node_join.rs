//! A node's identity over time: the agent joined with a bootstrap token (every e2e
//! cluster's does) renews its client certificate before it expires — a CSR filed with
//! its own identity, approved as `selfnodeclient` — and keeps working with the new one.
//! The signer issues 2-minute certificates here (`--cluster-signing-duration`), so the
//! renewal comes within a minute or two.

use std::time::Duration;

use berth_testkit::require_root;
use serde_json::Value;

mod common;
use common::{cluster_full, ready};

#[test]
fn the_node_renews_its_client_certificate_and_keeps_working() {
    require_root!();
    let Some(c) = cluster_full(
        &["--controllers=false", "--cluster-signing-duration=2m"],
        &[],
    ) else {
        return;
    };
    let renewals = || -> Vec<Value> {
        let csrs = c.kubectl.json(&["get", "csr"]);
        csrs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["spec"]["username"] == "system:node:node-e2e")
            .filter(|r| r["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet")
            .filter(|r| r["status"]["certificate"].is_string())
            .cloned()
            .collect()
    };
    c.wait(
        "a renewed client certificate",
        Duration::from_secs(240),
        || !renewals().is_empty(),
    );
    let renewed = renewals().remove(0);
    let approved = renewed["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Approved"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(approved["reason"], "AutoApproved", "{renewed}");
    c.wait("the agent to use it", Duration::from_secs(30), || {
        std::fs::read_to_string(c.agent.log_file())
            .unwrap_or_default()
            .contains("client certificate renewed")
    });
    // With the new certificate the node still runs pods and reports them.
    c.kubectl.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: after-renewal}\nspec:\n  containers:\n  - {name: c, image: berth.local/busybox:1.35, command: [sleep, '3600']}\n",
    );
    c.wait_pod("after-renewal", "Ready", ready);
    c.kubectl.ok(&[
        "delete",
        "pod",
        "after-renewal",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_clean();
}
