//! Node-pressure eviction, as the kubelet's eviction manager does it: every 10 s the
//! eviction signals ([`signals`]) are compared with `--eviction-hard`; while one is
//! crossed, one pod per round is evicted. Memory: BestEffort first, then Burstable,
//! then Guaranteed, the largest memory user first within a class. Disk (nodefs or
//! imagefs): unused images are deleted first; if that is not enough, pods by
//! priority, then local ephemeral storage use (writable layers, logs, emptyDirs).
//! PIDs: pods by priority, then process count.
//! An evicted pod is marked Failed with reason `Evicted` and its containers stopped;
//! its owner (a ReplicaSet…) makes a replacement elsewhere.

pub mod signals;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;

use super::image_gc::ImageGc;
use super::{Ctx, resources};
use signals::{Condition, Observations, Threshold, Thresholds};

pub const INTERVAL: Duration = Duration::from_secs(10);

fn qos_rank(qos: &str) -> u8 {
    match qos {
        "BestEffort" => 0,
        "Burstable" => 1,
        _ => 2,
    }
}

/// The pod's memory use from its cgroup.
fn usage(ctx: &Ctx, pod: &Pod) -> u64 {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let cgroup = resources::pod_cgroup(&ctx.cgroup_root, resources::qos_class(pod), &uid);
    berth_runtime::cgroups::Cgroup::load(&cgroup).memory_usage()
}

/// Bytes of local ephemeral storage `pod` uses: its containers' writable layers and
/// logs, and its volumes on disk (emptyDirs; tmpfs-backed ones count as memory).
fn disk_usage(ctx: &Ctx, pod: &Pod) -> u64 {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut bytes = du(&ctx.pods_dir.join(&uid));
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    bytes += du(&ctx.logs_dir.join(format!("{ns}_{name}_{uid}")));
    for id in super::worker::pod_containers(
        &ctx.runtime.containers_with_prefix(&format!("{uid}-")),
        &uid,
    ) {
        bytes += ctx.runtime.upper_dir(&id).map_or(0, |d| du(&d));
    }
    bytes
}

/// The bytes under `path` on its filesystem (symlinks not followed, other mounts
/// — tmpfs volumes — not entered).
fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let dev = root.dev();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// Processes in the pod's cgroup.
fn pid_usage(ctx: &Ctx, pod: &Pod) -> u64 {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let cgroup = resources::pod_cgroup(&ctx.cgroup_root, resources::qos_class(pod), &uid);
    berth_runtime::cgroups::Cgroup::load(&cgroup).pids_current()
}

/// The pod's ephemeral-storage request: its containers' requests summed.
fn storage_request(pod: &Pod) -> u64 {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| {
            c.resources
                .as_ref()?
                .requests
                .as_ref()?
                .get("ephemeral-storage")
        })
        .filter_map(resources::units)
        .map(|n| n.max(0) as u64)
        .sum()
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The pods eviction may choose from.
fn candidates(pods: &Store<Pod>) -> Vec<Pod> {
    pods.state()
        .into_iter()
        .map(|p| (*p).clone())
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .filter(|p| !super::static_pods::is_mirror(p))
        .collect()
}

/// How pods are ordered for eviction: a class (QoS rank, or whether the pod is within
/// its request), priority, then usage, largest first.
type Rank = (u8, i32, std::cmp::Reverse<u64>);

/// The pod to evict for `condition` and what it uses (bytes or processes).
fn choose(ctx: &Ctx, condition: Condition, pods: Vec<Pod>) -> Option<(Pod, u64)> {
    let mut ranked: Vec<(Rank, Pod)> = pods
        .into_iter()
        .map(|p| {
            let key = match condition {
                Condition::Memory => (
                    qos_rank(resources::qos_class(&p)),
                    0,
                    std::cmp::Reverse(usage(ctx, &p)),
                ),
                Condition::Disk => {
                    // Pods using more than they requested go first (rankDiskPressureFunc).
                    let used = disk_usage(ctx, &p);
                    (
                        u8::from(used <= storage_request(&p)),
                        priority(&p),
                        std::cmp::Reverse(used),
                    )
                }
                Condition::Pid => (0, priority(&p), std::cmp::Reverse(pid_usage(ctx, &p))),
            };
            (key, p)
        })
        .collect();
    ranked.sort_by_key(|(k, _)| *k);
    ranked
        .into_iter()
        .next()
        .map(|((_, _, std::cmp::Reverse(n)), p)| (p, n))
}

/// The kubelet's eviction message for `threshold` crossed at `available`.
fn message(threshold: &Threshold, available: u64, used: u64) -> String {
    let resource = threshold.signal.resource();
    let (available, used) = match resource {
        "memory" | "ephemeral-storage" => (
            format!("{}Ki", available / 1024),
            format!("{}Ki", used / 1024),
        ),
        _ => (available.to_string(), used.to_string()),
    };
    format!(
        "The node was low on resource: {resource}. Threshold quantity: {}, available: {available}. Pod was using {used}.",
        threshold.text
    )
}

