//! NodeVolumeLimits for CSI drivers (upstream's `nodevolumelimits/csi.go`): a node whose
//! CSINode gives a driver an `allocatable.count` takes no more distinct volumes of that
//! driver than that, counting the pods already there and the new pod's volumes not
//! attached there yet. An unbound claim counts against its class's provisioner.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;

use super::{Listers, MAX_VOLUME_COUNT, VolumeCheck};
use crate::controllers::volume::claim_class;
use crate::scheduler::node_info::NodeInfo;

/// Adds the pod's CSI volumes, driver → unique volume ids (`filterAttachableVolumes`):
/// a bound claim's CSI volume by its handle, an unbound one (or one whose volume is not
/// known) as `<provisioner>-<namespace>/<claim>` of its class's provisioner.
pub(super) fn pod_volumes(
    pod: &Pod,
    listers: &dyn Listers,
    out: &mut BTreeMap<String, BTreeSet<String>>,
) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    for name in crate::controllers::volume::protection::pod_claims(pod) {
        let Some(claim) = listers.claim(ns, &name) else {
            continue;
        };
        let volume_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .unwrap_or_default();
        let volume = (!volume_name.is_empty())
            .then(|| listers.volume(volume_name))
            .flatten();
        if let Some(volume) = volume {
            if let Some(csi) = volume.spec.as_ref().and_then(|s| s.csi.as_ref()) {
                out.entry(csi.driver.clone())
                    .or_default()
                    .insert(format!("{}/{}", csi.driver, csi.volume_handle));
            }
            continue;
        }
        let class = claim_class(&claim);
        if class.is_empty() {
            continue;
        }
        if let Some(class) = listers.class(class) {
            let driver = &class.provisioner;
            out.entry(driver.clone())
                .or_default()
                .insert(format!("{driver}-{ns}/{name}"));
        }
    }
}

/// The node's limits, driver → count, from its CSINode.
fn node_limits(check: &VolumeCheck<'_>, node: &NodeInfo) -> BTreeMap<String, usize> {
    let Some(csi_node) = check.listers.csi_node(&node.name) else {
        return BTreeMap::new();
    };
    csi_node
        .spec
        .drivers
        .iter()
        .filter_map(|d| {
            let count = d.allocatable.as_ref()?.count?;
            Some((d.name.clone(), usize::try_from(count).unwrap_or(0)))
        })
        .collect()
}

pub(super) fn check(check: &VolumeCheck<'_>, node: &NodeInfo) -> Result<(), Vec<String>> {
    if check.csi.is_empty() {
        return Ok(());
    }
    let limits = node_limits(check, node);
    if !check.csi.keys().any(|d| limits.contains_key(d)) {
        return Ok(());
    }
    let mut attached: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in &node.pods {
        pod_volumes(p, check.listers, &mut attached);
    }
    for (driver, new) in &check.csi {
        let Some(&limit) = limits.get(driver) else {
            continue;
        };
        let there = attached.get(driver);
        let added = new
            .iter()
            .filter(|v| there.is_none_or(|t| !t.contains(*v)))
            .count();
        if there.map_or(0, BTreeSet::len) + added > limit {
            return Err(vec![MAX_VOLUME_COUNT.to_owned()]);
        }
    }
    Ok(())
}
