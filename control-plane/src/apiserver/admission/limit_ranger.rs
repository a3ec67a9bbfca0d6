//! The LimitRanger admission plugin, as kube-apiserver's: the LimitRanges of a new
//! Pod's namespace give its containers their default limits and requests (`default`,
//! `defaultRequest` of `type: Container` items, recorded in the
//! `kubernetes.io/limit-ranger` annotation), then bound them — `min`, `max` and
//! `maxLimitRequestRatio` per Container and per Pod (the containers' sums, or the
//! largest init container's when that is more) — and a new PersistentVolumeClaim's
//! storage request (`type: PersistentVolumeClaim` `min`/`max`). What breaks a bound is
//! refused with 403 and upstream's wording, every broken bound in one message. A
//! LimitRange itself gets upstream's defaults: `default` from `max`, `defaultRequest`
//! from `default`, then from `min`.

use serde_json::{Map, Value, json};

use crate::apiserver::status::{ApiError, Cause};
use crate::apiserver::watch_cache::WatchCache;
use crate::scheduler::quantity::parse_milli;

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

fn prefix(ns: &str) -> String {
    format!("/registry/core/limitranges/{ns}/")
}

/// `SetDefaults_LimitRangeItem`, for every `type: Container` item.
pub fn default_limit_range(range: &mut Value) {
    let Some(items) = range
        .pointer_mut("/spec/limits")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for item in items {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        if item.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let fill = |item: &mut Map<String, Value>, to: &str, from: &str| {
            let source = item.get(from).and_then(Value::as_object).cloned();
            let target = item.entry(to).or_insert_with(|| json!({})).as_object_mut();
            if let (Some(source), Some(target)) = (source, target) {
                for (k, v) in source {
                    target.entry(k).or_insert(v);
                }
            }
        };
        fill(item, "default", "max");
        fill(item, "defaultRequest", "default");
        fill(item, "defaultRequest", "min");
    }
}

