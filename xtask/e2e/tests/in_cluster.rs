//! In-cluster clients: the Python `kubernetes` client's `load_incluster_config()` run
//! inside a berth pod (the host's Python and the tools venv mounted read-only through
//! hostPath; busybox has none) finds the API through `KUBERNETES_SERVICE_HOST/PORT`,
//! verifies it with the `kube-root-ca.crt` CA and authenticates with the projected
//! ServiceAccount token the admission plugin mounted — and RBAC applies to it: a Role
//! allowing ConfigMap reads lets it list ConfigMaps, Secrets stay 403.
//!
//! The test's berth-server listens on the host's 127.0.0.1, which the pod network (a
//! namespace of the test's) cannot reach: the test relays the pod network's gateway
//! address to it and points the `kubernetes` Service's endpoints there, as a cluster
//! whose apiserver advertises a routable address has them; the socket-LB translates
//! the ClusterIP as for any Service.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Forwards connections to a listener in the pod network to `target` on the host,
/// until dropped.
struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(listener: TcpListener, target: u16) -> Self {
        let port = listener.local_addr().expect("relay address").port();
        listener.set_nonblocking(true).expect("nonblocking relay");
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inbound, _)) => {
                        let _ = inbound.set_nonblocking(false);
                        if let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) {
                            pipe(inbound, outbound);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => return,
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies both ways between two connections (a thread each; they end with them).
fn pipe(a: TcpStream, b: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        copy(a, b2);
        copy(b, a2);
    }
}

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
    // The `kubernetes` endpoints are the test's to point at the relay (no master
    // lease rewrites them).
    let Some(c) = cluster_with(&["--endpoint-reconciler-type=none"]) else {
        return;
    };
    let k = &c.kubectl;
    // The pod network's gateway, relayed to the apiserver, as the `kubernetes` endpoint.
    let gateway = "10.77.0.1";
    // The pod network (its bridge and gateway address) comes with the first pod.
    k.ok(&[
        "run",
        "first",
        "--image=berth.local/busybox:1.35",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ]);
    c.wait_pod("first", "ready", common::ready);
    let mut listener = None;
    c.wait(
        "the pod network's gateway address",
        Duration::from_secs(30),
        || {
            listener = c.agent.netns.run(|| TcpListener::bind((gateway, 0)).ok());
            listener.is_some()
        },
    );
    let listener = listener.expect("a listener in the pod network");
    let relay = Relay::start(listener, c.server.port());
    let port = relay.port;
    k.ok(&["patch", "endpoints", "kubernetes", "--type=merge", "-p",
        &format!(r#"{{"subsets":[{{"addresses":[{{"ip":"{gateway}"}}],"ports":[{{"name":"https","port":{port},"protocol":"TCP"}}]}}]}}"#)]);
    k.ok(&["patch", "endpointslice", "kubernetes", "--type=merge", "-p",
        &format!(r#"{{"endpoints":[{{"addresses":["{gateway}"],"conditions":{{"ready":true}}}}],"ports":[{{"name":"https","port":{port},"protocol":"TCP"}}]}}"#)]);
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
  restartPolicy: Never
  volumes:
  - {{name: usr, hostPath: {{path: /usr, type: Directory}}}}
  - {{name: venv, hostPath: {{path: "{venv}", type: Directory}}}}
  containers:
  - name: py
    image: berth.local/busybox:1.35
    env:
    - {{name: PYTHONPATH, value: "/venv/lib/python3.11/site-packages"}}
    - {{name: PYTHONHOME, value: /host/usr}}
    volumeMounts:
    - {{name: usr, mountPath: /host/usr, readOnly: true}}
    - {{name: venv, mountPath: /venv, readOnly: true}}
    command:
    - /host/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
    - --library-path
    - /host/usr/lib/x86_64-linux-gnu
    - /host/usr/bin/python3.11
    - -c
    - |
      {script}
"#,
        venv = venv.display(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let pod = loop {
        let pod = c.pod("incluster");
        if matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        ) {
            break pod;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pod did not finish: {pod:#}\nevents: {}\nagent log:\n{}",
            k.ok(&["get", "events"]),
            std::fs::read_to_string(c.agent.log_file()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
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
    k.ok(&[
        "delete",
        "pod",
        "incluster",
        "first",
        "--wait=true",
        "--timeout=60s",
    ]);
    k.ok(&["delete", "rolebinding,role", "cm-reader"]);
    k.ok(&["delete", "serviceaccount", "reader"]);
    k.ok(&["delete", "configmap", "visible"]);
    k.ok(&["delete", "secret", "hidden"]);
    c.wait_clean();
    drop(relay);
}
