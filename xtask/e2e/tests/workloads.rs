//! Workload controllers end to end, with a real berth-agent running the pods: an
//! Indexed Job whose pods see `JOB_COMPLETION_INDEX` (`kubectl wait
//! --for=condition=Complete`, `kubectl logs`), a Job failed at once by a
//! podFailurePolicy rule on a real exit code, a StatefulSet behind a headless Service
//! whose pods reach each other by their stable DNS names, a DaemonSet with its pod on
//! the node, and a CronJob firing on the real clock within a minute and its Job
//! completing — then everything is deleted and nothing is left on the host.

use std::time::Duration;

use berth_testkit::require_root;
use serde_json::Value;

mod common;
use common::{cluster_with, ready};

const APPS: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: idx}
spec:
  completions: 3
  parallelism: 2
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: berth.local/busybox:1.35
        imagePullPolicy: Never
        command: [sh, -c, 'echo "index=$JOB_COMPLETION_INDEX host=$(hostname)"']
---
apiVersion: batch/v1
kind: Job
metadata: {name: fatal}
spec:
  backoffLimit: 6
  podFailurePolicy:
    rules:
    - action: FailJob
      onExitCodes: {containerName: c, operator: In, values: [42]}
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: c, image: berth.local/busybox:1.35, imagePullPolicy: Never, command: [sh, -c, 'exit 42']}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: db, port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: c, image: berth.local/busybox:1.35, imagePullPolicy: Never, command: [sleep, "3600"]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: c, image: berth.local/busybox:1.35, imagePullPolicy: Never, command: [sleep, "3600"]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "*/1 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - {name: c, image: berth.local/busybox:1.35, imagePullPolicy: Never, command: [sh, -c, 'echo tick']}
"#;

#[test]
fn jobs_statefulsets_daemonsets_and_cronjobs_run_real_pods() {
    require_root!();
    let Some(c) = cluster_with(&[]) else {
        return;
    };
    c.kubectl.apply(APPS);

    // The Indexed Job: each index once, its index in the environment and hostname.
    let out = c.kubectl.ok(&[
        "wait",
        "--for=condition=Complete",
        "job/idx",
        "--timeout=120s",
    ]);
    assert!(out.contains("condition met"), "{out}");
    let job = c.kubectl.json(&["get", "job", "idx"]);
    assert_eq!(
        job.pointer("/status/succeeded"),
        Some(&Value::from(3)),
        "{job}"
    );
    assert_eq!(
        job.pointer("/status/completedIndexes")
            .and_then(Value::as_str),
        Some("0-2"),
        "{job}"
    );
    let logs = c.kubectl.ok(&[
        "logs",
        "-l",
        "batch.kubernetes.io/job-name=idx",
        "--prefix=false",
    ]);
    for i in 0..3 {
        assert!(
            logs.contains(&format!("index={i} host=idx-{i}")),
            "index {i} missing: {logs}"
        );
    }

    // A real exit code 42 fails the Job at once through its podFailurePolicy.
    let out = c.kubectl.ok(&[
        "wait",
        "--for=condition=Failed",
        "job/fatal",
        "--timeout=120s",
    ]);
    assert!(out.contains("condition met"), "{out}");
    let fatal = c.kubectl.json(&["get", "job", "fatal"]);
    let failed = fatal
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Failed").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(failed["reason"], "PodFailurePolicy", "{fatal}");
    assert_eq!(
        fatal.pointer("/status/failed"),
        Some(&Value::from(1)),
        "{fatal}"
    );

    // The StatefulSet: ordered, stable names resolvable through the headless Service.
    let out = c
        .kubectl
        .ok(&["rollout", "status", "statefulset/db", "--timeout=120s"]);
    assert!(out.contains("roll out complete"), "{out}");
    let db0 = c.wait_pod("db-0", "Ready", ready);
    let db0_ip = db0
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut answer = String::new();
    c.wait("db-1 to resolve db-0.db", Duration::from_secs(60), || {
        let out = c.kubectl.run(&[
            "exec",
            "db-1",
            "--",
            "nslookup",
            "db-0.db.default.svc.cluster.local",
        ]);
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        answer.contains(&db0_ip)
    });
    let host = c.kubectl.ok(&["exec", "db-1", "--", "hostname"]);
    assert_eq!(host.trim(), "db-1");

    // The DaemonSet's pod runs on the node.
    let out = c.kubectl.ok(&[
        "rollout",
        "status",
        "daemonset/node-agent",
        "--timeout=120s",
    ]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let ds = c.kubectl.json(&["get", "daemonset", "node-agent"]);
    assert_eq!(
        ds.pointer("/status/numberReady"),
        Some(&Value::from(1)),
        "{ds}"
    );
    let pods = c.kubectl.json(&["get", "pods", "-l", "app=node-agent"]);
    assert_eq!(
        pods.pointer("/items/0/spec/nodeName")
            .and_then(Value::as_str),
        Some("node-e2e"),
        "{pods}"
    );

    // The CronJob fires on the real clock and its Job completes.
    c.wait(
        "the CronJob's first success",
        Duration::from_secs(150),
        || {
            let cj = c.kubectl.json(&["get", "cronjob", "tick"]);
            cj.pointer("/status/lastSuccessfulTime").is_some()
        },
    );
    let jobs = c.kubectl.json(&["get", "jobs"]);
    let names: Vec<&str> = jobs
        .pointer("/items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|j| j.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    assert!(
        names.iter().any(|n| n
            .strip_prefix("tick-")
            .is_some_and(|m| m.parse::<u64>().is_ok())),
        "{names:?}"
    );

    // Everything goes, and nothing of it stays on the host.
    c.kubectl.ok(&["delete", "cronjob", "tick"]);
    c.kubectl
        .ok(&["delete", "jobs", "--all", "--wait=true", "--timeout=60s"]);
    c.kubectl.ok(&[
        "delete",
        "statefulset/db",
        "daemonset/node-agent",
        "service/db",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait("every pod gone", Duration::from_secs(90), || {
        let pods = c.kubectl.json(&["get", "pods"]);
        pods.pointer("/items")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
    });
    c.wait_clean();
}