/// A LimitRange's own consistency (upstream's `ValidateLimitRange`, after the
/// defaults): per item and resource, min ≤ defaultRequest ≤ default ≤ max, a
/// `maxLimitRequestRatio` of at least 1 and at most max/min; no defaults on a `Pod`
/// item; a `PersistentVolumeClaim` item bounds storage.
pub fn validate(range: &Value) -> Vec<Cause> {
    use crate::quota::Amount;
    use std::collections::{BTreeMap, BTreeSet};
    let mut causes = Vec::new();
    let items = range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, item) in items.iter().enumerate() {
        let at = format!("spec.limits[{i}]");
        let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind.is_empty() {
            causes.push(Cause::required(format!("{at}.type")));
        } else if !kind.contains('/')
            && !matches!(kind, "Pod" | "Container" | "PersistentVolumeClaim")
        {
            causes.push(Cause::invalid(
                format!("{at}.type"),
                format!(
                    "Invalid value: \"{kind}\": must be a standard limit type or fully qualified"
                ),
            ));
        }
        let mut keys = BTreeSet::new();
        let mut map = |field: &str| -> BTreeMap<String, (Amount, String)> {
            let mut out = BTreeMap::new();
            for (k, v) in item
                .get(field)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let Some(a) = Amount::from_value(v) else {
                    continue;
                };
                keys.insert(k.clone());
                out.insert(k.clone(), (a, a.to_string()));
            }
            out
        };
        let (min, max) = (map("min"), map("max"));
        let (default, default_request) = if kind == "Pod" {
            for field in ["default", "defaultRequest"] {
                if item
                    .get(field)
                    .and_then(Value::as_object)
                    .is_some_and(|m| !m.is_empty())
                {
                    causes.push(Cause::forbidden(
                        format!("{at}.{field}"),
                        "Forbidden: may not be specified when `type` is 'Pod'",
                    ));
                }
            }
            (BTreeMap::new(), BTreeMap::new())
        } else {
            (map("default"), map("defaultRequest"))
        };
        let ratio = map("maxLimitRequestRatio");
        if kind == "PersistentVolumeClaim"
            && !min.contains_key("storage")
            && !max.contains_key("storage")
        {
            causes.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{at}.limits"),
                message: "Required value: either minimum or maximum storage value is required, but neither was provided".into(),
            });
        }
        let invalid = |field: &str, k: &str, shown: &str, message: String| {
            Cause::invalid(
                format!("{at}.{field}[{k}]"),
                format!("Invalid value: \"{shown}\": {message}"),
            )
        };
        for k in &keys {
            let (lo, hi) = (min.get(k), max.get(k));
            let (def, req) = (default.get(k), default_request.get(k));
            if let (Some(lo), Some(hi)) = (lo, hi)
                && lo.0.milli > hi.0.milli
            {
                causes.push(invalid(
                    "min",
                    k,
                    &lo.1,
                    format!("min value {} is greater than max value {}", lo.1, hi.1),
                ));
            }
            if let (Some(req), Some(lo)) = (req, lo)
                && lo.0.milli > req.0.milli
            {
                causes.push(invalid(
                    "defaultRequest",
                    k,
                    &req.1,
                    format!(
                        "min value {} is greater than default request value {}",
                        lo.1, req.1
                    ),
                ));
            }
            if let (Some(req), Some(hi)) = (req, hi)
                && req.0.milli > hi.0.milli
            {
                causes.push(invalid(
                    "defaultRequest",
                    k,
                    &req.1,
                    format!(
                        "default request value {} is greater than max value {}",
                        req.1, hi.1
                    ),
                ));
            }
            if let (Some(req), Some(def)) = (req, def)
                && req.0.milli > def.0.milli
            {
                causes.push(invalid(
                    "defaultRequest",
                    k,
                    &req.1,
                    format!(
                        "default request value {} is greater than default limit value {}",
                        req.1, def.1
                    ),
                ));
            }
            if let (Some(def), Some(lo)) = (def, lo)
                && lo.0.milli > def.0.milli
            {
                causes.push(invalid(
                    "default",
                    k,
                    &lo.1,
                    format!("min value {} is greater than default value {}", lo.1, def.1),
                ));
            }
            if let (Some(def), Some(hi)) = (def, hi)
                && def.0.milli > hi.0.milli
            {
                causes.push(invalid(
                    "default",
                    k,
                    &hi.1,
                    format!("default value {} is greater than max value {}", def.1, hi.1),
                ));
            }
            if let Some(r) = ratio.get(k) {
                if r.0.milli < 1000 {
                    causes.push(invalid(
                        "maxLimitRequestRatio",
                        k,
                        &r.1,
                        format!("ratio {} is less than 1", r.1),
                    ));
                }
                if let (Some(lo), Some(hi)) = (lo, hi)
                    && lo.0.milli > 0
                {
                    let limit = hi.0.milli as f64 / lo.0.milli as f64;
                    if r.0.milli as f64 / 1000.0 > limit {
                        causes.push(invalid(
                            "maxLimitRequestRatio",
                            k,
                            &r.1,
                            format!("ratio {} is greater than max/min = {limit:.6}", r.1),
                        ));
                    }
                }
            }
        }
    }
    causes
}

/// The items of each LimitRange of namespace `ns`, the ranges in name order.
fn ranges(cache: &WatchCache, ns: &str) -> Vec<Vec<Value>> {
    let (ranges, _) = cache.list(&prefix(ns), |_| true);
    ranges
        .iter()
        .map(|r| {
            r.value()
                .pointer("/spec/limits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// The LimitRange items of namespace `ns`, in name order.
fn items(cache: &WatchCache, ns: &str) -> Vec<Value> {
    ranges(cache, ns).into_iter().flatten().collect()
}

fn of_type<'a>(items: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    items
        .iter()
        .filter(move |i| i.get("type").and_then(Value::as_str) == Some(kind))
}

/// A quantity as the object holds it (string, or a JSON number).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn milli(v: &Value) -> Option<i128> {
    parse_milli(&text(v))
}

type Resources = Map<String, Value>;

fn min_constraint(
    kind: &str,
    res: &str,
    enforced: &Value,
    req: &Resources,
    lim: &Resources,
) -> Option<String> {
    let e = milli(enforced)?;
    let enforced = text(enforced);
    let Some(r) = req.get(res) else {
        return Some(format!(
            "minimum {res} usage per {kind} is {enforced}.  No request is specified"
        ));
    };
    if milli(r).is_some_and(|r| r < e) {
        return Some(format!(
            "minimum {res} usage per {kind} is {enforced}, but request is {}",
            text(r)
        ));
    }
    match lim.get(res) {
        Some(l) if milli(l).is_some_and(|l| l < e) => Some(format!(
            "minimum {res} usage per {kind} is {enforced}, but limit is {}",
            text(l)
        )),
        _ => None,
    }
}

fn max_constraint(
    kind: &str,
    res: &str,
    enforced: &Value,
    req: &Resources,
    lim: &Resources,
) -> Option<String> {
    let e = milli(enforced)?;
    let enforced = text(enforced);
    let Some(l) = lim.get(res) else {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}.  No limit is specified"
        ));
    };
    if milli(l).is_some_and(|l| l > e) {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but limit is {}",
            text(l)
        ));
    }
    match req.get(res) {
        Some(r) if milli(r).is_some_and(|r| r > e) => Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but request is {}",
            text(r)
        )),
        _ => None,
    }
}

