//! ServiceAccount admission and the root CA publisher in a real berth-server (with its
//! controllers), driven by the real kubectl: pods get the `kube-api-access-*` projected
//! volume in every container unless the pod or its account opts out, a missing
//! account is refused as kube-apiserver refuses it, and every namespace holds
//! `kube-root-ca.crt` with the cluster CA, put back when deleted or changed.

use std::time::{Duration, Instant};

use berth_testkit::{BerthServer, Kubectl};
use serde_json::Value;

const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Polls `f` every 100 ms until it is true; panics naming `what` after 20 s.
fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pod(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: sa-test}}\nspec:\n{extra_spec}  initContainers: [{{name: init, image: registry.local/busybox:1}}]\n  containers:\n  - {{name: a, image: registry.local/busybox:1}}\n  - {{name: b, image: registry.local/busybox:1}}\n"
    )
}

fn mounts(c: &Value) -> Vec<(String, String)> {
    c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_owned(),
                m["mountPath"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn pods_mount_their_account_token_unless_told_not_to() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    k.ok(&["create", "namespace", "sa-test"]);

    // The root CA publisher: the cluster CA, in the new namespace.
    let ca = std::fs::read_to_string(server.ca()).expect("the CA file");
    let mut cm = Value::Null;
    poll("kube-root-ca.crt in sa-test", || {
        let out = k.run(&[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "sa-test",
            "-o",
            "json",
        ]);
        cm = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        out.status.success()
    });
    assert_eq!(cm["data"]["ca.crt"].as_str(), Some(ca.as_str()), "{cm}");
    assert_eq!(cm["data"].as_object().map(|d| d.len()), Some(1), "{cm}");
    // Changed or deleted, it comes back.
    k.ok(&[
        "patch",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "sa-test",
        "--type=merge",
        "-p",
        r#"{"data":{"ca.crt":"junk","extra":"x"}}"#,
    ]);
    poll("kube-root-ca.crt restored", || {
        let cm = k.json(&["get", "configmap", "kube-root-ca.crt", "-n", "sa-test"]);
        cm["data"]["ca.crt"].as_str() == Some(ca.as_str()) && cm["data"].get("extra").is_none()
    });
    k.ok(&["delete", "configmap", "kube-root-ca.crt", "-n", "sa-test"]);
    poll("kube-root-ca.crt recreated", || {
        k.run(&["get", "configmap", "kube-root-ca.crt", "-n", "sa-test"])
            .status
            .success()
    });

    // A pod naming no account runs as `default`, with the token in every container.
    poll("the default ServiceAccount", || {
        k.run(&["get", "serviceaccount", "default", "-n", "sa-test"])
            .status
            .success()
    });
    k.apply(&pod("plain", ""));
    let p = k.json(&["get", "pod", "plain", "-n", "sa-test"]);
    assert_eq!(p["spec"]["serviceAccountName"], "default", "{p}");
    assert_eq!(p["spec"]["serviceAccount"], "default", "{p}");
    let volumes = p["spec"]["volumes"].as_array().expect("volumes");
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    let v = &volumes[0];
    let name = v["name"].as_str().expect("volume name");
    assert!(
        name.starts_with("kube-api-access-") && name.len() == "kube-api-access-".len() + 5,
        "{name}"
    );
    let expected: Value = serde_json::json!({
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ],
    });
    assert_eq!(v["projected"], expected, "{v}");
    // What admission set (the account, its token volume, the priority, the default
    // tolerations) is no manager's: the applier owns what it sent and the API's defaults.
    let managed_fields = || {
        k.json(&[
            "get",
            "pod",
            "plain",
            "-n",
            "sa-test",
            "--show-managed-fields",
        ])["metadata"]["managedFields"]
            .clone()
    };
    let owned = managed_fields().to_string();
    assert!(
        owned.contains("f:containers") && owned.contains("f:dnsPolicy"),
        "{owned}"
    );
    for admitted in [
        "f:serviceAccountName",
        "\"f:serviceAccount\"",
        "f:volumes",
        "f:priority",
        "f:tolerations",
    ] {
        assert!(!owned.contains(admitted), "{admitted} in {owned}");
    }
    // The scheduler's status write (no node fits) is named after its User-Agent.
    poll("a status write managed by kube-scheduler", || {
        managed_fields()
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["manager"] == "kube-scheduler" && e["subresource"] == "status")
    });
    for c in p["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .chain(p["spec"]["containers"].as_array())
        .flatten()
    {
        assert_eq!(mounts(c), vec![(name.to_owned(), MOUNT.to_owned())], "{c}");
        assert_eq!(c["volumeMounts"][0]["readOnly"], true, "{c}");
    }

    // The pod says no.
    k.apply(&pod("optout", "  automountServiceAccountToken: false\n"));
    let p = k.json(&["get", "pod", "optout", "-n", "sa-test"]);
    assert!(
        p["spec"]
            .get("volumes")
            .is_none_or(|v| v.as_array().is_some_and(|l| l.is_empty())),
        "{p}"
    );
    assert!(mounts(&p["spec"]["containers"][0]).is_empty(), "{p}");

    // The account says no; the pod may still say yes.
    k.apply("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: quiet, namespace: sa-test}\nautomountServiceAccountToken: false\n");
    k.apply(&pod("quiet", "  serviceAccountName: quiet\n"));
    let p = k.json(&["get", "pod", "quiet", "-n", "sa-test"]);
    assert!(mounts(&p["spec"]["containers"][1]).is_empty(), "{p}");
    k.apply(&pod(
        "loud",
        "  serviceAccountName: quiet\n  automountServiceAccountToken: true\n",
    ));
    let p = k.json(&["get", "pod", "loud", "-n", "sa-test"]);
    assert_eq!(mounts(&p["spec"]["containers"][1]).len(), 1, "{p}");

    // A missing account: 403 in kube-apiserver's words.
    let manifest = pod("ghost", "  serviceAccountName: ghost\n");
    let path = home.path().join("ghost.yaml");
    std::fs::write(&path, manifest).expect("write manifest");
    let err = k.fails(&["create", "-f", path.to_str().expect("utf-8")]);
    assert!(
        err.contains(r#"pods "ghost" is forbidden: error looking up service account sa-test/ghost: serviceaccount "ghost" not found"#),
        "{err}"
    );

    k.ok(&["delete", "namespace", "sa-test", "--wait=false"]);
}
