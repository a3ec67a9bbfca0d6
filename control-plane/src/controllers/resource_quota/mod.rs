//! The resource quota controller (kube-controller-manager's `resourcequota`): keeps
//! every ResourceQuota's `status.hard` equal to its `spec.hard` and its `status.used`
//! the sum of what the namespace's objects in its scopes use ([`usage`], over the
//! evaluators of [`crate::quota`]).
//!
//! As upstream's quota monitor, it watches every namespaced resource the apiserver
//! serves that can be created, listed, watched and deleted (found through discovery
//! when it starts; the caches are the garbage collector's, shared), and counts from
//! those caches. Admission charges new objects to the quotas itself, so what wakes
//! the controller is what only it can see: an object deleted, or one whose usage
//! fell (a pod that finished or outlived its deletion grace, a claim or service that
//! shrank), a quota new or with changed limits or scopes; and every namespace with
//! quotas is counted again every [`RESYNC`] (`--resource-quota-sync-period`), which
//! also corrects a charge whose object was never stored. A resource discovered later
//! (a new CRD) is listed from the apiserver when a quota counts it, and such a
//! namespace is counted again every [`DISCOVERY_TTL`]. A pod whose `Terminating` scope
//! changed wakes its namespace too. Status is written
//! with the quota's resourceVersion, so a charge admission made meanwhile is never
//! overwritten: the write conflicts and the namespace is counted again.
//!
//! The work queue holds namespaces. [`start`] runs it.

mod usage;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::queue::Queue;
use crate::client::Informers;
use crate::quota::{self, Evaluator, Quota, ResourceList};

/// How often every quota is counted again (kube-controller-manager's
/// `--resource-quota-sync-period` default).
pub const RESYNC: Duration = Duration::from_secs(300);

/// How long discovery of resources without a cache is trusted.
const DISCOVERY_TTL: Duration = Duration::from_secs(30);

type Resource = (String, String);

struct Watched {
    ar: ApiResource,
    store: Store<DynamicObject>,
}

/// What the informers' callbacks remember to tell a fall in usage from a change
/// that costs nothing: each pod's, claim's and service's last usage, and each
/// quota's last spec (by uid).
#[derive(Default)]
struct Seen {
    usage: HashMap<String, ResourceList>,
    specs: HashMap<String, Value>,
    /// Each pod's `Terminating` scope (an activeDeadlineSeconds): a change moves its
    /// usage between quotas of the two scopes.
    terminating: HashMap<String, bool>,
}

struct Controller {
    client: Client,
    watched: HashMap<Resource, Watched>,
    /// Resources found by a later discovery, for the ones without a cache.
    discovered: Mutex<(Option<Instant>, HashMap<Resource, ApiResource>)>,
}

fn quotable(caps: &kube::discovery::ApiCapabilities, ar: &ApiResource) -> bool {
    caps.scope == Scope::Namespaced
        && [verbs::CREATE, verbs::LIST, verbs::WATCH, verbs::DELETE]
            .iter()
            .all(|v| caps.supports_operation(v))
        && !(ar.plural == "events" && matches!(ar.group.as_str(), "" | "events.k8s.io"))
}

