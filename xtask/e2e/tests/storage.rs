//! Persistent storage end to end, the way a user meets it: berth-server's default
//! StorageClass `local` (provisioner `csi.berth.io`, WaitForFirstConsumer), a berth-csi
//! driver on the node that the agent registers and drives (`--csi-socket`), and the real
//! kubectl. Each test starts its own cluster with every controller (the PV binder,
//! pvc-protection, pv-protection, ephemeral-volume, the garbage collector, the
//! StatefulSet controller among them) and checks what Kubernetes promises: a claim is
//! bound only once its first pod is scheduled, its data outlives the pod, its volume is
//! pinned to the node and deleted (or retained) with it; claims expand; a
//! ReadWriteOncePod claim admits one pod; StatefulSet claims survive their pods; an
//! impossible claim says why it waits; a generic ephemeral volume lives and dies with
//! its pod. Nothing is left mounted afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_testkit::{CsiDriver, require_root};
use serde_json::Value;

mod common;
use common::{Cluster, cluster_storage, events_of, ready};

const WAIT: Duration = Duration::from_secs(90);
const DRIVER: &str = "csi.berth.io";
const TOPOLOGY_KEY: &str = "topology.berth.io/node";

/// A cluster with every controller (berth-server's default `--controllers=true`) and
/// the CSI driver for node `node-e2e`.
fn storage_cluster() -> Option<Cluster> {
    cluster_storage(&[], &[])
}

fn csi(c: &Cluster) -> &CsiDriver {
    c.csi.as_ref().expect("cluster_storage starts a CSI driver")
}

/// A pod `name` (busybox, `sh -c script`) with claim `claim` mounted at `/data`.
fn pod(name: &str, claim: &str, script: &str, restart: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: {restart}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    imagePullPolicy: Never
    command: [sh, -c, '{script}']
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: {claim}}}
"#
    )
}

/// A claim `name` of `size`, of `class` (`None`: the default class).
fn claim(name: &str, size: &str, class: Option<&str>, mode: &str) -> String {
    let class = class
        .map(|c| format!("\n  storageClassName: {c}"))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}}}
spec:
  accessModes: [{mode}]
  resources: {{requests: {{storage: {size}}}}}{class}
"#
    )
}

/// `kubectl get <kind> <name> -o json`, `Null` when it does not exist (any other
/// failure panics).
fn get(c: &Cluster, kind: &str, name: &str) -> Value {
    c.get(kind, name).unwrap_or(Value::Null)
}

fn gone(c: &Cluster, kind: &str, name: &str) -> bool {
    let out = c.kubectl.run(&["get", kind, name, "-o", "name"]);
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")
}

fn phase(v: &Value) -> &str {
    v.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Waits until claim `name` is Bound; returns its PV's name.
fn wait_bound(c: &Cluster, name: &str) -> String {
    c.wait(&format!("claim {name} to be Bound"), WAIT, || {
        phase(&get(c, "pvc", name)) == "Bound"
    });
    let volume = text(&get(c, "pvc", name), "/spec/volumeName").to_owned();
    assert!(!volume.is_empty(), "claim {name} is Bound without a volume");
    volume
}

/// The CSI volume id behind PV `pv`.
fn volume_handle(c: &Cluster, pv: &str) -> String {
    let v = get(c, "pv", pv);
    assert_eq!(text(&v, "/spec/csi/driver"), DRIVER, "{v:#}");
    let handle = text(&v, "/spec/csi/volumeHandle").to_owned();
    assert!(!handle.is_empty(), "PV {pv} has no volumeHandle: {v:#}");
    handle
}

/// The file called `name` somewhere under `dir`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(found) = find_file(&p, name) {
                return Some(found);
            }
        } else if e.file_name() == name {
            return Some(p);
        }
    }
    None
}

/// Mount points under `dir`, from this mount namespace's table.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Nothing of any pod left on the host, and nothing mounted under the driver's dir.
fn assert_clean(c: &Cluster) {
    c.wait_clean();
    let root = csi(c).root.clone();
    let left = mounts_under(&root);
    assert!(
        left.is_empty(),
        "mounts left under {}: {left:?}",
        root.display()
    );
}

/// Deletes `kind/name` without waiting in kubectl, then waits here (a timeout shows
/// the cluster's diagnostics).
fn delete(c: &Cluster, kind: &str, name: &str) {
    c.kubectl.ok(&["delete", kind, name, "--wait=false"]);
    c.wait(&format!("{kind} {name} to be gone"), WAIT, || {
        gone(c, kind, name)
    });
}

