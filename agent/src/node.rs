//! The Node object and its heartbeat: registration (capacity, allocatable, addresses,
//! nodeInfo, conditions), a Lease in `kube-node-lease` renewed every 10 s, and a status
//! PATCH only when something in it changed (kubelet's `nodeStatusUpdateFrequency`
//! with `nodeStatusReportFrequency` = "on change").

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// How often the Lease is renewed, and how long it claims to be valid.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// What the node tells about itself.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub node_ip: String,
    pub kubelet_port: u16,
    pub pod_cidr: Option<String>,
    pub max_pods: u32,
    /// The directory whose filesystem is the node's ephemeral storage.
    pub root_dir: std::path::PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Where the images live (imagefs).
    pub image_dir: std::path::PathBuf,
    /// `--eviction-hard`: below them the node reports Memory/Disk/PIDPressure.
    pub thresholds: crate::pods::eviction::signals::Thresholds,
}

/// Memory, disk and PID pressure as observed on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

fn mem_total_bytes() -> u64 {
    meminfo("MemTotal:").unwrap_or(0)
}

/// A `/proc/meminfo` value in bytes.
pub fn meminfo(key: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

/// Memory, disk and PID pressure now, by the eviction thresholds.
pub fn observe_pressure(cfg: &NodeConfig) -> Pressure {
    let obs = crate::pods::eviction::signals::Observations::observe(&cfg.root_dir, &cfg.image_dir);
    cfg.thresholds.pressure(&obs)
}

fn condition(type_: &str, on: bool, reason: &str, message: &str, now: &str) -> Value {
    json!({
        "type": type_,
        "status": if on { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    })
}

/// The node's status as this agent sees it now.
pub fn status(cfg: &NodeConfig, pressure: Pressure, ready: bool) -> Value {
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let now = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let disk_total = nix::sys::statvfs::statvfs(&cfg.root_dir)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0);
    let capacity = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", mem_total_bytes() / 1024),
        "pods": cfg.max_pods.to_string(),
        "ephemeral-storage": format!("{}Ki", disk_total / 1024),
    });
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let hostname = uname
        .as_ref()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_default();
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": cfg.node_ip},
            {"type": "Hostname", "address": hostname},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        "images": images(&cfg.image_dir),
        "nodeInfo": {
            "machineID": read_trim("/etc/machine-id"),
            "systemUUID": read_trim("/sys/class/dmi/id/product_uuid"),
            "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": kernel,
            "osImage": os_image(),
            "containerRuntimeVersion": concat!("berth://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": crate::KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        },
        "conditions": [
            condition("MemoryPressure", pressure.memory,
                if pressure.memory { "KubeletHasInsufficientMemory" } else { "KubeletHasSufficientMemory" },
                if pressure.memory { "kubelet has insufficient memory available" } else { "kubelet has sufficient memory available" }, &now),
            condition("DiskPressure", pressure.disk,
                if pressure.disk { "KubeletHasDiskPressure" } else { "KubeletHasNoDiskPressure" },
                if pressure.disk { "kubelet has disk pressure" } else { "kubelet has no disk pressure" }, &now),
            condition("PIDPressure", pressure.pid,
                if pressure.pid { "KubeletHasInsufficientPID" } else { "KubeletHasSufficientPID" },
                if pressure.pid { "kubelet has insufficient PID available" } else { "kubelet has sufficient PID available" }, &now),
            condition("Ready", ready,
                if ready { "KubeletReady" } else { "KubeletNotReady" },
                if ready { "kubelet is posting ready status" } else { "kubelet is starting" }, &now),
        ],
    })
}

/// The images on the node as the kubelet lists them (`status.images`): largest first,
/// at most 50, each with its `repo@digest` and `repo:tag` names.
fn images(dir: &std::path::Path) -> Value {
    let Ok(store) = berth_runtime::image::ImageStore::open(dir) else {
        return json!([]);
    };
    let mut by_digest: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    for image in store.list() {
        let entry = by_digest
            .entry(image.digest.clone())
            .or_insert_with(|| (Vec::new(), image.size));
        let repo = image
            .reference
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map_or(image.reference.as_str(), |(repo, _)| repo);
        let pinned = format!("{repo}@{}", image.digest);
        if !entry.0.contains(&pinned) {
            entry.0.insert(0, pinned);
        }
        entry.0.push(image.reference);
    }
    let mut list: Vec<(Vec<String>, u64)> = by_digest.into_values().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list.truncate(50);
    Value::Array(
        list.into_iter()
            .map(|(names, size)| json!({"names": names, "sizeBytes": size}))
            .collect(),
    )
}

