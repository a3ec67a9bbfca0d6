//! One pod's worker: level-triggered. Each sync compares the Pod (desired) with what
//! the runtime reports (observed) and takes the next steps — sandbox and network, init
//! containers in order, containers, restarts with back-off, probes, a changed image —
//! then computes the status. Nothing is remembered that the host cannot tell again:
//! container ids are `<pod uid>-<name>-<restart count>`, so a restarted agent finds
//! the same answers and restarts nothing. Termination: preStop → SIGTERM → grace →
//! SIGKILL → CNI DEL → sandbox removed → volumes unmounted → the Pod finalized.

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
    pub events: Vec<Event>,
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

/// Removes everything of pod `uid` from the host: containers (after their grace),
/// network, sandbox, volumes, logs. Used for deleted pods and orphans alike.
pub fn teardown(
    ctx: &Ctx,
    uid: &str,
    pod: Option<&Pod>,
    log_dir: Option<&Path>,
) -> Result<(), String> {
    let rt = &ctx.runtime;
    let all = rt.containers_with_prefix(&format!("{uid}-"));
    let ours = pod_containers(&all, uid);
    let grace = pod.map_or(Duration::from_secs(2), grace_of);
    let deadline = Instant::now() + grace;
    // preStop hooks of running containers, within the grace period.
    if let Some(pod) = pod {
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
                continue;
            };
            let Some((_, id)) = instances(&all, uid, &c.name).pop() else {
                continue;
            };
            if !rt
                .status(&id)
                .is_ok_and(|s| s.state == ContainerState::Running)
            {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(exec) = &hook.exec {
                let cmd = exec.command.clone().unwrap_or_default();
                let _ = rt.exec_sync(&id, &cmd, left.max(Duration::from_secs(1)));
            } else if let Some(sleep) = &hook.sleep {
                std::thread::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(left));
            }
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    std::thread::scope(|s| {
        for id in &ours {
            s.spawn(move || {
                let _ = rt.stop_container(id, left);
            });
        }
    });
    for id in &ours {
        rt.remove_container(id)
            .map_err(|e| format!("remove container {id}: {e}"))?;
    }
    if let Ok(sandbox) = rt.sandbox(uid) {
        let name = pod.map(full_name).unwrap_or_default();
        if !sandbox.config.host_network {
            ctx.network.del(uid, &sandbox.netns, &name)?;
        }
        rt.remove_sandbox(uid)
            .map_err(|e| format!("remove sandbox: {e}"))?;
        remove_pod_cgroup(&sandbox.config.cgroup_parent)?;
    }
    super::userns::release(&ctx.node.root_dir, uid);
    volumes::teardown(&pod_dir(ctx, uid), ctx.csi_mounts())?;
    if let Some(dir) = log_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

fn host_resolv() -> (Vec<String>, Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (mut ns, mut search, mut opts) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("nameserver") => ns.extend(parts.map(str::to_owned)),
            Some("search") => search.extend(parts.map(str::to_owned)),
            Some("options") => opts.extend(parts.map(str::to_owned)),
            _ => {}
        }
    }
    // A loopback resolver on the host is unreachable from a pod's namespace.
    ns.retain(|n| !n.starts_with("127.") && n != "::1");
    (ns, search, opts)
}

/// nameservers, searches, options per dnsPolicy and dnsConfig.
fn dns_for(ctx: &Ctx, pod: &Pod) -> (Vec<String>, Vec<String>, Vec<String>) {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    // ClusterFirst on the host's network falls back to the node's resolver, as the
    // kubelet's does; ClusterFirstWithHostNet is how such a pod asks for cluster DNS.
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let (mut servers, mut searches, mut options) = match policy {
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        "ClusterFirst" if host_network => host_resolv(),
        "ClusterFirst" | "ClusterFirstWithHostNet" if !ctx.cluster_dns.is_empty() => {
            let d = &ctx.cluster_domain;
            let (_, host_search, _) = host_resolv();
            let mut s = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            s.extend(host_search);
            (ctx.cluster_dns.clone(), s, vec!["ndots:5".to_owned()])
        }
        _ => host_resolv(),
    };
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        servers.extend(cfg.nameservers.iter().flatten().cloned());
        searches.extend(cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let Some(name) = &o.name else { continue };
            options.retain(|x: &String| x.split(':').next() != Some(name.as_str()));
            options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            });
        }
    }
    // The kubelet's omitDuplicates: the first of each, wherever the repeats are.
    let omit_duplicates = |v: &mut Vec<String>| {
        let mut seen = HashSet::new();
        v.retain(|x| seen.insert(x.clone()));
    };
    omit_duplicates(&mut servers);
    omit_duplicates(&mut searches);
    (servers, searches, options)
}