/// The header line of each table `kubectl <args>` prints, split into columns.
fn headers(c: &Cluster, args: &[&str]) -> Vec<Vec<String>> {
    c.kubectl
        .ok(args)
        .lines()
        .filter(|l| l.starts_with("NAME "))
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[test]
fn a_claim_keeps_its_data_across_pods() {
    require_root!();
    let Some(c) = storage_cluster() else {
        return;
    };
    c.kubectl
        .apply(&claim("data", "100Mi", None, "ReadWriteOnce"));

    // WaitForFirstConsumer: the binder looks at the claim and leaves it Pending while
    // no pod uses it; nothing is provisioned.
    c.wait("the WaitForFirstConsumer event", WAIT, || {
        events_of(&c, "data")
            .iter()
            .any(|(reason, _)| reason == "WaitForFirstConsumer")
    });
    let pvc = get(&c, "pvc", "data");
    assert_eq!(text(&pvc, "/spec/storageClassName"), "local", "{pvc:#}");
    let row = c.kubectl.ok(&["get", "pvc", "data", "--no-headers"]);
    assert_eq!(row.split_whitespace().nth(1), Some("Pending"), "{row}");
    assert!(text(&pvc, "/spec/volumeName").is_empty(), "{pvc:#}");
    let pvs = c.kubectl.json(&["get", "pv"]);
    assert_eq!(pvs["items"].as_array().map(Vec::len), Some(0), "{pvs:#}");
    assert!(csi(&c).volumes().is_empty(), "{:?}", csi(&c).volumes());

    // The first pod: scheduled, the claim provisioned on its node and bound, the pod
    // writes into the volume.
    c.kubectl.apply(&pod(
        "writer",
        "data",
        "echo hello from writer > /data/hello && sync && exec sleep 3600",
        "Never",
    ));
    c.wait_pod("writer", "Ready", ready);
    let pv_name = wait_bound(&c, "data");
    let pvc = get(&c, "pvc", "data");
    assert_eq!(
        text(
            &pvc,
            "/metadata/annotations/volume.kubernetes.io~1selected-node"
        ),
        "node-e2e",
        "{pvc:#}"
    );
    let pv = get(&c, "pv", &pv_name);
    assert_eq!(
        text(
            &pv,
            "/metadata/annotations/pv.kubernetes.io~1provisioned-by"
        ),
        DRIVER,
        "{pv:#}"
    );
    let pinned = pv
        .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|t| {
            t["matchExpressions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .any(|e| {
            e["key"] == TOPOLOGY_KEY
                && e["values"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|n| n == "node-e2e"))
        });
    assert!(
        pinned,
        "PV not pinned to node-e2e by {TOPOLOGY_KEY}: {pv:#}"
    );
    assert_eq!(text(&pv, "/spec/persistentVolumeReclaimPolicy"), "Delete");
    let handle = volume_handle(&c, &pv_name);
    let dir = csi(&c).volume_dir(&handle);
    assert!(dir.is_dir(), "{} is not a directory", dir.display());
    let hello = find_file(&dir, "hello")
        .unwrap_or_else(|| panic!("the pod's file is not in {}", dir.display()));
    assert_eq!(
        std::fs::read_to_string(&hello).expect("read the volume's file"),
        "hello from writer\n"
    );

    // The kubelet API's summary lists the volume with its claim (NodeGetVolumeStats).
    let summary: Value = serde_json::from_str(&c.kubectl.ok(&[
        "get",
        "--raw",
        "/api/v1/nodes/node-e2e/proxy/stats/summary",
    ]))
    .expect("the summary is JSON");
    let volume = summary["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["podRef"]["name"] == "writer")
        .flat_map(|p| p["volume"].as_array().cloned().unwrap_or_default())
        .find(|v| v["name"] == "data")
        .unwrap_or_else(|| panic!("no stats for volume data of pod writer: {summary:#}"));
    assert_eq!(volume["pvcRef"]["name"], "data", "{volume:#}");
    assert!(
        volume["capacityBytes"].as_u64().is_some_and(|b| b > 0),
        "{volume:#}"
    );
    assert!(volume["usedBytes"].as_u64().is_some(), "{volume:#}");

    // A second pod on the same claim reads what the first wrote.
    delete(&c, "pod", "writer");
    c.kubectl
        .apply(&pod("reader", "data", "cat /data/hello", "Never"));
    c.wait_pod("reader", "Succeeded", |p| phase(p) == "Succeeded");
    let logs = c.kubectl.ok(&["logs", "reader"]);
    assert_eq!(logs.trim(), "hello from writer", "{logs}");

    // kubectl's tables: upstream's columns (pkg/printers/internalversion/printers.go).
    let tables = headers(&c, &["get", "pv,pvc"]);
    assert_eq!(
        tables,
        vec![
            vec![
                "NAME",
                "CAPACITY",
                "ACCESS MODES",
                "RECLAIM POLICY",
                "STATUS",
                "CLAIM",
                "STORAGECLASS",
                "VOLUMEATTRIBUTESCLASS",
                "REASON",
                "AGE"
            ],
            vec![
                "NAME",
                "STATUS",
                "VOLUME",
                "CAPACITY",
                "ACCESS MODES",
                "STORAGECLASS",
                "VOLUMEATTRIBUTESCLASS",
                "AGE"
            ],
        ]
    );
    let row = c.kubectl.ok(&["get", "pvc", "data", "--no-headers"]);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells.get(..6),
        Some(&["data", "Bound", pv_name.as_str(), "100Mi", "RWO", "local"][..]),
        "{row}"
    );
    let row = c.kubectl.ok(&["get", "pv", &pv_name, "--no-headers"]);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells.get(..7),
        Some(
            &[
                pv_name.as_str(),
                "100Mi",
                "RWO",
                "Delete",
                "Bound",
                "default/data",
                "local"
            ][..]
        ),
        "{row}"
    );

    // Pod and claim deleted: reclaim policy Delete removes the PV and the volume.
    delete(&c, "pod", "reader");
    delete(&c, "pvc", "data");
    c.wait("the PV to be deleted", WAIT, || gone(&c, "pv", &pv_name));
    c.wait("the volume's directory to be removed", WAIT, || {
        !dir.exists()
    });
    assert_clean(&c);
}

