//! Multi-node clusters made by `cargo xtask up --nodes N`, as a user makes them: every
//! node a network-namespace host on a segment of the test's own (own hostname, `eth0`,
//! pod bridge, cgroup subtree), this host running the control plane.
//!
//! Three nodes over a 3-member etcd with two berth-servers, the nodes running the
//! binaries and eBPF object of the `cargo xtask dist` tarball, routed pod network: a
//! Deployment spread over the nodes by topology spread, pod-to-pod TCP across nodes, a
//! ClusterIP Service from a pod on node1 to its backend on node3, the Service's name
//! answered by the cluster DNS on every node, a NodePort on node2 reaching the backend on node3, and a
//! node cut off the network whose pod the taint manager evicts and the Deployment
//! replaces on another node; then server 1 killed, the agents failing over to server 2
//! and a new pod scheduled and started through it. Two nodes over VXLAN: pods and Services across the
//! overlay. Ctrl-C and `down` leave nothing (namespaces, links, cgroups, mounts, state).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::{Kubectl, require_root, skip, workspace_bin};
use common::dist::Tarball;
use common::up::{UpDown, wait_for};
use serde_json::Value;

/// The xtask binary `cargo xtask test` built, or `None` (skipped).
fn xtask() -> Option<PathBuf> {
    let xtask = workspace_bin("xtask");
    if xtask.exists() {
        return Some(xtask);
    }
    skip(&format!(
        "{} is not built (run the tests through `cargo xtask test`)",
        xtask.display()
    ));
    None
}

/// A /24 of the test's own for the nodes' segment (`which` tells two tests of one
/// process apart).
fn node_subnet(which: u32) -> String {
    format!("10.{}.{}.0/24", 215 + which, std::process::id() % 250)
}

/// Starts `up` with `extra` flags; returns the kubectl for its admin kubeconfig.
fn start(t: &mut UpDown) -> Option<Kubectl> {
    let home = t.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("kubectl's HOME");
    t.start_up();
    t.wait_line("berth is up", Duration::from_secs(300));
    let export = t.wait_line("export KUBECONFIG=", Duration::from_secs(10));
    let kubeconfig = PathBuf::from(export.trim().trim_start_matches("export KUBECONFIG="));
    Kubectl::find(&kubeconfig, &home)
}

