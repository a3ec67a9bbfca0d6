//! One pod's worker: level-triggered. Each sync compares the Pod (desired) with what
//! the runtime reports (observed) and takes the next steps — sandbox and network, init
//! containers in order, containers, restarts with back-off, probes, a changed image —
//! then computes the status. Nothing is remembered that the host cannot tell again:
//! container ids are `<pod uid>-<name>-<restart count>`, so a restarted agent finds
//! the same answers and restarts nothing. Termination: preStop → SIGTERM → grace →
//! SIGKILL → CNI DEL → sandbox removed → volumes unmounted → the Pod finalized.
//!
//! By concern: `sandbox` (the pause, its namespaces, network and DNS, teardown),
//! `image` (pulls and pull secrets), `containers` (configuration, start, restarts,
//! probes, init and ephemeral containers), `pod_status` (the status written back); this
//! file holds the sync loop and what they share.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, Pod};
use serde_json::{Value, json};

use berth_runtime::pod::{ContainerConfig, ContainerState, ContainerStatus, Mount, SandboxConfig};

use super::env::{self, Runtime as EnvRuntime};
use super::inputs::Inputs;
use super::probe::{self, Target};
use super::{Ctx, resources, volumes};

mod containers;
mod image;
mod pod_status;
mod sandbox;

use containers::*;
use image::*;
use pod_status::*;
pub use sandbox::teardown;
use sandbox::*;

/// The kubelet's container restart back-off: 10 s doubling to 5 min.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often a running pod is looked at when nothing else is due (the kubelet's PLEG
/// relists every second).
const RESYNC: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

/// What a worker keeps between syncs; all of it can be lost (a restarted agent
/// starts probes over, as the kubelet does).
#[derive(Debug, Default)]
pub struct Memory {
    probes: HashMap<(String, ProbeKind), probe::State>,
    /// When each container instance was first seen running.
    seen_running: HashMap<String, Instant>,
    post_start_done: HashSet<String>,
    /// Why a container is waiting, by name: (reason, message).
    waiting: HashMap<String, (String, String)>,
    /// Why the pod has no sandbox yet.
    sandbox_error: Option<String>,
    /// The kubelet's image pull back-off, by image: no new pull before the instant, the
    /// current delay (10 s after a failed pull, doubling to 5 min) and the last error.
    pull_backoff: HashMap<String, (Instant, Duration, String)>,
    /// The instance after which each container's crash back-off started over (it ran
    /// [`BACKOFF_RESET`] or longer), by container name.
    backoff_reset: HashMap<String, u32>,
    /// When the worker first saw the pod, until its start is recorded in
    /// `kubelet_pod_start_duration_seconds`.
    start_pending: Option<Instant>,
    pub events: Vec<Event>,
}

impl Memory {
    /// The memory of a pod the worker sees for the first time now.
    pub fn seen_now() -> Self {
        Self {
            start_pending: Some(Instant::now()),
            ..Self::default()
        }
    }
}

/// The first image pull back-off and its cap (the kubelet's 10 s and 5 min).
const PULL_BACKOFF_BASE: Duration = Duration::from_secs(10);
const PULL_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The next delay after `previous` (none: the first failure).
fn next_pull_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(PULL_BACKOFF_BASE, |d| (d * 2).min(PULL_BACKOFF_MAX))
}

/// An Event to record about the pod.
#[derive(Debug, Clone)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// What one sync decided.
#[derive(Debug)]
pub struct Outcome {
    pub status: Option<Value>,
    /// The pod is gone from the host; finalize it in the apiserver (if it still exists).
    pub finished: bool,
    pub wake: Duration,
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn full_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    format!("{uid}-{name}-{attempt}")
}

/// The instances of container `name` of pod `uid` on the host, oldest first.
fn instances(all: &[String], uid: &str, name: &str) -> Vec<(u32, String)> {
    let prefix = format!("{uid}-{name}-");
    let mut found: Vec<(u32, String)> = all
        .iter()
        .filter_map(|id| {
            let n: u32 = id.strip_prefix(&prefix)?.parse().ok()?;
            Some((n, id.clone()))
        })
        .collect();
    found.sort();
    found
}

