//! OpenAPI v3 (`/openapi/v3` and one document per group-version), which `kubectl
//! explain`, `kubectl apply` (patch strategies) and kubectl's field-validation check
//! read. Schemas come from `k8s-openapi` (its `schemars` implementations, descriptions
//! included), annotated with what clients look for: `x-kubernetes-group-version-kind`
//! on each kind, and upstream's `x-kubernetes-list-type`, `-list-map-keys`, `-map-type`,
//! `-patch-strategy` and `-patch-merge-key` ([`super::openapi_extensions`]). Custom
//! resources get their CRD's schema.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Map, Value, json};

use super::openapi_extensions;
use super::registry::{Registry, ResourceDef, group_version_path};

/// Every definition reachable from the built-in kinds, by name.
pub fn definitions() -> &'static BTreeMap<String, Value> {
    static DEFS: LazyLock<BTreeMap<String, Value>> = LazyLock::new(build_definitions);
    &DEFS
}

/// The definitions reduced to their structure — references, properties, items, map
/// values, types and the `x-kubernetes-*` extensions — for what walks objects by their
/// schema (strategic merge patch, server-side apply). Read from a file generated from
/// [`definitions`] (`control-plane/data/openapi-structure.json`; a unit test keeps it
/// current) rather than built at run time: building runs the schema code of every
/// built-in type, which kept ~10 MB more of the binary resident in an idle server, and
/// the prose nobody walking objects reads.
///
/// Hashed by name: every schema walk looks definitions up by their `$ref`, and names
/// share long prefixes (`io.k8s.api.core.v1.`) that an ordered map compares again and
/// again.
pub fn structure() -> &'static HashMap<String, Value> {
    static DEFS: LazyLock<HashMap<String, Value>> = LazyLock::new(|| {
        serde_json::from_str(STRUCTURE).unwrap_or_else(|err| {
            tracing::error!(%err, "the embedded OpenAPI structure does not parse");
            HashMap::new()
        })
    });
    &DEFS
}

const STRUCTURE: &str = include_str!("../../data/openapi-structure.json");

/// A schema reduced to its structural keys and `x-kubernetes-*` extensions, recursively.
#[cfg(test)]
fn reduce(schema: &Value) -> Value {
    let Value::Object(m) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        let kept = match k.as_str() {
            "properties" => match v {
                Value::Object(props) => Value::Object(
                    props
                        .iter()
                        .map(|(name, s)| (name.clone(), reduce(s)))
                        .collect(),
                ),
                other => other.clone(),
            },
            "allOf" => match v {
                Value::Array(items) => Value::Array(items.iter().map(reduce).collect()),
                other => other.clone(),
            },
            "items" | "additionalProperties" => reduce(v),
            "$ref" | "type" => v.clone(),
            _ if k.starts_with("x-kubernetes-") => v.clone(),
            _ => continue,
        };
        out.insert(k.clone(), kept);
    }
    Value::Object(out)
}

/// [`structure`]'s file content, from the definitions.
#[cfg(test)]
fn structure_file() -> String {
    let reduced: BTreeMap<&String, Value> = definitions()
        .iter()
        .map(|(name, s)| (name, reduce(s)))
        .collect();
    let mut text = serde_json::to_string_pretty(&reduced).unwrap_or_default();
    text.push('\n');
    text
}

