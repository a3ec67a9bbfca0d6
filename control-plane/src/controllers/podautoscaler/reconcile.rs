//! One sync of one HorizontalPodAutoscaler (`reconcileAutoscaler`): read the
//! target's `/scale`, compute a replica count per metric and take the largest,
//! stabilize and limit it ([`super::behavior`]), write the new scale, and give back
//! the status, the conditions (AbleToScale, ScalingActive, ScalingLimited) and the
//! events, with upstream's reasons and messages. The target and the metrics are
//! behind traits so the logic is tested without a cluster.
//!
//! Entry point: [`Autoscaler::reconcile`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricValueStatus,
    ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::behavior::{Bounds, Condition, History};
use super::replicas::{Calculator, PodMetricsInfo, Sample, Tolerances};
use crate::apiserver::selectors::LabelSelector;
use crate::scheduler::quantity::{format_decimal, parse_milli};

/// A target's `/scale`: its desired replicas and its pods' selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub replicas: i32,
    pub selector: String,
}

/// The HPA's target, reached through its `/scale` subresource.
pub trait Targets: Send + Sync {
    /// The scale of `kind`/`name` in `api_version` (errors worded for the condition).
    fn get(
        &self,
        namespace: &str,
        api_version: &str,
        kind: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<Scale, String>>;
    fn set(
        &self,
        namespace: &str,
        api_version: &str,
        kind: &str,
        name: &str,
        replicas: i32,
    ) -> BoxFuture<'_, Result<(), String>>;
}

/// The resource metrics API (`metrics.k8s.io` PodMetrics), as the metrics client.
pub trait MetricsSource: Send + Sync {
    /// Each selected pod's usage of `resource` — summed over its containers, or of
    /// `container` alone if not empty (pods lacking it are left out).
    fn pod_metrics(
        &self,
        namespace: &str,
        selector: &str,
        resource: &str,
        container: &str,
    ) -> BoxFuture<'_, Result<PodMetricsInfo, String>>;
}

/// An Event to record about the HPA: (type, reason, message).
pub type EventNote = (&'static str, &'static str, String);

/// What a sync decided.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: HorizontalPodAutoscalerStatus,
    pub events: Vec<EventNote>,
    /// The error the sync ends with (retried with back-off), if any.
    pub error: Option<String>,
}

/// The controller's settings (kube-controller-manager's `--horizontal-pod-autoscaler-*`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub tolerance: f64,
    pub downscale_stabilization: Duration,
    pub calculator: Calculator,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tolerance: 0.1,
            downscale_stabilization: Duration::from_secs(300),
            calculator: Calculator::default(),
        }
    }
}

/// The HPA controller's state: settings and each HPA's history.
#[derive(Debug, Default)]
pub struct Autoscaler {
    pub settings: Settings,
    histories: Mutex<HashMap<String, History>>,
    /// Each HPA's target selector as last synced (namespace, selector), to find pods
    /// two HPAs control (upstream's `hpaSelectors`).
    selectors: Mutex<HashMap<String, (String, LabelSelector)>>,
}

/// `setCondition`: a condition's time changes only when its status does.
fn set_condition(
    conditions: &mut Vec<HorizontalPodAutoscalerCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(Time(now));
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message);
        }
        None => conditions.push(HorizontalPodAutoscalerCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(Time(now)),
            ..Default::default()
        }),
    }
}

fn apply(
    conditions: &mut Vec<HorizontalPodAutoscalerCondition>,
    list: &[Condition],
    now: Timestamp,
) {
    for (t, s, r, m) in list {
        set_condition(conditions, t, s, r, (*m).to_owned(), now);
    }
}

fn quantity(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Option<i64> {
    parse_milli(&q.0).map(|m| m as i64)
}

/// Where one sync's metrics are computed: the HPA's namespace, the target's selector,
/// the pods it selects, the tolerances and the time.
#[derive(Debug, Clone, Copy)]
struct Scope<'a> {
    namespace: &'a str,
    selector: &'a str,
    pods: &'a [Pod],
    tolerances: Tolerances,
    now: Timestamp,
}

