//! Whole syncs against a fake target and metrics source.

use super::*;
use serde_json::json;

use crate::controllers::podautoscaler::replicas::PodMetric;

/// A target that has `scale` (or answers `missing`), recording writes.
struct FakeTarget {
    scale: Result<Scale, String>,
    written: Mutex<Vec<i32>>,
}

impl Targets for FakeTarget {
    fn get(&self, _: &str, _: &str, _: &str, _: &str) -> BoxFuture<'_, Result<Scale, String>> {
        let s = self.scale.clone();
        Box::pin(async move { s })
    }
    fn set(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: &str,
        replicas: i32,
    ) -> BoxFuture<'_, Result<(), String>> {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(replicas);
        Box::pin(async { Ok(()) })
    }
}

struct FakeMetrics(Result<PodMetricsInfo, String>);

impl MetricsSource for FakeMetrics {
    fn pod_metrics(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: &str,
    ) -> BoxFuture<'_, Result<PodMetricsInfo, String>> {
        let m = self.0.clone();
        Box::pin(async move { m })
    }
}

fn hpa() -> HorizontalPodAutoscaler {
    let mut obj = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "default", "generation": 1},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]},
    });
    crate::apiserver::admission::autoscaling::defaults(&mut obj);
    serde_json::from_value(obj).expect("hpa")
}

fn pods(n: usize) -> Vec<Pod> {
    (0..n)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("web-{i}"), "namespace": "default", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]},
                "status": {"phase": "Running", "startTime": "2026-01-01T10:00:00Z",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T10:00:05Z"}]},
            }))
            .expect("pod")
        })
        .collect()
}

fn wall() -> Timestamp {
    "2026-01-01T12:00:00Z".parse().expect("time")
}

fn usage(n: usize, millis: i64) -> PodMetricsInfo {
    (0..n)
        .map(|i| {
            (
                format!("web-{i}"),
                PodMetric {
                    value: millis,
                    timestamp: wall(),
                    window: Duration::from_secs(15),
                },
            )
        })
        .collect()
}

fn condition<'a>(o: &'a Outcome, t: &str) -> &'a HorizontalPodAutoscalerCondition {
    o.status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition in {:?}", o.status))
}

fn target(replicas: i32) -> FakeTarget {
    FakeTarget {
        scale: Ok(Scale {
            replicas,
            selector: "app=web".into(),
        }),
        written: Mutex::default(),
    }
}

#[tokio::test]
async fn busy_pods_scale_the_target_up_with_an_event_and_status() {
    let a = Autoscaler::default();
    let t = target(1);
    // One pod at 90 % of its request against a 50 % target: ceil(1.8) = 2.
    let o = a
        .reconcile(
            "default/web",
            &hpa(),
            &pods(1),
            &t,
            &FakeMetrics(Ok(usage(1, 90))),
            Instant::now(),
            wall(),
        )
        .await;
    assert_eq!(*t.written.lock().expect("lock"), [2]);
    assert_eq!(o.status.desired_replicas, 2);
    assert_eq!(o.status.current_replicas, Some(1));
    assert!(o.status.last_scale_time.is_some());
    let current = o
        .status
        .current_metrics
        .as_ref()
        .and_then(|m| m[0].resource.as_ref())
        .expect("cpu status");
    assert_eq!(current.current.average_utilization, Some(90));
    assert_eq!(
        current.current.average_value.as_ref().map(|q| q.0.as_str()),
        Some("90m")
    );
    assert!(
        o.events.iter().any(|(t, r, m)| *t == "Normal" && *r == "SuccessfulRescale"
            && m == "New size: 2; reason: cpu resource utilization (percentage of request) above target"),
        "{:?}",
        o.events
    );
    assert_eq!(
        condition(&o, "AbleToScale").reason.as_deref(),
        Some("SucceededRescale")
    );
    assert_eq!(
        condition(&o, "ScalingActive").reason.as_deref(),
        Some("ValidMetricFound")
    );
    assert_eq!(condition(&o, "ScalingLimited").status, "False");
    assert!(o.error.is_none());
}

#[tokio::test]
async fn missing_metrics_keep_the_size_and_say_why() {
    let a = Autoscaler::default();
    let t = target(2);
    let o = a
        .reconcile(
            "default/web",
            &hpa(),
            &pods(2),
            &t,
            &FakeMetrics(Err("no metrics returned from resource metrics API".into())),
            Instant::now(),
            wall(),
        )
        .await;
    assert!(t.written.lock().expect("lock").is_empty(), "no rescale");
    let c = condition(&o, "ScalingActive");
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some("FailedGetResourceMetric"))
    );
    assert_eq!(
        c.message.as_deref(),
        Some(
            "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API"
        )
    );
    assert_eq!(o.status.current_replicas, Some(2));
    assert!(
        o.events
            .iter()
            .any(|(_, r, _)| *r == "FailedComputeMetricsReplicas")
    );
    assert!(o.error.is_some());
}

