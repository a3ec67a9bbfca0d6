//! The garbage collector: ownerReferences across every resource the apiserver serves
//! (found through discovery when it starts). A dependent whose owners are all gone is
//! deleted; one that keeps a live owner loses only its dangling references. An owner
//! being deleted in the foreground (`foregroundDeletion` finalizer) has its dependents
//! deleted — themselves in the foreground when they block it — and keeps its finalizer
//! until no blocking dependent is left; an owner deleted with `orphan` has its
//! references removed from every dependent before its finalizer goes.
//!
//! An owner missing from the caches is looked up in the apiserver before anything is
//! deleted, so a cache that lags never costs a dependent its life.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::queue::Queue;
use crate::client::Informers;

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

struct Resource {
    ar: ApiResource,
    namespaced: bool,
    store: Store<DynamicObject>,
}

struct Gc {
    client: Client,
    resources: Vec<Resource>,
    by_kind: HashMap<(String, String), usize>,
    /// Owner uid → queue keys of objects that named it as an owner.
    dependents: Arc<Mutex<HashMap<String, HashSet<String>>>>,
    queue: Arc<Queue>,
}

/// `index|namespace|name|uid`.
fn key(index: usize, obj: &DynamicObject) -> String {
    format!(
        "{index}|{}|{}|{}",
        obj.metadata.namespace.as_deref().unwrap_or_default(),
        obj.name_any(),
        obj.metadata.uid.as_deref().unwrap_or_default()
    )
}

pub async fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let discovery = loop {
        match Discovery::new(client.clone()).run().await {
            Ok(d) => break d,
            Err(err) => {
                tracing::debug!(%err, "garbage collector: discovery");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let queue = Queue::new();
    let dependents: Arc<Mutex<HashMap<String, HashSet<String>>>> = Arc::default();
    let mut resources = Vec::new();
    let mut by_kind = HashMap::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            let ops = [verbs::LIST, verbs::WATCH, verbs::DELETE, verbs::PATCH];
            if !ops.iter().all(|v| caps.supports_operation(v)) || ar.plural == "events" {
                continue;
            }
            let index = resources.len();
            let q = queue.clone();
            let deps = dependents.clone();
            let store = informers.add_with(
                Api::<DynamicObject>::all_with(client.clone(), &ar),
                ar.clone(),
                move |obj: &DynamicObject| {
                    let k = key(index, obj);
                    for r in obj.metadata.owner_references.iter().flatten() {
                        deps.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(r.uid.clone())
                            .or_default()
                            .insert(k.clone());
                    }
                    q.add(k);
                },
            );
            by_kind.insert((ar.api_version.clone(), ar.kind.clone()), index);
            resources.push(Resource {
                ar,
                namespaced: caps.scope == Scope::Namespaced,
                store,
            });
        }
    }
    async move {
        for r in &resources {
            let _ = r.store.wait_until_ready().await;
        }
        let gc = Arc::new(Gc {
            client,
            resources,
            by_kind,
            dependents,
            queue: queue.clone(),
        });
        queue
            .work("garbagecollector", move |key| {
                let gc = gc.clone();
                async move { gc.sync(&key).await }
            })
            .await;
    }
}

enum Owner {
    Absent,
    Present(Box<DynamicObject>),
}

