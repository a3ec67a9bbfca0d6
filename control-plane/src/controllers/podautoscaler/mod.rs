//! The HorizontalPodAutoscaler controller (kube-controller-manager's
//! `horizontalpodautoscaling`): every HPA synced every
//! `--horizontal-pod-autoscaler-sync-period` (15 s, the first time one period after it
//! is seen, as upstream) — its target's
//! `/scale` read and written through the API (any kind with a scale subresource,
//! custom resources included), resource metrics read from `metrics.k8s.io`, the
//! status written with the HPA's resourceVersion, and Events recorded.
//!
//! Layout: [`replicas`] (the replica calculation), [`behavior`] (stabilization and
//! rate limits), [`reconcile`] (one sync, I/O behind traits), [`metrics`]
//! (Prometheus). Entry point: [`start`].

pub mod behavior;
pub mod metrics;
pub mod reconcile;
pub mod replicas;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::queue::{Queue, key_of, split_key};
use crate::client::{Informers, Involved, record_event};
use reconcile::{Autoscaler, MetricsSource, Scale, Settings, Targets};
use replicas::{PodMetric, PodMetricsInfo};

const COMPONENT: &str = "horizontal-pod-autoscaler";

/// Targets through the API: discovery finds the kind's resource and whether it has
/// `/scale`, then the scale subresource is read or patched.
struct ApiTargets {
    client: Client,
}

impl ApiTargets {
    async fn resource(
        &self,
        namespace: &str,
        api_version: &str,
        kind: &str,
    ) -> Result<(Api<DynamicObject>, String), String> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| match e {
                kube::Error::Discovery(_) => {
                    format!("no matches for kind \"{kind}\" in group \"{group}\"")
                }
                other => other.to_string(),
            })?;
        let plural = resource.plural.clone();
        if !caps.subresources.iter().any(|(r, _)| r.plural == "scale") {
            return Err(format!(
                "could not find scale subresource for {}, Resource={plural} in discovery information",
                if group.is_empty() {
                    version.to_owned()
                } else {
                    format!("{group}/{version}")
                }
            ));
        }
        let qualified = if group.is_empty() {
            plural
        } else {
            format!("{plural}.{group}")
        };
        Ok((
            Api::namespaced_with(self.client.clone(), namespace, &resource),
            qualified,
        ))
    }
}

fn api_error(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message,
        other => other.to_string(),
    }
}

impl Targets for ApiTargets {
    fn get(
        &self,
        namespace: &str,
        api_version: &str,
        kind: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<Scale, String>> {
        let (namespace, api_version, kind, name) = (
            namespace.to_owned(),
            api_version.to_owned(),
            kind.to_owned(),
            name.to_owned(),
        );
        Box::pin(async move {
            let (api, _) = self.resource(&namespace, &api_version, &kind).await?;
            let scale = api.get_scale(&name).await.map_err(api_error)?;
            Ok(Scale {
                replicas: scale.spec.and_then(|s| s.replicas).unwrap_or(0),
                selector: scale.status.and_then(|s| s.selector).unwrap_or_default(),
            })
        })
    }

    fn set(
        &self,
        namespace: &str,
        api_version: &str,
        kind: &str,
        name: &str,
        replicas: i32,
    ) -> BoxFuture<'_, Result<(), String>> {
        let (namespace, api_version, kind, name) = (
            namespace.to_owned(),
            api_version.to_owned(),
            kind.to_owned(),
            name.to_owned(),
        );
        Box::pin(async move {
            let (api, _) = self.resource(&namespace, &api_version, &kind).await?;
            // An update of `/scale`, not a patch: the controller's role grants
            // `get` and `update` on `*/scale`, as upstream's.
            let mut scale = api.get_scale(&name).await.map_err(api_error)?;
            scale.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
            api.replace_scale(&name, &PostParams::default(), &scale)
                .await
                .map(|_| ())
                .map_err(api_error)
        })
    }
}

/// The resource metrics API through the apiserver (`metrics.k8s.io/v1beta1` PodMetrics).
struct ApiMetrics {
    client: Client,
}