#[test]
fn retain_keeps_the_volume_released() {
    require_root!();
    let Some(c) = storage_cluster() else {
        return;
    };
    c.kubectl.apply(
        r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: keep}
provisioner: csi.berth.io
reclaimPolicy: Retain
volumeBindingMode: WaitForFirstConsumer
"#,
    );
    c.kubectl
        .apply(&claim("kept", "100Mi", Some("keep"), "ReadWriteOnce"));
    c.kubectl.apply(&pod(
        "writer",
        "kept",
        "echo kept > /data/kept && sync && exec sleep 3600",
        "Never",
    ));
    c.wait_pod("writer", "Ready", ready);
    let pv_name = wait_bound(&c, "kept");
    let pv = get(&c, "pv", &pv_name);
    assert_eq!(
        text(&pv, "/spec/persistentVolumeReclaimPolicy"),
        "Retain",
        "{pv:#}"
    );
    let dir = csi(&c).volume_dir(&volume_handle(&c, &pv_name));

    delete(&c, "pod", "writer");
    delete(&c, "pvc", "kept");
    c.wait("the PV to be Released", WAIT, || {
        phase(&get(&c, "pv", &pv_name)) == "Released"
    });
    let row = c.kubectl.ok(&["get", "pv", &pv_name, "--no-headers"]);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells.get(3..6),
        Some(&["Retain", "Released", "default/kept"][..]),
        "{row}"
    );
    assert!(dir.is_dir(), "{} was removed", dir.display());
    let kept = find_file(&dir, "kept")
        .unwrap_or_else(|| panic!("the pod's file is not in {}", dir.display()));
    assert_eq!(std::fs::read_to_string(kept).expect("read"), "kept\n");
    assert_clean(&c);
}