/// Makes sure the pod has a live sandbox with networking; returns (netns, pod IP).
fn ensure_sandbox(ctx: &Ctx, pod: &Pod, qos: &str) -> Result<(PathBuf, String), String> {
    let rt = &ctx.runtime;
    let uid = uid(pod);
    if let Ok(sb) = rt.sandbox(&uid) {
        let alive = rt
            .status(&uid)
            .is_ok_and(|s| s.state == ContainerState::Running);
        if alive && let Some(ip) = &sb.pod_ip {
            return Ok((sb.netns.clone(), ip.clone()));
        }
        // A dead sandbox (or one whose network never came up): start over, as the
        // kubelet does, containers included.
        tracing::info!(pod = %full_name(pod), "sandbox is not running; recreating it");
        teardown_sandbox_only(ctx, pod)?;
    }
    let spec = pod.spec.as_ref().ok_or("pod has no spec")?;
    let host_network = spec.host_network == Some(true);
    // hostUsers: false — the pod's own user namespace, with a range of host ids from
    // the node's allocator (kept until the pod is torn down).
    let user_namespace = if spec.host_users == Some(false) {
        if host_network || spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
            return Err(
                "Failed to create pod sandbox: `spec.hostUsers: false` cannot be combined with hostNetwork, hostPID or hostIPC"
                    .into(),
            );
        }
        Some(
            super::userns::allocate(&ctx.node.root_dir, &uid)
                .map_err(|e| format!("Failed to create pod sandbox: {e}"))?,
        )
    } else {
        None
    };
    let (nameservers, searches, dns_options) = dns_for(ctx, pod);
    // A hostNetwork pod is in the node's UTS namespace too: its hostname is the node's.
    let hostname = if host_network {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .map_err(|e| format!("Failed to create pod sandbox: the node's hostname: {e}"))?
    } else {
        spec.hostname
            .clone()
            .or_else(|| pod.metadata.name.clone())
            .unwrap_or_default()
    };
    let hostname: String = hostname.chars().take(63).collect();
    let cfg = SandboxConfig {
        id: uid.clone(),
        hostname,
        cgroup_parent: resources::pod_cgroup(&ctx.cgroup_root, qos, &uid),
        share_process_namespace: spec.share_process_namespace == Some(true),
        host_network,
        host_pid: spec.host_pid == Some(true),
        host_ipc: spec.host_ipc == Some(true),
        user_namespace,
        pause_image: ctx.pause_image.clone(),
        nameservers,
        searches,
        dns_options,
        host_aliases: spec
            .host_aliases
            .iter()
            .flatten()
            .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
            .collect(),
        log_dir: pod_log_dir(ctx, pod),
        sysctls: super::sysctls::of(pod),
    };
    ensure_image(ctx, &ctx.pause_image, "IfNotPresent", &[], &mut Vec::new())?;
    let sandbox = rt
        .run_sandbox(&cfg)
        .map_err(|e| format!("Failed to create pod sandbox: {e}"))?;
    if host_network {
        // No CNI: the pod is on the node's network, and its IP is the node's.
        let ip = ctx.node.node_ip.clone();
        rt.set_pod_ip(&uid, &ip)
            .map_err(|e| format!("recording the pod IP: {e}"))?;
        return Ok((sandbox.netns, ip));
    }
    match ctx.network.add(&uid, &sandbox.netns, &full_name(pod)) {
        Ok(ip) => {
            rt.set_pod_ip(&uid, &ip)
                .map_err(|e| format!("recording the pod IP: {e}"))?;
            Ok((sandbox.netns, ip))
        }
        Err(e) => {
            let _ = ctx.network.del(&uid, &sandbox.netns, &full_name(pod));
            let _ = rt.remove_sandbox(&uid);
            Err(format!("Failed to create pod sandbox: {e}"))
        }
    }
}

fn teardown_sandbox_only(ctx: &Ctx, pod: &Pod) -> Result<(), String> {
    let rt = &ctx.runtime;
    let uid = uid(pod);
    for id in pod_containers(&rt.containers_with_prefix(&format!("{uid}-")), &uid) {
        let _ = rt.stop_container(&id, Duration::ZERO);
        rt.remove_container(&id)
            .map_err(|e| format!("remove container {id}: {e}"))?;
    }
    let sandbox = rt.sandbox(&uid).ok();
    if let Some(sb) = &sandbox
        && !sb.config.host_network
    {
        ctx.network.del(&uid, &sb.netns, &full_name(pod))?;
    }
    rt.remove_sandbox(&uid)
        .map_err(|e| format!("remove sandbox: {e}"))?;
    match sandbox {
        Some(sb) => remove_pod_cgroup(&sb.config.cgroup_parent),
        None => Ok(()),
    }
}

/// Removes the pod-level cgroup (its containers' cgroups are gone with them).
fn remove_pod_cgroup(path: &str) -> Result<(), String> {
    berth_runtime::cgroups::Cgroup::load(path)
        .remove(Duration::from_secs(2))
        .map_err(|e| format!("remove pod cgroup {path}: {e}"))
}