/// The eviction settings: `--eviction-hard`, `--eviction-soft` with its grace periods,
/// and `--eviction-max-pod-grace-period`.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub hard: Thresholds,
    pub soft: signals::Soft,
    /// The longest a pod evicted for a soft threshold is given to stop (its own
    /// terminationGracePeriodSeconds when shorter).
    pub max_pod_grace: Duration,
    /// `--eviction-minimum-reclaim`: a met threshold stays met until its signal is this
    /// far past it.
    pub minimum_reclaim: signals::MinimumReclaim,
}

/// What the eviction loop remembers between rounds: when each soft signal was first
/// seen crossed, and which signals were met last round (held until reclaimed).
#[derive(Debug, Default)]
struct Rounds {
    since: HashMap<signals::Signal, Instant>,
    met: std::collections::HashSet<signals::Signal>,
}

/// Which thresholds evict now: every met hard one, and the soft ones met for their
/// whole grace period (`rounds.since`, kept up to date here). A threshold met last round
/// stays met until its signal recovers past it by `--eviction-minimum-reclaim`
/// (`rounds.met`, updated by the caller once the round is decided). Each comes with
/// whether it is soft.
fn met(settings: &Settings, obs: &Observations, rounds: &mut Rounds) -> Vec<(Threshold, bool)> {
    let now = Instant::now();
    let reclaim = &settings.minimum_reclaim;
    let met_soft: Vec<&Threshold> = settings
        .soft
        .thresholds
        .met(obs, &rounds.met, reclaim)
        .collect();
    rounds
        .since
        .retain(|s, _| met_soft.iter().any(|t| t.signal == *s));
    let mut out: Vec<(Threshold, bool)> = settings
        .hard
        .met(obs, &rounds.met, reclaim)
        .map(|t| (t.clone(), false))
        .collect();
    for t in met_soft {
        let first = *rounds.since.entry(t.signal).or_insert(now);
        if now.duration_since(first) >= settings.soft.grace(t.signal)
            && !out.iter().any(|(h, _)| h.signal == t.signal)
        {
            out.push((t.clone(), true));
        }
    }
    out
}