#[test]
fn expansion_grows_the_claim() {
    require_root!();
    let Some(c) = storage_cluster() else {
        return;
    };
    c.kubectl
        .apply(&claim("grow", "100Mi", None, "ReadWriteOnce"));
    c.kubectl
        .apply(&pod("user", "grow", "exec sleep 3600", "Always"));
    c.wait_pod("user", "Ready", ready);
    let pv_name = wait_bound(&c, "grow");
    assert_eq!(
        text(&get(&c, "pvc", "grow"), "/status/capacity/storage"),
        "100Mi"
    );

    c.kubectl.ok(&[
        "patch",
        "pvc",
        "grow",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"200Mi"}}}}"#,
    ]);
    c.wait("the claim's capacity to be 200Mi", WAIT, || {
        text(&get(&c, "pvc", "grow"), "/status/capacity/storage") == "200Mi"
    });
    let pv = get(&c, "pv", &pv_name);
    assert_eq!(text(&pv, "/spec/capacity/storage"), "200Mi", "{pv:#}");
    // The pod kept running through the expansion.
    assert!(ready(&c.pod("user")), "{:#}", c.pod("user")["status"]);
}

#[test]
fn read_write_once_pod_refuses_a_second_pod() {
    require_root!();
    let Some(c) = storage_cluster() else {
        return;
    };
    c.kubectl
        .apply(&claim("solo", "10Mi", None, "ReadWriteOncePod"));
    c.kubectl
        .apply(&pod("first", "solo", "exec sleep 3600", "Always"));
    c.wait_pod("first", "Ready", ready);
    wait_bound(&c, "solo");

    c.kubectl
        .apply(&pod("second", "solo", "exec sleep 3600", "Always"));
    let mut events = Vec::new();
    c.wait(
        "a FailedScheduling event naming ReadWriteOncePod",
        WAIT,
        || {
            events = events_of(&c, "second");
            events
                .iter()
                .any(|(r, m)| r == "FailedScheduling" && m.contains("ReadWriteOncePod"))
        },
    );
    let second = c.pod("second");
    assert_eq!(phase(&second), "Pending", "{second:#}");
    assert!(text(&second, "/spec/nodeName").is_empty(), "{second:#}");
    assert!(ready(&c.pod("first")), "{:#}", c.pod("first")["status"]);
}

const STATEFULSET: &str = r#"
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
      - name: c
        image: berth.local/busybox:1.35
        imagePullPolicy: Never
        command: [sh, -c, '[ -f /data/id ] || hostname > /data/id; exec sleep 3600']
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 50Mi}}
"#;

#[test]
fn statefulset_claims_survive_pod_deletion() {
    require_root!();
    let Some(c) = storage_cluster() else {
        return;
    };
    c.kubectl.apply(STATEFULSET);
    let out = c
        .kubectl
        .ok(&["rollout", "status", "statefulset/db", "--timeout=180s"]);
    assert!(out.contains("roll out complete"), "{out}");
    let pv0 = wait_bound(&c, "data-db-0");
    let pv1 = wait_bound(&c, "data-db-1");
    assert_ne!(pv0, pv1);
    for pod in ["db-0", "db-1"] {
        let id = c.kubectl.ok(&["exec", pod, "--", "cat", "/data/id"]);
        assert_eq!(id.trim(), pod);
    }

    // db-0 deleted: the StatefulSet makes a new db-0 on the same claim, which finds
    // the id the first one wrote.
    let old_uid = text(&c.pod("db-0"), "/metadata/uid").to_owned();
    c.kubectl.ok(&["delete", "pod", "db-0", "--wait=false"]);
    c.wait_pod("db-0", "a new db-0 Ready", |p| {
        let uid = text(p, "/metadata/uid");
        !uid.is_empty() && uid != old_uid && ready(p)
    });
    let id = c.kubectl.ok(&["exec", "db-0", "--", "cat", "/data/id"]);
    assert_eq!(id.trim(), "db-0");
    assert_eq!(
        wait_bound(&c, "data-db-0"),
        pv0,
        "db-0's claim changed volume"
    );

    // The StatefulSet deleted, then its claims (they outlive it, as upstream's
    // default persistentVolumeClaimRetentionPolicy Retain says): the volumes go.
    c.kubectl
        .ok(&["delete", "statefulset/db", "service/db", "--wait=false"]);
    c.wait("every pod gone", WAIT, || {
        let pods = c.kubectl.json(&["get", "pods"]);
        pods["items"].as_array().is_some_and(Vec::is_empty)
    });
    for claim in ["data-db-0", "data-db-1"] {
        delete(&c, "pvc", claim);
    }
    for pv in [&pv0, &pv1] {
        c.wait(&format!("PV {pv} to be deleted"), WAIT, || {
            gone(&c, "pv", pv)
        });
    }
    c.wait("the volumes to be removed", WAIT, || {
        csi(&c).volumes().is_empty()
    });
    assert_clean(&c);
}

