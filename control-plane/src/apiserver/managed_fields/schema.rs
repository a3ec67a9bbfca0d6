//! What a value is at a place in an object, as server-side apply needs it: a leaf
//! (a scalar, or anything atomic), a granular object (struct or map, merged field by
//! field), a set (a list of scalars merged by value) or an associative list (items
//! merged by their key fields). Built-in types read it from the OpenAPI definitions
//! (which carry upstream's `x-kubernetes-list-type`, `-list-map-keys` and `-map-type`,
//! [`crate::apiserver::openapi_extensions`]); custom resources from their CRD's
//! structural schema. Where there is no schema (`x-kubernetes-preserve-unknown-fields`,
//! an unknown field) the value's own shape decides, as structured-merge-diff's
//! "deduced" type: objects are granular, lists atomic.

use serde_json::Value;

use crate::apiserver::openapi;

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// A place in a schema (possibly unknown).
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    schema: Option<&'a Value>,
    /// What `schema` refers to (`$ref`, or an `allOf` of one), else `schema` itself:
    /// resolved once, as every question about the node asks it.
    resolved: Option<&'a Value>,
    /// The object's root: `metadata` is always ObjectMeta.
    root: bool,
}

/// How a value merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    /// Replaced as a whole: scalars, atomic structs/maps/lists, empty objects and lists.
    Leaf,
    /// Merged field by field (a struct or a granular map).
    Object,
    /// A list of scalars merged by value (`x-kubernetes-list-type: set`).
    Set,
    /// A list of objects merged by key fields (`x-kubernetes-list-type: map`).
    Keyed(&'a [Value]),
}

impl<'a> Node<'a> {
    /// The root of a built-in type, by its definition name.
    pub fn builtin(definition: &str) -> Node<'static> {
        Node {
            root: true,
            ..Node::at(openapi::structure().get(definition))
        }
    }

    /// The root of a custom resource, from its structural schema.
    pub fn custom(schema: &'a Value) -> Node<'a> {
        Node {
            root: true,
            ..Node::at(Some(schema))
        }
    }

    /// ObjectMeta, the schema of every object's `metadata`.
    pub fn object_meta() -> Node<'static> {
        Node::at(openapi::structure().get(OBJECT_META))
    }

    /// No schema: the value's shape decides.
    pub fn deduced() -> Node<'static> {
        Node {
            schema: None,
            resolved: None,
            root: false,
        }
    }

    fn at(schema: Option<&'a Value>) -> Node<'a> {
        Node {
            schema,
            resolved: schema.and_then(resolve),
            root: false,
        }
    }

    /// The schema a `$ref` (or an `allOf` of one) points to.
    fn resolved(&self) -> Option<&'a Value> {
        self.resolved
    }

    /// An extension on the node itself or on the definition it refers to.
    fn extension(&self, name: &str) -> Option<&'a Value> {
        self.schema
            .and_then(|s| s.get(name))
            .or_else(|| self.resolved().and_then(|s| s.get(name)))
    }

    /// The schema of field (or map key) `name` of an object here.
    pub fn field(&self, name: &str) -> Node<'a> {
        if self.root && name == "metadata" {
            return Node::object_meta();
        }
        let Some(schema) = self.resolved() else {
            return Node::deduced();
        };
        if let Some(prop) = schema.get("properties").and_then(|p| p.get(name)) {
            return Node::at(Some(prop));
        }
        match schema.get("additionalProperties") {
            Some(extra) if extra.is_object() => Node::at(Some(extra)),
            _ => Node::deduced(),
        }
    }

    /// The schema of a list's items.
    pub fn items(&self) -> Node<'a> {
        Node::at(self.resolved().and_then(|s| s.get("items")))
    }

    /// How `value` here merges.
    pub fn kind(&self, value: &Value) -> Kind<'a> {
        if self
            .extension("x-kubernetes-map-type")
            .and_then(Value::as_str)
            == Some("atomic")
            || self.extension("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        {
            return Kind::Leaf;
        }
        match value {
            Value::Array(items) if !items.is_empty() => {
                match self
                    .extension("x-kubernetes-list-type")
                    .and_then(Value::as_str)
                {
                    Some("set") => Kind::Set,
                    Some("map") => match self
                        .extension("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                    {
                        Some(keys) if items.iter().all(Value::is_object) => Kind::Keyed(keys),
                        _ => Kind::Leaf,
                    },
                    _ => Kind::Leaf,
                }
            }
            Value::Object(fields) if !fields.is_empty() => {
                let scalar = self
                    .resolved()
                    .and_then(|s| s.get("type"))
                    .and_then(Value::as_str)
                    .is_some_and(|t| t != "object");
                if scalar { Kind::Leaf } else { Kind::Object }
            }
            _ => Kind::Leaf,
        }
    }

    /// Whether an object here is replaced as a whole (an atomic struct or map, or a
    /// scalar type written as an object).
    pub fn atomic_object(&self) -> bool {
        self.extension("x-kubernetes-map-type")
            .and_then(Value::as_str)
            == Some("atomic")
            || self.extension("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
            || self
                .resolved()
                .and_then(|s| s.get("type"))
                .and_then(Value::as_str)
                .is_some_and(|t| t != "object")
    }

    /// Whether the schema here is known (not deduced from the value).
    pub fn is_known(&self) -> bool {
        self.resolved.is_some()
    }

    /// The zero value Go's decoding gives a null of the type here: `""`, `0` or
    /// `false` for a scalar, `"0"` for a Quantity, `0` for an IntOrString, `{}` for a
    /// struct. None where Go keeps the null (raw JSON, a Time) or the type is unknown.
    pub fn zero_value(&self) -> Option<Value> {
        let reference = self.schema.and_then(reference);
        if self.extension("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            return Some(match reference {
                Some(r) if r.ends_with(".resource.Quantity") => Value::String("0".into()),
                _ => Value::from(0),
            });
        }
        if reference
            .is_some_and(|r| r.ends_with(".meta.v1.Time") || r.ends_with(".meta.v1.MicroTime"))
        {
            return None;
        }
        let schema = self.resolved()?;
        match schema.get("type").and_then(Value::as_str)? {
            "string" => Some(Value::String(String::new())),
            "integer" | "number" => Some(Value::from(0)),
            "boolean" => Some(Value::Bool(false)),
            // A struct; an object without properties is raw JSON, whose null stays.
            "object" if schema.get("properties").is_some() => {
                Some(Value::Object(serde_json::Map::new()))
            }
            _ => None,
        }
    }

    /// Whether this is a map of arbitrary keys (labels, annotations, data…) rather
    /// than a struct.
    pub fn is_map(&self) -> bool {
        self.resolved().is_some_and(|s| {
            s.get("properties").is_none() && s.get("additionalProperties").is_some()
        })
    }
}

