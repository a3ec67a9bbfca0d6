//! Strategic merge patch (`application/strategic-merge-patch+json`), as
//! `k8s.io/apimachinery/pkg/util/strategicpatch` applies it to built-in types: maps merge
//! recursively (`null` deletes), lists declared `patchStrategy: merge` merge their items
//! by `patchMergeKey` (containers by name, ports by containerPort, env by name…) or, for
//! lists of scalars, as sets; every other list is replaced. Directives: `$patch`
//! (replace / delete / merge), `$retainKeys`, `$setElementOrder/<list>`,
//! `$deleteFromPrimitiveList/<list>`.
//!
//! Which lists merge, and by which key, are the `patchStrategy` / `patchMergeKey` tags
//! of the Kubernetes API types ([`super::openapi_extensions`], from upstream's OpenAPI
//! document). The path to a list is resolved to its type through the OpenAPI
//! definitions generated from `k8s-openapi` ([`super::openapi::definitions`]), which
//! carry the same extensions, so `kubectl apply` computes its patches with the
//! strategies the server applies.

use serde_json::{Map, Value};

use super::status::{ApiError, ApiResult};
use super::{openapi, openapi_extensions};

/// The patch strategy and merge key of `field` in `definition` (upstream's
/// `patchStrategy` / `patchMergeKey` tags).
fn strategy(definition: &str, field: &str) -> Option<(&'static str, &'static str)> {
    openapi_extensions::field(definition, field)
        .filter(|e| !e.patch_strategy.is_empty())
        .map(|e| (e.patch_strategy.as_str(), e.patch_merge_key.as_str()))
}

/// Where in the schema a value sits: the definition of the enclosing object.
#[derive(Debug, Clone)]
struct Schema {
    /// The (resolved) schema of the value itself.
    node: Value,
    /// The definition name if the value is a `$ref`'d object.
    definition: Option<String>,
}

impl Schema {
    fn of_definition(name: &str) -> Self {
        let node = openapi::structure()
            .get(name)
            .cloned()
            .unwrap_or(Value::Null);
        Self {
            node,
            definition: Some(name.to_owned()),
        }
    }

    fn resolve(node: &Value) -> Self {
        let reference = node
            .get("$ref")
            .or_else(|| node.pointer("/allOf/0/$ref"))
            .and_then(Value::as_str);
        match reference.and_then(|r| r.rsplit('/').next()) {
            Some(name) => Self::of_definition(name),
            None => Self {
                node: node.clone(),
                definition: None,
            },
        }
    }

    fn field(&self, name: &str) -> Option<Schema> {
        let prop = self.node.get("properties")?.get(name)?;
        Some(Self::resolve(prop))
    }

    fn items(&self) -> Option<Schema> {
        Some(Self::resolve(self.node.get("items")?))
    }

    fn map_values(&self) -> Option<Schema> {
        let extra = self.node.get("additionalProperties")?;
        extra.is_object().then(|| Self::resolve(extra))
    }
}

/// Applies a strategic merge `patch` to `original` of the built-in type `definition`.
pub fn strategic_merge(original: &Value, patch: &Value, definition: &str) -> ApiResult<Value> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "strategic merge patch must be a JSON object",
        ));
    }
    let schema = Schema::of_definition(definition);
    Ok(merge_value(original, patch, Some(&schema)))
}

fn merge_value(original: &Value, patch: &Value, schema: Option<&Schema>) -> Value {
    match (original, patch) {
        (Value::Object(o), Value::Object(p)) => Value::Object(merge_map(o, p, schema)),
        _ => strip_directives(patch),
    }
}

fn merge_map(
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
    schema: Option<&Schema>,
) -> Map<String, Value> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut out = patch.clone();
            out.remove("$patch");
            return strip_map(&out);
        }
        Some("delete") => return Map::new(),
        _ => {}
    }
    let mut out = original.clone();
    // `$retainKeys`: drop every key not listed (then apply the patch).
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(remove)) = (out.get_mut(list), value.as_array())
            {
                items.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with("$setElementOrder/") {
            continue;
        }
        let child = schema.and_then(|s| s.field(key));
        let strat = schema
            .and_then(|s| s.definition.as_deref())
            .and_then(|d| strategy(d, key));
        if value.is_null() {
            out.remove(key);
            continue;
        }
        let merged = match (out.get(key), value) {
            (Some(Value::Array(o)), Value::Array(p)) => {
                Value::Array(merge_list(o, p, strat, child.as_ref()))
            }
            (_, Value::Array(p)) => {
                let merged = merge_list(&[], p, strat, child.as_ref());
                Value::Array(merged)
            }
            (Some(o @ Value::Object(_)), Value::Object(_)) => {
                let child = child.or_else(|| schema.and_then(Schema::map_values));
                merge_value(o, value, child.as_ref())
            }
            _ => strip_directives(value),
        };
        out.insert(key.clone(), merged);
        if let Some(order) = patch
            .get(&format!("$setElementOrder/{key}"))
            .and_then(Value::as_array)
            && let Some((_, merge_key)) = strat
            && let Some(Value::Array(items)) = out.get_mut(key)
        {
            reorder(items, order, merge_key);
        }
    }
    // `$setElementOrder` for lists the patch did not otherwise touch.
    for (key, order) in patch {
        if let Some(list) = key.strip_prefix("$setElementOrder/")
            && !patch.contains_key(list)
            && let Some(order) = order.as_array()
            && let Some((_, merge_key)) = schema
                .and_then(|s| s.definition.as_deref())
                .and_then(|d| strategy(d, list))
            && let Some(Value::Array(items)) = out.get_mut(list)
        {
            reorder(items, order, merge_key);
        }
    }
    out
}

