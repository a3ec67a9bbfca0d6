//! Node commands: `taint`, `cordon`, `uncordon`, and `drain` (last: it evicts the pods).

use serde_json::Value;

use crate::common::Cluster;
use crate::{Coverage, contains, field};

/// Node commands; `drain` last, as it evicts the pods.
pub fn node_cases(cov: &mut Coverage, c: &Cluster) {
    let k = &c.kubectl;
    let unschedulable =
        || field(k, &["get", "node", "node-e2e"], "/spec/unschedulable") == Value::Bool(true);
    cov.case("taint", || {
        contains(
            &k.ok(&["taint", "node", "node-e2e", "dedicated=coverage:NoSchedule"]),
            "node/node-e2e tainted",
        );
        let taints = field(k, &["get", "node", "node-e2e"], "/spec/taints");
        assert!(
            taints
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t["key"] == "dedicated")),
            "{taints}"
        );
        contains(
            &k.ok(&["taint", "node", "node-e2e", "dedicated-"]),
            "node/node-e2e untainted",
        );
    });
    cov.case("cordon", || {
        contains(&k.ok(&["cordon", "node-e2e"]), "node/node-e2e cordoned");
        assert!(unschedulable());
    });
    cov.case("uncordon", || {
        contains(&k.ok(&["uncordon", "node-e2e"]), "node/node-e2e uncordoned");
        assert!(!unschedulable());
    });
    cov.case("drain", || {
        // The PDB (minAvailable 1) would rightly block evicting web's last pod while the
        // node is cordoned: drain honours it, as upstream, until it is removed.
        k.ok(&["delete", "pdb", "web"]);
        let out = k.ok(&[
            "drain",
            "node-e2e",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--force",
            "--grace-period=1",
            "--timeout=90s",
        ]);
        contains(&out, "node/node-e2e drained");
        assert!(unschedulable());
        let left = k.ok(&[
            "get",
            "pods",
            "-A",
            "--field-selector=spec.nodeName=node-e2e,status.phase=Running",
            "-o",
            "name",
        ]);
        assert!(
            left.lines().all(|p| p.starts_with("pod/agent-")),
            "only DaemonSet pods stay: {left}"
        );
        k.ok(&["uncordon", "node-e2e"]);
    });
}
