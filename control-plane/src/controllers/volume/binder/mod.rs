//! The PersistentVolume binder (`persistentvolume-binder`; upstream's
//! `pkg/controller/volume/persistentvolume/pv_controller.go`): two level-triggered
//! loops, one over claims and one over volumes, as upstream's `syncClaim` and
//! `syncVolume`.
//!
//! - A claim without `pv.kubernetes.io/bind-completed` is bound to the volume it
//!   names, or to the best match ([`super::matching`]); with none it stays Pending —
//!   with a `WaitForFirstConsumer` event while its class delays binding and no node is
//!   selected, handed to its class's provisioner (the `storage-provisioner`
//!   annotation and an `ExternalProvisioning` event) when it has a class, or with a
//!   `FailedBinding` event when it has none. Pending claims are looked at again every
//!   15 s (`--pvclaimbinder-sync-period`).
//! - Binding writes the volume's `claimRef` first, then its phase Bound, then the
//!   claim's `volumeName` and annotations, then its phase Bound with the volume's
//!   capacity and access modes: each step is idempotent, so a failure anywhere is
//!   finished by the next sync.
//! - A bound claim whose volume is gone or bound elsewhere is Lost.
//! - A volume whose claim is gone is Released and reclaimed by its policy: Retain
//!   keeps it, Delete deletes it (a provisioned volume by its provisioner), anything else
//!   fails it.

mod reclaim;
mod volumes;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::matching::{bound_to, check_satisfies, find_best_match};
use super::protection::pod_claims;
use super::{
    BETA_STORAGE_PROVISIONER, BIND_COMPLETED, BOUND_BY_CONTROLLER, COMPONENT, SELECTED_NODE,
    STORAGE_PROVISIONER, annotation, claim_class,
};
use crate::client::{Informers, Involved, record_event};
use crate::controllers::queue::{Queue, key_of, split_key};

/// How many claims (and, separately, volumes) are synced at once.
const CONCURRENT_SYNCS: usize = 8;

/// How often unbound claims are looked at again (`--pvclaimbinder-sync-period`).
pub const RESYNC: Duration = Duration::from_secs(15);

struct Controller {
    client: Client,
    volumes: Store<PersistentVolume>,
    claims: Store<PersistentVolumeClaim>,
    pods: Store<Pod>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    claim_queue: Arc<Queue>,
}

