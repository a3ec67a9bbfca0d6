//! `cargo xtask up` and `cargo xtask down` on this host, run as a user runs them but
//! with every place and name of the test's own — data and run dirs in a temp dir, a
//! bridge, pod range, cgroup and bpf pin dir no other test uses, the apiserver and the
//! kubelet API on free loopback ports — and the debug binaries `cargo xtask test`
//! built (`--bin-dir`), so nothing is built or installed and tests running beside it
//! are not disturbed. `up` until its node is Ready, a pod to Running with the real
//! kubectl, Ctrl-C (SIGINT) leaves no pod on the host, `down` leaves nothing at all.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use berth_testkit::{Kubectl, require_root, skip, workspace_bin};
use common::up::{UpDown, wait_for};
use serde_json::Value;

#[test]
fn up_runs_a_pod_ctrl_c_removes_pods_and_down_removes_everything() {
    require_root!();
    // Built by `cargo xtask test` itself (the `cargo xtask` alias runs it).
    let xtask = workspace_bin("xtask");
    if !xtask.exists() {
        skip(&format!(
            "{} is not built (run the tests through `cargo xtask test`)",
            xtask.display()
        ));
        return;
    }
    let mut t = UpDown::new(xtask, &[]);
    let home = t.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("kubectl's HOME");
    t.start_up();

    let ready = t.wait_line("is Ready", Duration::from_secs(240));
    let node = ready
        .trim_start_matches("==> node ")
        .trim_end_matches(" is Ready")
        .to_owned();
    t.wait_line("berth is up", Duration::from_secs(30));
    let export = t.wait_line("export KUBECONFIG=", Duration::from_secs(10));
    let kubeconfig = PathBuf::from(export.trim().trim_start_matches("export KUBECONFIG="));
    assert_eq!(
        kubeconfig,
        t.data.join("server/admin.kubeconfig"),
        "up prints the admin kubeconfig under --data-dir"
    );
    let Some(kubectl) = Kubectl::find(&kubeconfig, &home) else {
        return;
    };

    let nodes = kubectl.json(&["get", "nodes"]);
    let items = nodes["items"].as_array().expect("a node list");
    assert_eq!(items.len(), 1, "one node: {nodes}");
    assert_eq!(items[0]["metadata"]["name"], node.as_str());
    let ready_status = items[0]["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].clone());
    assert_eq!(ready_status, Some(Value::from("True")), "{nodes}");

    kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    imagePullPolicy: Never
    command: [sh, -c, "exec sleep 3600"]
"#,
    );
    wait_for(
        "pod sleeper to be Running",
        Duration::from_secs(90),
        || t.diagnostics(),
        || {
            kubectl
                .run(&["get", "pod", "sleeper", "-o", "jsonpath={.status.phase}"])
                .stdout
                == b"Running"
        },
    );
    // The pod is on the host where the checks below look for it.
    let pids: Vec<(String, u32)> = ["server", "agent", "csi"]
        .iter()
        .map(|name| {
            let file = t.run.join(format!("{name}.pid"));
            let pid = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            (name.to_string(), pid.trim().parse().expect("a PID"))
        })
        .collect();
    let running = t.pod_leftovers(&[]);
    assert!(
        running.iter().any(|l| l.starts_with("container state"))
            && running.iter().any(|l| l.starts_with("cgroup"))
            && running.iter().any(|l| l.starts_with("veth")),
        "a running pod shows as containers, a pod cgroup and a veth: {running:?}"
    );

    let status = t.interrupt_up(Duration::from_secs(120));
    assert!(
        status.success(),
        "up exits 0 on Ctrl-C: {status}; {}",
        t.diagnostics()
    );
    let left = t.pod_leftovers(&pids);
    assert!(
        left.is_empty(),
        "after Ctrl-C no pod is left on the host: {left:?}"
    );

    let out = t.down();
    assert!(
        out.status.success(),
        "xtask down: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut left = Vec::new();
    for dir in [&t.data, &t.run, &t.bpf_pins] {
        if dir.exists() {
            left.push(format!("{}", dir.display()));
        }
    }
    if t.bridge_exists() {
        left.push(format!("bridge {}", t.bridge));
    }
    left.extend(
        t.cgroup_dirs()
            .iter()
            .map(|d| format!("cgroup {}", d.display())),
    );
    left.extend(t.mounts().iter().map(|m| format!("mount {}", m.display())));
    assert!(left.is_empty(), "after down nothing is left: {left:?}");
}
