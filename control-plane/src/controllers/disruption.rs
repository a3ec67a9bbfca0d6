//! The disruption controller (kube-controller-manager's `disruption`): keeps each
//! PodDisruptionBudget's status — currentHealthy (selected pods Ready and not being
//! deleted, less those the eviction API let go), desiredHealthy, expectedPods,
//! disruptionsAllowed, observedGeneration, disruptedPods (evictions granted but not yet
//! seen as deletions, dropped after [`budget::DELETION_TIMEOUT`]) and the
//! `DisruptionAllowed` condition. A percent minAvailable or any maxUnavailable counts
//! the scale of the pods' controllers (ReplicaSet/Deployment/StatefulSet/
//! ReplicationController from the caches, any other kind through its `/scale`); when
//! one cannot be found the budget fails safe: no disruptions, condition reason
//! SyncFailed. Status is written with the budget's resourceVersion, so it never
//! overwrites a disruption the eviction API granted in between.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::{ObjectRef, Store};

use super::pods;
use super::queue::{Queue, key_of, split_key};
use crate::client::{Informers, Involved, record_event};
use crate::disruption_budget as budget;

const COMPONENT: &str = "controllermanager";

struct Controller {
    client: Client,
    budgets: Store<PodDisruptionBudget>,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
    controllers: Store<ReplicationController>,
}

/// Runs the controller until the runtime ends.
pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let budgets = informers.add(Api::<PodDisruptionBudget>::all(client.clone()), {
        let q = queue.clone();
        move |o: &PodDisruptionBudget| q.add(key_of(&o.metadata))
    });
    // Which budgets selected each pod when last seen, so a pod whose labels change (or
    // that is deleted) wakes the budgets it leaves as well as those it joins.
    let selected: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let pod_cache: Arc<OnceLock<Store<Pod>>> = Arc::default();
    let pods = informers.add(Api::<Pod>::all(client.clone()), {
        let (q, budgets, cache) = (queue.clone(), budgets.clone(), pod_cache.clone());
        move |pod: &Pod| {
            // The callback runs after the cache has the change: a pod it lacks is gone.
            let gone = cache
                .get()
                .is_some_and(|c| c.get(&ObjectRef::from_obj(pod)).is_none());
            route_pod(pod, gone, &q, &budgets, &selected)
        }
    });
    let _ = pod_cache.set(pods.clone());
    let replicasets = informers.add(Api::<ReplicaSet>::all(client.clone()), |_: &ReplicaSet| {});
    let deployments = informers.add(Api::<Deployment>::all(client.clone()), |_: &Deployment| {});
    let statefulsets = informers.add(
        Api::<StatefulSet>::all(client.clone()),
        |_: &StatefulSet| {},
    );
    let controllers = informers.add(
        Api::<ReplicationController>::all(client.clone()),
        |_: &ReplicationController| {},
    );
    async move {
        let _ = budgets.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let _ = replicasets.wait_until_ready().await;
        let _ = deployments.wait_until_ready().await;
        let _ = statefulsets.wait_until_ready().await;
        let _ = controllers.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            client,
            budgets,
            pods,
            replicasets,
            deployments,
            statefulsets,
            controllers,
        });
        queue
            .work("disruption", move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

/// A pod change wakes every budget that selects it now or did before.
fn route_pod(
    pod: &Pod,
    gone: bool,
    queue: &Queue,
    budgets: &Store<PodDisruptionBudget>,
    selected: &Mutex<HashMap<String, Vec<String>>>,
) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let labels = pods::labels(&pod.metadata);
    let now: Vec<String> = budgets
        .state()
        .iter()
        .filter(|b| budget::selects(b, &ns, &labels))
        .map(|b| key_of(&b.metadata))
        .collect();
    let pod_key = key_of(&pod.metadata);
    let before = {
        let mut all = selected.lock().unwrap_or_else(|p| p.into_inner());
        let before = if gone || now.is_empty() {
            all.remove(&pod_key)
        } else {
            all.insert(pod_key, now.clone())
        };
        before.unwrap_or_default()
    };
    for key in now.into_iter().chain(before) {
        queue.add(key);
    }
}

