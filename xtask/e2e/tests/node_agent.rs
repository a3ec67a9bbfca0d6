//! A real one-node cluster — berth-server and berth-agent, pods in berth's own
//! containers on this host (pod network in a namespace of the test's) — driven with
//! the real kubectl: a testserver pod becomes Ready; `kubectl logs`, `kubectl exec` and
//! `kubectl port-forward`; `kubectl attach -i` to a container with stdin;
//! init containers in order; configMap and secret contents in volumes and env; a failing liveness probe
//! restarts the container and a crashing one reaches CrashLoopBackOff, its second restart
//! 10 s after the first; `kubectl exec -it` follows every resize of its terminal; a memory hog is
//! OOMKilled; a preStop hook runs on delete and nothing of the pod is left; an agent
//! killed with -9 and restarted restarts no container; with the apiserver down, pods
//! keep running and a crashed container is still restarted; static pods run from the
//! manifest directory with mirror pods in the apiserver; under memory pressure the
//! node says so and evicts BestEffort pods first.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_testkit::require_root;
use serde_json::Value;

mod common;
use common::{Cluster, cluster, cluster_full, cluster_with, ready};

#[test]
fn pods_run_ready_with_config_logs_and_leave_nothing_behind() {
    require_root!();
    let Some(c) = cluster() else { return };
    let marker = c.dir.path().join("prestop");
    std::fs::create_dir_all(&marker).expect("marker dir");
    c.kubectl.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg}}
data: {{greeting: hello-from-configmap}}
---
apiVersion: v1
kind: Secret
metadata: {{name: sec}}
stringData: {{password: s3cret}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers:
  - name: server
    image: berth.local/testserver:v1
    readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
    livenessProbe: {{tcpSocket: {{port: 9000}}, periodSeconds: 2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: shell}}
spec:
  terminationGracePeriodSeconds: 5
  initContainers:
  - {{name: first, image: berth.local/busybox:1.35, command: [sh, -c, "echo first >> /work/order"], volumeMounts: [{{name: work, mountPath: /work}}]}}
  - {{name: second, image: berth.local/busybox:1.35, command: [sh, -c, "echo second >> /work/order"], volumeMounts: [{{name: work, mountPath: /work}}]}}
  containers:
  - name: main
    image: berth.local/busybox:1.35
    command: [sh, -c, "cat /work/order; echo env=$GREETING/$PASSWORD/$POD_NAME; echo cm=$(cat /etc/cfg/greeting); echo secret=$(cat /etc/sec/password); exec sleep 3600"]
    env:
    - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: cfg, key: greeting}}}}}}
    - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: sec, key: password}}}}}}
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    lifecycle:
      preStop: {{exec: {{command: [sh, -c, "echo stopped > /marker/prestop"]}}}}
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: cfgvol, mountPath: /etc/cfg}}
    - {{name: secvol, mountPath: /etc/sec}}
    - {{name: marker, mountPath: /marker}}
  volumes:
  - {{name: work, emptyDir: {{}}}}
  - {{name: cfgvol, configMap: {{name: cfg}}}}
  - {{name: secvol, secret: {{secretName: sec}}}}
  - {{name: marker, hostPath: {{path: {}, type: Directory}}}}
