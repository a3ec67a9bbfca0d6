//! `berth-server snapshot save|restore|status`: a snapshot saved from a running server
//! while a client keeps writing holds every object acknowledged before the save began,
//! at its resourceVersion; restored into a data dir, a fresh berth-server serves them
//! all to kubectl and goes on from the snapshot's revision. A damaged file, a data dir
//! that holds a store (without `--force`) and a user who is not cluster-admin are
//! refused with errors that say so.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_testkit::BerthServer;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

const SERVER: &str = env!("CARGO_BIN_EXE_berth-server");

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: snap}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: snap}
data: {colour: blue, size: "3"}
---
apiVersion: v1
kind: Secret
metadata: {name: password, namespace: snap}
stringData: {password: hunter2-canary}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: snap}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: snap}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: berth.local/testserver:v1}]
"#;

fn berth_server(args: &[&str]) -> Output {
    Command::new(SERVER)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run berth-server")
}

fn ok(args: &[&str]) -> String {
    let out = berth_server(args);
    assert!(
        out.status.success(),
        "berth-server {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = berth_server(args);
    assert!(
        !out.status.success(),
        "berth-server {args:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `snapshot status`'s `revision:` line.
fn revision(status: &str) -> i64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("revision:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no revision in {status}"))
}

/// `kind/name` → resourceVersion of what kubectl lists in namespace `snap`.
fn versions(k: &berth_testkit::Kubectl) -> BTreeMap<String, String> {
    let list = k.json(&[
        "get",
        "configmaps,secrets,services,deployments",
        "-n",
        "snap",
    ]);
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        // Published (and, on a restored cluster, republished) by the root CA controller.
        .filter(|o| o["metadata"]["name"] != "kube-root-ca.crt")
        .map(|o| {
            (
                format!(
                    "{}/{}",
                    o["kind"].as_str().expect("kind"),
                    o["metadata"]["name"].as_str().expect("name")
                ),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .expect("resourceVersion")
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_snapshot_saved_while_writing_restores_every_acknowledged_object() {
    let home = tempfile::tempdir().expect("temp home");
    let original = BerthServer::start(SERVER.as_ref(), home.path());
    let Some(k) = berth_testkit::Kubectl::find(&original.kubeconfig(), home.path()) else {
        return;
    };
    k.apply(MANIFEST);
    let created = versions(&k);
    assert_eq!(created.len(), 4, "{created:?}");

    // A client writing ConfigMaps as fast as the server acknowledges them.
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, kubeconfig) = (acked.clone(), stop.clone(), original.kubeconfig());
        runtime.spawn(async move {
            let client = berth_control_plane::client::from_kubeconfig(&kubeconfig, "e2e.test")
                .await
                .expect("a client");
            let api: Api<ConfigMap> = Api::namespaced(client, "snap");
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(format!("w-{i}"));
                cm.data = Some([("i".to_owned(), i.to_string())].into());
                let made = api
                    .create(&PostParams::default(), &cm)
                    .await
                    .expect("create a ConfigMap");
                let rv = made.metadata.resource_version.expect("a resourceVersion");
                acked.lock().expect("lock").push((format!("w-{i}"), rv));
                i += 1;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().expect("lock").len() < 50 {
        assert!(
            Instant::now() < deadline,
            "the writer made too little progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before: Vec<(String, String)> = acked.lock().expect("lock").clone();
    let file = home.path().join("cluster.snapshot");
    let kubeconfig = original.kubeconfig().display().to_string();
    let saved = ok(&[
        "snapshot",
        "save",
        &file.display().to_string(),
        "--kubeconfig",
        &kubeconfig,
    ]);
    let during = acked.lock().expect("lock").len();
    // The writer goes on after the save too: the snapshot was taken under load.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().expect("lock").len() < during + 20 {
        assert!(Instant::now() < deadline, "the writer stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(writer).expect("the writer");
    assert!(saved.contains("revision:"), "{saved}");

    let status = ok(&["snapshot", "status", &file.display().to_string()]);
    let snapshot_rev = revision(&status);
    let last_before: i64 = before
        .last()
        .and_then(|(_, rv)| rv.parse().ok())
        .expect("a numeric resourceVersion");
    assert!(
        snapshot_rev >= last_before,
        "the snapshot (revision {snapshot_rev}) misses writes acknowledged before it (up to {last_before})"
    );
    assert!(status.contains("sha256:"), "{status}");
    eprintln!(
        "snapshot at revision {snapshot_rev}: {} creates acknowledged before the save, {during} by its end",
        before.len()
    );

    // A second server, stopped: its data dir holds a store, so restore wants --force.
    let mut restored = BerthServer::start(SERVER.as_ref(), home.path());
    restored.stop();
    let dir = restored.dir().display().to_string();
    let refused = fails(&[
        "snapshot",
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &dir,
    ]);
    assert!(
        refused.contains("already holds a store") && refused.contains("--force"),
        "{refused}"
    );
    ok(&[
        "snapshot",
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &dir,
        "--force",
    ]);
    restored.restart();
    let k2 = berth_testkit::Kubectl::find(&restored.kubeconfig(), home.path())
        .expect("kubectl was found before");

    // Every object acknowledged before the save, at the version it was acknowledged at.
    let now = versions(&k2);
    for (name, rv) in &created {
        if name.starts_with("Deployment/") {
            // Its status is the controllers' to update, before or after the save.
            assert!(
                now.contains_key(name),
                "{name} is missing after the restore"
            );
            continue;
        }
        assert_eq!(now.get(name), Some(rv), "{name} after the restore");
    }
    for (name, rv) in &before {
        assert_eq!(
            now.get(&format!("ConfigMap/{name}")),
            Some(rv),
            "ConfigMap {name}, acknowledged before the save"
        );
    }
    // And nothing written after the snapshot's revision.
    for (name, rv) in &now {
        let rv: i64 = rv.parse().expect("a numeric resourceVersion");
        if !name.starts_with("Deployment/") {
            assert!(
                rv <= snapshot_rev,
                "{name} at {rv} is newer than the snapshot"
            );
        }
    }
    let secret = k2.ok(&[
        "get",
        "secret",
        "password",
        "-n",
        "snap",
        "-o",
        "jsonpath={.data.password}",
    ]);
    assert_eq!(secret.trim(), "aHVudGVyMi1jYW5hcnk=", "the Secret's value");
    let colour = k2.ok(&[
        "get",
        "configmap",
        "settings",
        "-n",
        "snap",
        "-o",
        "jsonpath={.data.colour}",
    ]);
    assert_eq!(colour.trim(), "blue");
    // The restored cluster goes on from the snapshot's revision.
    k2.ok(&[
        "create",
        "configmap",
        "after",
        "-n",
        "snap",
        "--from-literal=a=b",
    ]);
    let after: i64 = k2
        .ok(&[
            "get",
            "configmap",
            "after",
            "-n",
            "snap",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .trim()
        .parse()
        .expect("a numeric resourceVersion");
    assert!(
        after > snapshot_rev,
        "{after} after a snapshot at {snapshot_rev}"
    );
}

fn write_kubeconfig(path: &Path, server: &BerthServer, token: &str) {
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: berth\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: berth, user: u}}\ncurrent-context: c\n",
        server.url(),
        server.ca().display()
    );
    std::fs::write(path, config).expect("write a kubeconfig");
}

#[test]
fn damaged_files_occupied_dirs_and_other_users_are_refused() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(SERVER.as_ref(), home.path());
    let file = home.path().join("good.snapshot");
    let file_arg = file.display().to_string();
    let kubeconfig = server.kubeconfig().display().to_string();
    ok(&["snapshot", "save", &file_arg, "--kubeconfig", &kubeconfig]);

    // Only cluster-admin may copy the store (it holds every Secret).
    let alice = home.path().join("alice.kubeconfig");
    write_kubeconfig(&alice, &server, "alice-token");
    let other = home.path().join("other.snapshot");
    let other_arg = other.display().to_string();
    let err = fails(&[
        "snapshot",
        "save",
        &other_arg,
        "--kubeconfig",
        &alice.display().to_string(),
    ]);
    assert!(err.contains("403") && err.contains("forbidden"), "{err}");
    assert!(!other.exists(), "nothing is written for a refused save");
    let mut part = other.as_os_str().to_owned();
    part.push(".part");
    assert!(!Path::new(&part).exists());

    // A byte changed: status and restore both name the checksum.
    let mut bytes = std::fs::read(&file).expect("read the snapshot");
    let at = bytes.len() - 40;
    bytes[at] ^= 0xff;
    let corrupt = home.path().join("corrupt.snapshot");
    std::fs::write(&corrupt, &bytes).expect("write");
    let corrupt_arg = corrupt.display().to_string();
    let err = fails(&["snapshot", "status", &corrupt_arg]);
    assert!(err.contains("checksum mismatch"), "{err}");
    let target = home.path().join("restored");
    let err = fails(&[
        "snapshot",
        "restore",
        &corrupt_arg,
        "--data-dir",
        &target.display().to_string(),
    ]);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        !target.join("store.redb").exists(),
        "a failed restore leaves no store"
    );

    // Not a snapshot at all.
    let err = fails(&["snapshot", "status", &kubeconfig]);
    assert!(err.contains("not a berth snapshot"), "{err}");

    // The running server's own data dir holds a store.
    let err = fails(&[
        "snapshot",
        "restore",
        &file_arg,
        "--data-dir",
        &server.dir().display().to_string(),
    ]);
    assert!(err.contains("already holds a store"), "{err}");
}
