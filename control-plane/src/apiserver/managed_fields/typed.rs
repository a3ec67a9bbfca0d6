//! The operations on typed values that server-side apply and the managed-fields
//! tracking are made of, as structured-merge-diff defines them: a value's field set,
//! the comparison of two values (added, modified and removed paths), the merge of an
//! applied configuration into a live object, and the removal of paths.
//!
//! A `null` is a value, as there: a field set to null is a member of the field set (a
//! leaf), a value turned null is modified, and an applied null replaces a scalar or an
//! atomic value but leaves a granular struct, map or list to its owners. Absent and
//! null compare equal: upstream's typed objects write some absent values as null
//! (`creationTimestamp: null` in a pod template), so two appliers of such YAML share
//! the field instead of conflicting.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::fieldpath::{Path, PathElement, Set};
use super::schema::{Kind, Node, item_key};

/// The set of fields `value` sets: its leaves, every list item, and empty objects,
/// lists and nulls (leaves themselves).
pub fn field_set(value: &Value, node: Node) -> Set {
    let mut out = Set::new();
    walk(value, node, &mut Vec::new(), &mut out);
    out
}

fn walk(value: &Value, node: Node, path: &mut Path, out: &mut Set) {
    match node.kind(value) {
        Kind::Leaf => out.insert(path),
        Kind::Object => {
            if let Some(fields) = value.as_object() {
                for (name, child) in fields {
                    path.push(PathElement::Field(name.clone()));
                    walk(child, node.field(name), path, out);
                    path.pop();
                }
            }
        }
        Kind::Set => {
            for item in value.as_array().into_iter().flatten() {
                path.push(PathElement::Value(item.to_string()));
                out.insert(path);
                path.pop();
            }
        }
        Kind::Keyed(keys) => {
            for item in value.as_array().into_iter().flatten() {
                path.push(PathElement::key(&item_key(item, keys)));
                out.insert(path);
                walk(item, node.items(), path, out);
                path.pop();
            }
        }
    }
}

/// The `fieldsV1` of a new object's fields, as its creator owns them: every leaf, list
/// item and map (a map is a member too), straight to JSON (creates are hot).
pub fn created_fields(value: &Value, node: Node) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, child) in value.as_object().into_iter().flatten() {
        out.insert(format!("f:{name}"), member(child, node.field(name)));
    }
    out
}

