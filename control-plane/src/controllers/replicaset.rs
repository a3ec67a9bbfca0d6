//! The ReplicaSet and ReplicationController controller: keeps `spec.replicas` active
//! pods matching the selector, adopting matching orphans and releasing pods that no
//! longer match (ownerReferences), creating in slow-start batches (1, 2, 4, …) and
//! deleting in Kubernetes' preference order (unscheduled, pending, not ready, newest
//! first). Expectations keep it from acting twice on a cache that has not yet seen its
//! own creations and deletions. Status: replicas, fullyLabeledReplicas, readyReplicas,
//! availableReplicas, observedGeneration.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::expectations::Expectations;
use super::pods;
use super::queue::{Queue, key_of, split_key};
use super::update::{self, Part};
use crate::client::{Informers, Involved, record_event};
use crate::scheduler::labels::matches;

const COMPONENT: &str = "replicaset-controller";
/// Most pods created or deleted in one sync (kube-controller-manager's burstReplicas).
const BURST: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    ReplicaSet,
    ReplicationController,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::ReplicaSet => "apps/v1",
            Kind::ReplicationController => "v1",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::ReplicaSet => "ReplicaSet",
            Kind::ReplicationController => "ReplicationController",
        }
    }
}

/// A ReplicaSet or a ReplicationController, as far as this controller cares.
#[derive(Debug)]
struct Owner {
    kind: Kind,
    meta: ObjectMeta,
    replicas: i32,
    selector: LabelSelector,
    template: Option<PodTemplateSpec>,
    min_ready_seconds: i32,
    status: serde_json::Value,
}

impl Owner {
    fn from_rs(rs: &ReplicaSet) -> Owner {
        let spec = rs.spec.clone();
        Owner {
            kind: Kind::ReplicaSet,
            meta: rs.metadata.clone(),
            replicas: spec.replicas.unwrap_or(1),
            selector: spec.selector,
            template: spec.template,
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            status: serde_json::to_value(&rs.status).unwrap_or_default(),
        }
    }

    fn from_rc(rc: &ReplicationController) -> Owner {
        let spec = rc.spec.clone().unwrap_or_default();
        Owner {
            kind: Kind::ReplicationController,
            meta: rc.metadata.clone(),
            replicas: spec.replicas.unwrap_or(1),
            selector: LabelSelector {
                match_labels: spec.selector,
                match_expressions: None,
            },
            template: spec.template,
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            status: serde_json::to_value(&rc.status).unwrap_or_default(),
        }
    }

    fn involved(&self) -> Involved {
        Involved {
            api_version: self.kind.api_version().into(),
            kind: self.kind.name().into(),
            namespace: self.meta.namespace.clone(),
            name: self.meta.name.clone().unwrap_or_default(),
            uid: self.meta.uid.clone(),
        }
    }
}

struct Controller {
    /// The ReplicaSet controller's client, and the ReplicationController manager's
    /// (upstream's two controllers, each with its own role).
    rs_client: Client,
    rc_client: Client,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    controllers: Store<ReplicationController>,
    expectations: Expectations<(Kind, String)>,
}

/// Runs the controller for both kinds until the runtime ends: `client` acts for
/// ReplicaSets, `rc_client` for ReplicationControllers.
pub fn start(
    client: Client,
    rc_client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let rs_queue = Queue::new();
    let rc_queue = Queue::new();
    let replicasets = informers.add(Api::<ReplicaSet>::all(client.clone()), {
        let q = rs_queue.clone();
        move |o: &ReplicaSet| q.add(key_of(&o.metadata))
    });
    let controllers = informers.add(Api::<ReplicationController>::all(client.clone()), {
        let q = rc_queue.clone();
        move |o: &ReplicationController| q.add(key_of(&o.metadata))
    });
    let pods = informers.add(Api::<Pod>::all(client.clone()), {
        let (rsq, rcq) = (rs_queue.clone(), rc_queue.clone());
        let (rss, rcs) = (replicasets.clone(), controllers.clone());
        move |pod: &Pod| route_pod(pod, &rsq, &rcq, &rss, &rcs)
    });
    async move {
        let _ = replicasets.wait_until_ready().await;
        let _ = controllers.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            rs_client: client,
            rc_client,
            pods,
            replicasets,
            controllers,
            expectations: Expectations::default(),
        });
        let rs = rs_queue.work("replicaset", {
            let ctl = ctl.clone();
            move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(Kind::ReplicaSet, &key).await }
            }
        });
        let rc = rc_queue.work("replicationcontroller", {
            let ctl = ctl.clone();
            move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(Kind::ReplicationController, &key).await }
            }
        });
        tokio::join!(rs, rc);
    }
}