/// Pulls `image` as its pull policy says, through the node's registry mirrors, and
/// records the kubelet's image events (Pulling, Pulled with the time and size, Failed)
/// in `events`.
fn ensure_image(
    ctx: &Ctx,
    image: &str,
    policy: &str,
    secrets: &[(String, String)],
    events: &mut Vec<Event>,
) -> Result<(), String> {
    let store = ctx.runtime.images();
    let present = store.find(image).is_ok();
    let pull = match policy {
        "Never" if !present => {
            return Err(format!(
                "ErrImageNeverPull: container image {image:?} is not present with pull policy of Never"
            ));
        }
        "Never" => false,
        "Always" => true,
        _ => !present,
    };
    if !pull {
        events.push(Event {
            warning: false,
            reason: "Pulled".into(),
            message: format!("Container image {image:?} already present on machine"),
        });
        return Ok(());
    }
    let mut opts = berth_runtime::image::pull::PullOptions::default();
    if let Some((u, p)) = secrets.first() {
        opts.username = Some(u.clone());
        opts.password = Some(p.clone());
    }
    let sources = ctx.registries.get().sources(image, &opts);
    let local = image.starts_with("berth.local/");
    if !local {
        events.push(Event {
            warning: false,
            reason: "Pulling".into(),
            message: format!("Pulling image {image:?}"),
        });
    }
    let started = Instant::now();
    let handle = tokio::runtime::Handle::current();
    // One pull at a time unless the node allows more; the wait counts in the
    // "including waiting" time, as the kubelet's.
    let _slot = ctx
        .pull_slots
        .as_ref()
        .and_then(|s| handle.block_on(s.clone().acquire_owned()).ok());
    let pulling = Instant::now();
    match handle.block_on(berth_runtime::image::pull::pull_from(
        store, image, &sources,
    )) {
        Ok(pulled) => {
            let (took, total) = (
                go_duration(pulling.elapsed()),
                go_duration(started.elapsed()),
            );
            events.push(Event {
                warning: false,
                reason: "Pulled".into(),
                message: format!(
                    "Successfully pulled image {image:?} in {took} ({total} including waiting). Image size: {} bytes.",
                    pulled.size
                ),
            });
            Ok(())
        }
        // Always with a local copy and an unreachable registry: the kubelet fails too,
        // but images imported locally (berth.local/…) have no registry at all.
        Err(_) if present && local => {
            events.push(Event {
                warning: false,
                reason: "Pulled".into(),
                message: format!("Container image {image:?} already present on machine"),
            });
            Ok(())
        }
        Err(e) => {
            events.push(Event {
                warning: true,
                reason: "Failed".into(),
                message: format!("Failed to pull image {image:?}: {e}"),
            });
            Err(format!("ErrImagePull: failed to pull image {image:?}: {e}"))
        }
    }
}

/// A duration as Go prints a `time.Duration` truncated to milliseconds (`812ms`,
/// `1.204s`, `2m3.5s`), as the kubelet's pull events show it.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let secs = format!("{}.{:03}", rest / 1000, rest % 1000);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

/// Registry credentials from the pod's imagePullSecrets for `image`'s registry.
fn pull_secrets(pod: &Pod, inputs: &Inputs, image: &str) -> Vec<(String, String)> {
    let registry = berth_runtime::image::pull::Reference::parse(image).registry;
    let mut out = Vec::new();
    for r in pod
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten())
    {
        let Some(secret) = inputs.secret(&r.name) else {
            continue;
        };
        let Some(data) = secret.data.as_ref() else {
            continue;
        };
        let Some(cfg) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&cfg.0) else {
            continue;
        };
        let auths = v.get("auths").unwrap_or(&v);
        for (host, entry) in auths.as_object().into_iter().flatten() {
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or("");
            let matches = host == registry
                || (host == "index.docker.io" && registry == "registry-1.docker.io");
            if !matches {
                continue;
            }
            let user = entry.get("username").and_then(Value::as_str);
            let pass = entry.get("password").and_then(Value::as_str);
            if let (Some(u), Some(p)) = (user, pass) {
                out.push((u.to_owned(), p.to_owned()));
            } else if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
                use base64::Engine;
                if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(auth)
                    && let Some((u, p)) = String::from_utf8_lossy(&raw).split_once(':')
                {
                    out.push((u.to_owned(), p.to_owned()));
                }
            }
        }
    }
    out
}

struct PodView<'a> {
    ctx: &'a Ctx,
    pod: &'a Pod,
    uid: String,
    all: Vec<String>,
    netns: PathBuf,
    pod_ip: String,
    volumes: BTreeMap<String, PathBuf>,
    env_rt: EnvRuntime,
    qos: &'static str,
    policy: String,
}