fn build_definitions() -> BTreeMap<String, Value> {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let registry = Registry::builtin();
    let mut kinds: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for def in registry.all() {
        if let Some(typed) = &def.typed {
            (typed.schema)(&mut generator);
            kinds
                .entry(typed.definition.clone())
                .or_default()
                .push(json!({
                    "group": def.group, "version": def.version, "kind": def.kind,
                }));
        }
    }
    let mut defs: BTreeMap<String, Value> = generator.take_definitions(true).into_iter().collect();
    for (name, gvks) in kinds {
        if let Some(schema) = defs.get_mut(&name).and_then(Value::as_object_mut) {
            schema.insert("x-kubernetes-group-version-kind".into(), Value::Array(gvks));
        }
    }
    for (definition, field, ext) in openapi_extensions::all_fields() {
        if let Some(prop) = defs
            .get_mut(definition)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(field))
            .and_then(Value::as_object_mut)
        {
            let mut put = |name: &str, value: Value| {
                prop.insert(name.into(), value);
            };
            if !ext.list_type.is_empty() {
                put("x-kubernetes-list-type", json!(ext.list_type));
            }
            if !ext.list_map_keys.is_empty() {
                put("x-kubernetes-list-map-keys", json!(ext.list_map_keys));
            }
            if !ext.map_type.is_empty() {
                put("x-kubernetes-map-type", json!(ext.map_type));
            }
            if !ext.patch_strategy.is_empty() {
                put("x-kubernetes-patch-strategy", json!(ext.patch_strategy));
            }
            if !ext.patch_merge_key.is_empty() {
                put("x-kubernetes-patch-merge-key", json!(ext.patch_merge_key));
            }
        }
    }
    for (definition, map_type) in openapi_extensions::all_definitions() {
        if let Some(schema) = defs.get_mut(definition).and_then(Value::as_object_mut) {
            schema.insert("x-kubernetes-map-type".into(), json!(map_type));
        }
    }
    defs
}

/// The names `name` refers to, transitively.
fn closure(
    roots: impl IntoIterator<Item = String>,
    defs: &BTreeMap<String, Value>,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.into_iter().collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(schema) = defs.get(&name) {
            collect_refs(schema, &mut todo);
        }
    }
    seen
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str)
                && let Some(name) = r.rsplit('/').next()
            {
                out.push(name.to_owned());
            }
            m.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// The `/openapi/v3` index: one entry per group-version.
pub fn index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let path = group_version_path(&group, &version);
            let hash = format!("{:016X}", doc_hash(registry, &group, &version));
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// Changes when the set of resources (or a CRD schema) in the group-version changes.
fn doc_hash(registry: &Registry, group: &str, version: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for def in registry.all() {
        if def.group == group && def.version == version {
            def.plural.hash(&mut h);
            if let Some(crd) = &def.crd {
                crd.schema.to_string().hash(&mut h);
            }
        }
    }
    h.finish()
}

/// A rendered document and the hash it was rendered for.
type CachedDoc = (u64, Arc<Vec<u8>>);

/// Cached documents, rebuilt when their hash changes.
#[derive(Debug, Default)]
pub struct Documents {
    cache: Mutex<BTreeMap<String, CachedDoc>>,
}

impl Documents {
    /// The document for `api/v1` or `apis/{group}/{version}`.
    pub fn get(&self, registry: &Registry, path: &str) -> Option<Arc<Vec<u8>>> {
        let (group, version) = match path.trim_matches('/').split('/').collect::<Vec<_>>()[..] {
            ["api", v] => (String::new(), v.to_owned()),
            ["apis", g, v] => (g.to_owned(), v.to_owned()),
            _ => return None,
        };
        let defs: Vec<Arc<ResourceDef>> = registry
            .all()
            .into_iter()
            .filter(|d| d.group == group && d.version == version)
            .collect();
        if defs.is_empty() {
            return None;
        }
        let hash = doc_hash(registry, &group, &version);
        if let Ok(cache) = self.cache.lock()
            && let Some((h, doc)) = cache.get(path)
            && *h == hash
        {
            return Some(doc.clone());
        }
        let doc = Arc::new(serde_json::to_vec(&document(&defs)).unwrap_or_default());
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(path.to_owned(), (hash, doc.clone()));
        }
        Some(doc)
    }
}

