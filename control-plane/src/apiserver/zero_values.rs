//! Nulls where Go's JSON decoding gives zero values. kube-apiserver decodes a request
//! into typed Go structs, where a null map value or list item becomes its type's zero
//! value: `labels: {team: null}` is stored as `team: ""` (Helm renders an empty value
//! as null), `args: [null]` as `[""]`, `limits: {cpu: null}` as `cpu: "0"`. berth's
//! typed decoding refuses such nulls, so [`zero_nulls`] first puts the zero values in,
//! by the OpenAPI schema; a custom resource's `metadata` (ObjectMeta there too) gets
//! the same ([`zero_meta_nulls`]). A null struct field is left to decode as unset, as
//! in Go, and Go keeps the null of raw JSON (a CRD's `default` or `enum` item, a
//! RawExtension) and of a Time.

use serde_json::Value;

use super::managed_fields::schema::Node;

/// Whether `value` holds a null anywhere (cheap: most bodies hold none).
pub fn has_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(fields) => fields.values().any(has_null),
        Value::Array(items) => items.iter().any(has_null),
        _ => false,
    }
}

/// Replaces each null map value and list item in `value` (of the schema at `node`)
/// with its type's zero value.
pub fn zero_nulls(value: &mut Value, node: Node) {
    walk(value, node, false);
}

/// A custom resource's `metadata`, as ObjectMeta decodes (no typed round trip follows
/// here): null fields unset, at every depth (`ownerReferences[].controller`), and null
/// map values and list items zero (labels and annotations `""`, finalizers `""`).
pub fn zero_meta_nulls(obj: &mut Value) {
    let Some(meta) = obj.get_mut("metadata") else {
        return;
    };
    if has_null(meta) {
        walk(meta, Node::object_meta(), true);
    }
}

/// [`zero_nulls`]; with `unset`, a struct field's null is removed as well.
fn walk(value: &mut Value, node: Node, unset: bool) {
    if !node.is_known() {
        return;
    }
    match value {
        Value::Object(fields) => {
            let map = node.is_map();
            if unset && !map {
                fields.retain(|_, v| !v.is_null());
            }
            for (name, child) in fields.iter_mut() {
                let child_node = node.field(name);
                if !child.is_null() {
                    walk(child, child_node, unset);
                } else if map && let Some(zero) = child_node.zero_value() {
                    *child = zero;
                }
            }
        }
        Value::Array(items) => {
            let item_node = node.items();
            for item in items {
                if !item.is_null() {
                    walk(item, item_node, unset);
                } else if let Some(zero) = item_node.zero_value() {
                    *item = zero;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn null_map_values_and_list_items_become_zero_values() {
        let mut pod = json!({
            "metadata": {"name": "p", "labels": {"team": null, "app": "a"},
                "annotations": {"note": null}},
            "spec": {"nodeSelector": {"disk": null},
                "containers": [{"name": "c", "image": "i", "args": ["x", null],
                    "resources": {"limits": {"cpu": "1"}}}],
                "terminationGracePeriodSeconds": null},
        });
        assert!(has_null(&pod));
        zero_nulls(&mut pod, Node::builtin("io.k8s.api.core.v1.Pod"));
        assert_eq!(pod["metadata"]["labels"], json!({"team": "", "app": "a"}));
        assert_eq!(pod["metadata"]["annotations"], json!({"note": ""}));
        assert_eq!(pod["spec"]["nodeSelector"], json!({"disk": ""}));
        assert_eq!(pod["spec"]["containers"][0]["args"], json!(["x", ""]));
        // A struct field's null is left to decode as unset.
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], Value::Null);
        // Quantity's zero is "0".
        let mut limits = json!({"spec": {"containers": [{"name": "c",
            "resources": {"limits": {"cpu": null, "memory": "1Gi"}}}]}});
        zero_nulls(&mut limits, Node::builtin("io.k8s.api.core.v1.Pod"));
        assert_eq!(
            limits["spec"]["containers"][0]["resources"]["limits"],
            json!({"cpu": "0", "memory": "1Gi"})
        );
        assert!(!has_null(&json!({"a": [1, {"b": "c"}]})));
    }

    #[test]
    fn raw_json_keeps_its_nulls() {
        let mut crd = json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {
                "x": {"type": "object", "default": {"a": null}},
                "y": {"type": "string", "nullable": true, "enum": ["a", null]}}}}}]}});
        let before = crd.clone();
        zero_nulls(
            &mut crd,
            Node::builtin(
                "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
            ),
        );
        assert_eq!(crd, before);
    }

    #[test]
    fn custom_resource_metadata_decodes_as_object_meta() {
        let mut widget = json!({"metadata": {"name": "w", "labels": {"a": null, "b": "x"},
            "annotations": null, "finalizers": ["f", null],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o",
                "uid": "u", "controller": null}]}, "spec": {"keep": null}});
        zero_meta_nulls(&mut widget);
        assert_eq!(
            widget,
            json!({"metadata": {"name": "w", "labels": {"a": "", "b": "x"},
                "finalizers": ["f", ""],
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o",
                    "uid": "u"}]}, "spec": {"keep": null}})
        );
    }
}