fn member(value: &Value, node: Node) -> Value {
    match node.kind(value) {
        Kind::Leaf => Value::Object(Map::new()),
        Kind::Object => {
            let mut fields = created_fields(value, node);
            if node.is_map() && !fields.is_empty() {
                fields.insert(".".into(), Value::Object(Map::new()));
            }
            Value::Object(fields)
        }
        Kind::Set => Value::Object(
            value
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| (format!("v:{item}"), Value::Object(Map::new())))
                .collect(),
        ),
        Kind::Keyed(keys) => {
            let items = node.items();
            Value::Object(
                value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|item| {
                        let mut fields = created_fields(item, items);
                        fields.insert(".".into(), Value::Object(Map::new()));
                        (
                            PathElement::key(&item_key(item, keys)).encode(),
                            Value::Object(fields),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// A value that appeared or disappeared at `path`: the path itself if it is a leaf,
/// a list item or a map, and every field below it.
fn whole(value: &Value, node: Node, path: &mut Path, out: &mut Set) {
    let item = matches!(
        path.last(),
        Some(PathElement::Key(_) | PathElement::Value(_))
    );
    let kind = node.kind(value);
    if kind == Kind::Leaf || item || (kind == Kind::Object && node.is_map()) {
        out.insert(path);
    }
    if kind != Kind::Leaf {
        walk(value, node, path, out);
    }
}

/// What changed from one value to another.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

impl Comparison {
    /// Leaves out `ignored` paths (and everything below them).
    pub fn without(mut self, ignored: &Set) -> Self {
        for path in ignored.paths() {
            self.added.remove_tree(&path);
            self.modified.remove_tree(&path);
            self.removed.remove_tree(&path);
        }
        self
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

/// `set` without the paths in `ignored` nor any path below one of them.
pub fn strip(set: &Set, ignored: &Set) -> Set {
    let mut out = set.clone();
    for path in ignored.paths() {
        out.remove_tree(&path);
    }
    out
}

/// Compares `old` with `new`.
pub fn compare(old: &Value, new: &Value, node: Node) -> Comparison {
    let mut out = Comparison::default();
    diff(Some(old), Some(new), node, &mut Vec::new(), &mut out);
    out
}

fn diff(
    old: Option<&Value>,
    new: Option<&Value>,
    node: Node,
    path: &mut Path,
    out: &mut Comparison,
) {
    if old == new {
        return;
    }
    // Absent and null are the same state (a typed object has no nulls; upstream's
    // typed objects serialize some absent values as null); a value turned null is a
    // change of that value, as structured-merge-diff compares.
    let turned_null = new.is_some_and(Value::is_null);
    let (old, new) = match (old.filter(|v| !v.is_null()), new.filter(|v| !v.is_null())) {
        // A null that went (a custom resource's nullable field): removed.
        (None, None) if old.is_some() && new.is_none() => return out.removed.insert(path),
        (None, None) => return,
        (None, Some(n)) => return whole(n, node, path, &mut out.added),
        (Some(o), None) if turned_null && node.kind(o) == Kind::Leaf => {
            return out.modified.insert(path);
        }
        (Some(o), None) => return whole(o, node, path, &mut out.removed),
        (Some(o), Some(n)) => (o, n),
    };
    let (mut ko, mut kn) = (node.kind(old), node.kind(new));
    // An empty object and a full one compare field by field.
    if old.is_object() && new.is_object() && !node.atomic_object() {
        (ko, kn) = (Kind::Object, Kind::Object);
    }
    if ko == Kind::Leaf && kn == Kind::Leaf {
        if old != new {
            out.modified.insert(path);
        }
        return;
    }
    if ko != kn {
        whole(old, node, path, &mut out.removed);
        whole(new, node, path, &mut out.added);
        return;
    }
    match kn {
        Kind::Leaf => {}
        Kind::Object => {
            let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
                return;
            };
            let mut names: Vec<&String> = o.keys().collect();
            names.extend(n.keys().filter(|k| !o.contains_key(*k)));
            for name in names {
                path.push(PathElement::Field(name.clone()));
                diff(o.get(name), n.get(name), node.field(name), path, out);
                path.pop();
            }
        }
        Kind::Set => {
            let o = old.as_array().map(Vec::as_slice).unwrap_or_default();
            let n = new.as_array().map(Vec::as_slice).unwrap_or_default();
            for item in n.iter().filter(|i| !o.contains(i)) {
                path.push(PathElement::Value(item.to_string()));
                out.added.insert(path);
                path.pop();
            }
            for item in o.iter().filter(|i| !n.contains(i)) {
                path.push(PathElement::Value(item.to_string()));
                out.removed.insert(path);
                path.pop();
            }
        }
        Kind::Keyed(keys) => {
            let index = |v: &Value| -> BTreeMap<PathElement, Value> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|item| (PathElement::key(&item_key(item, keys)), item.clone()))
                    .collect()
            };
            let (o, n) = (index(old), index(new));
            let items = node.items();
            for (pe, item) in &n {
                path.push(pe.clone());
                match o.get(pe) {
                    Some(before) => diff(Some(before), Some(item), items, path, out),
                    None => whole(item, items, path, &mut out.added),
                }
                path.pop();
            }
            for (pe, item) in o.iter().filter(|(pe, _)| !n.contains_key(*pe)) {
                path.push(pe.clone());
                whole(item, items, path, &mut out.removed);
                path.pop();
            }
        }
    }
}

/// Merges an applied configuration into the live object: objects field by field,
/// sets by value, associative lists by key (items merged), everything else replaced.
/// A null replaces a leaf; a granular value stays as it is (what the applier owned in
/// it is pruned after, what others own kept).
/// Lists keep the configuration's order for its items, with the live object's other
/// items where they were.
pub fn merge(live: &Value, config: &Value, node: Node) -> Value {
    let empty_container = match config {
        Value::Object(m) => m.is_empty() && live.is_object(),
        Value::Array(a) => a.is_empty() && live.is_array(),
        _ => false,
    };
    if empty_container {
        return live.clone();
    }
    match (node.kind(live), node.kind(config)) {
        (Kind::Object, Kind::Object) => {
            let (Some(l), Some(c)) = (live.as_object(), config.as_object()) else {
                return config.clone();
            };
            let mut out = l.clone();
            for (name, value) in c {
                let child = node.field(name);
                let merged = match l.get(name) {
                    Some(before) if value.is_null() && child.kind(before) != Kind::Leaf => {
                        before.clone()
                    }
                    Some(before) if !before.is_null() && !value.is_null() => {
                        merge(before, value, child)
                    }
                    _ => value.clone(),
                };
                out.insert(name.clone(), merged);
            }
            Value::Object(out)
        }
        (Kind::Set, Kind::Set) => {
            let id = |v: &Value| PathElement::Value(v.to_string());
            Value::Array(merge_lists(live, config, id, |_, c| c.clone()))
        }
        (Kind::Keyed(keys), Kind::Keyed(_)) => {
            let items = node.items();
            let id = |v: &Value| PathElement::key(&item_key(v, keys));
            Value::Array(merge_lists(live, config, id, |l, c| merge(l, c, items)))
        }
        _ => config.clone(),
    }
}

/// Merges two lists of identified items: the configuration's items in its order,
/// merged with the live item of the same identity; the live object's other items kept
/// in their places relative to the shared ones.
fn merge_lists(
    live: &Value,
    config: &Value,
    id: impl Fn(&Value) -> PathElement,
    merge_item: impl Fn(&Value, &Value) -> Value,
) -> Vec<Value> {
    let l = live.as_array().map(Vec::as_slice).unwrap_or_default();
    let c = config.as_array().map(Vec::as_slice).unwrap_or_default();
    let l_ids: Vec<PathElement> = l.iter().map(&id).collect();
    let c_ids: Vec<PathElement> = c.iter().map(&id).collect();
    let live_by_id: BTreeMap<&PathElement, &Value> = l_ids.iter().zip(l).collect();
    let mut taken = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(l.len().max(c.len()));
    let (mut i, mut j) = (0, 0);
    while i < l.len() || j < c.len() {
        if i < l.len() {
            let lid = &l_ids[i];
            if !c_ids.contains(lid) {
                out.push(l[i].clone());
                i += 1;
                continue;
            }
            if taken.contains(lid) {
                i += 1;
                continue;
            }
        }
        if j < c.len() {
            let cid = &c_ids[j];
            if taken.insert(cid.clone()) {
                out.push(match live_by_id.get(cid) {
                    Some(before) => merge_item(before, &c[j]),
                    None => c[j].clone(),
                });
            }
            j += 1;
        } else {
            i += 1;
        }
    }
    out
}

/// Removes from `value` the nulls `config` sets, at the places it sets them (keyed
/// list items matched by key): a built-in type's typed object has none there. A null
/// value in a map (`labels: {team: null}`, a ConfigMap's `data: {key: null}`) is
/// its value type's zero value instead — `""` for a string — as Go's decoding of the
/// merged object makes it upstream; the key stays, owned by the applier. Nulls the
/// configuration did not write (inside raw JSON fields) stay.
pub fn drop_applied_nulls(value: &mut Value, config: &Value, node: Node) {
    match (value, config) {
        (Value::Object(v), Value::Object(c)) => {
            let map = node.is_map();
            for (name, cv) in c {
                if cv.is_null() {
                    if !v.get(name).is_some_and(Value::is_null) {
                        continue;
                    }
                    if !map {
                        v.remove(name);
                    } else if let Some(zero) = node.field(name).zero_value() {
                        v.insert(name.clone(), zero);
                    }
                } else if let Some(vv) = v.get_mut(name) {
                    drop_applied_nulls(vv, cv, node.field(name));
                }
            }
        }
        (Value::Array(v), Value::Array(c)) => match node.kind(config) {
            Kind::Keyed(keys) => {
                let items = node.items();
                for ci in c {
                    let key = item_key(ci, keys);
                    if let Some(vi) = v.iter_mut().find(|vi| item_key(vi, keys) == key) {
                        drop_applied_nulls(vi, ci, items);
                    }
                }
            }
            Kind::Set => {}
            // Replaced whole: the configuration's items, in its order.
            _ if v.len() == c.len() => {
                let items = node.items();
                for (vi, ci) in v.iter_mut().zip(c) {
                    drop_applied_nulls(vi, ci, items);
                }
            }
            _ => {}
        },
        _ => {}
    }
}

/// Removes `path` from `value` (nothing if it is not there).
pub fn remove(value: &mut Value, path: &[PathElement], node: Node) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut here = value;
    let mut node = node;
    for pe in parents {
        let (child, child_node) = match step(here, pe, node) {
            Some(found) => found,
            None => return,
        };
        here = child;
        node = child_node;
    }
    match last {
        PathElement::Field(name) => {
            if let Some(m) = here.as_object_mut() {
                m.remove(name);
            }
        }
        PathElement::Index(i) => {
            if let Some(a) = here.as_array_mut()
                && *i < a.len()
            {
                a.remove(*i);
            }
        }
        item => {
            let matches = identify(here, node);
            if let Some(a) = here.as_array_mut() {
                a.retain(|v| matches(v).as_ref() != Some(item));
            }
        }
    }
}

/// How the items of the list `list` (at `node`) are identified.
fn identify(list: &Value, node: Node) -> impl Fn(&Value) -> Option<PathElement> + use<> {
    let keys: Option<Vec<Value>> = match node.kind(list) {
        Kind::Keyed(keys) => Some(keys.to_vec()),
        _ => None,
    };
    move |v: &Value| match &keys {
        Some(keys) => v.as_object().map(|_| PathElement::key(&item_key(v, keys))),
        None => Some(PathElement::Value(v.to_string())),
    }
}

fn step<'v, 'n>(
    value: &'v mut Value,
    pe: &PathElement,
    node: Node<'n>,
) -> Option<(&'v mut Value, Node<'n>)> {
    match pe {
        PathElement::Field(name) => {
            let child = node.field(name);
            value.as_object_mut()?.get_mut(name).map(|v| (v, child))
        }
        PathElement::Index(i) => value.as_array_mut()?.get_mut(*i).map(|v| (v, node.items())),
        item => {
            let matches = identify(value, node);
            let items = node.items();
            value
                .as_array_mut()?
                .iter_mut()
                .find(|v| matches(v).as_ref() == Some(item))
                .map(|v| (v, items))
        }
    }
}

/// Whether the last element of `path` is one of the key fields of the list item it
/// is in (removing it would break the item).
pub fn is_key_field(path: &[PathElement]) -> bool {
    match path {
        [.., PathElement::Key(key), PathElement::Field(name)] => {
            serde_json::from_str::<Map<String, Value>>(key).is_ok_and(|k| k.contains_key(name))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Node<'static> {
        Node::builtin("io.k8s.api.apps.v1.Deployment")
    }

    #[test]
    fn field_sets_are_structured_merge_diffs() {
        let obj = json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "nginx", "ports": [{"containerPort": 80}], "resources": {}}
                ]}}
            }
        });
        let set = field_set(&obj, deployment());
        let expected = json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:selector": {},
                "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                    ".": {}, "f:image": {}, "f:name": {}, "f:resources": {},
                    "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                        ".": {}, "f:containerPort": {}
                    }}
                }}}}
            }
        });
        assert_eq!(set.to_fields_v1(), expected);
    }

    #[test]
    fn comparisons_find_added_modified_and_removed_fields() {
        let old = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1}});
        let new = json!({"metadata": {"labels": {"a": "1", "c": "3"}}, "spec": {"replicas": 2, "paused": true}});
        let c = compare(&old, &new, deployment());
        let paths = |s: &Set| s.to_fields_v1();
        assert_eq!(
            paths(&c.added),
            json!({"f:metadata": {"f:labels": {"f:c": {}}}, "f:spec": {"f:paused": {}}})
        );
        assert_eq!(paths(&c.modified), json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(
            paths(&c.removed),
            json!({"f:metadata": {"f:labels": {"f:b": {}}}})
        );
    }

    #[test]
    fn merges_keep_live_items_and_config_order() {
        let live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}}}});
        let config = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
            {"name": "a", "image": "a:2"},
            {"name": "c", "image": "c:1"}
        ]}}}});
        let merged = merge(&live, &config, deployment());
        assert_eq!(
            merged,
            json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "a", "image": "a:2", "env": [{"name": "X", "value": "1"}]},
                {"name": "b", "image": "b:1"},
                {"name": "c", "image": "c:1"}
            ]}}}})
        );
        let mut pruned = merged.clone();
        let item = PathElement::key(&item_key(&json!({"name": "b"}), &[json!("name")]));
        let path = [
            PathElement::Field("spec".into()),
            PathElement::Field("template".into()),
            PathElement::Field("spec".into()),
            PathElement::Field("containers".into()),
            item,
        ];
        remove(&mut pruned, &path, deployment());
        assert_eq!(
            pruned["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert!(is_key_field(&[
            path[4].clone(),
            PathElement::Field("name".into())
        ]));
        assert!(!is_key_field(&[
            path[4].clone(),
            PathElement::Field("image".into())
        ]));
    }

    #[test]
    fn nulls_are_owned_values_that_clear_leaves_but_not_granular_values() {
        let live = json!({"spec": {
            "replicas": 3,
            "paused": true,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"a": "1"}}
        }});
        let config = json!({"spec": {
            "replicas": null,
            "strategy": null,
            "selector": null,
            "minReadySeconds": null
        }});
        let set = field_set(&config, deployment());
        assert_eq!(
            set.to_fields_v1(),
            json!({"f:spec": {
                "f:replicas": {}, "f:strategy": {}, "f:selector": {}, "f:minReadySeconds": {}
            }})
        );
        let merged = merge(&live, &config, deployment());
        assert_eq!(
            merged,
            json!({"spec": {
                "replicas": null,
                "paused": true,
                "strategy": {"type": "Recreate"},
                "selector": null,
                "minReadySeconds": null
            }})
        );
        let c = compare(&live, &merged, deployment());
        assert_eq!(
            c.modified.to_fields_v1(),
            json!({"f:spec": {"f:replicas": {}, "f:selector": {}}})
        );
        // Absent and null are one state: no change.
        assert!(c.added.is_empty(), "{:?}", c.added);
        assert!(c.removed.is_empty());
        assert_eq!(
            Value::Object(created_fields(
                &json!({"spec": {"paused": null}}),
                deployment()
            )),
            json!({"f:spec": {"f:paused": {}}})
        );
    }

    #[test]
    fn a_null_that_goes_is_removed_and_only_applied_nulls_are_dropped() {
        let c = compare(
            &json!({"spec": {"paused": null}}),
            &json!({"spec": {}}),
            deployment(),
        );
        assert_eq!(
            c.removed.to_fields_v1(),
            json!({"f:spec": {"f:paused": {}}})
        );
        let node = Node::builtin("io.k8s.api.apps.v1.ControllerRevision");
        let mut merged = json!({"data": {"spec": {"x": null}}, "revision": null});
        drop_applied_nulls(&mut merged, &json!({"revision": null, "data": {}}), node);
        assert_eq!(merged, json!({"data": {"spec": {"x": null}}}));
    }

    #[test]
    fn an_applied_null_map_value_is_the_zero_value() {
        let node = Node::builtin("io.k8s.api.core.v1.ConfigMap");
        let config = json!({"metadata": {"labels": {"team": null}}, "data": {"a": null, "b": "y"}});
        let mut merged = config.clone();
        drop_applied_nulls(&mut merged, &config, node);
        assert_eq!(
            merged,
            json!({"metadata": {"labels": {"team": ""}}, "data": {"a": "", "b": "y"}})
        );
    }

    #[test]
    fn atomic_values_are_replaced() {
        let live = json!({"spec": {"selector": {"matchLabels": {"a": "1", "b": "2"}}}});
        let config = json!({"spec": {"selector": {"matchLabels": {"a": "1"}}}});
        assert_eq!(merge(&live, &config, deployment()), config);
    }
}
