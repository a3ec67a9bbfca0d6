//! The replica calculation of kube-controller-manager's HPA
//! (`pkg/controller/podautoscaler/replica_calculator.go`): from the pods' resource
//! usage and the target, the replica count `ceil(ratio × ready pods)` — unchanged
//! within the tolerance (10 %); pods being deleted or failed ignored; pending and
//! (for CPU) not-yet-ready pods left out, and counted as using nothing when that
//! could only damp a scale-up; pods without metrics counted as using their request
//! (or the target) on a scale-down and nothing on a scale-up; and no change when
//! those assumptions would flip the direction.
//!
//! Entry points: [`Calculator::resource_replicas`] (Utilization targets) and
//! [`Calculator::raw_resource_replicas`] (AverageValue targets).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::scheduler::quantity::parse_milli;

/// One pod's usage of one resource, in thousandths (millicores, millibytes) — what
/// the metrics client reads from `metrics.k8s.io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodMetric {
    pub value: i64,
    pub timestamp: Timestamp,
    pub window: Duration,
}

/// Pod name → usage.
pub type PodMetricsInfo = BTreeMap<String, PodMetric>;

/// The scale-up and scale-down tolerances (`--horizontal-pod-autoscaler-tolerance`,
/// or the HPA's own `behavior.scaleUp/scaleDown.tolerance`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    pub scale_down: f64,
    pub scale_up: f64,
}

impl Tolerances {
    fn within(&self, ratio: f64) -> bool {
        (1.0 - self.scale_down) <= ratio && ratio <= (1.0 + self.scale_up)
    }
}

/// What one calculation looks at: the resource, the tolerances, the selected pods and
/// their usage, and the time.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    pub resource: &'a str,
    /// One container's requests only (`ContainerResource` metrics); empty: all.
    pub container: &'a str,
    pub tolerances: Tolerances,
    pub pods: &'a [Pod],
    pub metrics: PodMetricsInfo,
    pub now: Timestamp,
}