"#,
        marker.display()
    ));
    let web = c.wait_pod("web", "Ready", ready);
    assert_eq!(web["status"]["phase"], "Running");
    // The agent's status writes are the `kubelet` manager's, named after its User-Agent.
    let shown = c
        .kubectl
        .json(&["get", "pod", "web", "--show-managed-fields"]);
    let managers = shown["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["manager"].as_str(), e["subresource"].as_str()))
        .collect::<Vec<_>>();
    assert!(
        managers.contains(&(Some("kubelet"), Some("status"))),
        "{managers:?}"
    );
    assert_eq!(web["status"]["qosClass"], "BestEffort");
    assert_eq!(web["status"]["hostIP"], "127.0.0.1");
    let ip = web["status"]["podIP"].as_str().expect("podIP");
    assert!(ip.starts_with("10.77.0."), "pod IP {ip}");
    let server = Cluster::container_status(&web, "server");
    assert_eq!(server["ready"], true);
    assert_eq!(server["restartCount"], 0);
    assert!(
        server["containerID"]
            .as_str()
            .is_some_and(|id| id.starts_with("berth://"))
    );
    assert!(
        server["imageID"]
            .as_str()
            .is_some_and(|id| id.starts_with("sha256:"))
    );
    // kubectl logs goes apiserver → kubelet API → the CRI log file.
    let logs = c.kubectl.ok(&["logs", "web"]);
    assert!(logs.contains("testserver: http :8080"), "logs: {logs}");
    assert!(
        logs.contains(" on web"),
        "the hostname is the pod name: {logs}"
    );
    // kubectl exec: apiserver → kubelet API over a websocket → berth-runtime exec.
    assert_eq!(
        c.kubectl.ok(&["exec", "web", "--", "hostname"]).trim(),
        "web"
    );
    let out = c.kubectl.run(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "the exit code comes back");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    let mut child = c
        .kubectl
        .cmd(&["exec", "-i", "web", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl exec -i");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"through stdin\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("kubectl exec -i");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    // kubectl port-forward: apiserver → kubelet API over SPDY → the pod's loopback.
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let forward = c
        .kubectl
        .cmd(&["port-forward", "pod/web", &format!("{local}:8080")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl port-forward");
    let mut forward = berth_testkit::ChildGuard(forward);
    let mut out = std::io::BufReader::new(forward.0.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).expect("port-forward output");
    assert!(first.starts_with("Forwarding from"), "{first}");
    // kubectl goes on printing a line per connection: keep its stdout drained.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    for path in ["/", "/healthz"] {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).expect("connect");
        std::io::Write::write_all(&mut conn, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .expect("request");
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut conn, &mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        assert_eq!(
            body.trim(),
            if path == "/" { "web" } else { "ok" },
            "{answer}"
        );
    }
    drop(forward);
    let shell = c.wait_pod("shell", "Ready", ready);
    let inits = shell["status"]["initContainerStatuses"]
        .as_array()
        .expect("init statuses");
    assert!(
        inits
            .iter()
            .all(|s| s["state"]["terminated"]["reason"] == "Completed")
    );
    let mut logs = String::new();
    c.wait("the shell pod's output", Duration::from_secs(20), || {
        logs = c.kubectl.ok(&["logs", "shell", "-c", "main"]);
        logs.contains("secret=")
    });
    assert!(
        logs.starts_with("first\nsecond\n"),
        "init containers ran in order: {logs}"
    );
    assert!(
        logs.contains("env=hello-from-configmap/s3cret/shell"),
        "{logs}"
    );
    assert!(logs.contains("cm=hello-from-configmap"), "{logs}");
    assert!(logs.contains("secret=s3cret"), "{logs}");
    // kubectl exec -it: the process gets a terminal of the client's size (script(1)
    // gives kubectl a terminal of 45 rows and 123 columns).
    let inner = format!(
        "stty cols 123 rows 45; {} exec -it shell -c main -- stty size",
        c.kubectl.bin.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qc", &inner, "/dev/null"])
        .env("KUBECONFIG", &c.kubectl.kubeconfig)
        .env("HOME", &c.kubectl.home)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("45 123"),
        "stty size through exec -it: {text:?}"
    );
    exec_tty_follows_every_resize(&c);
    // A ConfigMap update reaches the running pod's volume.
    c.kubectl.ok(&[
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"data":{"greeting":"updated"}}"#,
    ]);
    c.wait(
        "the updated ConfigMap in the volume",
        Duration::from_secs(40),
        || {
            c.kubectl
                .run(&[
                    "exec",
                    "shell",
                    "-c",
                    "main",
                    "--",
                    "cat",
                    "/etc/cfg/greeting",
                ])
                .stdout
                == b"updated"
        },
    );
    let tail = c.kubectl.ok(&["logs", "shell", "-c", "main", "--tail=1"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    // Resource usage through nodes/proxy: the Summary API and /metrics/resource.
    let summary: Value = serde_json::from_str(&c.kubectl.ok(&[
        "get",
        "--raw",
        "/api/v1/nodes/node-e2e/proxy/stats/summary",
    ]))
    .expect("summary JSON");
    assert_eq!(summary["node"]["nodeName"], "node-e2e");
    let web_stats = summary["pods"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["podRef"]["name"] == "web"))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        web_stats["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    assert!(
        web_stats["containers"][0]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{summary}"
    );
    let resource = c.kubectl.ok(&[
        "get",
        "--raw",
        "/api/v1/nodes/node-e2e/proxy/metrics/resource",
    ]);
    assert!(
        resource.contains(r#"container_memory_working_set_bytes{container="server",namespace="default",pod="web"}"#),
        "{resource}"
    );
    // Events as the kubelet records them.
    let events = c.kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=shell",
    ]);
    assert!(events.contains("Started"), "{events}");

    c.kubectl.ok(&[
        "delete",
        "pod",
        "shell",
        "web",
        "--wait=true",
        "--timeout=60s",
    ]);
    assert_eq!(
        std::fs::read_to_string(marker.join("prestop"))
            .unwrap_or_default()
            .trim(),
        "stopped",
        "the preStop hook ran"
    );
    c.wait_clean();
}

/// `kubectl exec -it` passes on every resize of its terminal, not only the size it
/// starts with: the terminal script(1) gives kubectl (45×123) is shrunk to 30×100 with
/// `stty -F` while the session is open — the kernel sends kubectl SIGWINCH, kubectl a
/// resize message — and `stty size` inside, run again for each line sent, says so.
fn exec_tty_follows_every_resize(c: &Cluster) {
    let inner = format!(
        "tty; stty cols 123 rows 45; exec {} exec -it shell -c main -- sh -c 'stty size; while read x; do stty size; done'",
        c.kubectl.bin.display()
    );
    let mut script = std::process::Command::new("script")
        .args(["-qc", &inner, "/dev/null"])
        .env("KUBECONFIG", &c.kubectl.kubeconfig)
        .env("HOME", &c.kubectl.home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script(1)");
    let mut input = script.stdin.take().expect("stdin");
    let mut output = script.stdout.take().expect("stdout");
    let _script = berth_testkit::ChildGuard(script);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut output, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut text = String::new();
    let read_until = |text: &mut String, what: &str, mut poke: Box<dyn FnMut() + '_>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !text.contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} through exec -it; the terminal showed {text:?}"
            );
            poke();
            while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(500)) {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
    };
    read_until(&mut text, "45 123", Box::new(|| {}));
    let tty = text
        .split_whitespace()
        .find(|w| w.starts_with("/dev/pts/"))
        .unwrap_or_else(|| panic!("tty(1) named no pty: {text:?}"))
        .to_owned();
    let resized = std::process::Command::new("stty")
        .args(["-F", &tty, "rows", "30", "cols", "100"])
        .status()
        .expect("stty -F");
    assert!(resized.success(), "stty -F {tty}");
    // Each line sent runs `stty size` again inside (until the new size shows).
    read_until(
        &mut text,
        "30 100",
        Box::new(|| std::io::Write::write_all(&mut input, b"\n").expect("write the terminal")),
    );
}

#[test]
fn failing_liveness_restarts_and_crashes_back_off() {
    require_root!();
    let Some(c) = cluster() else { return };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: unhealthy}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sh, -c, "exec sleep 3600"]
    livenessProbe: {exec: {command: ["false"]}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sh, -c, "echo crashing; exit 3"]
"#,
    );
    // The kubelet restarts a crashed container at once the first time, then after 10 s
    // counted from the last finish, doubling to 5 min; the waiting message names the
    // current back-off as `back-off 10s restarting failed container=c pod=crasher_default(<uid>)`.
    let mut first_restart = Value::Null;
    let pod = c.wait_pod("crasher", "CrashLoopBackOff after one restart", |p| {
        let s = Cluster::container_status(p, "c");
        let n = s["restartCount"].as_i64().unwrap_or(0);
        assert!(n <= 1, "restart 2 came before restart 1 was seen: {s}");
        let backing_off = n == 1 && s["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        if backing_off {
            first_restart = s;
        }
        backing_off
    });
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    assert_eq!(
        first_restart["state"]["waiting"]["message"],
        format!("back-off 10s restarting failed container=c pod=crasher_default({uid})"),
        "{first_restart}"
    );
    let mut second_restart = Value::Null;
    c.wait_pod("crasher", "the second restart, crashed", |p| {
        second_restart = Cluster::container_status(p, "c");
        second_restart["restartCount"] == 2
            && second_restart["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    assert_eq!(
        second_restart["state"]["waiting"]["message"],
        format!("back-off 20s restarting failed container=c pod=crasher_default({uid})"),
        "{second_restart}"
    );
    let seconds = |v: &Value| -> i64 {
        v.as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .unwrap_or_else(|| panic!("an RFC 3339 time: {v}"))
            .as_second()
    };
    let gap = seconds(&second_restart["lastState"]["terminated"]["startedAt"])
        - seconds(&first_restart["lastState"]["terminated"]["finishedAt"]);
    // Times are whole seconds: 10 s reads as 9 to 11, plus a sync's lateness.
    assert!(
        (9..=13).contains(&gap),
        "the second restart started {gap} s after the first restart finished, not 10 s: {first_restart} then {second_restart}"
    );
    let pod = c.wait_pod("unhealthy", "a liveness restart", |p| {
        Cluster::container_status(p, "c")["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    assert_eq!(pod["status"]["phase"], "Running");
    let events = c.kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=unhealthy",
    ]);
    assert!(events.contains("Liveness probe failed"), "{events}");
    let s = second_restart;
    assert_eq!(s["lastState"]["terminated"]["exitCode"], 3, "{s}");
    assert_eq!(s["lastState"]["terminated"]["reason"], "Error", "{s}");
    let table = c.kubectl.ok(&["get", "pod", "crasher"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");
    let previous = c.kubectl.ok(&["logs", "crasher", "--previous"]);
    assert!(previous.contains("crashing"), "{previous}");
    c.kubectl.ok(&[
        "delete",
        "pod",
        "unhealthy",
        "crasher",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_clean();
}

#[test]
fn memory_hog_is_oom_killed() {
    require_root!();
    let Some(c) = cluster() else { return };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sh, -c, "tail /dev/zero"]
    resources: {limits: {memory: 32Mi, cpu: 500m}}
"#,
    );
    let pod = c.wait_pod("hog", "Failed", |p| p["status"]["phase"] == "Failed");
    assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    let s = Cluster::container_status(&pod, "c");
    assert_eq!(s["state"]["terminated"]["reason"], "OOMKilled", "{s}");
    assert_eq!(s["state"]["terminated"]["exitCode"], 137, "{s}");
    c.kubectl
        .ok(&["delete", "pod", "hog", "--wait=true", "--timeout=60s"]);
    c.wait_clean();
}

#[test]
fn agent_killed_and_restarted_restarts_no_container() {
    require_root!();
    let Some(mut c) = cluster() else { return };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: steady}
spec:
  containers:
  - name: server
    image: berth.local/testserver:v1
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
"#,
    );
    let before = c.wait_pod("steady", "Ready", ready);
    let before = Cluster::container_status(&before, "server");
    c.agent.kill();
    // With the agent gone (killed and reaped), the container keeps running: checked
    // now and again after the restarted agent reports the pod Ready.
    let ids: Vec<String> = std::fs::read_dir(c.agent.run_dir().join("containers"))
        .expect("state dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-server-0"))
        .collect();
    assert_eq!(ids.len(), 1, "the container's record survives: {ids:?}");
    let pid: i64 = std::fs::read_to_string(
        c.agent
            .run_dir()
            .join("containers")
            .join(&ids[0])
            .join("state.json"),
    )
    .ok()
    .and_then(|s| serde_json::from_str::<Value>(&s).ok())
    .and_then(|v| v["pid"].as_i64())
    .expect("container pid");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "container process {pid} still runs"
    );
    c.agent.restart();
    // No status write marks "the restarted agent has synced this pod", and the pod
    // reads Ready from before the kill: give the agent a sync or two before judging.
    std::thread::sleep(Duration::from_secs(5));
    let after = c.wait_pod("steady", "Ready again", ready);
    let after = Cluster::container_status(&after, "server");
    assert_eq!(after["restartCount"], 0, "{after}");
    assert_eq!(after["containerID"], before["containerID"]);
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "container process {pid} survived the agent's restart"
    );
    assert_eq!(
        after["state"]["running"]["startedAt"],
        before["state"]["running"]["startedAt"]
    );
    c.kubectl
        .ok(&["delete", "pod", "steady", "--wait=true", "--timeout=60s"]);
    c.wait_clean();
}

