//! The scheduling loop: informer-cached nodes and pods (kube-runtime reflectors), a
//! queue of pending pods ordered by priority then age, one decision at a time, binding
//! through `pods/binding`, and for pods that fit nowhere a `FailedScheduling` event and
//! a `PodScheduled=False` condition, retried with kube-scheduler's back-off (1 s
//! doubling to 10 s) and whenever the cluster changes. Pods for another scheduler
//! (`spec.schedulerName`) are left alone. Pods with PersistentVolumeClaims go through
//! the volume plugins ([`super::volumes`]) with informer caches of claims, volumes,
//! StorageClasses, CSINodes, CSIDrivers and CSIStorageCapacities, retried when any of
//! them changes; their bind task first binds or provisions their unbound
//! WaitForFirstConsumer claims on the chosen node and waits for them (PreBind).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode, CSIStorageCapacity, StorageClass};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::framework::{FitError, PodFilter, Profile};
use super::node_info::NodeInfo;
use super::preemption;
use super::volumes::{Action, Stores, VolumeCheck, prebind};
use crate::client::{Informers, Involved, record_event};
use kube::runtime::reflector;

pub const SCHEDULER_NAME: &str = "default-scheduler";
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Backoff {
    next: Instant,
    delay: Duration,
    message: String,
}

fn is_pending(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.node_name.as_deref().is_none_or(str::is_empty)
        && spec.scheduler_name.as_deref().unwrap_or(SCHEDULER_NAME) == SCHEDULER_NAME
        && pod.metadata.deletion_timestamp.is_none()
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// A change the informers saw: a node by name, a pod by namespace/name.
#[derive(Debug)]
enum Change {
    Node(String),
    Pod(String, String),
    /// A PersistentVolumeClaim, PersistentVolume, StorageClass, CSINode, CSIDriver or
    /// CSIStorageCapacity changed: pods waiting for volumes may go on.
    Claim,
}

/// How many bindings may be in flight at once (kube-scheduler binds asynchronously too;
/// many in flight let the apiserver share one fsync among them).
const PARALLEL_BINDS: usize = 256;

/// Runs until the future is dropped.
pub async fn run(client: Client, profile: Profile) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut informers = Informers::default();
    let nodes = informers.add(Api::<Node>::all(client.clone()), {
        let tx = tx.clone();
        move |n: &Node| {
            let _ = tx.send(Change::Node(n.metadata.name.clone().unwrap_or_default()));
        }
    });
    // Read at preemption only: budgets steer which pods are preempted.
    let budgets = informers.add(
        Api::<PodDisruptionBudget>::all(client.clone()),
        |_: &PodDisruptionBudget| {},
    );
    // Claims and volumes also wake the bind tasks waiting in PreBind.
    let changed = Arc::new(tokio::sync::Notify::new());
    let claims = informers.add(Api::<PersistentVolumeClaim>::all(client.clone()), {
        let (tx, changed) = (tx.clone(), changed.clone());
        move |_: &PersistentVolumeClaim| {
            let _ = tx.send(Change::Claim);
            changed.notify_waiters();
        }
    });
    let volumes = informers.add(Api::<PersistentVolume>::all(client.clone()), {
        let (tx, changed) = (tx.clone(), changed.clone());
        move |_: &PersistentVolume| {
            let _ = tx.send(Change::Claim);
            changed.notify_waiters();
        }
    });
    let stores = Stores {
        claims,
        volumes,
        classes: informers.add(Api::<StorageClass>::all(client.clone()), volume_change(&tx)),
        csi_nodes: informers.add(Api::<CSINode>::all(client.clone()), volume_change(&tx)),
        csi_drivers: informers.add(Api::<CSIDriver>::all(client.clone()), volume_change(&tx)),
        capacities: informers.add(
            Api::<CSIStorageCapacity>::all(client.clone()),
            volume_change(&tx),
        ),
    };
    let pods = informers.add(Api::<Pod>::all(client.clone()), move |p: &Pod| {
        let _ = tx.send(Change::Pod(
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        ));
    });
    let watch = prebind::Watch {
        claims: stores.claims.clone(),
        volumes: stores.volumes.clone(),
        pods,
        changed,
    };
    informers
        .run(Box::pin(schedule(
            client, profile, rx, nodes, budgets, stores, watch,
        )))
        .await;
}

