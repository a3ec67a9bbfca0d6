//! JSON as kube-apiserver writes it: the fields of an object in the order of its Go
//! struct, not alphabetically. Go's `encoding/json` writes struct fields in declaration
//! order (`kind`, `apiVersion`, `metadata`, then `spec`, `status`, or `data`, `items`,
//! …) and map keys sorted; clients and tests that compare bytes or error positions see
//! that order.
//!
//! berth keeps `serde_json` without `preserve_order`, so a `Map` iterates sorted. Turning
//! `preserve_order` on workspace-wide would not give Go's order anyway (it would give
//! the order a client or a controller happened to insert) and would change every map in
//! every crate. Instead, objects are written through [`to_vec`] where they leave the
//! apiserver or enter the store ([`super::object::encode`]): `kind`, `apiVersion`,
//! `metadata` (in `ObjectMeta` order, with `ownerReferences[]` and `managedFields[]`),
//! then — for every built-in kind — the rest in Go struct order all the way down, from
//! the kind's protobuf message and the Go declaration order `cargo xtask vendor-proto`
//! records in `go-fields.txt` ([`super::protobuf::json_fields`]); maps sorted, as Go.
//! Kinds without a message (custom resources, Tables) use the small tables below for
//! their top level and serde_json's sorted order inside.

use serde_json::{Map, Value};

use super::protobuf::{self, JsonFields, Shape};

/// `ObjectMeta` (k8s.io/apimachinery/pkg/apis/meta/v1/types.go), and `ListMeta`'s
/// `continue` / `remainingItemCount` after `resourceVersion`.
pub const OBJECT_META: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "continue",
    "remainingItemCount",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// `metadata` fields written before `resourceVersion` (all strings): where the
/// revision is spliced into stored bytes.
pub const BEFORE_RESOURCE_VERSION: &[&str] =
    &["name", "generateName", "namespace", "selfLink", "uid"];

const OWNER_REFERENCE: &[&str] = &[
    "apiVersion",
    "kind",
    "name",
    "uid",
    "controller",
    "blockOwnerDeletion",
];

const MANAGED_FIELDS_ENTRY: &[&str] = &[
    "manager",
    "operation",
    "apiVersion",
    "time",
    "fieldsType",
    "fieldsV1",
    "subresource",
];

/// The fields of a kind after `kind`, `apiVersion`, `metadata`, in Go struct order.
/// Kinds not listed have `spec`, `status` (or `items` for lists); fields a table does
/// not name come after, sorted.
fn body_fields(kind: &str, api_version: &str) -> &'static [&'static str] {
    match (kind, api_version) {
        ("Status", _) => &["status", "message", "reason", "details", "code"],
        ("ConfigMap", _) => &["immutable", "data", "binaryData"],
        ("Secret", _) => &["immutable", "data", "stringData", "type"],
        ("Event", "v1") => &[
            "involvedObject",
            "reason",
            "message",
            "source",
            "firstTimestamp",
            "lastTimestamp",
            "count",
            "type",
            "eventTime",
            "series",
            "action",
            "related",
            "reportingComponent",
            "reportingInstance",
        ],
        ("Event", _) => &[
            "eventTime",
            "series",
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
            "regarding",
            "related",
            "note",
            "type",
            "deprecatedSource",
            "deprecatedFirstTimestamp",
            "deprecatedLastTimestamp",
            "deprecatedCount",
        ],
        ("Endpoints", _) => &["subsets"],
        ("EndpointSlice", _) => &["addressType", "endpoints", "ports"],
        ("ServiceAccount", _) => &[
            "secrets",
            "imagePullSecrets",
            "automountServiceAccountToken",
        ],
        ("Role" | "ClusterRole", _) => &["rules", "aggregationRule"],
        ("RoleBinding" | "ClusterRoleBinding", _) => &["subjects", "roleRef"],
        ("StorageClass", _) => &[
            "provisioner",
            "parameters",
            "reclaimPolicy",
            "mountOptions",
            "allowVolumeExpansion",
            "volumeBindingMode",
            "allowedTopologies",
        ],
        ("PriorityClass", _) => &["value", "globalDefault", "description", "preemptionPolicy"],
        ("Table", _) => &["columnDefinitions", "rows"],
        (k, _) if k.ends_with("List") => &["items"],
        _ => &["spec", "status"],
    }
}

/// Position of `key` in `order`, unknown keys last (then sorted by name by the caller).
fn rank(order: &[&str], key: &str) -> usize {
    order.iter().position(|k| *k == key).unwrap_or(usize::MAX)
}

/// `map`'s entries in `order` (a stable sort: unknown keys keep serde_json's sorted order).
fn ordered<'a>(map: &'a Map<String, Value>, order: &[&str]) -> Vec<(&'a String, &'a Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by_key(|(k, _)| rank(order, k));
    entries
}

/// Writes `"key":` (with a comma unless first).
fn key(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, key);
    out.push(b':');
}

