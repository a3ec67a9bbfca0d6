//! CustomResourceDefinitions: each served version of a CRD becomes a [`ResourceDef`]
//! (its plural, kind, scope, short names, categories, status and scale subresources);
//! its structural `openAPIV3Schema` checks types, applies `default`s and prunes unknown
//! fields (unless `x-kubernetes-preserve-unknown-fields`), as the apiextensions
//! apiserver does. The CRD gets `NamesAccepted` and `Established` conditions once served.
//!
//! Entry point: [`run`], which follows CRDs in the watch cache.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::Api;
use super::conversion::webhook::ConversionWebhook;
use super::object;
use super::registry::{Conversion, Convert, ResourceDef, ScalePaths};
use super::status::{ApiError, ApiResult, Cause};
use super::watch_cache::ChangeKind;

const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub kind: String,
    pub json_path: String,
    pub priority: i64,
}

/// A served version's schema.
#[derive(Debug, Clone)]
pub struct CrdSchema {
    pub schema: Value,
    pub printer_columns: Vec<PrinterColumn>,
    pub kind: String,
}

impl CrdSchema {
    /// Validates, defaults and prunes a custom resource in place.
    pub fn apply(&self, obj: &mut Value, strict: bool) -> ApiResult<()> {
        // Metadata is ObjectMeta, decoded as upstream's typed form.
        super::zero_values::zero_meta_nulls(obj);
        let (causes, unknown) = self.walk(obj);
        if strict && !unknown.is_empty() {
            return Err(ApiError::unknown_fields(&unknown));
        }
        if !causes.is_empty() {
            let name = object::name(obj).to_owned();
            return Err(ApiError::invalid("", &self.kind, &name, causes));
        }
        Ok(())
    }

    /// Prunes unknown fields and sets defaults without validating, as kube-apiserver
    /// treats what a conversion webhook returns.
    pub fn prune(&self, obj: &mut Value) {
        self.walk(obj);
    }

    /// Prunes and defaults in place; what is invalid and what was unknown.
    fn walk(&self, obj: &mut Value) -> (Vec<Cause>, Vec<String>) {
        let mut causes = Vec::new();
        let mut unknown = Vec::new();
        if let Some(map) = obj.as_object_mut() {
            let props = self.schema.get("properties").and_then(Value::as_object);
            // Nulls and defaults before validation, as upstream defaults while decoding.
            drop_nulls(map, &self.schema);
            if let Some(p) = props {
                apply_defaults(map, p);
            }
            for r in strs(self.schema.get("required")) {
                if !map.contains_key(&r) {
                    causes.push(Cause::required(r));
                }
            }
            for (key, value) in map.iter_mut() {
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(schema) = props.and_then(|p| p.get(key)) {
                    walk(value, schema, key, &mut causes, &mut unknown);
                }
            }
            if !preserves(&self.schema) {
                let keep: Vec<String> = props
                    .map(|p| p.keys().cloned().collect())
                    .unwrap_or_default();
                map.retain(|k, _| {
                    let known = matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                        || keep.contains(k);
                    if !known {
                        unknown.push(k.clone());
                    }
                    known
                });
            }
        }
        (causes, unknown)
    }
}

fn preserves(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
}

fn nullable(schema: &Value) -> bool {
    schema.get("nullable") == Some(&Value::Bool(true))
}

/// The apiextensions apiserver's treatment of `null`s before defaulting: a property
/// (or a map value, by `additionalProperties`) whose schema is not `nullable` gets its
/// `default` for a null, or loses the null (then `required` names it); a nullable one
/// keeps it. Likewise list items.
fn drop_nulls(map: &mut Map<String, Value>, schema: &Value) {
    let props = schema.get("properties").and_then(Value::as_object);
    let extra = schema.get("additionalProperties").filter(|a| a.is_object());
    let field = |key: &str| props.and_then(|p| p.get(key)).or(extra);
    map.retain(|key, value| {
        !value.is_null() || field(key).is_none_or(|s| nullable(s) || s.get("default").is_some())
    });
    for (key, value) in map.iter_mut() {
        if value.is_null()
            && let Some(s) = field(key)
            && !nullable(s)
            && let Some(d) = s.get("default")
        {
            *value = d.clone();
        }
    }
}

fn apply_defaults(map: &mut Map<String, Value>, props: &Map<String, Value>) {
    for (key, schema) in props {
        if !map.contains_key(key)
            && let Some(d) = schema.get("default")
        {
            map.insert(key.clone(), d.clone());
        }
        if let (Some(Value::Object(child)), Some(child_props)) = (
            map.get_mut(key),
            schema.get("properties").and_then(Value::as_object),
        ) {
            apply_defaults(child, child_props);
        }
    }
}

fn type_ok(value: &Value, ty: &str, schema: &Value) -> bool {
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return value.is_i64() || value.is_u64() || value.is_string();
    }
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    }
}

