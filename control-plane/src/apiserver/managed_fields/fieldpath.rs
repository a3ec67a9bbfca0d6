//! Field paths and sets of them, as structured-merge-diff defines them and
//! `metadata.managedFields[].fieldsV1` encodes them: a path is a list of elements —
//! a struct field or map key (`f:name`), a list item by its key fields
//! (`k:{"name":"nginx"}`), a set item by its value (`v:"a"`) or an item by index
//! (`i:0`) — and a set is a tree whose nodes are members (`.`) or only parents.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A struct field or a map key.
    Field(String),
    /// An item of an associative list: the JSON object of its key fields (keys sorted).
    Key(String),
    /// An item of a set: its JSON value.
    Value(String),
    /// An item of an atomic list, by position.
    Index(usize),
}

impl PathElement {
    /// The `fieldsV1` form: `f:…`, `k:…`, `v:…`, `i:…`.
    pub fn encode(&self) -> String {
        match self {
            Self::Field(f) => format!("f:{f}"),
            Self::Key(k) => format!("k:{k}"),
            Self::Value(v) => format!("v:{v}"),
            Self::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses the `fieldsV1` form.
    pub fn decode(text: &str) -> Result<Self, String> {
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| format!("invalid path element {text:?}"))?;
        match kind {
            "f" => Ok(Self::Field(rest.to_owned())),
            "k" => {
                let key: Value = serde_json::from_str(rest)
                    .map_err(|e| format!("invalid key in path element {text:?}: {e}"))?;
                if !key.is_object() {
                    return Err(format!(
                        "invalid key in path element {text:?}: not an object"
                    ));
                }
                Ok(Self::Key(key.to_string()))
            }
            "v" => {
                let value: Value = serde_json::from_str(rest)
                    .map_err(|e| format!("invalid value in path element {text:?}: {e}"))?;
                Ok(Self::Value(value.to_string()))
            }
            "i" => rest
                .parse()
                .map(Self::Index)
                .map_err(|_| format!("invalid index in path element {text:?}")),
            _ => Err(format!("invalid path element {text:?}")),
        }
    }

    /// The key of a list item from its key fields.
    pub fn key(fields: &Map<String, Value>) -> Self {
        Self::Key(Value::Object(fields.clone()).to_string())
    }
}

/// A path from the object's root.
pub type Path = Vec<PathElement>;

/// Shows a path as structured-merge-diff does in conflict messages:
/// `.spec.template.spec.containers[name="nginx"].image`.
#[derive(Debug)]
pub struct Display<'a>(pub &'a [PathElement]);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for element in self.0 {
            match element {
                PathElement::Field(name) => write!(f, ".{name}")?,
                PathElement::Key(key) => {
                    let fields: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
                    let parts: Vec<String> =
                        fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    write!(f, "[{}]", parts.join(","))?;
                }
                PathElement::Value(v) => write!(f, "[={v}]")?,
                PathElement::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// A set of paths, as a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    /// Elements that are themselves in the set.
    members: BTreeSet<PathElement>,
    /// Elements with paths below them in the set (never empty sets).
    children: BTreeMap<PathElement, Set>,
}

impl Set {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Adds `path` (a non-empty path; the empty path is ignored).
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => match self.children.get_mut(first) {
                Some(child) => child.insert(rest),
                None => {
                    let mut child = Set::new();
                    child.insert(rest);
                    self.children.insert(first.clone(), child);
                }
            },
        }
    }

    /// Removes `path` and everything below it.
    pub fn remove_tree(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.remove(last);
                self.children.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = self.children.get_mut(first) {
                    child.remove_tree(rest);
                    if child.is_empty() {
                        self.children.remove(first);
                    }
                }
            }
        }
    }

    /// Whether `path` itself is in the set.
    pub fn has(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    /// Whether `path` or any path below it is in the set.
    pub fn has_prefix(&self, path: &[PathElement]) -> bool {
        match path {
            [] => !self.is_empty(),
            [last] => self.members.contains(last) || self.children.contains_key(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has_prefix(rest)),
        }
    }

    /// The paths below `path` (the subtree), if any.
    pub fn below(&self, path: &[PathElement]) -> Option<&Set> {
        match path {
            [] => Some(self),
            [first, rest @ ..] => self.children.get(first)?.below(rest),
        }
    }

    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.members.extend(other.members.iter().cloned());
        for (pe, child) in &other.children {
            let merged = match out.children.get(pe) {
                Some(mine) => mine.union(child),
                None => child.clone(),
            };
            out.children.insert(pe.clone(), merged);
        }
        out
    }

    pub fn difference(&self, other: &Set) -> Set {
        let members = self
            .members
            .iter()
            .filter(|m| !other.members.contains(m))
            .cloned()
            .collect();
        let mut children = BTreeMap::new();
        for (pe, child) in &self.children {
            let rest = match other.children.get(pe) {
                Some(theirs) => child.difference(theirs),
                None => child.clone(),
            };
            if !rest.is_empty() {
                children.insert(pe.clone(), rest);
            }
        }
        Set { members, children }
    }

    pub fn intersection(&self, other: &Set) -> Set {
        let members = self
            .members
            .iter()
            .filter(|m| other.members.contains(m))
            .cloned()
            .collect();
        let mut children = BTreeMap::new();
        for (pe, child) in &self.children {
            if let Some(theirs) = other.children.get(pe) {
                let both = child.intersection(theirs);
                if !both.is_empty() {
                    children.insert(pe.clone(), both);
                }
            }
        }
        Set { members, children }
    }

    /// Every path in the set, in order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        let mut elements: BTreeSet<&PathElement> = self.members.iter().collect();
        elements.extend(self.children.keys());
        for pe in elements {
            prefix.push(pe.clone());
            if self.members.contains(pe) {
                out.push(prefix.clone());
            }
            if let Some(child) = self.children.get(pe) {
                child.collect(prefix, out);
            }
            prefix.pop();
        }
    }

    /// The `fieldsV1` JSON.
    pub fn to_fields_v1(&self) -> Value {
        let mut out = Map::new();
        let mut elements: BTreeSet<&PathElement> = self.members.iter().collect();
        elements.extend(self.children.keys());
        for pe in elements {
            let mut node = match self.children.get(pe) {
                Some(child) => match child.to_fields_v1() {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
                None => Map::new(),
            };
            if self.members.contains(pe) && !node.is_empty() {
                node.insert(".".into(), Value::Object(Map::new()));
            }
            out.insert(pe.encode(), Value::Object(node));
        }
        Value::Object(out)
    }

    /// Parses `fieldsV1`.
    pub fn from_fields_v1(value: &Value) -> Result<Set, String> {
        let map = value
            .as_object()
            .ok_or_else(|| "fieldsV1 must be a JSON object".to_owned())?;
        let mut out = Set::new();
        for (key, node) in map {
            if key == "." {
                continue;
            }
            let pe = PathElement::decode(key)?;
            let inner = node
                .as_object()
                .ok_or_else(|| format!("the value of {key:?} in fieldsV1 must be an object"))?;
            if inner.is_empty() || inner.contains_key(".") {
                out.members.insert(pe.clone());
            }
            let child = Set::from_fields_v1(node)?;
            if !child.is_empty() {
                out.children.insert(pe, child);
            }
        }
        Ok(out)
    }
}

