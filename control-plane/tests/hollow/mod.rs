//! Hollow nodes for control-plane tests: Node objects with capacity, and a small fake
//! kubelet that renews their Leases, marks the pods bound to them Running and Ready
//! (each with an IP of its own) and finishes their graceful deletion — until a node is
//! "killed", after which it goes silent like a dead host. A pod annotated
//! `hollow.berth.io/exit-code: "N"` runs for one tick (or
//! `hollow.berth.io/run-ms` milliseconds) and then ends: Succeeded for 0, Failed with
//! that exit code otherwise.

#[allow(dead_code, reason = "each test binary uses what it needs")]
pub mod metrics;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[allow(dead_code, reason = "each test binary uses what it needs")]
pub async fn node(
    client: &kube::Client,
    name: &str,
    cpu: &str,
    labels: serde_json::Value,
    taints: serde_json::Value,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &n)
        .await
        .expect("create node");
    let status = json!({"status": {
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("node status");
}

#[allow(dead_code, reason = "each test binary uses what it needs")]
pub async fn pod(client: &kube::Client, name: &str, spec: serde_json::Value) {
    default_service_account(client, "default").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut base = json!({"containers": [{"name": "c", "image": "busybox"}]});
    if let (Some(b), Some(extra)) = (base.as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            b.insert(k.clone(), v.clone());
        }
    }
    let p: Pod =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": base})).expect("pod");
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create pod");
}

/// Waits for `namespace`'s default ServiceAccount, which the serviceaccount controller
/// makes a moment after the namespace: pods are admitted once it exists, and on a busy
/// machine it may come later than admission's own 1.35 s wait for it.
#[allow(dead_code, reason = "each test binary uses what it needs")]
pub async fn default_service_account(client: &kube::Client, namespace: &str) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    eventually(
        "the default ServiceAccount",
        Duration::from_secs(20),
        || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.ok()?.map(drop) }
        },
    )
    .await;
}

/// The fake kubelet of a set of hollow nodes; stopped on drop.
#[allow(dead_code, reason = "each test binary uses what it needs")]
pub struct Kubelet {
    dead: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[allow(dead_code, reason = "each test binary uses what it needs")]
impl Kubelet {
    pub fn start(client: kube::Client, nodes: &[&str]) -> Self {
        let nodes: Vec<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
        let dead: Arc<Mutex<HashSet<String>>> = Arc::default();
        let task = tokio::spawn(run(client, nodes, dead.clone()));
        Kubelet { dead, task }
    }

    /// The node's kubelet dies: no more Lease renewals, status or deletions.
    pub fn kill(&self, node: &str) {
        self.dead.lock().expect("lock").insert(node.to_owned());
    }
}

async fn run(client: kube::Client, nodes: Vec<String>, dead: Arc<Mutex<HashSet<String>>>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut next_ip = 1u32;
    let mut tick = 0u64;
    loop {
        let alive: Vec<String> = {
            let dead = dead.lock().expect("lock");
            nodes
                .iter()
                .filter(|n| !dead.contains(*n))
                .cloned()
                .collect()
        };
        if tick.is_multiple_of(5) {
            for n in &alive {
                let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    jiff::Timestamp::now(),
                );
                let lease: Lease = serde_json::from_value(json!({
                    "metadata": {"name": n, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": n, "leaseDurationSeconds": 40, "renewTime": now},
                }))
                .expect("lease");
                if leases.create(&PostParams::default(), &lease).await.is_err() {
                    let patch = json!({"spec": {"renewTime": now}});
                    let _ = leases
                        .patch(n, &PatchParams::default(), &Patch::Merge(patch))
                        .await;
                }
            }
        }
        tick += 1;
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for p in list.items {
                let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                    continue;
                };
                if !alive.contains(&node) {
                    continue;
                }
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                if p.metadata.deletion_timestamp.is_some() {
                    let _ = api
                        .delete(
                            &name,
                            &DeleteParams {
                                grace_period_seconds: Some(0),
                                ..Default::default()
                            },
                        )
                        .await;
                    continue;
                }
                let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                    continue;
                }
                if phase.as_deref() == Some("Running") {
                    if let Some(patch) = finish(&p) {
                        let _ = api
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                            .await;
                    }
                    continue;
                }
                let ip = format!("10.88.{}.{}", next_ip / 250, next_ip % 250 + 1);
                next_ip += 1;
                let now = jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
                let cond =
                    |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
                let statuses: Vec<_> = p
                    .spec
                    .as_ref()
                    .map(|s| {
                        s.containers
                            .iter()
                            .map(|c| {
                                json!({
                    "name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
                    "restartCount": 0, "state": {"running": {"startedAt": now}}})
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let patch = json!({"status": {
                    "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
                    "startTime": now,
                    "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
                    "containerStatuses": statuses,
                }});
                let _ = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The status that ends a pod annotated with `hollow.berth.io/exit-code`, once it has
/// run for its `hollow.berth.io/run-ms` (default: at once).
fn finish(p: &Pod) -> Option<serde_json::Value> {
    let annotations = p.metadata.annotations.as_ref()?;
    let code: i32 = annotations.get("hollow.berth.io/exit-code")?.parse().ok()?;
    let run_ms: i64 = annotations
        .get("hollow.berth.io/run-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let started = p.status.as_ref()?.start_time.as_ref()?.0;
    if jiff::Timestamp::now() < started + jiff::SignedDuration::from_millis(run_ms) {
        return None;
    }
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let (phase, reason) = if code == 0 {
        ("Succeeded", "Completed")
    } else {
        ("Failed", "Error")
    };
    let statuses: Vec<_> = p
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| {
                    json!({"name": c.name, "image": c.image, "imageID": "", "ready": false,
                        "started": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": code, "reason": reason,
                            "startedAt": now, "finishedAt": now}}})
                })
                .collect()
        })
        .unwrap_or_default();
    let not = |t: &str| json!({"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": now});
    Some(json!({"status": {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            not("ContainersReady"), not("Ready")],
        "containerStatuses": statuses,
    }}))
}

#[allow(dead_code, reason = "each test binary uses what it needs")]
/// Polls `f` every 100 ms until it returns `Some`, or panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[allow(dead_code, reason = "each test binary uses what it needs")]
/// The pod's Ready condition is True.
pub fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[allow(dead_code, reason = "each test binary uses what it needs")]
/// The first container's image.
pub fn image(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}
