//! The volume controllers of kube-controller-manager (`pkg/controller/volume`):
//! the PersistentVolume binder ([`binder`], `persistentvolume-binder`), which binds
//! claims to volumes, keeps both phases and reclaims released volumes, and the two
//! protection controllers ([`protection`], `pvc-protection` and `pv-protection`),
//! which hold a claim's or volume's deletion while it is in use.
//!
//! Provisioning is not done here: for a claim whose StorageClass names a provisioner
//! that is not built in (`csi.berth.io` for the default class), the binder annotates
//! the claim with `volume.kubernetes.io/storage-provisioner` and waits, as upstream
//! waits for an external provisioner. berth's node agents are that provisioner for
//! their CSI drivers (`agent/src/csi`): they make the volumes, and delete the
//! released ones they made whose reclaim policy is Delete.

pub mod binder;
pub mod matching;
pub mod protection;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

/// On a claim: the binder finished binding it (`pv.kubernetes.io/bind-completed`).
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// On a claim or volume: the binder, not a user, set the claim's `volumeName` or the
/// volume's `claimRef` (`pv.kubernetes.io/bound-by-controller`).
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// On a claim: the node the scheduler chose for its first pod (WaitForFirstConsumer).
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// On a claim: the provisioner asked to make its volume.
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// On a volume: the provisioner that made it.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The deprecated class annotation, still read before `storageClassName`.
pub const BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// The finalizers of the protection controllers.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// The component name the binder's Events carry (upstream's).
pub const COMPONENT: &str = "persistentvolume-controller";

fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The claim's class: the beta annotation if set, else `storageClassName`, else ""
/// (`GetPersistentVolumeClaimClass`).
pub fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    if let Some(c) = annotation(&claim.metadata, BETA_STORAGE_CLASS) {
        return c;
    }
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// The volume's class, read as a claim's is (`GetPersistentVolumeClass`).
pub fn volume_class(volume: &PersistentVolume) -> &str {
    if let Some(c) = annotation(&volume.metadata, BETA_STORAGE_CLASS) {
        return c;
    }
    volume
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}
