//! The DaemonSet controller: one pod on every node the template fits (nodeSelector,
//! required node affinity, taints against the template's tolerations plus the ones
//! every daemon pod gets), bound through the scheduler by a `metadata.name` node
//! affinity term as kube-controller-manager does; pods leave nodes that are deleted or
//! stop fitting (an untolerated NoExecute taint). Updates roll node by node within
//! `maxUnavailable` (deleting first) or `maxSurge` (the new pod first), or wait for
//! the user's deletions (OnDelete); templates are kept as ControllerRevisions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodTemplateSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::expectations::Expectations;
use super::history::{self, HASH_LABEL};
use super::pods;
use super::queue::{Queue, key_of, split_key};
use super::update::{self, Part};
use crate::client::{Informers, Involved, record_event};
use crate::scheduler::filters::node_affinity::pod_matches_node;
use crate::scheduler::filters::taints::tolerates;
use crate::scheduler::node_info::NodeInfo;

const COMPONENT: &str = "daemonset-controller";
/// The label with the DaemonSet generation a pod was made from (deprecated upstream,
/// still set).
const GENERATION_LABEL: &str = "pod-template-generation";
/// Pods created in one sync at most.
const BURST: usize = 500;
/// Back-off before a node's failed daemon pod is replaced again: 1 s doubling to 15 min
/// (kube-controller-manager's failedPodsBackoff).
const FAILED_BACKOFF_BASE: Duration = Duration::from_secs(1);
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(900);

struct Controller {
    client: Client,
    sets: Store<DaemonSet>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    expectations: Expectations<String>,
    /// `<set uid>/<node>` → (current delay, replacing again not before).
    failed_backoff: Mutex<HashMap<String, (Duration, Instant)>>,
}

/// Runs the controller until the runtime ends.
pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let route = |q: &Arc<Queue>| {
        let q = q.clone();
        move |meta: &ObjectMeta| {
            if let Some(key) = pods::controller_key(meta, "apps/v1", "DaemonSet") {
                q.add(key);
            }
        }
    };
    let sets = informers.add(Api::<DaemonSet>::all(client.clone()), {
        let q = queue.clone();
        move |o: &DaemonSet| q.add(key_of(&o.metadata))
    });
    let pods = informers.add(Api::<Pod>::all(client.clone()), {
        let r = route(&queue);
        move |p: &Pod| r(&p.metadata)
    });
    let revisions = informers.add(Api::<ControllerRevision>::all(client.clone()), {
        let r = route(&queue);
        move |c: &ControllerRevision| r(&c.metadata)
    });
    // A node's change may change where every DaemonSet runs.
    let nodes = informers.add(Api::<Node>::all(client.clone()), {
        let (q, sets) = (queue.clone(), sets.clone());
        move |_: &Node| {
            for ds in sets.state() {
                q.add(key_of(&ds.metadata));
            }
        }
    });
    async move {
        let _ = sets.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let _ = revisions.wait_until_ready().await;
        let _ = nodes.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            client,
            sets,
            pods,
            nodes,
            revisions,
            expectations: Expectations::default(),
            failed_backoff: Mutex::new(HashMap::new()),
        });
        queue
            .work("daemonset", move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

/// The tolerations every daemon pod gets (`AddOrUpdateDaemonPodTolerations`).
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut all = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        all.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    all
}

/// The pod the DaemonSet runs on `node`: the template, the daemon tolerations, and
/// required node affinity to that node alone.
fn pod_for(template: &PodTemplateSpec, owner: &ObjectMeta, node: &str) -> Pod {
    let mut pod = pods::from_template(
        template,
        &format!("{}-", owner.name.as_deref().unwrap_or_default()),
        pods::owner_ref("apps/v1", "DaemonSet", owner),
    );
    if let Some(spec) = pod.spec.as_mut() {
        let host_network = spec.host_network == Some(true);
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        for t in daemon_tolerations(host_network) {
            let present = tolerations
                .iter()
                .any(|x| x.key == t.key && x.effect == t.effect);
            if !present {
                tolerations.push(t);
            }
        }
        let term = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_owned()]),
            }]),
        };
        let affinity = spec.affinity.get_or_insert_with(Affinity::default);
        let node_affinity = affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: vec![term],
        });
    }
    pod
}