#[test]
fn an_oversized_claim_stays_pending_with_a_reason() {
    require_root!();
    let Some(c) = storage_cluster() else {
        return;
    };
    c.kubectl
        .apply(&claim("huge", "100Ti", None, "ReadWriteOnce"));
    c.kubectl
        .apply(&pod("hungry", "huge", "exec sleep 3600", "Always"));
    // Upstream says so either at scheduling (storage capacity tracking:
    // FailedScheduling "… did not have enough free storage") or at provisioning
    // (ProvisioningFailed with the driver's ResourceExhausted message).
    let mut why = None;
    c.wait("an event saying why the claim waits", WAIT, || {
        why = events_of(&c, "hungry")
            .into_iter()
            .filter(|(r, _)| r == "FailedScheduling")
            .chain(
                events_of(&c, "huge")
                    .into_iter()
                    .filter(|(r, _)| r == "ProvisioningFailed"),
            )
            .find(|(_, m)| !m.is_empty());
        why.is_some()
    });
    let (reason, message) = why.unwrap_or_default();
    let lower = message.to_lowercase();
    assert!(
        ["storage", "capacity", "space", "exhausted", "insufficient"]
            .iter()
            .any(|w| lower.contains(w)),
        "{reason}: {message:?} does not say the claim is too big"
    );
    let hungry = c.pod("hungry");
    assert_eq!(phase(&hungry), "Pending", "{hungry:#}");
    assert!(text(&hungry, "/spec/nodeName").is_empty(), "{hungry:#}");
    assert_eq!(phase(&get(&c, "pvc", "huge")), "Pending");
    let pvs = c.kubectl.json(&["get", "pv"]);
    assert_eq!(pvs["items"].as_array().map(Vec::len), Some(0), "{pvs:#}");
    assert!(csi(&c).volumes().is_empty(), "{:?}", csi(&c).volumes());
}

#[test]
fn generic_ephemeral_volume() {
    require_root!();
    let Some(c) = storage_cluster() else {
        return;
    };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    imagePullPolicy: Never
    command: [sh, -c, 'echo scratch > /scratch/f && exec sleep 3600']
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes:
  - name: scratch
    ephemeral:
      volumeClaimTemplate:
        spec:
          accessModes: [ReadWriteOnce]
          resources: {requests: {storage: 10Mi}}
"#,
    );
    // The ephemeral-volume controller names the claim `<pod>-<volume>` and makes the
    // pod its controlling owner.
    c.wait("claim app-scratch to exist", WAIT, || {
        !gone(&c, "pvc", "app-scratch")
    });
    let pvc = get(&c, "pvc", "app-scratch");
    let pod_uid = text(&c.pod("app"), "/metadata/uid").to_owned();
    let owned = pvc["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o["kind"] == "Pod" && o["uid"] == pod_uid.as_str() && o["controller"] == true);
    assert!(owned, "the claim is not controlled by pod app: {pvc:#}");
    c.wait_pod("app", "Ready", ready);
    let pv_name = wait_bound(&c, "app-scratch");
    let out = c.kubectl.ok(&["exec", "app", "--", "cat", "/scratch/f"]);
    assert_eq!(out.trim(), "scratch");
    let dir = csi(&c).volume_dir(&volume_handle(&c, &pv_name));
    assert!(dir.is_dir(), "{} is not a directory", dir.display());

    // The pod deleted: the garbage collector deletes its claim, the claim's volume goes.
    delete(&c, "pod", "app");
    c.wait("the garbage collector to delete app-scratch", WAIT, || {
        gone(&c, "pvc", "app-scratch")
    });
    c.wait("the PV to be deleted", WAIT, || gone(&c, "pv", &pv_name));
    c.wait("the volume's directory to be removed", WAIT, || {
        !dir.exists()
    });
    assert_clean(&c);
}

