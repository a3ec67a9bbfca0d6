//! Commands whose server side is another open issue's: each asserts the error berth
//! gives today and names the issue, to become a real case when it lands.

use std::path::Path;

use berth_testkit::Kubectl;

use crate::{BUSYBOX, Coverage, ISSUE_21, ISSUE_22, ISSUE_25, contains, fails_with, field};

/// Commands whose server side is another open issue's: today's error, and the issue.
pub fn issue_cases(cov: &mut Coverage, k: &Kubectl, dir: &Path) {
    // RBAC and the review APIs (issue 21's first half): the admin kubeconfig is
    // system:masters; `--as` impersonates a user who holds only system:basic-user.
    cov.case("auth can-i", || {
        assert_eq!(k.ok(&["auth", "can-i", "create", "pods"]).trim(), "yes");
        let as_nobody = k.run(&["auth", "can-i", "create", "pods", "--as", "nobody"]);
        assert!(
            !as_nobody.status.success(),
            "can-i answers no with exit code 1"
        );
        assert_eq!(String::from_utf8_lossy(&as_nobody.stdout).trim(), "no");
        contains(
            &k.ok(&["auth", "can-i", "--list", "--as", "nobody"]),
            "selfsubjectaccessreviews.authorization.k8s.io",
        );
    });
    cov.case("auth whoami", || {
        let who = k.ok(&["auth", "whoami"]);
        contains(&who, "kubernetes-admin");
        contains(&who, "[system:masters system:authenticated]");
    });
    cov.case("auth reconcile", || {
        let file = dir.join("rbac.yaml");
        std::fs::write(
            &file,
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n\
             metadata: {name: reconciled}\n\
             rules: [{apiGroups: [\"\"], resources: [pods], verbs: [get]}]\n",
        )
        .expect("write");
        contains(
            &k.ok(&["auth", "reconcile", "-f", file.to_str().expect("utf-8")]),
            "clusterrole.rbac.authorization.k8s.io/reconciled reconciled",
        );
        assert_eq!(
            field(k, &["get", "clusterrole", "reconciled"], "/rules/0/verbs"),
            serde_json::json!(["get"])
        );
    });
    for verb in ["approve", "deny"] {
        cov.awaiting(ISSUE_21, &format!("certificate {verb}"), || {
            fails_with(
                k,
                &["certificate", verb, "csr-node-e2e"],
                "the server doesn't have a resource type \"certificatesigningrequests\"",
            );
        });
    }
    cov.awaiting(ISSUE_25, "top node", || {
        fails_with(k, &["top", "node"], "Metrics API not available");
    });
    cov.awaiting(ISSUE_25, "top pod", || {
        fails_with(k, &["top", "pod"], "Metrics API not available");
    });
    cov.awaiting(ISSUE_25, "autoscale", || {
        fails_with(
            k,
            &["autoscale", "deployment", "web", "--max=3", "--cpu=50%"],
            "the server could not find the requested resource",
        );
    });
    cov.awaiting(ISSUE_22, "debug", || {
        // Without the pods/ephemeralcontainers subresource kube-apiserver answers 404
        // with an empty `details` in the Status (berth too), and kubectl reports the
        // feature off.
        fails_with(
            k,
            &[
                "debug",
                "shell",
                &format!("--image={BUSYBOX}"),
                "--",
                "true",
            ],
            "ephemeral containers are disabled for this cluster",
        );
    });
}
