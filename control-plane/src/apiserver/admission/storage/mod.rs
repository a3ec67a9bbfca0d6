//! Storage admission: the DefaultStorageClass plugin (a claim created without
//! `storageClassName` gets the default class — the newest when several are marked
//! default, as Kubernetes 1.26+), StorageObjectInUseProtection (the
//! `kubernetes.io/pvc-protection` and `kubernetes.io/pv-protection` finalizers at
//! create), PersistentVolumeClaimResize (growing a claim needs a bound claim whose
//! class allows expansion: 403 otherwise), and the PersistentVolume and claim
//! strategies' status handling. The 422 validation of PersistentVolumes, claims and
//! StorageClasses is in [`validation`].
//!
//! Entry points: [`admit_create`], [`admit_update`] and [`prepare_volume_status`]
//! (with the cache where they need it), [`validation::validate`] and
//! [`validation::validate_update`] (called by `admission::validation`).

pub mod validation;

use serde_json::{Value, json};

use crate::apiserver::object::now;
use crate::apiserver::status::ApiError;
use crate::apiserver::watch_cache::WatchCache;
use crate::scheduler::quantity::parse_milli;

const CLASSES: &str = "/registry/storage.k8s.io/storageclasses/";
pub const IS_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const BETA_IS_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";
const BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn is_default(class: &Value) -> bool {
    let a = |k: &str| {
        class
            .pointer("/metadata/annotations")
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            == Some("true")
    };
    a(IS_DEFAULT_CLASS) || a(BETA_IS_DEFAULT_CLASS)
}

/// The default StorageClass: of several, the newest (then the first by name), as
/// upstream's `GetDefaultClass`.
pub fn default_class(cache: &WatchCache) -> Option<String> {
    let (items, _) = cache.list(CLASSES, |_| true);
    let mut defaults: Vec<(String, String)> = items
        .iter()
        .map(|o| o.value())
        .filter(is_default)
        .map(|c| {
            (
                str_at(&c, "/metadata/creationTimestamp")
                    .unwrap_or_default()
                    .to_owned(),
                str_at(&c, "/metadata/name").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    defaults.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    defaults.into_iter().next().map(|(_, name)| name)
}

fn add_finalizer(obj: &mut Value, f: &str) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(a) = list.as_array_mut()
        && !a.iter().any(|x| x == f)
    {
        a.push(json!(f));
    }
}

/// What happens to a new PersistentVolumeClaim or PersistentVolume before it is
/// validated: the default class for a claim that names none (an explicit `""` stays),
/// the protection finalizers, and a fresh Pending status (the strategies'
/// PrepareForCreate: a client cannot create a claim or volume already Bound).
pub fn admit_create(cache: &WatchCache, kind: &str, obj: &mut Value) {
    match kind {
        "PersistentVolumeClaim" => {
            let unset = obj
                .pointer("/spec/storageClassName")
                .is_none_or(Value::is_null)
                && obj
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(BETA_STORAGE_CLASS))
                    .is_none();
            if unset
                && let Some(class) = default_class(cache)
                && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
            {
                spec.insert("storageClassName".into(), json!(class));
            }
            add_finalizer(obj, PVC_PROTECTION);
            // The claim strategy's PrepareForCreate: status starts over.
            if let Some(o) = obj.as_object_mut() {
                o.insert("status".into(), json!({"phase": "Pending"}));
            }
        }
        "PersistentVolume" => {
            add_finalizer(obj, PV_PROTECTION);
            // The PersistentVolume strategy's PrepareForCreate: status starts over.
            if let Some(o) = obj.as_object_mut() {
                o.insert(
                    "status".into(),
                    json!({"phase": "Pending", "lastPhaseTransitionTime": now()}),
                );
            }
        }
        _ => {}
    }
}

/// A PersistentVolume's status write: a changed phase stamps
/// `lastPhaseTransitionTime` unless the writer set a new one (the PersistentVolume
/// status strategy's PrepareForUpdate), so every writer's change counts.
pub fn prepare_volume_status(old: &Value, new: &mut Value) {
    let phase = |v: &Value| v.pointer("/status/phase").cloned();
    let stamp = |v: &Value| v.pointer("/status/lastPhaseTransitionTime").cloned();
    if phase(old) != phase(new)
        && (stamp(new).is_none_or(|t| t.is_null()) || stamp(new) == stamp(old))
        && let Some(status) = new.get_mut("status").and_then(Value::as_object_mut)
    {
        status.insert("lastPhaseTransitionTime".into(), json!(now()));
    }
}

fn storage(v: &Value, ptr: &str) -> Option<i128> {
    match v.pointer(ptr)? {
        Value::String(s) => parse_milli(s),
        Value::Number(n) => parse_milli(&n.to_string()),
        _ => None,
    }
}

/// A claim's storage class: the beta annotation, else `spec.storageClassName`.
pub fn claim_class(claim: &Value) -> &str {
    claim
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(BETA_STORAGE_CLASS))
        .and_then(Value::as_str)
        .or_else(|| str_at(claim, "/spec/storageClassName"))
        .unwrap_or_default()
}

/// PersistentVolumeClaimResize: a claim may only grow when it is bound and its class
/// has `allowVolumeExpansion: true`.
pub fn admit_update(cache: &WatchCache, old: &Value, new: &Value) -> Result<(), ApiError> {
    let (Some(new_size), old_size) = (
        storage(new, "/spec/resources/requests/storage"),
        storage(old, "/spec/resources/requests/storage").unwrap_or(0),
    ) else {
        return Ok(());
    };
    if new_size <= old_size {
        return Ok(());
    }
    let name = str_at(new, "/metadata/name").unwrap_or_default();
    let forbidden = |why: &str| {
        Err(ApiError::forbidden(format!(
            "persistentvolumeclaims \"{name}\" is forbidden: {why}"
        )))
    };
    if str_at(old, "/status/phase") != Some("Bound") {
        return forbidden("Only bound persistent volume claims can be expanded");
    }
    let (class, old_class) = (claim_class(new), claim_class(old));
    let allowed = !class.is_empty()
        && class == old_class
        && cache
            .get(&format!("{CLASSES}{class}"))
            .is_some_and(|c| c.value().get("allowVolumeExpansion") == Some(&json!(true)));
    if !allowed {
        return forbidden(
            "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_volume_phase_change_stamps_its_transition_time() {
        let old = json!({"status": {"phase": "Available", "lastPhaseTransitionTime": "2020-01-01T00:00:00Z"}});
        let mut new = json!({"status": {"phase": "Bound", "lastPhaseTransitionTime": "2020-01-01T00:00:00Z"}});
        prepare_volume_status(&old, &mut new);
        assert_ne!(
            new["status"]["lastPhaseTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        // The writer's own new stamp stands; no phase change, no stamp.
        let mut own = json!({"status": {"phase": "Bound", "lastPhaseTransitionTime": "2021-01-01T00:00:00Z"}});
        prepare_volume_status(&old, &mut own);
        assert_eq!(
            own["status"]["lastPhaseTransitionTime"],
            "2021-01-01T00:00:00Z"
        );
        let mut same = old.clone();
        prepare_volume_status(&old, &mut same);
        assert_eq!(same, old);
    }
}
