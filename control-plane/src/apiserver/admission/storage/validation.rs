//! The 422 validation of PersistentVolumes, PersistentVolumeClaims and
//! StorageClasses, with upstream's field paths and messages
//! (`pkg/apis/core/validation`, `pkg/apis/storage/validation`): what a new object must
//! have ([`validate`]) and what may not change ([`validate_update`]).

use serde_json::{Value, json};

use super::super::validation::{
    dns_subdomain_msg, is_dns_subdomain, qualified_name_error, unsupported,
};
use super::{BETA_STORAGE_CLASS, storage, str_at};
use crate::apiserver::status::Cause;
use crate::scheduler::quantity::parse_milli;

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// The fields of a PersistentVolume's spec that are not its volume source.
const NOT_SOURCE: &[&str] = &[
    "accessModes",
    "capacity",
    "claimRef",
    "persistentVolumeReclaimPolicy",
    "storageClassName",
    "mountOptions",
    "volumeMode",
    "nodeAffinity",
    "volumeAttributesClassName",
];

fn access_modes(spec: &Value, path: &str, required_msg: &str, causes: &mut Vec<Cause>) {
    let modes: Vec<&str> = spec
        .get("accessModes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if modes.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: format!("{path}.accessModes"),
            message: if required_msg.is_empty() {
                "Required value".into()
            } else {
                format!("Required value: {required_msg}")
            },
        });
    }
    for m in &modes {
        if !ACCESS_MODES.contains(m) {
            causes.push(unsupported(&format!("{path}.accessModes"), m, ACCESS_MODES));
        }
    }
    if modes.contains(&"ReadWriteOncePod") && modes.len() > 1 {
        causes.push(Cause::forbidden(
            format!("{path}.accessModes"),
            "Forbidden: may not use ReadWriteOncePod with other access modes",
        ));
    }
}

fn class_name(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(c) = spec.get("storageClassName").and_then(Value::as_str)
        && !c.is_empty()
        && !is_dns_subdomain(c)
    {
        causes.push(Cause::invalid(
            format!("{path}.storageClassName"),
            dns_subdomain_msg(c),
        ));
    }
}

fn volume_mode(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(m) = spec.get("volumeMode").and_then(Value::as_str)
        && !matches!(m, "Block" | "Filesystem")
    {
        causes.push(unsupported(
            &format!("{path}.volumeMode"),
            m,
            &["Block", "Filesystem"],
        ));
    }
}