/// `getPodMetrics` (each pod's sum over its containers of `resource`; a pod with no
/// containers or a container without it is left out) or, with a `container`,
/// `getContainerMetrics` (that container's usage; a pod without the container is an
/// error). Values in thousandths.
pub fn pod_metrics_info(
    list: &Value,
    resource: &str,
    container: &str,
) -> Result<PodMetricsInfo, String> {
    let mut out = PodMetricsInfo::new();
    let usage = |c: &Value| {
        let q = c.pointer(&format!("/usage/{resource}"))?.as_str()?;
        crate::scheduler::quantity::parse_milli(q).map(|m| m as i64)
    };
    for item in list
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = item.pointer("/metadata/name").and_then(Value::as_str) else {
            continue;
        };
        let containers = item
            .get("containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let value = if container.is_empty() {
            let values: Option<Vec<i64>> = containers.iter().map(usage).collect();
            match values {
                Some(v) if !containers.is_empty() => Some(v.iter().sum()),
                _ => None,
            }
        } else {
            let Some(c) = containers.iter().find(|c| c["name"] == container) else {
                let ns = item
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                return Err(format!(
                    "container {container} not present in metrics for pod {ns}/{name}"
                ));
            };
            usage(c)
        };
        let Some(value) = value else { continue };
        let timestamp = item
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(jiff::Timestamp::now);
        let window = item
            .get("window")
            .and_then(Value::as_str)
            .and_then(crate::apiserver::protobuf::parse_duration)
            .map(|ns| Duration::from_nanos(u64::try_from(ns).unwrap_or(0)))
            .unwrap_or_default();
        out.insert(
            name.to_owned(),
            PodMetric {
                value,
                timestamp,
                window,
            },
        );
    }
    Ok(out)
}

impl MetricsSource for ApiMetrics {
    fn pod_metrics(
        &self,
        namespace: &str,
        selector: &str,
        resource: &str,
        container: &str,
    ) -> BoxFuture<'_, Result<PodMetricsInfo, String>> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("labelSelector", selector)
            .finish();
        let url = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?{query}");
        let (resource, container) = (resource.to_owned(), container.to_owned());
        Box::pin(async move {
            let req = axum::http::Request::get(&url)
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            let list: Value = self.client.request(req).await.map_err(|e| {
                format!(
                    "unable to fetch metrics from resource metrics API: {}",
                    api_error(e)
                )
            })?;
            if list
                .get("items")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                return Err("no metrics returned from resource metrics API".into());
            }
            pod_metrics_info(&list, &resource, &container)
                .map_err(|e| format!("failed to get container metrics: {e}"))
        })
    }
}

/// The controller's flags.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `--horizontal-pod-autoscaler-sync-period` (15 s).
    pub sync_period: Duration,
    pub settings: Settings,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sync_period: Duration::from_secs(15),
            settings: Settings::default(),
        }
    }
}

struct Controller {
    client: Client,
    hpas: Store<HorizontalPodAutoscaler>,
    pods: Store<Pod>,
    autoscaler: Autoscaler,
    targets: ApiTargets,
    metrics: ApiMetrics,
    sync_period: Duration,
}

