//! The ResourceQuota admission plugin, as kube-apiserver's
//! (`k8s.io/apiserver/pkg/admission/plugin/resourcequota`): the last validating
//! admission before an object is written. A create — and an update that can change
//! what an object is charged (a claim's storage, a service's type, a pod entering the
//! Terminating scope) — is measured against every ResourceQuota of its namespace
//! that limits something it uses and whose scopes it is in: refused with 403 and
//! upstream's words when it would exceed one (`exceeded quota: …`), when a pod leaves
//! out a CPU or memory value a quota limits (`failed quota: …: must specify …`) or
//! when a quota has not been counted yet (`status unknown for quota: …`); otherwise
//! its usage is added to each such quota's `status.used` with a compare-and-swap
//! write on the quota before the object is stored, so concurrent creates cannot both
//! take the last unit. A dry run is measured but charges nothing; a charge whose
//! object is then not stored stays until the quota controller recounts.
//!
//! Also the ResourceQuota object's own rules: a new quota starts without status, and
//! its `spec` is validated (`ValidateResourceQuotaSpec`). [`admit`] is the entry point.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::Value;

use super::validation::qualified_name_error;
use crate::apiserver::Api;
use crate::apiserver::object;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::status::{ApiError, Cause};
use crate::quota::{self, Evaluator, Quota, ResourceList, scopes};
use crate::store::{KeyValue, ListOptions, StoreError};

/// How often a charge is retried against quotas changed meanwhile (by the quota
/// controller, or another apiserver).
const RETRIES: usize = 5;

fn prefix(ns: &str) -> String {
    format!("/registry/core/resourcequotas/{ns}/")
}

/// Charges in one namespace are made one at a time in this apiserver (upstream
/// evaluates each namespace's requests on one worker): then they never race each
/// other, and the compare-and-swap only meets the controller's writes.
static NAMESPACES: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

fn namespace_lock(ns: &str) -> Arc<tokio::sync::Mutex<()>> {
    NAMESPACES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(ns.to_owned())
        .or_default()
        .clone()
}

fn release_namespace(ns: &str, lock: Arc<tokio::sync::Mutex<()>>) {
    let mut locks = NAMESPACES.lock().unwrap_or_else(|p| p.into_inner());
    // Only this holder and the map have it: nobody waits, forget it.
    if Arc::strong_count(&lock) == 2 {
        locks.remove(ns);
    }
}

/// A new ResourceQuota starts without status: only the controller and admission
/// count (`resourcequotaStrategy.PrepareForCreate`).
pub fn prepare_create(def: &ResourceDef, obj: &mut Value) {
    if def.group.is_empty()
        && def.kind == "ResourceQuota"
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
}

