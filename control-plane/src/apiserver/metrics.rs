//! Prometheus metrics at `/metrics`, named as kube-apiserver's:
//! `apiserver_request_total{verb,resource,code}`,
//! `apiserver_request_duration_seconds{verb,resource}`, and
//! `apiserver_storage_objects{resource}` / the current store revision.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Api;
use super::request::ResourcePath;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    resource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: String,
    resource: String,
}

type Latency = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// The content type of every berth-server `/metrics` body: prometheus-client writes
/// the OpenMetrics text format (`_total` counters, a final `# EOF`), so it is served as
/// that, not as Prometheus' text format 0.0.4.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Latency,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Latency = Family::new_with_constructor(latency_histogram);
        registry.register(
            "apiserver_request",
            "Requests by verb, resource and HTTP code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Request latency by verb and resource (watches: until the stream starts)",
            latency.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
        }
    }
}

/// The Kubernetes verb of a request.
pub fn verb(method: &Method, path: Option<&ResourcePath>, query: Option<&str>) -> String {
    let watch = path.is_some_and(|p| p.watch_prefix)
        || query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let named = path.is_some_and(|p| p.name.is_some());
    match *method {
        Method::GET if watch => "WATCH",
        Method::GET if named => "GET",
        Method::GET => "LIST",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE if named => "DELETE",
        Method::DELETE => "DELETECOLLECTION",
        _ => "OTHER",
    }
    .to_owned()
}

impl Metrics {
    /// Adds the audit counters, as kube-apiserver names them:
    /// `apiserver_audit_event_total` (events generated and sent to the backend) and
    /// `apiserver_audit_error_total{plugin="log"}` (events lost: a full queue or a
    /// failed write).
    pub fn register_audit(&self, auditor: &super::audit::Auditor) {
        let Ok(mut registry) = self.registry.lock() else {
            return;
        };
        registry.register(
            "apiserver_audit_event",
            "Counter of audit events generated and sent to the audit backend",
            auditor.events.clone(),
        );
        registry.register(
            "apiserver_audit_error",
            "Counter of audit events that failed to be audited properly",
            auditor.errors.clone(),
        );
    }

    pub fn observe(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                resource: resource.into(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                verb: verb.into(),
                resource: resource.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn render(&self, api: &Api) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        }
        out.push_str(&crate::store::encryption::render_metrics());
        out.push_str("# HELP apiserver_storage_objects Objects stored, by resource.\n# TYPE apiserver_storage_objects gauge\n");
        // One series per stored resource: its served versions share the storage, and
        // the metrics server's resources are not stored.
        let mut seen = std::collections::BTreeSet::new();
        for def in api.registry.all() {
            if def.metrics || !seen.insert(def.qualified()) {
                continue;
            }
            let count = api.cache.count(&def.prefix());
            out.push_str(&format!(
                "apiserver_storage_objects{{resource=\"{}\"}} {count}\n",
                def.qualified()
            ));
        }
        out.push_str(&format!(
            "# HELP berth_store_revision Current store revision.\n# TYPE berth_store_revision gauge\nberth_store_revision {}\n# EOF\n",
            api.store.current_revision()
        ));
        out
    }
}
