//! Node lifecycle: a node whose kubelet stops renewing its Lease in `kube-node-lease`
//! (or, without a Lease, stops posting its Ready heartbeat) for the grace period gets
//! its conditions set to Unknown ("Kubelet stopped posting node status.") and the
//! `node.kubernetes.io/unreachable` NoExecute and NoSchedule taints; a node reporting
//! Ready=False gets `node.kubernetes.io/not-ready`; both go once it is healthy again.
//! As TaintNodesByCondition, MemoryPressure, DiskPressure, PIDPressure and
//! NetworkUnavailable bring their NoSchedule taints, `spec.unschedulable` its own.
//! The taint manager then evicts (deletes) the pods on NoExecute-tainted nodes: at
//! once when a taint is not tolerated, after the smallest matching tolerationSeconds
//! otherwise (300 s by default, from DefaultTolerationSeconds at admission).

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::client::{Informers, Involved, record_event};
use crate::scheduler::filters::taints::tolerates;

const COMPONENT: &str = "node-controller";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// TaintNodesByCondition: condition type → the NoSchedule taint it brings.
const CONDITION_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// How often nodes and NoExecute taints are looked at.
const PERIOD: Duration = Duration::from_secs(1);

pub fn start(
    client: Client,
    grace: Duration,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let nodes = informers.add(Api::<Node>::all(client.clone()), |_: &Node| {});
    let leases = informers.add(
        Api::<Lease>::namespaced(informers.watch_client(&client), "kube-node-lease"),
        |_: &Lease| {},
    );
    let pods = informers.add(Api::<Pod>::all(client.clone()), |_: &Pod| {});
    async move {
        let _ = nodes.wait_until_ready().await;
        let _ = leases.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        // When each node was first seen or last heard from, by this controller's clock.
        let mut heard: HashMap<String, (String, tokio::time::Instant)> = HashMap::new();
        loop {
            monitor(&client, &nodes, &leases, &mut heard, grace).await;
            evict(&client, &nodes, &pods).await;
            tokio::time::sleep(PERIOD).await;
        }
    }
}

fn condition<'a>(
    node: &'a Node,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// The node's liveness signal: its Lease's renewTime, else its Ready heartbeat. A
/// change of it, seen by this controller, counts as hearing from the kubelet (so
/// clocks of the two hosts are never compared).
fn signal(node: &Node, leases: &Store<Lease>) -> String {
    let name = node.name_any();
    if let Some(l) = leases.get(&ObjectRef::new(&name).within("kube-node-lease"))
        && let Some(t) = l.spec.as_ref().and_then(|s| s.renew_time.as_ref())
    {
        return format!("lease:{}", t.0);
    }
    condition(node, "Ready")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| format!("heartbeat:{}", t.0))
        .unwrap_or_default()
}

