//! A CRD's `Webhook` conversion strategy: objects that are not in the version wanted
//! are sent to the CRD's conversion webhook in one `ConversionReview`
//! (`apiextensions.k8s.io/v1` or `v1beta1`, the first of `conversionReviewVersions`
//! berth speaks), as kube-apiserver's webhook converter does — on every read in
//! another version than the stored one (get, list, watch, the object a write returns)
//! and on every write in another version than the storage version.
//!
//! The answer is checked as upstream checks it: the request's uid, `result.status`
//! `Success` (else its message is the error), one converted object per object sent,
//! each of the version asked for and the same kind, name, namespace and uid; its
//! metadata is the original's but for the labels and annotations the webhook set.
//! Any failure is a 500 whose message is the converter's own, as kube-apiserver passes
//! a conversion error through: `conversion webhook for <group>/<version>,
//! Kind=<kind> failed: …`.
//!
//! The webhook is reached as admission webhooks are ([`client`]): `url`, or a Service
//! resolved to a ready endpoint, verified against `caBundle`.
//!
//! Entry points: [`external`], [`external_all`], [`internal`]; without a webhook they
//! are [`ResourceDef::external`] and [`ResourceDef::internal`]. Paths that cannot wait
//! for a webhook (managed fields, ValidatingAdmissionPolicy) still only set
//! `apiVersion`; docs/api.md says so.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::WebhookClientConfig;
use serde_json::{Map, Value, json};

use crate::apiserver::Api;
use crate::apiserver::admission::validation;
use crate::apiserver::admission::webhook::client;
use crate::apiserver::crd::CrdSchema;
use crate::apiserver::object;
use crate::apiserver::registry::{ResourceDef, group_version};
use crate::apiserver::status::{ApiError, ApiResult};

/// How long a conversion webhook may take (kube-apiserver's is fixed at 30 s).
const TIMEOUT: Duration = Duration::from_secs(30);

/// The ConversionReview versions berth speaks, in no order of preference: the CRD's
/// list orders them.
const REVIEW_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// A CRD's `spec.conversion.webhook`.
#[derive(Debug, Clone)]
pub struct ConversionWebhook {
    pub client_config: WebhookClientConfig,
    pub review_versions: Vec<String>,
}

impl ConversionWebhook {
    /// From a CRD's `spec.conversion`, when its strategy is `Webhook`. A client
    /// configuration that cannot be read (validation refuses one) names nowhere, so
    /// every conversion fails rather than storing objects unconverted.
    pub fn from_spec(conversion: Option<&Value>) -> Option<Self> {
        let conversion = conversion?;
        if conversion.get("strategy").and_then(Value::as_str) != Some("Webhook") {
            return None;
        }
        let webhook = conversion.get("webhook").cloned().unwrap_or(Value::Null);
        let client_config = webhook
            .get("clientConfig")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        let review_versions = webhook
            .get("conversionReviewVersions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            client_config,
            review_versions,
        })
    }
}

/// A stored object as `def`'s version serves it.
pub async fn external(api: &Api, def: &ResourceDef, obj: Value) -> ApiResult<Value> {
    match def.conversion_webhook() {
        Some(hook) => {
            let mut out = convert(api, def, hook, vec![obj], &def.api_version(), false).await?;
            Ok(out.pop().unwrap_or(Value::Null))
        }
        None => Ok(def.external(obj)),
    }
}

/// Stored objects as `def`'s version serves them, converted in one review.
pub async fn external_all(api: &Api, def: &ResourceDef, objs: Vec<Value>) -> ApiResult<Vec<Value>> {
    match def.conversion_webhook() {
        Some(hook) => convert(api, def, hook, objs, &def.api_version(), true).await,
        None => Ok(objs.into_iter().map(|o| def.external(o)).collect()),
    }
}

