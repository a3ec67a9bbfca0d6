//! Commands whose server side is another open issue's: each asserts the error berth
//! gives today and names the issue, to become a real case when it lands.

use std::path::Path;

use berth_testkit::Kubectl;

use crate::{BUSYBOX, Coverage, ISSUE_22, ISSUE_25, contains, fails_with, field};

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
    // CSRs (issue 21's second half): a request made with openssl, approved or denied.
    for (verb, condition, done) in [
        ("approve", "Approved", "approved"),
        ("deny", "Denied", "denied"),
    ] {
        cov.case(&format!("certificate {verb}"), || {
            let name = format!("coverage-{verb}");
            let csr = dir.join(format!("{name}.csr"));
            let out = std::process::Command::new("openssl")
                .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-nodes", "-subj", &format!("/CN={name}"), "-keyout"])
                .arg(dir.join(format!("{name}.key")))
                .arg("-out")
                .arg(&csr)
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
            let b64 = std::process::Command::new("openssl")
                .args(["base64", "-A", "-in"])
                .arg(&csr)
                .output()
                .expect("run openssl base64");
            let request = String::from_utf8_lossy(&b64.stdout).trim().to_owned();
            let manifest = dir.join(format!("{name}.yaml"));
            std::fs::write(
                &manifest,
                format!("apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n"),
            )
            .expect("write the manifest");
            k.ok(&["create", "-f", manifest.to_str().expect("utf-8 path")]);
            contains(
                &k.ok(&["certificate", verb, &name]),
                &format!("certificatesigningrequest.certificates.k8s.io/{name} {done}"),
            );
            let conditions = field(k, &["get", "csr", &name], "/status/conditions");
            assert!(
                conditions.as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == condition)),
                "{conditions}"
            );
            k.ok(&["delete", "csr", &name]);
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
