//! The kubelet's pod start metrics, under its names, served by the agent's `/metrics`:
//! how long the steps of starting a pod take on this node — the sandbox (the pause
//! container), the CNI ADD, creating and starting each container — and the whole start,
//! from the pod worker first seeing the pod to all its containers running. The
//! `pod-startup` bench reads them for its per-phase breakdown.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation_type: &'static str,
}

/// Buckets from 1 ms to ≈ 18 s, 25 % apart: fine enough to read percentiles from.
fn buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 1.25, 45))
}

/// The pod start histograms.
#[derive(Debug)]
pub struct PodStartMetrics {
    registry: Registry,
    pod_start: Histogram,
    sandbox: Histogram,
    network: Family<Operation, Histogram>,
    runtime: Family<Operation, Histogram>,
}

impl Default for PodStartMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PodStartMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let pod_start = buckets();
        let sandbox = buckets();
        let network = Family::<Operation, Histogram>::new_with_constructor(buckets as fn() -> _);
        let runtime = Family::<Operation, Histogram>::new_with_constructor(buckets as fn() -> _);
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from the pod worker first seeing a pod to all its containers running",
            pod_start.clone(),
        );
        registry.register(
            "kubelet_run_podsandbox_duration_seconds",
            "Duration in seconds of creating and starting a pod sandbox (its pause container)",
            sandbox.clone(),
        );
        registry.register(
            "kubelet_network_plugin_operations_duration_seconds",
            "Duration in seconds of CNI operations, by operation",
            network.clone(),
        );
        registry.register(
            "kubelet_runtime_operations_duration_seconds",
            "Duration in seconds of runtime operations, by operation",
            runtime.clone(),
        );
        Self {
            registry,
            pod_start,
            sandbox,
            network,
            runtime,
        }
    }

    pub fn pod_started(&self, d: Duration) {
        self.pod_start.observe(d.as_secs_f64());
    }

    pub fn sandbox_ran(&self, d: Duration) {
        self.sandbox.observe(d.as_secs_f64());
    }

    /// `operation`: the kubelet's names, `set_up_pod` or `tear_down_pod`.
    pub fn network_op(&self, operation: &'static str, d: Duration) {
        self.network
            .get_or_create(&Operation {
                operation_type: operation,
            })
            .observe(d.as_secs_f64());
    }

    /// `operation`: the CRI call's name, `create_container` or `start_container`.
    pub fn runtime_op(&self, operation: &'static str, d: Duration) {
        self.runtime
            .get_or_create(&Operation {
                operation_type: operation,
            })
            .observe(d.as_secs_f64());
    }

    /// The OpenMetrics text of the histograms.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_show_up_under_the_kubelets_names() {
        let m = PodStartMetrics::new();
        m.pod_started(Duration::from_millis(300));
        m.sandbox_ran(Duration::from_millis(40));
        m.network_op("set_up_pod", Duration::from_millis(20));
        m.runtime_op("create_container", Duration::from_millis(30));
        let text = m.encode();
        for line in [
            "kubelet_pod_start_duration_seconds_count 1",
            "kubelet_run_podsandbox_duration_seconds_count 1",
            "kubelet_network_plugin_operations_duration_seconds_count{operation_type=\"set_up_pod\"} 1",
            "kubelet_runtime_operations_duration_seconds_count{operation_type=\"create_container\"} 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert!(
            text.contains("kubelet_pod_start_duration_seconds_sum 0.3"),
            "{text}"
        );
    }
}
