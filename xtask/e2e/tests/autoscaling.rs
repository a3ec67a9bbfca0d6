//! The metrics API and a HorizontalPodAutoscaler end to end, with a real berth-agent
//! running the pods and its cgroups as the source of the numbers: `kubectl top node`
//! and `kubectl top pod` show non-zero CPU and memory for a pod spinning a busy loop
//! (holding an 8 MiB shell variable, so its working set shows in MiB);
//! `kubectl autoscale` puts an HPA (CPU 50 % of the request) over a Deployment of
//! such pods — each held to 200m by its CPU limit, so at twice its 100m request — which
//! scales it from 1 to 2 within two minutes; when the loops stop (a file each pod's
//! loop checks), the HPA, its scale-down stabilization window shortened to 15 s
//! through `behavior`, brings it back to 1. berth-server runs with its defaults: a
//! scrape every 15 s, an HPA sync every 15 s.

use std::time::Duration;

use berth_testkit::require_root;
use serde_json::Value;

mod common;
use common::cluster_with;

const BURN: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 1
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: berth.local/busybox:1.35
        imagePullPolicy: Never
        command: [sh, -c, 'x=$(head -c 8388608 /dev/zero | tr "\0" a); while [ ! -e /tmp/stop ]; do :; done; exec sleep 3600']
        resources:
          requests: {cpu: 100m, memory: 16Mi}
          limits: {cpu: 200m, memory: 64Mi}
"#;

/// The `CPU(cores)` and `MEMORY(bytes)` cells of the row of `kubectl top …` that
/// starts with `name`, once both are non-zero.
fn busy_row(out: &str, name: &str) -> Option<(String, String)> {
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .collect();
    let (cpu, memory) = match row.len() {
        // top node: NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%)
        5 => (row[1], row[3]),
        // top pod: NAME CPU(cores) MEMORY(bytes)
        3 => (row[1], row[2]),
        _ => return None,
    };
    let zero = |v: &str| v.trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0";
    (!zero(cpu) && !zero(memory)).then(|| (cpu.to_owned(), memory.to_owned()))
}

fn replicas(c: &common::Cluster) -> i64 {
    let out = c.kubectl.run(&["get", "deployment", "burn", "-o", "json"]);
    let d: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    d.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(-1)
}

fn burn_pods(c: &common::Cluster) -> Vec<String> {
    let list = c.kubectl.json(&["get", "pods", "-l", "app=burn"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .filter_map(|p| p.pointer("/metadata/name")?.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn top_shows_a_busy_pod_and_an_hpa_scales_its_deployment_up_and_down() {
    require_root!();
    let Some(c) = cluster_with(&[]) else {
        return;
    };
    c.kubectl.apply(BURN);
    c.wait(
        "deployment burn to roll out",
        Duration::from_secs(90),
        || {
            let out = c
                .kubectl
                .run(&["rollout", "status", "deployment/burn", "--timeout=1s"]);
            String::from_utf8_lossy(&out.stdout).contains("successfully rolled out")
        },
    );
    let pod = burn_pods(&c).pop().expect("the burn pod");

    // kubectl top: the node and the busy pod, once two scrapes have seen them.
    let mut node_row = None;
    c.wait(
        "kubectl top node to show CPU and memory",
        Duration::from_secs(90),
        || {
            let out = c.kubectl.run(&["top", "node"]);
            node_row = busy_row(&String::from_utf8_lossy(&out.stdout), "node-e2e");
            node_row.is_some()
        },
    );
    let mut pod_row = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while pod_row.is_none() {
        let out = c.kubectl.run(&["top", "pod"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        pod_row = busy_row(&text, &pod);
        if pod_row.is_none() && std::time::Instant::now() > deadline {
            // What the node's kubelet reports, for the failure message.
            let scraped = c.kubectl.run(&[
                "get",
                "--raw",
                "/api/v1/nodes/node-e2e/proxy/metrics/resource",
            ]);
            panic!(
                "kubectl top pod never showed {pod} busy: {text}{}\nthe kubelet's /metrics/resource:\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&scraped.stdout)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let (cpu, memory) = pod_row.expect("a row");
    // The loop is held to 200m by its limit: well above idle.
    let millis: i64 = cpu.trim_end_matches('m').parse().unwrap_or(0);
    assert!(cpu.ends_with('m') && millis >= 50, "cpu {cpu}");
    assert!(
        memory.ends_with("Mi") || memory.ends_with("Ki"),
        "memory {memory}"
    );

    // The HPA: 200 % of the request against a 50 % target → the max, 2.
    let out = c.kubectl.ok(&[
        "autoscale",
        "deployment",
        "burn",
        "--cpu-percent=50",
        "--min=1",
        "--max=2",
    ]);
    assert!(
        out.contains("horizontalpodautoscaler.autoscaling/burn autoscaled"),
        "{out}"
    );
    c.kubectl.ok(&[
        "patch",
        "hpa",
        "burn",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":15}}}}"#,
    ]);
    c.wait(
        "the HPA to scale burn to 2",
        Duration::from_secs(120),
        || replicas(&c) == 2,
    );
    let describe = c.kubectl.ok(&["describe", "hpa", "burn"]);
    assert!(
        describe.contains("SuccessfulRescale")
            && describe.contains(
                "New size: 2; reason: cpu resource utilization (percentage of request) above target"
            ),
        "{describe}"
    );
    let table = c.kubectl.ok(&["get", "hpa", "burn"]);
    assert!(
        table.contains("Deployment/burn") && table.contains("/50%"),
        "{table}"
    );

    // The load stops in every pod (the second one included, once it runs).
    c.wait(
        "deployment burn to roll out",
        Duration::from_secs(90),
        || {
            let out = c
                .kubectl
                .run(&["rollout", "status", "deployment/burn", "--timeout=1s"]);
            String::from_utf8_lossy(&out.stdout).contains("successfully rolled out")
        },
    );
    for p in burn_pods(&c) {
        c.kubectl.ok(&["exec", &p, "--", "touch", "/tmp/stop"]);
    }
    c.wait(
        "the HPA to scale burn back to 1",
        Duration::from_secs(180),
        || replicas(&c) == 1,
    );
    let describe = c.kubectl.ok(&["describe", "hpa", "burn"]);
    assert!(
        describe.contains("New size: 1; reason: All metrics below target"),
        "{describe}"
    );

    c.kubectl.ok(&["delete", "hpa", "burn"]);
    c.kubectl
        .ok(&["delete", "deployment", "burn", "--wait=false"]);
    c.wait("the burn pods to be gone", Duration::from_secs(60), || {
        burn_pods(&c).is_empty()
    });
    c.wait_clean();
}
