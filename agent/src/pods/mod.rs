//! Pods bound to this node: a `kube` reflector (fieldSelector `spec.nodeName`) feeds one
//! worker task per pod; each worker syncs level-triggered (on a change of its Pod, and
//! whenever a probe, a back-off or the 1 s relist is due), patches the Pod's status
//! only when it changed, and finalizes deleted pods once the host is clean. Sandboxes
//! on the host that no Pod claims (deleted while the agent was down) are torn down.

pub mod env;
pub mod eviction;
pub mod image_gc;
pub mod inputs;
pub mod metrics;
pub mod probe;
pub mod registries;
pub mod resources;
pub mod security;
pub mod static_pods;
pub mod subpath;
pub mod sysctls;
pub mod userns;
pub mod volumes;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{reflector, watcher};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::network::Network;
use crate::node::NodeConfig;
use berth_runtime::pod::Runtime;

/// What every worker shares.
pub struct Ctx {
    pub client: Client,
    pub runtime: Arc<Runtime>,
    pub network: Network,
    pub node: NodeConfig,
    /// `<root>/pods/<uid>`: volumes.
    pub pods_dir: PathBuf,
    /// `<logs>/<ns>_<name>_<uid>/<container>/<n>.log`.
    pub logs_dir: PathBuf,
    pub pause_image: String,
    pub cgroup_root: String,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// The lowest oom_score_adj containers can get: without CAP_SYS_RESOURCE the
    /// kernel refuses any value below the agent's own (Guaranteed pods' −997 then
    /// becomes that value).
    pub oom_score_floor: i32,
    /// Static pod manifests (`--pod-manifest-path`).
    pub static_pod_dir: Option<PathBuf>,
    /// The Node object's uid (mirror pods are owned by it).
    pub node_uid: String,
    /// The last CPU readings behind `/stats/summary`'s usageNanoCores.
    pub stats_rates: Arc<std::sync::Mutex<crate::kubelet_api::stats::Rates>>,
    /// The Service load balancer's metrics, when it runs.
    pub lb_metrics: Option<Arc<std::sync::Mutex<crate::service_lb::LbMetrics>>>,
    /// NetworkPolicy enforcement, when it runs (its metrics).
    pub netpol: Option<Arc<crate::netpol::Enforcer>>,
    /// The node's DNS server, when it runs one (its metrics).
    pub dns: Option<Arc<crate::dns::Dns>>,
    /// `--seccomp-default`: containers that name no seccomp profile get RuntimeDefault.
    pub seccomp_default: bool,
    /// The sysctls pods may set (`--allowed-unsafe-sysctls` beside the safe set).
    pub sysctls: sysctls::Allowlist,
    /// `--maximum-dead-containers-per-container`: dead instances kept per container
    /// (None: all).
    pub max_dead_per_container: Option<u32>,
    /// `--registry-config`: registry mirrors and per-registry settings.
    pub registries: Arc<registries::RegistryConfig>,
    /// How many image pulls may run at once (`--serialize-image-pulls`: one;
    /// `--max-parallel-image-pulls`); `None`: no limit.
    pub pull_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// How long the steps of pod starts take (`kubelet_*_duration_seconds`).
    pub start_metrics: Arc<metrics::PodStartMetrics>,
    /// The CSI drivers registered on this node (`--csi-socket`).
    pub csi: crate::csi::Drivers,
}

impl Ctx {
    /// What pod volumes need to mount claims through CSI.
    pub fn csi_mounts(&self) -> volumes::Csi<'_> {
        volumes::Csi {
            drivers: &self.csi,
            root: &self.node.root_dir,
        }
    }
}

/// The pull limit `--serialize-image-pulls` and `--max-parallel-image-pulls` set, or
/// the kubelet's refusal of the pair.
pub fn pull_slots(
    serialize: bool,
    max_parallel: Option<u32>,
) -> Result<Option<Arc<tokio::sync::Semaphore>>, String> {
    match (serialize, max_parallel) {
        (true, None | Some(1)) => Ok(Some(Arc::new(tokio::sync::Semaphore::new(1)))),
        (true, Some(n)) => Err(format!(
            "invalid configuration: maxParallelImagePulls (--max-parallel-image-pulls) {n} must be 1 or nil when serializeImagePulls (--serialize-image-pulls) is true"
        )),
        (false, Some(0)) => Err(
            "invalid configuration: maxParallelImagePulls (--max-parallel-image-pulls) 0 must be a positive number".into(),
        ),
        (false, Some(n)) => Ok(Some(Arc::new(tokio::sync::Semaphore::new(n as usize)))),
        (false, None) => Ok(None),
    }
}