/// An informer callback that reports a change of a volume kind.
fn volume_change<K>(
    tx: &tokio::sync::mpsc::UnboundedSender<Change>,
) -> impl Fn(&K) + Send + Sync + 'static {
    let tx = tx.clone();
    move |_: &K| {
        let _ = tx.send(Change::Claim);
    }
}

/// What one scheduling attempt decided.
enum Decision {
    /// A PreFilter failed: the pod fits no node, for this reason.
    PreFilter(String),
    NoFit(FitError),
    /// The node, and what PreBind has to do there.
    Fit(String, Vec<Action>),
}

/// PreFilter, Filter, Score for one pod (no await: the volume plugins borrow the
/// caches only here).
fn decide(profile: &Profile, pod: &Pod, infos: &[NodeInfo], stores: &Stores) -> Decision {
    let check = match VolumeCheck::new(pod, stores, infos) {
        Ok(c) => c,
        Err(reason) => return Decision::PreFilter(reason),
    };
    match profile.schedule_with(pod, infos, check.as_ref().map(|c| c as &dyn PodFilter)) {
        Ok(node) => {
            let actions = check
                .as_ref()
                .and_then(|c| c.decide(node).ok())
                .unwrap_or_default();
            Decision::Fit(node.name.clone(), actions)
        }
        Err(fit) => Decision::NoFit(fit),
    }
}

/// The scheduler's view, kept up to date change by change: one NodeInfo per node with
/// the pods bound (or assumed) there, and the pods waiting for a node.
#[derive(Default)]
struct Snapshot {
    infos: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Pod uid → the node it counts on.
    placed: HashMap<String, String>,
    /// Pod key (namespace/name) → uid, to find what a deleted pod was.
    uids: HashMap<String, String>,
    pending: HashMap<String, Arc<Pod>>,
    /// Pods bound to a node not seen yet (uid → node, pod).
    unseen_node: HashMap<String, (String, Pod)>,
}

impl Snapshot {
    fn unplace(&mut self, uid: &str) {
        self.unseen_node.remove(uid);
        if let Some(node) = self.placed.remove(uid)
            && let Some(&i) = self.index.get(&node)
        {
            self.infos[i].remove_pod(uid);
        }
    }

    fn place(&mut self, uid: &str, node: &str, pod: Pod) {
        self.unplace(uid);
        if let Some(&i) = self.index.get(node) {
            self.infos[i].add_pod(pod);
            self.placed.insert(uid.to_owned(), node.to_owned());
        } else {
            self.unseen_node
                .insert(uid.to_owned(), (node.to_owned(), pod));
        }
    }

    fn node(&mut self, name: &str, node: Option<Arc<Node>>) {
        match (node, self.index.get(name).copied()) {
            (Some(n), Some(i)) => self.infos[i].set_node((*n).clone()),
            (Some(n), None) => {
                self.index.insert(name.to_owned(), self.infos.len());
                self.infos.push(NodeInfo::new((*n).clone()));
                // Pods bound to it before it was seen.
                let arrived: Vec<String> = self
                    .unseen_node
                    .iter()
                    .filter(|(_, (node, _))| node == name)
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in arrived {
                    if let Some((node, pod)) = self.unseen_node.remove(&uid) {
                        self.place(&uid, &node, pod);
                    }
                }
            }
            (None, Some(i)) => {
                self.index.remove(name);
                let gone = self.infos.swap_remove(i);
                for p in &gone.pods {
                    if let Some(uid) = &p.metadata.uid {
                        self.placed.remove(uid);
                    }
                }
                if let Some(moved) = self.infos.get(i) {
                    self.index.insert(moved.name.clone(), i);
                }
            }
            (None, None) => {}
        }
    }

