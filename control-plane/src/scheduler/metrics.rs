//! The scheduler's Prometheus metrics, named as kube-scheduler's:
//! `scheduler_scheduling_attempt_duration_seconds{result}` (one pod's filter + score +
//! assume, the figure scheduler_perf reports) and `scheduler_schedule_attempts_total
//! {result}`, `result` being `scheduled` or `unschedulable`. Served at `/metrics` on
//! `--metrics-bind-address`.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

type Durations = Family<ResultLabel, Histogram, fn() -> Histogram>;

struct Metrics {
    registry: Mutex<Registry>,
    attempts: Family<ResultLabel, Counter>,
    durations: Durations,
}

fn histogram() -> Histogram {
    // 0.1 ms … ~1.6 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let attempts = Family::<ResultLabel, Counter>::default();
    let durations: Durations = Family::new_with_constructor(histogram);
    registry.register(
        "scheduler_schedule_attempts",
        "Scheduling attempts by result",
        attempts.clone(),
    );
    registry.register(
        "scheduler_scheduling_attempt_duration_seconds",
        "One pod's scheduling attempt: filters, scores and assume (binding is asynchronous)",
        durations.clone(),
    );
    Metrics {
        registry: Mutex::new(registry),
        attempts,
        durations,
    }
});

/// Records one attempt.
pub fn observe(scheduled: bool, took: Duration) {
    let label = ResultLabel {
        result: if scheduled {
            "scheduled"
        } else {
            "unschedulable"
        },
    };
    METRICS.attempts.get_or_create(&label).inc();
    METRICS
        .durations
        .get_or_create(&label)
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
