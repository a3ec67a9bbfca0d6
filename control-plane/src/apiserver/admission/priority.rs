//! The Priority admission plugin: a pod's `priorityClassName` is resolved to
//! `priority` and `preemptionPolicy` from its PriorityClass (or from the class marked
//! `globalDefault` when it names none; 0 and `PreemptLowerPriority` when there is none). The built-in
//! `system-cluster-critical` and `system-node-critical` classes always exist. An
//! unknown class, or a `priority` or `preemptionPolicy` that disagrees with the class,
//! is refused with 403 as Kubernetes refuses it.

use serde_json::{Value, json};

use crate::apiserver::status::ApiError;
use crate::apiserver::watch_cache::WatchCache;

const PREFIX: &str = "/registry/scheduling.k8s.io/priorityclasses/";
const PREEMPT_LOWER_PRIORITY: &str = "PreemptLowerPriority";

fn builtin(name: &str) -> Option<i64> {
    match name {
        "system-node-critical" => Some(2_000_001_000),
        "system-cluster-critical" => Some(2_000_000_000),
        _ => None,
    }
}

/// Resolves the pod's priority in place.
pub fn admit(cache: &WatchCache, pod: &mut Value) -> Result<(), ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let class = spec
        .get("priorityClassName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let (class_name, value, policy) = match class {
        Some(c) => match cache.get(&format!("{PREFIX}{c}")) {
            Some(obj) => {
                let v = obj.value();
                (
                    Some(c),
                    v.get("value").and_then(Value::as_i64).unwrap_or(0),
                    v.get("preemptionPolicy")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                )
            }
            None => match builtin(&c) {
                Some(v) => (Some(c), v, None::<String>),
                None => {
                    return Err(ApiError::forbidden(format!(
                        "pods \"{name}\" is forbidden: no PriorityClass with name {c} was found"
                    )));
                }
            },
        },
        None => {
            let (items, _) = cache.list(PREFIX, |_| true);
            let default = items
                .iter()
                .map(|o| o.value())
                .find(|v| v.get("globalDefault").and_then(Value::as_bool) == Some(true));
            match default {
                Some(v) => (
                    v.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    v.get("value").and_then(Value::as_i64).unwrap_or(0),
                    v.get("preemptionPolicy")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                ),
                None => (None, 0, None),
            }
        }
    };
    if let Some(given) = spec.get("priority").and_then(Value::as_i64)
        && given != value
    {
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
        )));
    }
    // A class without a policy (the built-in ones, no class at all) preempts lower
    // priorities, PriorityClass's default.
    let policy = policy.unwrap_or_else(|| PREEMPT_LOWER_PRIORITY.to_owned());
    if let Some(given) = spec.get("preemptionPolicy").and_then(Value::as_str)
        && given != policy
    {
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
        )));
    }
    spec.insert("priority".into(), json!(value));
    if let Some(c) = class_name {
        spec.insert("priorityClassName".into(), json!(c));
    }
    spec.insert("preemptionPolicy".into(), json!(policy));
    Ok(())
}