impl PodView<'_> {
    fn config(
        &self,
        c: &Container,
        attempt: u32,
        inputs: &Inputs,
    ) -> Result<ContainerConfig, String> {
        let env = env::container_env(self.pod, c, inputs, &self.env_rt)?;
        let vars: BTreeMap<String, String> = env.iter().cloned().collect();
        let expand = |v: &Option<Vec<String>>| -> Vec<String> {
            v.iter().flatten().map(|s| env::expand(s, &vars)).collect()
        };
        let pod_sc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref());
        let sc = c.security_context.as_ref();
        // The image's user is read only when runAsNonRoot asks for it.
        let image_user = || {
            self.ctx
                .runtime
                .images()
                .find(c.image.as_deref().unwrap_or_default())
                .ok()
                .and_then(|i| i.config.config().as_ref().and_then(|cc| cc.user().clone()))
                .unwrap_or_default()
        };
        super::security::verify_run_as_non_root(self.pod, &c.name, pod_sc, sc, image_user)?;
        let mut mounts = Vec::new();
        for (index, m) in c.volume_mounts.iter().flatten().enumerate() {
            let host = self.volumes.get(&m.name).ok_or_else(|| {
                format!(
                    "volume {:?} referenced by {} is not defined",
                    m.name, c.name
                )
            })?;
            let mut host = host.clone();
            // subPathExpr: the container's environment expanded into it, as the kubelet.
            let sub = match m.sub_path_expr.as_deref().filter(|s| !s.is_empty()) {
                Some(expr) => Some(env::expand(expr, &vars)),
                None => m.sub_path.clone().filter(|s| !s.is_empty()),
            };
            if let Some(sub) = sub {
                let sub = Path::new(&sub);
                if sub.is_absolute()
                    || sub
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(format!(
                        "unable to provision SubPath `{}`: must be a relative path without '..'",
                        sub.display()
                    ));
                }
                host = super::subpath::prepare(
                    &pod_dir(self.ctx, &self.uid),
                    &m.name,
                    &host,
                    sub,
                    &c.name,
                    index,
                )
                .map_err(|f| f.message(&m.name, &c.name))?;
            }
            mounts.push(Mount {
                host_path: host,
                container_path: PathBuf::from(&m.mount_path),
                read_only: m.read_only == Some(true),
            });
        }
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        let seccomp = super::security::seccomp_profile(
            pod_sc,
            sc,
            &self.ctx.node.root_dir,
            self.ctx.seccomp_default,
        )?;
        Ok(ContainerConfig {
            id: container_id(&self.uid, &c.name, attempt),
            sandbox_id: self.uid.clone(),
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            command: expand(&c.command),
            args: expand(&c.args),
            env,
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            run_as_user: sc
                .and_then(|s| s.run_as_user)
                .or(pod_sc.and_then(|s| s.run_as_user))
                .map(|u| u as u32),
            run_as_group: sc
                .and_then(|s| s.run_as_group)
                .or(pod_sc.and_then(|s| s.run_as_group))
                .map(|g| g as u32),
            supplemental_groups: pod_sc
                .and_then(|s| s.supplemental_groups.clone())
                .unwrap_or_default()
                .into_iter()
                .chain(pod_sc.and_then(|s| s.fs_group))
                .map(|g| g as u32)
                .collect(),
            privileged: sc.and_then(|s| s.privileged) == Some(true),
            read_only_rootfs: sc.and_then(|s| s.read_only_root_filesystem) == Some(true),
            no_new_privileges: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
            add_capabilities: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
            drop_capabilities: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
            mounts,
            resources: resources::container_resources(c),
            oom_score_adj: Some(
                resources::oom_score_adj(
                    self.qos,
                    c,
                    crate::node::meminfo("MemTotal:").unwrap_or(0),
                )
                .max(self.ctx.oom_score_floor),
            ),
            tty: c.tty == Some(true),
            stdin: c.stdin == Some(true),
            log_path: pod_log_dir(self.ctx, self.pod)
                .join(&c.name)
                .join(format!("{attempt}.log")),
            seccomp,
            hostname: String::new(),
            // The pod's sysctls are set once, by its pause container, in the namespaces
            // the containers join.
            sysctls: Vec::new(),
            pid_namespace_of: None,
            unmasked_proc: sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked")
                && self.pod.spec.as_ref().and_then(|s| s.host_users) == Some(false),
        })
    }

    /// Creates and starts instance `attempt` of `c`; removes instances older than the
    /// one before it (kept for `lastState` and `--previous` logs).
    fn start(
        &mut self,
        c: &Container,
        attempt: u32,
        inputs: &Inputs,
        mem: &mut Memory,
    ) -> Result<(), (String, String)> {
        self.start_in(c, attempt, None, inputs, mem)
    }

    /// [`Self::start`], in the PID namespace of container instance `pid_of` when given
    /// (an ephemeral container's target).
    fn start_in(
        &mut self,
        c: &Container,
        attempt: u32,
        pid_of: Option<String>,
        inputs: &Inputs,
        mem: &mut Memory,
    ) -> Result<(), (String, String)> {
        let result = self.create_and_start(c, attempt, pid_of, inputs, mem);
        // The kubelet's Warning "Failed" event for a container that cannot be created
        // (a seccomp profile it cannot load, a bad config, an image it cannot pull).
        // Once per distinct error: the retries every few seconds would flood the namespace.
        if let Err(err) = &result
            && mem.waiting.get(&c.name) != Some(err)
            && let (reason, message) = err
        {
            // Image errors read "Error: ErrImagePull" (their detail is in their own
            // event); the others carry their message.
            let text = match reason.as_str() {
                "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
                    Some(message.as_str())
                }
                "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" => Some(reason.as_str()),
                _ => None,
            };
            if let Some(text) = text {
                mem.events.push(Event {
                    warning: true,
                    reason: "Failed".into(),
                    message: format!("Error: {text}"),
                });
            }
        }
        result
    }

    fn create_and_start(
        &mut self,
        c: &Container,
        attempt: u32,
        pid_of: Option<String>,
        inputs: &Inputs,
        mem: &mut Memory,
    ) -> Result<(), (String, String)> {
        let rt = &self.ctx.runtime;
        let image = c.image.clone().unwrap_or_default();
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        let secrets = pull_secrets(self.pod, inputs, &image);
        // Within the back-off of a failed pull, no pull: ImagePullBackOff, as the
        // kubelet, naming the last error.
        let now = Instant::now();
        if let Some((until, _, last)) = mem.pull_backoff.get(&image)
            && now < *until
        {
            mem.events.push(Event {
                warning: false,
                reason: "BackOff".into(),
                message: format!("Back-off pulling image {image:?}"),
            });
            return Err((
                "ImagePullBackOff".to_owned(),
                format!("Back-off pulling image {image:?}: {last}"),
            ));
        }
        match ensure_image(self.ctx, &image, &policy, &secrets, &mut mem.events) {
            Ok(()) => {
                mem.pull_backoff.remove(&image);
            }
            Err(e) => {
                let reason = e.split(':').next().unwrap_or("ErrImagePull").to_owned();
                if reason == "ErrImagePull" {
                    let delay = next_pull_backoff(mem.pull_backoff.get(&image).map(|b| b.1));
                    mem.pull_backoff
                        .insert(image.clone(), (now + delay, delay, e.clone()));
                }
                return Err((reason, e));
            }
        }
        let mut cfg = self
            .config(c, attempt, inputs)
            .map_err(|e| ("CreateContainerConfigError".to_owned(), e))?;
        cfg.pid_namespace_of = pid_of;
        std::fs::create_dir_all(cfg.log_path.parent().unwrap_or(Path::new("/")))
            .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
        rt.create_container(&cfg)
            .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
        mem.events.push(Event {
            warning: false,
            reason: "Created".into(),
            message: format!("Created container: {}", c.name),
        });
        if let Err(e) = rt.start_container(&cfg.id) {
            let _ = rt.remove_container(&cfg.id);
            return Err(("RunContainerError".to_owned(), e.to_string()));
        }
        self.all.push(cfg.id.clone());
        mem.events.push(Event {
            warning: false,
            reason: "Started".into(),
            message: format!("Started container {}", c.name),
        });
        // postStart runs right after start; if it fails the container is killed.
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
            && let Some(exec) = &hook.exec
        {
            let cmd = exec.command.clone().unwrap_or_default();
            let ok = matches!(
                rt.exec_sync(&cfg.id, &cmd, Duration::from_secs(30)),
                Ok((0, _, _))
            );
            mem.post_start_done.insert(cfg.id.clone());
            if !ok {
                mem.events.push(Event {
                    warning: true,
                    reason: "FailedPostStartHook".into(),
                    message: "PostStartHook failed".into(),
                });
                let _ = rt.stop_container(&cfg.id, grace_of(self.pod));
            }
        }
        // Container GC: the newest `--maximum-dead-containers-per-container` dead
        // instances stay (default 1: `lastState` and `logs --previous` read it).
        // Its log goes with it (`<n>.log` and its rotated `<n>.log.<i>`), as the kubelet
        // removes a collected container's log: a crash loop must not fill the disk.
        if let Some(keep) = self.ctx.max_dead_per_container {
            let log_dir = pod_log_dir(self.ctx, self.pod).join(&c.name);
            for (n, id) in instances(&self.all, &self.uid, &c.name) {
                if n.saturating_add(keep) < attempt && rt.remove_container(&id).is_ok() {
                    remove_logs(&log_dir, n);
                }
            }
        }
        Ok(())
    }

    fn should_restart(&self, exit_code: i32) -> bool {
        match self.policy.as_str() {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        }
    }
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
        }
    }
    let all = view.all.clone();
    Outcome {
        status: Some(status(ctx, pod, inputs, mem, &all, &pod_ip, qos)),
        finished: false,
        wake,
    }
}