/// Runs the controller until the runtime ends.
pub fn start(
    client: Client,
    options: Options,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    // As upstream's `enqueueHPA`: every HPA waits one sync period in the queue (a new
    // one included), and a change while it waits adds nothing — so each is synced
    // once per period, and the controller's own status writes do not re-sync it.
    // A deleted one is synced at once, so it is forgotten (its selector no longer
    // makes others ambiguous) right away, as upstream's `deleteHPA`.
    let period = options.sync_period;
    let cache: Arc<std::sync::OnceLock<Store<HorizontalPodAutoscaler>>> = Arc::default();
    let hpas = informers.add(Api::<HorizontalPodAutoscaler>::all(client.clone()), {
        let (q, cache) = (queue.clone(), cache.clone());
        move |o: &HorizontalPodAutoscaler| {
            // The callback runs after the cache has the change: one it lacks is gone.
            let gone = cache
                .get()
                .is_some_and(|c| c.get(&ObjectRef::from_obj(o)).is_none());
            if gone {
                q.add(key_of(&o.metadata));
            } else {
                q.add_after(key_of(&o.metadata), period);
            }
        }
    });
    let _ = cache.set(hpas.clone());
    let pods = informers.add(Api::<Pod>::all(client.clone()), |_: &Pod| {});
    async move {
        let _ = hpas.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            targets: ApiTargets {
                client: client.clone(),
            },
            metrics: ApiMetrics {
                client: client.clone(),
            },
            client,
            hpas,
            pods,
            autoscaler: Autoscaler::new(options.settings),
            sync_period: options.sync_period,
        });
        queue
            .work("horizontal-pod-autoscaler", move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

impl Controller {
    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (ns, name) = split_key(key);
        let ns = ns.unwrap_or_default();
        let Some(hpa) = self.hpas.get(&ObjectRef::new(name).within(ns)) else {
            self.autoscaler.forget(key);
            return Ok(None);
        };
        let started = Instant::now();
        let pods: Vec<Pod> = self
            .pods
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(ns))
            .map(|p| (**p).clone())
            .collect();
        let before = hpa
            .status
            .as_ref()
            .and_then(|s| s.current_replicas)
            .unwrap_or(0);
        let outcome = self
            .autoscaler
            .reconcile(
                key,
                &hpa,
                &pods,
                &self.targets,
                &self.metrics,
                Instant::now(),
                jiff::Timestamp::now(),
            )
            .await;
        let about = Involved::of(hpa.as_ref());
        for (type_, reason, message) in &outcome.events {
            record_event(&self.client, COMPONENT, &about, type_, reason, message).await;
        }
        let after = if outcome.status.last_scale_time
            != hpa.status.as_ref().and_then(|s| s.last_scale_time.clone())
        {
            outcome.status.desired_replicas
        } else {
            before
        };
        let failed = outcome.error.as_ref().map(|_| "spec");
        metrics::observe(before, after, failed, started.elapsed());
        if hpa.status.as_ref() != Some(&outcome.status) {
            let mut updated = (*hpa).clone();
            updated.status = Some(outcome.status);
            let api: Api<HorizontalPodAutoscaler> = Api::namespaced(self.client.clone(), ns);
            match api
                .replace_status(name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => {}
                // A newer HPA is on its way through the informer; it will be synced.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(err) = &outcome.error {
            tracing::debug!(hpa = %key, %err, "autoscaler sync");
        }
        Ok(Some(self.sync_period))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list() -> Value {
        json!({"items": [
            {"metadata": {"name": "a", "namespace": "ns"}, "timestamp": "2026-01-01T12:00:00Z", "window": "15s",
             "containers": [{"name": "app", "usage": {"cpu": "250m", "memory": "10Mi"}},
                            {"name": "side", "usage": {"cpu": "50000000n", "memory": "1Mi"}}]},
            {"metadata": {"name": "b", "namespace": "ns"}, "timestamp": "2026-01-01T12:00:00Z", "window": "15s",
             "containers": [{"name": "app", "usage": {"memory": "1Mi"}}]},
        ]})
    }

    #[test]
    fn pod_usage_sums_containers_and_leaves_out_pods_without_the_resource() {
        let m = pod_metrics_info(&list(), "cpu", "").expect("metrics");
        assert_eq!(m.len(), 1, "b has no cpu");
        assert_eq!(m["a"].value, 300);
        assert_eq!(m["a"].window, Duration::from_secs(15));
        let m = pod_metrics_info(&list(), "memory", "").expect("metrics");
        assert_eq!(m["a"].value, 11 * 1_048_576 * 1000);
    }

    #[test]
    fn container_usage_is_that_containers_and_a_missing_container_is_an_error() {
        let m = pod_metrics_info(&list(), "cpu", "app").expect("metrics");
        assert_eq!(m["a"].value, 250);
        assert!(!m.contains_key("b"));
        let err = pod_metrics_info(&list(), "cpu", "side").expect_err("b has no side");
        assert_eq!(err, "container side not present in metrics for pod ns/b");
    }
}
