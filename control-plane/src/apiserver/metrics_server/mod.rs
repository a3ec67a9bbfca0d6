//! The built-in metrics server: `metrics.k8s.io/v1beta1` NodeMetrics and PodMetrics,
//! what `kubectl top` and the HorizontalPodAutoscaler read. berth-server scrapes each
//! Ready node's kubelet `/metrics/resource` every `--metric-resolution` (15 s, as
//! metrics-server) through the kubelet client it already has for logs and exec
//! ([`scrape`]), keeps the last two points of each node and container ([`storage`]),
//! and answers get and list with metrics-server's shapes: `timestamp`, `window`,
//! `usage.cpu` in nano-cores (`123456n`) and `usage.memory` as the working set
//! (`1234Ki`), a pod's `containers[]`; label and field selectors select the nodes and
//! pods as metrics-server does (through the Node and Pod objects).
//!
//! Built in rather than behind an APIService: the apiserver already holds everything a
//! metrics-server needs — the node list, the kubelet client certificate, the pods'
//! labels — so a separate process would add a second TLS client, a second set of
//! informers and a proxy hop for no gain. It has no APIService object; a remote
//! `v1beta1.metrics.k8s.io` (a real metrics-server's) takes the group-version over
//! (`apiserver::aggregator`).
//!
//! Entry points: [`handle`] (the REST side), [`scrape::run`] (the scraper).

pub mod scrape;
pub mod storage;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::rest::{Ctx, value_response};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult};
use crate::scheduler::quantity::{format_binary, format_decimal};
use storage::Usage;

pub use storage::Storage;

const API_VERSION: &str = "metrics.k8s.io/v1beta1";

fn timestamp(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "cpu": format_decimal(u128::from(u.nano_cores), -9),
        "memory": format_binary(u.memory),
    })
}

fn window(u: &Usage) -> String {
    super::protobuf::format_duration(u.window_ms.saturating_mul(1_000_000))
}

/// A NodeMetrics for `node` (its Node object), if it has usage.
fn node_metrics(ctx: &Ctx, node: &Value) -> Option<Value> {
    let name = node.pointer("/metadata/name")?.as_str()?;
    let u = ctx.api.resource_metrics.node(name)?;
    let mut meta = json!({"name": name, "creationTimestamp": super::object::now()});
    if let Some(labels) = node.pointer("/metadata/labels") {
        meta["labels"] = labels.clone();
    }
    Some(json!({
        "kind": "NodeMetrics",
        "apiVersion": API_VERSION,
        "metadata": meta,
        "timestamp": timestamp(u.timestamp_ms),
        "window": window(&u),
        "usage": usage_json(&u),
    }))
}

/// A PodMetrics for `pod` (its Pod object), if all its containers have usage.
fn pod_metrics(ctx: &Ctx, pod: &Value) -> Option<Value> {
    let name = pod.pointer("/metadata/name")?.as_str()?;
    let ns = pod.pointer("/metadata/namespace")?.as_str()?;
    let containers = ctx.api.resource_metrics.pod(ns, name)?;
    let newest = containers.iter().max_by_key(|(_, u)| u.timestamp_ms)?.1;
    let mut meta =
        json!({"name": name, "namespace": ns, "creationTimestamp": super::object::now()});
    if let Some(labels) = pod.pointer("/metadata/labels") {
        meta["labels"] = labels.clone();
    }
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": API_VERSION,
        "metadata": meta,
        "timestamp": timestamp(newest.timestamp_ms),
        "window": window(&newest),
        "containers": containers
            .iter()
            .map(|(c, u)| json!({"name": c, "usage": usage_json(u)}))
            .collect::<Vec<_>>(),
    }))
}

/// The source objects (Nodes or Pods) a request selects, with its selectors.
fn sources(ctx: &Ctx, pods: bool) -> ApiResult<Vec<Value>> {
    let labels = LabelSelector::parse(ctx.query.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(
        ctx.query.get("fieldSelector").unwrap_or_default(),
        if pods { "Pod" } else { "Node" },
    )?;
    let prefix = match (pods, ctx.namespace.as_deref()) {
        (false, _) => "/registry/core/nodes/".to_owned(),
        (true, Some(ns)) => format!("/registry/core/pods/{ns}/"),
        (true, None) => "/registry/core/pods/".to_owned(),
    };
    let (objs, _) = ctx.api.cache.list(&prefix, |o| {
        labels.matches(&o.attrs.labels) && fields.matches(&o.attrs.fields)
    });
    Ok(objs.iter().map(|o| o.value()).collect())
}

/// metrics-server's NotFound: `nodemetrics.metrics.k8s.io "n" not found`,
/// `podmetrics.metrics.k8s.io "ns/p" not found`.
fn not_found(pods: bool, name: &str) -> ApiError {
    let resource = if pods { "podmetrics" } else { "nodemetrics" };
    ApiError::not_found("metrics.k8s.io", resource, name)
}

/// GET and LIST of `nodes` and `pods` in `metrics.k8s.io`.
pub async fn handle(ctx: Ctx, method: &Method, name: Option<&str>) -> ApiResult<Response> {
    let pods = ctx.def.kind == "PodMetrics";
    if method != Method::GET || ctx.query.flag("watch") {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {method} {}",
            ctx.def.qualified()
        )));
    }
    match name {
        Some(name) => {
            let key = match (pods, ctx.namespace.as_deref()) {
                (true, Some(ns)) => format!("/registry/core/pods/{ns}/{name}"),
                _ => format!("/registry/core/nodes/{name}"),
            };
            let shown = match (pods, ctx.namespace.as_deref()) {
                (true, Some(ns)) => format!("{ns}/{name}"),
                _ => name.to_owned(),
            };
            let source = ctx.api.cache.get(&key).map(|c| c.value());
            let metrics = source.and_then(|s| {
                if pods {
                    pod_metrics(&ctx, &s)
                } else {
                    node_metrics(&ctx, &s)
                }
            });
            let obj = metrics.ok_or_else(|| not_found(pods, &shown))?;
            Ok(value_response(StatusCode::OK, &obj))
        }
        None => {
            let items: Vec<Value> = sources(&ctx, pods)?
                .iter()
                .filter_map(|s| {
                    if pods {
                        pod_metrics(&ctx, s)
                    } else {
                        node_metrics(&ctx, s)
                    }
                })
                .collect();
            let list = json!({
                "kind": ctx.def.list_kind,
                "apiVersion": API_VERSION,
                "metadata": {},
                "items": items,
            });
            Ok(value_response(StatusCode::OK, &list))
        }
    }
}
