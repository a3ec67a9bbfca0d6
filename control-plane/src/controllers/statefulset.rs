//! The StatefulSet controller: pods with stable names `<set>-<ordinal>` (from
//! `.spec.ordinals.start`), hostnames and `serviceName` subdomains; one
//! PersistentVolumeClaim per pod and `volumeClaimTemplates` entry, created before the
//! pod and kept or deleted by `persistentVolumeClaimRetentionPolicy`. OrderedReady
//! creates in order, each pod Ready (and available after `minReadySeconds`) before the
//! next, and removes in reverse; Parallel does both at once. Updates roll from the
//! highest ordinal down to `partition`, at most `maxUnavailable` at a time, or wait
//! for the user's deletions (OnDelete); templates are kept as ControllerRevisions
//! (`kubectl rollout history|undo`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::history::{self, HASH_LABEL};
use super::pods;
use super::queue::{Queue, key_of, split_key};
use super::update::{self, Part};
use crate::client::{Informers, Involved, record_event};

const COMPONENT: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

struct Controller {
    client: Client,
    sets: Store<StatefulSet>,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    revisions: Store<ControllerRevision>,
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
            if let Some(key) = pods::controller_key(meta, "apps/v1", "StatefulSet") {
                q.add(key);
            }
        }
    };
    let sets = informers.add(Api::<StatefulSet>::all(client.clone()), {
        let q = queue.clone();
        move |o: &StatefulSet| q.add(key_of(&o.metadata))
    });
    let pods = informers.add(Api::<Pod>::all(client.clone()), {
        let r = route(&queue);
        move |p: &Pod| r(&p.metadata)
    });
    let revisions = informers.add(Api::<ControllerRevision>::all(client.clone()), {
        let r = route(&queue);
        move |c: &ControllerRevision| r(&c.metadata)
    });
    let claims = informers.add(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        |_: &PersistentVolumeClaim| {},
    );
    async move {
        let _ = sets.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let _ = revisions.wait_until_ready().await;
        let _ = claims.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            client,
            sets,
            pods,
            claims,
            revisions,
        });
        queue
            .work("statefulset", move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

/// The ordinal in a pod name `<set>-<ordinal>`.
fn ordinal(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok().filter(|n| *n >= 0)
}

/// Running, Ready and (after `minReadySeconds`) available, and not being deleted.
fn healthy(pod: &Pod, min_ready: i32, now: jiff::Timestamp) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pods::phase(pod) == "Running"
        && pods::is_available(pod, min_ready, now)
}

fn claim_name(claim: &str, set: &str, ordinal: i32) -> String {
    format!("{claim}-{set}-{ordinal}")
}

/// The highest number of pods `maxUnavailable` lets be unavailable (at least 1).
fn max_unavailable(v: Option<&IntOrString>, replicas: i32) -> usize {
    let n = match v {
        None => 1,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            i32::try_from(i64::from(replicas) * pct / 100).unwrap_or(0)
        }
    };
    usize::try_from(n.max(1)).unwrap_or(1)
}

impl Controller {
    async fn event(&self, set: &StatefulSet, type_: &str, reason: &str, message: &str) {
        let involved = Involved {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            namespace: set.metadata.namespace.clone(),
            name: set.metadata.name.clone().unwrap_or_default(),
            uid: set.metadata.uid.clone(),
        };
        record_event(&self.client, COMPONENT, &involved, type_, reason, message).await;
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(set) = self.sets.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let set = (*set).clone();
        if set.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let spec = set.spec.clone();
        let status = set.status.clone().unwrap_or_default();
        let owner = history::Owner {
            api_version: "apps/v1",
            kind: "StatefulSet",
            meta: &set.metadata,
            template: &spec.template,
            collision_count: status.collision_count,
            history_limit: spec.revision_history_limit.unwrap_or(10),
        };
        let revisions = history::sync(&self.client, &self.revisions, &owner).await?;
        let update_rev = revisions.update.metadata.name.clone().unwrap_or_default();
        let current = status
            .current_revision
            .as_ref()
            .and_then(|c| {
                revisions
                    .all
                    .iter()
                    .find(|r| r.metadata.name.as_ref() == Some(c))
            })
            .unwrap_or(&revisions.update)
            .clone();
        let current_rev = current.metadata.name.clone().unwrap_or_default();
        let current_template = history::template_of(&current).unwrap_or(spec.template.clone());

        let uid = set.metadata.uid.clone().unwrap_or_default();
        let mut by_ordinal: BTreeMap<i32, Pod> = BTreeMap::new();
        let mut strays: Vec<Pod> = Vec::new();
        for pod in self.pods.state() {
            if pod.metadata.namespace.as_deref() != Some(ns)
                || pods::controller_ref(&pod.metadata).is_none_or(|r| r.uid != uid)
            {
                continue;
            }
            match ordinal(name, pod.metadata.name.as_deref().unwrap_or_default()) {
                Some(o) => {
                    by_ordinal.insert(o, (*pod).clone());
                }
                None => strays.push((*pod).clone()),
            }
        }
        let start = spec
            .ordinals
            .as_ref()
            .and_then(|o| o.start)
            .unwrap_or(0)
            .max(0);
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let wanted = start..start.saturating_add(replicas);
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = jiff::Timestamp::now();
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let rolling = strategy.type_.as_deref() != Some("OnDelete");
        let partition = strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.partition)
            .unwrap_or(0);
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut again = None;