async fn monitor(
    client: &Client,
    nodes: &Store<Node>,
    leases: &Store<Lease>,
    heard: &mut HashMap<String, (String, tokio::time::Instant)>,
    grace: Duration,
) {
    let now = tokio::time::Instant::now();
    let live: Vec<String> = nodes.state().iter().map(|n| n.name_any()).collect();
    heard.retain(|n, _| live.contains(n));
    for node in nodes.state() {
        let name = node.name_any();
        let sig = signal(&node, leases);
        if !heard.contains_key(&name) {
            // As kube-controller-manager's node lifecycle controller does for each node
            // it starts tracking.
            record_event(
                client,
                COMPONENT,
                &Involved::of(&*node),
                "Normal",
                "RegisteredNode",
                &format!("Node {name} event: Registered Node {name} in Controller"),
            )
            .await;
        }
        let entry = heard.entry(name.clone()).or_insert((sig.clone(), now));
        if entry.0 != sig {
            *entry = (sig, now);
        }
        let silent = now.duration_since(entry.1) > grace;
        let ready = condition(&node, "Ready").map(|c| c.status.as_str());
        let api: Api<Node> = Api::all(client.clone());
        if silent && ready != Some("Unknown") {
            let stamp = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let conditions: Vec<_> = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
                .iter()
                .map(|t| {
                    let heartbeat = condition(&node, t)
                        .and_then(|c| c.last_heartbeat_time.as_ref())
                        .map(|h| h.0.to_string());
                    json!({"type": t, "status": "Unknown", "reason": "NodeStatusUnknown",
                        "message": "Kubelet stopped posting node status.",
                        "lastHeartbeatTime": heartbeat, "lastTransitionTime": stamp})
                })
                .collect();
            let patch = json!({"status": {"conditions": conditions}});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %name, "node stopped posting status; Ready=Unknown");
                    record_event(
                        client,
                        COMPONENT,
                        &Involved::of(&*node),
                        "Normal",
                        "NodeNotReady",
                        &format!("Node {name} status is now: NodeNotReady"),
                    )
                    .await;
                }
                Err(err) => tracing::warn!(%err, node = %name, "could not mark node Unknown"),
            }
        }
        // The taints follow the Ready condition, the pressure conditions and
        // spec.unschedulable.
        let mut want: Vec<(&str, &str)> = Vec::new();
        match ready {
            _ if silent => want.extend([(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]),
            Some("Unknown") => {
                want.extend([(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")])
            }
            Some("False") => want.extend([(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")]),
            _ => {
                for (cond, key) in CONDITION_TAINTS {
                    if condition(&node, cond).is_some_and(|c| c.status == "True") {
                        want.push((key, "NoSchedule"));
                    }
                }
            }
        }
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            want.push((UNSCHEDULABLE, "NoSchedule"));
        }
        sync_taints(&api, &node, &want).await;
    }
}

/// Makes the node carry exactly the `want`ed taints among the keys this controller
/// manages, leaving every other taint alone.
async fn sync_taints(api: &Api<Node>, node: &Node, want: &[(&str, &str)]) {
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let managed = |k: &str| {
        k == UNREACHABLE
            || k == NOT_READY
            || k == UNSCHEDULABLE
            || CONDITION_TAINTS.iter().any(|(_, t)| *t == k)
    };
    let mut next: Vec<Taint> = current
        .iter()
        .filter(|t| !managed(&t.key) || want.contains(&(t.key.as_str(), t.effect.as_str())))
        .cloned()
        .collect();
    for (key, effect) in want {
        if !next.iter().any(|t| t.key == *key && t.effect == *effect) {
            next.push(Taint {
                key: (*key).into(),
                effect: (*effect).into(),
                time_added: (*effect == "NoExecute").then(|| {
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
                }),
                value: None,
            });
        }
    }
    if next == current {
        return;
    }
    let patch = json!({"spec": {"taints": next}, "metadata": {"resourceVersion": node.metadata.resource_version}});
    if let Err(err) = api
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        tracing::debug!(%err, node = %node.name_any(), "taint update (retried next period)");
    }
}

/// The taint manager: deletes pods that do not tolerate a node's NoExecute taints, or
/// whose tolerationSeconds have run out since the taint was added.
async fn evict(client: &Client, nodes: &Store<Node>, pods: &Store<Pod>) {
    let tainted: HashMap<String, Vec<Taint>> = nodes
        .state()
        .iter()
        .filter_map(|n| {
            let t: Vec<Taint> = n
                .spec
                .as_ref()?
                .taints
                .iter()
                .flatten()
                .filter(|t| t.effect == "NoExecute")
                .cloned()
                .collect();
            (!t.is_empty()).then(|| (n.name_any(), t))
        })
        .collect();
    if tainted.is_empty() {
        return;
    }
    let now = jiff::Timestamp::now();
    for pod in pods.state() {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let Some(taints) = tainted.get(node) else {
            continue;
        };
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let mut due = false;
        for taint in taints {
            let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
            if matching.is_empty() {
                due = true;
                break;
            }
            // Forever unless every matching toleration is bounded; then the shortest.
            if matching.iter().all(|t| t.toleration_seconds.is_some()) {
                let secs = matching
                    .iter()
                    .filter_map(|t| t.toleration_seconds)
                    .min()
                    .unwrap_or(0)
                    .max(0);
                let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
                if added + jiff::SignedDuration::from_secs(secs) <= now {
                    due = true;
                    break;
                }
            }
        }
        if !due {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), %node, "taint manager eviction");
                record_event(
                    client,
                    "taint-eviction-controller",
                    &Involved::of(&*pod),
                    "Normal",
                    "TaintManagerEviction",
                    &format!("Marking for deletion Pod {ns}/{name}"),
                )
                .await;
            }
            Err(err) => tracing::debug!(%err, pod = %name, "eviction failed; retried next period"),
        }
    }
}