/// The name of the definition `schema` refers to (`$ref`, or an `allOf` of one).
fn reference(schema: &Value) -> Option<&str> {
    schema
        .get("$ref")
        .or_else(|| schema.pointer("/allOf/0/$ref"))
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
}

/// The schema `schema` refers to (`$ref`, or an `allOf` of one), else itself.
fn resolve(schema: &Value) -> Option<&Value> {
    match reference(schema) {
        Some(name) => openapi::structure().get(name),
        None => Some(schema),
    }
}

/// The key fields of an associative list's item, with upstream's defaults for the
/// optional ones (`protocol` is `TCP`).
pub fn item_key(item: &Value, keys: &[Value]) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for key in keys.iter().filter_map(Value::as_str) {
        match item.get(key) {
            Some(v) if !v.is_null() => {
                out.insert(key.to_owned(), v.clone());
            }
            _ if key == "protocol" => {
                out.insert(key.to_owned(), Value::String("TCP".into()));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_schemas_know_list_and_map_types() {
        let deployment = Node::builtin("io.k8s.api.apps.v1.Deployment");
        let pod_spec = deployment.field("spec").field("template").field("spec");
        let containers = pod_spec.field("containers");
        assert_eq!(
            containers.kind(&json!([{"name": "a"}])),
            Kind::Keyed(&[json!("name")])
        );
        let selector = deployment.field("spec").field("selector");
        assert_eq!(
            selector.kind(&json!({"matchLabels": {"a": "b"}})),
            Kind::Leaf
        );
        let labels = deployment.field("metadata").field("labels");
        assert!(labels.is_map());
        assert_eq!(labels.kind(&json!({"a": "b"})), Kind::Object);
        let finalizers = deployment.field("metadata").field("finalizers");
        assert_eq!(finalizers.kind(&json!(["x"])), Kind::Set);
        assert_eq!(pod_spec.field("tolerations").kind(&json!([{}])), Kind::Leaf);
        let port = containers
            .items()
            .field("ports")
            .items()
            .field("containerPort");
        assert_eq!(port.kind(&json!(80)), Kind::Leaf);
        assert_eq!(Node::deduced().kind(&json!({"a": 1})), Kind::Object);
        assert_eq!(Node::deduced().kind(&json!([1])), Kind::Leaf);
        let key = item_key(
            &json!({"containerPort": 80}),
            &[json!("containerPort"), json!("protocol")],
        );
        assert_eq!(
            Value::Object(key),
            json!({"containerPort": 80, "protocol": "TCP"})
        );
    }
}