#[tokio::test]
async fn a_target_without_scale_is_not_able_to_scale() {
    let a = Autoscaler::default();
    let t = FakeTarget {
        scale: Err("could not find scale subresource for apps/v1, Resource=daemonsets in discovery information".into()),
        written: Mutex::default(),
    };
    let o = a
        .reconcile(
            "default/web",
            &hpa(),
            &pods(1),
            &t,
            &FakeMetrics(Ok(usage(1, 90))),
            Instant::now(),
            wall(),
        )
        .await;
    let c = condition(&o, "AbleToScale");
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some("FailedGetScale"))
    );
    assert_eq!(
        c.message.as_deref(),
        Some(
            "the HPA controller was unable to get the target's current scale: could not find scale subresource for apps/v1, Resource=daemonsets in discovery information"
        )
    );
    assert!(
        o.events
            .iter()
            .any(|(t, r, _)| *t == "Warning" && *r == "FailedGetScale")
    );
}

#[tokio::test]
async fn a_target_above_max_is_brought_down_without_metrics() {
    let a = Autoscaler::default();
    let t = target(9);
    let o = a
        .reconcile(
            "default/web",
            &hpa(),
            &pods(9),
            &t,
            &FakeMetrics(Err("unused".into())),
            Instant::now(),
            wall(),
        )
        .await;
    assert_eq!(*t.written.lock().expect("lock"), [5]);
    assert!(
        o.events.iter().any(|(_, _, m)| m
            == "New size: 5; reason: Current number of replicas above Spec.MaxReplicas")
    );
}

#[tokio::test]
async fn a_quiet_target_scales_down_only_after_the_stabilization_window() {
    let a = Autoscaler::default();
    let t = target(3);
    let t0 = Instant::now();
    let quiet = || FakeMetrics(Ok(usage(3, 5)));
    let o = a
        .reconcile("default/web", &hpa(), &pods(3), &t, &quiet(), t0, wall())
        .await;
    assert!(t.written.lock().expect("lock").is_empty(), "{:?}", o.status);
    assert_eq!(
        condition(&o, "AbleToScale").reason.as_deref(),
        Some("ScaleDownStabilized")
    );
    let o = a
        .reconcile(
            "default/web",
            &hpa(),
            &pods(3),
            &t,
            &quiet(),
            t0 + Duration::from_secs(301),
            wall(),
        )
        .await;
    assert_eq!(*t.written.lock().expect("lock"), [1], "{:?}", o.status);
    assert!(
        o.events
            .iter()
            .any(|(_, _, m)| m == "New size: 1; reason: All metrics below target")
    );
}

#[tokio::test]
async fn a_container_resource_metric_counts_that_containers_request() {
    let a = Autoscaler::default();
    let t = target(1);
    let mut h = hpa();
    h.spec.metrics = Some(vec![
        serde_json::from_value(json!({"type": "ContainerResource", "containerResource": {
        "name": "cpu", "container": "c", "target": {"type": "Utilization", "averageUtilization": 50}}}))
        .expect("metric"),
    ]);
    let o = a
        .reconcile(
            "default/web",
            &h,
            &pods(1),
            &t,
            &FakeMetrics(Ok(usage(1, 90))),
            Instant::now(),
            wall(),
        )
        .await;
    assert_eq!(*t.written.lock().expect("lock"), [2]);
    let status = o.status.current_metrics.as_ref().expect("metrics");
    assert_eq!(status[0].type_, "ContainerResource");
    let c = status[0]
        .container_resource
        .as_ref()
        .expect("container status");
    assert_eq!(
        (c.container.as_str(), c.current.average_utilization),
        ("c", Some(90))
    );
    assert!(
        o.events.iter().any(|(_, _, m)| m
            == "New size: 2; reason: cpu container resource utilization (percentage of request) above target"),
        "{:?}",
        o.events
    );
}

#[tokio::test]
async fn two_hpas_over_the_same_pods_are_ambiguous() {
    let a = Autoscaler::default();
    let t = target(1);
    let metrics = FakeMetrics(Ok(usage(1, 90)));
    let now = Instant::now();
    let first = a
        .reconcile("default/web", &hpa(), &pods(1), &t, &metrics, now, wall())
        .await;
    assert_eq!(condition(&first, "ScalingActive").status, "True");
    let second = a
        .reconcile("default/other", &hpa(), &pods(1), &t, &metrics, now, wall())
        .await;
    let c = condition(&second, "ScalingActive");
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some("AmbiguousSelector"))
    );
    assert_eq!(
        c.message.as_deref(),
        Some(
            "pods by selector app=web are controlled by multiple HPAs: [default/other default/web]"
        )
    );
    assert_eq!(
        *t.written.lock().expect("lock"),
        [2],
        "only the first HPA scaled"
    );
    // Once one is deleted, the other is alone again.
    a.forget("default/web");
    let third = a
        .reconcile("default/other", &hpa(), &pods(1), &t, &metrics, now, wall())
        .await;
    assert_eq!(
        condition(&third, "ScalingActive").reason.as_deref(),
        Some("ValidMetricFound")
    );
}
