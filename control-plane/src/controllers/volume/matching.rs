//! Which PersistentVolume a claim gets (upstream's `FindMatchingVolume`,
//! `pkg/controller/volume/persistentvolume/util`, and the PV controller's access-mode
//! index): a volume pre-bound to the claim wins; otherwise the smallest Available
//! volume with enough capacity, the claim's class, volume mode and label selector,
//! looked for first among volumes with the fewest access modes that include the
//! claim's. [`find_best_match`] is the entry point; [`check_satisfies`] is the test a
//! volume the claim names itself must pass.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};

use super::{claim_class, volume_class};
use crate::scheduler::filters::node_affinity::term_matches;
use crate::scheduler::quantity::parse_milli;

/// The claim's requested storage, in thousandths of a byte (0 when missing).
pub fn requested(claim: &PersistentVolumeClaim) -> i128 {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| parse_milli(&q.0))
        .unwrap_or(0)
}

/// The volume's storage capacity, in thousandths of a byte (0 when missing).
pub fn capacity(volume: &PersistentVolume) -> i128 {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| parse_milli(&q.0))
        .unwrap_or(0)
}

fn claim_modes(claim: &PersistentVolumeClaim) -> BTreeSet<&str> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .map(|m| m.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

fn volume_modes(volume: &PersistentVolume) -> BTreeSet<&str> {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .map(|m| m.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Every access mode the claim asks for, the volume has (`CheckAccessModes`).
pub fn access_modes_fit(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> bool {
    claim_modes(claim).is_subset(&volume_modes(volume))
}

/// `Filesystem` unless the spec says `Block` (`CheckVolumeModeMismatches`).
pub fn volume_mode_mismatch(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> bool {
    let claim_mode = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem");
    let volume_mode = volume
        .spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem");
    claim_mode != volume_mode
}

/// The volume's claimRef names this claim (and its uid, when the ref has one)
/// (`IsVolumeBoundToClaim`).
pub fn bound_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name == claim.metadata.name
        && r.namespace == claim.metadata.namespace
        && (r.uid.as_deref().is_none_or(str::is_empty) || r.uid == claim.metadata.uid)
}

fn phase(volume: &PersistentVolume) -> &str {
    volume
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn selector_matches(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> bool {
    match claim.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        None => true,
        Some(sel) => {
            let empty = BTreeMap::new();
            crate::scheduler::labels::matches(
                Some(sel),
                volume.metadata.labels.as_ref().unwrap_or(&empty),
            )
        }
    }
}

/// Whether the volume's required node affinity admits `node` (no affinity admits all).
pub fn node_affinity_admits(volume: &PersistentVolume, node: &Node) -> bool {
    let Some(required) = volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    required
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, labels, name))
}

/// Why a volume the claim names in `spec.volumeName` cannot be bound to it, in
/// upstream's words (`checkVolumeSatisfyClaim`).
pub fn check_satisfies(
    volume: &PersistentVolume,
    claim: &PersistentVolumeClaim,
) -> Result<(), &'static str> {
    if capacity(volume) < requested(claim) {
        return Err("requested PV is too small");
    }
    if volume_class(volume) != claim_class(claim) {
        return Err("storageClassName does not match");
    }
    if volume_mode_mismatch(claim, volume) {
        return Err("incompatible volumeMode");
    }
    if !access_modes_fit(claim, volume) {
        return Err("incompatible accessMode");
    }
    Ok(())
}

/// The volume for `claim` among `volumes`: one pre-bound to it, else the smallest that
/// fits. With `delay_binding` (WaitForFirstConsumer) and no `node`, only a pre-bound
/// volume is returned — the choice waits for the pod's node; with a `node`, volumes
/// whose node affinity excludes it are passed over.
pub fn find_best_match<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &'a [std::sync::Arc<PersistentVolume>],
    delay_binding: bool,
    node: Option<&Node>,
) -> Option<&'a PersistentVolume> {
    let wanted = claim_modes(claim);
    // The volumes' distinct access-mode sets that include the claim's, fewest first
    // (the PV controller's `allPossibleMatchingAccessModes`).
    let mut sets: Vec<BTreeSet<&str>> = volumes
        .iter()
        .map(|v| volume_modes(v))
        .filter(|m| wanted.is_subset(m))
        .collect();
    sets.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    sets.dedup();
    let requested = requested(claim);
    let class = claim_class(claim);
    for set in sets {
        let mut smallest: Option<(&PersistentVolume, i128)> = None;
        for volume in volumes.iter().filter(|v| volume_modes(v) == set) {
            let volume: &PersistentVolume = volume;
            let has_ref = volume.spec.as_ref().is_some_and(|s| s.claim_ref.is_some());
            if has_ref && !bound_to(volume, claim) {
                continue;
            }
            let size = capacity(volume);
            if size < requested
                || volume_mode_mismatch(claim, volume)
                || volume.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let affinity_ok = node.is_none_or(|n| node_affinity_admits(volume, n));
            if bound_to(volume, claim) {
                return affinity_ok.then_some(volume);
            }
            if node.is_none() && delay_binding {
                continue;
            }
            if phase(volume) != "Available"
                || !selector_matches(claim, volume)
                || volume_class(volume) != class
                || !affinity_ok
            {
                continue;
            }
            if smallest.is_none_or(|(_, s)| s > size) {
                smallest = Some((volume, size));
            }
        }
        if let Some((v, _)) = smallest {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn pv(
        name: &str,
        size: &str,
        modes: &[&str],
        extra: serde_json::Value,
    ) -> Arc<PersistentVolume> {
        let mut v = json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": modes,
                "hostPath": {"path": "/tmp"}},
            "status": {"phase": "Available"},
        });
        merge(&mut v, extra);
        Arc::new(serde_json::from_value(v).expect("pv"))
    }

    fn pvc(size: &str, modes: &[&str], extra: serde_json::Value) -> PersistentVolumeClaim {
        let mut v = json!({
            "metadata": {"name": "c", "namespace": "default", "uid": "u1"},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}},
        });
        merge(&mut v, extra);
        serde_json::from_value(v).expect("pvc")
    }

    fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
            for (k, v) in e {
                match (b.get_mut(&k), v) {
                    (
                        Some(old @ serde_json::Value::Object(_)),
                        v @ serde_json::Value::Object(_),
                    ) => merge(old, v),
                    (_, v) => {
                        b.insert(k, v);
                    }
                }
            }
        }
    }

    fn name(v: Option<&PersistentVolume>) -> Option<&str> {
        v.and_then(|v| v.metadata.name.as_deref())
    }

    #[test]
    fn the_smallest_volume_that_fits_wins() {
        let vols = vec![
            pv("big", "10Gi", &["ReadWriteOnce"], json!({})),
            pv("small", "1Gi", &["ReadWriteOnce"], json!({})),
            pv("tiny", "500Mi", &["ReadWriteOnce"], json!({})),
            pv("mid", "2Gi", &["ReadWriteOnce"], json!({})),
        ];
        let claim = pvc("1Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(
            name(find_best_match(&claim, &vols, false, None)),
            Some("small")
        );
        let claim = pvc("1500Mi", &["ReadWriteOnce"], json!({}));
        assert_eq!(
            name(find_best_match(&claim, &vols, false, None)),
            Some("mid")
        );
        let claim = pvc("11Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(name(find_best_match(&claim, &vols, false, None)), None);
    }

    #[test]
    fn access_modes_class_mode_and_selector_must_fit() {
        let vols = vec![
            pv("rox", "1Gi", &["ReadOnlyMany"], json!({})),
            pv(
                "gold",
                "1Gi",
                &["ReadWriteOnce"],
                json!({"spec": {"storageClassName": "gold"}}),
            ),
            pv(
                "block",
                "1Gi",
                &["ReadWriteOnce"],
                json!({"spec": {"volumeMode": "Block"}}),
            ),
            pv(
                "labelled",
                "5Gi",
                &["ReadWriteOnce"],
                json!({"metadata": {"labels": {"tier": "db"}}}),
            ),
            pv(
                "bound",
                "1Gi",
                &["ReadWriteOnce"],
                json!({"status": {"phase": "Bound"}}),
            ),
        ];
        // No class: only class-less volumes; Filesystem by default; Available only.
        let claim = pvc("1Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(
            name(find_best_match(&claim, &vols, false, None)),
            Some("labelled")
        );
        let claim = pvc("1Gi", &["ReadWriteMany"], json!({}));
        assert_eq!(name(find_best_match(&claim, &vols, false, None)), None);
        let claim = pvc(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"storageClassName": "gold"}}),
        );
        assert_eq!(
            name(find_best_match(&claim, &vols, false, None)),
            Some("gold")
        );
        let claim = pvc(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"volumeMode": "Block"}}),
        );
        assert_eq!(
            name(find_best_match(&claim, &vols, false, None)),
            Some("block")
        );
        let claim = pvc(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"selector": {"matchLabels": {"tier": "web"}}}}),
        );
        assert_eq!(name(find_best_match(&claim, &vols, false, None)), None);
        let claim = pvc(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"selector":
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]}}}),
        );
        assert_eq!(
            name(find_best_match(&claim, &vols, false, None)),
            Some("labelled")
        );
        // The beta class annotation counts as the class.
        let claim = pvc(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"metadata": {"annotations": {"volume.beta.kubernetes.io/storage-class": "gold"}}}),
        );
        assert_eq!(
            name(find_best_match(&claim, &vols, false, None)),
            Some("gold")
        );
    }

    #[test]
    fn fewer_access_modes_are_preferred_over_a_smaller_volume() {
        let vols = vec![
            pv(
                "many",
                "1Gi",
                &["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
                json!({}),
            ),
            pv("one", "5Gi", &["ReadWriteOnce"], json!({})),
        ];
        let claim = pvc("1Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(
            name(find_best_match(&claim, &vols, false, None)),
            Some("one")
        );
    }

    #[test]
    fn pre_bound_volumes_win_and_are_found_under_delayed_binding() {
        let r = |uid: Option<&str>| {
            json!({"spec": {"claimRef":
            {"namespace": "default", "name": "c", "uid": uid}}, "status": {"phase": "Available"}})
        };
        let vols = vec![
            pv("exact", "1Gi", &["ReadWriteOnce"], json!({})),
            pv("mine", "9Gi", &["ReadWriteOnce"], r(None)),
        ];
        let claim = pvc("1Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(
            name(find_best_match(&claim, &vols, false, None)),
            Some("mine")
        );
        assert_eq!(
            name(find_best_match(&claim, &vols, true, None)),
            Some("mine")
        );
        // Reserved for another claim (another uid): not ours.
        let vols = vec![pv("theirs", "1Gi", &["ReadWriteOnce"], r(Some("u2")))];
        assert_eq!(name(find_best_match(&claim, &vols, false, None)), None);
        // Delayed binding without a node: unreserved volumes wait.
        let vols = vec![pv("free", "1Gi", &["ReadWriteOnce"], json!({}))];
        assert_eq!(name(find_best_match(&claim, &vols, true, None)), None);
    }

    #[test]
    fn a_selected_node_filters_by_node_affinity() {
        let affinity = |node: &str| {
            json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms":
            [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})
        };
        let vols = vec![
            pv("on-a", "1Gi", &["ReadWriteOnce"], affinity("a")),
            pv("on-b", "2Gi", &["ReadWriteOnce"], affinity("b")),
        ];
        let node: Node = serde_json::from_value(
            json!({"metadata": {"name": "b", "labels": {"kubernetes.io/hostname": "b"}}}),
        )
        .expect("node");
        let claim = pvc("1Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(
            name(find_best_match(&claim, &vols, true, Some(&node))),
            Some("on-b")
        );
    }

    #[test]
    fn a_named_volume_is_checked_in_upstream_order() {
        let claim = pvc("2Gi", &["ReadWriteMany"], json!({}));
        let small = pv("v", "1Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(
            check_satisfies(&small, &claim),
            Err("requested PV is too small")
        );
        let modes = pv("v", "2Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(
            check_satisfies(&modes, &claim),
            Err("incompatible accessMode")
        );
        let class = pv(
            "v",
            "2Gi",
            &["ReadWriteMany"],
            json!({"spec": {"storageClassName": "x"}}),
        );
        assert_eq!(
            check_satisfies(&class, &claim),
            Err("storageClassName does not match")
        );
        let ok = pv("v", "2Gi", &["ReadWriteMany"], json!({}));
        assert_eq!(check_satisfies(&ok, &claim), Ok(()));
    }
}