#[test]
fn without_the_apiserver_pods_keep_running_and_restarting() {
    require_root!();
    let Some(mut c) = cluster() else { return };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {greeting: still-here}
---
apiVersion: v1
kind: Pod
metadata: {name: survivor}
spec:
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sh, -c, "echo $GREETING; exec sleep 3600"]
    env: [{name: GREETING, valueFrom: {configMapKeyRef: {name: cfg, key: greeting}}}]
"#,
    );
    c.wait_pod("survivor", "Ready", ready);
    c.server.stop();
    let state = c.agent.run_dir().join("containers");
    let pid_of = |suffix: &str| -> Option<i64> {
        let dir = std::fs::read_dir(&state)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(suffix))?;
        let text = std::fs::read_to_string(dir.path().join("state.json")).ok()?;
        serde_json::from_str::<Value>(&text).ok()?["pid"].as_i64()
    };
    let pid = pid_of("-c-0").expect("the container's pid");
    // The container dies while nobody can reach the apiserver…
    nix_kill(pid);
    // …and the agent restarts it on its own (restartPolicy Always, first restart at once).
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid_of("-c-1").is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists()) {
        assert!(
            Instant::now() < deadline,
            "no restart without the apiserver; agent log:\n{}",
            std::fs::read_to_string(c.agent.log_file()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.server.restart();
    let pod = c.wait_pod("survivor", "the restart reported", |p| {
        Cluster::container_status(p, "c")["restartCount"] == 1 && ready(p)
    });
    assert_eq!(pod["status"]["phase"], "Running");
    let logs = c.kubectl.ok(&["logs", "survivor"]);
    assert!(
        logs.contains("still-here"),
        "the restarted container got its env: {logs}"
    );
    c.kubectl
        .ok(&["delete", "pod", "survivor", "--wait=true", "--timeout=60s"]);
    c.wait_clean();
}

fn nix_kill(pid: i64) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -9 {pid}");
}

#[test]
fn a_deployment_behind_a_service_answers_through_the_cluster_ip() {
    require_root!();
    let _object = berth_testkit::require_ebpf_object!();
    let Some(c) = cluster_with(&[]) else { return };
    c.kubectl.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: server
        image: berth.local/testserver:v1
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}
"#,
    );
    let mut names: Vec<String> = Vec::new();
    c.wait("2 ready replicas", Duration::from_secs(120), || {
        let d = c.kubectl.run(&["get", "deployment", "web", "-o", "json"]);
        let d: Value = serde_json::from_slice(&d.stdout).unwrap_or(Value::Null);
        d["status"]["readyReplicas"] == 2
    });
    c.wait("the client pod", Duration::from_secs(60), || {
        ready(&c.pod("client"))
    });
    let pods = c.kubectl.json(&["get", "pods", "-l", "app=web"]);
    for p in pods["items"].as_array().into_iter().flatten() {
        names.push(
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(names.len(), 2, "{pods}");
    let svc = c.kubectl.json(&["get", "service", "web"]);
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_owned();
    // From the client pod, the ClusterIP reaches both replicas (the socket-LB picks a
    // backend per connect).
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 2 && Instant::now() < deadline {
        // (busybox-static's wget crashes resolving; nc speaks the HTTP/1.0 needed.)
        let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80");
        let out = c
            .kubectl
            .run(&["exec", "client", "--", "sh", "-c", &request]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_owned();
        if out.status.success() && !body.is_empty() {
            assert!(
                names.iter().any(|n| body.contains(n.as_str())),
                "answer {body:?} from none of {names:?}"
            );
            seen.insert(body);
        } else {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "both replicas answered through {ip}: {seen:?}"
    );
    c.kubectl.ok(&[
        "delete",
        "deployment",
        "web",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.kubectl
        .ok(&["delete", "pod", "client", "--wait=true", "--timeout=60s"]);
    c.wait("the replicas to go", Duration::from_secs(60), || {
        c.kubectl
            .ok(&["get", "pods", "-o", "name"])
            .trim()
            .is_empty()
    });
    c.wait_clean();
}

#[test]
fn static_pods_run_from_manifests_with_mirror_pods() {
    require_root!();
    let Some(c) = cluster() else { return };
    let manifest = c.agent.manifest_dir().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: static-web\n  labels: {tier: static}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: server\n    image: berth.local/testserver:v1\n    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}\n",
    )
    .expect("write the manifest");
    let name = "static-web-node-e2e";
    let mirror = c.wait_pod(name, "the mirror Ready", ready);
    assert!(
        mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string(),
        "{mirror}"
    );
    assert_eq!(mirror["spec"]["nodeName"], "node-e2e");
    // No account for a mirror pod, as the ServiceAccount admission plugin leaves it.
    assert!(
        mirror["spec"].get("serviceAccountName").is_none()
            && mirror["spec"].get("serviceAccount").is_none(),
        "{mirror}"
    );
    assert_eq!(mirror["metadata"]["ownerReferences"][0]["kind"], "Node");
    let logs = c.kubectl.ok(&["logs", name]);
    assert!(logs.contains(&format!(" on {name}")), "{logs}");
    // Deleting the mirror does not stop the pod; the mirror comes back.
    let first_uid = mirror["metadata"]["uid"].clone();
    c.kubectl.ok(&["delete", "pod", name, "--wait=false"]);
    let again = c.wait_pod(name, "the mirror recreated", |p| {
        p["metadata"]["uid"] != first_uid && p["metadata"]["uid"].is_string() && ready(p)
    });
    assert_eq!(
        Cluster::container_status(&again, "server")["restartCount"],
        0
    );
    // Removing the manifest removes the pod and its mirror.
    std::fs::remove_file(&manifest).expect("remove the manifest");
    c.wait("the mirror to go", Duration::from_secs(30), || {
        !c.kubectl.run(&["get", "pod", name]).status.success()
    });
    c.wait_clean();
}

#[test]
fn memory_pressure_evicts_best_effort_pods_first() {
    require_root!();
    // A threshold no machine meets: the node is under memory pressure from the start.
    let Some(c) = cluster_full(
        &["--controllers=false"],
        &["--eviction-hard=memory.available<1000Ti"],
    ) else {
        return;
    };
    c.wait(
        "MemoryPressure on the node",
        Duration::from_secs(30),
        || {
            let node = c.kubectl.json(&["get", "node", "node-e2e"]);
            node["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "MemoryPressure" && c["status"] == "True")
            })
        },
    );
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: guaranteed}
spec:
  nodeName: node-e2e
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "3600"]
    resources: {limits: {cpu: 100m, memory: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: besteffort}
spec:
  nodeName: node-e2e
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}
"#,
    );
    let evicted = c.wait_pod("besteffort", "evicted", |p| {
        p["status"]["reason"] == "Evicted"
    });
    assert_eq!(evicted["status"]["phase"], "Failed");
    assert!(
        evicted["status"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("The node was low on resource: memory")),
        "{evicted}"
    );
    let g = c.pod("guaranteed");
    assert_ne!(
        g["status"]["reason"], "Evicted",
        "the Guaranteed pod went first: {g}"
    );
    // The evicted pod's container is stopped and stays stopped.
    c.wait_pod("besteffort", "its container stopped", |p| {
        Cluster::container_status(p, "c")["state"]["terminated"].is_object()
    });
    c.kubectl.ok(&[
        "delete",
        "pod",
        "besteffort",
        "guaranteed",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_clean();
}

#[test]
fn disk_pressure_deletes_unused_images_then_evicts_the_pod_over_its_request() {
    require_root!();
    // A threshold every disk crosses: DiskPressure from the start. Images may go 20 s
    // after they are first seen (by then the pods below use busybox).
    let Some(c) = cluster_full(
        &["--controllers=false"],
        &[
            "--eviction-hard=nodefs.available<100%",
            "--image-minimum-gc-age=20s",
        ],
    ) else {
        return;
    };
    let condition = |node: &Value, type_: &str| {
        node["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or(Value::Null)
    };
    c.wait("DiskPressure on the node", Duration::from_secs(30), || {
        condition(
            &c.kubectl.json(&["get", "node", "node-e2e"]),
            "DiskPressure",
        )["status"]
            == "True"
    });
    let node = c.kubectl.json(&["get", "node", "node-e2e"]);
    let disk = condition(&node, "DiskPressure");
    assert_eq!(disk["reason"], "KubeletHasDiskPressure", "{disk}");
    assert_eq!(disk["message"], "kubelet has disk pressure", "{disk}");
    assert_eq!(condition(&node, "MemoryPressure")["status"], "False");
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  nodeName: node-e2e
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sh, -c, "dd if=/dev/zero of=/fill bs=1M count=8 && sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: within-request}
spec:
  nodeName: node-e2e
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "3600"]
    resources: {requests: {ephemeral-storage: 1Gi}}
"#,
    );
    // Pods go, the one using more than it requested first.
    let evicted = c.wait_pod("writer", "evicted", |p| p["status"]["reason"] == "Evicted");
    assert_eq!(evicted["status"]["phase"], "Failed");
    let message = evicted["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "The node was low on resource: ephemeral-storage. Threshold quantity: 100%, available: "
        ),
        "{message}"
    );
    let other = c.pod("within-request");
    assert_ne!(
        other["status"]["reason"], "Evicted",
        "the pod within its request went first: {other}"
    );
    // Before pods, each round deletes the images no container uses (the testserver
    // image, once old enough); busybox (in use) and the pause image (pinned) stay.
    let names = |node: &Value| -> Vec<String> {
        node["status"]["images"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["names"].as_array().cloned().unwrap_or_default())
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect()
    };
    c.wait(
        "the unused testserver image deleted",
        Duration::from_secs(60),
        || {
            let n = names(&c.kubectl.json(&["get", "node", "node-e2e"]));
            !n.is_empty() && !n.iter().any(|n| n.contains("testserver"))
        },
    );
    let n = names(&c.kubectl.json(&["get", "node", "node-e2e"]));
    assert!(n.iter().any(|n| n.contains("busybox:1.35")), "{n:?}");
    assert!(n.iter().any(|n| n.contains("pause")), "{n:?}");
    c.kubectl.ok(&[
        "delete",
        "pod",
        "writer",
        "within-request",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_clean();
}

#[test]
fn attach_feeds_stdin_and_streams_output() {
    require_root!();
    let Some(c) = cluster() else { return };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: echo}
spec:
  terminationGracePeriodSeconds: 1
  nodeName: node-e2e
  containers:
  - name: c
    image: berth.local/busybox:1.35
    stdin: true
    command: [sh, -c, "while read l; do echo got:$l; echo err:$l >&2; done"]
"#,
    );
    c.wait_pod("echo", "Ready", ready);
    let mut attach = c
        .kubectl
        .cmd(&["attach", "-i", "echo", "-c", "c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl attach");
    let mut input = attach.stdin.take().expect("stdin");
    let stdout = attach.stdout.take().expect("stdout");
    let stderr = attach.stderr.take().expect("stderr");
    let mut attach = berth_testkit::ChildGuard(attach);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)).map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    // Attached output starts when the session does: write after it is up, and again
    // until the answer comes back.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(seen.iter().any(|l: &String| l == "got:hello") && seen.iter().any(|l| l == "err:hello"))
    {
        assert!(
            Instant::now() < deadline,
            "no echo through attach: {seen:?}"
        );
        std::io::Write::write_all(&mut input, b"hello\n").expect("write stdin");
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push(line);
        }
    }
    let _ = attach.0.kill();
    let logs = c.kubectl.ok(&["logs", "echo"]);
    assert!(logs.contains("got:hello"), "{logs}");
    // A changed image restarts the container with it.
    c.kubectl
        .ok(&["set", "image", "pod/echo", "c=berth.local/testserver:v1"]);
    let pod = c.wait_pod("echo", "the new image running", |p| {
        let s = Cluster::container_status(p, "c");
        s["image"] == "berth.local/testserver:v1"
            && s["restartCount"] == 1
            && s["state"]["running"].is_object()
    });
    assert_eq!(pod["status"]["phase"], "Running");
    c.kubectl
        .ok(&["delete", "pod", "echo", "--wait=true", "--timeout=60s"]);
    c.wait_clean();
}