/// (should run, may keep running): the template fits the node (selector, required
/// affinity, NoSchedule and NoExecute taints); a pod already there stays unless a
/// NoExecute taint is untolerated.
fn fits(template: &PodTemplateSpec, node: &Node) -> (bool, bool) {
    let mut probe = pods::from_template(template, "", Default::default());
    if let Some(spec) = probe.spec.as_mut() {
        let host_network = spec.host_network == Some(true);
        spec.tolerations
            .get_or_insert_with(Vec::new)
            .extend(daemon_tolerations(host_network));
    }
    let info = NodeInfo::new(node.clone());
    if !pod_matches_node(&probe, &info) {
        return (false, false);
    }
    let tolerations = probe
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let untolerated = |effect: &str| {
        taints
            .iter()
            .filter(|t| t.effect == effect)
            .any(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
    };
    let no_execute = untolerated("NoExecute");
    (!no_execute && !untolerated("NoSchedule"), !no_execute)
}

/// The node a daemon pod is for: its binding, else its `metadata.name` affinity.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// An int-or-percent of `total`, rounded up.
fn scaled(v: Option<&IntOrString>, total: usize, default: i32) -> usize {
    let n = match v {
        None => i64::from(default),
        Some(IntOrString::Int(i)) => i64::from(*i),
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            (i64::try_from(total).unwrap_or(i64::MAX) * pct + 99) / 100
        }
    };
    usize::try_from(n.max(0)).unwrap_or(0)
}

impl Controller {
    fn satisfied(&self, key: &str, ns: &str) -> bool {
        self.expectations.satisfied(&key.to_owned(), ns, &self.pods)
    }

    async fn event(&self, ds: &DaemonSet, type_: &str, reason: &str, message: &str) {
        let involved = Involved {
            api_version: "apps/v1".into(),
            kind: "DaemonSet".into(),
            namespace: ds.metadata.namespace.clone(),
            name: ds.metadata.name.clone().unwrap_or_default(),
            uid: ds.metadata.uid.clone(),
        };
        record_event(&self.client, COMPONENT, &involved, type_, reason, message).await;
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(ds) = self.sets.get(&ObjectRef::new(name).within(ns)) else {
            self.expectations.forget(&key.to_owned());
            return Ok(None);
        };
        let ds = (*ds).clone();
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let spec = ds.spec.clone();
        let status = ds.status.clone().unwrap_or_default();
        let owner = history::Owner {
            api_version: "apps/v1",
            kind: "DaemonSet",
            meta: &ds.metadata,
            template: &spec.template,
            collision_count: status.collision_count,
            history_limit: spec.revision_history_limit.unwrap_or(10),
        };
        let revisions = history::sync(&self.client, &self.revisions, &owner).await?;
        let hash = revisions
            .update
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(HASH_LABEL).cloned())
            .unwrap_or_default();
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = jiff::Timestamp::now();

        let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for pod in self.pods.state() {
            if pod.metadata.namespace.as_deref() != Some(ns)
                || pods::controller_ref(&pod.metadata).is_none_or(|r| r.uid != uid)
            {
                continue;
            }
            let node = target_node(&pod).unwrap_or_default();
            by_node.entry(node).or_default().push(pod);
        }
        for list in by_node.values_mut() {
            list.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        }
        let nodes: BTreeMap<String, Arc<Node>> = self
            .nodes
            .state()
            .into_iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
            .collect();
        let is_new = |p: &Pod| history::pod_revision(&p.metadata) == Some(hash.as_str());
        let available = |p: &Pod| {
            p.metadata.deletion_timestamp.is_none()
                && pods::phase(p) == "Running"
                && pods::is_available(p, min_ready, now)
        };