/// An ephemeral container as the container the runtime starts: the same fields, without
/// its target (ephemeral containers have no ports, probes, lifecycle or resources —
/// the apiserver refuses them).
fn ephemeral_as_container(ec: &EphemeralContainer) -> Option<Container> {
    let mut v = serde_json::to_value(ec).ok()?;
    if let Some(m) = v.as_object_mut() {
        m.remove("targetContainerName");
    }
    serde_json::from_value(v).ok()
}

/// Starts an ephemeral container once, after the pod's containers: in the PID namespace
/// of its `targetContainerName` (that container's running instance) when it names one.
/// It is never restarted, whatever its exit, as the kubelet's.
fn step_ephemeral(
    view: &mut PodView<'_>,
    ec: &EphemeralContainer,
    inputs: &Inputs,
    mem: &mut Memory,
    wake: &mut Duration,
) {
    if instances(&view.all, &view.uid, &ec.name).last().is_some() {
        return;
    }
    let Some(c) = ephemeral_as_container(ec) else {
        return;
    };
    let target = match ec
        .target_container_name
        .as_deref()
        .filter(|t| !t.is_empty())
    {
        None => None,
        Some(t) => {
            let running = instances(&view.all, &view.uid, t)
                .pop()
                .map(|(_, id)| id)
                .filter(|id| {
                    view.ctx
                        .runtime
                        .status(id)
                        .is_ok_and(|s| s.state == ContainerState::Running)
                });
            match running {
                Some(id) => Some(id),
                None => {
                    mem.waiting.insert(
                        ec.name.clone(),
                        (
                            "ContainerCreating".into(),
                            format!("waiting for the target container {t} to run"),
                        ),
                    );
                    *wake = (*wake).min(Duration::from_secs(1));
                    return;
                }
            }
        }
    };
    match view.start_in(&c, 0, target, inputs, mem) {
        Ok(()) => {
            mem.waiting.remove(&c.name);
        }
        Err(w) => {
            mem.waiting.insert(c.name.clone(), w);
            *wake = (*wake).max(Duration::from_secs(2));
        }
    }
}

