//! The Deployment controller: one ReplicaSet per pod template (named
//! `<deployment>-<pod-template-hash>`), rolled from old to new with RollingUpdate
//! (maxSurge / maxUnavailable) or Recreate; revisions in the
//! `deployment.kubernetes.io/revision` annotation (a template that returns — `kubectl
//! rollout undo` — takes the next revision); old ReplicaSets beyond
//! revisionHistoryLimit deleted; pause; the Progressing (with progressDeadlineSeconds)
//! and Available conditions `kubectl rollout status` reads.
//!
//! Availability is counted from the pod cache, capped per ReplicaSet at its
//! `spec.replicas` (pods over that are about to go), so a ReplicaSet status that lags
//! never lets a rollout take away more than maxUnavailable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Value, json};

use super::pods;
use super::queue::{Queue, key_of, split_key};
use super::replicaset::ignore_gone;
use super::update::{self, Part};
use crate::client::{Informers, Involved, record_event};
use crate::scheduler::labels::matches;

const COMPONENT: &str = "deployment-controller";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";

struct Controller {
    client: Client,
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
}

pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let deployments = informers.add(Api::<Deployment>::all(client.clone()), {
        let q = queue.clone();
        move |d: &Deployment| q.add(key_of(&d.metadata))
    });
    let replicasets = informers.add(Api::<ReplicaSet>::all(client.clone()), {
        let (q, ds) = (queue.clone(), deployments.clone());
        move |rs: &ReplicaSet| route_rs(rs, &q, &ds)
    });
    let pods = informers.add(Api::<Pod>::all(client.clone()), {
        let (q, rss) = (queue.clone(), replicasets.clone());
        move |pod: &Pod| {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            if let Some(r) = pods::controller_ref(&pod.metadata)
                && r.kind == "ReplicaSet"
                && let Some(rs) = rss.get(&ObjectRef::new(&r.name).within(&ns))
                && let Some(d) = pods::controller_ref(&rs.metadata)
                && d.kind == "Deployment"
            {
                q.add(format!("{ns}/{}", d.name));
            }
        }
    });
    async move {
        let _ = deployments.wait_until_ready().await;
        let _ = replicasets.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            client,
            deployments,
            replicasets,
            pods,
        });
        queue
            .work("deployment", move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

fn route_rs(rs: &ReplicaSet, queue: &Queue, deployments: &Store<Deployment>) {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    if let Some(r) = pods::controller_ref(&rs.metadata) {
        if r.kind == "Deployment" {
            queue.add(format!("{ns}/{}", r.name));
        }
        return;
    }
    let labels = pods::labels(&rs.metadata);
    for d in deployments.state() {
        if d.metadata.namespace.as_deref() == Some(&ns) && matches(Some(&d.spec.selector), &labels)
        {
            queue.add(key_of(&d.metadata));
        }
    }
}

/// Kubernetes' pod-template-hash: FNV-1a (32 bit) of the template (and the collision
/// count), its decimal digits spelled in the alphabet of generated names.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    super::history::name_hash(text.as_bytes(), collision_count)
}