/// Adds the member `path` to a `fieldsV1` tree in place (the hot path of updates,
/// which touch a few paths of sets they need not decode).
pub fn fields_insert(tree: &mut Map<String, Value>, path: &[PathElement]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let key = first.encode();
    let existed = tree.contains_key(&key);
    let node = tree.entry(key).or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(map) = node else {
        return;
    };
    if rest.is_empty() {
        if existed && !map.is_empty() {
            map.insert(".".into(), Value::Object(Map::new()));
        }
        return;
    }
    if existed && map.is_empty() {
        // A member leaf gains children: it stays a member.
        map.insert(".".into(), Value::Object(Map::new()));
    }
    fields_insert(map, rest);
}

/// Removes the member `path` from a `fieldsV1` tree in place (what is below it
/// stays), dropping parents left without members.
pub fn fields_remove(tree: &mut Map<String, Value>, path: &[PathElement]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let key = first.encode();
    let Some(Value::Object(map)) = tree.get_mut(&key) else {
        return;
    };
    if rest.is_empty() {
        if map.is_empty() {
            tree.remove(&key);
        } else {
            map.remove(".");
            if map.is_empty() {
                tree.remove(&key);
            }
        }
        return;
    }
    if map.is_empty() {
        return;
    }
    let member = map.contains_key(".");
    fields_remove(map, rest);
    if map.is_empty() || (member && map.len() == 1) {
        if member {
            map.remove(".");
        } else {
            tree.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(name: &str) -> PathElement {
        PathElement::Field(name.into())
    }

    #[test]
    fn fields_v1_round_trips_with_members_and_parents() {
        let text = json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}}
                }}}
            }
        });
        let set = Set::from_fields_v1(&text).expect("parse");
        assert!(set.has(&[f("spec"), f("replicas")]));
        assert!(!set.has(&[f("spec")]));
        assert!(set.has_prefix(&[f("spec")]));
        let item = PathElement::Key(r#"{"name":"nginx"}"#.into());
        let path = [f("spec"), f("template"), f("spec"), f("containers"), item];
        assert!(set.has(&path));
        assert_eq!(set.to_fields_v1(), text);
        assert_eq!(set.paths().len(), 5);
        let mut image = path.to_vec();
        image.push(f("image"));
        assert_eq!(
            Display(&image).to_string(),
            r#".spec.template.spec.containers[name="nginx"].image"#
        );
    }

    #[test]
    fn fields_v1_edits_in_place_match_the_set_algebra() {
        let text = json!({
            "f:metadata": {"f:labels": {".": {}, "f:a": {}}},
            "f:spec": {"f:replicas": {}}
        });
        let mut tree = text.as_object().cloned().unwrap_or_default();
        fields_remove(&mut tree, &[f("spec"), f("replicas")]);
        fields_remove(&mut tree, &[f("metadata"), f("labels"), f("a")]);
        assert_eq!(
            Value::Object(tree.clone()),
            json!({"f:metadata": {"f:labels": {}}})
        );
        fields_insert(&mut tree, &[f("metadata"), f("labels"), f("b")]);
        fields_insert(&mut tree, &[f("spec"), f("paused")]);
        let expected = json!({
            "f:metadata": {"f:labels": {".": {}, "f:b": {}}},
            "f:spec": {"f:paused": {}}
        });
        assert_eq!(Value::Object(tree.clone()), expected);
        let set = Set::from_fields_v1(&Value::Object(tree)).expect("parse");
        assert!(set.has(&[f("metadata"), f("labels")]));
        assert!(set.has(&[f("spec"), f("paused")]));
        let mut gone = json!({"f:x": {".": {}, "f:y": {}}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        fields_remove(&mut gone, &[f("x"), f("y")]);
        assert_eq!(Value::Object(gone.clone()), json!({"f:x": {}}));
        fields_remove(&mut gone, &[f("x")]);
        assert!(gone.is_empty());
    }

    #[test]
    fn set_algebra() {
        let mut a = Set::new();
        a.insert(&[f("a"), f("b")]);
        a.insert(&[f("a"), f("c")]);
        a.insert(&[f("d")]);
        let mut b = Set::new();
        b.insert(&[f("a"), f("b")]);
        b.insert(&[f("e")]);
        let diff = a.difference(&b);
        assert!(!diff.has(&[f("a"), f("b")]));
        assert!(diff.has(&[f("a"), f("c")]) && diff.has(&[f("d")]));
        let both = a.intersection(&b);
        assert_eq!(both.paths(), vec![vec![f("a"), f("b")]]);
        let all = a.union(&b);
        assert_eq!(all.paths().len(), 4);
        assert!(a.difference(&a).is_empty());
        assert!(PathElement::decode("x:1").is_err());
        assert!(Set::from_fields_v1(&json!({"k:[1]": {}})).is_err());
    }
}
