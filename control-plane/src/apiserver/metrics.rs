//! Prometheus metrics at `/metrics`, named as kube-apiserver's:
//! `apiserver_request_total{verb,resource,code}`,
//! `apiserver_request_duration_seconds{verb,resource}`,
//! `apiserver_storage_objects{resource}` / the current store revision,
//! the admission webhooks' `apiserver_admission_webhook_admission_duration_seconds`,
//! `apiserver_admission_webhook_request_total`,
//! `apiserver_admission_webhook_rejection_count` and
//! `apiserver_admission_webhook_fail_open_count` (the two `_count` counters are written
//! as gauges: OpenMetrics would rename a counter to `…_count_total`, and queries use
//! upstream's names), and ValidatingAdmissionPolicy's
//! `apiserver_validating_admission_policy_check_total` and `…_check_duration_seconds`.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLatencyLabels {
    name: String,
    operation: String,
    rejected: String,
    r#type: String,
}

// Label fields in name order, as kube-apiserver's text output sorts them.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookRequestLabels {
    code: String,
    name: String,
    operation: String,
    rejected: String,
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookRejectionLabels {
    error_type: String,
    name: String,
    operation: String,
    rejection_code: String,
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyCheckLabels {
    enforcement_action: String,
    error_type: String,
    policy: String,
    policy_binding: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookFailOpenLabels {
    name: String,
    r#type: String,
}

/// One admission webhook call, as the webhook metrics label it: the webhook's name,
/// `admit` or `validating`, and the operation.
#[derive(Debug, Clone, Copy)]
pub struct WebhookCall<'a> {
    pub name: &'a str,
    pub kind: &'static str,
    pub operation: &'static str,
}

#[derive(Debug)]
struct AdmissionMetrics {
    latency: Family<WebhookLatencyLabels, Histogram, fn() -> Histogram>,
    requests: Family<WebhookRequestLabels, Counter>,
    rejections: Family<WebhookRejectionLabels, Gauge>,
    fail_open: Family<WebhookFailOpenLabels, Gauge>,
    policy_checks: Family<PolicyCheckLabels, Counter>,
    policy_latency: Family<PolicyCheckLabels, Histogram, fn() -> Histogram>,
}

/// kube-apiserver's buckets for a ValidatingAdmissionPolicy check.
fn policy_histogram() -> Histogram {
    Histogram::new([0.0000005, 0.001, 0.01, 0.1, 1.0])
}

/// kube-apiserver's buckets for admission latencies.
fn webhook_histogram() -> Histogram {
    Histogram::new([0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 25.0])
}

/// An HTTP code as the webhook metrics bound it (above 600 counts as 600).
fn bounded(code: u16) -> String {
    code.min(600).to_string()
}

/// The content type of every berth-server `/metrics` body: prometheus-client writes
/// the OpenMetrics text format (`_total` counters, a final `# EOF`), so it is served as
/// that, not as Prometheus' text format 0.0.4.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Latency,
    admission: AdmissionMetrics,
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
        let admission = AdmissionMetrics {
            latency: Family::new_with_constructor(webhook_histogram),
            requests: Family::default(),
            rejections: Family::default(),
            fail_open: Family::default(),
            policy_checks: Family::default(),
            policy_latency: Family::new_with_constructor(policy_histogram),
        };
        registry.register(
            "apiserver_validating_admission_policy_check",
            "Validation admission policy check total, labeled by policy and further identified by binding and enforcement action taken",
            admission.policy_checks.clone(),
        );
        registry.register(
            "apiserver_validating_admission_policy_check_duration_seconds",
            "Validation admission latency for individual validation expressions in seconds, labeled by policy and further including binding and enforcement action taken",
            admission.policy_latency.clone(),
        );
        registry.register(
            "apiserver_admission_webhook_admission_duration_seconds",
            "Admission webhook latency histogram in seconds, identified by name and broken out for each operation and API resource and type (validating or admit)",
            admission.latency.clone(),
        );
        registry.register(
            "apiserver_admission_webhook_request",
            "Admission webhook request total, identified by name and broken out for each admission type (validating or admit) and operation, whether the request was rejected and the HTTP status code",
            admission.requests.clone(),
        );
        registry.register(
            "apiserver_admission_webhook_rejection_count",
            "Admission webhook rejection count, identified by name and broken out for each admission type (validating or admit) and operation, by error type (calling_webhook_error, apiserver_internal_error, no_error) and rejection code",
            admission.rejections.clone(),
        );
        registry.register(
            "apiserver_admission_webhook_fail_open_count",
            "Admission webhook fail open count, identified by name and broken out for each admission type (validating or admit)",
            admission.fail_open.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            admission,
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

    /// One admission webhook call: whether it rejected the request (a refusal, or an
    /// error that fails it), the webhook's HTTP code (0 without an answer).
    pub fn webhook_call(&self, call: &WebhookCall, rejected: bool, code: u16, took: Duration) {
        let w = &self.admission;
        w.latency
            .get_or_create(&WebhookLatencyLabels {
                name: call.name.into(),
                operation: call.operation.into(),
                rejected: rejected.to_string(),
                r#type: call.kind.into(),
            })
            .observe(took.as_secs_f64());
        w.requests
            .get_or_create(&WebhookRequestLabels {
                code: bounded(code),
                name: call.name.into(),
                operation: call.operation.into(),
                rejected: rejected.to_string(),
                r#type: call.kind.into(),
            })
            .inc();
    }

    /// A request a webhook rejected: `error_type` is `no_error` (a refusal, `code` its
    /// status), `calling_webhook_error` or `apiserver_internal_error`.
    pub fn webhook_rejection(&self, call: &WebhookCall, error_type: &str, code: u16) {
        self.admission
            .rejections
            .get_or_create(&WebhookRejectionLabels {
                error_type: error_type.into(),
                name: call.name.into(),
                operation: call.operation.into(),
                rejection_code: bounded(code),
                r#type: call.kind.into(),
            })
            .inc();
    }

    /// One ValidatingAdmissionPolicy validation that denied (`enforcement_action`
    /// `deny`, `warn` or `audit`, one per binding action) or failed under
    /// `failurePolicy: Ignore` (`allow`); `error_type` as upstream's (`invalid_error`).
    pub fn policy_check(
        &self,
        policy: &str,
        binding: &str,
        enforcement_action: &str,
        error_type: &str,
        took: Duration,
    ) {
        let labels = PolicyCheckLabels {
            enforcement_action: enforcement_action.into(),
            error_type: error_type.into(),
            policy: policy.into(),
            policy_binding: binding.into(),
        };
        self.admission.policy_checks.get_or_create(&labels).inc();
        self.admission
            .policy_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// A webhook that could not be called, skipped under `failurePolicy: Ignore`.
    pub fn webhook_fail_open(&self, call: &WebhookCall) {
        self.admission
            .fail_open
            .get_or_create(&WebhookFailOpenLabels {
                name: call.name.into(),
                r#type: call.kind.into(),
            })
            .inc();
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