fn has_annotation(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> bool {
    annotation(meta, key).is_some()
}

fn set_annotation(
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
    value: &str,
) {
    meta.annotations
        .get_or_insert_default()
        .insert(key.into(), value.into());
}

fn claim_phase(claim: &PersistentVolumeClaim) -> &str {
    claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn volume_phase(volume: &PersistentVolume) -> &str {
    volume
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn volume_name(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or_default()
}

fn claim_ref(volume: &PersistentVolume) -> Option<&ObjectReference> {
    volume.spec.as_ref()?.claim_ref.as_ref()
}

fn ref_key(r: &ObjectReference) -> String {
    format!(
        "{}/{}",
        r.namespace.as_deref().unwrap_or_default(),
        r.name.as_deref().unwrap_or_default()
    )
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Runs the binder.
pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let claim_queue = Queue::new();
    let volume_queue = Queue::new();
    let claims = informers.add(Api::<PersistentVolumeClaim>::all(client.clone()), {
        let (cq, vq) = (claim_queue.clone(), volume_queue.clone());
        move |claim: &PersistentVolumeClaim| {
            cq.add(key_of(&claim.metadata));
            // A deleted or rebound claim changes its volume's state.
            let v = volume_name(claim);
            if !v.is_empty() {
                vq.add(v);
            }
        }
    });
    let volumes = informers.add(Api::<PersistentVolume>::all(client.clone()), {
        let (cq, vq, claims) = (claim_queue.clone(), volume_queue.clone(), claims.clone());
        move |volume: &PersistentVolume| {
            vq.add(key_of(&volume.metadata));
            match claim_ref(volume) {
                Some(r) => cq.add(ref_key(r)),
                // A volume that may be free: every unbound claim may want it.
                None => {
                    for c in claims.state() {
                        if !has_annotation(&c.metadata, BIND_COMPLETED) {
                            cq.add(key_of(&c.metadata));
                        }
                    }
                }
            }
        }
    });
    // A new or changed class (a new default, say) may settle unbound claims.
    let classes = informers.add(Api::<StorageClass>::all(client.clone()), {
        let (cq, claims) = (claim_queue.clone(), claims.clone());
        move |_: &StorageClass| {
            for c in claims.state() {
                if !has_annotation(&c.metadata, BIND_COMPLETED) {
                    cq.add(key_of(&c.metadata));
                }
            }
        }
    });
    let nodes = informers.add(Api::<Node>::all(client.clone()), |_: &Node| {});
    // An unscheduled pod using a claim that waits for its first consumer changes the
    // claim's event.
    let pods = informers.add(Api::<Pod>::all(client.clone()), {
        let cq = claim_queue.clone();
        move |p: &Pod| {
            if p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
                return;
            }
            let ns = p.metadata.namespace.as_deref().unwrap_or("default");
            for c in pod_claims(p) {
                cq.add(format!("{ns}/{c}"));
            }
        }
    });
    async move {
        let _ = claims.wait_until_ready().await;
        let _ = volumes.wait_until_ready().await;
        let _ = classes.wait_until_ready().await;
        let _ = nodes.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            client,
            volumes,
            claims,
            pods,
            classes,
            nodes,
            claim_queue: claim_queue.clone(),
        });
        // Claims and volumes are synced CONCURRENT_SYNCS at a time each (upstream's
        // binder has one worker per loop): every step is a compare-and-swap write, so
        // two syncs racing for one volume cost a retry, not a double binding, and a
        // burst of claims does not wait on each other's writes.
        let claim_loop =
            claim_queue.work_concurrently("persistentvolume-binder", CONCURRENT_SYNCS, {
                let ctl = ctl.clone();
                move |key| {
                    let ctl = ctl.clone();
                    async move { ctl.sync_claim(&key).await }
                }
            });
        let volume_loop = volume_queue.work_concurrently(
            "persistentvolume-binder",
            CONCURRENT_SYNCS,
            move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync_volume(&key).await }
            },
        );
        futures_util::future::join(claim_loop, volume_loop).await;
    }
}

impl Controller {
    async fn claim_event(
        &self,
        claim: &PersistentVolumeClaim,
        type_: &str,
        reason: &str,
        msg: &str,
    ) {
        record_event(
            &self.client,
            COMPONENT,
            &Involved::of(claim),
            type_,
            reason,
            msg,
        )
        .await;
    }

    async fn volume_event(&self, volume: &PersistentVolume, type_: &str, reason: &str, msg: &str) {
        record_event(
            &self.client,
            COMPONENT,
            &Involved::of(volume),
            type_,
            reason,
            msg,
        )
        .await;
    }

