//! The storage-object-in-use protection controllers (upstream's
//! `pkg/controller/volume/pvcprotection` and `pvprotection`): every claim carries the
//! `kubernetes.io/pvc-protection` finalizer and every volume
//! `kubernetes.io/pv-protection` (the apiserver adds them at create, as the
//! StorageObjectInUseProtection admission plugin does; these loops add them to
//! objects that lack them). A deleted claim keeps its finalizer while a scheduled pod
//! uses it — as upstream, until that pod object is gone, finished or not (a generic
//! ephemeral volume's claim only until its pod is shut down) — checked in the cache,
//! then confirmed with a live list; a deleted volume keeps its finalizer while it is
//! Bound.
//! [`start_pvc`] and [`start_pv`] run them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::{PV_PROTECTION, PVC_PROTECTION};
use crate::client::Informers;
use crate::controllers::queue::{Queue, key_of, split_key};

fn has_finalizer(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    f: &str,
) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

/// The finalizer is missing from a live object, or the object is being deleted with it.
fn needs_work(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, f: &str) -> bool {
    meta.deletion_timestamp.is_some() == has_finalizer(meta, f)
}

/// The claims a pod's volumes name: `persistentVolumeClaim` sources, and the
/// `<pod>-<volume>` claims of generic ephemeral volumes.
pub fn pod_claims(pod: &Pod) -> Vec<String> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                Some(c.claim_name.clone())
            } else {
                v.ephemeral
                    .as_ref()
                    .map(|_| format!("{pod_name}-{}", v.name))
            }
        })
        .collect()
}

/// Whether `pod` keeps `claim` in use (upstream's `podUsesPVC`): only a scheduled pod
/// does (the kubelet will not start a pod whose claim is being deleted); it names the
/// claim in a `persistentVolumeClaim` volume, or the claim is its generic ephemeral
/// volume's (`<pod>-<volume>`, owned by the pod) and the pod is not shut down.
pub fn pod_uses(pod: &Pod, claim: &PersistentVolumeClaim) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    if spec.node_name.as_deref().is_none_or(str::is_empty) {
        return false;
    }
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    // Kubelet done with it (deleted with no grace left) or force-deleted.
    let shut_down = pod.metadata.deletion_timestamp.is_some()
        && pod.metadata.deletion_grace_period_seconds == Some(0);
    let owned = claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == pod.metadata.uid.as_ref());
    spec.volumes.iter().flatten().any(|v| {
        v.persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == name)
            || (!shut_down
                && v.ephemeral.is_some()
                && format!("{pod_name}-{}", v.name) == name
                && owned)
    })
}

/// Adds the finalizer to a live object that lacks it, or removes it from a deleting
/// one when `release` says so; `None` when nothing is to change.
fn changed_finalizers(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    f: &str,
    release: bool,
) -> Option<Vec<String>> {
    let mut list = meta.finalizers.clone().unwrap_or_default();
    if meta.deletion_timestamp.is_none() {
        if list.iter().any(|x| x == f) {
            return None;
        }
        list.push(f.to_owned());
        return Some(list);
    }
    if !release || !list.iter().any(|x| x == f) {
        return None;
    }
    list.retain(|x| x != f);
    Some(list)
}

struct PvcController {
    client: Client,
    claims: Store<PersistentVolumeClaim>,
    pods: Store<Pod>,
}

