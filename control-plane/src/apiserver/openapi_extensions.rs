//! The `x-kubernetes-*` schema extensions of the built-in API types — list types and
//! their keys, map types, patch strategies and merge keys — as Kubernetes' own OpenAPI
//! document declares them. `k8s-openapi`'s schemas (which berth's OpenAPI documents
//! are built from) do not carry them, so they come from a table extracted from
//! upstream's `swagger.json` (`control-plane/data/openapi-extensions.tsv`, made by
//! `control-plane/data/gen-openapi-extensions.py`). Strategic merge patch reads the
//! patch strategies, server-side apply the list and map types, and the served OpenAPI
//! documents carry all of them.

use std::collections::BTreeMap;
use std::sync::LazyLock;

const TABLE: &str = include_str!("../../data/openapi-extensions.tsv");

/// The extensions on one property of a definition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldExtensions {
    /// `x-kubernetes-list-type`: `atomic`, `set` or `map` (empty if not declared).
    pub list_type: String,
    /// `x-kubernetes-list-map-keys`.
    pub list_map_keys: Vec<String>,
    /// `x-kubernetes-map-type`: `atomic` or `granular`.
    pub map_type: String,
    /// `x-kubernetes-patch-strategy`, e.g. `merge` or `merge,retainKeys`.
    pub patch_strategy: String,
    /// `x-kubernetes-patch-merge-key`.
    pub patch_merge_key: String,
}

#[derive(Debug, Default)]
struct Table {
    fields: BTreeMap<(String, String), FieldExtensions>,
    /// Definition-level `x-kubernetes-map-type` (structs that are atomic).
    definitions: BTreeMap<String, String>,
}

fn table() -> &'static Table {
    static TABLE_DATA: LazyLock<Table> = LazyLock::new(|| parse(TABLE));
    &TABLE_DATA
}

fn parse(text: &str) -> Table {
    let mut out = Table::default();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let col = |i: usize| cols.get(i).copied().unwrap_or_default().to_owned();
        let (definition, field) = (col(0), col(1));
        if field.is_empty() {
            out.definitions.insert(definition, col(4));
            continue;
        }
        let keys = col(3);
        out.fields.insert(
            (definition, field),
            FieldExtensions {
                list_type: col(2),
                list_map_keys: keys
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect(),
                map_type: col(4),
                patch_strategy: col(5),
                patch_merge_key: col(6),
            },
        );
    }
    out
}

/// The extensions of `field` in the definition named `definition`.
pub fn field(definition: &str, field: &str) -> Option<&'static FieldExtensions> {
    table()
        .fields
        .get(&(definition.to_owned(), field.to_owned()))
}

/// The definition's own `x-kubernetes-map-type` (`atomic` for LabelSelector…).
pub fn definition_map_type(definition: &str) -> Option<&'static str> {
    table().definitions.get(definition).map(String::as_str)
}

/// Every (definition, field, extensions) in the table.
pub fn all_fields() -> impl Iterator<Item = (&'static str, &'static str, &'static FieldExtensions)>
{
    table()
        .fields
        .iter()
        .map(|((d, f), e)| (d.as_str(), f.as_str(), e))
}

/// Every definition with its own `x-kubernetes-map-type`.
pub fn all_definitions() -> impl Iterator<Item = (&'static str, &'static str)> {
    table()
        .definitions
        .iter()
        .map(|(d, t)| (d.as_str(), t.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_upstreams_list_types_and_strategies() {
        let containers = field("io.k8s.api.core.v1.PodSpec", "containers").expect("containers");
        assert_eq!(containers.list_type, "map");
        assert_eq!(containers.list_map_keys, ["name"]);
        assert_eq!(containers.patch_strategy, "merge");
        assert_eq!(containers.patch_merge_key, "name");
        let ports = field("io.k8s.api.core.v1.Container", "ports").expect("ports");
        assert_eq!(ports.list_map_keys, ["containerPort", "protocol"]);
        let spread = field("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints")
            .expect("topologySpreadConstraints");
        assert_eq!(spread.patch_merge_key, "topologyKey");
        assert_eq!(
            definition_map_type("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
            Some("atomic")
        );
        assert_eq!(
            field("io.k8s.api.core.v1.PodSpec", "tolerations").map(|e| e.list_type.as_str()),
            Some("atomic")
        );
    }
}