/// Removes instance `n`'s log file and its rotated copies from `dir`.
fn remove_logs(dir: &Path, n: u32) {
    let base = format!("{n}.log");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let rotated = name
            .strip_prefix(&base)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
        if name == base || rotated {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Every container of pod `uid` on the host (not the sandbox).
pub(crate) fn pod_containers(all: &[String], uid: &str) -> Vec<String> {
    let prefix = format!("{uid}-");
    all.iter()
        .filter(|id| id.starts_with(&prefix))
        .cloned()
        .collect()
}

pub fn rfc3339_ns(ns: i128) -> String {
    jiff::Timestamp::from_nanosecond(ns)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The wait before restarting a container that has restarted `restarts` times: none
/// for the first restart, then 10 s doubling to 5 min — what the kubelet's
/// `flowcontrol.Backoff` gives when its entry is first made at the first restart.
/// `restarts` counts since the back-off last started over (see [`BACKOFF_RESET`]).
fn backoff(restarts: u32) -> Duration {
    if restarts == 0 {
        return Duration::ZERO;
    }
    let shift = (restarts - 1).min(10);
    (BACKOFF_BASE * (1u32 << shift)).min(BACKOFF_MAX)
}

/// A container that ran this long before it exited restarts at once and its back-off
/// starts over at 10 s (the kubelet forgets a back-off entry not updated for twice the
/// 5 min cap).
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The restart count the back-off of container `name` goes by when instance `n`, which
/// ran from `started_ns` to `finished_ns`, exited: counted from the last instance that
/// ran [`BACKOFF_RESET`] or longer.
fn backoff_count(
    resets: &mut HashMap<String, u32>,
    name: &str,
    n: u32,
    started_ns: Option<i128>,
    finished_ns: i128,
) -> u32 {
    let ran_ns = started_ns.map_or(0, |s| (finished_ns - s).max(0));
    if ran_ns >= BACKOFF_RESET.as_nanos() as i128 {
        resets.insert(name.to_owned(), n);
    }
    n.saturating_sub(resets.get(name).copied().unwrap_or(0))
}

/// How long instance `restarts` of a container, which finished at `finished_ns`, must
/// still wait at `now_ns` before its restart; `None` once its back-off has passed.
fn backoff_left(restarts: u32, finished_ns: i128, now_ns: i128) -> Option<(Duration, Duration)> {
    let delay = backoff(restarts);
    let elapsed_ns = (now_ns - finished_ns).max(0);
    let elapsed = Duration::from_nanos(elapsed_ns.min(u64::MAX as i128) as u64);
    (elapsed < delay).then(|| (delay, delay - elapsed))
}

fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0);
    Duration::from_secs(secs as u64)
}

fn pod_dir(ctx: &Ctx, uid: &str) -> PathBuf {
    ctx.pods_dir.join(uid)
}

/// `/var/log/pods/<ns>_<name>_<uid>` as the kubelet lays it out.
pub fn pod_log_dir(ctx: &Ctx, pod: &Pod) -> PathBuf {
    ctx.logs_dir.join(format!(
        "{}_{}_{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or(""),
        uid(pod)
    ))
}

fn exit_of(state: &ContainerState) -> Option<(i32, i128)> {
    match state {
        ContainerState::Exited(e) => Some((e.code, e.finished_at_ns)),
        ContainerState::Unknown => Some((255, 0)),
        _ => None,
    }
}

/// Brings the host toward `pod` and returns its status.
pub fn sync(ctx: &Ctx, pod: &Pod, inputs: &Inputs, mem: &mut Memory) -> Outcome {
    let uid = uid(pod);
    let qos = resources::qos_class(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let mut wake = RESYNC;
    let (netns, pod_ip) = match if terminal {
        // A pod rejected at admission never had a sandbox; nothing is wrong with that.
        Ok(ctx
            .runtime
            .sandbox(&uid)
            .map(|s| (s.netns, s.pod_ip.unwrap_or_default()))
            .unwrap_or_default())
    } else {
        ensure_sandbox(ctx, pod, qos)
    } {
        Ok(x) => {
            mem.sandbox_error = None;
            x
        }
        Err(e) => {
            if mem.sandbox_error.as_deref() != Some(e.as_str()) {
                mem.events.push(Event {
                    warning: true,
                    reason: "FailedCreatePodSandBox".into(),
                    message: e.clone(),
                });
            }
            mem.sandbox_error = Some(e);
            return Outcome {
                status: Some(status(ctx, pod, inputs, mem, &[], "", qos)),
                finished: false,
                wake: Duration::from_secs(3),
            };
        }
    };
    let env_rt = EnvRuntime {
        pod_ip: pod_ip.clone(),
        host_ip: ctx.node.node_ip.clone(),
        node_cpu_milli: std::thread::available_parallelism()
            .map_or(1000, |n| n.get() as i128 * 1000),
        node_memory: crate::node::meminfo("MemTotal:").unwrap_or(0) as i128,
    };
    let volumes = match volumes::setup(pod, &pod_dir(ctx, &uid), inputs, &env_rt, ctx.csi_mounts())
    {
        Ok(v) => v,
        Err(e) => {
            for c in spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
            {
                mem.waiting
                    .insert(c.name.clone(), ("ContainerCreating".into(), e.clone()));
            }
            mem.events.push(Event {
                warning: true,
                reason: "FailedMount".into(),
                message: e,
            });
            let all = ctx.runtime.containers_with_prefix(&format!("{uid}-"));
            return Outcome {
                status: Some(status(ctx, pod, inputs, mem, &all, &pod_ip, qos)),
                finished: false,
                wake: Duration::from_secs(3),
            };
        }
    };
    let mut view = PodView {
        ctx,
        pod,
        uid: uid.clone(),
        all: ctx.runtime.containers_with_prefix(&format!("{uid}-")),
        netns,
        pod_ip: pod_ip.clone(),
        volumes,
        env_rt,
        qos,
        policy: spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into()),
    };
    if terminal {
        // A pod in a terminal phase (completed, or evicted) runs nothing any more.
        let evicted = pod.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted");
        let grace = if evicted {
            Duration::ZERO
        } else {
            grace_of(pod)
        };
        for id in pod_containers(&view.all, &uid) {
            if ctx
                .runtime
                .status(&id)
                .is_ok_and(|s| s.state == ContainerState::Running)
            {
                let _ = ctx.runtime.stop_container(&id, grace);
            }
        }
    } else {
        let init_done = step_init(&mut view, &spec, inputs, mem, &mut wake);
        if init_done {
            for c in &spec.containers {
                step_container(&mut view, c, inputs, mem, &mut wake);
            }
            for ec in spec.ephemeral_containers.iter().flatten() {
                step_ephemeral(&mut view, ec, inputs, mem, &mut wake);
            }
            if let Some(seen) = mem.start_pending {
                let running = |c: &Container| {
                    instances(&view.all, &uid, &c.name)
                        .pop()
                        .and_then(|(_, id)| ctx.runtime.status(&id).ok())
                        .is_some_and(|s| s.state == ContainerState::Running)
                };
                if spec.containers.iter().all(running) {
                    ctx.start_metrics.pod_started(seen.elapsed());
                    mem.start_pending = None;
                }
            }
        }
    }
    let all = view.all.clone();
    Outcome {
        status: Some(status(ctx, pod, inputs, mem, &all, &pod_ip, qos)),
        finished: false,
        wake,
    }
}

/// Carries `Arc<Ctx>` into blocking code.
pub fn sync_blocking(
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    inputs: Arc<Inputs>,
    mut mem: Memory,
) -> (Memory, Outcome) {
    let out = sync(&ctx, &pod, &inputs, &mut mem);
    (mem, out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_collected_instance_takes_its_rotated_logs_and_no_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in [
            "0.log", "0.log.1", "0.log.2", "0.logx", "1.log", "10.log", "10.log.1",
        ] {
            std::fs::write(dir.path().join(f), b"x").expect("write");
        }
        super::remove_logs(dir.path(), 0);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["0.logx", "1.log", "10.log", "10.log.1"]);
    }

    #[test]
    fn pull_back_off_doubles_from_ten_seconds_to_five_minutes() {
        let mut d = super::next_pull_backoff(None);
        assert_eq!(d, Duration::from_secs(10));
        let mut seen = vec![d];
        for _ in 0..6 {
            d = super::next_pull_backoff(Some(d));
            seen.push(d);
        }
        assert_eq!(
            seen.iter().map(Duration::as_secs).collect::<Vec<_>>(),
            [10, 20, 40, 80, 160, 300, 300]
        );
    }

    #[test]
    fn crash_back_off_restarts_at_once_then_doubles_from_ten_seconds_to_five_minutes() {
        // Restart n waits backoff(n): the first at once (the kubelet makes its back-off
        // entry then), then 10, 20, 40, 80, 160 s and the 300 s cap.
        assert_eq!(super::backoff(0), Duration::ZERO);
        assert_eq!(
            (1..=8)
                .map(|n| super::backoff(n).as_secs())
                .collect::<Vec<_>>(),
            [10, 20, 40, 80, 160, 300, 300, 300]
        );
        assert_eq!(super::backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn crash_back_off_is_measured_from_when_the_container_finished() {
        const S: i128 = 1_000_000_000;
        let finished = 1_700_000_000 * S;
        // The first restart is never held back.
        assert_eq!(super::backoff_left(0, finished, finished), None);
        // After the second crash: 10 s from the container's finish, to the nanosecond.
        assert_eq!(
            super::backoff_left(1, finished, finished + 3 * S),
            Some((Duration::from_secs(10), Duration::from_secs(7)))
        );
        assert_eq!(
            super::backoff_left(1, finished, finished + 10 * S - 1),
            Some((Duration::from_secs(10), Duration::from_nanos(1)))
        );
        assert_eq!(super::backoff_left(1, finished, finished + 10 * S), None);
        // At the cap, 5 min.
        assert_eq!(
            super::backoff_left(6, finished, finished + 299 * S),
            Some((Duration::from_secs(300), Duration::from_secs(1)))
        );
        assert_eq!(super::backoff_left(6, finished, finished + 300 * S), None);
        // A clock behind the finish time waits the whole delay.
        assert_eq!(
            super::backoff_left(2, finished, finished - S),
            Some((Duration::from_secs(20), Duration::from_secs(20)))
        );
        // The 8th restart of a container that crashes quickly waits the 5 min cap.
        assert_eq!(
            super::backoff_left(8, finished, finished),
            Some((Duration::from_secs(300), Duration::from_secs(300)))
        );
    }

    #[test]
    fn crash_back_off_starts_over_after_ten_minutes_of_running() {
        const S: i128 = 1_000_000_000;
        let mut resets = std::collections::HashMap::new();
        let t = 1_700_000_000 * S;
        // Quick crashes count up.
        assert_eq!(super::backoff_count(&mut resets, "c", 5, Some(t), t + S), 5);
        // An instance that ran 10 min: restarted at once, the count starts over.
        assert_eq!(
            super::backoff_count(&mut resets, "c", 6, Some(t), t + 600 * S),
            0
        );
        assert_eq!(super::backoff_left(0, t, t), None);
        // Its successor crashes at once: 10 s, then 20 s.
        assert_eq!(super::backoff_count(&mut resets, "c", 7, Some(t), t + S), 1);
        assert_eq!(super::backoff(1), Duration::from_secs(10));
        assert_eq!(super::backoff_count(&mut resets, "c", 8, Some(t), t + S), 2);
        // Another container of the pod keeps its own count.
        assert_eq!(super::backoff_count(&mut resets, "d", 8, Some(t), t + S), 8);
        // 9 min 59 s is not enough.
        assert_eq!(
            super::backoff_count(&mut resets, "d", 9, Some(t), t + 599 * S),
            9
        );
    }

    #[test]
    fn pull_times_read_as_go_durations() {
        assert_eq!(super::go_duration(Duration::from_micros(812_400)), "812ms");
        assert_eq!(super::go_duration(Duration::from_millis(1204)), "1.204s");
        assert_eq!(super::go_duration(Duration::from_millis(2000)), "2s");
        assert_eq!(super::go_duration(Duration::from_millis(123_500)), "2m3.5s");
        assert_eq!(
            super::go_duration(Duration::from_millis(3_600_000)),
            "1h0m0s"
        );
    }
}