/// How long a pod evicted for a soft threshold gets to stop: its own grace period,
/// at most `--eviction-max-pod-grace-period`.
fn soft_grace(pod: &Pod, max: Duration) -> Duration {
    let own = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .map_or(Duration::from_secs(30), |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
    own.min(max)
}

/// Runs the eviction loop until the future is dropped, choosing among the pods in
/// `pods` (the pod workers' reflector store).
pub async fn run(ctx: Arc<Ctx>, settings: Settings, gc: Arc<ImageGc>, pods: Store<Pod>) {
    let rounds = Arc::new(std::sync::Mutex::new(Rounds::default()));
    loop {
        tokio::time::sleep(INTERVAL).await;
        let (ctx2, settings2, gc2, rounds2) =
            (ctx.clone(), settings.clone(), gc.clone(), rounds.clone());
        let candidates = candidates(&pods);
        let chosen = tokio::task::spawn_blocking(move || {
            let mut rounds = rounds2.lock().unwrap_or_else(|p| p.into_inner());
            let observe = || Observations::observe(&ctx2.node.root_dir, &ctx2.node.image_dir);
            let mut obs = observe();
            let mut crossed = met(&settings2, &obs, &mut rounds);
            // Disk first reclaims node-level resources: unused images.
            if crossed.iter().any(|(t, _)| t.signal.condition() == Condition::Disk) {
                let done = gc2.delete_unused(&ctx2.runtime);
                if !done.removed.is_empty() {
                    tracing::info!(removed = ?done.removed, freed = done.freed, "disk pressure: deleted unused images");
                    obs = observe();
                    crossed = met(&settings2, &obs, &mut rounds);
                }
            }
            rounds.met = crossed.iter().map(|(t, _)| t.signal).collect();
            // Memory before disk before PIDs, as the kubelet orders its signals; hard
            // before soft.
            crossed.sort_by_key(|(t, soft)| {
                let c = match t.signal.condition() {
                    Condition::Memory => 0,
                    Condition::Disk => 1,
                    Condition::Pid => 2,
                };
                (c, *soft)
            });
            let (threshold, soft) = crossed.into_iter().next()?;
            let (victim, used) = choose(&ctx2, threshold.signal.condition(), candidates)?;
            let msg = message(&threshold, obs.get(threshold.signal).0, used);
            // A soft eviction lets the pod stop within its grace period (the
            // worker stops what is left at once once the pod is Evicted).
            if soft {
                let grace = soft_grace(&victim, settings2.max_pod_grace);
                let uid = victim.metadata.uid.clone().unwrap_or_default();
                for id in super::worker::pod_containers(&ctx2.runtime.containers_with_prefix(&format!("{uid}-")), &uid) {
                    let _ = ctx2.runtime.stop_container(&id, grace);
                }
            }
            Some((victim, msg))
        })
        .await
        .ok()
        .flatten();
        let Some((victim, message)) = chosen else {
            continue;
        };
        let ns = victim.metadata.namespace.clone().unwrap_or_default();
        let name = victim.metadata.name.clone().unwrap_or_default();
        tracing::warn!(pod = %format!("{ns}/{name}"), %message, "evicting");
        let patch = json!({"status": {"phase": "Failed", "reason": "Evicted", "message": message}});
        if let Err(err) = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(%err, "marking the pod evicted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_met_threshold_holds_until_the_minimum_reclaim_is_recovered() {
        let settings = Settings {
            hard: Thresholds::parse_list("nodefs.available<1Gi").expect("hard"),
            soft: signals::Soft::default(),
            max_pod_grace: Duration::from_secs(10),
            minimum_reclaim: signals::MinimumReclaim::parse("nodefs.available=500Mi")
                .expect("reclaim"),
        };
        let at = |free: u64| Observations {
            nodefs_bytes: (free, 100 << 30),
            ..Observations::default()
        };
        let mut rounds = Rounds::default();
        // 1.2 GiB free, never met: fine.
        assert!(met(&settings, &at(1229 << 20), &mut rounds).is_empty());
        // 900 MiB: met.
        let m = met(&settings, &at(900 << 20), &mut rounds);
        assert_eq!(m.len(), 1);
        rounds.met = m.iter().map(|(t, _)| t.signal).collect();
        // 1.2 GiB: past the threshold but not past it + 500Mi: still met.
        assert_eq!(met(&settings, &at(1229 << 20), &mut rounds).len(), 1);
        // 1.6 GiB: resolved.
        assert!(met(&settings, &at(1638 << 20), &mut rounds).is_empty());
        assert_eq!(
            signals::MinimumReclaim::parse("nodefs.available=10%")
                .expect("percent")
                .of(signals::Signal::NodefsAvailable, 1000),
            100
        );
        assert!(signals::MinimumReclaim::parse("disk=1Gi").is_err());
        assert!(signals::MinimumReclaim::parse("nodefs.available<1Gi").is_err());
        assert!(signals::MinimumReclaim::parse("nodefs.available=-1").is_err());
    }

    #[test]
    fn soft_thresholds_evict_only_after_their_grace_period() {
        let settings = Settings {
            hard: Thresholds::parse_list("memory.available<100Mi").expect("hard"),
            soft: signals::Soft::parse("memory.available<1Gi", "memory.available=1m")
                .expect("soft"),
            max_pod_grace: Duration::from_secs(10),
            minimum_reclaim: Default::default(),
        };
        let obs = Observations {
            memory: (500 << 20, 8 << 30),
            ..Observations::default()
        };
        let mut rounds = Rounds::default();
        // Crossed just now: not yet.
        assert!(met(&settings, &obs, &mut rounds).is_empty());
        // Crossed for a minute: it evicts, as a soft threshold.
        rounds.since.insert(
            signals::Signal::MemoryAvailable,
            Instant::now() - Duration::from_secs(61),
        );
        let m = met(&settings, &obs, &mut rounds);
        assert_eq!(m.len(), 1);
        assert!(m[0].1, "soft");
        // Back above it: the clock starts again.
        let fine = Observations {
            memory: (2 << 30, 8 << 30),
            ..Observations::default()
        };
        assert!(met(&settings, &fine, &mut rounds).is_empty());
        assert!(rounds.since.is_empty());
        // Below the hard threshold: at once, as a hard one.
        let low = Observations {
            memory: (50 << 20, 8 << 30),
            ..Observations::default()
        };
        let m = met(&settings, &low, &mut rounds);
        assert_eq!(m.len(), 1);
        assert!(!m[0].1, "hard");
        // The evicted pod's grace: its own, at most the maximum.
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [],
            "terminationGracePeriodSeconds": 60}}))
        .expect("pod");
        assert_eq!(
            soft_grace(&pod, settings.max_pod_grace),
            Duration::from_secs(10)
        );
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [],
            "terminationGracePeriodSeconds": 5}}))
        .expect("pod");
        assert_eq!(
            soft_grace(&pod, settings.max_pod_grace),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn messages_as_the_kubelet_writes_them() {
        let t = Thresholds::parse("nodefs.available<10%").expect("valid");
        assert_eq!(
            message(&t.0[0], 2048 * 1024, 4096),
            "The node was low on resource: ephemeral-storage. Threshold quantity: 10%, available: 2048Ki. Pod was using 4Ki."
        );
        let t = Thresholds::parse("pid.available<1k").expect("valid");
        assert_eq!(
            message(&t.0[0], 900, 12),
            "The node was low on resource: pids. Threshold quantity: 1k, available: 900. Pod was using 12."
        );
    }

    #[test]
    fn du_counts_files_below_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/f"), vec![1u8; 64 * 1024]).expect("write");
        assert!(du(dir.path()) >= 64 * 1024);
        assert_eq!(du(&dir.path().join("missing")), 0);
    }
}