fn walk(
    value: &mut Value,
    schema: &Value,
    path: &str,
    causes: &mut Vec<Cause>,
    unknown: &mut Vec<String>,
) {
    if value.is_null() {
        // Properties lost theirs before (`drop_nulls`); this is a list item or a
        // map value.
        if let Some(ty) = schema.get("type").and_then(Value::as_str)
            && !nullable(schema)
        {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                field: path.into(),
                message: format!(
                    "Invalid value: \"null\": {path} in body must be of type {ty}: \"null\""
                ),
            });
        }
        return;
    }
    if let Value::Object(map) = value {
        drop_nulls(map, schema);
        if let Some(p) = schema.get("properties").and_then(Value::as_object) {
            apply_defaults(map, p);
        }
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !type_ok(value, ty, schema)
    {
        let got = match value {
            Value::Object(_) => "object",
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            Value::Null => "null",
        };
        causes.push(Cause {
            reason: "FieldValueTypeInvalid",
            field: path.into(),
            message: format!(
                "Invalid value: \"{got}\": {path} in body must be of type {ty}: \"{got}\""
            ),
        });
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: path.into(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                allowed
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if let (Some(min), Some(v)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) && v < min
    {
        causes.push(Cause::invalid(
            path,
            format!("Invalid value: {v}: {path} in body should be greater than or equal to {min}"),
        ));
    }
    if let (Some(max), Some(v)) = (
        schema.get("maximum").and_then(Value::as_f64),
        value.as_f64(),
    ) && v > max
    {
        causes.push(Cause::invalid(
            path,
            format!("Invalid value: {v}: {path} in body should be less than or equal to {max}"),
        ));
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array)
        && let Some(map) = value.as_object()
    {
        for r in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                causes.push(Cause::required(format!("{path}.{r}")));
            }
        }
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map.iter_mut() {
                let child = format!("{path}.{k}");
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    walk(v, s, &child, causes, unknown);
                } else if let Some(s) = extra {
                    walk(v, s, &child, causes, unknown);
                }
            }
            if props.is_some() && extra.is_none() && !preserves(schema) {
                let keep: Vec<String> = props
                    .map(|p| p.keys().cloned().collect())
                    .unwrap_or_default();
                map.retain(|k, _| {
                    let known = keep.contains(k);
                    if !known {
                        unknown.push(format!("{path}.{k}"));
                    }
                    known
                });
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                if !nullable(s)
                    && let Some(d) = s.get("default")
                {
                    items
                        .iter_mut()
                        .filter(|i| i.is_null())
                        .for_each(|i| *i = d.clone());
                }
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item, s, &format!("{path}[{i}]"), causes, unknown);
                }
            }
        }
        _ => {}
    }
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The resources a CRD serves (one per served version).
pub fn resource_defs(crd: &Value) -> Vec<ResourceDef> {
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let names = spec.get("names").cloned().unwrap_or(Value::Null);
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let kind = s(&names, "kind");
    let plural = s(&names, "plural");
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Objects are stored in the storage version and read in the one asked for, by the
    // conversion webhook (the `Webhook` strategy) or with `apiVersion` the only
    // difference (`None`) — with one version too, as objects may have been stored in
    // a version since removed.
    let listed: Arc<[String]> = versions.iter().map(|v| s(v, "name")).collect();
    let webhook = ConversionWebhook::from_spec(spec.get("conversion")).map(Arc::new);
    let conversion = versions
        .iter()
        .find(|v| v.get("storage") == Some(&Value::Bool(true)))
        .map(|v| Conversion {
            storage_version: s(v, "name"),
            how: Convert::ApiVersion {
                versions: listed,
                webhook,
            },
        });
    let mut out = Vec::new();
    for version in versions {
        if version.get("served") != Some(&Value::Bool(true)) {
            continue;
        }
        let schema = version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        let printer_columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: s(c, "name"),
                        kind: s(c, "type"),
                        json_path: s(c, "jsonPath"),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let scale = version.pointer("/subresources/scale").map(|sc| ScalePaths {
            spec_replicas: s(sc, "specReplicasPath"),
            status_replicas: s(sc, "statusReplicasPath"),
            label_selector: sc
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
        out.push(ResourceDef {
            group: group.clone(),
            version: s(&version, "name"),
            kind: kind.clone(),
            list_kind: names
                .get("listKind")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{kind}List")),
            plural: plural.clone(),
            singular: names
                .get("singular")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| kind.to_lowercase()),
            namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
            short_names: strs(names.get("shortNames")),
            categories: strs(names.get("categories")),
            status: version.pointer("/subresources/status").is_some(),
            scale,
            subresources: Vec::new(),
            generation: true,
            typed: None,
            create_only: false,
            crd: Some(Arc::new(CrdSchema {
                schema,
                printer_columns,
                kind: kind.clone(),
            })),
            conversion: conversion.clone(),
            metrics: false,
        });
    }
    out
}

/// Serves the custom resources of every CRD, following CRD changes.
pub async fn run(api: Arc<Api>) {
    let (existing, mut watch) = api.cache.snapshot_and_watch(CRD_PREFIX);
    for crd in existing {
        establish(&api, &crd.value()).await;
    }
    loop {
        match watch.live.recv().await {
            Ok(change) if change.object.key.starts_with(CRD_PREFIX) => {
                let crd = change.object.value();
                if change.kind == ChangeKind::Deleted {
                    withdraw(&api, &crd);
                } else {
                    // Only what the new CRD no longer serves goes; the rest is replaced
                    // in place, so discovery never shows the group half-made between a
                    // withdraw and the establish (a status update re-registers it).
                    if let Some(prev) = &change.prev {
                        let kept: Vec<(String, String, String)> = resource_defs(&crd)
                            .into_iter()
                            .map(|d| (d.group, d.version, d.plural))
                            .collect();
                        for def in resource_defs(&prev.value()) {
                            let key = (def.group, def.version, def.plural);
                            if !kept.contains(&key) {
                                api.registry.remove(&key.0, &key.1, &key.2);
                            }
                        }
                    }
                    establish(&api, &crd).await;
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                let (all, _) = api.cache.list(CRD_PREFIX, |_| true);
                for crd in all {
                    establish(&api, &crd.value()).await;
                }
            }
            Err(_) => return,
        }
    }
}

fn withdraw(api: &Api, crd: &Value) {
    for def in resource_defs(crd) {
        api.registry.remove(&def.group, &def.version, &def.plural);
    }
}

async fn establish(api: &Arc<Api>, crd: &Value) {
    for def in resource_defs(crd) {
        api.registry.insert(def);
    }
    let established = crd
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type") == Some(&json!("Established"))
                    && c.get("status") == Some(&json!("True"))
            })
        });
    if established || crd.pointer("/metadata/deletionTimestamp").is_some() {
        return;
    }
    let name = object::name(crd).to_owned();
    let key = format!("{CRD_PREFIX}{name}");
    let Ok(Some(kv)) = api.store.get(&key, None).await else {
        return;
    };
    let Ok(mut current) = serde_json::from_slice::<Value>(&kv.value) else {
        return;
    };
    let now = object::now();
    let names = current
        .pointer("/spec/names")
        .cloned()
        .unwrap_or(Value::Null);
    current["status"] = json!({
        "acceptedNames": names,
        "storedVersions": current.pointer("/spec/versions").and_then(Value::as_array).map(|vs| {
            vs.iter().filter(|v| v.get("storage") == Some(&json!(true))).filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()
        }).unwrap_or_default(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    });
    if let Err(err) = api
        .store
        .update(key, object::encode(&current), kv.mod_revision)
        .await
    {
        tracing::debug!(%err, crd = %name, "CRD status update raced; the next change retries");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> CrdSchema {
        CrdSchema {
            schema: json!({
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer"},
                            "mode": {"type": "string", "default": "fast"},
                            "note": {"type": "string", "nullable": true},
                            "tags": {"type": "array", "items": {"type": "string"}}
                        }
                    }
                }
            }),
            printer_columns: Vec::new(),
            kind: "Widget".into(),
        }
    }

    #[test]
    fn nulls_are_defaulted_dropped_or_kept_as_the_schema_says() {
        let s = schema();
        let mut obj = json!({"spec": {"size": 1, "mode": null, "note": null}});
        s.apply(&mut obj, false).expect("valid");
        assert_eq!(
            obj,
            json!({"spec": {"size": 1, "mode": "fast", "note": null}})
        );

        let mut obj = json!({"spec": {"size": null}});
        let err = s.apply(&mut obj, false).expect_err("size is required");
        assert!(
            err.message.contains("spec.size: Required value"),
            "{}",
            err.message
        );

        let mut obj = json!({"spec": {"size": 1, "tags": ["a", null]}});
        let err = s.apply(&mut obj, false).expect_err("a null item");
        assert!(
            err.message
                .contains("spec.tags[1] in body must be of type string: \"null\""),
            "{}",
            err.message
        );

        let mut obj = json!({"metadata": {"name": "w"}, "spec": null});
        let err = s.apply(&mut obj, false).expect_err("spec is required");
        assert!(
            err.message.contains("spec: Required value"),
            "{}",
            err.message
        );

        // A required property with a default is defaulted first; a null map value of
        // a non-nullable value schema goes.
        let defaulted = CrdSchema {
            schema: json!({
                "type": "object",
                "required": ["spec"],
                "properties": {"spec": {
                    "type": "object",
                    "default": {},
                    "required": ["mode"],
                    "properties": {
                        "mode": {"type": "string", "default": "fast"},
                        "limits": {"type": "object", "additionalProperties": {"type": "string"}}
                    }
                }}
            }),
            printer_columns: Vec::new(),
            kind: "Widget".into(),
        };
        let mut obj = json!({"metadata": {"name": "w"}});
        defaulted
            .apply(&mut obj, false)
            .expect("defaulted before required");
        assert_eq!(obj["spec"], json!({"mode": "fast"}));
        let mut obj = json!({"spec": {"limits": {"cpu": "1", "memory": null}}});
        defaulted
            .apply(&mut obj, false)
            .expect("the null map value goes");
        assert_eq!(obj["spec"]["limits"], json!({"cpu": "1"}));
    }
}