fn nodes(kubectl: &Kubectl) -> Vec<Value> {
    kubectl.json(&["get", "nodes"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn internal_ip(node: &Value) -> String {
    node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Pods with `selector`: (name, node, pod IP, phase, deleting).
fn pods(kubectl: &Kubectl, selector: &str) -> Vec<(String, String, String, String, bool)> {
    kubectl.json(&["get", "pods", "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&p["metadata"]["name"]),
                s(&p["spec"]["nodeName"]),
                s(&p["status"]["podIP"]),
                s(&p["status"]["phase"]),
                !p["metadata"]["deletionTimestamp"].is_null(),
            )
        })
        .collect()
}

/// An HTTP GET from pod `from` to `addr` (`ip:port`): the body, or the error.
/// (busybox-static's wget crashes; nc speaks the HTTP/1.0 needed.)
fn http_from(kubectl: &Kubectl, from: &str, addr: &str) -> Result<String, String> {
    let (ip, port) = addr.rsplit_once(':').unwrap_or((addr, "80"));
    let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}");
    let out = kubectl.run(&["exec", from, "--", "sh", "-c", &request]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.split("\r\n\r\n").nth(1) {
        Some(body) if out.status.success() => Ok(body.trim().to_owned()),
        _ => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// Retries [`http_from`] until it answers `want` (Services and routes settle in
/// seconds).
fn http_until(kubectl: &Kubectl, t: &UpDown, from: &str, addr: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = http_from(kubectl, from, addr);
        if last.as_deref().is_ok_and(|b| b == want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "{from} → {addr}: wanted {want:?}, last answer {last:?}; {}",
        t.diagnostics()
    );
}

/// The `backend` Service's ClusterIP, once pod `from` reaches the backend through it.
fn backend_by_cluster_ip(kubectl: &Kubectl, t: &UpDown, from: &str) -> String {
    let ip = kubectl
        .ok(&[
            "get",
            "service",
            "backend",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .trim()
        .to_owned();
    http_until(kubectl, t, from, &format!("{ip}:80"), "backend");
    ip
}

/// An HTTP GET from this host (the test's own address on the segment).
fn http_get(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(
        &addr.parse().map_err(std::io::Error::other)?,
        Duration::from_secs(3),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// Namespaces, links, dirs and cgroups `up` made that are still there.
fn leftovers(t: &UpDown) -> Vec<String> {
    let mut left = Vec::new();
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    left.extend(
        netns
            .lines()
            .filter(|l| l.starts_with(&format!("{}-", t.bridge)))
            .map(|l| format!("netns {l}")),
    );
    let host_link = format!("{}-h", t.bridge);
    let link = Command::new("ip")
        .args(["link", "show", &host_link])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if link {
        left.push(format!("link {host_link}"));
    }
    for dir in [&t.data, &t.run, &t.bpf_pins] {
        if dir.exists() {
            left.push(dir.display().to_string());
        }
    }
    left.extend(
        t.cgroup_dirs()
            .iter()
            .map(|d| format!("cgroup {}", d.display())),
    );
    left.extend(t.mounts().iter().map(|m| format!("mount {}", m.display())));
    left
}

/// Ctrl-C, then `down`: nothing of the cluster is left on the host.
fn stop_and_remove(t: &mut UpDown) {
    let status = t.interrupt_up(Duration::from_secs(180));
    assert!(
        status.success(),
        "up exits 0 on Ctrl-C: {status}; {}",
        t.diagnostics()
    );
    let out = t.down();
    assert!(
        out.status.success(),
        "xtask down: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let left = leftovers(t);
    assert!(left.is_empty(), "after down nothing is left: {left:?}");
}

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      containers:
      - name: web
        image: berth.local/testserver:v1
        imagePullPolicy: Never
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe}
spec:
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: berth.local/busybox:1.35
        imagePullPolicy: Never
        command: [sh, -c, "exec sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: backend, labels: {app: backend}}
spec:
  nodeName: LAST
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: berth.local/testserver:v1
    imagePullPolicy: Never
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: backend}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: backend-np}
spec:
  type: NodePort
  selector: {app: backend}
  ports: [{port: 80, targetPort: 8080}]
"#;

const MOVER: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: mover}
spec:
  replicas: 1
  selector: {matchLabels: {app: mover}}
  template:
    metadata: {labels: {app: mover}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers:
      - name: c
        image: berth.local/busybox:1.35
        imagePullPolicy: Never
        command: [sh, -c, "exec sleep 3600"]
"#;

/// The node → name of the `probe` DaemonSet's pod on it, once one runs on each of
/// `count` nodes.
fn probes(
    kubectl: &Kubectl,
    t: &UpDown,
    count: usize,
) -> std::collections::BTreeMap<String, String> {
    let mut by_node = std::collections::BTreeMap::new();
    wait_for(
        "a running probe pod on every node",
        Duration::from_secs(180),
        || t.diagnostics(),
        || {
            by_node = pods(kubectl, "app=probe")
                .into_iter()
                .filter(|p| p.3 == "Running")
                .map(|p| (p.1, p.0))
                .collect();
            by_node.len() == count
        },
    );
    by_node
}

#[test]
fn three_nodes_on_etcd_spread_route_balance_resolve_and_reschedule() {
    require_root!();
    if !berth_testkit::Etcd::available() {
        return;
    }
    let Some(xtask) = xtask() else { return };
    // The nodes run what a host gets from the release tarball: its bin/ (agent, runtime,
    // CNI plugin, CSI driver) and its eBPF object.
    let tarball = Tarball::get();
    let unpacked = tempfile::tempdir().expect("tempdir");
    let release = tarball.unpack(unpacked.path());
    let node_bins = release.join("bin").display().to_string();
    let ebpf = release
        .join("lib/berth/berth-ebpf-programs")
        .display()
        .to_string();
    let subnet = node_subnet(0);
    let mut t = UpDown::new(
        xtask,
        &[
            "--nodes",
            "3",
            "--etcd",
            "--node-subnet",
            &subnet,
            "--cluster-cidr",
            "10.217.0.0/16",
            "--pod-network-mode",
            "routed",
            "--node-bin-dir",
            &node_bins,
            "--ebpf-object",
            &ebpf,
        ],
    );
    let Some(kubectl) = start(&mut t) else { return };

    // Three Ready nodes, each with a podCIDR of its own from the cluster CIDR and its
    // address on the segment.
    let all = nodes(&kubectl);
    let mut names: Vec<String> = all
        .iter()
        .map(|n| {
            n["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["node1", "node2", "node3"], "{all:?}");
    let mut cidrs: Vec<&str> = all
        .iter()
        .map(|n| n["spec"]["podCIDR"].as_str().unwrap_or_default())
        .collect();
    cidrs.sort();
    cidrs.dedup();
    assert_eq!(cidrs.len(), 3, "one podCIDR each: {cidrs:?}");
    assert!(cidrs.iter().all(|c| c.starts_with("10.217.")), "{cidrs:?}");
    let prefix = subnet.trim_end_matches("0/24");
    let ip_of = |name: &str| {
        all.iter()
            .find(|n| n["metadata"]["name"] == name)
            .map(internal_ip)
            .unwrap_or_default()
    };
    assert_eq!(ip_of("node2"), format!("{prefix}12"));
    // The nodes' agents run the tarball's binary.
    for node in ["node1", "node2", "node3"] {
        let pid_file = t.run.join(format!("nodes/{node}/agent.pid"));
        let pid = std::fs::read_to_string(&pid_file).expect("the agent's PID file");
        let exe = std::fs::read_link(format!("/proc/{}/exe", pid.trim())).unwrap_or_default();
        assert_eq!(exe, release.join("bin/berth-agent"), "{node}'s agent");
    }
    // The `kubernetes` Service lists both servers. Each server rewrites the endpoints
    // from the master leases its watch cache holds, so right after start one may
    // have written them before it saw the other's lease; it rewrites them when the
    // lease reaches it, and at the latest at its next renewal (10 s).
    let addresses = || {
        let eps = kubectl.json(&["get", "endpoints", "kubernetes"]);
        let n = eps["subsets"][0]["addresses"]
            .as_array()
            .map_or(0, Vec::len);
        (n, eps)
    };
    wait_for(
        "both servers in the kubernetes endpoints",
        Duration::from_secs(30),
        || format!("{}", addresses().1),
        || addresses().0 == 2,
    );

    kubectl.apply(&WORKLOADS.replace("LAST", "node3"));
    wait_for(
        "3 ready web replicas",
        Duration::from_secs(180),
        || t.diagnostics(),
        || kubectl.json(&["get", "deployment", "web"])["status"]["readyReplicas"] == 3,
    );
    let web = pods(&kubectl, "app=web");
    let mut spread: Vec<&str> = web.iter().map(|p| p.1.as_str()).collect();
    spread.sort();
    assert_eq!(
        spread,
        ["node1", "node2", "node3"],
        "one replica per node: {web:?}"
    );
    let probes = probes(&kubectl, &t, 3);
    let on1 = probes["node1"].clone();

    // Pod to pod across nodes: node1 → the web replica on node3 (and node2).
    for node in ["node3", "node2"] {
        let (name, _, ip, ..) = web.iter().find(|p| p.1 == node).expect("a replica").clone();
        http_until(&kubectl, &t, &on1, &format!("{ip}:8080"), &name);
    }
    // ClusterIP, by name, from node1 to the backend on node3.
    wait_for(
        "the backend to be ready",
        Duration::from_secs(120),
        || t.diagnostics(),
        || {
            kubectl
                .run(&[
                    "get",
                    "pod",
                    "backend",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .stdout
                == b"True"
        },
    );
    let cluster_ip = backend_by_cluster_ip(&kubectl, &t, &on1);
    // DNS answers on every node.
    for (node, pod) in &probes {
        let out = kubectl.run(&[
            "exec",
            pod,
            "--",
            "nslookup",
            "backend.default.svc.cluster.local",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&cluster_ip),
            "DNS on {node} ({pod}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A NodePort on node2, from this host, to the backend on node3.
    let np = kubectl.ok(&[
        "get",
        "service",
        "backend-np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let target = format!("{}:{}", ip_of("node2"), np.trim());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Ok(String::new());
    while Instant::now() < deadline {
        last = http_get(&target);
        if last.as_deref().is_ok_and(|b| b == "backend") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        last.as_deref().ok(),
        Some("backend"),
        "NodePort {target}: {last:?}; {}",
        t.diagnostics()
    );

    // A Deployment whose one replica lands on node3 (the others cordoned meanwhile),
    // tolerating an unreachable node for 2 s.
    kubectl.ok(&["cordon", "node1", "node2"]);
    kubectl.apply(MOVER);
    let mut first = String::new();
    wait_for(
        "the mover replica running on node3",
        Duration::from_secs(120),
        || t.diagnostics(),
        || {
            let now = pods(&kubectl, "app=mover");
            match now.iter().find(|p| p.3 == "Running") {
                Some(p) => {
                    first = p.0.clone();
                    assert_eq!(p.1, "node3", "the only schedulable node: {now:?}");
                    true
                }
                None => false,
            }
        },
    );
    kubectl.ok(&["uncordon", "node1", "node2"]);
    // node3 is cut off (its cable unplugged): the node controller finds its Lease
    // stale, marks it Unknown and taints it unreachable; the taint manager evicts the
    // replica after its 2 s toleration and the Deployment replaces it on a live node.
    let seg = format!("{}-seg", t.bridge);
    let unplug = Command::new("ip")
        .args(["-n", &seg, "link", "set", "p3", "down"])
        .status()
        .expect("run ip");
    assert!(unplug.success(), "unplugging node3");
    wait_for(
        "node3 tainted unreachable",
        Duration::from_secs(120),
        || t.diagnostics(),
        || {
            let n = kubectl.json(&["get", "node", "node3"]);
            n["spec"]["taints"].as_array().is_some_and(|ts| {
                ts.iter().any(|t| {
                    t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"
                })
            })
        },
    );
    wait_for(
        "the replica on node3 evicted and replaced on a live node",
        Duration::from_secs(120),
        || format!("{:?}; {}", pods(&kubectl, "app=mover"), t.diagnostics()),
        || {
            let now = pods(&kubectl, "app=mover");
            let evicted = now.iter().all(|p| p.0 != first || p.4);
            let moved = now
                .iter()
                .any(|p| !p.4 && p.3 == "Running" && (p.1 == "node1" || p.1 == "node2"));
            evicted && moved
        },
    );

    // Server 1 killed (kill -9): the agents fail over to server 2 (`--api-servers`) and
    // keep renewing their Leases through it, its scheduler and controllers take the
    // leases, the `kubernetes` Endpoints drop to the live server, and a new pod is
    // scheduled and started.
    let pid = std::fs::read_to_string(t.run.join("server.pid")).expect("server 1's PID");
    let pid = nix::unistd::Pid::from_raw(pid.trim().parse().expect("a PID"));
    let killed = jiff::Timestamp::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill server 1");
    let home = t.dir.path().join("home");
    let k2 = Kubectl::find(&t.data.join("server2/admin.kubeconfig"), &home)
        .expect("kubectl for server 2");
    for node in ["node1", "node2"] {
        wait_for(
            &format!("{node}'s Lease renewed through server 2"),
            Duration::from_secs(90),
            || t.diagnostics(),
            || {
                let out = k2.run(&[
                    "get",
                    "lease",
                    "-n",
                    "kube-node-lease",
                    node,
                    "-o",
                    "jsonpath={.spec.renewTime}",
                ]);
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<jiff::Timestamp>()
                    .is_ok_and(|renewed| renewed > killed)
            },
        );
    }
    wait_for(
        "the kubernetes Endpoints down to server 2",
        Duration::from_secs(60),
        || t.diagnostics(),
        || {
            let eps = k2.json(&["get", "endpoints", "kubernetes"]);
            eps["subsets"][0]["addresses"]
                .as_array()
                .map_or(0, Vec::len)
                == 1
                && eps["subsets"][0]["addresses"][0]["ip"] == format!("{prefix}2")
        },
    );
    k2.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: after-failover, labels: {app: after}}
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
        "a pod scheduled and running after server 1 died",
        Duration::from_secs(120),
        || t.diagnostics(),
        || {
            pods(&k2, "app=after")
                .iter()
                .any(|p| p.3 == "Running" && p.1 != "node3")
        },
    );
    stop_and_remove(&mut t);
}

#[test]
fn two_nodes_over_vxlan_reach_pods_and_services() {
    require_root!();
    let Some(xtask) = xtask() else { return };
    let subnet = node_subnet(1);
    let mut t = UpDown::new(
        xtask,
        &[
            "--nodes",
            "2",
            "--node-subnet",
            &subnet,
            "--cluster-cidr",
            "10.218.0.0/16",
            "--pod-network-mode",
            "vxlan",
        ],
    );
    let Some(kubectl) = start(&mut t) else { return };
    assert_eq!(nodes(&kubectl).len(), 2);
    // The overlay device in each node host.
    for node in ["node1", "node2"] {
        let out = Command::new("ip")
            .args([
                "-n",
                &format!("{}-{node}", t.bridge),
                "-d",
                "link",
                "show",
                "berth.vxlan",
            ])
            .output()
            .expect("run ip");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("vxlan id 1"), "{node}: {text}");
    }
    kubectl.apply(
        &WORKLOADS
            .replace("LAST", "node2")
            .replace("replicas: 3", "replicas: 2"),
    );
    let probes = probes(&kubectl, &t, 2);
    wait_for(
        "2 ready web replicas",
        Duration::from_secs(180),
        || t.diagnostics(),
        || kubectl.json(&["get", "deployment", "web"])["status"]["readyReplicas"] == 2,
    );
    let web = pods(&kubectl, "app=web");
    let (name, _, ip, ..) = web
        .iter()
        .find(|p| p.1 == "node2")
        .expect("a replica on node2")
        .clone();
    http_until(&kubectl, &t, &probes["node1"], &format!("{ip}:8080"), &name);
    backend_by_cluster_ip(&kubectl, &t, &probes["node1"]);
    stop_and_remove(&mut t);
}