/// What of a status counts as a change: everything but heartbeat and transition times.
fn significant(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(conds) = s.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
                o.remove("lastTransitionTime");
            }
        }
    }
    s
}

/// Keeps each condition's lastTransitionTime from `old` when its status did not change.
fn keep_transitions(new: &mut Value, old: &Value) {
    let Some(old_conds) = old.get("conditions").and_then(Value::as_array) else {
        return;
    };
    if let Some(conds) = new.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds {
            let prev = old_conds.iter().find(|o| o.get("type") == c.get("type"));
            if let Some(prev) = prev
                && prev.get("status") == c.get("status")
                && let Some(t) = prev.get("lastTransitionTime")
            {
                c["lastTransitionTime"] = t.clone();
            }
        }
    }
}

/// Registers the node (creating it, or taking over an existing object of the same
/// name) and returns it.
pub async fn register(client: &Client, cfg: &NodeConfig) -> Result<Node, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = cfg.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), cfg.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "kubernetes.io/arch".into(),
        std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64"),
    );
    let mut spec = json!({});
    if let Some(cidr) = &cfg.pod_cidr {
        spec = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": cfg.name, "labels": labels},
        "spec": spec,
    });
    let node: Node = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = json!({"metadata": {"labels": labels}});
            nodes
                .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Err(e) => return Err(e),
    }
    let status = status(cfg, observe_pressure(cfg), true);
    nodes
        .patch_status(
            &cfg.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
}

/// Renews the Lease and patches the node status when it changes, forever.
pub async fn heartbeat(client: Client, cfg: NodeConfig, node_uid: String) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut last: Option<Value> = None;
    let mut ticker = tokio::time::interval(LEASE_RENEW);
    loop {
        ticker.tick().await;
        if let Err(err) = renew_lease(&leases, &cfg, &node_uid).await {
            tracing::warn!(%err, "renewing the node lease");
        }
        let observed = cfg.clone();
        let pressure = tokio::task::spawn_blocking(move || observe_pressure(&observed))
            .await
            .unwrap_or_default();
        let mut now = status(&cfg, pressure, true);
        let current = match nodes.get(&cfg.name).await {
            Ok(n) => serde_json::to_value(n.status).unwrap_or(Value::Null),
            Err(err) => {
                tracing::warn!(%err, "reading the node status");
                continue;
            }
        };
        keep_transitions(&mut now, &current);
        let changed = last
            .as_ref()
            .is_none_or(|l| significant(l) != significant(&now))
            || significant(&current) != significant(&now);
        if changed {
            match nodes
                .patch_status(
                    &cfg.name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": now})),
                )
                .await
            {
                Ok(_) => last = Some(now),
                Err(err) => tracing::warn!(%err, "patching the node status"),
            }
        }
    }
}

async fn renew_lease(
    leases: &Api<Lease>,
    cfg: &NodeConfig,
    node_uid: &str,
) -> Result<(), kube::Error> {
    let now = MicroTime(jiff::Timestamp::now());
    match leases.get_opt(&cfg.name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(cfg.name.clone());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            leases
                .replace(&cfg.name, &PostParams::default(), &lease)
                .await?;
        }
        None => {
            let mut lease = Lease::default();
            lease.metadata.name = Some(cfg.name.clone());
            lease.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: cfg.name.clone(),
                uid: node_uid.to_owned(),
                ..Default::default()
            }]);
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(cfg.name.clone()),
                lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                renew_time: Some(now),
                ..Default::default()
            });
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// Now as a Kubernetes `Time`.
pub fn now_time() -> Time {
    Time(jiff::Timestamp::now())
}