impl Controller {
    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(pdb) = self.budgets.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let selected: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && budget::selects(&pdb, ns, &pods::labels(&p.metadata))
            })
            .collect();
        let count = i32::try_from(selected.len()).unwrap_or(i32::MAX);
        let scale = if budget::needs_scale(&pdb) {
            Some(self.expected_scale(&pdb, &selected).await)
        } else {
            None
        };
        let computed = budget::expected_and_desired(&pdb, count, || {
            scale.unwrap_or_else(|| Err("the controllers' scale was not computed".into()))
        });
        let now = jiff::Timestamp::now();
        let old = pdb.status.clone().unwrap_or_default();
        let (status, recheck) = match computed {
            Err(err) => {
                record_event(
                    &self.client,
                    COMPONENT,
                    &Involved::of(&*pdb),
                    "Warning",
                    "CalculateExpectedPodCountFailed",
                    &format!("Failed to calculate the number of expected pods: {err}"),
                )
                .await;
                // failSafe: no disruptions until the budget can be computed again.
                let mut status = old.clone();
                status.disruptions_allowed = Some(0);
                budget::set_condition(&mut status, Some(&err), now);
                (status, None)
            }
            Ok((expected, desired)) => {
                let (disrupted, recheck) = self.disrupted(&pdb, &selected, now).await;
                let current = selected
                    .iter()
                    .filter(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or(""))
                            && pods::is_ready(p)
                    })
                    .count();
                let current = i32::try_from(current).unwrap_or(i32::MAX);
                let mut status = PodDisruptionBudgetStatus {
                    current_healthy: Some(current),
                    desired_healthy: Some(desired),
                    expected_pods: Some(expected),
                    disruptions_allowed: Some(budget::disruptions_allowed(
                        current, desired, expected,
                    )),
                    disrupted_pods: Some(disrupted),
                    observed_generation: pdb.metadata.generation,
                    conditions: old.conditions.clone(),
                };
                budget::set_condition(&mut status, None, now);
                (status, recheck)
            }
        };
        if !same_status(&old, &status) {
            let mut new = (*pdb).clone();
            new.status = Some(status);
            let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), ns);
            // A 409 (the eviction API changed the budget) is an error: retried from the
            // cache once it has the new version.
            match api.replace_status(name, &PostParams::default(), &new).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(recheck)
    }

    /// The budget's `disruptedPods` still pending: selected, not yet being deleted and
    /// granted less than the timeout ago; and when the next of them expires.
    async fn disrupted(
        &self,
        pdb: &PodDisruptionBudget,
        selected: &[Arc<Pod>],
        now: jiff::Timestamp,
    ) -> (BTreeMap<String, Time>, Option<Duration>) {
        let granted = pdb
            .status
            .as_ref()
            .and_then(|s| s.disrupted_pods.clone())
            .unwrap_or_default();
        let timeout = jiff::SignedDuration::try_from(budget::DELETION_TIMEOUT)
            .unwrap_or(jiff::SignedDuration::from_secs(120));
        let mut kept = BTreeMap::new();
        let mut recheck: Option<Duration> = None;
        for pod in selected {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(at) = granted.get(&pod_name) else {
                continue;
            };
            let expires = at.0 + timeout;
            if expires < now {
                let pdb_name = pdb.metadata.name.clone().unwrap_or_default();
                let ns = pdb.metadata.namespace.clone().unwrap_or_default();
                record_event(
                    &self.client,
                    COMPONENT,
                    &Involved::of(&**pod),
                    "Warning",
                    "NotDeleted",
                    &format!("Pod was expected by PDB {ns}/{pdb_name} to be deleted but it wasn't"),
                )
                .await;
                continue;
            }
            let left = Duration::try_from(expires - now).unwrap_or_default();
            recheck = Some(recheck.map_or(left, |r| r.min(left)));
            kept.insert(pod_name, at.clone());
        }
        (kept, recheck)
    }

    /// The sum of the scales of the selected pods' controllers (`getExpectedScale`).
    async fn expected_scale(
        &self,
        pdb: &PodDisruptionBudget,
        selected: &[Arc<Pod>],
    ) -> Result<i32, String> {
        let mut scales: HashMap<String, i32> = HashMap::new();
        let mut unmanaged = Vec::new();
        let mut asked: HashSet<String> = HashSet::new();
        for pod in selected {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let Some(r) = pods::controller_ref(&pod.metadata) else {
                unmanaged.push(pod_name);
                continue;
            };
            if !asked.insert(r.uid.clone()) {
                continue;
            }
            match self.scale_of(r, &ns).await? {
                Some((uid, scale)) => {
                    scales.insert(uid, scale);
                }
                None => return Err(format!("found no controllers for pod {pod_name:?}")),
            }
        }
        if !unmanaged.is_empty() {
            let selector = pdb
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .map(|s| serde_json::to_string(s).unwrap_or_default())
                .unwrap_or_default();
            record_event(
                &self.client,
                COMPONENT,
                &Involved::of(pdb),
                "Warning",
                "UnmanagedPods",
                &format!(
                    "Pods selected by this PodDisruptionBudget (selector: {selector}) were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value."
                ),
            )
            .await;
        }
        Ok(scales.values().copied().fold(0i32, i32::saturating_add))
    }

    /// `(controller uid, scale)` of a pod's controller, or None if there is none with
    /// that uid. A ReplicaSet a Deployment controls counts as the Deployment.
    async fn scale_of(
        &self,
        r: &OwnerReference,
        ns: &str,
    ) -> Result<Option<(String, i32)>, String> {
        let group = r.api_version.split_once('/').map_or("", |(g, _)| g);
        let with_uid = |uid: &Option<String>| uid.as_deref() == Some(r.uid.as_str());
        match (group, r.kind.as_str()) {
            ("", "ReplicationController") => Ok(self
                .controllers
                .get(&ObjectRef::new(&r.name).within(ns))
                .filter(|c| with_uid(&c.metadata.uid))
                .map(|c| {
                    let replicas = c.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    (r.uid.clone(), replicas)
                })),
            ("apps", "ReplicaSet") => {
                let Some(rs) = self
                    .replicasets
                    .get(&ObjectRef::new(&r.name).within(ns))
                    .filter(|rs| with_uid(&rs.metadata.uid))
                else {
                    return Ok(None);
                };
                if let Some(owner) = pods::controller_ref(&rs.metadata)
                    && owner.kind == "Deployment"
                    && owner.api_version.starts_with("apps/")
                {
                    return Ok(self
                        .deployments
                        .get(&ObjectRef::new(&owner.name).within(ns))
                        .filter(|d| d.metadata.uid.as_deref() == Some(owner.uid.as_str()))
                        .map(|d| {
                            let replicas = d.spec.replicas.unwrap_or(1);
                            (owner.uid.clone(), replicas)
                        }));
                }
                Ok(Some((r.uid.clone(), rs.spec.replicas.unwrap_or(1))))
            }
            ("apps", "StatefulSet") => Ok(self
                .statefulsets
                .get(&ObjectRef::new(&r.name).within(ns))
                .filter(|s| with_uid(&s.metadata.uid))
                .map(|s| (r.uid.clone(), s.spec.replicas.unwrap_or(1)))),
            _ => self.scale_subresource(r, ns).await,
        }
    }

    /// Any other controller: its `/scale` subresource, if it has one.
    async fn scale_subresource(
        &self,
        r: &OwnerReference,
        ns: &str,
    ) -> Result<Option<(String, i32)>, String> {
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &r.kind);
        let (resource, _) = match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok(found) => found,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(kube::Error::Discovery(_)) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &resource);
        match api.get_scale(&r.name).await {
            Ok(scale) if scale.metadata.uid.as_deref() == Some(r.uid.as_str()) => Ok(Some((
                r.uid.clone(),
                scale.spec.and_then(|s| s.replicas).unwrap_or(0),
            ))),
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Equal statuses, ignoring condition transition times and their order.
fn same_status(a: &PodDisruptionBudgetStatus, b: &PodDisruptionBudgetStatus) -> bool {
    let plain = |s: &PodDisruptionBudgetStatus| PodDisruptionBudgetStatus {
        conditions: None,
        disrupted_pods: s.disrupted_pods.clone().filter(|d| !d.is_empty()),
        ..s.clone()
    };
    let conditions = |s: &PodDisruptionBudgetStatus| {
        let mut c: Vec<_> = s
            .conditions
            .iter()
            .flatten()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                    c.observed_generation,
                )
            })
            .collect();
        c.sort();
        c
    };
    plain(a) == plain(b) && conditions(a) == conditions(b)
}
