//! HorizontalPodAutoscaler defaulting and validation, on the stored `autoscaling/v2`
//! form (v1 objects are converted first, so both versions get the same rules and the
//! same field paths, as kube-apiserver validates the internal version):
//! `pkg/apis/autoscaling/v2/defaults.go` (minReplicas 1, a CPU target of 80 % when
//! no metric is given, the scale-up/scale-down rules filled in when `behavior` is set)
//! and `pkg/apis/autoscaling/validation/validation.go` (replica bounds, the target
//! reference, metric sources and targets, behavior rules and policies).
//!
//! Entry points: [`defaults`], [`validate`].

use serde_json::{Value, json};

use crate::apiserver::status::Cause;
use crate::scheduler::quantity::parse_milli;

/// `autoscaling.DefaultCPUUtilization`.
pub const DEFAULT_CPU_UTILIZATION: i64 = 80;
/// `MaxStabilizationWindowSeconds` and `MaxPeriodSeconds` of the validation.
const MAX_STABILIZATION_WINDOW_SECONDS: i64 = 3600;
const MAX_PERIOD_SECONDS: i64 = 1800;

/// `GenerateHPAScaleUpRules`' defaults: no stabilization, the larger of +4 pods or
/// +100 % every 15 s.
fn default_scale_up() -> Value {
    json!({
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Pods", "value": 4, "periodSeconds": 15},
            {"type": "Percent", "value": 100, "periodSeconds": 15},
        ],
    })
}

/// `GenerateHPAScaleDownRules`' defaults: −100 % every 15 s; the stabilization window
/// is left unset so the controller's `--horizontal-pod-autoscaler-downscale-stabilization`
/// (300 s) applies.
fn default_scale_down() -> Value {
    json!({
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
    })
}

/// `copyHPAScalingRules`: the fields the user set win, the rest from the defaults.
fn fill_rules(rules: Option<&Value>, mut defaults: Value) -> Value {
    if let Some(Value::Object(set)) = rules {
        for key in [
            "selectPolicy",
            "stabilizationWindowSeconds",
            "policies",
            "tolerance",
        ] {
            if let Some(v) = set.get(key).filter(|v| !v.is_null()) {
                defaults[key] = v.clone();
            }
        }
    }
    defaults
}

/// The v2 defaults of an HPA (`SetDefaults_HorizontalPodAutoscaler`).
pub fn defaults(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("minReplicas").is_none_or(Value::is_null) {
        spec.insert("minReplicas".into(), json!(1));
    }
    if spec
        .get("metrics")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": DEFAULT_CPU_UTILIZATION}}}]),
        );
    }
    if let Some(behavior) = spec.get_mut("behavior").and_then(Value::as_object_mut) {
        let up = fill_rules(behavior.get("scaleUp"), default_scale_up());
        let down = fill_rules(behavior.get("scaleDown"), default_scale_down());
        behavior.insert("scaleUp".into(), up);
        behavior.insert("scaleDown".into(), down);
    }
}

fn not_supported(field: String, value: &Value, supported: &[&str]) -> Cause {
    let shown = match value {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    };
    let list = supported
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Cause {
        reason: "FieldValueNotSupported",
        field,
        message: format!("Unsupported value: {shown}: supported values: {list}"),
    }
}

fn required(field: String, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        field,
        message: if detail.is_empty() {
            "Required value".into()
        } else {
            format!("Required value: {detail}")
        },
    }
}