#[test]
fn an_agent_killed_mid_life_still_unmounts_and_fs_group_owns_the_volume() {
    require_root!();
    let Some(mut c) = storage_cluster() else {
        return;
    };
    c.kubectl
        .apply(&claim("kept", "20Mi", None, "ReadWriteOnce"));
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: owner}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {fsGroup: 2345, fsGroupChangePolicy: OnRootMismatch}
  containers:
  - name: c
    image: berth.local/busybox:1.35
    imagePullPolicy: Never
    command: [sh, -c, 'exec sleep 3600']
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: kept}
"#,
    );
    c.wait_pod("owner", "Ready", ready);
    // fsGroup: the kubelet's SetVolumeOwnership (group, setgid directory).
    let stat = c
        .kubectl
        .ok(&["exec", "owner", "--", "stat", "-c", "%g %A", "/data"]);
    let mut parts = stat.split_whitespace();
    assert_eq!(parts.next(), Some("2345"), "{stat}");
    let mode = parts.next().unwrap_or_default();
    assert_eq!(mode.chars().nth(6), Some('s'), "no setgid bit: {stat}");
    let pod_uid = text(&c.pod("owner"), "/metadata/uid").to_owned();
    let target_root = c.agent.root_dir().join("pods").join(&pod_uid);
    assert!(
        !mounts_under(&target_root).is_empty(),
        "the volume is not published under {}",
        target_root.display()
    );
    // The agent dies with the volume staged and published, and comes back.
    c.agent.kill();
    c.agent.restart();
    // The restarted agent serves exec again and the volume is still there.
    let mut out = String::new();
    c.wait("exec into the pod after the agent's restart", WAIT, || {
        let o = c.kubectl.run(&[
            "exec",
            "owner",
            "--",
            "sh",
            "-c",
            "echo again > /data/f; cat /data/f",
        ]);
        out = String::from_utf8_lossy(&o.stdout).into_owned();
        o.status.success()
    });
    assert_eq!(out.trim(), "again");
    assert!(ready(&c.pod("owner")), "{:#}", c.pod("owner")["status"]);
    // The restarted agent tears the pod down through the driver: unpublished and
    // unstaged, nothing left mounted.
    delete(&c, "pod", "owner");
    assert_clean(&c);
    let staging = c.agent.root_dir().join("plugins/kubernetes.io/csi");
    assert!(
        mounts_under(&staging).is_empty(),
        "staging mounts left: {:?}",
        mounts_under(&staging)
    );
    let log = std::fs::read_to_string(csi(&c).log_file()).unwrap_or_default();
    assert!(log.contains("unpublished volume"), "{log}");
    assert!(log.contains("unstaged volume"), "{log}");
}

#[test]
fn immediate_classes_bind_without_a_pod_and_bad_parameters_are_named() {
    require_root!();
    let Some(c) = storage_cluster() else {
        return;
    };
    c.kubectl.apply(
        r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: now}
provisioner: csi.berth.io
volumeBindingMode: Immediate
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: typo}
provisioner: csi.berth.io
volumeBindingMode: Immediate
parameters: {sizeLimit: 10Mi}
"#,
    );
    // Immediate: provisioned on the node whose agent takes it first, without any pod.
    c.kubectl
        .apply(&claim("early", "10Mi", Some("now"), "ReadWriteOnce"));
    let pv = wait_bound(&c, "early");
    let v = get(&c, "pv", &pv);
    let affinity =
        &v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(affinity["key"], TOPOLOGY_KEY, "{v:#}");
    assert_eq!(affinity["values"][0], "node-e2e", "{v:#}");
    assert_eq!(
        text(
            &get(&c, "pvc", "early"),
            "/metadata/annotations/volume.kubernetes.io~1selected-node"
        ),
        "node-e2e"
    );
    // A parameter the driver does not know: ProvisioningFailed names it; nothing made.
    c.kubectl
        .apply(&claim("wrong", "10Mi", Some("typo"), "ReadWriteOnce"));
    let mut message = String::new();
    c.wait("ProvisioningFailed naming the parameter", WAIT, || {
        message = events_of(&c, "wrong")
            .into_iter()
            .find(|(r, _)| r == "ProvisioningFailed")
            .map(|(_, m)| m)
            .unwrap_or_default();
        !message.is_empty()
    });
    assert!(message.contains("sizeLimit"), "{message}");
    assert!(message.contains("InvalidArgument"), "{message}");
    assert_eq!(phase(&get(&c, "pvc", "wrong")), "Pending");
    assert_eq!(csi(&c).volumes().len(), 1, "{:?}", csi(&c).volumes());
    delete(&c, "pvc", "early");
    c.wait("the PV to be deleted", WAIT, || gone(&c, "pv", &pv));
    delete(&c, "pvc", "wrong");
    c.wait("the volume to be removed", WAIT, || {
        csi(&c).volumes().is_empty()
    });
}