fn plain(out: &mut Vec<u8>, value: &Value) {
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Writes a map in `order`, leaving out `skip`; `nested` writes a known field's value.
fn write_map(
    out: &mut Vec<u8>,
    map: &Map<String, Value>,
    order: &[&str],
    skip: Option<&str>,
    nested: &dyn Fn(&mut Vec<u8>, &str, &Value),
) {
    out.push(b'{');
    let mut first = true;
    for (k, v) in ordered(map, order) {
        if Some(k.as_str()) == skip {
            continue;
        }
        key(out, &mut first, k);
        nested(out, k, v);
    }
    out.push(b'}');
}

/// An array of objects each written in `order` (anything else as it is).
fn write_items(out: &mut Vec<u8>, value: &Value, order: &[&str]) {
    let Some(items) = value.as_array() else {
        return plain(out, value);
    };
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match item.as_object() {
            Some(m) => write_map(out, m, order, None, &|out, _, v| plain(out, v)),
            None => plain(out, item),
        }
    }
    out.push(b']');
}

/// Writes `metadata` in `ObjectMeta` order, without `skip` (the store leaves out
/// `resourceVersion`).
pub fn write_meta(out: &mut Vec<u8>, meta: &Value, skip: Option<&str>) {
    let Some(map) = meta.as_object() else {
        return plain(out, meta);
    };
    write_map(out, map, OBJECT_META, skip, &|out, k, v| match k {
        "ownerReferences" => write_items(out, v, OWNER_REFERENCE),
        "managedFields" => write_items(out, v, MANAGED_FIELDS_ENTRY),
        _ => plain(out, v),
    });
}

/// Writes a message's JSON in its Go struct order ([`protobuf::json_fields`]), nested
/// messages too; keys it does not know come last, sorted.
fn write_message(out: &mut Vec<u8>, value: &Value, fields: &JsonFields) {
    let Some(map) = value.as_object() else {
        return plain(out, value);
    };
    out.push(b'{');
    write_fields(out, map, fields, &[], &mut true);
    out.push(b'}');
}

/// The fields of `map` but `skip`, in `fields`' order and unknown ones after, into an
/// object already open (`first`: nothing written in it yet). An object sets few of its
/// message's fields, so each of its keys is placed, rather than each field looked up.
fn write_fields(
    out: &mut Vec<u8>,
    map: &Map<String, Value>,
    fields: &JsonFields,
    skip: &[&str],
    first: &mut bool,
) {
    let mut known = Vec::with_capacity(map.len());
    let mut unknown = false;
    for (k, v) in map {
        if skip.contains(&k.as_str()) {
            continue;
        }
        match fields.place(k) {
            Some(place) => known.push((place, k, v)),
            None => unknown = true,
        }
    }
    known.sort_unstable_by_key(|(place, _, _)| *place);
    for (place, k, v) in known {
        key(out, first, k);
        write_shaped(out, v, &fields.list()[place].shape);
    }
    if unknown {
        for (k, v) in map {
            if !skip.contains(&k.as_str()) && fields.place(k).is_none() {
                key(out, first, k);
                plain(out, v);
            }
        }
    }
}

fn write_shaped(out: &mut Vec<u8>, value: &Value, shape: &Shape) {
    match (shape, value) {
        (Shape::Message(m), Value::Object(_)) => {
            write_message(out, value, &protobuf::json_fields(m))
        }
        (Shape::List(m), Value::Array(items)) => {
            let fields = protobuf::json_fields(m);
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_message(out, item, &fields);
            }
            out.push(b']');
        }
        (Shape::Map(m), Value::Object(map)) => {
            // Go writes map keys sorted, as serde_json's map iterates.
            let fields = protobuf::json_fields(m);
            out.push(b'{');
            let mut first = true;
            for (k, v) in map {
                key(out, &mut first, k);
                write_message(out, v, &fields);
            }
            out.push(b'}');
        }
        _ => plain(out, value),
    }
}

/// Writes an object in upstream order; `meta_skip` is left out of its `metadata`.
pub fn write_object(out: &mut Vec<u8>, value: &Value, meta_skip: Option<&str>) {
    let Some(map) = value.as_object() else {
        return plain(out, value);
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // A built-in kind (not a list): its message gives Go's order all the way down.
    if !kind.ends_with("List")
        && let Some(desc) = protobuf::message_for(api_version, kind)
    {
        out.push(b'{');
        let mut first = true;
        for k in ["kind", "apiVersion"] {
            if let Some(v) = map.get(k) {
                key(out, &mut first, k);
                plain(out, v);
            }
        }
        if let Some(meta) = map.get("metadata") {
            key(out, &mut first, "metadata");
            write_meta(out, meta, meta_skip);
        }
        // The rest in the message's order (TypeMeta and metadata are written above).
        let fields = protobuf::json_fields(&desc);
        write_fields(
            out,
            map,
            &fields,
            &["kind", "apiVersion", "metadata"],
            &mut first,
        );
        out.push(b'}');
        return;
    }
    let body = body_fields(kind, api_version);
    out.push(b'{');
    let mut first = true;
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by_key(|(k, _)| match k.as_str() {
        "kind" => 0,
        "apiVersion" => 1,
        "metadata" => 2,
        other => rank(body, other).saturating_add(3),
    });
    let is_list = body == ["items"];
    for (k, v) in entries {
        key(out, &mut first, k);
        match k.as_str() {
            "metadata" => write_meta(out, v, meta_skip),
            // List items and a Status's nested objects are objects of their own.
            "items" if is_list => match v.as_array() {
                Some(items) => {
                    out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write_object(out, item, None);
                    }
                    out.push(b']');
                }
                None => plain(out, v),
            },
            _ => plain(out, v),
        }
    }
    out.push(b'}');
}

