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
//!   keeps it, Delete deletes it (through a [`Deleter`] for CSI volumes), anything else
//!   fails it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    PersistentVolumeStatus,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};

use super::matching::{self, bound_to, check_satisfies, find_best_match};
use super::{
    BETA_STORAGE_PROVISIONER, BIND_COMPLETED, BOUND_BY_CONTROLLER, COMPONENT, Deleters,
    PROVISIONED_BY, SELECTED_NODE, STORAGE_PROVISIONER, annotation, claim_class,
};
use crate::client::{Informers, Involved, record_event};
use crate::controllers::queue::{Queue, key_of, split_key};

/// How often unbound claims are looked at again (`--pvclaimbinder-sync-period`).
pub const RESYNC: Duration = Duration::from_secs(15);

struct Controller {
    client: Client,
    volumes: Store<PersistentVolume>,
    claims: Store<PersistentVolumeClaim>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    deleters: Deleters,
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

/// Runs the binder; `deleters` delete the storage of released CSI volumes.
pub fn start(
    client: Client,
    deleters: Deleters,
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
    async move {
        let _ = claims.wait_until_ready().await;
        let _ = volumes.wait_until_ready().await;
        let _ = classes.wait_until_ready().await;
        let _ = nodes.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            client,
            volumes,
            claims,
            classes,
            nodes,
            deleters,
            claim_queue: claim_queue.clone(),
        });
        let claim_loop = claim_queue.work("persistentvolume-binder", {
            let ctl = ctl.clone();
            move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync_claim(&key).await }
            }
        });
        let volume_loop = volume_queue.work("persistentvolume-binder", move |key| {
            let ctl = ctl.clone();
            async move { ctl.sync_volume(&key).await }
        });
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
                self.claim_event(
                    claim,
                    "Normal",
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                )
                .await;
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
            self.update_claim_status(claim, "Pending", None).await?;
            return Ok(Some(RESYNC));
        } else {
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

    /// Sets the claim's phase, and its capacity and access modes from `volume` (reset
    /// without one), when they differ.
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
        let mut dirty = status.phase.as_deref() != Some(phase);
        status.phase = Some(phase.into());
        match volume.and_then(|v| v.spec.as_ref()) {
            Some(spec) => {
                if status.access_modes != spec.access_modes {
                    status.access_modes = spec.access_modes.clone();
                    dirty = true;
                }
                let size = spec.capacity.as_ref().and_then(|c| c.get("storage"));
                let have = status.capacity.as_ref().and_then(|c| c.get("storage"));
                if let Some(size) = size
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

    // ---- volumes ------------------------------------------------------------------

    async fn update_volume_phase(
        &self,
        volume: &PersistentVolume,
        phase: &str,
        message: Option<&str>,
    ) -> Result<PersistentVolume, kube::Error> {
        let current = volume.status.as_ref();
        if current.and_then(|s| s.phase.as_deref()) == Some(phase)
            && current.and_then(|s| s.message.as_deref()) == message
        {
            return Ok(volume.clone());
        }
        let mut new = volume.clone();
        let status = new
            .status
            .get_or_insert_with(PersistentVolumeStatus::default);
        if status.phase.as_deref() != Some(phase) {
            status.last_phase_transition_time = Some(Time(jiff::Timestamp::now()));
        }
        status.phase = Some(phase.into());
        status.message = message.map(str::to_owned);
        let name = volume.metadata.name.as_deref().unwrap_or_default();
        self.volume_api()
            .replace_status(name, &PostParams::default(), &new)
            .await
    }

    /// Sets the phase and, when it changes, records `reason` (upstream's
    /// `updateVolumePhaseWithEvent`).
    async fn volume_phase_with_event(
        &self,
        volume: &PersistentVolume,
        phase: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        if volume_phase(volume) == phase {
            return Ok(());
        }
        let new = self
            .update_volume_phase(volume, phase, Some(message))
            .await?;
        self.volume_event(&new, "Warning", reason, message).await;
        Ok(())
    }

    /// The claim the volume's claimRef names, if it still exists with that uid —
    /// asking the apiserver when the cache does not have it (it may be new).
    async fn referenced_claim(
        &self,
        r: &ObjectReference,
    ) -> Result<Option<Arc<PersistentVolumeClaim>>, kube::Error> {
        let (ns, name) = (
            r.namespace.as_deref().unwrap_or_default(),
            r.name.as_deref().unwrap_or_default(),
        );
        let claim = match self.claims.get(&ObjectRef::new(name).within(ns)) {
            Some(c) => Some(c),
            None => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
                match api.get(name).await {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) if not_found(&e) => None,
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(claim.filter(|c| c.metadata.uid == r.uid))
    }

    async fn sync_volume(&self, name: &str) -> Result<Option<Duration>, kube::Error> {
        let Some(volume) = self.volumes.get(&ObjectRef::new(name)) else {
            return Ok(None);
        };
        let Some(r) = claim_ref(&volume) else {
            self.update_volume_phase(&volume, "Available", None).await?;
            return Ok(None);
        };
        if r.uid.as_deref().is_none_or(str::is_empty) {
            // Reserved for a claim not yet bound to it: the claim's sync binds it.
            self.update_volume_phase(&volume, "Available", None).await?;
            self.claim_queue.add(ref_key(r));
            return Ok(None);
        }
        let Some(claim) = self.referenced_claim(r).await? else {
            // The claim is gone: release the volume (keeping a Failed phase for the
            // user to see) and reclaim it.
            let volume = if matches!(volume_phase(&volume), "Released" | "Failed") {
                (*volume).clone()
            } else {
                self.update_volume_phase(&volume, "Released", None).await?
            };
            return self.reclaim(&volume).await;
        };
        let bound_name = volume_name(&claim);
        if bound_name.is_empty() {
            if matching::volume_mode_mismatch(&claim, &volume) {
                let claim_name = claim.metadata.name.as_deref().unwrap_or_default();
                self.volume_event(
                    &volume,
                    "Warning",
                    "VolumeMismatch",
                    &format!("Cannot bind PersistentVolume to requested PersistentVolumeClaim \"{claim_name}\" due to incompatible volumeMode."),
                )
                .await;
                self.claim_event(
                    &claim,
                    "Warning",
                    "VolumeMismatch",
                    &format!("Cannot bind PersistentVolume \"{name}\" to requested PersistentVolumeClaim due to incompatible volumeMode."),
                )
                .await;
                return Ok(None);
            }
            if has_annotation(&volume.metadata, BOUND_BY_CONTROLLER) {
                // Our binding, not finished: the claim's sync finishes it.
                self.update_volume_phase(&volume, "Available", None).await?;
            }
            self.claim_queue.add(key_of(&claim.metadata));
            return Ok(None);
        }
        if bound_name == name {
            self.update_volume_phase(&volume, "Bound", None).await?;
            return Ok(None);
        }
        // The claim is bound to another volume.
        let delete_policy = volume
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            == Some("Delete");
        if has_annotation(&volume.metadata, PROVISIONED_BY) && delete_policy {
            // Provisioned for this claim, which went elsewhere: not needed.
            let volume = if matches!(volume_phase(&volume), "Released" | "Failed") {
                (*volume).clone()
            } else {
                self.update_volume_phase(&volume, "Released", None).await?
            };
            return self.reclaim(&volume).await;
        }
        if has_annotation(&volume.metadata, BOUND_BY_CONTROLLER) {
            self.unbind_volume(&volume).await?;
        }
        Ok(None)
    }

    /// Undoes a binding the controller made; for a user's pre-binding, forgets only
    /// the claim's uid (upstream's `unbindVolume`).
    async fn unbind_volume(&self, volume: &PersistentVolume) -> Result<(), kube::Error> {
        let mut new = volume.clone();
        if has_annotation(&volume.metadata, BOUND_BY_CONTROLLER) {
            new.spec.get_or_insert_default().claim_ref = None;
            if let Some(a) = new.metadata.annotations.as_mut() {
                a.remove(BOUND_BY_CONTROLLER);
            }
        } else if let Some(r) = new.spec.as_mut().and_then(|s| s.claim_ref.as_mut()) {
            r.uid = None;
        }
        let name = volume.metadata.name.as_deref().unwrap_or_default();
        let new = self
            .volume_api()
            .replace(name, &PostParams::default(), &new)
            .await?;
        self.update_volume_phase(&new, "Available", None).await?;
        Ok(())
    }

    async fn reclaim(&self, volume: &PersistentVolume) -> Result<Option<Duration>, kube::Error> {
        let policy = volume
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .unwrap_or("Retain");
        match policy {
            "Retain" => Ok(None),
            "Delete" => self.delete_volume(volume).await,
            "Recycle" => {
                self.volume_phase_with_event(
                    volume,
                    "Failed",
                    "VolumeFailedRecycle",
                    "No recycler plugin found for the volume!",
                )
                .await?;
                Ok(None)
            }
            _ => {
                self.volume_phase_with_event(
                    volume,
                    "Failed",
                    "VolumeUnknownReclaimPolicy",
                    "Volume has unrecognized PersistentVolumeReclaimPolicy",
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// Whether the volume, as the apiserver has it now, still needs reclaiming
    /// (upstream's `isVolumeReleased`).
    async fn is_released(&self, volume: &PersistentVolume) -> Result<bool, kube::Error> {
        let Some(r) = claim_ref(volume) else {
            return Ok(false);
        };
        if r.uid.as_deref().is_none_or(str::is_empty) {
            return Ok(false);
        }
        Ok(match self.referenced_claim(r).await? {
            Some(claim) => {
                let bound = volume_name(&claim);
                !bound.is_empty() && Some(bound) != volume.metadata.name.as_deref()
            }
            None => true,
        })
    }

    /// Reclaim policy Delete (upstream's `deleteVolumeOperation`): the storage first
    /// — a CSI volume through its driver's [`super::Deleter`]; other volume types have
    /// nothing berth manages behind them — then the PersistentVolume object.
    async fn delete_volume(
        &self,
        volume: &PersistentVolume,
    ) -> Result<Option<Duration>, kube::Error> {
        let name = volume.metadata.name.as_deref().unwrap_or_default();
        let fresh = match self.volume_api().get(name).await {
            Ok(v) => v,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        if fresh.metadata.uid != volume.metadata.uid || !self.is_released(&fresh).await? {
            return Ok(None);
        }
        if let Some(csi) = fresh.spec.as_ref().and_then(|s| s.csi.as_ref()) {
            let provisioner = annotation(&fresh.metadata, PROVISIONED_BY);
            let deleter = provisioner
                .and_then(|p| self.deleters.get(p))
                .or_else(|| self.deleters.get(&csi.driver));
            match (deleter, provisioner) {
                (Some(d), _) => {
                    if let Err(err) = d.delete(&fresh).await {
                        self.volume_phase_with_event(
                            &fresh,
                            "Failed",
                            "VolumeFailedDelete",
                            &err.0,
                        )
                        .await?;
                        return Ok(Some(RESYNC));
                    }
                }
                (None, Some(p)) if !p.starts_with("kubernetes.io/") => {
                    // Provisioned outside berth-server: its provisioner deletes it.
                    tracing::debug!(
                        volume = name,
                        provisioner = p,
                        "external deleter for volume requested; ignoring"
                    );
                    return Ok(None);
                }
                (None, _) => {
                    self.volume_phase_with_event(
                        &fresh,
                        "Failed",
                        "VolumeFailedDelete",
                        &format!("error getting deleter volume plugin for volume \"{name}\": no deletable volume plugin matched"),
                    )
                    .await?;
                    return Ok(None);
                }
            }
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: fresh.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.volume_api().delete(name, &dp).await {
            Ok(_) => Ok(None),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