/// Init containers in order; true once all completed.
fn step_init(
    view: &mut PodView<'_>,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    inputs: &Inputs,
    mem: &mut Memory,
    wake: &mut Duration,
) -> bool {
    let rt = view.ctx.runtime.clone();
    for c in spec.init_containers.iter().flatten() {
        let latest = instances(&view.all, &view.uid, &c.name).pop();
        let Some((n, id)) = latest else {
            match view.start(c, 0, inputs, mem) {
                Ok(()) => {
                    mem.waiting.remove(&c.name);
                }
                Err(w) => {
                    mem.waiting.insert(c.name.clone(), w);
                    *wake = (*wake).max(Duration::from_secs(2));
                }
            }
            return false;
        };
        let Ok(st) = rt.status(&id) else { return false };
        match &st.state {
            ContainerState::Created => {
                let _ = rt.start_container(&id);
                return false;
            }
            ContainerState::Running => return false,
            state => {
                let Some((code, finished)) = exit_of(state) else {
                    return false;
                };
                if code == 0 {
                    continue;
                }
                if view.policy == "Never" {
                    return false;
                }
                if !restart_after_backoff(view, c, n, st.started_at_ns, finished, inputs, mem, wake)
                {
                    return false;
                }
                return false;
            }
        }
    }
    true
}

/// Restarts instance `n` of `c` once its back-off has passed; true if it did.
#[allow(
    clippy::too_many_arguments,
    reason = "the worker's per-container state"
)]
fn restart_after_backoff(
    view: &mut PodView<'_>,
    c: &Container,
    n: u32,
    started_ns: Option<i128>,
    finished_ns: i128,
    inputs: &Inputs,
    mem: &mut Memory,
    wake: &mut Duration,
) -> bool {
    let count = backoff_count(&mut mem.backoff_reset, &c.name, n, started_ns, finished_ns);
    if let Some((delay, left)) = backoff_left(count, finished_ns, now_ns()) {
        mem.waiting.insert(
            c.name.clone(),
            (
                "CrashLoopBackOff".into(),
                format!(
                    "back-off {} restarting failed container={} pod={}_{}({})",
                    go_duration(delay),
                    c.name,
                    view.pod.metadata.name.as_deref().unwrap_or(""),
                    view.pod.metadata.namespace.as_deref().unwrap_or(""),
                    view.uid
                ),
            ),
        );
        if !mem.events.iter().any(|e| e.reason == "BackOff") {
            mem.events.push(Event {
                warning: true,
                reason: "BackOff".into(),
                message: format!(
                    "Back-off restarting failed container {} in pod {}",
                    c.name,
                    full_name(view.pod)
                ),
            });
        }
        *wake = (*wake).min(left.max(Duration::from_millis(100)));
        return false;
    }
    match view.start(c, n + 1, inputs, mem) {
        Ok(()) => {
            mem.waiting.remove(&c.name);
            true
        }
        Err(w) => {
            mem.waiting.insert(c.name.clone(), w);
            false
        }
    }
}

fn step_container(
    view: &mut PodView<'_>,
    c: &Container,
    inputs: &Inputs,
    mem: &mut Memory,
    wake: &mut Duration,
) {
    let rt = view.ctx.runtime.clone();
    let latest = instances(&view.all, &view.uid, &c.name).pop();
    let Some((n, id)) = latest else {
        match view.start(c, 0, inputs, mem) {
            Ok(()) => {
                mem.waiting.remove(&c.name);
            }
            Err(w) => {
                mem.waiting.insert(c.name.clone(), w);
                *wake = (*wake).max(Duration::from_secs(2));
            }
        }
        return;
    };
    let Ok(st) = rt.status(&id) else { return };
    match &st.state {
        ContainerState::Created => {
            let _ = rt.start_container(&id);
        }
        ContainerState::Running => {
            // A changed image restarts the container (the only mutable container field
            // that needs it).
            if c.image.as_deref().is_some_and(|i| i != st.image) {
                mem.events.push(Event {
                    warning: false,
                    reason: "Killing".into(),
                    message: format!("Container {} definition changed, will be restarted", c.name),
                });
                let _ = rt.stop_container(&id, grace_of(view.pod));
                let _ = view.start(c, n + 1, inputs, mem);
                return;
            }
            let started = *mem
                .seen_running
                .entry(id.clone())
                .or_insert_with(Instant::now);
            let target = Target {
                runtime: &rt,
                container_id: &id,
                netns: &view.netns,
                pod_ip: &view.pod_ip,
            };
            let mut startup_ok = true;
            if let Some(p) = &c.startup_probe {
                let s = mem
                    .probes
                    .entry((id.clone(), ProbeKind::Startup))
                    .or_default();
                if s.verdict != Some(true) {
                    if let Some(msg) = s.tick(p, c, started, target) {
                        mem.events.push(unhealthy("Startup", &msg));
                    }
                    startup_ok = s.verdict == Some(true);
                    if s.verdict == Some(false) {
                        kill_unhealthy(view, c, &id, "Startup", mem);
                        return;
                    }
                    *wake = (*wake).min(
                        s.next_due(p, started)
                            .saturating_duration_since(Instant::now()),
                    );
                }
            }
            if !startup_ok {
                return;
            }
            if let Some(p) = &c.liveness_probe {
                let s = mem
                    .probes
                    .entry((id.clone(), ProbeKind::Liveness))
                    .or_default();
                if let Some(msg) = s.tick(p, c, started, target) {
                    mem.events.push(unhealthy("Liveness", &msg));
                }
                if s.verdict == Some(false) {
                    kill_unhealthy(view, c, &id, "Liveness", mem);
                    return;
                }
                *wake = (*wake).min(
                    s.next_due(p, started)
                        .saturating_duration_since(Instant::now()),
                );
            }
            if let Some(p) = &c.readiness_probe {
                let s = mem
                    .probes
                    .entry((id.clone(), ProbeKind::Readiness))
                    .or_default();
                if let Some(msg) = s.tick(p, c, started, target) {
                    mem.events.push(unhealthy("Readiness", &msg));
                }
                *wake = (*wake).min(
                    s.next_due(p, started)
                        .saturating_duration_since(Instant::now()),
                );
            }
        }
        state => {
            let Some((code, finished)) = exit_of(state) else {
                return;
            };
            mem.probes.retain(|(cid, _), _| cid != &id);
            if view.should_restart(code) {
                restart_after_backoff(view, c, n, st.started_at_ns, finished, inputs, mem, wake);
            }
        }
    }
}

