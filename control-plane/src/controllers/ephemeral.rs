//! The ephemeral volume controller (kube-controller-manager's `ephemeral-volume-controller`,
//! `pkg/controller/volume/ephemeral`): for each generic ephemeral volume of a pod it
//! creates the PersistentVolumeClaim `<pod>-<volume>` from the volume's
//! `volumeClaimTemplate` (its labels, annotations and spec), owned by the pod
//! (`controller` and `blockOwnerDeletion`), so that the garbage collector deletes the
//! claim with the pod. A claim of that name the pod does not own is left alone and
//! reported (a `FailedBinding` event); the scheduler keeps such a pod unscheduled.
//! [`start`] runs it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::queue::{Queue, key_of, split_key};
use crate::client::{Informers, Involved, record_event};
use crate::scheduler::volumes::claim_is_for_pod;

/// The component the controller's Events carry (upstream's recorder).
pub const COMPONENT: &str = "ephemeral_volume";
/// How soon a pod whose claim name is taken is looked at again.
const RECHECK: Duration = Duration::from_secs(30);

fn has_ephemeral(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.volumes.iter().flatten().any(|v| v.ephemeral.is_some()))
}

/// The claim upstream makes for a pod's generic ephemeral volume.
pub fn claim_for(pod: &Pod, volume: &Volume) -> Option<PersistentVolumeClaim> {
    let template = volume.ephemeral.as_ref()?.volume_claim_template.as_ref()?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let meta = template.metadata.as_ref();
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(format!("{pod_name}-{}", volume.name)),
            namespace: pod.metadata.namespace.clone(),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod_name,
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            annotations: meta.and_then(|m| m.annotations.clone()),
            labels: meta.and_then(|m| m.labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(template.spec.clone()),
        status: None,
    })
}

struct Controller {
    client: Client,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
}

pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let pods = informers.add(Api::<Pod>::all(client.clone()), {
        let q = queue.clone();
        move |pod: &Pod| {
            if has_ephemeral(pod) {
                q.add(key_of(&pod.metadata));
            }
        }
    });
    // A claim deleted or changed: its owning pod may need it again.
    let claims = informers.add(Api::<PersistentVolumeClaim>::all(client.clone()), {
        let q = queue.clone();
        move |c: &PersistentVolumeClaim| {
            let ns = c.metadata.namespace.as_deref().unwrap_or_default();
            for r in c.metadata.owner_references.iter().flatten() {
                if r.kind == "Pod" && r.api_version == "v1" {
                    q.add(format!("{ns}/{}", r.name));
                }
            }
        }
    });
    async move {
        let _ = pods.wait_until_ready().await;
        let _ = claims.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            client,
            pods,
            claims,
        });
        queue
            .work("ephemeral-volume", move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

impl Controller {
    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(pod) = self.pods.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let mut again = None;
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(claim) = claim_for(&pod, volume) else {
                continue;
            };
            let claim_name = claim.metadata.name.clone().unwrap_or_default();
            if let Some(existing) = self.claims.get(&ObjectRef::new(&claim_name).within(ns)) {
                if let Err(conflict) = claim_is_for_pod(&pod, &existing) {
                    self.warn(&pod, &volume.name, &conflict).await;
                    again = Some(RECHECK);
                }
                continue;
            }
            let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
            match api.create(&PostParams::default(), &claim).await {
                Ok(_) => {
                    tracing::debug!(pod = %key, claim = %claim_name, "ephemeral volume claim created");
                }
                // The cache has not seen it yet: the next pass checks its owner.
                Err(kube::Error::Api(s)) if s.code == 409 => again = Some(Duration::from_secs(1)),
                Err(err) => {
                    let message = format!("create PVC {claim_name}: {err}");
                    self.warn(&pod, &volume.name, &message).await;
                    return Err(err);
                }
            }
        }
        Ok(again)
    }

    /// Upstream's `FailedBinding` event about the pod.
    async fn warn(&self, pod: &Pod, volume: &str, err: &str) {
        record_event(
            &self.client,
            COMPONENT,
            &Involved::of(pod),
            "Warning",
            "FailedBinding",
            &format!("ephemeral volume {volume}: {err}"),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_comes_from_the_template_and_is_owned_by_the_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c"}], "volumes": [{"name": "scratch",
                "ephemeral": {"volumeClaimTemplate": {
                    "metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                        "resources": {"requests": {"storage": "1Gi"}}}}}}]},
        }))
        .expect("pod");
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let claim = claim_for(&pod, &volumes[0]).expect("a claim");
        let json = serde_json::to_value(&claim).expect("json");
        assert_eq!(json["metadata"]["name"], "web-scratch");
        assert_eq!(json["metadata"]["namespace"], "ns");
        assert_eq!(json["metadata"]["labels"]["app"], "web");
        assert_eq!(json["metadata"]["annotations"]["a"], "b");
        assert_eq!(
            json["metadata"]["ownerReferences"],
            serde_json::json!([{"apiVersion": "v1", "kind": "Pod", "name": "web",
                "uid": "u1", "controller": true, "blockOwnerDeletion": true}])
        );
        assert_eq!(json["spec"]["storageClassName"], "local");
        assert!(claim_is_for_pod(&pod, &claim).is_ok());
        let mut foreign = claim.clone();
        foreign.metadata.owner_references = None;
        assert_eq!(
            claim_is_for_pod(&pod, &foreign),
            Err("PVC ns/web-scratch was not created for pod ns/web (pod is not owner)".to_owned())
        );
    }
}
