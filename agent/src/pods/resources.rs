//! Requests and limits → cgroup settings, the QoS class, and oom_score_adj, as the
//! kubelet computes them.

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use berth_runtime::pod::Resources;

/// A quantity in milli-units (`100m` → 100, `2` → 2000, `1Ki` → 1 024 000), or `None`
/// when it does not parse.
pub fn milli(q: &Quantity) -> Option<i128> {
    let s = q.0.trim();
    let (num, suffix) = match s.find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E') {
        Some(i) => s.split_at(i),
        None => {
            // `1e3` style exponents.
            if let Some((m, e)) = s.split_once(['e', 'E']) {
                let m: f64 = m.parse().ok()?;
                let e: i32 = e.parse().ok()?;
                return Some((m * 10f64.powi(e) * 1000.0).round() as i128);
            }
            (s, "")
        }
    };
    let value: f64 = num.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some((value * factor * 1000.0).round() as i128)
}

/// A whole-unit value (bytes for memory), rounded up.
pub fn units(q: &Quantity) -> Option<i64> {
    milli(q).map(|m| ((m + 999) / 1000) as i64)
}

fn get<'a>(
    map: Option<&'a std::collections::BTreeMap<String, Quantity>>,
    key: &str,
) -> Option<&'a Quantity> {
    map.and_then(|m| m.get(key))
}

/// The cgroup settings of a container: cpu.shares from the CPU request (minimum 2, as
/// the kubelet), a CFS quota over a 100 ms period from the CPU limit, the memory limit.
pub fn container_resources(c: &Container) -> Resources {
    let r = c.resources.as_ref();
    let requests = r.and_then(|r| r.requests.as_ref());
    let limits = r.and_then(|r| r.limits.as_ref());
    // A limit without a request means request = limit (API defaulting does this too).
    let cpu_req = get(requests, "cpu").or(get(limits, "cpu")).and_then(milli);
    let cpu_lim = get(limits, "cpu").and_then(milli);
    let mem_lim = get(limits, "memory").and_then(units);
    Resources {
        cpu_shares: Some(cpu_req.map_or(2, |m| ((m * 1024) / 1000).max(2) as u64)),
        cpu_quota: cpu_lim.map(|m| ((m * 100_000) / 1000).max(1000) as i64),
        cpu_period: cpu_lim.map(|_| 100_000),
        memory_limit: mem_lim,
        pids_limit: None,
    }
}

/// Guaranteed, Burstable or BestEffort (v1.PodQOSClass).
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.as_ref();
        let requests = r.and_then(|r| r.requests.as_ref());
        let limits = r.and_then(|r| r.limits.as_ref());
        for key in ["cpu", "memory"] {
            let req = get(requests, key).and_then(milli);
            let lim = get(limits, key).and_then(milli);
            if req.is_some_and(|v| v > 0) || lim.is_some_and(|v| v > 0) {
                any = true;
            }
            match (req.or(lim), lim) {
                (Some(a), Some(b)) if a == b => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The kubelet's oom_score_adj: Guaranteed −997, BestEffort 1000, Burstable
/// 1000 − 1000 × request / capacity, kept within 2..=999.
pub fn oom_score_adj(qos: &str, c: &Container, memory_capacity: u64) -> i32 {
    match qos {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let req = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|m| m.get("memory"))
                .and_then(units)
                .unwrap_or(0)
                .max(0) as u64;
            if memory_capacity == 0 {
                return 999;
            }
            let adj = 1000 - (1000 * req / memory_capacity) as i64;
            adj.clamp(2, 999) as i32
        }
    }
}

/// The pod's cgroup below the node's root, as the kubelet lays them out:
/// `<root>/pod<uid>` for Guaranteed, `<root>/<qos>/pod<uid>` otherwise.
pub fn pod_cgroup(root: &str, qos: &str, uid: &str) -> String {
    let root = root.trim_end_matches('/');
    match qos {
        "Guaranteed" => format!("{root}/pod{uid}"),
        "BestEffort" => format!("{root}/besteffort/pod{uid}"),
        _ => format!("{root}/burstable/pod{uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        let q = |s: &str| milli(&Quantity(s.into()));
        assert_eq!(q("100m"), Some(100));
        assert_eq!(q("2"), Some(2000));
        assert_eq!(q("0.5"), Some(500));
        assert_eq!(q("64Mi"), Some(64 * 1024 * 1024 * 1000));
        assert_eq!(q("1G"), Some(1_000_000_000_000));
        assert_eq!(q("1e3"), Some(1_000_000));
        assert_eq!(q("12Q"), None);
        assert_eq!(units(&Quantity("1500m".into())), Some(2));
    }

    #[test]
    fn qos() {
        let pod = |res: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c", "image": "i", "resources": res}]}
            }))
            .expect("pod")
        };
        assert_eq!(qos_class(&pod(serde_json::json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&pod(
                serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}})
            )),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(serde_json::json!({"requests": {"cpu": "100m"}}))),
            "Burstable"
        );
        assert_eq!(
            pod_cgroup("kubepods", "Burstable", "u"),
            "kubepods/burstable/podu"
        );
    }
}