/// The calculator's settings (kube-controller-manager's flags).
#[derive(Debug, Clone, Copy)]
pub struct Calculator {
    /// `--horizontal-pod-autoscaler-cpu-initialization-period` (5 min).
    pub cpu_initialization_period: Duration,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay` (30 s).
    pub initial_readiness_delay: Duration,
}

impl Default for Calculator {
    fn default() -> Self {
        Self {
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
        }
    }
}

/// `groupPods`' result.
#[derive(Debug, Default)]
struct Groups {
    ready: usize,
    unready: BTreeSet<String>,
    missing: BTreeSet<String>,
    ignored: BTreeSet<String>,
}

fn ts(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Timestamp {
    t.0
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

impl Calculator {
    fn group_pods(
        &self,
        pods: &[Pod],
        metrics: &PodMetricsInfo,
        resource: &str,
        now: Timestamp,
    ) -> Groups {
        let mut g = Groups::default();
        for pod in pods {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.clone().unwrap_or_default();
            let phase = status.phase.as_deref().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() || phase == "Failed" {
                g.ignored.insert(name);
                continue;
            }
            if phase == "Pending" {
                g.unready.insert(name);
                continue;
            }
            let Some(metric) = metrics.get(&name) else {
                g.missing.insert(name);
                continue;
            };
            if resource == "cpu" {
                let ready = status
                    .conditions
                    .as_ref()
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
                let unready = match (ready, &status.start_time) {
                    (Some(cond), Some(start)) => {
                        let transition = cond
                            .last_transition_time
                            .as_ref()
                            .map(ts)
                            .unwrap_or(ts(start));
                        if add(ts(start), self.cpu_initialization_period) > now {
                            // Within the initialisation period: ignore an unready pod, or
                            // a sample not a full window after the last transition.
                            cond.status == "False"
                                || metric.timestamp < add(transition, metric.window)
                        } else {
                            // Later: ignore only a pod that has never been ready.
                            cond.status == "False"
                                && add(ts(start), self.initial_readiness_delay) > transition
                        }
                    }
                    _ => true,
                };
                if unready {
                    g.unready.insert(name);
                    continue;
                }
            }
            g.ready += 1;
        }
        g
    }

    /// `GetResourceReplicas`: replicas for an `averageUtilization` target (percent
    /// of the pods' requests). Returns (replicas, utilization %, average usage).
    pub fn resource_replicas(
        &self,
        current: i32,
        target_utilization: i32,
        sample: Sample<'_>,
    ) -> Result<(i32, i32, i64), String> {
        let Sample {
            resource,
            container,
            tolerances,
            pods,
            mut metrics,
            now,
        } = sample;
        if pods.is_empty() {
            return Err("no pods returned by selector while calculating replica count".into());
        }
        let g = self.group_pods(pods, &metrics, resource, now);
        for name in g.ignored.iter().chain(&g.unready) {
            metrics.remove(name);
        }
        if metrics.is_empty() {
            return Err("did not receive metrics for targeted pods (pods might be unready)".into());
        }
        let requests = pod_requests(pods, resource, container)?;
        let (ratio, utilization, raw) = utilization_ratio(&metrics, &requests, target_utilization)?;
        let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
        if !scale_up_with_unready && g.missing.is_empty() {
            if tolerances.within(ratio) {
                return Ok((current, utilization, raw));
            }
            return Ok(((ratio * g.ready as f64).ceil() as i32, utilization, raw));
        }
        if !g.missing.is_empty() {
            if ratio < 1.0 {
                // Scale-down: missing pods count as using their whole request (or the
                // target, for targets above 100 %).
                let fallback = i64::from(target_utilization.max(100));
                for name in &g.missing {
                    let request = requests.get(name).copied().unwrap_or(0);
                    metrics.insert(
                        name.clone(),
                        PodMetric {
                            value: request * fallback / 100,
                            timestamp: now,
                            window: Duration::ZERO,
                        },
                    );
                }
            } else if ratio > 1.0 {
                for name in &g.missing {
                    metrics.insert(
                        name.clone(),
                        PodMetric {
                            value: 0,
                            timestamp: now,
                            window: Duration::ZERO,
                        },
                    );
                }
            }
        }
        if scale_up_with_unready {
            for name in &g.unready {
                metrics.insert(
                    name.clone(),
                    PodMetric {
                        value: 0,
                        timestamp: now,
                        window: Duration::ZERO,
                    },
                );
            }
        }
        let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target_utilization)?;
        if tolerances.within(new_ratio)
            || (ratio < 1.0 && new_ratio > 1.0)
            || (ratio > 1.0 && new_ratio < 1.0)
        {
            return Ok((current, utilization, raw));
        }
        let replicas = (new_ratio * metrics.len() as f64).ceil() as i32;
        if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
            return Ok((current, utilization, raw));
        }
        Ok((replicas, utilization, raw))
    }

    /// `GetRawResourceReplicas` / `calcPlainMetricReplicas`: replicas for an
    /// `averageValue` target (thousandths). Returns (replicas, average usage).
    pub fn raw_resource_replicas(
        &self,
        current: i32,
        target: i64,
        sample: Sample<'_>,
    ) -> Result<(i32, i64), String> {
        let Sample {
            resource,
            container: _,
            tolerances,
            pods,
            mut metrics,
            now,
        } = sample;
        if pods.is_empty() {
            return Err("no pods returned by selector while calculating replica count".into());
        }
        let g = self.group_pods(pods, &metrics, resource, now);
        for name in g.ignored.iter().chain(&g.unready) {
            metrics.remove(name);
        }
        if metrics.is_empty() {
            return Err("did not receive metrics for targeted pods (pods might be unready)".into());
        }
        let (ratio, usage) = usage_ratio(&metrics, target);
        let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
        if !scale_up_with_unready && g.missing.is_empty() {
            if tolerances.within(ratio) {
                return Ok((current, usage));
            }
            return Ok(((ratio * g.ready as f64).ceil() as i32, usage));
        }
        if !g.missing.is_empty() {
            let value = if ratio < 1.0 { target } else { 0 };
            for name in &g.missing {
                metrics.insert(
                    name.clone(),
                    PodMetric {
                        value,
                        timestamp: now,
                        window: Duration::ZERO,
                    },
                );
            }
        }
        if scale_up_with_unready {
            for name in &g.unready {
                metrics.insert(
                    name.clone(),
                    PodMetric {
                        value: 0,
                        timestamp: now,
                        window: Duration::ZERO,
                    },
                );
            }
        }
        let (new_ratio, _) = usage_ratio(&metrics, target);
        if tolerances.within(new_ratio)
            || (ratio < 1.0 && new_ratio > 1.0)
            || (ratio > 1.0 && new_ratio < 1.0)
        {
            return Ok((current, usage));
        }
        let replicas = (new_ratio * metrics.len() as f64).ceil() as i32;
        if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
            return Ok((current, usage));
        }
        Ok((replicas, usage))
    }
}

/// `calculatePodRequests`: each pod's request (thousandths) of `resource` — its
/// pod-level request if it has one, else the sum over its containers and restartable
/// init containers (or only `container`, if not empty); a container without one is an
/// error.
fn pod_requests(
    pods: &[Pod],
    resource: &str,
    container: &str,
) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &pod.spec else { continue };
        // Pod-level requests (KEP-2837), when set, are the pod's request.
        let pod_level = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| parse_milli(&q.0));
        if container.is_empty()
            && let Some(request) = pod_level
        {
            out.insert(name, request as i64);
            continue;
        }
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let mut sum = 0i64;
        for c in spec
            .containers
            .iter()
            .chain(sidecars)
            .filter(|c| container.is_empty() || c.name == container)
        {
            let request = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .and_then(|q| parse_milli(&q.0));
            match request {
                Some(m) => sum += m as i64,
                None => {
                    return Err(format!(
                        "missing request for {resource} in container {} of Pod {name}",
                        c.name
                    ));
                }
            }
        }
        out.insert(name, sum);
    }
    Ok(out)
}

/// `GetResourceUtilizationRatio`: (usage/target ratio, utilization %, average usage).
fn utilization_ratio(
    metrics: &PodMetricsInfo,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut total, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (name, m) in metrics {
        if let Some(r) = requests.get(name) {
            total += m.value;
            requested += r;
            n += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = (total * 100 / requested) as i32;
    Ok((
        f64::from(utilization) / f64::from(target),
        utilization,
        total / n.max(1),
    ))
}

/// `GetMetricUsageRatio`: (average/target, average).
fn usage_ratio(metrics: &PodMetricsInfo, target: i64) -> (f64, i64) {
    let total: i64 = metrics.values().map(|m| m.value).sum();
    let average = total / (metrics.len().max(1) as i64);
    (average as f64 / target as f64, average)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOL: Tolerances = Tolerances {
        scale_down: 0.1,
        scale_up: 0.1,
    };

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().expect("time")
    }

    /// A Running, Ready pod started long ago, requesting `cpu`.
    fn pod(name: &str, cpu: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "100Mi"}}}]},
            "status": {"phase": "Running", "startTime": "2026-01-01T10:00:00Z",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T10:00:10Z"}]},
        }))
        .expect("pod")
    }

    fn sample<'a>(resource: &'a str, pods: &'a [Pod], metrics: PodMetricsInfo) -> Sample<'a> {
        Sample {
            resource,
            container: "",
            tolerances: TOL,
            pods,
            metrics,
            now: now(),
        }
    }

    fn metrics(values: &[(&str, i64)]) -> PodMetricsInfo {
        values
            .iter()
            .map(|(n, v)| {
                (
                    (*n).to_owned(),
                    PodMetric {
                        value: *v,
                        timestamp: now(),
                        window: Duration::from_secs(15),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn utilization_above_target_scales_to_the_ceiling_of_the_ratio() {
        let c = Calculator::default();
        // 2 pods requesting 100m, using 90m each: 90 % of request vs a 50 % target.
        let pods = [pod("a", "100m"), pod("b", "100m")];
        let (replicas, utilization, raw) = c
            .resource_replicas(
                2,
                50,
                sample("cpu", &pods, metrics(&[("a", 90), ("b", 90)])),
            )
            .expect("replicas");
        assert_eq!((replicas, utilization, raw), (4, 90, 90)); // ceil(1.8 * 2)
    }

    #[test]
    fn a_ratio_within_the_tolerance_keeps_the_size() {
        let c = Calculator::default();
        let pods = [pod("a", "100m"), pod("b", "100m")];
        let (replicas, utilization, _) = c
            .resource_replicas(
                2,
                50,
                sample("cpu", &pods, metrics(&[("a", 54), ("b", 54)])),
            )
            .expect("replicas");
        assert_eq!((replicas, utilization), (2, 54), "1.08 is within 10 %");
    }

    #[test]
    fn missing_metrics_count_as_full_request_on_scale_down_and_zero_on_scale_up() {
        let c = Calculator::default();
        let pods = [pod("a", "100m"), pod("b", "100m"), pod("c", "100m")];
        // Scale-down: a and b at 10 %, c missing → treated as 100 %: (10+10+100)/3 = 40 %
        // of a 50 % target → 0.8 → ceil(0.8*3) = 3: no change below current.
        let (replicas, _, _) = c
            .resource_replicas(
                3,
                50,
                sample("cpu", &pods, metrics(&[("a", 10), ("b", 10)])),
            )
            .expect("replicas");
        assert_eq!(replicas, 3);
        // Scale-up: a and b at 100 %, c missing → 0: 200/3 = 66 % of 50 % → ceil(1.33*3) = 4.
        let (replicas, _, _) = c
            .resource_replicas(
                3,
                50,
                sample("cpu", &pods, metrics(&[("a", 100), ("b", 100)])),
            )
            .expect("replicas");
        assert_eq!(replicas, 4);
    }

    #[test]
    fn unready_pods_damp_a_scale_up_and_pending_pods_are_left_out() {
        let c = Calculator::default();
        let mut pending = pod("p", "100m");
        if let Some(s) = pending.status.as_mut() {
            s.phase = Some("Pending".into());
        }
        let pods = [pod("a", "100m"), pending];
        // a at 100 % of a 50 % target: ratio 2; p counts as 0 → 50 %/50 % = 1.0 → within
        // tolerance: keep 2.
        let (replicas, _, _) = c
            .resource_replicas(2, 50, sample("cpu", &pods, metrics(&[("a", 100)])))
            .expect("replicas");
        assert_eq!(replicas, 2);
    }

    #[test]
    fn no_metrics_and_no_requests_are_errors_with_upstream_messages() {
        let c = Calculator::default();
        let pods = [pod("a", "100m")];
        let err = c
            .resource_replicas(1, 50, sample("cpu", &pods, PodMetricsInfo::new()))
            .expect_err("no metrics");
        assert_eq!(
            err,
            "did not receive metrics for targeted pods (pods might be unready)"
        );
        let mut bare = pod("b", "100m");
        if let Some(spec) = bare.spec.as_mut() {
            spec.containers[0].resources = None;
        }
        let err = c
            .resource_replicas(1, 50, sample("cpu", &[bare], metrics(&[("b", 10)])))
            .expect_err("no request");
        assert_eq!(err, "missing request for cpu in container c of Pod b");
    }

    #[test]
    fn a_pod_level_request_is_the_pods_request() {
        let c = Calculator::default();
        let mut p = pod("a", "100m");
        if let Some(spec) = p.spec.as_mut() {
            spec.resources = serde_json::from_value(json!({"requests": {"cpu": "200m"}})).ok();
        }
        // 90m of 200m is 45 %: within 10 % of a 50 % target.
        let (replicas, utilization, _) = c
            .resource_replicas(1, 50, sample("cpu", &[p], metrics(&[("a", 90)])))
            .expect("replicas");
        assert_eq!((replicas, utilization), (1, 45));
    }

    #[test]
    fn average_value_targets_use_the_mean_usage() {
        let c = Calculator::default();
        let pods = [pod("a", "100m"), pod("b", "100m")];
        // 300 MiB average vs a 100 MiB target (in thousandths): 3 × 2 = 6.
        let mib = 1_048_576_000i64;
        let (replicas, usage) = c
            .raw_resource_replicas(
                2,
                100 * mib,
                sample(
                    "memory",
                    &pods,
                    metrics(&[("a", 200 * mib), ("b", 400 * mib)]),
                ),
            )
            .expect("replicas");
        assert_eq!((replicas, usage), (6, 300 * mib));
    }
}