    /// Applies the cache's current version of pod `key` (None: deleted); `assumed`
    /// holds pods this scheduler bound that the cache does not show bound yet.
    fn pod(&mut self, key: &str, pod: Option<Arc<Pod>>, assumed: &mut HashMap<String, String>) {
        let old_uid = self.uids.remove(key);
        let new_uid = pod.as_ref().and_then(|p| p.metadata.uid.clone());
        if let Some(old) = &old_uid
            && Some(old) != new_uid.as_ref()
        {
            self.unplace(old);
            self.pending.remove(old);
            assumed.remove(old);
        }
        let (Some(pod), Some(uid)) = (pod, new_uid) else {
            return;
        };
        self.uids.insert(key.to_owned(), uid.clone());
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        if bound.is_some() {
            assumed.remove(&uid);
        }
        match bound.or_else(|| assumed.get(&uid).cloned()) {
            Some(node) if !terminal(&pod) => self.place(&uid, &node, (*pod).clone()),
            _ => self.unplace(&uid),
        }
        if is_pending(&pod) && !assumed.contains_key(&uid) {
            self.pending.insert(uid, pod);
        } else {
            self.pending.remove(&uid);
        }
    }
}

/// Applies one informer change to the snapshot; `true` if it may let pods that did
/// not fit fit now (a node changed, a pod went away or finished).
fn apply(
    snap: &mut Snapshot,
    assumed: &mut HashMap<String, String>,
    nodes: &reflector::Store<Node>,
    pods: &reflector::Store<Pod>,
    change: Change,
) -> bool {
    match change {
        Change::Node(name) => {
            let node = nodes.get(&reflector::ObjectRef::new(&name));
            snap.node(&name, node);
            true
        }
        Change::Claim => true,
        Change::Pod(ns, name) => {
            let pod = pods.get(&reflector::ObjectRef::new(&name).within(&ns));
            let freed = pod.as_ref().is_none_or(|p| terminal(p));
            snap.pod(&format!("{ns}/{name}"), pod, assumed);
            freed
        }
    }
}

/// A binding failed: the pod no longer counts on that node and waits its back-off.
fn unassume(
    snap: &mut Snapshot,
    assumed: &mut HashMap<String, String>,
    backoff: &mut HashMap<String, Backoff>,
    pods: &reflector::Store<Pod>,
    uid: &str,
    key: &str,
) {
    assumed.remove(uid);
    snap.unplace(uid);
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let pod = pods.get(&reflector::ObjectRef::new(name).within(ns));
    snap.pod(key, pod, assumed);
    note_failure(backoff, uid, String::new());
}