fn document(defs: &[Arc<ResourceDef>]) -> Value {
    let all = definitions();
    let mut schemas: BTreeMap<String, Value> = BTreeMap::new();
    let mut roots = Vec::new();
    let mut paths = Map::new();
    for def in defs {
        let schema_ref = match (&def.typed, &def.crd) {
            (Some(t), _) => {
                roots.push(t.definition.clone());
                t.definition.clone()
            }
            (None, Some(crd)) => {
                let name = crd_definition_name(def);
                let mut schema = crd.schema.clone();
                if let Some(m) = schema.as_object_mut() {
                    m.insert(
                        "x-kubernetes-group-version-kind".into(),
                        json!([{"group": def.group, "version": def.version, "kind": def.kind}]),
                    );
                    let props = m.entry("properties").or_insert_with(|| json!({}));
                    if let Some(p) = props.as_object_mut() {
                        p.insert("metadata".into(), json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}));
                        p.entry("apiVersion").or_insert(json!({"type": "string"}));
                        p.entry("kind").or_insert(json!({"type": "string"}));
                    }
                }
                roots.push("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into());
                schemas.insert(name.clone(), schema);
                name
            }
            _ => continue,
        };
        add_paths(&mut paths, def, &schema_ref);
    }
    roots.push("io.k8s.apimachinery.pkg.apis.meta.v1.Status".into());
    roots.push("io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into());
    for name in closure(roots, all) {
        if let Some(schema) = all.get(&name) {
            schemas.insert(name, schema.clone());
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::discovery::GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn crd_definition_name(def: &ResourceDef) -> String {
    let reversed: Vec<&str> = def.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), def.version, def.kind)
}

fn add_paths(paths: &mut Map<String, Value>, def: &ResourceDef, schema: &str) {
    let base = format!("/{}", group_version_path(&def.group, &def.version));
    let collection = if def.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", def.plural)
    } else {
        format!("{base}/{}", def.plural)
    };
    let gvk = json!({"group": def.group, "version": def.version, "kind": def.kind});
    let body = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let ok = json!({"200": body.clone()});
    let field_validation = json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let dry_run =
        json!({"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let op = |action: &str, extra: Vec<Value>| {
        let mut o = json!({
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "responses": ok,
            "parameters": extra,
        });
        if matches!(action, "post" | "put") {
            o["requestBody"] = body.clone();
        }
        if action == "patch" {
            o["requestBody"] = json!({"content": {
                "application/json-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
                "application/merge-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
                "application/strategic-merge-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
            }});
        }
        o
    };
    let writes = vec![dry_run.clone(), field_validation.clone()];
    paths.insert(
        collection.clone(),
        json!({
            "get": op("list", vec![]),
            "post": op("post", writes.clone()),
            "delete": op("deletecollection", vec![dry_run.clone()]),
        }),
    );
    paths.insert(
        format!("{collection}/{{name}}"),
        json!({
            "get": op("get", vec![]),
            "put": op("put", writes.clone()),
            "patch": op("patch", writes.clone()),
            "delete": op("delete", vec![dry_run.clone()]),
        }),
    );
    if def.status {
        paths.insert(
            format!("{collection}/{{name}}/status"),
            json!({
                "get": op("get", vec![]),
                "put": op("put", writes.clone()),
                "patch": op("patch", writes),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded structure is the definitions' (`BERTH_UPDATE_DATA=1` rewrites it).
    #[test]
    fn the_structure_file_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/openapi-structure.json");
        let generated = structure_file();
        if std::env::var_os("BERTH_UPDATE_DATA").is_some() {
            std::fs::write(path, &generated).expect("write the structure file");
            return;
        }
        assert!(
            STRUCTURE == generated,
            "{path} is stale: run `BERTH_UPDATE_DATA=1 cargo test -p berth-control-plane --lib the_structure_file_is_current`"
        );
        let deployment = &structure()["io.k8s.api.apps.v1.Deployment"];
        assert!(
            deployment.pointer("/properties/spec/$ref").is_some()
                || deployment.pointer("/properties/spec/allOf").is_some(),
            "{deployment}"
        );
    }
}
