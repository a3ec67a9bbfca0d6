//! In-cluster clients: the Python `kubernetes` client's `load_incluster_config()` run
//! inside a berth pod (the host's Python and the tools venv mounted read-only through
//! hostPath; busybox has none) finds the API through `KUBERNETES_SERVICE_HOST/PORT`,
//! verifies it with the `kube-root-ca.crt` CA and authenticates with the projected
//! ServiceAccount token the admission plugin mounted — and RBAC applies to it: a Role
//! allowing ConfigMap reads lets it list ConfigMaps, Secrets stay 403.
//!
//! The pod uses the host network: the test's berth-server listens on 127.0.0.1 (the
//! `kubernetes` Service's endpoint), which a pod's own network namespace cannot reach;
//! the ClusterIP is translated by the socket-LB all the same.

use std::time::Duration;

use berth_testkit::require_root;
use serde_json::Value;

mod common;
use common::cluster_with;

const SCRIPT: &str = r#"
import os
from kubernetes import client, config
config.load_incluster_config()
ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
v1 = client.CoreV1Api()
names = sorted(c.metadata.name for c in v1.list_namespaced_config_map(ns).items)
print("HOST", os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
print("CONFIGMAPS", ",".join(names))
try:
    v1.list_namespaced_secret(ns)
    print("SECRETS allowed")
except client.exceptions.ApiException as e:
    print("SECRETS", e.status, e.reason)
"#;

#[test]
fn python_in_cluster_config_from_a_pod_obeys_its_role() {
    require_root!();
    let _object = berth_testkit::require_ebpf_object!();
    let venv = berth_testkit::tools::venv();
    let site = venv.join("lib/python3.11/site-packages");
    if !site.join("kubernetes").exists() || !std::path::Path::new("/usr/bin/python3.11").exists() {
        berth_testkit::skip("the host's python3.11 and the tools venv's kubernetes package");
        return;
    }
    let Some(c) = cluster_with(&[]) else { return };
    let k = &c.kubectl;
    k.ok(&["create", "serviceaccount", "reader"]);
    k.ok(&[
        "create",
        "role",
        "cm-reader",
        "--verb=get,list",
        "--resource=configmaps",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "cm-reader",
        "--role=cm-reader",
        "--serviceaccount=default:reader",
    ]);
    k.ok(&["create", "configmap", "visible", "--from-literal=a=b"]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "hidden",
        "--from-literal=a=b",
    ]);
    c.wait(
        "kube-root-ca.crt in default",
        Duration::from_secs(30),
        || {
            k.run(&["get", "configmap", "kube-root-ca.crt"])
                .status
                .success()
        },
    );
    let script = SCRIPT.replace('\n', "\n      ");
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: incluster}}
spec:
  serviceAccountName: reader
  hostNetwork: true
  restartPolicy: Never
  volumes:
  - {{name: usr, hostPath: {{path: /usr, type: Directory}}}}
  - {{name: venv, hostPath: {{path: "{venv}", type: Directory}}}}
  containers:
  - name: py
    image: berth.local/busybox:1.35
    env: [{{name: PYTHONPATH, value: "/venv/lib/python3.11/site-packages"}}]
    volumeMounts:
    - {{name: usr, mountPath: /host/usr, readOnly: true}}
    - {{name: venv, mountPath: /venv, readOnly: true}}
    command:
    - /host/usr/lib64/ld-linux-x86-64.so.2
    - --library-path
    - /host/usr/lib/x86_64-linux-gnu
    - /host/usr/bin/python3.11
    - -c
    - |
      {script}
"#,
        venv = venv.display(),
    ));
    let pod = c.wait_pod("incluster", "to finish", |p| {
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    });
    let logs = k.run(&["logs", "incluster"]);
    let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
    assert_eq!(pod["status"]["phase"], "Succeeded", "{pod}\nlogs:\n{logs}");
    // The admission plugin mounted the token; the agent set the service variables.
    let mounts: Vec<&Value> = pod["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
        .collect();
    assert_eq!(mounts.len(), 1, "{pod}");
    let svc = k.json(&["get", "service", "kubernetes"]);
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .expect("the kubernetes ClusterIP");
    assert!(logs.contains(&format!("HOST {ip} 443")), "{logs}");
    assert!(
        logs.contains("CONFIGMAPS kube-root-ca.crt,visible"),
        "the role lets it list ConfigMaps: {logs}"
    );
    assert!(
        logs.contains("SECRETS 403 Forbidden"),
        "Secrets are refused: {logs}"
    );
    k.ok(&["delete", "pod", "incluster", "--wait=true", "--timeout=60s"]);
    k.ok(&["delete", "rolebinding,role", "cm-reader"]);
    k.ok(&["delete", "serviceaccount", "reader"]);
    k.ok(&["delete", "configmap", "visible"]);
    k.ok(&["delete", "secret", "hidden"]);
    c.wait_clean();
}
