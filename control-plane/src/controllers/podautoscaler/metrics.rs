//! The HPA controller's Prometheus metrics, named as kube-controller-manager's:
//! `horizontal_pod_autoscaler_controller_reconciliations_total{action,error}` and
//! `horizontal_pod_autoscaler_controller_reconciliation_duration_seconds{action,error}`
//! (`action`: `scale_up`, `scale_down` or `none`; `error`: `spec`, `internal` or
//! `none`). Rendered into berth-server's `/metrics`.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    action: &'static str,
    error: &'static str,
}

type Durations = Family<Labels, Histogram, fn() -> Histogram>;

struct Metrics {
    registry: Mutex<Registry>,
    reconciliations: Family<Labels, Counter>,
    durations: Durations,
}

fn histogram() -> Histogram {
    // 1 ms … ~16 s, as upstream's exponential buckets from 0.001.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let reconciliations = Family::<Labels, Counter>::default();
    let durations: Durations = Family::new_with_constructor(histogram);
    registry.register(
        "horizontal_pod_autoscaler_controller_reconciliations",
        "Number of reconciliations of HPA controller, by action and error",
        reconciliations.clone(),
    );
    registry.register(
        "horizontal_pod_autoscaler_controller_reconciliation_duration_seconds",
        "The time (seconds) that the HPA controller takes to reconcile once",
        durations.clone(),
    );
    Metrics {
        registry: Mutex::new(registry),
        reconciliations,
        durations,
    }
});

/// Records one sync: the direction it scaled (or not) and whether it failed on the
/// HPA's spec (its target or metrics) or otherwise.
pub fn observe(from: i32, to: i32, error: Option<&'static str>, took: Duration) {
    let action = match to.cmp(&from) {
        std::cmp::Ordering::Greater => "scale_up",
        std::cmp::Ordering::Less => "scale_down",
        std::cmp::Ordering::Equal => "none",
    };
    let labels = Labels {
        action,
        error: error.unwrap_or("none"),
    };
    METRICS.reconciliations.get_or_create(&labels).inc();
    METRICS
        .durations
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}

/// The text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    if let Ok(registry) = METRICS.registry.lock() {
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    }
    out
}
