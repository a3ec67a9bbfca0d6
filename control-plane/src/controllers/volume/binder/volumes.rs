//! The binder's volume side (upstream's `syncVolume`): a volume's phase follows its
//! claimRef — Available when free or reserved, Bound when its claim names it,
//! Released (and reclaimed, see [`super::reclaim`]) when its claim is gone.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeStatus,
};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;

use super::super::matching;
use super::super::{BOUND_BY_CONTROLLER, PROVISIONED_BY};
use super::{Controller, claim_ref, has_annotation, not_found, ref_key, volume_name, volume_phase};
use crate::controllers::queue::key_of;

impl Controller {
    pub(super) async fn update_volume_phase(
        &self,
        volume: &PersistentVolume,
        phase: &str,
        message: Option<&str>,
    ) -> Result<PersistentVolume, kube::Error> {
        if volume_phase(volume) == phase {
            return Ok(volume.clone());
        }
        let mut new = volume.clone();
        let status = new
            .status
            .get_or_insert_with(PersistentVolumeStatus::default);
        status.phase = Some(phase.into());
        status.message = message.map(str::to_owned);
        let name = volume.metadata.name.as_deref().unwrap_or_default();
        self.volume_api()
            .replace_status(name, &PostParams::default(), &new)
            .await
    }

    /// Sets the phase and, when it changes, records `reason` (upstream's
    /// `updateVolumePhaseWithEvent`).
    pub(super) async fn volume_phase_with_event(
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

    /// The claim the volume's claimRef names, if it still exists with that uid.
    /// The cache may lag (a claim just made, or just re-made under the same name), so
    /// a miss or another uid is checked with the apiserver before a volume is
    /// released — unless `released` says it already is (upstream's `syncVolume`).
    pub(super) async fn referenced_claim(
        &self,
        r: &ObjectReference,
        released: bool,
    ) -> Result<Option<Arc<PersistentVolumeClaim>>, kube::Error> {
        let (ns, name) = (
            r.namespace.as_deref().unwrap_or_default(),
            r.name.as_deref().unwrap_or_default(),
        );
        let cached = self.claims.get(&ObjectRef::new(name).within(ns));
        let ask = match &cached {
            None => !released,
            Some(c) => c.metadata.uid != r.uid,
        };
        let claim = if ask {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
            match api.get(name).await {
                Ok(c) => Some(Arc::new(c)),
                Err(e) if not_found(&e) => None,
                Err(e) => return Err(e),
            }
        } else {
            cached
        };
        Ok(claim.filter(|c| c.metadata.uid == r.uid))
    }

    pub(super) async fn sync_volume(&self, name: &str) -> Result<Option<Duration>, kube::Error> {
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
        let released = matches!(volume_phase(&volume), "Released" | "Failed");
        let Some(claim) = self.referenced_claim(r, released).await? else {
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
            // Our binding not finished, or the user's undone: the claim's sync
            // settles it.
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
        // Bound by the controller to a claim that went elsewhere: undo it; bound by
        // the user: forget the claim's uid and stay reserved for that name.
        self.unbind_volume(&volume).await?;
        Ok(None)
    }

    /// Undoes a binding the controller made; for a user's pre-binding, forgets only
    /// the claim's uid (upstream's `unbindVolume`).
    pub(super) async fn unbind_volume(&self, volume: &PersistentVolume) -> Result<(), kube::Error> {
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
}