    fn claim_api(&self, claim: &PersistentVolumeClaim) -> Api<PersistentVolumeClaim> {
        Api::namespaced(
            self.client.clone(),
            claim.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    fn volume_api(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    // ---- claims -------------------------------------------------------------------

    async fn sync_claim(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(claim) = self.claims.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        if has_annotation(&claim.metadata, BIND_COMPLETED) {
            self.sync_bound_claim(&claim).await
        } else {
            self.sync_unbound_claim(&claim).await
        }
    }

    /// Whether the claim's class delays binding until a pod is scheduled
    /// (`IsDelayBindingMode`); a missing class does not.
    fn delays_binding(&self, claim: &PersistentVolumeClaim) -> bool {
        let class = claim_class(claim);
        !class.is_empty()
            && self
                .classes
                .get(&ObjectRef::new(class))
                .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"))
    }

    async fn sync_unbound_claim(
        &self,
        claim: &PersistentVolumeClaim,
    ) -> Result<Option<Duration>, kube::Error> {
        let wanted = volume_name(claim);
        if wanted.is_empty() {
            let delay = self.delays_binding(claim);
            let selected = annotation(&claim.metadata, SELECTED_NODE);
            let node = selected.and_then(|n| self.nodes.get(&ObjectRef::new(n)));
            let volumes = self.volumes.state();
            if let Some(volume) = find_best_match(claim, &volumes, delay, node.as_deref()) {
                self.bind(volume, claim).await?;
                return Ok(None);
            }
            // Retroactive default class: a claim made before any default existed
            // gets the one there is now, and is looked at again as of that class.
            if self.assign_default_class(claim).await? {
                return Ok(None);
            }
            if delay && selected.is_none() {
                self.wait_for_consumer_event(claim).await;
            } else if !claim_class(claim).is_empty() {
                self.provision(claim).await?;
                return Ok(Some(RESYNC));
            } else {
                self.claim_event(
                    claim,
                    "Normal",
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
            }
            self.update_claim_status(claim, "Pending", None).await?;
            return Ok(Some(RESYNC));
        }
        // The user asked for a particular volume.
        let Some(volume) = self.volumes.get(&ObjectRef::new(wanted)) else {
            self.update_claim_status(claim, "Pending", None).await?;
            return Ok(Some(RESYNC));
        };
        if claim_ref(&volume).is_none() {
            if let Err(why) = check_satisfies(&volume, claim) {
                self.claim_event(
                    claim,
                    "Warning",
                    "VolumeMismatch",
                    &format!("Cannot bind to requested volume \"{wanted}\": {why}"),
                )
                .await;
                self.update_claim_status(claim, "Pending", None).await?;
                return Ok(Some(RESYNC));
            }
            self.bind(&volume, claim).await?;
        } else if bound_to(&volume, claim) {
            self.bind(&volume, claim).await?;
        } else if !has_annotation(&claim.metadata, BOUND_BY_CONTROLLER) {
            // Claimed by someone else: the user's choice stands; wait.
            self.claim_event(
                claim,
                "Warning",
                "FailedBinding",
                &format!("volume \"{wanted}\" already bound to a different claim."),
            )
            .await;
            self.update_claim_status(claim, "Pending", None).await?;
            return Ok(Some(RESYNC));
        } else {
            self.claim_event(
                claim,
                "Warning",
                "FailedBinding",
                &format!("volume \"{wanted}\" already bound to a different claim."),
            )
            .await;
            tracing::warn!(
                claim = %key_of(&claim.metadata),
                volume = wanted,
                "invalid binding: the volume is already claimed by another claim"
            );
            return Ok(Some(RESYNC));
        }
        Ok(None)
    }

    async fn sync_bound_claim(
        &self,
        claim: &PersistentVolumeClaim,
    ) -> Result<Option<Duration>, kube::Error> {
        let wanted = volume_name(claim);
        if wanted.is_empty() {
            self.claim_lost(
                claim,
                "ClaimLost",
                "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
            )
            .await?;
            return Ok(None);
        }
        let Some(volume) = self.volumes.get(&ObjectRef::new(wanted)) else {
            self.claim_lost(
                claim,
                "ClaimLost",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
            )
            .await?;
            return Ok(None);
        };
        match claim_ref(&volume) {
            None => self.bind(&volume, claim).await?,
            Some(r) if r.uid.is_some() && r.uid == claim.metadata.uid => {
                self.bind(&volume, claim).await?
            }
            Some(_) => {
                self.claim_lost(
                    claim,
                    "ClaimMisbound",
                    "Two claims are bound to the same volume, this one is bound incorrectly",
                )
                .await?
            }
        }
        Ok(None)
    }

    async fn claim_lost(
        &self,
        claim: &PersistentVolumeClaim,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        if claim_phase(claim) == "Lost" {
            return Ok(());
        }
        self.update_claim_status(claim, "Lost", None).await?;
        self.claim_event(claim, "Warning", reason, message).await;
        Ok(())
    }

    /// Sets the default class on a claim with no class at all (an explicit `""`
    /// means none): upstream's `assignDefaultStorageClass`. Whether it did.
    async fn assign_default_class(
        &self,
        claim: &PersistentVolumeClaim,
    ) -> Result<bool, kube::Error> {
        let unset = claim
            .spec
            .as_ref()
            .is_none_or(|s| s.storage_class_name.is_none())
            && !has_annotation(&claim.metadata, super::BETA_STORAGE_CLASS);
        if !unset {
            return Ok(false);
        }
        let default = self
            .classes
            .state()
            .into_iter()
            .filter(|c| {
                let a = |k: &str| annotation(&c.metadata, k) == Some("true");
                a("storageclass.kubernetes.io/is-default-class")
                    || a("storageclass.beta.kubernetes.io/is-default-class")
            })
            .max_by(|a, b| {
                a.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
                    .then_with(|| b.metadata.name.cmp(&a.metadata.name))
            });
        let Some(class) = default.and_then(|c| c.metadata.name.clone()) else {
            return Ok(false);
        };
        let mut new = claim.clone();
        new.spec.get_or_insert_default().storage_class_name = Some(class);
        let name = claim.metadata.name.as_deref().unwrap_or_default();
        self.claim_api(claim)
            .replace(name, &PostParams::default(), &new)
            .await?;
        Ok(true)
    }

    /// Why a claim whose class delays binding is still waiting: no pod uses it yet,
    /// or the pods that do are not scheduled (`emitEventForUnboundDelayBindingClaim`).
    async fn wait_for_consumer_event(&self, claim: &PersistentVolumeClaim) {
        let name = claim.metadata.name.as_deref().unwrap_or_default();
        let waiting: Vec<String> = self
            .pods
            .state()
            .iter()
            .filter(|p| p.metadata.namespace == claim.metadata.namespace)
            .filter(|p| {
                let unscheduled = p
                    .spec
                    .as_ref()
                    .is_none_or(|s| s.node_name.as_deref().is_none_or(str::is_empty));
                let terminated = matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                unscheduled && !terminated && pod_claims(p).iter().any(|c| c == name)
            })
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let (reason, message) = match waiting.as_slice() {
            [] => (
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding".to_owned(),
            ),
            [one] => (
                "WaitForPodScheduled",
                format!("waiting for pod {one} to be scheduled"),
            ),
            many => (
                "WaitForPodScheduled",
                format!("waiting for pods {} to be scheduled", many.join(",")),
            ),
        };
        self.claim_event(claim, "Normal", reason, &message).await;
    }

    /// Hands the claim to its class's provisioner (upstream's
    /// `provisionClaimOperationExternal`): every provisioner is external to the binder.
    async fn provision(&self, claim: &PersistentVolumeClaim) -> Result<(), kube::Error> {
        let class_name = claim_class(claim);
        let Some(class) = self.classes.get(&ObjectRef::new(class_name)) else {
            self.claim_event(
                claim,
                "Warning",
                "ProvisioningFailed",
                &format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
            )
            .await;
            return Ok(());
        };
        let provisioner = class.provisioner.as_str();
        if provisioner.starts_with("kubernetes.io/") {
            // In-tree plugins (`kubernetes.io/no-provisioner` among them) are not here.
            self.claim_event(
                claim,
                "Warning",
                "ProvisioningFailed",
                &format!("no volume plugin matched name: {provisioner}"),
            )
            .await;
            return Ok(());
        }
        if annotation(&claim.metadata, STORAGE_PROVISIONER) != Some(provisioner)
            || annotation(&claim.metadata, BETA_STORAGE_PROVISIONER) != Some(provisioner)
        {
            let mut new = claim.clone();
            set_annotation(&mut new.metadata, STORAGE_PROVISIONER, provisioner);
            set_annotation(&mut new.metadata, BETA_STORAGE_PROVISIONER, provisioner);
            let name = claim.metadata.name.as_deref().unwrap_or_default();
            self.claim_api(claim)
                .replace(name, &PostParams::default(), &new)
                .await?;
        }
        self.claim_event(
            claim,
            "Normal",
            "ExternalProvisioning",
            &format!(
                "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
            ),
        )
        .await;
        Ok(())
    }

    /// Binds both ways, each step only if needed (upstream's `bind`).
    async fn bind(
        &self,
        volume: &PersistentVolume,
        claim: &PersistentVolumeClaim,
    ) -> Result<(), kube::Error> {
        tracing::debug!(claim = %key_of(&claim.metadata), volume = ?volume.metadata.name, "binding");
        let volume = self.bind_volume_to_claim(volume, claim).await?;
        let volume = self.update_volume_phase(&volume, "Bound", None).await?;
        let claim = self.bind_claim_to_volume(claim, &volume).await?;
        self.update_claim_status(&claim, "Bound", Some(&volume))
            .await?;
        Ok(())
    }

    async fn bind_volume_to_claim(
        &self,
        volume: &PersistentVolume,
        claim: &PersistentVolumeClaim,
    ) -> Result<PersistentVolume, kube::Error> {
        let set_by_controller = !bound_to(volume, claim);
        let mut new = volume.clone();
        let mut dirty = false;
        let same = claim_ref(volume).is_some_and(|r| {
            r.name == claim.metadata.name
                && r.namespace == claim.metadata.namespace
                && r.uid == claim.metadata.uid
        });
        if !same {
            new.spec.get_or_insert_default().claim_ref = Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
                ..Default::default()
            });
            dirty = true;
        }
        if set_by_controller && !has_annotation(&new.metadata, BOUND_BY_CONTROLLER) {
            set_annotation(&mut new.metadata, BOUND_BY_CONTROLLER, "yes");
            dirty = true;
        }
        if !dirty {
            return Ok(volume.clone());
        }
        let name = volume.metadata.name.as_deref().unwrap_or_default();
        self.volume_api()
            .replace(name, &PostParams::default(), &new)
            .await
    }

    async fn bind_claim_to_volume(
        &self,
        claim: &PersistentVolumeClaim,
        volume: &PersistentVolume,
    ) -> Result<PersistentVolumeClaim, kube::Error> {
        let mut new = claim.clone();
        let mut dirty = false;
        let name = volume.metadata.name.as_deref().unwrap_or_default();
        if volume_name(claim) != name {
            new.spec.get_or_insert_default().volume_name = Some(name.into());
            if !has_annotation(&new.metadata, BOUND_BY_CONTROLLER) {
                set_annotation(&mut new.metadata, BOUND_BY_CONTROLLER, "yes");
            }
            dirty = true;
        }
        if !has_annotation(&new.metadata, BIND_COMPLETED) {
            set_annotation(&mut new.metadata, BIND_COMPLETED, "yes");
            dirty = true;
        }
        if !dirty {
            return Ok(claim.clone());
        }
        let claim_name = claim.metadata.name.as_deref().unwrap_or_default();
        self.claim_api(claim)
            .replace(claim_name, &PostParams::default(), &new)
            .await
    }

    /// Sets the claim's phase and its access modes from `volume` (reset without
    /// one), and its capacity from the volume's as it becomes Bound — not later: a
    /// resize may have made them differ on purpose (upstream's `updateClaimStatus`).
    async fn update_claim_status(
        &self,
        claim: &PersistentVolumeClaim,
        phase: &str,
        volume: Option<&PersistentVolume>,
    ) -> Result<(), kube::Error> {
        let mut new = claim.clone();
        let status = new
            .status
            .get_or_insert_with(PersistentVolumeClaimStatus::default);
        let entering = status.phase.as_deref() != Some(phase);
        let mut dirty = entering;
        status.phase = Some(phase.into());
        match volume.and_then(|v| v.spec.as_ref()) {
            Some(spec) => {
                if status.access_modes != spec.access_modes {
                    status.access_modes = spec.access_modes.clone();
                    dirty = true;
                }
                let size = spec.capacity.as_ref().and_then(|c| c.get("storage"));
                let have = status.capacity.as_ref().and_then(|c| c.get("storage"));
                if entering
                    && let Some(size) = size
                    && have != Some(size)
                {
                    status
                        .capacity
                        .get_or_insert_default()
                        .insert("storage".into(), size.clone());
                    dirty = true;
                }
            }
            None => {
                if status.access_modes.take().is_some() {
                    dirty = true;
                }
                if status.capacity.take().is_some() {
                    dirty = true;
                }
            }
        }
        if !dirty {
            return Ok(());
        }
        let name = claim.metadata.name.as_deref().unwrap_or_default();
        self.claim_api(claim)
            .replace_status(name, &PostParams::default(), &new)
            .await?;
        Ok(())
    }
}
