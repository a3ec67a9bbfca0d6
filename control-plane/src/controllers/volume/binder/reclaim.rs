//! Reclaiming a Released volume by its policy (upstream's `reclaimVolume` and
//! `deleteVolumeOperation`): Retain keeps it, Delete deletes it — a volume made by an
//! external provisioner (berth's agents for their CSI drivers) is left to it, another
//! CSI volume has no plugin here to delete it and fails, anything else goes —
//! Recycle and unknown policies fail it with upstream's events.

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{DeleteParams, Preconditions};

use super::super::PROVISIONED_BY;
use super::{Controller, annotation, claim_ref, not_found, volume_name};

impl Controller {
    pub(super) async fn reclaim(
        &self,
        volume: &PersistentVolume,
    ) -> Result<Option<Duration>, kube::Error> {
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
    pub(super) async fn is_released(&self, volume: &PersistentVolume) -> Result<bool, kube::Error> {
        let Some(r) = claim_ref(volume) else {
            return Ok(false);
        };
        if r.uid.as_deref().is_none_or(str::is_empty) {
            return Ok(false);
        }
        Ok(match self.referenced_claim(r, false).await? {
            Some(claim) => {
                let bound = volume_name(&claim);
                !bound.is_empty() && Some(bound) != volume.metadata.name.as_deref()
            }
            None => true,
        })
    }

    /// Reclaim policy Delete (upstream's `deleteVolumeOperation`): a CSI volume is its
    /// provisioner's to delete (or, made by none, fails); other volume types have
    /// nothing berth manages behind them, so the PersistentVolume object goes.
    pub(super) async fn delete_volume(
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
        if fresh.spec.as_ref().is_some_and(|s| s.csi.is_some()) {
            match annotation(&fresh.metadata, PROVISIONED_BY) {
                Some(p) if !p.starts_with("kubernetes.io/") => {
                    // Provisioned outside berth-server: its provisioner deletes it.
                    tracing::debug!(
                        volume = name,
                        provisioner = p,
                        "external deleter for volume requested; ignoring"
                    );
                    return Ok(None);
                }
                _ => {
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
