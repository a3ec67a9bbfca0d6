//! `berth-agent --config`: a KubeletConfiguration file drives the agent (maxPods
//! reaches the Node's capacity, seccompDefault confines a pod that names no profile),
//! a field berth-agent does not support is logged and ignored, and a file with a value
//! of the wrong type stops the agent with the field named.

use std::process::Command;

use berth_testkit::{require_root, workspace_bin};
use serde_json::Value;

mod common;
use common::{cluster_full, ready};

#[test]
fn a_kubelet_configuration_file_drives_the_agent() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("kubelet.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 7\nseccompDefault: true\ncontainerLogMaxSize: 10Mi\n",
    )
    .expect("write the configuration");
    let flag = format!("--config={}", config.display());
    let Some(c) = cluster_full(&["--controllers=false"], &[&flag]) else {
        return;
    };
    let node: Value = c.kubectl.json(&["get", "node", "node-e2e"]);
    assert_eq!(
        node["status"]["capacity"]["pods"], "7",
        "{:#}",
        node["status"]
    );
    assert_eq!(node["status"]["allocatable"]["pods"], "7");
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: configured}
spec:
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sleep, "300"]}
"#,
    );
    c.wait_pod("configured", "Ready", ready);
    let status = c.kubectl.ok(&[
        "exec",
        "configured",
        "--",
        "grep",
        "Seccomp:",
        "/proc/self/status",
    ]);
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let log = std::fs::read_to_string(c.agent.log_file()).unwrap_or_default();
    assert!(
        log.contains(
            "KubeletConfiguration field \"containerLogMaxSize\" is not supported by berth-agent; ignored"
        ),
        "{log}"
    );
    c.kubectl.ok(&[
        "delete",
        "pod",
        "configured",
        "--grace-period=1",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_clean();

    // A value of the wrong type: the agent refuses to start, naming the field.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: many\n",
    )
    .expect("write the bad configuration");
    let out = Command::new(workspace_bin("berth-agent"))
        .arg("--config")
        .arg(&bad)
        .args(["--kubeconfig", "/nonexistent"])
        .output()
        .expect("run berth-agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("maxPods: want a non-negative integer, got \"many\""),
        "{err}"
    );
}
