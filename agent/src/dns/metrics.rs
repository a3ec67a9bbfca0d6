//! Prometheus metrics of the node's DNS server, served by the agent's `/metrics`
//! under `berth_dns_*`: requests by transport and query type, responses by rcode,
//! cache hits and misses, upstream latency and failures, and the zone's size.

use std::{
    sync::atomic::{AtomicI64, AtomicU64},
    time::Duration,
};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    proto: &'static str,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RcodeLabel {
    rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug)]
pub struct DnsMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    responses: Family<RcodeLabel, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    upstream_seconds: Histogram,
    upstream_results: Family<ResultLabel, Counter>,
    services: Gauge<i64, AtomicI64>,
    ptr_addresses: Gauge<i64, AtomicI64>,
    config_errors: Counter<u64, AtomicU64>,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DnsMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_dns");
        let requests = Family::<RequestLabels, Counter>::default();
        let responses = Family::<RcodeLabel, Counter>::default();
        let cache_hits = Counter::default();
        let cache_misses = Counter::default();
        let upstream_seconds = Histogram::new(exponential_buckets(0.000_1, 4.0, 10));
        let upstream_results = Family::<ResultLabel, Counter>::default();
        let services = Gauge::<i64, AtomicI64>::default();
        let ptr_addresses = Gauge::<i64, AtomicI64>::default();
        let config_errors = Counter::default();
        registry.register(
            "requests",
            "DNS requests by transport and query type",
            requests.clone(),
        );
        registry.register(
            "responses",
            "DNS responses by response code",
            responses.clone(),
        );
        registry.register(
            "cache_hits",
            "Forwarded questions answered from the cache",
            cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Forwarded questions that went upstream",
            cache_misses.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time an upstream server took to answer (or fail)",
            upstream_seconds.clone(),
        );
        registry.register(
            "upstream_requests",
            "Upstream exchanges by result",
            upstream_results.clone(),
        );
        registry.register(
            "zone_services",
            "Services with records in the cluster zone",
            services.clone(),
        );
        registry.register(
            "zone_ptr_addresses",
            "Addresses with PTR records in the cluster zone",
            ptr_addresses.clone(),
        );
        registry.register(
            "config_errors",
            "berth-dns ConfigMaps refused",
            config_errors.clone(),
        );
        Self {
            registry,
            requests,
            responses,
            cache_hits,
            cache_misses,
            upstream_seconds,
            upstream_results,
            services,
            ptr_addresses,
            config_errors,
        }
    }

    pub fn request(&self, proto: &'static str, qtype: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                proto,
                r#type: qtype,
            })
            .inc();
    }

    pub fn response(&self, rcode: &str) {
        self.responses
            .get_or_create(&RcodeLabel {
                rcode: rcode.to_owned(),
            })
            .inc();
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn upstream(&self, took: Duration, ok: bool) {
        self.upstream_seconds.observe(took.as_secs_f64());
        self.upstream_results
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    pub fn zone(&self, services: usize, ptr_addresses: usize) {
        self.services
            .set(i64::try_from(services).unwrap_or(i64::MAX));
        self.ptr_addresses
            .set(i64::try_from(ptr_addresses).unwrap_or(i64::MAX));
    }

    pub fn config_error(&self) {
        self.config_errors.inc();
    }

    /// The text exposition.
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
    fn exposition_has_every_family() {
        let m = DnsMetrics::new();
        m.request("udp", "A");
        m.request("udp", "A");
        m.response("NXDOMAIN");
        m.cache_hit();
        m.upstream(Duration::from_millis(3), true);
        m.zone(2, 9);
        let text = m.encode();
        for line in [
            "berth_dns_requests_total{proto=\"udp\",type=\"A\"} 2",
            "berth_dns_responses_total{rcode=\"NXDOMAIN\"} 1",
            "berth_dns_cache_hits_total 1",
            "berth_dns_cache_misses_total 0",
            "berth_dns_upstream_requests_total{result=\"success\"} 1",
            "berth_dns_upstream_duration_seconds_count 1",
            "berth_dns_zone_services 2",
            "berth_dns_zone_ptr_addresses 9",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