async fn discover(client: &Client) -> Discovery {
    loop {
        match Discovery::new(client.clone()).run().await {
            Ok(d) => return d,
            Err(err) => {
                tracing::debug!(%err, "resource quota controller: discovery");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

pub async fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let discovery = discover(&client).await;
    let queue = Queue::new();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut watched = HashMap::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if !quotable(&caps, &ar) {
                continue;
            }
            let evaluator = Evaluator::for_resource(&ar.group, &ar.plural);
            let is_quota = ar.group.is_empty() && ar.plural == "resourcequotas";
            let cell: Arc<OnceLock<Store<DynamicObject>>> = Arc::default();
            let on_change = {
                let (q, seen, cell, ar) = (queue.clone(), seen.clone(), cell.clone(), ar.clone());
                move |obj: &DynamicObject| {
                    let Some(ns) = obj.metadata.namespace.clone() else {
                        return;
                    };
                    let uid = obj.metadata.uid.clone().unwrap_or_default();
                    let live = cell.get().and_then(|s| {
                        s.get(&ObjectRef::new_with(&obj.name_any(), ar.clone()).within(&ns))
                    });
                    let deleted = live.is_none_or(|o| o.metadata.uid.as_deref() != Some(&uid));
                    if wakes(&seen, &evaluator, is_quota, obj, &uid, deleted) {
                        q.add(ns);
                    }
                }
            };
            let store = informers.add_with(
                Api::<DynamicObject>::all_with(client.clone(), &ar),
                ar.clone(),
                on_change,
            );
            let _ = cell.set(store.clone());
            watched.insert((ar.group.clone(), ar.plural.clone()), Watched { ar, store });
        }
    }
    async move {
        for w in watched.values() {
            let _ = w.store.wait_until_ready().await;
        }
        let ctl = Arc::new(Controller {
            client,
            watched,
            discovered: Mutex::default(),
        });
        queue
            .work_concurrently("resourcequota", 2, move |ns| {
                let ctl = ctl.clone();
                async move { ctl.sync(&ns).await }
            })
            .await;
    }
}

/// Whether a change of `obj` calls for counting its namespace again.
fn wakes(
    seen: &Mutex<Seen>,
    evaluator: &Evaluator,
    is_quota: bool,
    obj: &DynamicObject,
    uid: &str,
    deleted: bool,
) -> bool {
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if deleted {
        seen.usage.remove(uid);
        seen.specs.remove(uid);
        seen.terminating.remove(uid);
        return true;
    }
    if is_quota {
        let doc = serde_json::to_value(obj).unwrap_or(Value::Null);
        let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
        let changed = seen.specs.insert(uid.to_owned(), spec.clone()) != Some(spec);
        return changed || usage::needs_sync(&doc);
    }
    if !matches!(
        evaluator,
        Evaluator::Pods | Evaluator::Claims | Evaluator::Services
    ) {
        return false;
    }
    let doc = serde_json::to_value(obj).unwrap_or(Value::Null);
    let now = evaluator.usage(&doc, Timestamp::now());
    let before = seen.usage.insert(uid.to_owned(), now.clone());
    // A pod that changed scope (upstream's update filter: `IsTerminating` differs).
    let scope_changed = matches!(evaluator, Evaluator::Pods) && {
        let terminating = doc
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|s| s >= 0);
        seen.terminating
            .insert(uid.to_owned(), terminating)
            .is_some_and(|was| was != terminating)
    };
    // A fall in any resource (new objects were charged by admission).
    scope_changed
        || before.is_some_and(|b| {
            b.iter()
                .any(|(k, v)| now.get(k).is_none_or(|n| n.milli < v.milli))
        })
}

