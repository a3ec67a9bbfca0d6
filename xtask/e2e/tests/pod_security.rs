//! Pod security fields through a real cluster and the real kubectl: the agent's
//! `--seccomp-default` confines a pod that names no profile; a container's
//! `seccompProfile: Unconfined` overrides the pod's; a Localhost profile from
//! `<agent root-dir>/seccomp/` denies mkdir; one that does not exist fails the container
//! with CreateContainerError and a Warning `Failed` event, never running it unconfined.

use std::time::Duration;

use berth_testkit::require_root;
use serde_json::Value;

mod common;
use common::{Cluster, cluster_full, ready};

fn exec(c: &Cluster, pod: &str, script: &str) -> String {
    let out = c.kubectl.run(&["exec", pod, "--", "sh", "-c", script]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn seccomp_profiles_from_pod_fields_and_the_agent_flag() {
    require_root!();
    let Some(c) = cluster_full(&["--controllers=false"], &["--seccomp-default"]) else {
        return;
    };
    let profiles = c.agent.root_dir().join("seccomp/profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir seccomp/profiles");
    std::fs::write(
        profiles.join("deny-mkdir.json"),
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .expect("write profile");
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: sc-default}
spec:
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sleep, "300"]}
---
apiVersion: v1
kind: Pod
metadata: {name: sc-override}
spec:
  securityContext: {seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "300"]
    securityContext: {seccompProfile: {type: Unconfined}}
---
apiVersion: v1
kind: Pod
metadata: {name: sc-local}
spec:
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "300"]
    securityContext:
      seccompProfile: {type: Localhost, localhostProfile: profiles/deny-mkdir.json}
---
apiVersion: v1
kind: Pod
metadata: {name: sc-missing}
spec:
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "300"]
    securityContext:
      seccompProfile: {type: Localhost, localhostProfile: profiles/nope.json}
"#,
    );
    for pod in ["sc-default", "sc-override", "sc-local"] {
        c.wait_pod(pod, "Ready", ready);
    }
    let out = exec(
        &c,
        "sc-default",
        "grep Seccomp: /proc/1/status; unshare -U true",
    );
    assert!(out.contains("Seccomp:\t2"), "--seccomp-default: {out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    let out = exec(&c, "sc-override", "grep Seccomp: /proc/1/status");
    assert!(
        out.contains("Seccomp:\t0"),
        "the container's Unconfined wins: {out}"
    );
    let out = exec(&c, "sc-local", "mkdir /tmp/x");
    assert!(
        out.contains("Operation not permitted"),
        "Localhost profile: {out}"
    );

    let pod = c.wait_pod("sc-missing", "CreateContainerError", |p| {
        Cluster::container_status(p, "c")["state"]["waiting"]["reason"] == "CreateContainerError"
    });
    let waiting = &Cluster::container_status(&pod, "c")["state"]["waiting"];
    let message = waiting["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("seccomp") && message.contains("nope.json"),
        "{waiting}"
    );
    c.wait("the Failed event", Duration::from_secs(30), || {
        let out = c.kubectl.run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sc-missing",
            "-o",
            "json",
        ]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        list["items"].as_array().is_some_and(|items| {
            items.iter().any(|e| {
                e["type"] == "Warning"
                    && e["reason"] == "Failed"
                    && e["message"].as_str().is_some_and(|m| m.contains("seccomp"))
            })
        })
    });
    c.kubectl.ok(&[
        "delete",
        "pod",
        "sc-default",
        "sc-override",
        "sc-local",
        "sc-missing",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_clean();
}