        let mut again: Option<Duration> = None;
        let mut create: Vec<String> = Vec::new();
        let mut delete: Vec<Pod> = Vec::new();
        let mut wanted: Vec<&String> = Vec::new();
        for (node_name, node) in &nodes {
            let (run, keep) = fits(&spec.template, node);
            let live: Vec<&Pod> = by_node
                .get(node_name)
                .into_iter()
                .flatten()
                .map(|p| &**p)
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            if run {
                wanted.push(node_name);
            }
            if run && live.is_empty() {
                create.push(node_name.clone());
            } else if !keep {
                delete.extend(live.into_iter().cloned());
            } else if run {
                // Failed pods are replaced; of several, the extra ones go (a surge pair
                // of one old and one new pod is the rolling update's to settle).
                let (failed, running): (Vec<&Pod>, Vec<&Pod>) =
                    live.into_iter().partition(|p| pods::phase(p) == "Failed");
                if !failed.is_empty() {
                    let key = format!("{uid}/{node_name}");
                    let mut backoff = self
                        .failed_backoff
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let at = Instant::now();
                    if let Some((_, until)) = backoff.get(&key).filter(|(_, u)| *u > at) {
                        again = Some(again.map_or(*until - at, |a: Duration| a.min(*until - at)));
                        continue;
                    }
                    let delay = backoff.get(&key).map_or(FAILED_BACKOFF_BASE, |(d, _)| {
                        d.saturating_mul(2).min(FAILED_BACKOFF_MAX)
                    });
                    backoff.insert(key, (delay, at + delay));
                    backoff.retain(|_, (_, u)| *u + FAILED_BACKOFF_MAX > at);
                }
                for p in &failed {
                    let pname = p.metadata.name.as_deref().unwrap_or_default();
                    self.event(
                        &ds,
                        "Warning",
                        "FailedDaemonPod",
                        &format!("Found failed daemon pod {ns}/{pname} on node {node_name}, will try to kill it"),
                    )
                    .await;
                }
                delete.extend(failed.into_iter().cloned());
                let surge_pair = running.len() == 2 && is_new(running[1]) != is_new(running[0]);
                if running.len() > 1 && !surge_pair {
                    delete.extend(running.into_iter().skip(1).cloned());
                }
            }
        }
        // Pods for nodes that are gone.
        for (node_name, list) in &by_node {
            if !nodes.contains_key(node_name) {
                delete.extend(
                    list.iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .map(|p| (**p).clone()),
                );
            }
        }

        if self.satisfied(key, ns) {
            let strategy = spec.update_strategy.clone().unwrap_or_default();
            if strategy.type_.as_deref() != Some("OnDelete") {
                let ru = strategy.rolling_update.clone().unwrap_or_default();
                let surge = scaled(ru.max_surge.as_ref(), wanted.len(), 0);
                let mut unavailable_budget = scaled(ru.max_unavailable.as_ref(), wanted.len(), 1);
                if surge == 0 && unavailable_budget == 0 {
                    unavailable_budget = 1;
                }
                self.roll(
                    &wanted,
                    &by_node,
                    &is_new,
                    &available,
                    surge,
                    unavailable_budget,
                    &mut create,
                    &mut delete,
                );
            }
            self.apply(&ds, key, ns, &create, &delete, &hash).await?;
        } else {
            // Look again soon: the expectation may time out without an event.
            again = Some(Duration::from_secs(1));
        }