fn invalid(field: String, value: &Value, detail: &str) -> Cause {
    let shown = match value {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    };
    Cause::invalid(field, format!("Invalid value: {shown}: {detail}"))
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// `IsValidPathSegmentName`: the messages for a name that cannot be a URL path segment.
fn path_segment_errors(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

/// Validates a whole (defaulted, v2) HPA's spec.
pub fn validate(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let min = int(&spec, "minReplicas");
    let max = int(&spec, "maxReplicas").unwrap_or(0);
    if let Some(min) = min
        && min < 1
    {
        causes.push(invalid(
            "spec.minReplicas".into(),
            &json!(min),
            "must be greater than or equal to 1",
        ));
    }
    if max < 1 {
        causes.push(invalid(
            "spec.maxReplicas".into(),
            &json!(max),
            "must be greater than 0",
        ));
    }
    if let Some(min) = min
        && max < min
    {
        causes.push(invalid(
            "spec.maxReplicas".into(),
            &json!(max),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    // As upstream: metrics are looked at only with a valid reference, behavior only
    // with valid metrics.
    let reference = target_ref(
        spec.get("scaleTargetRef").unwrap_or(&Value::Null),
        "spec.scaleTargetRef",
    );
    if !reference.is_empty() {
        causes.extend(reference);
        return causes;
    }
    let metrics = metrics(&spec);
    if !metrics.is_empty() {
        causes.extend(metrics);
        return causes;
    }
    if let Some(b) = spec.get("behavior").filter(|b| b.is_object()) {
        for (key, path) in [
            ("scaleUp", "spec.behavior.scaleUp"),
            ("scaleDown", "spec.behavior.scaleDown"),
        ] {
            if let Some(rules) = b.get(key).filter(|r| r.is_object()) {
                scaling_rules(rules, path, &mut causes);
            }
        }
    }
    causes
}

/// `ValidateCrossVersionObjectReference` of the reference at `path`.
fn target_ref(r: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for key in ["kind", "name"] {
        let field = format!("{path}.{key}");
        match r.get(key).and_then(Value::as_str).unwrap_or_default() {
            "" => causes.push(required(field, "")),
            v => {
                for msg in path_segment_errors(v) {
                    causes.push(invalid(field.clone(), &json!(v), &msg));
                }
            }
        }
    }
    causes
}

const METRIC_TYPES: &[&str] = &[
    "ContainerResource",
    "External",
    "Object",
    "Pods",
    "Resource",
];

fn metrics(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let list = spec
        .get("metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, m) in list.iter().enumerate() {
        let path = format!("spec.metrics[{i}]");
        let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
        if ty.is_empty() {
            causes.push(required(
                format!("{path}.type"),
                "must specify a metric source type",
            ));
        }
        let present: Vec<&str> = [
            "object",
            "pods",
            "resource",
            "containerResource",
            "external",
        ]
        .into_iter()
        .filter(|k| m.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
        let expected = match ty {
            "Object" => "object",
            "Pods" => "pods",
            "Resource" => "resource",
            "ContainerResource" => "containerResource",
            "External" => "external",
            other => {
                if !other.is_empty() {
                    causes.push(not_supported(
                        format!("{path}.type"),
                        &json!(other),
                        METRIC_TYPES,
                    ));
                }
                ""
            }
        };
        if !expected.is_empty() && !present.contains(&expected) {
            causes.push(required(
                format!("{path}.{expected}"),
                "must populate information for the given metric source",
            ));
        }
        if present.len() != 1 {
            for other in present.iter().filter(|p| **p != expected) {
                causes.push(Cause::forbidden(
                    format!("{path}.{other}"),
                    "Forbidden: must populate the given metric source only",
                ));
            }
        }
        if let Some(src) = m.get("resource").filter(|v| v.is_object()) {
            resource_source(src, &format!("{path}.resource"), &mut causes);
        } else if let Some(src) = m.get("containerResource").filter(|v| v.is_object()) {
            let p = format!("{path}.containerResource");
            if src
                .get("container")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty()
            {
                causes.push(required(
                    format!("{p}.container"),
                    "must specify a container",
                ));
            }
            resource_source(src, &p, &mut causes);
        } else if let Some(src) = present.first().and_then(|k| m.get(*k)) {
            let p = format!("{path}.{}", present[0]);
            if present[0] == "object" {
                causes.extend(target_ref(
                    src.get("describedObject").unwrap_or(&Value::Null),
                    &format!("{p}.describedObject"),
                ));
            }
            // validateMetricIdentifier
            match src
                .pointer("/metric/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
            {
                "" => causes.push(required(
                    format!("{p}.metric.name"),
                    "must specify a metric name",
                )),
                name => {
                    for msg in path_segment_errors(name) {
                        causes.push(invalid(format!("{p}.metric.name"), &json!(name), &msg));
                    }
                }
            }
            let target = src.get("target").unwrap_or(&Value::Null);
            metric_target(target, &format!("{p}.target"), &mut causes);
            let set = |k: &str| target.get(k).is_some_and(|v| !v.is_null());
            let (value, average) = (set("value"), set("averageValue"));
            let average_path = format!("{p}.target.averageValue");
            match present[0] {
                "pods" if !average => causes.push(required(
                    average_path,
                    "must specify a positive target averageValue",
                )),
                "object" if !value && !average => causes.push(required(
                    average_path,
                    "must set either a target value or averageValue",
                )),
                "external" if !value && !average => causes.push(required(
                    average_path,
                    "must set either a target value for metric or a per-pod target",
                )),
                "external" if value && average => causes.push(Cause::forbidden(
                    format!("{p}.target.value"),
                    "Forbidden: may not set both a target value for metric and a per-pod target",
                )),
                _ => {}
            }
        }
    }
    causes
}

fn standard_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-")
}

fn resource_source(src: &Value, path: &str, causes: &mut Vec<Cause>) {
    match src.get("name").and_then(Value::as_str).unwrap_or_default() {
        "" => causes.push(required(
            format!("{path}.name"),
            "must specify a resource name",
        )),
        n if !n.contains('/') && !standard_resource(n) => causes.push(invalid(
            format!("{path}.name"),
            &json!(n),
            "must be a standard resource for containers",
        )),
        _ => {}
    }
    let target = src.get("target").cloned().unwrap_or(Value::Null);
    let target_path = format!("{path}.target");
    metric_target(&target, &target_path, causes);
    let utilization = target
        .get("averageUtilization")
        .is_some_and(|v| !v.is_null());
    let average = target.get("averageValue").is_some_and(|v| !v.is_null());
    if !utilization && !average {
        causes.push(required(
            format!("{target_path}.averageUtilization"),
            "must set either a target raw value or a target utilization",
        ));
    }
    if utilization && average {
        causes.push(Cause::forbidden(
            format!("{target_path}.averageValue"),
            "Forbidden: may not set both a target raw value and a target utilization",
        ));
    }
}

fn metric_target(t: &Value, path: &str, causes: &mut Vec<Cause>) {
    let ty = t.get("type").and_then(Value::as_str).unwrap_or_default();
    if ty.is_empty() {
        causes.push(required(
            format!("{path}.type"),
            "must specify a metric target type",
        ));
    }
    if !matches!(ty, "Utilization" | "Value" | "AverageValue") {
        causes.push(invalid(
            format!("{path}.type"),
            &json!(ty),
            "must be either Utilization, Value, or AverageValue",
        ));
    }
    for key in ["value", "averageValue"] {
        if let Some(q) = t.get(key).and_then(Value::as_str)
            && parse_milli(q).is_none_or(|v| v <= 0)
        {
            causes.push(invalid(
                format!("{path}.{key}"),
                &json!(q),
                "must be positive",
            ));
        }
    }
    if let Some(u) = int(t, "averageUtilization")
        && u < 1
    {
        causes.push(invalid(
            format!("{path}.averageUtilization"),
            &json!(u),
            "must be greater than 0",
        ));
    }
}

fn scaling_rules(rules: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(w) = int(rules, "stabilizationWindowSeconds") {
        if w < 0 {
            causes.push(invalid(
                format!("{path}.stabilizationWindowSeconds"),
                &json!(w),
                "must be greater than or equal to zero",
            ));
        }
        if w > MAX_STABILIZATION_WINDOW_SECONDS {
            causes.push(invalid(
                format!("{path}.stabilizationWindowSeconds"),
                &json!(w),
                &format!("must be less than or equal to {MAX_STABILIZATION_WINDOW_SECONDS}"),
            ));
        }
    }
    if let Some(p) = rules.get("selectPolicy").and_then(Value::as_str)
        && !matches!(p, "Max" | "Min" | "Disabled")
    {
        causes.push(not_supported(
            format!("{path}.selectPolicy"),
            &json!(p),
            &["Disabled", "Max", "Min"],
        ));
    }
    let policies = rules
        .get("policies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if policies.is_empty() {
        causes.push(required(
            format!("{path}.policies"),
            "must specify at least one Policy",
        ));
    }
    for (i, p) in policies.iter().enumerate() {
        let pp = format!("{path}.policies[{i}]");
        let ty = p.get("type").and_then(Value::as_str).unwrap_or_default();
        if !matches!(ty, "Pods" | "Percent") {
            causes.push(not_supported(
                format!("{pp}.type"),
                &json!(ty),
                &["Percent", "Pods"],
            ));
        }
        let value = int(p, "value").unwrap_or(0);
        if value <= 0 {
            causes.push(invalid(
                format!("{pp}.value"),
                &json!(value),
                "must be greater than zero",
            ));
        }
        let period = int(p, "periodSeconds").unwrap_or(0);
        if period <= 0 {
            causes.push(invalid(
                format!("{pp}.periodSeconds"),
                &json!(period),
                "must be greater than zero",
            ));
        }
        if period > MAX_PERIOD_SECONDS {
            causes.push(invalid(
                format!("{pp}.periodSeconds"),
                &json!(period),
                &format!("must be less than or equal to {MAX_PERIOD_SECONDS}"),
            ));
        }
    }
    if let Some(t) = rules.get("tolerance").and_then(Value::as_str)
        && parse_milli(t).is_none_or(|v| v < 0)
    {
        causes.push(invalid(
            format!("{path}.tolerance"),
            &json!(t),
            "must be greater than or equal to zero",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(spec: Value) -> Value {
        let mut obj = json!({"metadata": {"name": "x"}, "spec": spec});
        defaults(&mut obj);
        obj
    }

    fn fields(causes: &[Cause]) -> Vec<String> {
        causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn defaults_fill_min_replicas_the_cpu_target_and_behavior_rules() {
        let obj = hpa(
            json!({"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 3,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}}),
        );
        assert_eq!(obj["spec"]["minReplicas"], 1);
        assert_eq!(
            obj["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert_eq!(
            obj["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            5
        );
        assert_eq!(
            obj["spec"]["behavior"]["scaleDown"]["policies"][0]["type"],
            "Percent"
        );
        assert_eq!(
            obj["spec"]["behavior"]["scaleUp"]["policies"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert!(validate(&obj).is_empty(), "{:?}", fields(&validate(&obj)));
    }

    #[test]
    fn bad_bounds_and_targets_name_upstream_fields() {
        let obj = hpa(
            json!({"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "minReplicas": 0, "maxReplicas": 0}),
        );
        let f = fields(&validate(&obj));
        assert!(
            f.contains(
                &"spec.minReplicas: Invalid value: 0: must be greater than or equal to 1"
                    .to_owned()
            ),
            "{f:?}"
        );
        assert!(
            f.contains(&"spec.maxReplicas: Invalid value: 0: must be greater than 0".to_owned()),
            "{f:?}"
        );

        let obj = hpa(json!({"scaleTargetRef": {"name": "w"}, "maxReplicas": 2}));
        assert_eq!(
            fields(&validate(&obj)),
            ["spec.scaleTargetRef.kind: Required value"]
        );

        let obj = hpa(
            json!({"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 2,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}}]}),
        );
        assert_eq!(
            fields(&validate(&obj)),
            [
                "spec.metrics[0].resource.target.averageUtilization: Invalid value: 0: must be greater than 0"
            ]
        );

        let obj = hpa(
            json!({"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 2,
            "behavior": {"scaleUp": {"selectPolicy": "Fastest", "policies": [{"type": "Pods", "value": 0, "periodSeconds": 4000}]}}}),
        );
        assert_eq!(
            fields(&validate(&obj)),
            [
                "spec.behavior.scaleUp.selectPolicy: Unsupported value: \"Fastest\": supported values: \"Disabled\", \"Max\", \"Min\"",
                "spec.behavior.scaleUp.policies[0].value: Invalid value: 0: must be greater than zero",
                "spec.behavior.scaleUp.policies[0].periodSeconds: Invalid value: 4000: must be less than or equal to 1800",
            ]
        );
    }

    #[test]
    fn pods_object_and_external_sources_need_the_targets_upstream_asks_for() {
        let check = |metric: Value| {
            let obj = hpa(
                json!({"scaleTargetRef": {"kind": "Deployment", "name": "w"},
                "maxReplicas": 2, "metrics": [metric]}),
            );
            fields(&validate(&obj))
        };
        assert_eq!(
            check(json!({"type": "Pods", "pods": {"metric": {"name": "qps"},
                "target": {"type": "Value", "value": "1"}}})),
            [
                "spec.metrics[0].pods.target.averageValue: Required value: must specify a positive target averageValue"
            ]
        );
        assert_eq!(
            check(
                json!({"type": "Object", "object": {"metric": {"name": "qps"},
                "describedObject": {}, "target": {"type": "Value"}}})
            ),
            [
                "spec.metrics[0].object.describedObject.kind: Required value",
                "spec.metrics[0].object.describedObject.name: Required value",
                "spec.metrics[0].object.target.averageValue: Required value: must set either a target value or averageValue",
            ]
        );
        assert_eq!(
            check(
                json!({"type": "External", "external": {"metric": {"name": "a/b"},
                "target": {"type": "AverageValue", "value": "1", "averageValue": "2"}}})
            ),
            [
                "spec.metrics[0].external.metric.name: Invalid value: \"a/b\": may not contain '/'",
                "spec.metrics[0].external.target.value: Forbidden: may not set both a target value for metric and a per-pod target",
            ]
        );
        assert_eq!(
            check(
                json!({"type": "External", "external": {"metric": {"name": "q"},
                "target": {"type": "AverageValue"}}})
            ),
            [
                "spec.metrics[0].external.target.averageValue: Required value: must set either a target value for metric or a per-pod target"
            ]
        );
    }
}