fn merge_list(
    original: &[Value],
    patch: &[Value],
    strat: Option<(&str, &str)>,
    schema: Option<&Schema>,
) -> Vec<Value> {
    // `[{"$patch": "replace"}, …]` replaces the list.
    let replace = patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"));
    let merging = strat.is_some_and(|(s, _)| s.split(',').any(|x| x == "merge"));
    if replace || !merging {
        return patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .map(strip_directives)
            .collect();
    }
    let merge_key = strat.map(|(_, k)| k).unwrap_or_default();
    let item_schema = schema.and_then(Schema::items);
    if merge_key.is_empty() {
        // A set of scalars.
        let mut out = original.to_vec();
        for p in patch {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        return out;
    }
    let mut out = original.to_vec();
    for p in patch {
        let key = p.get(merge_key);
        let position = key.and_then(|k| out.iter().position(|o| o.get(merge_key) == Some(k)));
        let directive = p.get("$patch").and_then(Value::as_str);
        match (position, directive) {
            (Some(i), Some("delete")) => {
                out.remove(i);
            }
            (None, Some("delete")) => {}
            (Some(i), Some("replace")) => {
                out[i] = strip_directives(p);
            }
            (Some(i), _) => {
                out[i] = merge_value(&out[i], p, item_schema.as_ref());
            }
            (None, _) => out.push(strip_directives(p)),
        }
    }
    out
}

/// Orders `items` as `order` lists their merge keys; items not listed keep their
/// relative order after the listed ones.
fn reorder(items: &mut Vec<Value>, order: &[Value], merge_key: &str) {
    let mut listed = Vec::new();
    for o in order {
        let key = if merge_key.is_empty() {
            Some(o)
        } else {
            o.get(merge_key)
        };
        if let Some(pos) = items.iter().position(|i| {
            let k = if merge_key.is_empty() {
                Some(i)
            } else {
                i.get(merge_key)
            };
            k == key
        }) {
            listed.push(items.remove(pos));
        }
    }
    listed.append(items);
    *items = listed;
}

fn strip_map(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
        .map(|(k, v)| (k.clone(), strip_directives(v)))
        .collect()
}

/// The patch value without directives (new content taken as is).
fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(strip_map(m)),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|v| v.get("$patch").is_none())
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POD: &str = "io.k8s.api.core.v1.Pod";
    const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}]}});
        let patch = json!({"spec": {"containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}]}});
        let out = strategic_merge(&pod, &patch, POD).expect("patch");
        let c = &out["spec"]["containers"];
        assert_eq!(c.as_array().map(Vec::len), Some(2));
        assert_eq!(c[0]["image"], "a:2");
        assert_eq!(
            c[0]["env"],
            json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}])
        );
        assert_eq!(c[1]["image"], "b:1");
    }

    #[test]
    fn topology_spread_constraints_merge_by_topology_key() {
        let pod = json!({"spec": {"topologySpreadConstraints": [
            {"topologyKey": "zone", "maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}]}});
        let patch = json!({"spec": {"topologySpreadConstraints": [
            {"topologyKey": "kubernetes.io/hostname", "maxSkew": 2, "whenUnsatisfiable": "ScheduleAnyway"}]}});
        let out = strategic_merge(&pod, &patch, POD).expect("patch");
        assert_eq!(
            out["spec"]["topologySpreadConstraints"]
                .as_array()
                .map(Vec::len),
            Some(2),
            "merged by topologyKey as upstream's patchMergeKey: {out}"
        );
    }

    #[test]
    fn directives_delete_replace_and_order() {
        let d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a", "ports": [{"containerPort": 80}, {"containerPort": 81}]},
            {"name": "b", "image": "b"}]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "ports": [{"containerPort": 80, "$patch": "delete"}]}]}},
            "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        let out = strategic_merge(&d, &patch, DEPLOYMENT).expect("patch");
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["name"], "b");
        assert_eq!(c[1]["ports"], json!([{"containerPort": 81}]));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        // `$patch: replace` on a list.
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "replace"}, {"name": "z", "image": "z"}]}}}});
        let out = strategic_merge(&d, &patch, DEPLOYMENT).expect("patch");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "z", "image": "z"}])
        );
    }

    #[test]
    fn unlisted_lists_are_replaced_and_null_deletes() {
        let pod = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"tolerations": [{"key": "a"}], "containers": [{"name": "c", "args": ["1", "2"]}]}});
        let patch = json!({"metadata": {"labels": {"a": null}, "finalizers": ["y"]},
            "spec": {"tolerations": [{"key": "b"}], "containers": [{"name": "c", "args": ["3"]}]}});
        let out = strategic_merge(&pod, &patch, POD).expect("patch");
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "b"}]));
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["3"]));
    }
}
