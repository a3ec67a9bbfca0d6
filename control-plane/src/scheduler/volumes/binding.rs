//! VolumeBinding's Filter for one node (upstream's `FindPodVolumes`): the volumes of
//! bound claims must admit the node; each unbound WaitForFirstConsumer claim gets the
//! smallest Available volume that admits the node, or else its class's provisioner must
//! be able to provision there (allowed topologies, CSIStorageCapacity).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

use super::{BIND_CONFLICT, Delayed, NODE_CONFLICT, NOT_ENOUGH_SPACE, PV_NOT_EXIST, VolumeCheck};
use crate::controllers::volume::SELECTED_NODE;
use crate::controllers::volume::matching::{find_best_match, node_affinity_admits, requested};
use crate::scheduler::node_info::NodeInfo;
use crate::scheduler::quantity::parse_milli;

/// The provisioner name of classes that do not provision (`NotSupportedProvisioner`).
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// What PreBind does for one unbound claim on the chosen node.
#[derive(Debug, Clone)]
pub enum Action {
    /// Bind this Available volume to the claim (set its claimRef).
    Bind {
        claim: Arc<PersistentVolumeClaim>,
        volume: Arc<PersistentVolume>,
    },
    /// Ask for a volume to be provisioned on the node (the selected-node annotation).
    Provision { claim: Arc<PersistentVolumeClaim> },
}

pub(super) fn find(check: &VolumeCheck<'_>, node: &NodeInfo) -> Result<Vec<Action>, Vec<String>> {
    let mut bound_ok = true;
    let mut pvs_found = true;
    for (_, volume) in &check.bound {
        match volume {
            None => {
                pvs_found = false;
                break;
            }
            Some(v) if !node_affinity_admits(v, &node.node) => {
                bound_ok = false;
                break;
            }
            Some(_) => {}
        }
    }
    let mut unbound_ok = true;
    let mut sufficient = true;
    let mut actions = Vec::new();
    if bound_ok && pvs_found && !check.delayed.is_empty() {
        (unbound_ok, sufficient) = find_unbound(check, node, &mut actions);
    }
    let mut reasons = Vec::new();
    if !bound_ok {
        reasons.push(NODE_CONFLICT.to_owned());
    }
    if !unbound_ok {
        reasons.push(BIND_CONFLICT.to_owned());
    }
    if !sufficient {
        reasons.push(NOT_ENOUGH_SPACE.to_owned());
    }
    if !pvs_found {
        reasons.push(PV_NOT_EXIST.to_owned());
    }
    if reasons.is_empty() {
        Ok(actions)
    } else {
        Err(reasons)
    }
}

/// (unbound claims satisfied, enough storage).
fn find_unbound(
    check: &VolumeCheck<'_>,
    node: &NodeInfo,
    actions: &mut Vec<Action>,
) -> (bool, bool) {
    let mut to_match: Vec<&Delayed> = Vec::new();
    let mut to_provision: Vec<&Delayed> = Vec::new();
    for d in &check.delayed {
        match d
            .claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SELECTED_NODE))
        {
            // Provisioning was asked for on another node already.
            Some(selected) if *selected != node.name => return (false, true),
            Some(_) => to_provision.push(d),
            None => to_match.push(d),
        }
    }
    // Static volumes, each chosen once (`findMatchingVolumes`).
    let mut chosen: Vec<String> = Vec::new();
    let mut unbound_ok = true;
    for d in to_match {
        let free: Vec<Arc<PersistentVolume>>;
        let candidates = if chosen.is_empty() {
            &d.volumes
        } else {
            free = d
                .volumes
                .iter()
                .filter(|v| !chosen.iter().any(|c| v.metadata.name.as_ref() == Some(c)))
                .cloned()
                .collect();
            &free
        };
        let found = find_best_match(&d.claim, candidates, true, Some(&node.node)).and_then(|v| {
            candidates
                .iter()
                .find(|x| x.metadata.name == v.metadata.name)
        });
        match found {
            Some(volume) => {
                chosen.push(volume.metadata.name.clone().unwrap_or_default());
                actions.push(Action::Bind {
                    claim: d.claim.clone(),
                    volume: volume.clone(),
                });
            }
            None => {
                unbound_ok = false;
                to_provision.push(d);
            }
        }
    }
    if to_provision.is_empty() {
        return (unbound_ok, true);
    }
    // Dynamic provisioning (`checkVolumeProvisions`).
    for d in to_provision {
        let provisioner = d.class.provisioner.as_str();
        if provisioner.is_empty() || provisioner == NO_PROVISIONER {
            return (false, true);
        }
        if !topology_admits(&d.class, node.labels()) {
            return (false, true);
        }
        if !enough_capacity(check, provisioner, &d.claim, &d.class, node) {
            return (true, false);
        }
        actions.push(Action::Provision {
            claim: d.claim.clone(),
        });
    }
    (true, true)
}

/// The class's `allowedTopologies` admit the node's labels (`MatchTopologySelectorTerms`:
/// no terms admit every node; else one term all of whose requirements hold).
fn topology_admits(class: &StorageClass, labels: &BTreeMap<String, String>) -> bool {
    let terms = class.allowed_topologies.as_deref().unwrap_or_default();
    terms.is_empty()
        || terms.iter().any(|t| {
            t.match_label_expressions
                .iter()
                .flatten()
                .all(|r| labels.get(&r.key).is_some_and(|v| r.values.contains(v)))
        })
}

/// Whether a CSIStorageCapacity of the class reachable from the node has room for the
/// claim — checked only for CSI drivers that opt in with `storageCapacity: true`
/// (`hasEnoughCapacity`).
fn enough_capacity(
    check: &VolumeCheck<'_>,
    provisioner: &str,
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &NodeInfo,
) -> bool {
    let has_request = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .is_some_and(|r| r.contains_key("storage"));
    if !has_request {
        return true;
    }
    let tracked = check
        .listers
        .csi_driver(provisioner)
        .is_some_and(|d| d.spec.storage_capacity == Some(true));
    if !tracked {
        return true;
    }
    let size = requested(claim);
    let class_name = class.metadata.name.as_deref().unwrap_or_default();
    check.listers.capacities().iter().any(|c| {
        // Prefer maximumVolumeSize: it is the more precise.
        let limit = c
            .maximum_volume_size
            .as_ref()
            .or(c.capacity.as_ref())
            .and_then(|q| parse_milli(&q.0));
        c.storage_class_name == class_name
            && limit.is_some_and(|l| l >= size)
            && c.node_topology.is_some()
            && crate::scheduler::labels::matches(c.node_topology.as_ref(), node.labels())
    })
}