/// `maxRequestConstraint`: a claim's max bounds its request (its limits are not input).
fn max_request_constraint(
    kind: &str,
    res: &str,
    enforced: &Value,
    req: &Resources,
) -> Option<String> {
    let e = milli(enforced)?;
    let enforced = text(enforced);
    match req.get(res) {
        None => Some(format!(
            "maximum {res} usage per {kind} is {enforced}.  No request is specified"
        )),
        Some(r) if milli(r).is_some_and(|r| r > e) => Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but request is {}",
            text(r)
        )),
        Some(_) => None,
    }
}

fn ratio_constraint(
    kind: &str,
    res: &str,
    enforced: &Value,
    req: &Resources,
    lim: &Resources,
) -> Option<String> {
    let e = milli(enforced)?;
    let enforced = text(enforced);
    let r = req.get(res).and_then(milli).unwrap_or(0);
    if r == 0 {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"
        ));
    }
    let l = lim.get(res).and_then(milli).unwrap_or(0);
    if l == 0 {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"
        ));
    }
    let observed = l as f64 / r as f64;
    (observed * 1000.0 > e as f64).then(|| {
        format!(
            "{res} max limit to request ratio per {kind} is {enforced}, but provided ratio is {observed:.6}"
        )
    })
}

/// The bounds of `item` (`min`, `max`, `maxLimitRequestRatio`) on `req` and `lim`.
fn check(item: &Value, kind: &str, req: &Resources, lim: &Resources, errs: &mut Vec<String>) {
    let pairs = |name: &str| {
        item.get(name)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    for (res, v) in pairs("min") {
        errs.extend(min_constraint(kind, &res, &v, req, lim));
    }
    for (res, v) in pairs("max") {
        errs.extend(max_constraint(kind, &res, &v, req, lim));
    }
    for (res, v) in pairs("maxLimitRequestRatio") {
        errs.extend(ratio_constraint(kind, &res, &v, req, lim));
    }
}

fn resources(c: &Value, which: &str) -> Resources {
    c.pointer(&format!("/resources/{which}"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// The pod's total of `which` (`requests` or `limits`): the containers' sum per
/// resource, or the largest init container's when that is more.
fn pod_total(spec: &Value, which: &str) -> Resources {
    use crate::quota::Amount;
    let mut sum: std::collections::BTreeMap<String, Amount> = Default::default();
    for c in spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for (k, v) in resources(c, which) {
            let e = sum.entry(k).or_insert(Amount::ZERO);
            *e = *e + Amount::from_value(&v).unwrap_or(Amount::ZERO);
        }
    }
    for c in spec
        .get("initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for (k, v) in resources(c, which) {
            let v = Amount::from_value(&v).unwrap_or(Amount::ZERO);
            let e = sum.entry(k).or_insert(Amount::ZERO);
            if v.milli > e.milli {
                *e = v;
            }
        }
    }
    // Added as quantities are, so the total keeps their units (`1200Mi`).
    sum.into_iter()
        .map(|(k, a)| (k, json!(a.to_string())))
        .collect()
}

fn forbidden(kind: &str, name: &str, errs: &[String]) -> ApiError {
    // utilerrors.Aggregate: one error as it is, several in brackets.
    let detail = match errs {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    ApiError::forbidden(format!("{kind} \"{name}\" is forbidden: {detail}"))
}

/// A new Pod in `ns`: defaults from the namespace's LimitRanges, then their bounds.
pub fn admit_pod(cache: &WatchCache, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
    let ranges = ranges(cache, ns);
    let items: Vec<Value> = ranges.iter().flatten().cloned().collect();
    if items.is_empty() {
        return Ok(());
    }
    // Defaults: within one LimitRange its last Container item's default/defaultRequest
    // per resource (upstream's loop overwrites); a later LimitRange only fills what
    // the earlier ones left unset.
    let mut default_limits = Resources::new();
    let mut default_requests = Resources::new();
    for range in &ranges {
        let mut limits = Resources::new();
        let mut requests = Resources::new();
        for item in of_type(range, "Container") {
            for (to, from) in [(&mut limits, "default"), (&mut requests, "defaultRequest")] {
                for (k, v) in item
                    .get(from)
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    to.insert(k.clone(), v.clone());
                }
            }
        }
        for (to, from) in [
            (&mut default_limits, limits),
            (&mut default_requests, requests),
        ] {
            for (k, v) in from {
                to.entry(k).or_insert(v);
            }
        }
    }
    let mut notes = Vec::new();
    if let Some(spec) = pod.get_mut("spec") {
        // Containers first, then init containers, as upstream's merge goes.
        for (field, what) in [
            ("containers", "container"),
            ("initContainers", "init container"),
        ] {
            for c in spec
                .get_mut(field)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let name = c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let Some(res) = c
                    .as_object_mut()
                    .map(|c| c.entry("resources").or_insert_with(|| json!({})))
                    .and_then(Value::as_object_mut)
                else {
                    continue;
                };
                let mut set = |which: &str, defaults: &Resources| -> Vec<String> {
                    let mut names: Vec<String> = Vec::new();
                    if let Some(list) = res
                        .entry(which)
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                    {
                        for (k, v) in defaults {
                            if !list.contains_key(k) {
                                list.insert(k.clone(), v.clone());
                                names.push(k.clone());
                            }
                        }
                    }
                    if res
                        .get(which)
                        .and_then(Value::as_object)
                        .is_some_and(Map::is_empty)
                    {
                        res.remove(which);
                    }
                    names.sort();
                    names
                };
                let limits = set("limits", &default_limits);
                let requests = set("requests", &default_requests);
                if !requests.is_empty() {
                    notes.push(format!("{} request for {what} {name}", requests.join(", ")));
                }
                if !limits.is_empty() {
                    notes.push(format!("{} limit for {what} {name}", limits.join(", ")));
                }
            }
        }
    }
    if !notes.is_empty()
        && let Some(spec) = pod.get("spec")
    {
        // The QoS class the API defaults gave is the one of the pod before its
        // defaults here; kube-apiserver computes it after admission.
        let qos = super::defaults::qos_class(spec);
        if let Some(status) = pod.get_mut("status").and_then(Value::as_object_mut) {
            status.insert("qosClass".into(), json!(qos));
        }
    }
    if !notes.is_empty()
        && let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut)
        && let Some(annotations) = meta
            .entry("annotations")
            .or_insert_with(|| json!({}))
            .as_object_mut()
    {
        annotations.insert(
            ANNOTATION.into(),
            json!(format!("LimitRanger plugin set: {}", notes.join("; "))),
        );
    }
    let mut errs = Vec::new();
    let spec = pod.get("spec").cloned().unwrap_or(Value::Null);
    for item in of_type(&items, "Container") {
        for field in ["containers", "initContainers"] {
            for c in spec
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                check(
                    item,
                    "Container",
                    &resources(c, "requests"),
                    &resources(c, "limits"),
                    &mut errs,
                );
            }
        }
    }
    for item in of_type(&items, "Pod") {
        check(
            item,
            "Pod",
            &pod_total(&spec, "requests"),
            &pod_total(&spec, "limits"),
            &mut errs,
        );
    }
    if errs.is_empty() {
        Ok(())
    } else {
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        Err(forbidden("pods", name, &errs))
    }
}

