//! HorizontalPodAutoscaler `autoscaling/v1` ⇄ `autoscaling/v2`, as
//! `pkg/apis/autoscaling/v1/conversion.go`: v1 has one metric,
//! `targetCPUUtilizationPercentage`, which is v2's `Resource` metric `cpu` with an
//! `Utilization` target; and `currentCPUUtilizationPercentage` in status. What v1
//! cannot say travels in annotations so a v1 client's read-modify-write loses
//! nothing: `autoscaling.alpha.kubernetes.io/metrics` (the other metrics),
//! `…/current-metrics`, `…/conditions` and `…/behavior`. (Upstream writes the metric
//! annotations in the older v1 `MetricSpec` shape; berth writes v2's — see
//! docs/metrics-autoscaling.md.)

use serde_json::{Map, Value, json};

pub const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
pub const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
pub const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
pub const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// Whether a v2 metric is the one v1 expresses as `targetCPUUtilizationPercentage`.
fn is_cpu_utilization(metric: &Value) -> bool {
    metric.get("type").and_then(Value::as_str) == Some("Resource")
        && metric.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
        && metric
            .pointer("/resource/target/type")
            .and_then(Value::as_str)
            == Some("Utilization")
        && metric
            .pointer("/resource/target/averageUtilization")
            .is_some_and(Value::is_i64)
}

fn is_cpu_status(metric: &Value) -> bool {
    metric.get("type").and_then(Value::as_str) == Some("Resource")
        && metric.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
        && metric
            .pointer("/resource/current/averageUtilization")
            .is_some_and(Value::is_i64)
}

fn annotations(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let meta = obj.get_mut("metadata")?.as_object_mut()?;
    if !meta.get("annotations").is_some_and(Value::is_object) {
        meta.insert("annotations".into(), json!({}));
    }
    meta.get_mut("annotations")?.as_object_mut()
}

/// Drops `metadata.annotations` if conversion left it empty (Go's omitempty map).
fn tidy_annotations(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        && meta
            .get("annotations")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        meta.remove("annotations");
    }
}

fn annotate(obj: &mut Value, key: &str, value: &Value) {
    if let Some(a) = annotations(obj) {
        a.insert(key.into(), json!(value.to_string()));
    }
}

/// Takes a JSON annotation off the object (ignored if it does not parse, as upstream).
fn take(obj: &mut Value, key: &str) -> Option<Value> {
    let a = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)?;
    let text = a.remove(key)?;
    serde_json::from_str(text.as_str()?).ok()
}

/// A stored `autoscaling/v2` HPA as `autoscaling/v1`.
pub fn v2_to_v1(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("autoscaling/v1");
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = obj.get("status").cloned();
    let metrics: Vec<Value> = spec
        .get("metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut v1_spec = json!({
        "scaleTargetRef": spec.get("scaleTargetRef").cloned().unwrap_or_else(|| json!({})),
        "maxReplicas": spec.get("maxReplicas").cloned().unwrap_or(json!(0)),
    });
    if let Some(min) = spec.get("minReplicas") {
        v1_spec["minReplicas"] = min.clone();
    }
    let mut others = Vec::new();
    for m in metrics {
        if is_cpu_utilization(&m) && v1_spec.get("targetCPUUtilizationPercentage").is_none() {
            v1_spec["targetCPUUtilizationPercentage"] = m
                .pointer("/resource/target/averageUtilization")
                .cloned()
                .unwrap_or(Value::Null);
        } else {
            others.push(m);
        }
    }
    if !others.is_empty() {
        annotate(&mut obj, METRICS_ANNOTATION, &Value::Array(others));
    }
    if let Some(behavior) = spec.get("behavior").filter(|b| !b.is_null()) {
        annotate(&mut obj, BEHAVIOR_ANNOTATION, behavior);
    }
    obj["spec"] = v1_spec;
    if let Some(status) = status {
        let mut v1_status = json!({
            "currentReplicas": status.get("currentReplicas").cloned().unwrap_or(json!(0)),
            "desiredReplicas": status.get("desiredReplicas").cloned().unwrap_or(json!(0)),
        });
        for key in ["observedGeneration", "lastScaleTime"] {
            if let Some(v) = status.get(key).filter(|v| !v.is_null()) {
                v1_status[key] = v.clone();
            }
        }
        let mut others = Vec::new();
        for m in status
            .get("currentMetrics")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            if is_cpu_status(&m) && v1_status.get("currentCPUUtilizationPercentage").is_none() {
                v1_status["currentCPUUtilizationPercentage"] = m
                    .pointer("/resource/current/averageUtilization")
                    .cloned()
                    .unwrap_or(Value::Null);
            } else {
                others.push(m);
            }
        }
        if !others.is_empty() {
            annotate(&mut obj, CURRENT_METRICS_ANNOTATION, &Value::Array(others));
        }
        if let Some(conditions) = status
            .get("conditions")
            .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()))
        {
            annotate(&mut obj, CONDITIONS_ANNOTATION, conditions);
        }
        obj["status"] = v1_status;
    }
    obj
}