        // Pods whose names are not ordinals of the set go.
        for pod in &strays {
            self.delete_pod(&set, &pod_api, pod).await?;
        }

        // Pods that failed, or succeeded, are replaced.
        for pod in by_ordinal.values() {
            if matches!(pods::phase(pod), "Failed" | "Succeeded")
                && pod.metadata.deletion_timestamp.is_none()
            {
                self.delete_pod(&set, &pod_api, pod).await?;
            }
        }

        // Create what is missing, in order.
        let mut blocked = false;
        for o in wanted.clone() {
            match by_ordinal.get(&o) {
                None => {
                    let template = if rolling && o < partition {
                        (&current_template, &current_rev)
                    } else {
                        (&spec.template, &update_rev)
                    };
                    if !self.ensure_claims(&set, o).await? {
                        // A claim still being deleted: claims are not watched, look again.
                        again = Some(Duration::from_secs(2));
                        blocked = true;
                        if ordered {
                            break;
                        }
                        continue;
                    }
                    self.create_pod(&set, &pod_api, o, template.0, template.1)
                        .await?;
                    if ordered {
                        blocked = true;
                        break;
                    }
                }
                Some(pod) if ordered && !healthy(pod, min_ready, now) => {
                    if pods::is_ready(pod) && min_ready > 0 {
                        again = Some(Duration::from_secs(1));
                    }
                    blocked = true;
                    break;
                }
                Some(_) => {}
            }
        }

        // Remove what is beyond the replicas, highest first.
        let condemned: Vec<&Pod> = by_ordinal
            .iter()
            .rev()
            .filter(|(o, _)| !wanted.contains(o))
            .map(|(_, p)| p)
            .collect();
        if !(condemned.is_empty() || ordered && blocked) {
            let all_healthy = by_ordinal
                .iter()
                .filter(|(o, _)| wanted.contains(o))
                .all(|(_, p)| healthy(p, min_ready, now));
            for pod in &condemned {
                if pod.metadata.deletion_timestamp.is_some() {
                    if ordered {
                        break;
                    }
                    continue;
                }
                if ordered && !all_healthy {
                    break;
                }
                self.condemn_claims(&set, pod).await?;
                self.delete_pod(&set, &pod_api, pod).await?;
                if ordered {
                    break;
                }
            }
        }

        // Roll outdated pods to the update revision, highest ordinal first.
        if rolling && !blocked {
            let budget = max_unavailable(
                strategy
                    .rolling_update
                    .as_ref()
                    .and_then(|r| r.max_unavailable.as_ref()),
                replicas,
            );
            let in_range: Vec<(&i32, &Pod)> = by_ordinal
                .iter()
                .filter(|(o, _)| wanted.contains(o))
                .collect();
            // Pods not there at all (deleted, not yet recreated) are unavailable too.
            let missing = usize::try_from(replicas)
                .unwrap_or(0)
                .saturating_sub(in_range.len());
            let unavailable = missing
                + in_range
                    .iter()
                    .filter(|(_, p)| !healthy(p, min_ready, now))
                    .count();
            let mut room = budget.saturating_sub(unavailable);
            for (o, pod) in in_range.into_iter().rev() {
                if *o < partition || room == 0 {
                    break;
                }
                if history::pod_revision(&pod.metadata) != Some(update_rev.as_str())
                    && pod.metadata.deletion_timestamp.is_none()
                {
                    self.delete_pod(&set, &pod_api, pod).await?;
                    room -= 1;
                    if ordered {
                        break;
                    }
                }
            }
        }