impl Controller {
    /// The objects of `resource` in `ns`, from its cache, or listed when it has none.
    async fn objects(
        &self,
        resource: &Resource,
        ns: &str,
    ) -> Result<Option<Vec<Value>>, kube::Error> {
        let to_values = |objs: Vec<Arc<DynamicObject>>| -> Vec<Value> {
            objs.iter()
                .filter_map(|o| serde_json::to_value(&**o).ok())
                .collect()
        };
        if let Some(w) = self.watched.get(resource) {
            let objs = w
                .store
                .state_filter(|o| o.metadata.namespace.as_deref() == Some(ns));
            return Ok(Some(to_values(objs)));
        }
        let Some(ar) = self.discovered(resource).await else {
            return Ok(None);
        };
        let list = Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &ar)
            .list(&ListParams::default())
            .await?;
        Ok(Some(
            list.items
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect(),
        ))
    }

    /// A resource served now that was not when the controller started.
    async fn discovered(&self, resource: &Resource) -> Option<ApiResource> {
        {
            let d = self.discovered.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(ar) = d.1.get(resource) {
                return Some(ar.clone());
            }
            if d.0.is_some_and(|at| at.elapsed() < DISCOVERY_TTL) {
                return None;
            }
        }
        let found = match Discovery::new(self.client.clone()).run().await {
            Ok(discovery) => discovery
                .groups()
                .flat_map(|g| g.recommended_resources())
                .filter(|(ar, caps)| quotable(caps, ar))
                .map(|(ar, _)| ((ar.group.clone(), ar.plural.clone()), ar))
                .collect(),
            Err(err) => {
                tracing::debug!(%err, "resource quota controller: discovery");
                HashMap::new()
            }
        };
        let mut d = self.discovered.lock().unwrap_or_else(|p| p.into_inner());
        *d = (Some(Instant::now()), found);
        d.1.get(resource).cloned()
    }

    async fn sync(&self, ns: &str) -> Result<Option<Duration>, kube::Error> {
        let Some(watched) = self.watched.get(&(String::new(), "resourcequotas".into())) else {
            return Ok(None);
        };
        let quotas = watched
            .store
            .state_filter(|o| o.metadata.namespace.as_deref() == Some(ns));
        if quotas.is_empty() {
            return Ok(None);
        }
        let now = Timestamp::now();
        let mut objects: HashMap<Resource, Option<Vec<Value>>> = HashMap::new();
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &watched.ar);
        for q in &quotas {
            let doc = serde_json::to_value(&**q).map_err(kube::Error::SerdeError)?;
            let quota = Quota::from_object(&doc);
            for e in Evaluator::for_names(quota.spec_hard.keys()) {
                let (g, p) = e.resource();
                let key = (g.to_owned(), p.to_owned());
                if let Entry::Vacant(slot) = objects.entry(key) {
                    let found = self.objects(slot.key(), ns).await?;
                    slot.insert(found);
                }
            }
            let (hard, used) = usage::status(
                &quota,
                |e| {
                    let (g, p) = e.resource();
                    objects
                        .get(&(g.to_owned(), p.to_owned()))
                        .and_then(Option::as_deref)
                },
                now,
            );
            if !usage::dirty(&doc, &quota, &hard, &used) {
                continue;
            }
            let mut new = doc;
            new["status"] = json!({"hard": quota::to_json(&hard), "used": quota::to_json(&used)});
            let body: DynamicObject =
                serde_json::from_value(new).map_err(kube::Error::SerdeError)?;
            match api
                .replace_status(&q.name_any(), &PostParams::default(), &body)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        // A pod deleted with a grace period stops counting when it ends.
        let pods = objects.get(&(String::new(), "pods".into()));
        let grace = pods
            .and_then(Option::as_ref)
            .into_iter()
            .flatten()
            .filter_map(quota::grace_ends)
            .filter(|end| *end > now)
            .min()
            .and_then(|end| Duration::try_from(end.duration_since(now)).ok())
            .map(|d| d + Duration::from_secs(1));
        // Objects of a resource found after the start (a new CRD) have no informer to
        // tell of their deletion: counted again as often as discovery is refreshed,
        // as upstream's quota monitor starts watching them within that time.
        let resync = if objects.keys().any(|k| !self.watched.contains_key(k)) {
            DISCOVERY_TTL
        } else {
            RESYNC
        };
        Ok(Some(grace.map_or(resync, |g| g.min(resync))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(deadline: Option<i64>) -> DynamicObject {
        let mut doc = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"cpu": "500m"}}}]}});
        if let Some(d) = deadline {
            doc["spec"]["activeDeadlineSeconds"] = json!(d);
        }
        serde_json::from_value(doc).expect("a pod")
    }

    #[test]
    fn a_pod_that_changes_terminating_scope_wakes_its_namespace() {
        let seen = Mutex::new(Seen::default());
        let wake = |p: &DynamicObject| wakes(&seen, &Evaluator::Pods, false, p, "u1", false);
        assert!(!wake(&pod(None)), "first sight: admission charged it");
        assert!(!wake(&pod(None)), "nothing changed");
        assert!(wake(&pod(Some(3600))), "now Terminating");
        assert!(!wake(&pod(Some(60))), "still Terminating");
        assert!(wake(&pod(None)), "NotTerminating again");
    }
}