/// `value` as JSON in kube-apiserver's field order.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write_object(&mut out, value, None);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(v: &Value) -> String {
        String::from_utf8(to_vec(v)).expect("utf8")
    }

    #[test]
    fn an_object_starts_with_kind_api_version_metadata_then_spec_status() {
        let pod = json!({"status": {"phase": "Pending"}, "spec": {"b": 1, "a": 2},
            "metadata": {"uid": "u", "namespace": "ns", "name": "p", "labels": {"z": "1", "a": "2"},
                "creationTimestamp": "t", "resourceVersion": "5"},
            "apiVersion": "v1", "kind": "Pod"});
        assert_eq!(
            text(&pod),
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"ns","uid":"u","resourceVersion":"5","creationTimestamp":"t","labels":{"a":"2","z":"1"}},"spec":{"a":2,"b":1},"status":{"phase":"Pending"}}"#
        );
    }

    #[test]
    fn specs_are_in_go_struct_order_all_the_way_down() {
        // Go: DeploymentSpec{Replicas, Selector, Template, Strategy, ...},
        // PodSpec{Volumes, InitContainers, Containers, ...}, Container{Name, Image,
        // Command, Args, WorkingDir, Ports, EnvFrom, Env, Resources, ...}, Volume{Name,
        // VolumeSource (inline)}, map values sorted.
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"spec": {
                "containers": [{"resources": {"requests": {"memory": "1Mi", "cpu": "1"}},
                    "env": [{"value": "1", "name": "A"}], "image": "i", "name": "c",
                    "ports": [{"protocol": "TCP", "containerPort": 80}]}],
                "volumes": [{"emptyDir": {}, "name": "v"}]},
                "metadata": {"labels": {"app": "d"}}},
                "selector": {"matchLabels": {"app": "d"}}, "replicas": 1, "unknownField": true}});
        assert_eq!(
            text(&d),
            r#"{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"d"},"spec":{"replicas":1,"selector":{"matchLabels":{"app":"d"}},"template":{"metadata":{"labels":{"app":"d"}},"spec":{"volumes":[{"name":"v","emptyDir":{}}],"containers":[{"name":"c","image":"i","ports":[{"containerPort":80,"protocol":"TCP"}],"env":[{"name":"A","value":"1"}],"resources":{"requests":{"cpu":"1","memory":"1Mi"}}}]}},"unknownField":true}}"#
        );
    }

    #[test]
    fn a_status_is_in_metav1_status_order() {
        let s = json!({"code": 404, "details": {"name": "x"}, "reason": "NotFound",
            "message": "m", "status": "Failure", "metadata": {}, "apiVersion": "v1", "kind": "Status"});
        assert_eq!(
            text(&s),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"m","reason":"NotFound","details":{"name":"x"},"code":404}"#
        );
    }

    #[test]
    fn list_items_are_ordered_too() {
        let l = json!({"items": [{"spec": {}, "kind": "Pod", "metadata": {"name": "a"}}],
            "metadata": {"continue": "c", "resourceVersion": "1"}, "kind": "PodList", "apiVersion": "v1"});
        assert_eq!(
            text(&l),
            r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1","continue":"c"},"items":[{"kind":"Pod","metadata":{"name":"a"},"spec":{}}]}"#
        );
    }

    #[test]
    fn owner_references_and_unknown_fields() {
        let o = json!({"zeta": 1, "data": {"k": "v"}, "immutable": true, "kind": "ConfigMap",
            "metadata": {"ownerReferences": [{"uid": "u", "name": "n", "kind": "K", "apiVersion": "v1"}]}});
        assert_eq!(
            text(&o),
            r#"{"kind":"ConfigMap","metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"K","name":"n","uid":"u"}]},"immutable":true,"data":{"k":"v"},"zeta":1}"#
        );
    }

    #[test]
    fn non_objects_are_written_as_they_are() {
        assert_eq!(text(&json!([1, "a"])), r#"[1,"a"]"#);
        assert_eq!(text(&json!({"metadata": 3})), r#"{"metadata":3}"#);
    }
}