/// The kubelet's event for one failed probe run (repeats are counted on one Event).
fn unhealthy(kind: &str, msg: &str) -> Event {
    Event {
        warning: true,
        reason: "Unhealthy".into(),
        message: format!("{kind} probe failed: {msg}"),
    }
}

fn kill_unhealthy(view: &PodView<'_>, c: &Container, id: &str, kind: &str, mem: &mut Memory) {
    mem.events.push(Event {
        warning: false,
        reason: "Killing".into(),
        message: format!(
            "Container {} failed {} probe, will be restarted",
            c.name,
            kind.to_lowercase()
        ),
    });
    let grace = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.termination_grace_period_seconds)
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or_else(|| grace_of(view.pod));
    let _ = view.ctx.runtime.stop_container(id, grace);
    mem.probes.retain(|(cid, _), _| cid != id);
}

fn terminated_json(st: &ContainerStatus, id: &str) -> Value {
    let (code, signal, oom, finished) = match &st.state {
        ContainerState::Exited(e) => (e.code, e.signal, e.oom_killed, e.finished_at_ns),
        _ => (255, None, false, 0),
    };
    let reason = if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else if matches!(st.state, ContainerState::Unknown) {
        "ContainerStatusUnknown"
    } else {
        "Error"
    };
    let mut t = json!({
        "exitCode": code,
        "reason": reason,
        "containerID": format!("berth://{id}"),
    });
    if let Some(s) = signal {
        t["signal"] = json!(s);
    }
    if let Some(s) = st.started_at_ns {
        t["startedAt"] = json!(rfc3339_ns(s));
    }
    if finished > 0 {
        t["finishedAt"] = json!(rfc3339_ns(finished));
    }
    t
}

/// The status of container `c` from what the host has of it.
fn container_status(
    ctx: &Ctx,
    c: &Container,
    all: &[String],
    uid: &str,
    mem: &Memory,
    is_init: bool,
) -> (Value, bool, bool, Option<i32>) {
    let rt = &ctx.runtime;
    let mut inst = instances(all, uid, &c.name);
    let latest = inst.pop();
    let previous = inst.pop();
    let image = c.image.clone().unwrap_or_default();
    let mut s = json!({
        "name": c.name,
        "image": image,
        "imageID": "",
        "ready": false,
        "restartCount": latest.as_ref().map_or(0, |(n, _)| *n),
        "started": false,
    });
    let waiting = mem.waiting.get(&c.name);
    let mut running = false;
    let mut exit_code = None;
    if let Some((_, pid)) = &previous
        && let Ok(st) = rt.status(pid)
        && exit_of(&st.state).is_some()
    {
        s["lastState"] = json!({"terminated": terminated_json(&st, pid)});
    }
    match latest
        .as_ref()
        .and_then(|(_, id)| rt.status(id).ok().map(|st| (id.clone(), st)))
    {
        Some((id, st)) => {
            s["containerID"] = json!(format!("berth://{id}"));
            s["imageID"] = json!(st.image_id);
            match &st.state {
                ContainerState::Running => {
                    running = true;
                    let started_ok = c.startup_probe.is_none()
                        || mem
                            .probes
                            .get(&(id.clone(), ProbeKind::Startup))
                            .is_some_and(|p| p.verdict == Some(true));
                    let ready = started_ok
                        && match &c.readiness_probe {
                            None => true,
                            Some(_) => mem
                                .probes
                                .get(&(id.clone(), ProbeKind::Readiness))
                                .is_some_and(|p| p.verdict == Some(true)),
                        };
                    s["state"] = json!({"running": {"startedAt": st.started_at_ns.map(rfc3339_ns).unwrap_or_else(now_rfc3339)}});
                    s["started"] = json!(started_ok);
                    s["ready"] = json!(ready && !is_init);
                }
                ContainerState::Created => {
                    s["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
                }
                state => {
                    exit_code = exit_of(state).map(|(c, _)| c);
                    match waiting {
                        Some((reason, message)) if reason == "CrashLoopBackOff" => {
                            s["state"] = json!({"waiting": {"reason": reason, "message": message}});
                            s["lastState"] = json!({"terminated": terminated_json(&st, &id)});
                        }
                        _ => {
                            s["state"] = json!({"terminated": terminated_json(&st, &id)});
                            if is_init && exit_code == Some(0) {
                                s["ready"] = json!(true);
                            }
                        }
                    }
                }
            }
        }
        None => {
            let (reason, message) = waiting.cloned().unwrap_or_else(|| {
                (
                    if is_init {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    }
                    .into(),
                    String::new(),
                )
            });
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            s["state"] = json!({"waiting": w});
        }
    }
    let ready = s["ready"].as_bool().unwrap_or(false);
    (s, running, ready, exit_code)
}

fn condition(type_: &str, ok: bool, reason: Option<&str>, old: Option<&Value>) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = old
        .and_then(|conds| conds.as_array())
        .and_then(|conds| conds.iter().find(|c| c["type"] == type_))
        .filter(|c| c["status"] == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now_rfc3339()));
    let mut c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    c
}