        // Status.
        let live: Vec<&Pod> = by_ordinal.values().collect();
        let count = |f: &dyn Fn(&Pod) -> bool| {
            i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
        };
        let ready = count(&|p| pods::is_ready(p) && p.metadata.deletion_timestamp.is_none());
        let available = count(&|p| {
            p.metadata.deletion_timestamp.is_none() && pods::is_available(p, min_ready, now)
        });
        let updated = count(&|p| history::pod_revision(&p.metadata) == Some(update_rev.as_str()));
        let current_count =
            count(&|p| history::pod_revision(&p.metadata) == Some(current_rev.as_str()));
        // The rollout is over when every wanted pod runs the update revision, ready.
        let done = updated == replicas
            && ready == replicas
            && i32::try_from(live.len()).unwrap_or(i32::MAX) == replicas;
        let (current_rev, current_count) = if done {
            (update_rev.clone(), updated)
        } else {
            (current_rev, current_count)
        };
        let new_status = json!({
            "replicas": live.len(),
            "readyReplicas": ready,
            "currentReplicas": current_count,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "observedGeneration": set.metadata.generation,
            "currentRevision": current_rev,
            "updateRevision": update_rev,
            "collisionCount": revisions.collision_count.unwrap_or(0),
        });
        let old = serde_json::to_value(&status).unwrap_or_default();
        let differs = new_status
            .as_object()
            .is_some_and(|m| m.iter().any(|(k, v)| old.get(k).unwrap_or(&json!(0)) != v));
        if differs {
            let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), ns);
            let change = update::merge(json!({"status": new_status}));
            if update::update(&api, &set, Part::Status, change)
                .await?
                .is_none()
            {
                return Ok(None);
            }
        }
        let in_use: HashSet<String> = live
            .iter()
            .filter_map(|p| history::pod_revision(&p.metadata).map(str::to_owned))
            .chain([current_rev, update_rev])
            .collect();
        history::prune(&self.client, &owner, &revisions.all, &in_use).await?;
        if min_ready > 0 && available < ready {
            again = Some(Duration::from_secs(1));
        }
        Ok(again)
    }

    /// Creates the pod's claims that are missing; false while one is being deleted.
    async fn ensure_claims(&self, set: &StatefulSet, o: i32) -> Result<bool, kube::Error> {
        let spec = set.spec.clone();
        let ns = set.metadata.namespace.as_deref().unwrap_or_default();
        let name = set.metadata.name.as_deref().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let delete_with_set = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_deleted.as_deref())
            == Some("Delete");
        for template in spec.volume_claim_templates.iter().flatten() {
            let claim_name = claim_name(
                template.metadata.name.as_deref().unwrap_or_default(),
                name,
                o,
            );
            if let Some(existing) = self.claims.get(&ObjectRef::new(&claim_name).within(ns)) {
                if existing.metadata.deletion_timestamp.is_some() {
                    return Ok(false);
                }
                continue;
            }
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
            let claim = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name.clone()),
                    namespace: Some(ns.to_owned()),
                    labels: Some(labels),
                    annotations: template.metadata.annotations.clone(),
                    owner_references: delete_with_set.then(|| {
                        let mut r = pods::owner_ref("apps/v1", "StatefulSet", &set.metadata);
                        r.controller = Some(false);
                        vec![r]
                    }),
                    ..Default::default()
                },
                spec: template.spec.clone(),
                status: None,
            };
            match api.create(&PostParams::default(), &claim).await {
                Ok(_) => {
                    self.event(
                        set,
                        "Normal",
                        "SuccessfulCreate",
                        &format!(
                            "create Claim {claim_name} Pod {name}-{o} in StatefulSet {name} success"
                        ),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    self.event(
                        set,
                        "Warning",
                        "FailedCreate",
                        &format!("create Claim {claim_name} for Pod {name}-{o} in StatefulSet {name} failed error: {e}"),
                    )
                    .await;
                    return Err(e);
                }
            }
        }
        Ok(true)
    }

    /// With `whenScaled: Delete`, a condemned pod's claims become the pod's, so they
    /// go with it.
    async fn condemn_claims(&self, set: &StatefulSet, pod: &Pod) -> Result<(), kube::Error> {
        let spec = set.spec.clone();
        let when_scaled = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.as_deref());
        if when_scaled != Some("Delete") {
            return Ok(());
        }
        let ns = set.metadata.namespace.as_deref().unwrap_or_default();
        let name = set.metadata.name.as_deref().unwrap_or_default();
        let Some(o) = ordinal(name, pod.metadata.name.as_deref().unwrap_or_default()) else {
            return Ok(());
        };
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        for template in spec.volume_claim_templates.iter().flatten() {
            let claim = claim_name(
                template.metadata.name.as_deref().unwrap_or_default(),
                name,
                o,
            );
            let mut r = pods::owner_ref("v1", "Pod", &pod.metadata);
            r.controller = Some(false);
            let cached = match self.claims.get(&ObjectRef::new(&claim).within(ns)) {
                Some(c) => Some((*c).clone()),
                None => api.get_opt(&claim).await?,
            };
            let Some(cached) = cached else { continue };
            let owner = serde_json::to_value(&r).map_err(kube::Error::SerdeError)?;
            update::update(&api, &cached, Part::Object, |claim| {
                let refs = &mut claim["metadata"]["ownerReferences"];
                if !refs.is_array() {
                    *refs = json!([]);
                }
                if let Some(list) = refs.as_array_mut()
                    && !list.iter().any(|o| o["uid"] == owner["uid"])
                {
                    list.push(owner.clone());
                }
            })
            .await?;
        }
        Ok(())
    }

    async fn create_pod(
        &self,
        set: &StatefulSet,
        api: &Api<Pod>,
        o: i32,
        template: &PodTemplateSpec,
        revision: &str,
    ) -> Result<(), kube::Error> {
        let spec = set.spec.clone();
        let name = set.metadata.name.as_deref().unwrap_or_default();
        let pod_name = format!("{name}-{o}");
        let mut pod = pods::from_template(
            template,
            "",
            pods::owner_ref("apps/v1", "StatefulSet", &set.metadata),
        );
        pod.metadata.generate_name = None;
        pod.metadata.name = Some(pod_name.clone());
        let labels = pod.metadata.labels.get_or_insert_with(Default::default);
        labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
        labels.insert(POD_INDEX_LABEL.into(), o.to_string());
        labels.insert(HASH_LABEL.into(), revision.to_owned());
        if let Some(pod_spec) = pod.spec.as_mut() {
            pod_spec.hostname = Some(pod_name.clone());
            if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
                pod_spec.subdomain = spec.service_name.clone();
            }
            for claim in spec.volume_claim_templates.iter().flatten() {
                let claim_template = claim.metadata.name.clone().unwrap_or_default();
                let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
                volumes.retain(|v| v.name != claim_template);
                volumes.push(Volume {
                    name: claim_template.clone(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim_name(&claim_template, name, o),
                        read_only: None,
                    }),
                    ..Default::default()
                });
            }
        }
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                self.event(
                    set,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("create Pod {pod_name} in StatefulSet {name} successful"),
                )
                .await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => {
                self.event(
                    set,
                    "Warning",
                    "FailedCreate",
                    &format!("create Pod {pod_name} in StatefulSet {name} failed error: {e}"),
                )
                .await;
                Err(e)
            }
        }
    }

    async fn delete_pod(
        &self,
        set: &StatefulSet,
        api: &Api<Pod>,
        pod: &Pod,
    ) -> Result<(), kube::Error> {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let name = set.metadata.name.as_deref().unwrap_or_default();
        match pods::delete(api, pod).await {
            Ok(true) => {
                self.event(
                    set,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("delete Pod {pod_name} in StatefulSet {name} successful"),
                )
                .await;
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_are_parsed_strictly() {
        assert_eq!(ordinal("db", "db-0"), Some(0));
        assert_eq!(ordinal("db", "db-12"), Some(12));
        assert_eq!(ordinal("db", "db-012"), None);
        assert_eq!(ordinal("db", "db-x"), None);
        assert_eq!(ordinal("db", "dbx-1"), None);
        assert_eq!(ordinal("db-1", "db-1-3"), Some(3));
    }

    #[test]
    fn max_unavailable_is_at_least_one() {
        assert_eq!(max_unavailable(None, 10), 1);
        assert_eq!(max_unavailable(Some(&IntOrString::Int(3)), 10), 3);
        assert_eq!(
            max_unavailable(Some(&IntOrString::String("25%".into())), 10),
            2
        );
        assert_eq!(
            max_unavailable(Some(&IntOrString::String("1%".into())), 10),
            1
        );
    }
}