const NO_TARGET: &str = "invalid resource metric source: \
    neither an average utilization target nor an average value (usage) target was set";

/// The condition reason and error of a metric source berth cannot read (no custom or
/// external metrics API), worded as the HPA controller's when those APIs are missing.
fn unsupported(source: &str) -> (&'static str, String) {
    let custom = "no custom metrics API (custom.metrics.k8s.io) registered";
    match source {
        "Pods" => (
            "FailedGetPodsMetric",
            format!("unable to get metric: {custom}"),
        ),
        "Object" => (
            "FailedGetObjectMetric",
            format!("unable to get metric: {custom}"),
        ),
        "External" => (
            "FailedGetExternalMetric",
            "unable to get external metric: \
             no external metrics API (external.metrics.k8s.io) registered"
                .into(),
        ),
        other => (
            "InvalidMetricSourceType",
            format!("unknown metric source type \"{other}\""),
        ),
    }
}

/// A metric's result: (replicas, metric name, status) or (condition reason, error).
type MetricResult = Result<(i32, String, MetricStatus), (&'static str, String)>;

impl Autoscaler {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            histories: Mutex::default(),
            selectors: Mutex::default(),
        }
    }

    /// Runs `f` on the HPA's history (never held across an await).
    fn history<T>(&self, key: &str, f: impl FnOnce(&mut History) -> T) -> T {
        let mut all = self.histories.lock().unwrap_or_else(|p| p.into_inner());
        f(all.entry(key.to_owned()).or_default())
    }

    /// Forgets a deleted HPA.
    pub fn forget(&self, key: &str) {
        self.histories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.selectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Records `key`'s selector and returns every HPA (sorted keys) whose selector
    /// picks one of `pods` (`hpasControllingPodsUnderSelector`).
    fn controlling(
        &self,
        key: &str,
        namespace: &str,
        selector: &LabelSelector,
        pods: &[Pod],
    ) -> Vec<String> {
        let mut all = self.selectors.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(key.to_owned(), (namespace.to_owned(), selector.clone()));
        let mut hpas: Vec<String> = all
            .iter()
            .filter(|(_, (ns, sel))| {
                ns == namespace
                    && pods.iter().any(|p| {
                        sel.matches(
                            &crate::controllers::pods::labels(&p.metadata)
                                .into_iter()
                                .collect(),
                        )
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        hpas.sort();
        hpas
    }

    fn tolerances(&self, hpa: &HorizontalPodAutoscaler) -> Tolerances {
        let behavior = hpa.spec.behavior.as_ref();
        let of = |rules: Option<&k8s_openapi::api::autoscaling::v2::HPAScalingRules>| {
            rules
                .and_then(|r| r.tolerance.as_ref())
                .and_then(quantity)
                .map(|m| m as f64 / 1000.0)
                .unwrap_or(self.settings.tolerance)
        };
        Tolerances {
            scale_up: of(behavior.and_then(|b| b.scale_up.as_ref())),
            scale_down: of(behavior.and_then(|b| b.scale_down.as_ref())),
        }
    }

    /// `computeStatusForResourceMetric` and `…ContainerResourceMetric`: one
    /// Resource or ContainerResource metric.
    async fn resource_metric(
        &self,
        spec: &MetricSpec,
        current: i32,
        scope: &Scope<'_>,
        metrics: &dyn MetricsSource,
    ) -> MetricResult {
        let Scope {
            namespace,
            selector,
            pods,
            tolerances,
            now,
        } = *scope;
        let (reason, name, container, target, kind) =
            match (&spec.resource, &spec.container_resource) {
                (Some(r), _) => (
                    "FailedGetResourceMetric",
                    r.name.as_str(),
                    "",
                    &r.target,
                    "resource",
                ),
                (None, Some(c)) => (
                    "FailedGetContainerResourceMetric",
                    c.name.as_str(),
                    c.container.as_str(),
                    &c.target,
                    "container resource",
                ),
                (None, None) => {
                    return Err((
                        "FailedGetResourceMetric",
                        "invalid resource metric source: no resource".into(),
                    ));
                }
            };
        let fetched = metrics
            .pod_metrics(namespace, selector, name, container)
            .await
            .map_err(|e| format!("unable to get metrics for resource {name}: {e}"));
        let sample = |metrics| Sample {
            resource: name,
            container,
            tolerances,
            pods,
            metrics,
            now,
        };
        let calc = &self.settings.calculator;
        let (replicas, current_value, metric_name) =
            if let Some(average) = target.average_value.as_ref().and_then(quantity) {
                let (replicas, usage) = fetched
                    .and_then(|m| calc.raw_resource_replicas(current, average, sample(m)))
                    .map_err(|e| (reason, format!("failed to get {name} usage: {e}")))?;
                let value = MetricValueStatus {
                    average_value: Some(milli_quantity(usage)),
                    ..Default::default()
                };
                // Upstream names an average-value proposal "<resource> resource" either way.
                (replicas, value, format!("{name} resource"))
            } else {
                let Some(utilization) = target.average_utilization else {
                    return Err((reason, NO_TARGET.into()));
                };
                let (replicas, percent, raw) = fetched
                    .and_then(|m| calc.resource_replicas(current, utilization, sample(m)))
                    .map_err(|e| (reason, format!("failed to get {name} utilization: {e}")))?;
                let value = MetricValueStatus {
                    average_utilization: Some(percent),
                    average_value: Some(milli_quantity(raw)),
                    ..Default::default()
                };
                (
                    replicas,
                    value,
                    format!("{name} {kind} utilization (percentage of request)"),
                )
            };
        let status = if container.is_empty() {
            MetricStatus {
                type_: "Resource".into(),
                resource: Some(ResourceMetricStatus {
                    name: name.into(),
                    current: current_value,
                }),
                ..Default::default()
            }
        } else {
            MetricStatus {
                type_: "ContainerResource".into(),
                container_resource: Some(ContainerResourceMetricStatus {
                    name: name.into(),
                    container: container.into(),
                    current: current_value,
                }),
                ..Default::default()
            }
        };
        Ok((replicas, metric_name, status))
    }

    /// One sync. `pods_in_namespace` lists the HPA namespace's pods (the informer's).
    #[expect(
        clippy::too_many_arguments,
        reason = "the sync's inputs, each injected for tests"
    )]
    pub async fn reconcile(
        &self,
        key: &str,
        hpa: &HorizontalPodAutoscaler,
        pods_in_namespace: &[Pod],
        targets: &dyn Targets,
        metrics: &dyn MetricsSource,
        now: Instant,
        wall: Timestamp,
    ) -> Outcome {
        let spec = hpa.spec.clone();
        let namespace = hpa.metadata.namespace.clone().unwrap_or_default();
        let old = hpa.status.clone().unwrap_or_default();
        let mut conditions = old.conditions.clone().unwrap_or_default();
        let mut events: Vec<EventNote> = Vec::new();
        let target = &spec.scale_target_ref;
        let api_version = target.api_version.clone().unwrap_or_default();
        let keep = |conditions: Vec<HorizontalPodAutoscalerCondition>,
                    current: i32,
                    metrics: Vec<MetricStatus>| HorizontalPodAutoscalerStatus {
            conditions: Some(conditions),
            current_metrics: (!metrics.is_empty()).then_some(metrics),
            current_replicas: Some(current),
            desired_replicas: old.desired_replicas,
            last_scale_time: old.last_scale_time.clone(),
            observed_generation: hpa.metadata.generation,
        };

        let scale = match targets
            .get(&namespace, &api_version, &target.kind, &target.name)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                events.push(("Warning", "FailedGetScale", e.clone()));
                set_condition(
                    &mut conditions,
                    "AbleToScale",
                    "False",
                    "FailedGetScale",
                    format!("the HPA controller was unable to get the target's current scale: {e}"),
                    wall,
                );
                let current = old.current_replicas.unwrap_or(0);
                let status = keep(
                    conditions,
                    current,
                    old.current_metrics.clone().unwrap_or_default(),
                );
                return Outcome {
                    status,
                    events,
                    error: Some(format!(
                        "failed to query scale subresource for {}/{}: {e}",
                        target.kind, target.name
                    )),
                };
            }
        };
        set_condition(
            &mut conditions,
            "AbleToScale",
            "True",
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
            wall,
        );
        let current = scale.replicas;
        self.history(key, |h| h.init(current, now));
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;

        let mut statuses = Vec::new();
        let mut rescale_reason = String::new();
        let mut error = None;
        let (desired, rescale) = if current == 0 && min != 0 {
            set_condition(
                &mut conditions,
                "ScalingActive",
                "False",
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
                wall,
            );
            (0, false)
        } else if current > max {
            rescale_reason = "Current number of replicas above Spec.MaxReplicas".into();
            (max, true)
        } else if current < min {
            rescale_reason = "Current number of replicas below Spec.MinReplicas".into();
            (min, true)
        } else {
            // computeReplicasForMetrics
            let selector = scale.selector.clone();
            let parsed = if selector.is_empty() {
                events.push(("Warning", "SelectorRequired", "selector is required".into()));
                set_condition(
                    &mut conditions,
                    "ScalingActive",
                    "False",
                    "InvalidSelector",
                    "the HPA target's scale is missing a selector".into(),
                    wall,
                );
                Err("selector is required".to_owned())
            } else {
                LabelSelector::parse(&selector).map_err(|e| {
                    let msg = format!(
                        "couldn't convert selector into a corresponding internal selector object: {}",
                        e.message
                    );
                    events.push(("Warning", "InvalidSelector", msg.clone()));
                    set_condition(&mut conditions, "ScalingActive", "False", "InvalidSelector", msg.clone(), wall);
                    msg
                })
            };
            let parsed = match parsed {
                Ok(p) => p,
                Err(e) => {
                    let status = keep(conditions, current, Vec::new());
                    events.push(("Warning", "FailedComputeMetricsReplicas", e.clone()));
                    return Outcome {
                        status,
                        events,
                        error: Some(e),
                    };
                }
            };
            let pods: Vec<Pod> = pods_in_namespace
                .iter()
                .filter(|p| {
                    parsed.matches(
                        &crate::controllers::pods::labels(&p.metadata)
                            .into_iter()
                            .collect(),
                    )
                })
                .cloned()
                .collect();
            let controlling = self.controlling(key, &namespace, &parsed, &pods);
            if controlling.len() > 1 {
                let msg = format!(
                    "pods by selector {selector} are controlled by multiple HPAs: [{}]",
                    controlling.join(" ")
                );
                events.push(("Warning", "AmbiguousSelector", msg.clone()));
                set_condition(
                    &mut conditions,
                    "ScalingActive",
                    "False",
                    "AmbiguousSelector",
                    msg.clone(),
                    wall,
                );
                events.push(("Warning", "FailedComputeMetricsReplicas", msg.clone()));
                let status = keep(conditions, current, Vec::new());
                return Outcome {
                    status,
                    events,
                    error: Some(msg),
                };
            }
            let tolerances = self.tolerances(hpa);
            let specs = spec.metrics.clone().unwrap_or_default();
            let mut best: Option<(i32, String)> = None;
            let mut invalid = 0usize;
            let mut first_invalid: Option<(&'static str, String)> = None;
            for m in &specs {
                let result = match m.type_.as_str() {
                    "Resource" | "ContainerResource" => {
                        let scope = Scope {
                            namespace: &namespace,
                            selector: &selector,
                            pods: &pods,
                            tolerances,
                            now: wall,
                        };
                        self.resource_metric(m, current, &scope, metrics).await
                    }
                    other => Err(unsupported(other)),
                };
                match result {
                    Ok((replicas, name, status)) => {
                        statuses.push(status);
                        if best.as_ref().is_none_or(|(r, _)| *r == 0 || replicas > *r) {
                            best = Some((replicas, name));
                        }
                    }
                    Err((reason, err)) => {
                        // An unreadable metric keeps an empty status entry, as upstream.
                        statuses.push(MetricStatus {
                            type_: String::new(),
                            ..Default::default()
                        });
                        events.push(("Warning", reason, err.clone()));
                        if first_invalid.is_none() {
                            first_invalid = Some((reason, err));
                        }
                        invalid += 1;
                    }
                }
            }
            let proposal = best.as_ref().map(|(r, _)| *r).unwrap_or(0);
            if let Some((reason, err)) = &first_invalid
                && (invalid >= specs.len() || proposal < current)
            {
                set_condition(
                    &mut conditions,
                    "ScalingActive",
                    "False",
                    reason,
                    format!("the HPA was unable to compute the replica count: {err}"),
                    wall,
                );
                let total = format!(
                    "invalid metrics ({invalid} invalid out of {}), first error is: {err}",
                    specs.len()
                );
                events.push(("Warning", "FailedComputeMetricsReplicas", total.clone()));
                let status = keep(conditions, current, statuses);
                return Outcome {
                    status,
                    events,
                    error: Some(total),
                };
            }
            if let Some((_, err)) = &first_invalid {
                error = Some(format!(
                    "invalid metrics ({invalid} invalid out of {}), first error is: {err}",
                    specs.len()
                ));
            }
            let metric_name = best.map(|(_, n)| n).unwrap_or_default();
            set_condition(
                &mut conditions,
                "ScalingActive",
                "True",
                "ValidMetricFound",
                format!(
                    "the HPA was able to successfully calculate a replica count from {metric_name}"
                ),
                wall,
            );
            if proposal > current {
                rescale_reason = format!("{metric_name} above target");
            }
            if proposal < current {
                rescale_reason = "All metrics below target".into();
            }
            let bounds = Bounds { min, max, current };
            let window = self.settings.downscale_stabilization;
            let (desired, normalized) = self.history(key, |h| match &spec.behavior {
                None => h.normalize(proposal, bounds, window, now),
                Some(b) => h.normalize_with_behavior(proposal, bounds, b, window, now),
            });
            apply(&mut conditions, &normalized, wall);
            (desired, desired != current)
        };
        let mut status = HorizontalPodAutoscalerStatus {
            conditions: None,
            current_metrics: (!statuses.is_empty()).then_some(statuses),
            current_replicas: Some(current),
            desired_replicas: desired,
            last_scale_time: old.last_scale_time.clone(),
            observed_generation: hpa.metadata.generation,
        };
        if rescale {
            match targets
                .set(
                    &namespace,
                    &api_version,
                    &target.kind,
                    &target.name,
                    desired,
                )
                .await
            {
                Ok(()) => {
                    set_condition(
                        &mut conditions,
                        "AbleToScale",
                        "True",
                        "SucceededRescale",
                        format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                        wall,
                    );
                    events.push((
                        "Normal",
                        "SuccessfulRescale",
                        format!("New size: {desired}; reason: {rescale_reason}"),
                    ));
                    self.history(key, |h| {
                        h.record_scale(spec.behavior.as_ref(), current, desired, now)
                    });
                    status.last_scale_time = Some(Time(wall));
                }
                Err(e) => {
                    events.push((
                        "Warning",
                        "FailedRescale",
                        format!("New size: {desired}; reason: {rescale_reason}; error: {e}"),
                    ));
                    set_condition(
                        &mut conditions,
                        "AbleToScale",
                        "False",
                        "FailedUpdateScale",
                        format!("the HPA controller was unable to update the target scale: {e}"),
                        wall,
                    );
                    status.desired_replicas = old.desired_replicas;
                    error = Some(format!(
                        "failed to rescale {}/{}: {e}",
                        target.kind, target.name
                    ));
                }
            }
        } else {
            status.desired_replicas = current;
        }
        status.conditions = Some(conditions);
        Outcome {
            status,
            events,
            error,
        }
    }
}

/// `resource.NewMilliQuantity(v, DecimalSI)`.
fn milli_quantity(v: i64) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
    let s = if v < 0 {
        format!("-{}", format_decimal(u128::from(v.unsigned_abs()), -3))
    } else {
        format_decimal(u128::from(v.unsigned_abs()), -3)
    };
    k8s_openapi::apimachinery::pkg::api::resource::Quantity(s)
}

#[cfg(test)]
mod tests;
