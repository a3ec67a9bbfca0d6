//! The scheduling loop: informer-cached nodes and pods (kube-runtime reflectors), a
//! queue of pending pods ordered by priority then age, one decision at a time, binding
//! through `pods/binding`, and for pods that fit nowhere a `FailedScheduling` event and
//! a `PodScheduled=False` condition, retried with kube-scheduler's back-off (1 s
//! doubling to 10 s) and whenever the cluster changes. Pods for another scheduler
//! (`spec.schedulerName`) are left alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::framework::Profile;
use super::node_info::NodeInfo;
use super::preemption;
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

/// Runs until the future is dropped.
pub async fn run(client: Client, profile: Profile) {
    let changed = Arc::new(tokio::sync::Notify::new());
    fn notify<K>(c: &Arc<tokio::sync::Notify>) -> impl Fn(&K) + Send + 'static {
        let c = c.clone();
        move |_: &K| c.notify_one()
    }
    let mut informers = Informers::default();
    let nodes = informers.add(Api::<Node>::all(client.clone()), notify(&changed));
    let pods = informers.add(Api::<Pod>::all(client.clone()), notify(&changed));
    informers
        .run(schedule(client, profile, changed, nodes, pods))
        .await;
}

async fn schedule(
    client: Client,
    profile: Profile,
    changed: Arc<tokio::sync::Notify>,
    nodes: reflector::Store<Node>,
    pods: reflector::Store<Pod>,
) {
    let _ = nodes.wait_until_ready().await;
    let _ = pods.wait_until_ready().await;
    tracing::info!("scheduler: caches ready");

    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    // Pods bound by us that the pod cache has not shown bound yet.
    let mut assumed: HashMap<String, String> = HashMap::new();
    loop {
        let all_pods = pods.state();
        let mut infos: Vec<NodeInfo> = nodes
            .state()
            .iter()
            .map(|n| NodeInfo::new((**n).clone()))
            .collect();
        let index: HashMap<String, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let mut live = std::collections::HashSet::new();
        for pod in &all_pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            live.insert(uid.clone());
            let bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty());
            if bound.is_some() {
                assumed.remove(&uid);
            }
            if let Some(node) = bound.or_else(|| assumed.get(&uid).cloned())
                && !terminal(pod)
                && let Some(&i) = index.get(&node)
            {
                infos[i].add_pod((**pod).clone());
            }
        }
        assumed.retain(|uid, _| live.contains(uid));
        backoff.retain(|uid, _| live.contains(uid));

        let now = Instant::now();
        let mut pending: Vec<&Pod> = all_pods
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| is_pending(p))
            .filter(|p| !assumed.contains_key(p.metadata.uid.as_deref().unwrap_or("")))
            .filter(|p| {
                backoff
                    .get(p.metadata.uid.as_deref().unwrap_or(""))
                    .is_none_or(|b| b.next <= now)
            })
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
            match profile.schedule(pod, &infos) {
                Ok(node) => {
                    let node_name = node.name.clone();
                    match bind(&client, &ns, &name, &node_name).await {
                        Ok(()) => {
                            tracing::debug!(pod = %format!("{ns}/{name}"), node = %node_name, "bound");
                            let mut placed = pod.clone();
                            if let Some(spec) = placed.spec.as_mut() {
                                spec.node_name = Some(node_name.clone());
                            }
                            if let Some(&i) = index.get(&node_name) {
                                infos[i].add_pod(placed);
                            }
                            assumed.insert(uid.clone(), node_name);
                            backoff.remove(&uid);
                        }
                        Err(err) => {
                            tracing::warn!(pod = %format!("{ns}/{name}"), %err, "binding failed");
                            note_failure(&mut backoff, &uid, String::new());
                        }
                    }
                }
                Err(fit) => {
                    let message = fit.to_string();
                    let repeated = backoff.get(&uid).is_some_and(|b| b.message == message);
                    if !repeated {
                        report_unschedulable(&client, pod, &message).await;
                    }
                    if !waiting_for_victims(pod, &infos)
                        && let Some((node, victims)) = preemption::find(&profile, pod, &infos)
                    {
                        preempt(&client, pod, &node, &victims).await;
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
            _ = changed.notified() => {
                // A cluster change may make unschedulable pods fit: retry them now.
                for b in backoff.values_mut() {
                    b.next = b.next.min(Instant::now());
                }
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
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
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