/// `ValidateResourceQuotaSpec`: known resource names with non-negative amounts
/// (whole ones for object counts), known scopes that suit the limited resources, and
/// well-formed scope selector expressions.
pub fn validate(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let hard = spec.get("hard").and_then(Value::as_object);
    for (name, v) in hard.into_iter().flatten() {
        let field = format!("spec.hard[{name}]");
        if let Some(msg) = qualified_name_error(name) {
            causes.push(Cause::invalid(&field, msg));
        } else if !name.contains('/') && !scopes::is_standard_resource(name) {
            // `storage` is a resource, only not one a quota limits.
            if name != "storage" {
                causes.push(Cause::invalid(
                    &field,
                    format!("Invalid value: \"{name}\": must be a standard resource type or fully qualified"),
                ));
            }
            causes.push(Cause::invalid(
                &field,
                format!("Invalid value: \"{name}\": must be a standard resource for quota"),
            ));
        }
        match quota::Amount::from_value(v) {
            None => causes.push(Cause::invalid(
                &field,
                format!("Invalid value: {v}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
            )),
            Some(a) if a.milli < 0 => causes.push(Cause::invalid(
                &field,
                format!("Invalid value: \"{a}\": must be greater than or equal to 0"),
            )),
            Some(a) if scopes::is_integer_resource(name) && a.milli % 1000 != 0 => causes.push(
                Cause::invalid(&field, format!("Invalid value: \"{a}\": must be an integer")),
            ),
            Some(_) => {}
        }
    }
    let names: Vec<&String> = hard.into_iter().flat_map(|h| h.keys()).collect();
    let unsuited = |scope: &str| {
        names
            .iter()
            .any(|k| scopes::is_standard_resource(k) && !scopes::valid_for_resource(scope, k))
    };
    let listed: Vec<&str> = spec
        .get("scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let shown = format!("{listed:?}");
    for scope in &listed {
        if !scopes::STANDARD.contains(scope) {
            causes.push(Cause::invalid(
                "spec.scopes",
                format!("Invalid value: {shown}: unsupported scope"),
            ));
        }
        if unsuited(scope) {
            causes.push(Cause::invalid(
                "spec.scopes",
                format!("Invalid value: {shown}: unsupported scope applied to resource"),
            ));
        }
    }
    conflicting(&listed, "spec.scopes", &shown, &mut causes);
    let mut selected = Vec::new();
    let field = "spec.scopeSelector.matchExpressions";
    let selectors = scopes::selectors(spec);
    for s in selectors.iter().skip(listed.len()) {
        if !scopes::STANDARD.contains(&s.scope.as_str()) {
            causes.push(Cause::invalid(
                format!("{field}.scopeName"),
                format!("Invalid value: \"{}\": unsupported scope", s.scope),
            ));
        }
        if unsuited(&s.scope) {
            causes.push(Cause::invalid(
                field,
                "Invalid value: \"\": unsupported scope applied to resource",
            ));
        }
        if s.scope != scopes::PRIORITY_CLASS && s.operator != "Exists" {
            causes.push(Cause::invalid(
                format!("{field}.operator"),
                format!("Invalid value: \"{}\": must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity", s.operator),
            ));
        }
        match s.operator.as_str() {
            "In" | "NotIn" if s.values.is_empty() => causes.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{field}.values"),
                message: "Required value: must be at least one value when `operator` is 'In' or 'NotIn' for scope selector".into(),
            }),
            "Exists" | "DoesNotExist" if !s.values.is_empty() => causes.push(Cause::invalid(
                format!("{field}.values"),
                format!("Invalid value: {:?}: must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector", s.values),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(Cause::invalid(
                format!("{field}.operator"),
                format!("Invalid value: \"{other}\": not a valid selector operator"),
            )),
        }
        selected.push(s.scope.as_str());
    }
    conflicting(&selected, field, "null", &mut causes);
    causes
}

fn conflicting(scopes: &[&str], field: &str, shown: &str, causes: &mut Vec<Cause>) {
    for (a, b) in [
        (scopes::BEST_EFFORT, scopes::NOT_BEST_EFFORT),
        (scopes::TERMINATING, scopes::NOT_TERMINATING),
    ] {
        if scopes.contains(&a) && scopes.contains(&b) {
            causes.push(Cause::invalid(
                field,
                format!("Invalid value: {shown}: conflicting scopes"),
            ));
        }
    }
}

/// What `obj` (`old` before it, for an update) adds to each quota it is charged to
/// (`CheckRequest`): the quotas' new `status.used` by index, or why it is refused
/// (the text after `… is forbidden: `).
pub fn check(
    quotas: &[Quota],
    evaluator: &Evaluator,
    old: Option<&Value>,
    obj: &Value,
    now: jiff::Timestamp,
) -> Result<Vec<(usize, ResourceList)>, String> {
    let mut interesting = Vec::new();
    for (i, q) in quotas.iter().enumerate() {
        if !q.matches(evaluator, obj) {
            continue;
        }
        let restricted = evaluator.matching_resources(q.hard.keys());
        evaluator
            .constraints(&restricted, obj)
            .map_err(|e| format!("failed quota: {}: {e}", q.name))?;
        if restricted.iter().any(|r| !q.used.contains_key(r)) {
            let mut names = restricted.clone();
            names.sort();
            return Err(format!(
                "status unknown for quota: {}, resources: {}",
                q.name,
                names.join(",")
            ));
        }
        interesting.push(i);
    }
    if interesting.is_empty() {
        return Ok(Vec::new());
    }
    let input = evaluator.usage(obj, now);
    let negative: Vec<&str> = input
        .iter()
        .filter(|(_, v)| v.milli < 0)
        .map(|(k, _)| k.as_str())
        .collect();
    if !negative.is_empty() {
        return Err(format!(
            "quota usage is negative for resource(s): {}",
            negative.join(",")
        ));
    }
    let mut deltas: BTreeMap<usize, ResourceList> =
        interesting.iter().map(|i| (*i, input.clone())).collect();
    if let Some(old) = old {
        // An update is charged what it adds, to the quotas the old object was charged
        // to as well; the others take it whole.
        let delta = quota::subtract_non_negative(&input, &evaluator.usage(old, now));
        for (i, d) in deltas.iter_mut() {
            if quotas[*i].matches(evaluator, old) {
                *d = delta.clone();
            }
        }
    }
    let mut out = Vec::new();
    for (i, delta) in deltas {
        let q = &quotas[i];
        let requested: ResourceList = quota::mask(&delta, q.hard.keys())
            .into_iter()
            .filter(|(_, v)| !v.is_zero())
            .collect();
        if requested.is_empty() {
            continue;
        }
        let used = quota::add(&q.used, &requested);
        let exceeded = quota::exceeded(&quota::mask(&used, requested.keys()), &q.hard);
        if !exceeded.is_empty() {
            return Err(format!(
                "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                q.name,
                quota::pretty(&quota::mask(&requested, &exceeded)),
                quota::pretty(&quota::mask(&q.used, &exceeded)),
                quota::pretty(&quota::mask(&q.hard, &exceeded)),
            ));
        }
        out.push((i, used));
    }
    Ok(out)
}

fn forbidden(def: &ResourceDef, obj: &Value, why: &str) -> ApiError {
    let name = object::name(obj);
    ApiError::forbidden(format!(
        "{} \"{name}\" is forbidden: {why}",
        def.qualified()
    ))
    .with_details(&def.group, &def.plural, name)
}

/// Whether a write of this resource is measured at all: namespaced, and not an Event.
fn measured(def: &ResourceDef, ns: Option<&str>) -> Option<String> {
    let ns = ns.filter(|n| !n.is_empty())?;
    if def.plural == "events" && matches!(def.group.as_str(), "" | "events.k8s.io") {
        return None;
    }
    Some(ns.to_owned())
}

/// Admits the create (`old` is `None`) or update of `obj` in namespace `ns` against
/// the namespace's quotas, charging them unless `dry_run`.
pub async fn admit(
    api: &Api,
    def: &ResourceDef,
    ns: Option<&str>,
    old: Option<&Value>,
    obj: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let Some(ns) = measured(def, ns) else {
        return Ok(());
    };
    let evaluator = Evaluator::for_resource(&def.group, &def.plural);
    if old.is_some_and(|old| !evaluator.handles_update(old, obj)) {
        return Ok(());
    }
    let prefix = prefix(&ns);
    if api.cache.count(&prefix) == 0 {
        return Ok(());
    }
    let lock = namespace_lock(&ns);
    let result = {
        let _held = lock.lock().await;
        charge(api, def, &prefix, &evaluator, old, obj, dry_run).await
    };
    release_namespace(&ns, lock);
    result
}

async fn charge(
    api: &Api,
    def: &ResourceDef,
    prefix: &str,
    evaluator: &Evaluator,
    old: Option<&Value>,
    obj: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let listed = api
        .store
        .list(prefix, ListOptions::default())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut pending: Vec<KeyValue> = listed.kvs;
    for _ in 0..RETRIES {
        let docs: Vec<Value> = pending
            .iter()
            .map(|kv| serde_json::from_slice(&kv.value).unwrap_or(Value::Null))
            .collect();
        let quotas: Vec<Quota> = docs.iter().map(Quota::from_object).collect();
        let charges = check(&quotas, evaluator, old, obj, jiff::Timestamp::now())
            .map_err(|why| forbidden(def, obj, &why))?;
        if dry_run {
            return Ok(());
        }
        let mut failed = Vec::new();
        for (i, used) in charges {
            if quota::equals(&used, &quotas[i].used) {
                continue;
            }
            let mut doc = docs[i].clone();
            doc["status"]["used"] = quota::to_json(&used);
            let kv = &pending[i];
            match api
                .store
                .update(kv.key.clone(), object::encode(&doc), kv.mod_revision)
                .await
            {
                Ok(_) => {}
                // Deleted meanwhile: nothing to charge.
                Err(StoreError::NotFound { .. }) => {}
                Err(StoreError::Conflict { .. }) => failed.push(kv.key.clone()),
                Err(e) => return Err(ApiError::internal(e.to_string())),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        // Measure again against the quotas that changed, as they are now.
        pending.clear();
        for key in &failed {
            if let Some(kv) = api
                .store
                .get(key, None)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
            {
                pending.push(kv);
            }
        }
    }
    let name = pending
        .first()
        .map(|kv| kv.key.rsplit('/').next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    Err(ApiError::conflict("", "resourcequotas", &name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn quota(hard: Value, used: Value, spec: Value) -> Quota {
        let mut q = json!({"metadata": {"name": "q"}, "spec": spec,
            "status": {"hard": hard, "used": used}});
        q["spec"]["hard"] = q["status"]["hard"].clone();
        Quota::from_object(&q)
    }

    fn pod(name: &str, resources: Value) -> Value {
        json!({"metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "resources": resources}]}})
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::UNIX_EPOCH
    }

    #[test]
    fn the_last_unit_is_charged_then_refused_with_upstreams_words() {
        let q = quota(json!({"pods": "2"}), json!({"pods": "1"}), json!({}));
        let p = pod("p2", json!({}));
        let charged = check(std::slice::from_ref(&q), &Evaluator::Pods, None, &p, now());
        let charged = charged.expect("one pod fits");
        assert_eq!(quota::pretty(&charged[0].1), "pods=2");
        let full = quota(json!({"pods": "2"}), json!({"pods": "2"}), json!({}));
        assert_eq!(
            check(
                &[full],
                &Evaluator::Pods,
                None,
                &pod("p3", json!({})),
                now()
            ),
            Err("exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2".into())
        );
    }

    #[test]
    fn compute_quotas_need_limits_and_sum_requests() {
        let q = quota(
            json!({"limits.cpu": "2", "limits.memory": "1Gi", "requests.cpu": "1"}),
            json!({"limits.cpu": "0", "limits.memory": "0", "requests.cpu": "800m"}),
            json!({}),
        );
        let bare = pod("x", json!({"requests": {"cpu": "100m"}}));
        assert_eq!(
            check(
                std::slice::from_ref(&q),
                &Evaluator::Pods,
                None,
                &bare,
                now()
            ),
            Err("failed quota: q: must specify limits.cpu for: c; limits.memory for: c".into())
        );
        let big = pod(
            "y",
            json!({"requests": {"cpu": "300m"}, "limits": {"cpu": "1", "memory": "256Mi"}}),
        );
        assert_eq!(
            check(std::slice::from_ref(&q), &Evaluator::Pods, None, &big, now()),
            Err("exceeded quota: q, requested: requests.cpu=300m, used: requests.cpu=800m, limited: requests.cpu=1".into())
        );
        let fits = pod(
            "z",
            json!({"requests": {"cpu": "200m"}, "limits": {"cpu": "1", "memory": "256Mi"}}),
        );
        let charged = check(&[q], &Evaluator::Pods, None, &fits, now()).expect("fits");
        assert_eq!(
            quota::pretty(&charged[0].1),
            "limits.cpu=1,limits.memory=256Mi,requests.cpu=1"
        );
    }

    #[test]
    fn scopes_status_and_updates() {
        // A BestEffort quota counts pods without resources only.
        let q = quota(
            json!({"pods": "1"}),
            json!({"pods": "1"}),
            json!({"scopes": ["BestEffort"]}),
        );
        let guaranteed = pod("g", json!({"limits": {"cpu": "1", "memory": "1Gi"}}));
        assert_eq!(
            check(
                std::slice::from_ref(&q),
                &Evaluator::Pods,
                None,
                &guaranteed,
                now()
            ),
            Ok(vec![])
        );
        assert!(check(&[q], &Evaluator::Pods, None, &pod("b", json!({})), now()).is_err());
        // Not counted yet.
        let fresh = quota(json!({"count/deployments.apps": "1"}), json!({}), json!({}));
        let deploy = Evaluator::for_resource("apps", "deployments");
        assert_eq!(
            check(&[fresh], &deploy, None, &json!({}), now()),
            Err("status unknown for quota: q, resources: count/deployments.apps".into())
        );
        // A claim resized: charged the difference.
        let q = quota(
            json!({"requests.storage": "10Gi"}),
            json!({"requests.storage": "4Gi"}),
            json!({}),
        );
        let claim = |size: &str| json!({"spec": {"resources": {"requests": {"storage": size}}}});
        let charged = check(
            std::slice::from_ref(&q),
            &Evaluator::Claims,
            Some(&claim("4Gi")),
            &claim("6Gi"),
            now(),
        )
        .expect("fits");
        assert_eq!(quota::pretty(&charged[0].1), "requests.storage=6Gi");
        assert_eq!(
            check(&[q], &Evaluator::Claims, Some(&claim("4Gi")), &claim("12Gi"), now()),
            Err("exceeded quota: q, requested: requests.storage=8Gi, used: requests.storage=4Gi, limited: requests.storage=10Gi".into())
        );
    }

    #[test]
    fn quota_specs_are_validated() {
        let ok = json!({"spec": {"hard": {"pods": "2", "requests.cpu": "1500m",
            "count/deployments.apps": "3"}, "scopes": ["NotBestEffort"]}});
        assert!(validate(&ok).is_empty(), "{:?}", validate(&ok));
        let bad = json!({"spec": {"hard": {"pods": "1.5", "cpus": "1", "memory": "-1"},
            "scopes": ["BestEffort", "NotBestEffort"]}});
        let messages: Vec<String> = validate(&bad)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        for want in [
            "spec.hard[pods]: Invalid value: \"1500m\": must be an integer",
            "spec.hard[cpus]: Invalid value: \"cpus\": must be a standard resource for quota",
            "spec.hard[memory]: Invalid value: \"-1\": must be greater than or equal to 0",
            "spec.scopes: Invalid value: [\"BestEffort\", \"NotBestEffort\"]: unsupported scope applied to resource",
            "spec.scopes: Invalid value: [\"BestEffort\", \"NotBestEffort\"]: conflicting scopes",
        ] {
            assert!(messages.iter().any(|m| m == want), "{want} in {messages:?}");
        }
    }
}