/// A pod change wakes its controller, or, for an orphan, every owner that selects it.
fn route_pod(
    pod: &Pod,
    rs_queue: &Queue,
    rc_queue: &Queue,
    replicasets: &Store<ReplicaSet>,
    controllers: &Store<ReplicationController>,
) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(r) = pods::controller_ref(&pod.metadata) {
        match (r.kind.as_str(), r.api_version.as_str()) {
            ("ReplicaSet", "apps/v1") => rs_queue.add(format!("{ns}/{}", r.name)),
            ("ReplicationController", "v1") => rc_queue.add(format!("{ns}/{}", r.name)),
            _ => {}
        }
        return;
    }
    let labels = pods::labels(&pod.metadata);
    for rs in replicasets.state() {
        if rs.metadata.namespace.as_deref() == Some(&ns)
            && matches(Some(&rs.spec.selector), &labels)
        {
            rs_queue.add(key_of(&rs.metadata));
        }
    }
    for rc in controllers.state() {
        let sel = rc.spec.as_ref().and_then(|s| s.selector.as_ref());
        if rc.metadata.namespace.as_deref() == Some(&ns)
            && sel.is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
        {
            rc_queue.add(key_of(&rc.metadata));
        }
    }
}

impl Controller {
    fn client(&self, kind: Kind) -> &Client {
        match kind {
            Kind::ReplicaSet => &self.rs_client,
            Kind::ReplicationController => &self.rc_client,
        }
    }