/// The lowest oom_score_adj this process may give its children.
pub fn oom_score_floor() -> i32 {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if eff & (1 << CAP_SYS_RESOURCE) != 0 {
        return -1000;
    }
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("node", &self.node.name)
            .finish_non_exhaustive()
    }
}

/// How often ConfigMaps and Secrets used by a pod are read again.
const INPUT_REFRESH: Duration = Duration::from_secs(10);
/// How soon inputs are fetched again while a claim of the pod is not usable.
const CLAIM_REFRESH: Duration = Duration::from_secs(1);

struct Handle {
    tx: watch::Sender<Option<Arc<Pod>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the pod workers of this node until the future is dropped. The pods come
/// from a reflector whose store (`writer`'s reader) others — eviction — read.
pub async fn run(ctx: Arc<Ctx>, writer: reflector::store::Writer<Pod>) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node.name));
    let mut stream = reflector(writer, watcher(pods, cfg)).boxed();
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut listing: Vec<Arc<Pod>> = Vec::new();
    // Static pods: read once before the API pods are listed (so an agent restart does
    // not take them for orphans), then every few seconds.
    let (static_tx, mut static_rx) = tokio::sync::mpsc::channel::<Vec<Pod>>(1);
    let mut statics: HashMap<String, Arc<Pod>> = HashMap::new();
    if let Some(dir) = ctx.static_pod_dir.clone() {
        let node = ctx.node.name.clone();
        let (d, n) = (dir.clone(), node.clone());
        let first = tokio::task::spawn_blocking(move || static_pods::scan(&d, &n))
            .await
            .unwrap_or_default();
        for p in first {
            let p = Arc::new(p);
            if let Some(uid) = p.metadata.uid.clone() {
                statics.insert(uid, p.clone());
            }
            dispatch(&ctx, &mut workers, p);
        }
        let ctx2 = ctx.clone();
        tokio::spawn(async move {
            loop {
                let (d, n) = (dir.clone(), node.clone());
                let found = tokio::task::spawn_blocking(move || static_pods::scan(&d, &n))
                    .await
                    .unwrap_or_default();
                for p in &found {
                    static_pods::ensure_mirror(&ctx2.client, p, &ctx2.node_uid).await;
                }
                if static_tx.send(found).await.is_err() {
                    return;
                }
                tokio::time::sleep(static_pods::CHECK_EVERY).await;
            }
        });
    }
    loop {
        let event = tokio::select! {
            Some(found) = static_rx.recv() => {
                workers.retain(|_, h| !h.task.is_finished());
                let found: HashMap<String, Arc<Pod>> = found
                    .into_iter()
                    .filter_map(|p| Some((p.metadata.uid.clone()?, Arc::new(p))))
                    .collect();
                for (uid, p) in &statics {
                    if !found.contains_key(uid) {
                        if let Some(h) = workers.get(uid) {
                            let _ = h.tx.send(None);
                        }
                        static_pods::delete_mirror(&ctx.client, p).await;
                    }
                }
                for (uid, p) in &found {
                    if !workers.contains_key(uid) {
                        dispatch(&ctx, &mut workers, p.clone());
                    }
                }
                statics = found;
                continue;
            }
            event = stream.next() => match event {
                Some(e) => e,
                None => return,
            },
        };
        workers.retain(|_, h| !h.task.is_finished());
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(p)) if !static_pods::is_mirror(&p) => {
                listing.push(Arc::new(p));
            }
            Ok(watcher::Event::InitDone) => {
                let mut seen: std::collections::HashSet<String> = listing
                    .iter()
                    .filter_map(|p| p.metadata.uid.clone())
                    .collect();
                for p in std::mem::take(&mut listing) {
                    dispatch(&ctx, &mut workers, p);
                }
                seen.extend(statics.keys().cloned());
                // Workers of pods that vanished while the watch was down.
                for (uid, h) in &workers {
                    if !seen.contains(uid) {
                        let _ = h.tx.send(None);
                    }
                }
                let ctx2 = ctx.clone();
                let claimed: Vec<String> = seen.into_iter().collect();
                let _ = tokio::task::spawn_blocking(move || remove_orphans(&ctx2, &claimed)).await;
            }
            Ok(watcher::Event::Apply(p)) if !static_pods::is_mirror(&p) => {
                dispatch(&ctx, &mut workers, Arc::new(p));
            }
            Ok(watcher::Event::Delete(p)) if !static_pods::is_mirror(&p) => {
                if let Some(uid) = &p.metadata.uid
                    && let Some(h) = workers.get(uid)
                {
                    let _ = h.tx.send(None);
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%err, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn dispatch(ctx: &Arc<Ctx>, workers: &mut HashMap<String, Handle>, pod: Arc<Pod>) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(h) = workers.get(&uid) {
        let _ = h.tx.send(Some(pod));
        return;
    }
    let (tx, rx) = watch::channel(Some(pod.clone()));
    let task = tokio::spawn(work(ctx.clone(), pod, rx));
    workers.insert(uid, Handle { tx, task });
}

/// Removes every pod sandbox (and its containers) from the host; returns how many.
pub fn remove_all(ctx: &Ctx) -> usize {
    remove_orphans(ctx, &[])
}

/// Sandboxes and containers on the host that no pod of this node claims.
fn remove_orphans(ctx: &Ctx, claimed: &[String]) -> usize {
    let mut removed = 0;
    for uid in ctx.runtime.sandboxes() {
        if claimed.contains(&uid) {
            continue;
        }
        removed += 1;
        tracing::info!(%uid, "removing the sandbox of a pod that no longer exists");
        if let Err(err) = worker::teardown(ctx, &uid, None, None) {
            tracing::warn!(%uid, %err, "removing an orphaned pod");
        }
    }
    removed
}

/// Records core/v1 Events about `pod`, as the kubelet does (source `kubelet`, host
/// the node) — what `kubectl describe pod` and `kubectl get events` show.
/// The events of one pod already recorded, by (type, reason, message): the Event's
/// name, its count and when it was last seen — client-go's event correlator, which
/// turns a repeat within 10 minutes into `count + 1` on the same Event (what `kubectl
/// describe` shows as "x5 over 3m") instead of a new object.
type EventLog = Arc<tokio::sync::Mutex<HashMap<(bool, String, String), (String, i32, Instant)>>>;

/// How long a repeated event is counted on the Event already recorded.
const EVENT_DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// The kubelet's admission of a pod new to the node (no sandbox yet, not terminal): one
/// it cannot run as asked — a sysctl it does not allow, an AppArmor profile — is
/// rejected before anything runs: a Warning event with the reason, and phase Failed with the reason and `Pod was
/// rejected: <message>`. Returns the rejected pod as stored.
async fn admit(
    ctx: &Ctx,
    api: &Api<Pod>,
    events_api: &Api<CoreEvent>,
    log: &EventLog,
    pod: &Arc<Pod>,
) -> Option<Arc<Pod>> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    // The kubelet's admit handlers, in its order: sysctls, then AppArmor; then berth's
    // SELinux refusal.
    let (reason, message) = match (
        ctx.sysctls.admit(pod),
        security::admit_app_armor(pod),
        security::admit_selinux(pod),
    ) {
        (Err(m), _, _) => (sysctls::FORBIDDEN_REASON, m),
        (Ok(()), Err(m), _) => (security::APPARMOR_REASON, m),
        (Ok(()), Ok(()), Err(m)) => (security::SELINUX_REASON, m),
        (Ok(()), Ok(()), Ok(())) => return None,
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if ctx.runtime.sandbox(&uid).is_ok() {
        // Admitted by an earlier run of the agent; it keeps running.
        return None;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    tracing::warn!(pod = %name, %message, "pod rejected");
    let event = worker::Event {
        warning: true,
        reason: reason.into(),
        message: message.clone(),
    };
    record(events_api, log, &ctx.node.name, pod, vec![event]).await;
    let status = json!({"status": {
        "phase": "Failed",
        "reason": reason,
        "message": format!("Pod was rejected: {message}"),
        "qosClass": resources::qos_class(pod),
    }});
    for _ in 0..5 {
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            Ok(p) => return Some(Arc::new(p)),
            Err(kube::Error::Api(e)) if e.code == 404 => return None,
            Err(err) => {
                tracing::warn!(pod = %name, %err, "marking the pod rejected; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // Never run it unadmitted: the copy the worker goes on with is terminal.
    let mut p = (**pod).clone();
    let st = p.status.get_or_insert_with(Default::default);
    st.phase = Some("Failed".into());
    st.reason = Some(reason.into());
    st.message = Some(format!("Pod was rejected: {message}"));
    Some(Arc::new(p))
}

async fn record(
    events_api: &Api<CoreEvent>,
    log: &EventLog,
    node: &str,
    pod: &Pod,
    events: Vec<worker::Event>,
) {
    // One batch at a time per pod, so a repeat finds the Event its first made.
    let mut seen = log.lock().await;
    seen.retain(|_, (_, _, at)| at.elapsed() < EVENT_DEDUP_WINDOW);
    for e in events {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        let key = (e.warning, e.reason.clone(), e.message.clone());
        if let Some((event_name, count, at)) = seen.get_mut(&key) {
            let patch = json!({"count": *count + 1, "lastTimestamp": now});
            match events_api
                .patch(event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    *count += 1;
                    *at = Instant::now();
                    continue;
                }
                // Gone (its TTL ran out) or refused: record it anew.
                Err(err) => tracing::debug!(%err, "counting a repeated event"),
            }
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ev = CoreEvent {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: pod.metadata.namespace.clone(),
                ..Default::default()
            },
            involved_object: pod.object_ref(&()),
            reason: Some(e.reason),
            message: Some(e.message),
            type_: Some(if e.warning { "Warning" } else { "Normal" }.into()),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("kubelet".into()),
                host: Some(node.to_owned()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(node.to_owned()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        match events_api.create(&Default::default(), &ev).await {
            Ok(created) => {
                if let Some(n) = created.metadata.name {
                    seen.insert(key, (n, 1, Instant::now()));
                }
            }
            Err(err) => tracing::debug!(%err, "recording an event"),
        }
    }
}

/// One pod's worker.
async fn work(ctx: Arc<Ctx>, first: Arc<Pod>, mut rx: watch::Receiver<Option<Arc<Pod>>>) {
    let uid = first.metadata.uid.clone().unwrap_or_default();
    let ns = first
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = first.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let events_api: Api<CoreEvent> = Api::namespaced(ctx.client.clone(), &ns);
    let is_static = first
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/config.source"))
        .is_some_and(|s| s == "file");
    let mut last_pod = first;
    let mut mem = worker::Memory::seen_now();
    let mut inputs = Arc::new(inputs::Inputs::default());
    let mut inputs_at: Option<Instant> = None;
    // Whether `inputs` ever came whole from the apiserver: a refetch forced by a new
    // copy of the pod must not replace good inputs with a failed fetch.
    let mut inputs_good = false;
    let mut last_status: Option<Value> = None;
    let event_log = EventLog::default();
    if let Some(rejected) = admit(&ctx, &api, &events_api, &event_log, &last_pod).await {
        last_pod = rejected;
        // A rejected pod never runs. The watch may still deliver copies older than the
        // rejection: only its deletion is acted on (below, with nothing to tear down).
        loop {
            let current = rx.borrow_and_update().clone();
            match current {
                None => break,
                Some(p) if p.metadata.deletion_timestamp.is_some() => break,
                Some(_) => {}
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
    loop {
        let current = rx.borrow_and_update().clone();
        let gone = current.is_none();
        if let Some(p) = &current {
            // A new spec may name other ConfigMaps or Secrets: fetch again. A copy
            // that differs only in status (most often our own write coming back) does
            // not: refetching on those tripled the API calls of a pod start.
            if !Arc::ptr_eq(p, &last_pod) && p.spec != last_pod.spec {
                inputs_at = None;
            }
            last_pod = p.clone();
        }
        let terminating = gone || last_pod.metadata.deletion_timestamp.is_some();
        if terminating {
            let pod = last_pod.clone();
            let ctx2 = ctx.clone();
            let log_dir = worker::pod_log_dir(&ctx, &pod);
            let uid2 = uid.clone();
            let res = tokio::task::spawn_blocking(move || {
                worker::teardown(&ctx2, &uid2, Some(&pod), Some(&log_dir))
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match res {
                Ok(()) => {
                    if !gone {
                        let dp = DeleteParams {
                            grace_period_seconds: Some(0),
                            preconditions: Some(Preconditions {
                                uid: Some(uid.clone()),
                                resource_version: None,
                            }),
                            ..Default::default()
                        };
                        match api.delete(&name, &dp).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                            Err(err) => {
                                tracing::warn!(pod = %format!("{ns}/{name}"), %err, "finalizing the pod");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                        }
                    }
                    tracing::info!(pod = %format!("{ns}/{name}"), "pod removed from the node");
                    return;
                }
                Err(err) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), %err, "tearing the pod down; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        // Claims not usable yet (not bound, volume not fetched) are asked again soon.
        let claims_pending = inputs.claims.values().any(Result::is_err);
        if inputs_at.is_none_or(|t| {
            t.elapsed() >= INPUT_REFRESH || (claims_pending && t.elapsed() >= CLAIM_REFRESH)
        }) {
            let fresh = inputs::fetch(&ctx.client, &last_pod).await;
            // With the apiserver unreachable, the last good ConfigMaps and Secrets
            // stay in use: restarts go on without it.
            let ok = fresh.errors.is_empty();
            if ok || !inputs_good {
                inputs = Arc::new(fresh);
                inputs_good |= ok;
            }
            inputs_at = Some(Instant::now());
        }
        let ctx2 = ctx.clone();
        let pod = last_pod.clone();
        let inp = inputs.clone();
        let taken = std::mem::take(&mut mem);
        let (m, outcome) =
            match tokio::task::spawn_blocking(move || worker::sync_blocking(ctx2, pod, inp, taken))
                .await
            {
                Ok(x) => x,
                Err(err) => {
                    tracing::error!(%err, "pod sync panicked");
                    (
                        worker::Memory::default(),
                        worker::Outcome {
                            status: None,
                            finished: false,
                            wake: Duration::from_secs(1),
                        },
                    )
                }
            };
        mem = m;
        // Events go out beside the status write, not before it: a pod's Ready does not
        // wait on its Pulled/Created/Started events (a burst of pods makes hundreds).
        let events = std::mem::take(&mut mem.events);
        if !events.is_empty() {
            let (events_api, log, node, pod) = (
                events_api.clone(),
                event_log.clone(),
                ctx.node.name.clone(),
                last_pod.clone(),
            );
            tokio::spawn(async move { record(&events_api, &log, &node, &pod, events).await });
        }
        if let Some(status) = outcome.status {
            let current: Value = last_pod
                .status
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null);
            let changed = last_status.as_ref() != Some(&status) && !same_status(&current, &status);
            if changed {
                match api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": status})),
                    )
                    .await
                {
                    Ok(p) => {
                        last_status = Some(status);
                        // A static pod's status lands on its mirror, which is not
                        // the pod this worker runs.
                        if !is_static {
                            last_pod = Arc::new(p);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(pod = %format!("{ns}/{name}"), %err, "patching the pod status")
                    }
                }
            }
        }
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(outcome.wake) => {}
        }
    }
}

/// Whether the apiserver's status already says what `new` says (ignoring timestamps
/// the apiserver normalized).
fn same_status(current: &Value, new: &Value) -> bool {
    let Some(obj) = new.as_object() else {
        return false;
    };
    obj.iter().all(|(k, v)| current.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_limits_as_the_kubelet_validates_them() {
        let permits = |s: bool, m: Option<u32>| {
            pull_slots(s, m).map(|o| o.map(|sem| sem.available_permits()))
        };
        assert_eq!(permits(true, None), Ok(Some(1)));
        assert_eq!(permits(true, Some(1)), Ok(Some(1)));
        assert!(
            permits(true, Some(3))
                .expect_err("refused")
                .contains("must be 1 or nil")
        );
        assert_eq!(permits(false, Some(3)), Ok(Some(3)));
        assert_eq!(permits(false, None), Ok(None));
        assert!(permits(false, Some(0)).is_err());
    }
}