/// An `autoscaling/v1` HPA (normalized) as stored `autoscaling/v2`.
pub fn v1_to_v2(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("autoscaling/v2");
    let other_metrics = take(&mut obj, METRICS_ANNOTATION);
    let current_metrics = take(&mut obj, CURRENT_METRICS_ANNOTATION);
    let conditions = take(&mut obj, CONDITIONS_ANNOTATION);
    let behavior = take(&mut obj, BEHAVIOR_ANNOTATION);
    tidy_annotations(&mut obj);
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut v2_spec = json!({
        "scaleTargetRef": spec.get("scaleTargetRef").cloned().unwrap_or_else(|| json!({})),
        "maxReplicas": spec.get("maxReplicas").cloned().unwrap_or(json!(0)),
    });
    if let Some(min) = spec.get("minReplicas") {
        v2_spec["minReplicas"] = min.clone();
    }
    // The annotation's metrics first, then the CPU target, as upstream orders them.
    let mut metrics: Vec<Value> = other_metrics
        .and_then(|m| m.as_array().cloned())
        .unwrap_or_default();
    if let Some(cpu) = spec
        .get("targetCPUUtilizationPercentage")
        .filter(|v| !v.is_null())
    {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": cpu}}}));
    }
    if !metrics.is_empty() {
        v2_spec["metrics"] = Value::Array(metrics);
    }
    if let Some(b) = behavior.filter(Value::is_object) {
        v2_spec["behavior"] = b;
    }
    obj["spec"] = v2_spec;
    if let Some(status) = obj.get("status").cloned() {
        let mut v2_status = json!({
            "desiredReplicas": status.get("desiredReplicas").cloned().unwrap_or(json!(0)),
        });
        for key in ["observedGeneration", "lastScaleTime", "currentReplicas"] {
            if let Some(v) = status.get(key).filter(|v| !v.is_null()) {
                v2_status[key] = v.clone();
            }
        }
        let mut current: Vec<Value> = current_metrics
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default();
        if let Some(cpu) = status
            .get("currentCPUUtilizationPercentage")
            .filter(|v| !v.is_null())
        {
            current.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": cpu}}}));
        }
        if !current.is_empty() {
            v2_status["currentMetrics"] = Value::Array(current);
        }
        if let Some(c) = conditions.filter(Value::is_array) {
            v2_status["conditions"] = c;
        }
        obj["status"] = v2_status;
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}},
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 70, "averageValue": "70m"}}},
                ],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "SucceededRescale", "message": "m"}],
            },
        })
    }

    #[test]
    fn v2_reads_as_v1_with_the_cpu_target_and_the_rest_in_annotations() {
        let v1 = v2_to_v1(v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["spec"]["maxReplicas"], 5);
        assert!(v1["spec"].get("metrics").is_none());
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 70);
        let a = &v1["metadata"]["annotations"];
        let others: Value =
            serde_json::from_str(a[METRICS_ANNOTATION].as_str().expect("metrics annotation"))
                .expect("json");
        assert_eq!(others[0]["resource"]["name"], "memory");
        assert!(a[CONDITIONS_ANNOTATION].as_str().is_some());
        assert!(a[BEHAVIOR_ANNOTATION].as_str().is_some());
    }

    #[test]
    fn v1_round_trips_to_the_same_v2() {
        let back = v1_to_v2(v2_to_v1(v2()));
        assert_eq!(back["apiVersion"], "autoscaling/v2");
        let metrics = back["spec"]["metrics"].as_array().expect("metrics");
        assert_eq!(metrics.len(), 2);
        // Upstream order: the annotation's metrics, then the CPU target.
        assert_eq!(metrics[0]["resource"]["name"], "memory");
        assert_eq!(metrics[1]["resource"]["target"]["averageUtilization"], 50);
        assert_eq!(
            back["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            10
        );
        assert_eq!(
            back["status"]["conditions"][0]["reason"],
            "SucceededRescale"
        );
        assert_eq!(
            back["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            70
        );
        assert!(back["metadata"].get("annotations").is_none());
    }

    #[test]
    fn a_v1_object_without_a_target_has_no_metrics() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "x"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 3}});
        let v2 = v1_to_v2(v1);
        assert!(v2["spec"].get("metrics").is_none());
        assert!(v2.get("status").is_none());
    }
}
