//! kube-scheduler's volume plugins for one pod: VolumeRestrictions (a ReadWriteOncePod
//! claim another pod already uses), NodeVolumeLimits (a CSI driver's per-node volume
//! count from its CSINode) and VolumeBinding (bound claims' volumes must admit the node;
//! unbound WaitForFirstConsumer claims need an Available volume there or a provisioner
//! that can make one there, with enough CSIStorageCapacity).
//!
//! [`VolumeCheck::new`] is their PreFilter: built once per pod from the informer caches
//! ([`Listers`]), it fails the pod on every node at once (a missing claim, an unbound
//! Immediate one) or becomes a [`PodFilter`] for the nodes. Pods without claims get
//! none, so they pay nothing. [`VolumeCheck::decide`] gives what PreBind
//! ([`prebind`]) has to do on the chosen node.

mod binding;
mod limits;
pub mod prebind;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode, CSIStorageCapacity, StorageClass};
use kube::runtime::reflector::{ObjectRef, Store};

use super::framework::PodFilter;
use super::node_info::NodeInfo;
use crate::controllers::volume::{BIND_COMPLETED, claim_class, protection::pod_claims};

pub use binding::Action;

/// VolumeRestrictions' reason (upstream's `ErrReasonReadWriteOncePodConflict`).
pub const RWOP_CONFLICT: &str =
    "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode";
/// NodeVolumeLimits' reason (`ErrReasonMaxVolumeCountExceeded`).
pub const MAX_VOLUME_COUNT: &str = "node(s) exceed max volume count";
/// VolumeBinding's reasons (`binder.go`).
pub const BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const NOT_ENOUGH_SPACE: &str = "node(s) did not have enough free storage";
pub const PV_NOT_EXIST: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
/// VolumeBinding's PreFilter reason for unbound Immediate claims.
pub const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";

/// What the volume plugins read: the scheduler's informer caches, or fixed objects in
/// tests.
pub trait Listers: Send + Sync {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>>;
    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>>;
    fn volumes(&self) -> Vec<Arc<PersistentVolume>>;
    fn class(&self, name: &str) -> Option<Arc<StorageClass>>;
    fn csi_node(&self, name: &str) -> Option<Arc<CSINode>>;
    fn csi_driver(&self, name: &str) -> Option<Arc<CSIDriver>>;
    fn capacities(&self) -> Vec<Arc<CSIStorageCapacity>>;
}

/// The informer caches the scheduler keeps for the volume plugins.
#[derive(Clone)]
pub struct Stores {
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub classes: Store<StorageClass>,
    pub csi_nodes: Store<CSINode>,
    pub csi_drivers: Store<CSIDriver>,
    pub capacities: Store<CSIStorageCapacity>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Listers for Stores {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&ObjectRef::new(name).within(namespace))
    }
    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
        self.volumes.get(&ObjectRef::new(name))
    }
    fn volumes(&self) -> Vec<Arc<PersistentVolume>> {
        self.volumes.state()
    }
    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.classes.get(&ObjectRef::new(name))
    }
    fn csi_node(&self, name: &str) -> Option<Arc<CSINode>> {
        self.csi_nodes.get(&ObjectRef::new(name))
    }
    fn csi_driver(&self, name: &str) -> Option<Arc<CSIDriver>> {
        self.csi_drivers.get(&ObjectRef::new(name))
    }
    fn capacities(&self) -> Vec<Arc<CSIStorageCapacity>> {
        self.capacities.state()
    }
}

/// Whether the pod has anything the volume plugins look at: a claim, named or generic
/// ephemeral.
pub fn has_volumes(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.volumes
            .iter()
            .flatten()
            .any(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
    })
}

/// Bound as the scheduler counts it: a volume named and the binder done
/// (`isPVCFullyBound`).
pub fn fully_bound(claim: &PersistentVolumeClaim) -> bool {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty())
        && claim
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(BIND_COMPLETED))
}

/// The generic ephemeral claim is the pod's: the pod is its controller
/// (`ephemeral.VolumeIsForPod`).
pub fn claim_is_for_pod(pod: &Pod, claim: &PersistentVolumeClaim) -> Result<(), String> {
    let owned = claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == pod.metadata.uid.as_ref());
    if owned {
        return Ok(());
    }
    Err(format!(
        "PVC {}/{} was not created for pod {}/{} (pod is not owner)",
        claim.metadata.namespace.as_deref().unwrap_or_default(),
        claim.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
    ))
}

/// An unbound WaitForFirstConsumer claim: what the nodes are checked against.
pub(crate) struct Delayed {
    pub claim: Arc<PersistentVolumeClaim>,
    pub class: Arc<StorageClass>,
    /// The volumes of the claim's class (`unboundVolumesDelayBinding`).
    pub volumes: Vec<Arc<PersistentVolume>>,
}

/// The volume plugins' PreFilter state for one pod.
pub struct VolumeCheck<'a> {
    listers: &'a dyn Listers,
    /// Bound claims and their volumes (None: the volume does not exist).
    bound: Vec<(Arc<PersistentVolumeClaim>, Option<Arc<PersistentVolume>>)>,
    /// Unbound WaitForFirstConsumer claims, smallest request first (`byPVCSize`).
    delayed: Vec<Delayed>,
    /// Another pod uses one of the pod's ReadWriteOncePod claims.
    rwop_conflict: bool,
    /// The CSI volumes the pod brings: driver → unique volume ids.
    csi: BTreeMap<String, BTreeSet<String>>,
}