        // Status, from the oldest pod on each node.
        let mut current = 0;
        let mut misscheduled = 0;
        let mut ready = 0;
        let mut avail = 0;
        let mut updated = 0;
        for (node_name, list) in &by_node {
            let Some(first) = list
                .iter()
                .find(|p| p.metadata.deletion_timestamp.is_none())
            else {
                continue;
            };
            if !wanted.contains(&node_name) {
                misscheduled += 1;
                continue;
            }
            current += 1;
            if pods::is_ready(first) {
                ready += 1;
            }
            if available(first) {
                avail += 1;
            }
            if list
                .iter()
                .any(|p| p.metadata.deletion_timestamp.is_none() && is_new(p))
            {
                updated += 1;
            }
        }
        let desired = wanted.len();
        let new_status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": avail,
            "numberUnavailable": desired.saturating_sub(avail),
            "updatedNumberScheduled": updated,
            "observedGeneration": ds.metadata.generation,
            "collisionCount": revisions.collision_count.unwrap_or(0),
        });
        let old = serde_json::to_value(&status).unwrap_or_default();
        let differs = new_status
            .as_object()
            .is_some_and(|m| m.iter().any(|(k, v)| old.get(k).unwrap_or(&json!(0)) != v));
        if differs {
            let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), ns);
            let change = update::merge(json!({"status": new_status}));
            if update::update(&api, &ds, Part::Status, change)
                .await?
                .is_none()
            {
                return Ok(None);
            }
        }
        // Daemon pods carry the bare hash; revisions are named `<set>-<hash>`.
        let in_use: HashSet<String> = by_node
            .values()
            .flatten()
            .filter_map(|p| history::pod_revision(&p.metadata).map(|h| format!("{name}-{h}")))
            .chain([revisions.update.metadata.name.clone().unwrap_or_default()])
            .collect();
        history::prune(&self.client, &owner, &revisions.all, &in_use).await?;
        if min_ready > 0 && avail < ready {
            return Ok(Some(Duration::from_secs(1)));
        }
        Ok(again)
    }

    /// The rolling update's share of creations and deletions on the wanted nodes.
    #[allow(clippy::too_many_arguments, reason = "one sync's state, borrowed")]
    fn roll(
        &self,
        wanted: &[&String],
        by_node: &BTreeMap<String, Vec<Arc<Pod>>>,
        is_new: &dyn Fn(&Pod) -> bool,
        available: &dyn Fn(&Pod) -> bool,
        surge: usize,
        max_unavailable: usize,
        create: &mut Vec<String>,
        delete: &mut Vec<Pod>,
    ) {
        let doomed: HashSet<String> = delete
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        let mut unavailable = 0;
        let mut old_available: Vec<(&String, &Pod)> = Vec::new();
        let mut surging = 0;
        let mut surge_candidates: Vec<&String> = Vec::new();
        for node in wanted {
            let live: Vec<&Pod> = by_node
                .get(*node)
                .into_iter()
                .flatten()
                .map(|p| &**p)
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && !doomed.contains(p.metadata.uid.as_deref().unwrap_or_default())
                })
                .collect();
            let new = live.iter().find(|p| is_new(p));
            let old: Vec<&&Pod> = live.iter().filter(|p| !is_new(p)).collect();
            match (new, old.first()) {
                (None, None) => unavailable += 1,
                (Some(n), None) => {
                    if !available(n) {
                        unavailable += 1;
                    }
                }
                (Some(n), Some(o)) => {
                    // A surge pair: the old pod goes once the new one is available.
                    if available(n) {
                        delete.extend(old.iter().map(|p| (**p).clone()));
                    } else {
                        surging += 1;
                        if !available(o) {
                            unavailable += 1;
                        }
                    }
                }
                (None, Some(o)) => {
                    if !available(o) {
                        // Replacing an unavailable pod costs no availability.
                        delete.push((**o).clone());
                        unavailable += 1;
                    } else if surge > 0 {
                        surge_candidates.push(node);
                    } else {
                        old_available.push((node, o));
                    }
                }
            }
        }
        if surge > 0 {
            let room = surge.saturating_sub(surging);
            create.extend(surge_candidates.into_iter().take(room).cloned());
        } else {
            let room = max_unavailable.saturating_sub(unavailable);
            delete.extend(old_available.into_iter().take(room).map(|(_, p)| p.clone()));
        }
    }

    async fn apply(
        &self,
        ds: &DaemonSet,
        key: &str,
        ns: &str,
        create: &[String],
        delete: &[Pod],
        hash: &str,
    ) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut deleted = HashSet::new();
        let mut failure = None;
        let mut seen = HashSet::new();
        for pod in delete {
            let pname = pod.metadata.name.clone().unwrap_or_default();
            if !seen.insert(pname.clone()) {
                continue;
            }
            match pods::delete(&api, pod).await {
                Ok(true) => {
                    self.event(
                        ds,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {pname}"),
                    )
                    .await;
                    deleted.insert(pname);
                }
                Ok(false) => {}
                Err(e) => failure = Some(e),
            }
        }
        let generation = ds.metadata.generation.unwrap_or(0).to_string();
        let pods: Vec<Pod> = create
            .iter()
            .take(BURST)
            .map(|node| {
                let mut p = pod_for(&ds.spec.template, &ds.metadata, node);
                let labels = p.metadata.labels.get_or_insert_with(Default::default);
                labels.insert(HASH_LABEL.into(), hash.to_owned());
                labels.insert(GENERATION_LABEL.into(), generation.clone());
                p
            })
            .collect();
        let mut created = HashSet::new();
        let pp = PostParams::default();
        // Slow start, as the other controllers create.
        let mut batch = 1;
        let mut rest: &[Pod] = &pods;
        while !rest.is_empty() && failure.is_none() {
            let (now, later) = rest.split_at(batch.min(rest.len()));
            rest = later;
            let results =
                futures_util::future::join_all(now.iter().map(|p| api.create(&pp, p))).await;
            for r in results {
                match r {
                    Ok(p) => {
                        let pname = p.metadata.name.clone().unwrap_or_default();
                        self.event(
                            ds,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {pname}"),
                        )
                        .await;
                        created.insert(pname);
                    }
                    Err(e) => {
                        self.event(
                            ds,
                            "Warning",
                            "FailedCreate",
                            &format!("Error creating: {e}"),
                        )
                        .await;
                        failure = Some(e);
                    }
                }
            }
            batch *= 2;
        }
        self.expectations.expect(key.to_owned(), created, deleted);
        failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(extra: serde_json::Value) -> PodTemplateSpec {
        let mut spec = json!({"containers": [{"name": "c", "image": "x"}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(json!({"spec": spec})).expect("template")
    }

    fn node(labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n", "labels": labels},
            "spec": {"taints": taints}}))
        .expect("node")
    }

    #[test]
    fn daemon_pods_fit_by_selector_and_taints_with_their_automatic_tolerations() {
        let plain = template(json!({}));
        assert_eq!(fits(&plain, &node(json!({}), json!([]))), (true, true));
        let unschedulable =
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]);
        assert_eq!(fits(&plain, &node(json!({}), unschedulable)), (true, true));
        let not_ready = json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]);
        assert_eq!(fits(&plain, &node(json!({}), not_ready)), (true, true));
        let dedicated = json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
        assert_eq!(
            fits(&plain, &node(json!({}), dedicated.clone())),
            (false, true)
        );
        let evict = json!([{"key": "dedicated", "value": "db", "effect": "NoExecute"}]);
        assert_eq!(fits(&plain, &node(json!({}), evict)), (false, false));
        let tolerant =
            template(json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}]}));
        assert_eq!(fits(&tolerant, &node(json!({}), dedicated)), (true, true));
        let picky = template(json!({"nodeSelector": {"disk": "ssd"}}));
        assert_eq!(
            fits(&picky, &node(json!({"disk": "hdd"}), json!([]))),
            (false, false)
        );
        assert_eq!(
            fits(&picky, &node(json!({"disk": "ssd"}), json!([]))),
            (true, true)
        );
    }

    #[test]
    fn pods_are_pinned_to_their_node_by_name() {
        let meta = ObjectMeta {
            name: Some("agent".into()),
            uid: Some("u".into()),
            ..Default::default()
        };
        let pod = pod_for(&template(json!({})), &meta, "n7");
        assert_eq!(target_node(&pod).as_deref(), Some("n7"));
        let tolerations = pod.spec.and_then(|s| s.tolerations).unwrap_or_default();
        assert_eq!(tolerations.len(), 6);
        assert_eq!(scaled(Some(&IntOrString::String("10%".into())), 15, 1), 2);
        assert_eq!(scaled(None, 15, 1), 1);
    }
}
