//! Commands whose server side came with later issues: `auth` and the review APIs,
//! `certificate`, `top` and `autoscale` (the metrics API and the HPA), `debug`
//! (ephemeral containers).

use std::path::Path;

use berth_testkit::Kubectl;

use crate::{BUSYBOX, Coverage, contains, field};

/// Commands whose server side came with later issues.
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
            assert!(b64.status.success(), "openssl base64: {}", String::from_utf8_lossy(&b64.stderr));
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
    // The built-in metrics server has two scrapes of a node (15 s apart) soon after
    // it is Ready; by now it normally has them — poll in case it does not yet.
    cov.case("top node", || {
        let out = poll_ok(k, &["top", "node"], "node-e2e");
        let row: Vec<&str> = out
            .lines()
            .find(|l| l.starts_with("node-e2e"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        // NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%)
        assert_eq!(row.len(), 5, "{out}");
        assert!(row[1].ends_with('m') && row[3].ends_with("Mi"), "{out}");
    });
    cov.case("top pod", || {
        let out = poll_ok(k, &["top", "pod", "--containers", "-l", "app=web"], "web-");
        contains(&out, "POD");
        let all = k.ok(&["top", "pod", "-A"]);
        contains(&all, "NAMESPACE");
    });
    cov.case("autoscale", || {
        contains(
            &k.ok(&["autoscale", "deployment", "web", "--max=3", "--cpu=50%"]),
            "horizontalpodautoscaler.autoscaling/web autoscaled",
        );
        let hpa = k.ok(&["get", "hpa", "web"]);
        contains(&hpa, "Deployment/web");
        contains(&hpa, "cpu: ");
        // The later cases scale web themselves.
        k.ok(&["delete", "hpa", "web"]);
    });
    cov.case("debug", || {
        // An ephemeral container through pods/ephemeralcontainers, started by the agent
        // and reported in ephemeralContainerStatuses.
        k.ok(&[
            "debug",
            "shell",
            &format!("--image={BUSYBOX}"),
            "--image-pull-policy=Never",
            "-c",
            "debugger",
            "--",
            "sleep",
            "300",
        ]);
        let out = poll_ok(
            k,
            &[
                "get",
                "pod",
                "shell",
                "-o",
                "jsonpath={.status.ephemeralContainerStatuses[0].state.running.startedAt}",
            ],
            "T",
        );
        assert!(!out.is_empty(), "{out}");
        contains(
            &k.ok(&[
                "exec",
                "shell",
                "-c",
                "debugger",
                "--",
                "echo",
                "in-debugger",
            ]),
            "in-debugger",
        );
    });
}

/// Runs `args` until it succeeds with `want` in its output (60 s at most).
fn poll_ok(k: &Kubectl, args: &[&str], want: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = k.run(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains(want) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl {args:?} never showed {want:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