impl<'a> VolumeCheck<'a> {
    /// The PreFilters: `Ok(None)` when the pod has no claims,
    /// `Err(message)` when it fits no node whatever the node (upstream's
    /// UnschedulableAndUnresolvable PreFilter status).
    pub fn new(
        pod: &'a Pod,
        listers: &'a dyn Listers,
        cluster: &[NodeInfo],
    ) -> Result<Option<Self>, String> {
        if !has_volumes(pod) {
            return Ok(None);
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        let mut check = VolumeCheck {
            listers,
            bound: Vec::new(),
            delayed: Vec::new(),
            rwop_conflict: false,
            csi: BTreeMap::new(),
        };
        // VolumeBinding's PreFilter (`podHasPVCs`, `GetPodVolumeClaims`).
        let mut immediate = false;
        let mut rwop: Vec<&str> = Vec::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let (name, ephemeral) = if let Some(c) = &v.persistent_volume_claim {
                (c.claim_name.clone(), false)
            } else if v.ephemeral.is_some() {
                (format!("{pod_name}-{}", v.name), true)
            } else {
                continue;
            };
            let Some(claim) = listers.claim(ns, &name) else {
                return Err(if ephemeral {
                    format!(
                        "waiting for ephemeral volume controller to create the persistentvolumeclaim \"{name}\""
                    )
                } else {
                    format!("persistentvolumeclaim \"{name}\" not found")
                });
            };
            let spec = claim.spec.as_ref();
            let volume_name = spec
                .and_then(|s| s.volume_name.as_deref())
                .unwrap_or_default();
            if claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Lost") {
                return Err(format!(
                    "persistentvolumeclaim \"{name}\" bound to non-existent persistentvolume \"{volume_name}\""
                ));
            }
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
            }
            if ephemeral {
                claim_is_for_pod(pod, &claim)?;
            }
            if !ephemeral
                && spec
                    .and_then(|s| s.access_modes.as_ref())
                    .is_some_and(|m| m.iter().any(|m| m == "ReadWriteOncePod"))
                && let Some(c) = &v.persistent_volume_claim
            {
                rwop.push(&c.claim_name);
            }
            if fully_bound(&claim) {
                let volume = listers.volume(volume_name);
                check.bound.push((claim, volume));
                continue;
            }
            let class_name = claim_class(&claim);
            let class = match class_name {
                "" => None,
                c => Some(
                    listers
                        .class(c)
                        .ok_or_else(|| format!("storageclass.storage.k8s.io \"{c}\" not found"))?,
                ),
            };
            let delay = class
                .as_ref()
                .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
            match class {
                // Prebound claims are treated as unbound Immediate ones.
                Some(class) if delay && volume_name.is_empty() => {
                    let class_name = class_name.to_owned();
                    let volumes = listers
                        .volumes()
                        .into_iter()
                        .filter(|pv| crate::controllers::volume::volume_class(pv) == class_name)
                        .collect();
                    check.delayed.push(Delayed {
                        claim,
                        class,
                        volumes,
                    });
                }
                _ => immediate = true,
            }
        }
        if immediate {
            return Err(UNBOUND_IMMEDIATE.to_owned());
        }
        check
            .delayed
            .sort_by_key(|d| crate::controllers::volume::matching::requested(&d.claim));
        // VolumeRestrictions' PreFilter: is a ReadWriteOncePod claim used already?
        if !rwop.is_empty() {
            let uid = pod.metadata.uid.as_deref();
            check.rwop_conflict = cluster.iter().flat_map(|n| &n.pods).any(|p| {
                p.metadata.uid.as_deref() != uid
                    && p.metadata.namespace.as_deref().unwrap_or("default") == ns
                    && pod_claims(p).iter().any(|c| rwop.contains(&c.as_str()))
            });
        }
        // NodeVolumeLimits' PreFilter: the CSI volumes the pod brings.
        limits::pod_volumes(pod, listers, &mut check.csi);
        Ok(Some(check))
    }

    /// What PreBind has to do for the pod on `node`: static bindings and claims to
    /// provision (empty when every claim is bound already).
    pub fn decide(&self, node: &NodeInfo) -> Result<Vec<Action>, Vec<String>> {
        binding::find(self, node)
    }
}

impl std::fmt::Debug for VolumeCheck<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeCheck")
            .field("bound", &self.bound.len())
            .field("delayed", &self.delayed.len())
            .field("rwop_conflict", &self.rwop_conflict)
            .field("csi", &self.csi)
            .finish_non_exhaustive()
    }
}

impl PodFilter for VolumeCheck<'_> {
    fn filter(&self, node: &NodeInfo) -> Result<(), Vec<String>> {
        // In kube-scheduler's order, each plugin failing alone.
        if self.rwop_conflict {
            return Err(vec![RWOP_CONFLICT.to_owned()]);
        }
        limits::check(self, node)?;
        binding::find(self, node).map(drop)
    }
}

#[cfg(test)]
mod tests;