impl Gc {
    fn parse<'a>(&self, key: &'a str) -> Option<(usize, &'a str, &'a str, &'a str)> {
        let mut it = key.splitn(4, '|');
        let index = it.next()?.parse().ok()?;
        Some((index, it.next()?, it.next()?, it.next()?))
    }

    fn cached(&self, index: usize, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let r = self.resources.get(index)?;
        let mut oref = ObjectRef::new_with(name, r.ar.clone());
        if r.namespaced {
            oref = oref.within(ns);
        }
        r.store.get(&oref)
    }

    fn api(&self, index: usize, ns: &str) -> Option<Api<DynamicObject>> {
        let r = self.resources.get(index)?;
        Some(if r.namespaced {
            Api::namespaced_with(self.client.clone(), ns, &r.ar)
        } else {
            Api::all_with(self.client.clone(), &r.ar)
        })
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let Some((index, ns, name, uid)) = self.parse(key) else {
            return Ok(None);
        };
        let obj = self
            .cached(index, ns, name)
            .filter(|o| o.metadata.uid.as_deref() == Some(uid));
        let Some(obj) = obj else {
            // Gone: its dependents may now be dangling.
            let deps = self
                .dependents
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(uid);
            for d in deps.into_iter().flatten() {
                self.queue.add(d);
            }
            return Ok(None);
        };
        let mut again = None;
        if obj.metadata.deletion_timestamp.is_some() {
            let finalizers = obj.finalizers();
            if finalizers.iter().any(|f| f == ORPHAN) {
                self.orphan(index, ns, &obj).await?;
            } else if finalizers.iter().any(|f| f == FOREGROUND) {
                again = self.foreground(index, ns, &obj).await?;
            }
        }
        if obj
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|r| !r.is_empty())
        {
            self.check_owners(index, ns, &obj).await?;
        }
        Ok(again)
    }

    /// The live dependents of `owner` (cached objects that still name its uid).
    fn dependents_of(&self, owner_uid: &str) -> Vec<(usize, Arc<DynamicObject>)> {
        let keys: Vec<String> = self
            .dependents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(owner_uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        keys.iter()
            .filter_map(|k| {
                let (index, ns, name, uid) = self.parse(k)?;
                let o = self
                    .cached(index, ns, name)
                    .filter(|o| o.metadata.uid.as_deref() == Some(uid))?;
                o.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == owner_uid)
                    .then_some((index, o))
            })
            .collect()
    }

    async fn remove_finalizer(
        &self,
        index: usize,
        ns: &str,
        obj: &DynamicObject,
        finalizer: &str,
    ) -> Result<(), kube::Error> {
        let Some(api) = self.api(index, ns) else {
            return Ok(());
        };
        let rest: Vec<&String> = obj
            .finalizers()
            .iter()
            .filter(|f| *f != finalizer)
            .collect();
        let patch = json!({"metadata": {"finalizers": rest,
            "resourceVersion": obj.metadata.resource_version}});
        match api
            .patch(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn drop_refs(
        &self,
        index: usize,
        ns: &str,
        obj: &DynamicObject,
        uids: &[String],
    ) -> Result<(), kube::Error> {
        let Some(api) = self.api(index, ns) else {
            return Ok(());
        };
        let refs: Vec<_> = uids
            .iter()
            .map(|u| json!({"$patch": "delete", "uid": u}))
            .collect();
        let patch = json!({"metadata": {"ownerReferences": refs, "uid": obj.metadata.uid}});
        match api
            .patch(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete(
        &self,
        index: usize,
        ns: &str,
        obj: &DynamicObject,
        foreground: bool,
    ) -> Result<(), kube::Error> {
        let Some(api) = self.api(index, ns) else {
            return Ok(());
        };
        let mut dp = if foreground {
            DeleteParams::foreground()
        } else {
            DeleteParams::background()
        };
        dp.preconditions = Some(Preconditions {
            uid: obj.metadata.uid.clone(),
            resource_version: None,
        });
        tracing::debug!(kind = %self.resources[index].ar.kind, name = %obj.name_any(), %ns, foreground, "garbage collecting");
        match api.delete(&obj.name_any(), &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn orphan(
        &self,
        index: usize,
        ns: &str,
        owner: &DynamicObject,
    ) -> Result<(), kube::Error> {
        let uid = owner.metadata.uid.clone().unwrap_or_default();
        for (i, dep) in self.dependents_of(&uid) {
            let dns = dep.metadata.namespace.clone().unwrap_or_default();
            self.drop_refs(i, &dns, &dep, std::slice::from_ref(&uid))
                .await?;
        }
        self.remove_finalizer(index, ns, owner, ORPHAN).await
    }

    async fn foreground(
        &self,
        index: usize,
        ns: &str,
        owner: &DynamicObject,
    ) -> Result<Option<Duration>, kube::Error> {
        let uid = owner.metadata.uid.clone().unwrap_or_default();
        let deps = self.dependents_of(&uid);
        let blocking = deps.iter().any(|(_, d)| {
            d.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
        });
        for (i, dep) in &deps {
            if dep.metadata.deletion_timestamp.is_none() {
                self.queue.add(key(*i, dep));
            }
        }
        if blocking {
            return Ok(Some(Duration::from_millis(500)));
        }
        self.remove_finalizer(index, ns, owner, FOREGROUND).await?;
        Ok(None)
    }

    async fn lookup(
        &self,
        ns: &str,
        r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ) -> Result<Option<Owner>, kube::Error> {
        let Some(&index) = self.by_kind.get(&(r.api_version.clone(), r.kind.clone())) else {
            // A kind this collector does not know: never guess it is gone.
            return Ok(None);
        };
        let found = match self.cached(index, ns, &r.name) {
            Some(o) => Some((*o).clone()),
            None => match self.api(index, ns) {
                Some(api) => api.get_opt(&r.name).await?,
                None => None,
            },
        };
        Ok(Some(match found {
            Some(o) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                Owner::Present(Box::new(o))
            }
            _ => Owner::Absent,
        }))
    }

    async fn check_owners(
        &self,
        index: usize,
        ns: &str,
        obj: &DynamicObject,
    ) -> Result<(), kube::Error> {
        let mut dangling = Vec::new();
        let mut solid = false;
        let mut waiting_blocked = false;
        let mut waiting = false;
        for r in obj.metadata.owner_references.iter().flatten() {
            match self.lookup(ns, r).await? {
                None => solid = true,
                Some(Owner::Absent) => dangling.push(r.uid.clone()),
                Some(Owner::Present(o)) => {
                    if o.metadata.deletion_timestamp.is_some()
                        && o.finalizers().iter().any(|f| f == FOREGROUND)
                    {
                        waiting = true;
                        waiting_blocked |= r.block_owner_deletion == Some(true);
                    } else {
                        solid = true;
                    }
                }
            }
        }
        if solid {
            if !dangling.is_empty() {
                self.drop_refs(index, ns, obj, &dangling).await?;
            }
            return Ok(());
        }
        if obj.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        if waiting {
            return self.delete(index, ns, obj, waiting_blocked).await;
        }
        if !dangling.is_empty() {
            return self.delete(index, ns, obj, false).await;
        }
        Ok(())
    }
}