/// A new PersistentVolumeClaim in `ns`: its storage request within the bounds.
pub fn admit_claim(cache: &WatchCache, ns: &str, claim: &Value) -> Result<(), ApiError> {
    let items = items(cache, ns);
    let requests = claim
        .pointer("/spec/resources/requests")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut errs = Vec::new();
    for item in of_type(&items, "PersistentVolumeClaim") {
        let kind = "PersistentVolumeClaim";
        for (res, v) in item
            .get("min")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            errs.extend(min_constraint(kind, res, v, &requests, &Resources::new()));
        }
        for (res, v) in item
            .get("max")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            errs.extend(max_request_constraint(kind, res, v, &requests));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        let name = claim
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        Err(forbidden("persistentvolumeclaims", name, &errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(v: Value) -> Resources {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_limit_range_gets_upstreams_defaults() {
        let mut lr = json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "64Mi"}},
            {"type": "Pod", "max": {"cpu": "4"}},
        ]}});
        default_limit_range(&mut lr);
        let c = &lr["spec"]["limits"][0];
        assert_eq!(c["default"], json!({"cpu": "2"}));
        assert_eq!(c["defaultRequest"], json!({"cpu": "2", "memory": "64Mi"}));
        assert!(
            lr["spec"]["limits"][1].get("default").is_none(),
            "Pod items get none"
        );
    }

    #[test]
    fn bounds_word_their_errors_as_upstream() {
        let (req, lim) = (res(json!({"cpu": "50m"})), res(json!({"cpu": "3"})));
        assert_eq!(
            min_constraint("Container", "cpu", &json!("100m"), &req, &lim).as_deref(),
            Some("minimum cpu usage per Container is 100m, but request is 50m")
        );
        assert_eq!(
            max_constraint("Container", "cpu", &json!("2"), &req, &lim).as_deref(),
            Some("maximum cpu usage per Container is 2, but limit is 3")
        );
        assert_eq!(
            max_constraint("Container", "memory", &json!("1Gi"), &req, &lim).as_deref(),
            Some("maximum memory usage per Container is 1Gi.  No limit is specified")
        );
        assert_eq!(
            ratio_constraint("Container", "cpu", &json!("10"), &req, &lim).as_deref(),
            Some(
                "cpu max limit to request ratio per Container is 10, but provided ratio is 60.000000"
            )
        );
        assert_eq!(
            ratio_constraint("Container", "cpu", &json!("60"), &req, &lim),
            None
        );
        assert_eq!(
            max_request_constraint(
                "PersistentVolumeClaim",
                "storage",
                &json!("1Gi"),
                &res(json!({"storage": "2Gi"}))
            )
            .as_deref(),
            Some("maximum storage usage per PersistentVolumeClaim is 1Gi, but request is 2Gi")
        );
    }

    #[test]
    fn a_pods_total_is_the_sum_or_the_largest_init_container() {
        let spec = json!({
            "initContainers": [{"resources": {"requests": {"cpu": "3"}}}],
            "containers": [
                {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                {"resources": {"requests": {"cpu": "500m"}}},
            ],
        });
        let total = pod_total(&spec, "requests");
        assert_eq!(milli(&total["cpu"]), Some(3000));
        assert_eq!(milli(&total["memory"]), parse_milli("1Gi"));
        // A sum keeps its terms' units, as upstream's Quantity.Add.
        let spec = json!({"containers": [
            {"resources": {"limits": {"cpu": "600m", "memory": "600Mi"}}},
            {"resources": {"limits": {"cpu": "600m", "memory": "600Mi"}}},
        ]});
        let total = pod_total(&spec, "limits");
        assert_eq!(total["cpu"], "1200m");
        assert_eq!(total["memory"], "1200Mi");
        let errs = forbidden("pods", "p", &["a".into(), "b".into()]);
        assert!(
            errs.to_string().contains("pods \"p\" is forbidden: [a, b]"),
            "{errs}"
        );
    }

    #[test]
    fn a_limit_range_is_consistent_or_refused() {
        let range = |items: Value| {
            let mut r = json!({"metadata": {"name": "l"}, "spec": {"limits": items}});
            default_limit_range(&mut r);
            validate(&r)
                .iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            range(json!([{"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}}])),
            [
                "spec.limits[0].min[cpu]: Invalid value: \"2\": min value 2 is greater than max value 1",
                "spec.limits[0].defaultRequest[cpu]: Invalid value: \"1\": min value 2 is greater than default request value 1",
                "spec.limits[0].default[cpu]: Invalid value: \"2\": min value 2 is greater than default value 1",
            ]
        );
        assert_eq!(
            range(json!([{"type": "Pod", "default": {"cpu": "1"}}])),
            ["spec.limits[0].default: Forbidden: may not be specified when `type` is 'Pod'"]
        );
        assert_eq!(
            range(json!([{"type": "Container", "maxLimitRequestRatio": {"cpu": "500m"}}])),
            [
                "spec.limits[0].maxLimitRequestRatio[cpu]: Invalid value: \"500m\": ratio 500m is less than 1"
            ]
        );
        assert_eq!(
            range(json!([{"type": "PersistentVolumeClaim", "min": {"cpu": "1"}}])),
            [
                "spec.limits[0].limits: Required value: either minimum or maximum storage value is required, but neither was provided"
            ]
        );
        assert!(
            range(
                json!([{"type": "Container", "min": {"cpu": "100m"}, "max": {"cpu": "1"},
            "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "200m"},
            "maxLimitRequestRatio": {"cpu": "5"}}])
            )
            .is_empty()
        );
    }
}