async fn schedule(
    client: Client,
    profile: Profile,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<Change>,
    nodes: reflector::Store<Node>,
    budgets: reflector::Store<PodDisruptionBudget>,
    stores: Stores,
    // The pods' cache is the one PreBind watches too.
    watch: prebind::Watch,
) {
    let pods = watch.pods.clone();
    let _ = nodes.wait_until_ready().await;
    let _ = stores.claims.wait_until_ready().await;
    let _ = stores.volumes.wait_until_ready().await;
    let _ = stores.classes.wait_until_ready().await;
    let _ = stores.csi_nodes.wait_until_ready().await;
    let _ = stores.csi_drivers.wait_until_ready().await;
    let _ = stores.capacities.wait_until_ready().await;
    let _ = budgets.wait_until_ready().await;
    let _ = pods.wait_until_ready().await;
    tracing::info!("scheduler: caches ready");

    let mut snap = Snapshot::default();
    for n in nodes.state() {
        let name = n.metadata.name.clone().unwrap_or_default();
        snap.node(&name, Some(n));
    }
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    // Pods bound by us that the pod cache has not shown bound yet.
    let mut assumed: HashMap<String, String> = HashMap::new();
    for p in pods.state() {
        let key = format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or_default(),
            p.metadata.name.as_deref().unwrap_or_default()
        );
        snap.pod(&key, Some(p), &mut assumed);
    }
    let binds = Arc::new(tokio::sync::Semaphore::new(PARALLEL_BINDS));
    // Failed bindings come back here: (uid, pod key).
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let mut cluster_changed = false;
    loop {
        // Everything that changed since the last round.
        while let Ok(change) = changes.try_recv() {
            cluster_changed |= apply(&mut snap, &mut assumed, &nodes, &pods, change);
        }
        while let Ok((uid, key)) = failed_rx.try_recv() {
            unassume(&mut snap, &mut assumed, &mut backoff, &pods, &uid, &key);
        }
        if cluster_changed {
            // A cluster change may make unschedulable pods fit: retry them now.
            for b in backoff.values_mut() {
                b.next = b.next.min(Instant::now());
            }
            cluster_changed = false;
        }
        backoff.retain(|uid, _| snap.pending.contains_key(uid));

        let now = Instant::now();
        let mut pending: Vec<Arc<Pod>> = snap
            .pending
            .iter()
            .filter(|(uid, _)| backoff.get(*uid).is_none_or(|b| b.next <= now))
            .map(|(_, p)| p.clone())
            .collect();
        pending.sort_by(|a, b| {
            let pa = a.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
            let pb = b.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
            pb.cmp(&pa).then_with(|| {
                a.metadata
                    .creation_timestamp
                    .cmp(&b.metadata.creation_timestamp)
            })
        });
        for pod in pending {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let ns = pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let started = Instant::now();
            let decision = decide(&profile, &pod, &snap.infos, &stores);
            if let Decision::PreFilter(reason) = &decision {
                let n = snap.infos.len();
                let message = format!(
                    "0/{n} nodes are available: {reason}. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling."
                );
                if backoff.get(&uid).is_none_or(|b| b.message != message) {
                    report_unschedulable(&client, &pod, &message).await;
                }
                note_failure(&mut backoff, &uid, message);
                continue;
            }
            match decision {
                Decision::PreFilter(_) => {}
                Decision::Fit(node_name, actions) => {
                    // Assume: count the pod on its node now, bind in the background.
                    let mut placed = (*pod).clone();
                    if let Some(spec) = placed.spec.as_mut() {
                        spec.node_name = Some(node_name.clone());
                    }
                    snap.place(&uid, &node_name, placed);
                    snap.pending.remove(&uid);
                    assumed.insert(uid.clone(), node_name.clone());
                    backoff.remove(&uid);
                    super::metrics::observe(true, started.elapsed());
                    let permit = binds.clone().acquire_owned().await;
                    let (client, failed) = (client.clone(), failed_tx.clone());
                    let involved = Involved::of(&*pod);
                    let watch = watch.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        if !actions.is_empty()
                            && let Err(err) = prebind::bind_volumes(
                                &client,
                                &pod,
                                &node_name,
                                actions,
                                &watch,
                                prebind::BIND_TIMEOUT,
                            )
                            .await
                        {
                            // kube-scheduler's words for a failed PreBind plugin.
                            let message =
                                format!("running PreBind plugin \"VolumeBinding\": {err}");
                            tracing::warn!(pod = %format!("{ns}/{name}"), %message, "volume binding failed");
                            report_failure(&client, &pod, "SchedulerError", &message).await;
                            let _ = failed.send((uid, format!("{ns}/{name}")));
                            return;
                        }
                        match bind(&client, &ns, &name, &node_name).await {
                            Ok(()) => {
                                tracing::debug!(pod = %format!("{ns}/{name}"), node = %node_name, "bound");
                                record_event(
                                    &client,
                                    SCHEDULER_NAME,
                                    &involved,
                                    "Normal",
                                    "Scheduled",
                                    &format!("Successfully assigned {ns}/{name} to {node_name}"),
                                )
                                .await;
                            }
                            Err(err) => {
                                tracing::warn!(pod = %format!("{ns}/{name}"), %err, "binding failed");
                                let _ = failed.send((uid, format!("{ns}/{name}")));
                            }
                        }
                    });
                }
                Decision::NoFit(fit) => {
                    super::metrics::observe(false, started.elapsed());
                    let message = fit.to_string();
                    let repeated = backoff.get(&uid).is_some_and(|b| b.message == message);
                    if !repeated {
                        report_unschedulable(&client, &pod, &message).await;
                    }
                    if !waiting_for_victims(&pod, &snap.infos)
                        && let Some((node, victims)) = preemption::find(
                            &profile,
                            &pod,
                            &snap.infos,
                            &budgets
                                .state()
                                .iter()
                                .map(|b| (**b).clone())
                                .collect::<Vec<_>>(),
                        )
                    {
                        preempt(&client, &pod, &node, &victims).await;
                    }
                    note_failure(&mut backoff, &uid, message);
                }
            }
        }
        let wake = backoff
            .values()
            .map(|b| b.next)
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(5))
            .max(Duration::from_millis(10));
        tokio::select! {
            Some(change) = changes.recv() => {
                cluster_changed |= apply(&mut snap, &mut assumed, &nodes, &pods, change);
            }
            Some((uid, key)) = failed_rx.recv() => {
                unassume(&mut snap, &mut assumed, &mut backoff, &pods, &uid, &key);
            }
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

fn note_failure(backoff: &mut HashMap<String, Backoff>, uid: &str, message: String) {
    let delay = backoff
        .get(uid)
        .map(|b| (b.delay * 2).min(MAX_BACKOFF))
        .unwrap_or(INITIAL_BACKOFF);
    backoff.insert(
        uid.to_string(),
        Backoff {
            next: Instant::now() + delay,
            delay,
            message,
        },
    );
}

async fn bind(client: &Client, ns: &str, name: &str, node: &str) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    api.create_subresource::<serde_json::Value, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &body,
    )
    .await
    .map(drop)
}