/// The template without the pod-template-hash label, for comparing templates.
fn without_hash(t: &PodTemplateSpec) -> Value {
    let mut t = t.clone();
    if let Some(m) = t.metadata.as_mut()
        && let Some(l) = m.labels.as_mut()
    {
        l.remove(HASH_LABEL);
        if l.is_empty() {
            m.labels = None;
        }
    }
    serde_json::to_value(&t).unwrap_or_default()
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

/// maxSurge (rounded up) or maxUnavailable (rounded down) of `replicas`.
fn scaled(v: Option<&IntOrString>, replicas: i32, round_up: bool, default: &str) -> i32 {
    let v = v.cloned().unwrap_or(IntOrString::String(default.into()));
    match v {
        IntOrString::Int(i) => i.max(0),
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
            let n = i64::from(replicas) * pct;
            let r = if round_up { (n + 99) / 100 } else { n / 100 };
            i32::try_from(r).unwrap_or(0).max(0)
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    active: i32,
    ready: i32,
    available: i32,
}

impl Controller {
    /// Active, ready and available pods of each ReplicaSet (by uid).
    fn counts(&self, ns: &str, min_ready: i32) -> BTreeMap<String, Counts> {
        let now = jiff::Timestamp::now();
        let mut out: BTreeMap<String, Counts> = BTreeMap::new();
        for pod in self.pods.state() {
            if pod.metadata.namespace.as_deref() != Some(ns) || !pods::is_active(&pod) {
                continue;
            }
            let Some(r) = pods::controller_ref(&pod.metadata) else {
                continue;
            };
            let c = out.entry(r.uid.clone()).or_default();
            c.active += 1;
            c.ready += i32::from(pods::is_ready(&pod));
            c.available += i32::from(pods::is_available(&pod, min_ready, now));
        }
        out
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(d) = self.deployments.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let spec = d.spec.clone();
        let selector = spec.selector.clone();
        if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && selector
                .match_expressions
                .as_ref()
                .is_none_or(|e| e.is_empty())
        {
            return Ok(None);
        }
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let rs_api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);

        // Claim ReplicaSets.
        let mut owned: Vec<ReplicaSet> = Vec::new();
        for rs in self.replicasets.state() {
            if rs.metadata.namespace.as_deref() != Some(ns) {
                continue;
            }
            let selected = matches(Some(&selector), &pods::labels(&rs.metadata));
            let rs_name = rs.metadata.name.clone().unwrap_or_default();
            match pods::controller_ref(&rs.metadata) {
                Some(r) if r.uid == uid => {
                    if selected {
                        owned.push((*rs).clone());
                    } else {
                        let patch = json!({"metadata": {
                            "ownerReferences": [{"$patch": "delete", "uid": uid}],
                            "uid": rs.metadata.uid}});
                        ignore_gone(
                            rs_api
                                .patch(&rs_name, &PatchParams::default(), &Patch::Strategic(patch))
                                .await,
                        )?;
                    }
                }
                Some(_) => {}
                None if selected && rs.metadata.deletion_timestamp.is_none() => {
                    let r = pods::owner_ref("apps/v1", "Deployment", &d.metadata);
                    let patch =
                        json!({"metadata": {"ownerReferences": [r], "uid": rs.metadata.uid}});
                    if let Some(rs) = ignore_gone(
                        rs_api
                            .patch(&rs_name, &PatchParams::default(), &Patch::Strategic(patch))
                            .await,
                    )? {
                        owned.push(rs);
                    }
                }
                None => {}
            }
        }
        owned.sort_by_key(|rs| {
            (
                revision(rs),
                rs.metadata.creation_timestamp.clone().map(|t| t.0),
            )
        });

        let template = spec.template.clone();
        let want = without_hash(&template);
        let new_idx = owned
            .iter()
            .position(|rs| rs.spec.template.as_ref().map(without_hash) == Some(want.clone()));
        let max_old_revision = owned
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new_idx)
            .map(|(_, rs)| revision(rs))
            .max()
            .unwrap_or(0);
        let replicas = spec.replicas.unwrap_or(1);
        let strategy = spec.strategy.clone().unwrap_or_default();
        let recreate = strategy.type_.as_deref() == Some("Recreate");
        let rolling = strategy.rolling_update.clone().unwrap_or_default();
        let mut surge = scaled(rolling.max_surge.as_ref(), replicas, true, "25%");
        let mut unavailable = scaled(rolling.max_unavailable.as_ref(), replicas, false, "25%");
        if recreate {
            surge = 0;
            unavailable = replicas;
        } else if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let paused = spec.paused == Some(true);
        let counts = self.counts(ns, min_ready);
        let count = |rs: &ReplicaSet| {
            counts
                .get(rs.metadata.uid.as_deref().unwrap_or_default())
                .copied()
                .unwrap_or_default()
        };

        let mut new_rs: Option<ReplicaSet> = new_idx.map(|i| owned[i].clone());
        let old: Vec<ReplicaSet> = owned
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new_idx)
            .map(|(_, rs)| rs.clone())
            .collect();
        let old_active: i32 = old.iter().map(|rs| count(rs).active).sum();

        if !paused {
            // The new ReplicaSet: created, or its revision moved past the old ones.
            match &new_rs {
                None => {
                    let start = if recreate {
                        if old.iter().any(|rs| spec_replicas(rs) > 0) || old_active > 0 {
                            None
                        } else {
                            Some(replicas)
                        }
                    } else if old.is_empty() {
                        Some(replicas)
                    } else {
                        let total: i32 = old.iter().map(spec_replicas).sum();
                        Some((replicas + surge - total).clamp(0, replicas))
                    };
                    if let Some(start) = start {
                        let rs = self
                            .create_rs(&d, &template, start, max_old_revision + 1, surge)
                            .await?;
                        new_rs = Some(rs);
                    }
                }
                Some(rs) if revision(rs) <= max_old_revision => {
                    let rs_name = rs.metadata.name.clone().unwrap_or_default();
                    let patch = json!({"metadata": {"annotations": {REVISION: (max_old_revision + 1).to_string()}}});
                    if let Some(rs) = ignore_gone(
                        rs_api
                            .patch(&rs_name, &PatchParams::default(), &Patch::Merge(patch))
                            .await,
                    )? {
                        new_rs = Some(rs);
                    }
                }
                Some(_) => {}
            }

            if recreate {
                for rs in &old {
                    if spec_replicas(rs) > 0 {
                        self.scale(&d, rs, 0, surge).await?;
                    }
                }
                if let Some(rs) = &new_rs
                    && old_active == 0
                    && old.iter().all(|rs| spec_replicas(rs) == 0)
                    && spec_replicas(rs) != replicas
                {
                    self.scale(&d, rs, replicas, surge).await?;
                }
            } else if let Some(new) = &new_rs {
                self.roll(&d, new, &old, replicas, surge, unavailable, &count)
                    .await?;
            }
            self.cleanup(&d, &old, spec.revision_history_limit.unwrap_or(10))
                .await?;
        }

        // The deployment's revision annotation follows its new ReplicaSet.
        if let Some(rs) = &new_rs {
            let rev = revision(rs).to_string();
            let current = d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION).cloned());
            if current.as_deref() != Some(rev.as_str()) {
                let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
                let api = Api::<Deployment>::namespaced(self.client.clone(), ns);
                update::update(&api, &*d, Part::Object, update::merge(patch)).await?;
            }
        }
        self.update_status(
            &d,
            new_rs.as_ref(),
            &owned,
            replicas,
            unavailable,
            paused,
            &count,
        )
        .await
    }

    async fn create_rs(
        &self,
        d: &Deployment,
        template: &PodTemplateSpec,
        replicas: i32,
        revision: i64,
        surge: i32,
    ) -> Result<ReplicaSet, kube::Error> {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let name = d.metadata.name.clone().unwrap_or_default();
        let collisions = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(template, collisions);
        let mut template = template.clone();
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let labels = meta.labels.clone();
        let mut selector = d.spec.clone().selector;
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let d_replicas = d.spec.replicas.unwrap_or(1);
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {
                "name": format!("{name}-{hash}"),
                "namespace": ns,
                "labels": labels,
                "annotations": {
                    REVISION: revision.to_string(),
                    DESIRED: d_replicas.to_string(),
                    MAX: (d_replicas + surge).to_string(),
                },
                "ownerReferences": [pods::owner_ref("apps/v1", "Deployment", &d.metadata)],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": d.spec.min_ready_seconds.unwrap_or(0),
                "selector": selector,
                "template": template,
            },
        }))
        .map_err(kube::Error::SerdeError)?;
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
        match api.create(&PostParams::default(), &rs).await {
            Ok(rs) => {
                let rs_name = rs.metadata.name.clone().unwrap_or_default();
                // As upstream: no event for a replica set created at 0.
                if replicas > 0 {
                    record_event(
                        &self.client,
                        COMPONENT,
                        &Involved::of(d),
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Scaled up replica set {rs_name} from 0 to {replicas}"),
                    )
                    .await;
                }
                Ok(rs)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // A ReplicaSet of that name with another template: count the collision
                // so the next hash differs.
                let next = collisions.unwrap_or(0) + 1;
                let patch = json!({"status": {"collisionCount": next}});
                let api = Api::<Deployment>::namespaced(self.client.clone(), &ns);
                update::update(&api, d, Part::Status, update::merge(patch)).await?;
                Err(kube::Error::Api(s))
            }
            Err(e) => Err(e),
        }
    }

    async fn scale(
        &self,
        d: &Deployment,
        rs: &ReplicaSet,
        to: i32,
        surge: i32,
    ) -> Result<(), kube::Error> {
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let rs_name = rs.metadata.name.clone().unwrap_or_default();
        let from = spec_replicas(rs);
        let d_replicas = d.spec.replicas.unwrap_or(1);
        let patch = json!({
            "metadata": {"annotations": {DESIRED: d_replicas.to_string(), MAX: (d_replicas + surge).to_string()}},
            "spec": {"replicas": to},
        });
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
        if ignore_gone(
            api.patch(&rs_name, &PatchParams::default(), &Patch::Merge(patch))
                .await,
        )?
        .is_some()
            && from != to
        {
            let dir = if to > from { "up" } else { "down" };
            record_event(
                &self.client,
                COMPONENT,
                &Involved::of(d),
                "Normal",
                "ScalingReplicaSet",
                &format!("Scaled {dir} replica set {rs_name} from {from} to {to}"),
            )
            .await;
        }
        Ok(())
    }

    /// One step of a rolling update: surge the new ReplicaSet, then take from the old
    /// ones what availability allows (unhealthy old pods first).
    #[expect(
        clippy::too_many_arguments,
        reason = "one rolling-update step's inputs"
    )]
    async fn roll(
        &self,
        d: &Deployment,
        new: &ReplicaSet,
        old: &[ReplicaSet],
        replicas: i32,
        surge: i32,
        unavailable: i32,
        count: &(dyn Fn(&ReplicaSet) -> Counts + Sync),
    ) -> Result<(), kube::Error> {
        let new_spec = spec_replicas(new);
        let old_spec: i32 = old.iter().map(spec_replicas).sum();
        let mut new_target = new_spec;
        if new_spec > replicas {
            new_target = replicas;
        } else if new_spec < replicas {
            // Pods that exist count even where a ReplicaSet was already scaled down and
            // its controller has not deleted them yet: the surge bounds real pods.
            let allowed = replicas + surge;
            let total: i32 = std::iter::once(new)
                .chain(old.iter())
                .map(|rs| spec_replicas(rs).max(count(rs).active))
                .sum();
            if total < allowed {
                new_target = new_spec + (allowed - total).min(replicas - new_spec);
            }
        }
        if new_target != new_spec {
            self.scale(d, new, new_target, surge).await?;
        }
        if old_spec == 0 {
            return Ok(());
        }
        // Available pods, each ReplicaSet's counted up to its spec.replicas.
        let avail = |rs: &ReplicaSet| count(rs).available.min(spec_replicas(rs));
        let min_available = replicas - unavailable;
        let new_unavailable = (new_spec - avail(new)).max(0);
        let all = old_spec + new_spec;
        let mut budget = all - min_available - new_unavailable;
        if budget <= 0 {
            return Ok(());
        }
        let mut targets: Vec<(ReplicaSet, i32)> = old
            .iter()
            .map(|rs| (rs.clone(), spec_replicas(rs)))
            .collect();
        // Unhealthy replicas first: they cost no availability.
        for (rs, target) in targets.iter_mut() {
            if budget == 0 {
                break;
            }
            let unhealthy = (*target - avail(rs)).max(0);
            let take = unhealthy.min(budget);
            *target -= take;
            budget -= take;
        }
        // Then available ones, oldest first, as far as total availability allows.
        let total_available: i32 =
            avail(new) + targets.iter().map(|(rs, t)| avail(rs).min(*t)).sum::<i32>();
        let mut can_take = (total_available - min_available).max(0);
        for (_, target) in targets.iter_mut() {
            if can_take == 0 {
                break;
            }
            let take = (*target).min(can_take);
            *target -= take;
            can_take -= take;
        }
        for (rs, target) in &targets {
            if *target != spec_replicas(rs) {
                self.scale(d, rs, *target, surge).await?;
            }
        }
        Ok(())
    }

    /// Deletes old, empty ReplicaSets beyond revisionHistoryLimit (oldest first).
    async fn cleanup(
        &self,
        d: &Deployment,
        old: &[ReplicaSet],
        limit: i32,
    ) -> Result<(), kube::Error> {
        let empty: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && rs.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        let excess = empty
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        for rs in empty.into_iter().take(excess) {
            let ns = d.metadata.namespace.clone().unwrap_or_default();
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: rs.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            ignore_gone(
                Api::<ReplicaSet>::namespaced(self.client.clone(), &ns)
                    .delete(rs.metadata.name.as_deref().unwrap_or_default(), &dp)
                    .await,
            )?;
        }
        Ok(())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the status is a view of all of them"
    )]
    async fn update_status(
        &self,
        d: &Deployment,
        new: Option<&ReplicaSet>,
        all: &[ReplicaSet],
        replicas: i32,
        unavailable: i32,
        paused: bool,
        count: &(dyn Fn(&ReplicaSet) -> Counts + Sync),
    ) -> Result<Option<Duration>, kube::Error> {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let total: i32 = all.iter().map(|rs| count(rs).active).sum();
        let ready: i32 = all.iter().map(|rs| count(rs).ready).sum();
        let available: i32 = all.iter().map(|rs| count(rs).available).sum();
        let updated = new.map(|rs| count(rs).active).unwrap_or(0);
        let spec_total: i32 = all.iter().map(spec_replicas).sum();
        let status = d.status.clone().unwrap_or_default();
        let now = jiff::Timestamp::now();
        let now_s = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let conditions = status.conditions.clone().unwrap_or_default();
        let find = |t: &str| conditions.iter().find(|c| c.type_.as_deref() == Some(t));
        let condition = |t: &str, s: &str, reason: &str, message: String, progressed: bool| {
            let prev = find(t);
            let same = prev.is_some_and(|c| {
                c.status.as_deref() == Some(s) && c.reason.as_deref() == Some(reason)
            });
            let transition = match prev {
                Some(c) if c.status.as_deref() == Some(s) => c
                    .last_transition_time
                    .as_ref()
                    .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|| now_s.clone()),
                _ => now_s.clone(),
            };
            let update = match prev {
                Some(c) if same && !progressed => c
                    .last_update_time
                    .as_ref()
                    .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|| now_s.clone()),
                _ => now_s.clone(),
            };
            json!({"type": t, "status": s, "reason": reason, "message": message,
                "lastTransitionTime": transition, "lastUpdateTime": update})
        };
        let available_cond = if available >= replicas - unavailable {
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                false,
            )
        } else {
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                false,
            )
        };
        let rs_name = new
            .and_then(|rs| rs.metadata.name.clone())
            .unwrap_or_default();
        let complete =
            new.is_some() && updated == replicas && available >= replicas && total == replicas;
        let progressed = status.updated_replicas.unwrap_or(0) != updated
            || status.ready_replicas.unwrap_or(0) != ready
            || status.available_replicas.unwrap_or(0) != available
            || status.replicas.unwrap_or(0) != total;
        let deadline = d.spec.progress_deadline_seconds.unwrap_or(600);
        let mut again = None;
        let progressing = if paused {
            condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                false,
            )
        } else if complete {
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                false,
            )
        } else {
            let last = find("Progressing")
                .filter(|c| c.status.as_deref() == Some("True"))
                .and_then(|c| c.last_update_time.as_ref().map(|t| t.0));
            let exceeded = !progressed
                && last.is_some_and(|l| {
                    l + jiff::SignedDuration::from_secs(i64::from(deadline)) < now
                });
            if exceeded
                || find("Progressing").is_some_and(|c| {
                    c.reason.as_deref() == Some("ProgressDeadlineExceeded") && !progressed
                })
            {
                condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    false,
                )
            } else {
                again = Some(Duration::from_secs(
                    u64::try_from(deadline.max(1)).unwrap_or(600),
                ));
                let reason = if find("Progressing").is_none() {
                    "NewReplicaSetCreated"
                } else {
                    "ReplicaSetUpdated"
                };
                condition(
                    "Progressing",
                    "True",
                    reason,
                    format!("ReplicaSet \"{rs_name}\" is progressing."),
                    progressed,
                )
            }
        };
        let new_status = json!({
            "observedGeneration": d.metadata.generation,
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": (spec_total.max(replicas) - available).max(0),
            "conditions": [available_cond, progressing],
            "collisionCount": status.collision_count,
        });
        let old_status = serde_json::to_value(&status).unwrap_or_default();
        let num = |v: &Value, f: &str| v.get(f).and_then(Value::as_i64).unwrap_or(0);
        let cond_key = |v: &Value| -> Vec<(String, String, String)> {
            v.get("conditions")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            let s = |k: &str| {
                                c.get(k)
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            (s("type"), s("status"), s("reason") + &s("lastUpdateTime"))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let changed = [
            "observedGeneration",
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
        ]
        .iter()
        .any(|f| num(&old_status, f) != num(&new_status, f))
            || cond_key(&old_status) != cond_key(&new_status);
        if changed {
            let api = Api::<Deployment>::namespaced(self.client.clone(), &ns);
            let change = update::merge(json!({"status": new_status}));
            update::update(&api, d, Part::Status, change).await?;
        }
        Ok(again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(scaled(Some(&pct), 10, true, "25%"), 3);
        assert_eq!(scaled(Some(&pct), 10, false, "25%"), 2);
        assert_eq!(scaled(Some(&IntOrString::Int(4)), 10, false, "25%"), 4);
        assert_eq!(scaled(None, 1, false, "25%"), 0);
    }

    #[test]
    fn template_hash_is_stable_and_name_safe() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}))
        .expect("template");
        let a = template_hash(&t, None);
        assert_eq!(a, template_hash(&t, None));
        assert_ne!(a, template_hash(&t, Some(1)));
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