/// Runs the `pvc-protection` controller.
pub fn start_pvc(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let claims = informers.add(Api::<PersistentVolumeClaim>::all(client.clone()), {
        let q = queue.clone();
        move |c: &PersistentVolumeClaim| {
            if needs_work(&c.metadata, PVC_PROTECTION) {
                q.add(key_of(&c.metadata));
            }
        }
    });
    let pods = informers.add(Api::<Pod>::all(client.clone()), {
        let q = queue.clone();
        move |p: &Pod| {
            let ns = p.metadata.namespace.as_deref().unwrap_or("default");
            for c in pod_claims(p) {
                q.add(format!("{ns}/{c}"));
            }
        }
    });
    async move {
        let _ = claims.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let ctl = Arc::new(PvcController {
            client,
            claims,
            pods,
        });
        queue
            .work("pvc-protection", move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

impl PvcController {
    async fn in_use(&self, claim: &PersistentVolumeClaim) -> Result<bool, kube::Error> {
        let ns = claim.metadata.namespace.as_deref().unwrap_or("default");
        let cached = self
            .pods
            .state()
            .iter()
            .any(|p| p.metadata.namespace.as_deref() == Some(ns) && pod_uses(p, claim));
        if cached {
            return Ok(true);
        }
        // The cache may lag a pod just created: ask the apiserver before letting go.
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let live = api.list(&ListParams::default()).await?;
        Ok(live.items.iter().any(|p| pod_uses(p, claim)))
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(claim) = self.claims.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        if !needs_work(&claim.metadata, PVC_PROTECTION) {
            return Ok(None);
        }
        let release = claim.metadata.deletion_timestamp.is_some() && !self.in_use(&claim).await?;
        let Some(finalizers) = changed_finalizers(&claim.metadata, PVC_PROTECTION, release) else {
            return Ok(None);
        };
        let mut new = (*claim).clone();
        new.metadata.finalizers = Some(finalizers);
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        match api.replace(name, &PostParams::default(), &new).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Runs the `pv-protection` controller.
pub fn start_pv(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let volumes = informers.add(Api::<PersistentVolume>::all(client.clone()), {
        let q = queue.clone();
        move |v: &PersistentVolume| {
            if needs_work(&v.metadata, PV_PROTECTION) {
                q.add(key_of(&v.metadata));
            }
        }
    });
    async move {
        let _ = volumes.wait_until_ready().await;
        queue
            .work("pv-protection", move |name| {
                let (client, volumes) = (client.clone(), volumes.clone());
                async move {
                    let Some(volume) = volumes.get(&ObjectRef::new(&name)) else {
                        return Ok(None);
                    };
                    let bound =
                        volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
                    let Some(finalizers) =
                        changed_finalizers(&volume.metadata, PV_PROTECTION, !bound)
                    else {
                        return Ok(None);
                    };
                    let mut new = (*volume).clone();
                    new.metadata.finalizers = Some(finalizers);
                    let api: Api<PersistentVolume> = Api::all(client);
                    match api.replace(&name, &PostParams::default(), &new).await {
                        Ok(_) => Ok(None),
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(node: Option<&str>, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "pod-uid"},
            "spec": {"nodeName": node, "containers": [], "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
            ]},
            "status": {"phase": phase},
        }))
        .expect("pod")
    }

    fn claim(name: &str, owner: Option<&str>) -> PersistentVolumeClaim {
        let owners: Vec<_> = owner
            .into_iter()
            .map(|uid| json!({"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": uid, "controller": true}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
            "ownerReferences": owners}}))
        .expect("claim")
    }

    #[test]
    fn scheduled_pods_use_their_claims_until_gone() {
        let running = pod(Some("n1"), "Running");
        assert_eq!(pod_claims(&running), ["data", "p-scratch"]);
        let data = claim("data", None);
        assert!(pod_uses(&running, &data));
        assert!(!pod_uses(&running, &claim("other", None)));
        assert!(!pod_uses(&pod(None, "Pending"), &data));
        // A finished pod still holds its claim while it exists (upstream's podUsesPVC).
        assert!(pod_uses(&pod(Some("n1"), "Succeeded"), &data));
        // An ephemeral volume's claim: only the pod's own, until the pod is shut down.
        let scratch = claim("p-scratch", Some("pod-uid"));
        assert!(pod_uses(&running, &scratch));
        assert!(!pod_uses(
            &running,
            &claim("p-scratch", Some("another-pod"))
        ));
        let mut shut = running.clone();
        shut.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        shut.metadata.deletion_grace_period_seconds = Some(0);
        assert!(!pod_uses(&shut, &scratch));
        assert!(pod_uses(&shut, &data));
    }

    #[test]
    fn finalizers_are_added_to_live_objects_and_released_when_asked() {
        let mut meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta::default();
        assert_eq!(
            changed_finalizers(&meta, PVC_PROTECTION, false),
            Some(vec![PVC_PROTECTION.to_owned()])
        );
        meta.finalizers = Some(vec!["x".into(), PVC_PROTECTION.into()]);
        assert_eq!(changed_finalizers(&meta, PVC_PROTECTION, true), None);
        meta.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        assert_eq!(changed_finalizers(&meta, PVC_PROTECTION, false), None);
        assert_eq!(
            changed_finalizers(&meta, PVC_PROTECTION, true),
            Some(vec!["x".to_owned()])
        );
    }
}