/// The PodScheduled=False condition and the FailedScheduling event.
async fn report_unschedulable(client: &Client, pod: &Pod, message: &str) {
    report_failure(client, pod, "Unschedulable", message).await;
}

/// The PodScheduled=False condition with `reason` (Unschedulable, or SchedulerError
/// when binding failed) and the FailedScheduling event.
async fn report_failure(client: &Client, pod: &Pod, reason: &str, message: &str) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let now = jiff::Timestamp::now().to_string();
    // The condition first: whoever sees the event finds the pod already marked.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": reason,
        "message": message, "lastTransitionTime": now,
    }]}});
    if let Err(err) = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        tracing::warn!(%err, pod = %name, "could not set PodScheduled=False");
    }
    record_event(
        client,
        SCHEDULER_NAME,
        &Involved::of(pod),
        "Warning",
        "FailedScheduling",
        message,
    )
    .await;
}

/// A pod already nominated to a node where pods are still terminating waits for them
/// instead of preempting again.
fn waiting_for_victims(pod: &Pod, infos: &[NodeInfo]) -> bool {
    let Some(nominated) = pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
    else {
        return false;
    };
    infos.iter().find(|n| n.name == nominated).is_some_and(|n| {
        n.pods
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some())
    })
}

/// Deletes the victims (each gets a `Preempted` event) and nominates the node.
async fn preempt(client: &Client, pod: &Pod, node: &str, victims: &[Pod]) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    for v in victims {
        let vns = v
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let vname = v.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &vns);
        match api.delete(&vname, &Default::default()).await {
            Ok(_) => {
                tracing::info!(victim = %format!("{vns}/{vname}"), preemptor = %format!("{ns}/{name}"), %node, "preempted");
                let message = format!("Preempted by pod {uid} on node {node}");
                record_event(
                    client,
                    SCHEDULER_NAME,
                    &Involved::of(v),
                    "Normal",
                    "Preempted",
                    &message,
                )
                .await;
            }
            Err(err) => tracing::warn!(%err, victim = %vname, "preemption delete failed"),
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"status": {"nominatedNodeName": node}});
    if let Err(err) = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        tracing::warn!(%err, pod = %name, "could not set nominatedNodeName");
    }
}
