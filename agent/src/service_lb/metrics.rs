//! Prometheus metrics of the service load balancer: what is programmed (services,
//! frontends, backends, map fill), how syncs go (duration, errors, rejected
//! Services) and what the kernel programs did (translated, refused, reversed
//! connects, affinity hits, NodePort flows, packets forwarded by eBPF host routing).
//! Served by the agent's `/metrics`.

use std::{
    sync::atomic::{AtomicI64, AtomicU64},
    time::Duration,
};

use berth_ebpf::Stats;
use berth_ebpf_common::{MAX_BACKENDS, MAX_SERVICES};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::sync::SyncStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

/// The metrics, registered under `berth_lb_*`.
#[derive(Debug)]
pub struct LbMetrics {
    registry: Registry,
    services: Gauge,
    frontends: Gauge,
    backends: Gauge,
    map_fill: Family<MapLabel, Gauge<f64, AtomicU64>>,
    sync_seconds: Histogram,
    sync_errors: Counter,
    rejected: Counter,
    kernel: Family<EventLabel, Counter>,
    /// The last kernel counters seen, to turn totals into increments.
    last: Stats,
    last_rejected: u64,
    last_errors: u64,
}

impl Default for LbMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl LbMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_lb");
        let services = Gauge::<i64, AtomicI64>::default();
        let frontends = Gauge::<i64, AtomicI64>::default();
        let backends = Gauge::<i64, AtomicI64>::default();
        let map_fill = Family::<MapLabel, Gauge<f64, AtomicU64>>::default();
        let sync_seconds = Histogram::new(exponential_buckets(0.000_01, 4.0, 12));
        let sync_errors = Counter::default();
        let rejected = Counter::default();
        let kernel = Family::<EventLabel, Counter>::default();
        registry.register(
            "services",
            "Services programmed into the socket LB",
            services.clone(),
        );
        registry.register(
            "frontends",
            "Frontends (cluster IP, port, protocol) programmed",
            frontends.clone(),
        );
        registry.register(
            "backends",
            "Backend slots of the programmed frontends",
            backends.clone(),
        );
        registry.register(
            "map_fill_ratio",
            "Used fraction of each eBPF map's capacity",
            map_fill.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Time to apply one Service change to the maps",
            sync_seconds.clone(),
        );
        registry.register(
            "sync_errors",
            "Map updates that failed",
            sync_errors.clone(),
        );
        registry.register(
            "rejected_services",
            "Service changes rejected as invalid",
            rejected.clone(),
        );
        registry.register(
            "kernel_events",
            "Events counted by the socket-LB, NodePort and host-routing programs",
            kernel.clone(),
        );
        Self {
            registry,
            services,
            frontends,
            backends,
            map_fill,
            sync_seconds,
            sync_errors,
            rejected,
            kernel,
            last: Stats::default(),
            last_rejected: 0,
            last_errors: 0,
        }
    }

    /// Records one sync step that took `took`, and the state after it. `slots` is
    /// the number of backend slots in the map (retired groups included).
    pub fn observe_sync(&mut self, took: Duration, stats: &SyncStats, slots: u32) {
        self.sync_seconds.observe(took.as_secs_f64());
        self.services
            .set(i64::try_from(stats.services).unwrap_or(i64::MAX));
        self.frontends
            .set(i64::try_from(stats.frontends).unwrap_or(i64::MAX));
        self.backends
            .set(i64::try_from(stats.backends).unwrap_or(i64::MAX));
        self.map_fill
            .get_or_create(&MapLabel { map: "services" })
            .set(stats.frontends as f64 / f64::from(MAX_SERVICES));
        self.map_fill
            .get_or_create(&MapLabel { map: "backends" })
            .set(f64::from(slots) / f64::from(MAX_BACKENDS));
        self.rejected
            .inc_by(stats.rejected.saturating_sub(self.last_rejected));
        self.sync_errors
            .inc_by(stats.errors.saturating_sub(self.last_errors));
        self.last_rejected = stats.rejected;
        self.last_errors = stats.errors;
    }

    /// Records the kernel programs' counters (totals since load).
    pub fn observe_kernel(&mut self, now: &Stats) {
        let events = [
            ("translated", now.translated, self.last.translated),
            ("no_backends", now.no_backends, self.last.no_backends),
            (
                "missing_backend",
                now.missing_backend,
                self.last.missing_backend,
            ),
            ("reversed", now.reversed, self.last.reversed),
            ("affinity_hit", now.affinity_hit, self.last.affinity_hit),
            (
                "affinity_expired",
                now.affinity_expired,
                self.last.affinity_expired,
            ),
            ("nodeport_new", now.nodeport_new, self.last.nodeport_new),
            (
                "nodeport_tracked",
                now.nodeport_tracked,
                self.last.nodeport_tracked,
            ),
            (
                "nodeport_no_backends",
                now.nodeport_no_backends,
                self.last.nodeport_no_backends,
            ),
            ("host_routed", now.host_routed, self.last.host_routed),
        ];
        for (event, total, before) in events {
            self.kernel
                .get_or_create(&EventLabel { event })
                .inc_by(total.saturating_sub(before));
        }
        self.last = *now;
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_metric_with_values() {
        let mut m = LbMetrics::new();
        let stats = SyncStats {
            services: 2,
            frontends: 3,
            backends: 7,
            rejected: 1,
            errors: 0,
        };
        m.observe_sync(Duration::from_micros(40), &stats, 9);
        m.observe_kernel(&Stats {
            translated: 10,
            no_backends: 2,
            ..Stats::default()
        });
        m.observe_kernel(&Stats {
            translated: 15,
            no_backends: 2,
            ..Stats::default()
        });
        let text = m.encode();
        for line in [
            "berth_lb_services 2",
            "berth_lb_frontends 3",
            "berth_lb_backends 7",
            "berth_lb_rejected_services_total 1",
            "berth_lb_sync_errors_total 0",
            "berth_lb_kernel_events_total{event=\"translated\"} 15",
            "berth_lb_kernel_events_total{event=\"no_backends\"} 2",
            "berth_lb_sync_duration_seconds_count 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(
            text.contains("berth_lb_map_fill_ratio{map=\"backends\"}"),
            "{text}"
        );
    }
}