/// The pod's status from the host's state.
fn status(
    ctx: &Ctx,
    pod: &Pod,
    _inputs: &Inputs,
    mem: &Memory,
    all: &[String],
    pod_ip: &str,
    qos: &str,
) -> Value {
    let uid = uid(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.as_ref();
    let old_conds = old
        .and_then(|s| serde_json::to_value(&s.conditions).ok())
        .filter(|v| !v.is_null());
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let mut init_statuses = Vec::new();
    let mut init_done = true;
    let mut init_failed = false;
    for c in spec.init_containers.iter().flatten() {
        let (s, _, _, code) = container_status(ctx, c, all, &uid, mem, true);
        if code != Some(0) {
            init_done = false;
            if code.is_some() && policy == "Never" {
                init_failed = true;
            }
        }
        init_statuses.push(s);
    }
    let mut statuses = Vec::new();
    let (mut running, mut all_ready, mut exited, mut failed) = (0, true, 0, 0);
    for c in &spec.containers {
        let (s, r, ready, code) = container_status(ctx, c, all, &uid, mem, false);
        if r {
            running += 1;
        }
        if !ready {
            all_ready = false;
        }
        if let Some(code) = code {
            exited += 1;
            if code != 0 {
                failed += 1;
            }
        }
        statuses.push(s);
    }
    let n = spec.containers.len();
    let phase = if init_failed {
        "Failed"
    } else if !init_done {
        "Pending"
    } else if exited == n && n > 0 && (policy == "Never" || (policy == "OnFailure" && failed == 0))
    {
        if failed > 0 { "Failed" } else { "Succeeded" }
    } else if running > 0 || exited > 0 {
        "Running"
    } else {
        "Pending"
    };
    // The kubelet never takes a pod out of a terminal phase.
    let old_phase = old.and_then(|s| s.phase.as_deref());
    let phase = match old_phase {
        Some(p @ ("Succeeded" | "Failed")) => p,
        _ => phase,
    };
    let sandbox_ok = !pod_ip.is_empty();
    let ready = init_done && all_ready && n > 0 && phase == "Running";
    let ready_reason = if ready {
        None
    } else if phase == "Succeeded" || phase == "Failed" {
        Some("PodCompleted")
    } else {
        Some("ContainersNotReady")
    };
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            sandbox_ok,
            None,
            old_conds.as_ref(),
        ),
        condition(
            "Initialized",
            init_done,
            (!init_done).then_some("ContainersNotInitialized"),
            old_conds.as_ref(),
        ),
        condition("Ready", ready, ready_reason, old_conds.as_ref()),
        condition("ContainersReady", ready, ready_reason, old_conds.as_ref()),
    ];
    conditions.push(condition("PodScheduled", true, None, old_conds.as_ref()));
    let start_time = old
        .and_then(|s| s.start_time.as_ref())
        .map(|t| json!(t))
        .unwrap_or_else(|| json!(now_rfc3339()));
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": ctx.node.node_ip,
        "hostIPs": [{"ip": ctx.node.node_ip}],
        "startTime": start_time,
        "qosClass": qos,
        "containerStatuses": statuses,
    });
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    let ephemeral: Vec<Value> = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .filter_map(ephemeral_as_container)
        .map(|c| {
            let (mut s, _, _, _) = container_status(ctx, &c, all, &uid, mem, false);
            // Never Ready: an ephemeral container takes no part in the pod's readiness.
            s["ready"] = json!(false);
            s
        })
        .collect();
    if !ephemeral.is_empty() {
        status["ephemeralContainerStatuses"] = json!(ephemeral);
    }
    if !pod_ip.is_empty() {
        status["podIP"] = json!(pod_ip);
        status["podIPs"] = json!([{"ip": pod_ip}]);
    }
    if let Some(e) = &mem.sandbox_error {
        status["message"] = json!(e);
    }
    if matches!(old_phase, Some("Succeeded" | "Failed")) {
        for key in ["reason", "message"] {
            if let Some(v) = old
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|v| v.get(key).cloned())
            {
                status[key] = v;
            }
        }
    }
    status
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