    fn owner(&self, kind: Kind, ns: &str, name: &str) -> Option<Owner> {
        match kind {
            Kind::ReplicaSet => self
                .replicasets
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| Owner::from_rs(&o)),
            Kind::ReplicationController => self
                .controllers
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| Owner::from_rc(&o)),
        }
    }

    /// Whether the cache has caught up with what the last sync did.
    fn satisfied(&self, kind: Kind, key: &str, ns: &str) -> bool {
        self.expectations
            .satisfied(&(kind, key.to_owned()), ns, &self.pods)
    }

    fn expect(&self, kind: Kind, key: &str, adds: HashSet<String>, deletes: HashSet<String>) {
        self.expectations
            .expect((kind, key.to_owned()), adds, deletes);
    }

    async fn sync(&self, kind: Kind, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(owner) = self.owner(kind, ns, name) else {
            self.expectations.forget(&(kind, key.to_owned()));
            return Ok(None);
        };
        let uid = owner.meta.uid.clone().unwrap_or_default();
        let deleting = owner.meta.deletion_timestamp.is_some();
        let pod_api: Api<Pod> = Api::namespaced(self.client(kind).clone(), ns);

        // Claim: own what matches, adopt matching orphans, release what no longer matches.
        let mut owned: Vec<Pod> = Vec::new();
        for pod in self.pods.state() {
            if pod.metadata.namespace.as_deref() != Some(ns) {
                continue;
            }
            let labels = pods::labels(&pod.metadata);
            // An empty selector selects nothing here (validation refuses it anyway).
            let selected =
                !selector_empty(&owner.selector) && matches(Some(&owner.selector), &labels);
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            match pods::controller_ref(&pod.metadata) {
                Some(r) if r.uid == uid => {
                    if selected {
                        owned.push((*pod).clone());
                    } else if !deleting {
                        let patch = json!({"metadata": {
                            "ownerReferences": [{"$patch": "delete", "uid": uid}],
                            "uid": pod.metadata.uid}});
                        ignore_gone(
                            pod_api
                                .patch(&pod_name, &PatchParams::default(), &Patch::Strategic(patch))
                                .await,
                        )?;
                    }
                }
                Some(_) => {}
                None if selected && !deleting && pods::is_active(&pod) => {
                    let r = pods::owner_ref(kind.api_version(), kind.name(), &owner.meta);
                    let patch =
                        json!({"metadata": {"ownerReferences": [r], "uid": pod.metadata.uid}});
                    if let Some(p) = ignore_gone(
                        pod_api
                            .patch(&pod_name, &PatchParams::default(), &Patch::Strategic(patch))
                            .await,
                    )? {
                        owned.push(p);
                    }
                }
                None => {}
            }
        }
        let active: Vec<&Pod> = owned.iter().filter(|p| pods::is_active(p)).collect();

        if !deleting && self.satisfied(kind, key, ns) {
            self.manage(kind, key, &owner, &active, &pod_api).await?;
        }

        // Status.
        let now = jiff::Timestamp::now();
        let template_labels = owner
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .map(pods::labels)
            .unwrap_or_default();
        let fully = active
            .iter()
            .filter(|p| {
                let l = pods::labels(&p.metadata);
                template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
            })
            .count();
        let ready = active.iter().filter(|p| pods::is_ready(p)).count();
        let available = active
            .iter()
            .filter(|p| pods::is_available(p, owner.min_ready_seconds, now))
            .count();
        let status = json!({
            "replicas": active.len(),
            "fullyLabeledReplicas": fully,
            "readyReplicas": ready,
            "availableReplicas": available,
            "observedGeneration": owner.meta.generation,
        });
        let current = &owner.status;
        let differs = [
            "replicas",
            "fullyLabeledReplicas",
            "readyReplicas",
            "availableReplicas",
            "observedGeneration",
        ]
        .iter()
        .any(|f| {
            current.get(*f).and_then(|v| v.as_i64()).unwrap_or(0)
                != status[*f].as_i64().unwrap_or(0)
        });
        if differs {
            let change = update::merge(json!({"status": status}));
            match kind {
                Kind::ReplicaSet => {
                    if let Some(rs) = self.replicasets.get(&ObjectRef::new(name).within(ns)) {
                        let api = Api::<ReplicaSet>::namespaced(self.client(kind).clone(), ns);
                        update::update(&api, &rs, Part::Status, change).await?;
                    }
                }
                Kind::ReplicationController => {
                    if let Some(rc) = self.controllers.get(&ObjectRef::new(name).within(ns)) {
                        let api =
                            Api::<ReplicationController>::namespaced(self.client(kind).clone(), ns);
                        update::update(&api, &rc, Part::Status, change).await?;
                    }
                }
            }
        }
        if owner.min_ready_seconds > 0 && available < ready {
            return Ok(Some(Duration::from_secs(1)));
        }
        Ok(None)
    }

    /// Creates or deletes pods so that `spec.replicas` are active.
    async fn manage(
        &self,
        kind: Kind,
        key: &str,
        owner: &Owner,
        active: &[&Pod],
        api: &Api<Pod>,
    ) -> Result<(), kube::Error> {
        let want = usize::try_from(owner.replicas.max(0)).unwrap_or(0);
        let name = owner.meta.name.clone().unwrap_or_default();
        if active.len() < want {
            let Some(template) = owner.template.as_ref() else {
                return Ok(());
            };
            let mut missing = (want - active.len()).min(BURST);
            let owner_ref = pods::owner_ref(kind.api_version(), kind.name(), &owner.meta);
            let pod = pods::from_template(template, &format!("{name}-"), owner_ref);
            let pp = PostParams::default();
            let pod = &pod;
            let mut batch = 1;
            let mut created = HashSet::new();
            let mut failure = None;
            // Slow start: a batch doubles only when the one before it fully succeeded.
            while missing > 0 && failure.is_none() {
                let n = batch.min(missing);
                let results =
                    futures_util::future::join_all((0..n).map(|_| api.create(&pp, pod))).await;
                for r in results {
                    match r {
                        Ok(p) => {
                            let pname = p.metadata.name.clone().unwrap_or_default();
                            record_event(
                                self.client(kind),
                                COMPONENT,
                                &owner.involved(),
                                "Normal",
                                "SuccessfulCreate",
                                &format!("Created pod: {pname}"),
                            )
                            .await;
                            created.insert(pname);
                        }
                        Err(err) => failure = Some(err),
                    }
                }
                missing -= n;
                batch *= 2;
            }
            self.expect(kind, key, created, HashSet::new());
            if let Some(err) = failure {
                record_event(
                    self.client(kind),
                    COMPONENT,
                    &owner.involved(),
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating: {err}"),
                )
                .await;
                return Err(err);
            }
        } else if active.len() > want {
            let mut victims: Vec<&Pod> = active.to_vec();
            victims.sort_by(|a, b| pods::deletion_order(a, b));
            victims.truncate((active.len() - want).min(BURST));
            let mut deleted = HashSet::new();
            for pod in victims {
                let pname = pod.metadata.name.clone().unwrap_or_default();
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: pod.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&pname, &dp).await {
                    Ok(_) => {
                        record_event(
                            self.client(kind),
                            COMPONENT,
                            &owner.involved(),
                            "Normal",
                            "SuccessfulDelete",
                            &format!("Deleted pod: {pname}"),
                        )
                        .await;
                        deleted.insert(pname);
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(err) => {
                        self.expect(kind, key, HashSet::new(), deleted);
                        return Err(err);
                    }
                }
            }
            self.expect(kind, key, HashSet::new(), deleted);
        }
        Ok(())
    }
}

/// `Ok(None)` for an object that is gone (404) or changed under us (409; the next
/// sync sees the new version).
pub fn ignore_gone<T>(r: Result<T, kube::Error>) -> Result<Option<T>, kube::Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

fn selector_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}