/// An object in `def`'s version as it is stored.
pub async fn internal(api: &Api, def: &ResourceDef, obj: Value) -> ApiResult<Value> {
    match (def.conversion_webhook(), &def.conversion) {
        (Some(hook), Some(c)) => {
            let storage = group_version(&def.group, &c.storage_version);
            let mut out = convert(api, def, hook, vec![obj], &storage, false).await?;
            Ok(out.pop().unwrap_or(Value::Null))
        }
        _ => Ok(def.internal(obj)),
    }
}

/// The schema of `def`'s group in `version` (none when that version is not served:
/// then what the webhook returned is kept as it is).
fn schema_of(api: &Api, def: &ResourceDef, group_version: &str) -> Option<Arc<CrdSchema>> {
    let version = group_version.rsplit('/').next().unwrap_or(group_version);
    if version == def.version {
        return def.crd.clone();
    }
    api.registry
        .get(&def.group, version, &def.plural)
        .and_then(|d| d.crd.clone())
}

fn api_version(obj: &Value) -> &str {
    obj.get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A conversion failure: 500 with the reason unknown and the converter's words, as
/// kube-apiserver passes a conversion error through.
fn failure(message: String) -> ApiError {
    ApiError::new(500, "", message)
}

/// `objects` in `desired` (a group/version): those in another version through the
/// webhook, in one review, the rest as they are. `list`: the objects are a list's
/// items (upstream words a single object's errors without an index).
async fn convert(
    api: &Api,
    def: &ResourceDef,
    hook: &ConversionWebhook,
    mut objects: Vec<Value>,
    desired: &str,
    list: bool,
) -> ApiResult<Vec<Value>> {
    let todo: Vec<usize> = (0..objects.len())
        .filter(|&i| api_version(&objects[i]) != desired)
        .collect();
    let Some(&first) = todo.first() else {
        return Ok(objects);
    };
    // Named as upstream names it: the kind and version converted from.
    let gvk = format!("{}, Kind={}", api_version(&objects[first]), def.kind);
    let failed = |why: String| failure(format!("conversion webhook for {gvk} failed: {why}"));
    let review_version = hook
        .review_versions
        .iter()
        .find(|v| REVIEW_VERSIONS.contains(&v.as_str()))
        .ok_or_else(|| failure("no supported conversion review versions".into()))?;
    let uid = object::new_uid();
    let sent: Vec<&Value> = todo.iter().map(|&i| &objects[i]).collect();
    let body = json!({
        "kind": "ConversionReview",
        "apiVersion": format!("apiextensions.k8s.io/{review_version}"),
        "request": {"uid": uid, "desiredAPIVersion": desired, "objects": sent},
    });
    let body = serde_json::to_vec(&body).map_err(|e| failed(e.to_string()))?;
    let dest = client::destination(&api.cache, &hook.client_config).map_err(&failed)?;
    let answer = client::post(&hook.client_config, &dest, body, TIMEOUT)
        .await
        .map_err(|e| failed(e.message))?;
    let converted = converted_objects(&answer, &uid, review_version).map_err(&failed)?;
    // Unknown fields pruned and defaults set by the wanted version's schema.
    let schema = schema_of(api, def, desired);
    if converted.len() != todo.len() {
        return Err(failure(format!(
            "conversion webhook for {gvk} returned {} objects, expected {}",
            converted.len(),
            todo.len()
        )));
    }
    for (index, (i, mut out)) in todo.into_iter().zip(converted).enumerate() {
        let original = &objects[i];
        let at = if list {
            format!("invalid converted object at index {index}")
        } else {
            "invalid object at index 0".to_owned()
        };
        if api_version(&out) != desired {
            return Err(failure(format!(
                "conversion webhook for {gvk} returned {at}: invalid groupVersion (expected {desired}, received {})",
                api_version(&out)
            )));
        }
        let kind = |o: &Value| {
            o.get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        if kind(&out) != kind(original) {
            return Err(failure(format!(
                "conversion webhook for {gvk} returned {at}: invalid kind (expected {}, received {})",
                kind(original),
                kind(&out)
            )));
        }
        same_identity(original, &out).map_err(|why| {
            failure(if list {
                format!("conversion webhook for {gvk} returned {at}: {why}")
            } else {
                format!("conversion webhook for {gvk} returned invalid object: {why}")
            })
        })?;
        if let Some(schema) = &schema {
            schema.prune(&mut out);
        }
        restore_metadata(original, &mut out).map_err(|why| {
            failure(if list {
                format!(
                    "conversion webhook for {gvk} returned invalid metadata in object at index {index}: {why}"
                )
            } else {
                format!("conversion webhook for {gvk} returned invalid metadata: {why}")
            })
        })?;
        objects[i] = out;
    }
    Ok(objects)
}

/// The answer's `convertedObjects`, after its kind (v1), uid (v1) and result are
/// checked.
fn converted_objects(
    answer: &Value,
    uid: &str,
    review_version: &str,
) -> Result<Vec<Value>, String> {
    if review_version == "v1" {
        let got = format!(
            "{}, Kind={}",
            api_version(answer),
            answer
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
        let want = "apiextensions.k8s.io/v1, Kind=ConversionReview";
        if got != want {
            return Err(format!("expected webhook response of {want}, got {got}"));
        }
    }
    let Some(resp) = answer.get("response").filter(|r| r.is_object()) else {
        return Err("no response provided".into());
    };
    let got = resp.get("uid").and_then(Value::as_str).unwrap_or_default();
    if review_version == "v1" && got != uid {
        return Err(format!("expected response.uid=\"{uid}\", got \"{got}\""));
    }
    let status = resp
        .pointer("/result/status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if status != "Success" {
        let message = resp
            .pointer("/result/message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Err(if message.is_empty() {
            format!("response.result.status was '{status}', not 'Success'")
        } else {
            message.to_owned()
        });
    }
    Ok(resp
        .get("convertedObjects")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// A converted object names the object it was made from.
fn same_identity(original: &Value, out: &Value) -> Result<(), String> {
    for (field, what) in [("name", "name"), ("namespace", "namespace"), ("uid", "UID")] {
        let get = |o: &Value| {
            o.pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (e, a) = (get(original), get(out));
        if e != a {
            return Err(format!("must have the same {what}: {e} != {a}"));
        }
    }
    Ok(())
}

/// The original's metadata, with the labels and annotations the webhook gave (a
/// webhook may change those, and nothing else of it).
fn restore_metadata(original: &Value, out: &mut Value) -> Result<(), String> {
    let Some(response) = out.get("metadata") else {
        return Err("missing metadata in converted object".into());
    };
    let Some(response) = response.as_object().cloned() else {
        return Err(format!(
            "invalid metadata of type {} in converted object",
            json_type(response)
        ));
    };
    let mut meta: Map<String, Value> = original
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for field in ["labels", "annotations"] {
        match response.get(field) {
            None | Some(Value::Null) => {
                meta.remove(field);
            }
            Some(Value::Object(m)) => {
                if let Some((k, v)) = m.iter().find(|(_, v)| !v.is_string()) {
                    return Err(format!(
                        "metadata.{field}[{k}] must be a string, but is {} in converted object",
                        json_type(v)
                    ));
                }
                meta.insert(field.to_owned(), Value::Object(m.clone()));
            }
            Some(other) => {
                return Err(format!(
                    "invalid metadata.{field} of type {} in converted object",
                    json_type(other)
                ));
            }
        }
    }
    // Labels and annotations the webhook changed must be valid ones.
    let before = original.get("metadata").unwrap_or(&Value::Null);
    let changed = ["labels", "annotations"]
        .iter()
        .any(|f| before.get(*f) != meta.get(*f));
    let meta = Value::Object(meta);
    if changed {
        let causes = validation::labels_and_annotations(&meta, "metadata");
        if !causes.is_empty() {
            let errs: Vec<String> = causes
                .iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect();
            // Go's aggregate error: one as it is, more in brackets.
            return Err(if errs.len() == 1 {
                errs.join("")
            } else {
                format!("[{}]", errs.join(", "))
            });
        }
    }
    out["metadata"] = meta;
    Ok(())
}

/// A JSON value's type as Go's decoder names it (`%T` of an unstructured value).
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int64",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_checked_for_its_uid_and_result() {
        let review = |response: Value| {
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
                "response": response})
        };
        let ok = review(json!({"uid": "u1", "result": {"status": "Success"},
            "convertedObjects": [{"a": 1}]}));
        assert_eq!(
            converted_objects(&ok, "u1", "v1"),
            Ok(vec![json!({"a": 1})])
        );
        assert_eq!(
            converted_objects(&ok, "u2", "v1"),
            Err("expected response.uid=\"u2\", got \"u1\"".into())
        );
        // v1beta1 answers are not checked for their uid or kind.
        assert!(converted_objects(&ok, "u2", "v1beta1").is_ok());
        let failed = review(json!({"uid": "u1",
            "result": {"status": "Failure", "message": "no way"}}));
        assert_eq!(converted_objects(&failed, "u1", "v1"), Err("no way".into()));
        let bare = review(json!({"uid": "u1", "result": {"status": "Failure"}}));
        assert_eq!(
            converted_objects(&bare, "u1", "v1"),
            Err("response.result.status was 'Failure', not 'Success'".into())
        );
        let empty = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview"});
        assert_eq!(
            converted_objects(&empty, "u1", "v1"),
            Err("no response provided".into())
        );
        assert_eq!(
            converted_objects(&json!({"response": {}}), "u1", "v1"),
            Err("expected webhook response of apiextensions.k8s.io/v1, Kind=ConversionReview, got , Kind=".into())
        );
    }

    #[test]
    fn only_labels_and_annotations_come_from_the_webhook() {
        let original = json!({"metadata": {"name": "a", "uid": "1", "resourceVersion": "7",
            "labels": {"old": "x"}, "annotations": {"keep": "y"}}});
        let mut out = json!({"metadata": {"name": "a", "uid": "1", "resourceVersion": "99",
            "generation": 5, "labels": {"new": "z"}}, "spec": {}});
        assert_eq!(same_identity(&original, &out), Ok(()));
        restore_metadata(&original, &mut out).expect("restored");
        assert_eq!(
            out["metadata"],
            json!({"name": "a", "uid": "1", "resourceVersion": "7", "labels": {"new": "z"}})
        );
        let renamed = json!({"metadata": {"name": "b", "uid": "1"}});
        assert_eq!(
            same_identity(&original, &renamed),
            Err("must have the same name: a != b".into())
        );
        let mut bad = json!({"metadata": {"labels": {"n": 1}}});
        assert_eq!(
            restore_metadata(&original, &mut bad),
            Err("metadata.labels[n] must be a string, but is int64 in converted object".into())
        );
        let mut bad_key = json!({"metadata": {"name": "a", "labels": {"-no": "x"}}});
        let said = restore_metadata(&original, &mut bad_key).expect_err("an invalid key");
        assert!(
            said.starts_with("metadata.labels: Invalid value: \"-no\""),
            "{said}"
        );
        let mut none = json!({"spec": {}});
        assert_eq!(
            restore_metadata(&original, &mut none),
            Err("missing metadata in converted object".into())
        );
    }

    #[test]
    fn a_spec_names_its_webhook_only_with_the_webhook_strategy() {
        let spec = json!({"strategy": "Webhook", "webhook": {
            "clientConfig": {"url": "https://h/convert"},
            "conversionReviewVersions": ["v1", "v1beta1"]}});
        let hook = ConversionWebhook::from_spec(Some(&spec)).expect("a webhook");
        assert_eq!(hook.client_config.url.as_deref(), Some("https://h/convert"));
        assert_eq!(hook.review_versions, ["v1", "v1beta1"]);
        assert!(ConversionWebhook::from_spec(Some(&json!({"strategy": "None"}))).is_none());
        assert!(ConversionWebhook::from_spec(None).is_none());
    }
}