fn persistent_volume(spec: &Value, causes: &mut Vec<Cause>) {
    access_modes(spec, "spec", "", causes);
    match spec.get("capacity").and_then(Value::as_object) {
        None => causes.push(Cause::required("spec.capacity")),
        Some(c) if c.is_empty() => causes.push(Cause::required("spec.capacity")),
        Some(c) => {
            if !c.contains_key("storage") || c.len() > 1 {
                let keys: Vec<&str> = c.keys().map(String::as_str).collect();
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    field: "spec.capacity".into(),
                    message: format!(
                        "Unsupported value: \"{}\": supported values: \"storage\"",
                        keys.join(",")
                    ),
                });
            }
            if let Some(q) = c.get("storage") {
                let text = q.as_str().map_or_else(|| q.to_string(), str::to_owned);
                match parse_milli(&text) {
                    None => causes.push(Cause::invalid(
                        "spec.capacity[storage]",
                        format!("Invalid value: \"{text}\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
                    )),
                    Some(n) if n < 0 => causes.push(Cause::invalid(
                        "spec.capacity[storage]",
                        format!("Invalid value: \"{text}\": must be greater than or equal to 0"),
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    if let Some(p) = spec
        .get("persistentVolumeReclaimPolicy")
        .and_then(Value::as_str)
        && !matches!(p, "Delete" | "Recycle" | "Retain")
    {
        causes.push(unsupported(
            "spec.persistentVolumeReclaimPolicy",
            p,
            &["Delete", "Recycle", "Retain"],
        ));
    }
    class_name(spec, "spec", causes);
    volume_mode(spec, "spec", causes);
    let sources: Vec<&str> = spec
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, v)| !NOT_SOURCE.contains(&k.as_str()) && !v.is_null())
                .map(|(k, _)| k.as_str())
                .collect()
        })
        .unwrap_or_default();
    match sources.as_slice() {
        [] => causes.push(Cause {
            reason: "FieldValueRequired",
            field: "spec".into(),
            message: "Required value: must specify a volume type".into(),
        }),
        [_] => {}
        [_, rest @ ..] => {
            for s in rest {
                causes.push(Cause::forbidden(
                    format!("spec.{s}"),
                    "Forbidden: may not specify more than 1 volume type",
                ));
            }
        }
    }
    let empty = |ptr: &str| str_at(spec, ptr).is_none_or(str::is_empty);
    if spec.get("hostPath").is_some() && empty("/hostPath/path") {
        causes.push(Cause::required("spec.hostPath.path"));
    }
    if spec.get("local").is_some() {
        if empty("/local/path") {
            causes.push(Cause::required("spec.local.path"));
        }
        if spec.get("nodeAffinity").is_none_or(Value::is_null) {
            causes.push(Cause {
                reason: "FieldValueRequired",
                field: "spec.nodeAffinity".into(),
                message: "Required value: Local volume requires node affinity".into(),
            });
        }
    }
    if spec.get("csi").is_some() {
        if empty("/csi/driver") {
            causes.push(Cause::required("spec.csi.driver"));
        }
        if empty("/csi/volumeHandle") {
            causes.push(Cause::required("spec.csi.volumeHandle"));
        }
    }
}

fn claim_spec(spec: &Value, causes: &mut Vec<Cause>) {
    access_modes(spec, "spec", "at least 1 access mode is required", causes);
    match spec.pointer("/resources/requests/storage") {
        None => causes.push(Cause::required("spec.resources[storage]")),
        Some(q) => {
            let text = q.as_str().map_or_else(|| q.to_string(), str::to_owned);
            match parse_milli(&text) {
                Some(n) if n > 0 => {}
                Some(_) => causes.push(Cause::invalid(
                    "spec.resources[storage]",
                    format!("Invalid value: \"{text}\": must be greater than zero"),
                )),
                None => causes.push(Cause::invalid(
                    "spec.resources[storage]",
                    format!("Invalid value: \"{text}\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
                )),
            }
        }
    }
    class_name(spec, "spec", causes);
    volume_mode(spec, "spec", causes);
}

fn storage_class(obj: &Value, causes: &mut Vec<Cause>) {
    match obj.get("provisioner").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("provisioner")),
        Some(p) => {
            if p.len() > 63 {
                causes.push(Cause {
                    reason: "FieldValueTooLong",
                    field: "provisioner".into(),
                    message: format!(
                        "Too long: may not be more than 63 bytes (found {})",
                        p.len()
                    ),
                });
            } else if let Some(msg) = qualified_name_error(&p.to_lowercase()) {
                causes.push(Cause::invalid("provisioner", msg));
            }
        }
    }
    if let Some(params) = obj.get("parameters").and_then(Value::as_object) {
        if params.len() > 512 {
            causes.push(Cause {
                reason: "FieldValueTooMany",
                field: "parameters".into(),
                message: format!("Too many: {}: must have at most 512 items", params.len()),
            });
        }
        let mut total = 0;
        for (k, v) in params {
            if k.is_empty() {
                causes.push(Cause::invalid(
                    "parameters",
                    "Invalid value: \"\": field can not be empty.",
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "parameters".into(),
                message: format!("Too long: may not be more than 262144 bytes (found {total})"),
            });
        }
    }
    if let Some(p) = obj.get("reclaimPolicy").and_then(Value::as_str)
        && !matches!(p, "Delete" | "Retain")
    {
        causes.push(unsupported("reclaimPolicy", p, &["Delete", "Retain"]));
    }
    if let Some(m) = obj.get("volumeBindingMode").and_then(Value::as_str)
        && !matches!(m, "Immediate" | "WaitForFirstConsumer")
    {
        causes.push(unsupported(
            "volumeBindingMode",
            m,
            &["Immediate", "WaitForFirstConsumer"],
        ));
    }
}

/// The kind-specific checks of a whole object.
pub fn validate(kind: &str, obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match kind {
        "PersistentVolume" => persistent_volume(spec, causes),
        "PersistentVolumeClaim" => claim_spec(spec, causes),
        "StorageClass" => storage_class(obj, causes),
        _ => {}
    }
}

fn immutable(field: &str, new: Option<&Value>, causes: &mut Vec<Cause>) {
    let shown = match new {
        Some(Value::String(s)) => format!("\"{s}\""),
        Some(v) => v.to_string(),
        None => "null".into(),
    };
    causes.push(Cause::invalid(
        field,
        format!("Invalid value: {shown}: field is immutable"),
    ));
}

/// What may not change on update.
pub fn validate_update(kind: &str, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    match kind {
        "PersistentVolumeClaim" => claim_update(old, new, causes),
        "PersistentVolume" => {
            let source = |o: &Value| {
                let mut spec = o.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(m) = spec.as_object_mut() {
                    m.retain(|k, _| !NOT_SOURCE.contains(&k.as_str()));
                }
                spec
            };
            if source(old) != source(new) {
                causes.push(Cause::forbidden(
                    "spec.persistentvolumesource",
                    "Forbidden: spec.persistentvolumesource is immutable after creation",
                ));
            }
            if old.pointer("/spec/volumeMode") != new.pointer("/spec/volumeMode") {
                immutable("volumeMode", new.pointer("/spec/volumeMode"), causes);
            }
            if old
                .pointer("/spec/nodeAffinity")
                .is_some_and(|a| !a.is_null())
                && old.pointer("/spec/nodeAffinity") != new.pointer("/spec/nodeAffinity")
            {
                immutable("nodeAffinity", new.pointer("/spec/nodeAffinity"), causes);
            }
        }
        "StorageClass" => {
            if old.get("parameters") != new.get("parameters") {
                causes.push(Cause::forbidden(
                    "parameters",
                    "Forbidden: updates to parameters are forbidden.",
                ));
            }
            if old.get("provisioner") != new.get("provisioner") {
                causes.push(Cause::forbidden(
                    "provisioner",
                    "Forbidden: updates to provisioner are forbidden.",
                ));
            }
            if old.get("reclaimPolicy") != new.get("reclaimPolicy") {
                causes.push(Cause::forbidden(
                    "reclaimPolicy",
                    "Forbidden: updates to reclaimPolicy are forbidden.",
                ));
            }
            if old.get("volumeBindingMode") != new.get("volumeBindingMode") {
                immutable("volumeBindingMode", new.get("volumeBindingMode"), causes);
            }
        }
        _ => {}
    }
}

/// `ValidatePersistentVolumeClaimUpdate`: the spec is fixed but for the binder's
/// `volumeName` (once), a class set on a claim that had none (retroactive default
/// class), and — for a bound claim — the storage request; a request may not shrink to
/// or below the capacity the claim has.
fn claim_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let mut old_spec = old.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut new_spec = new.get("spec").cloned().unwrap_or_else(|| json!({}));
    let (Some(o), Some(n)) = (old_spec.as_object_mut(), new_spec.as_object_mut()) else {
        return;
    };
    if o.get("volumeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        match n.get("volumeName") {
            Some(v) => o.insert("volumeName".into(), v.clone()),
            None => o.remove("volumeName"),
        };
    }
    let old_beta = old
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(BETA_STORAGE_CLASS));
    let new_beta = new
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(BETA_STORAGE_CLASS));
    if old_beta != new_beta {
        immutable(
            &format!("metadata.annotations[{BETA_STORAGE_CLASS}]"),
            new_beta,
            causes,
        );
    }
    if old_beta.is_none()
        && o.get("storageClassName").is_none_or(Value::is_null)
        && let Some(c) = n.get("storageClassName")
    {
        o.insert("storageClassName".into(), c.clone());
    }
    if str_at(new, "/status/phase") == Some("Bound") {
        let old_request = old.pointer("/spec/resources/requests/storage").cloned();
        if let Some(requests) = n
            .get_mut("resources")
            .and_then(|r| r.get_mut("requests"))
            .and_then(Value::as_object_mut)
        {
            match old_request {
                Some(q) => requests.insert("storage".into(), q),
                None => requests.remove("storage"),
            };
        }
        match old.pointer("/spec/volumeAttributesClassName") {
            Some(v) => n.insert("volumeAttributesClassName".into(), v.clone()),
            None => n.remove("volumeAttributesClassName"),
        };
    }
    if old_spec != new_spec {
        causes.push(Cause::forbidden(
            "spec",
            "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
    let (Some(new_size), Some(old_size)) = (
        storage(new, "/spec/resources/requests/storage"),
        storage(old, "/spec/resources/requests/storage"),
    ) else {
        return;
    };
    let status_size = storage(old, "/status/capacity/storage").unwrap_or(0);
    if new_size < old_size && new_size <= status_size {
        causes.push(Cause::forbidden(
            "spec.resources.requests.storage",
            "Forbidden: field can not be less than status.capacity",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(causes: &[Cause]) -> Vec<String> {
        causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn volumes_claims_and_classes_are_validated_with_field_paths() {
        let mut causes = Vec::new();
        validate(
            "PersistentVolume",
            &json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce", "Sometimes"],
                "persistentVolumeReclaimPolicy": "Keep"}}),
            &mut causes,
        );
        let f = fields(&causes);
        assert!(
            f.iter()
                .any(|c| c.starts_with("spec.accessModes: Unsupported value: \"Sometimes\"")),
            "{f:?}"
        );
        assert!(
            f.iter()
                .any(|c| c.starts_with("spec.persistentVolumeReclaimPolicy: Unsupported")),
            "{f:?}"
        );
        assert!(
            f.contains(&"spec: Required value: must specify a volume type".to_owned()),
            "{f:?}"
        );

        let mut causes = Vec::new();
        validate(
            "PersistentVolumeClaim",
            &json!({"spec": {"resources": {"requests": {"storage": "0"}}}}),
            &mut causes,
        );
        let f = fields(&causes);
        assert!(
            f.contains(
                &"spec.accessModes: Required value: at least 1 access mode is required".to_owned()
            ),
            "{f:?}"
        );
        assert!(
            f.contains(
                &"spec.resources[storage]: Invalid value: \"0\": must be greater than zero"
                    .to_owned()
            ),
            "{f:?}"
        );

        let mut causes = Vec::new();
        validate(
            "StorageClass",
            &json!({"reclaimPolicy": "Recycle", "volumeBindingMode": "Later"}),
            &mut causes,
        );
        let f = fields(&causes);
        assert!(
            f.contains(&"provisioner: Required value".to_owned()),
            "{f:?}"
        );
        assert!(
            f.iter()
                .any(|c| c.starts_with("reclaimPolicy: Unsupported value: \"Recycle\"")),
            "{f:?}"
        );
        assert!(
            f.iter()
                .any(|c| c.starts_with("volumeBindingMode: Unsupported")),
            "{f:?}"
        );
    }

    #[test]
    fn claim_updates_allow_binding_and_growth_only() {
        let old = json!({"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "local"},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}});
        // The binder sets volumeName once.
        let mut bound = old.clone();
        bound["spec"]["volumeName"] = json!("pv1");
        let mut causes = Vec::new();
        validate_update("PersistentVolumeClaim", &old, &bound, &mut causes);
        assert!(causes.is_empty(), "{:?}", fields(&causes));
        // Growth of a bound claim passes validation (admission checks the class).
        let mut grown = bound.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        let mut causes = Vec::new();
        validate_update("PersistentVolumeClaim", &bound, &grown, &mut causes);
        assert!(causes.is_empty(), "{:?}", fields(&causes));
        // Shrinking to the capacity is refused.
        let mut causes = Vec::new();
        validate_update("PersistentVolumeClaim", &grown, &bound, &mut causes);
        assert_eq!(
            fields(&causes),
            [
                "spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"
            ]
        );
        // Anything else in the spec is fixed.
        let mut modes = bound.clone();
        modes["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        let mut causes = Vec::new();
        validate_update("PersistentVolumeClaim", &bound, &modes, &mut causes);
        assert_eq!(
            fields(&causes),
            [
                "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"
            ]
        );
        // A Pending claim may not change its request either.
        let mut pending = old.clone();
        pending["status"] = json!({"phase": "Pending"});
        let mut bigger = pending.clone();
        bigger["spec"]["resources"]["requests"]["storage"] = json!("5Gi");
        let mut causes = Vec::new();
        validate_update("PersistentVolumeClaim", &pending, &bigger, &mut causes);
        assert_eq!(causes.len(), 1, "{:?}", fields(&causes));
    }

    #[test]
    fn class_parameters_and_provisioner_are_immutable() {
        let old = json!({"provisioner": "csi.berth.io", "parameters": {"a": "1"}, "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate"});
        let mut new = old.clone();
        new["parameters"]["a"] = json!("2");
        new["provisioner"] = json!("other.io");
        let mut causes = Vec::new();
        validate_update("StorageClass", &old, &new, &mut causes);
        assert_eq!(
            fields(&causes),
            [
                "parameters: Forbidden: updates to parameters are forbidden.",
                "provisioner: Forbidden: updates to provisioner are forbidden."
            ]
        );
    }
}
