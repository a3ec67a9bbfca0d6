//! Resource usage from the cgroups of the node's pods: `/stats/summary` (the kubelet's
//! Summary API, `stats.k8s.io/v1alpha1` shape: node and pods with CPU and memory) and
//! `/metrics/resource` (Prometheus: node, pod and container CPU seconds and working
//! set) — what metrics-server and `kubectl top`-style tools read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::pods::Ctx;

/// CPU seconds and working set of one cgroup.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_ns: u64,
    working_set: u64,
    usage: u64,
}

fn read_u64(path: PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(path: PathBuf, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Usage of cgroup `rel` (a path below each hierarchy's root), v1 or v2.
fn usage_of(rel: &str) -> Usage {
    let root = PathBuf::from("/sys/fs/cgroup");
    if berth_runtime::cgroups::is_v2() {
        let dir = root.join(rel);
        let usage = read_u64(dir.join("memory.current")).unwrap_or(0);
        let inactive = stat_field(dir.join("memory.stat"), "inactive_file").unwrap_or(0);
        Usage {
            cpu_ns: stat_field(dir.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000,
            working_set: usage.saturating_sub(inactive),
            usage,
        }
    } else {
        let usage =
            read_u64(root.join("memory").join(rel).join("memory.usage_in_bytes")).unwrap_or(0);
        let inactive = stat_field(
            root.join("memory").join(rel).join("memory.stat"),
            "total_inactive_file",
        )
        .unwrap_or(0);
        Usage {
            cpu_ns: read_u64(root.join("cpuacct").join(rel).join("cpuacct.usage")).unwrap_or(0),
            working_set: usage.saturating_sub(inactive),
            usage,
        }
    }
}

/// The node's CPU time from /proc/stat (all CPUs, user+nice+system+irq+softirq+steal).
fn node_cpu_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum();
    // USER_HZ is 100 on Linux.
    ticks * 10_000_000
}

/// One pod on the host: ns, name, uid, its cgroup and its containers' cgroups.
struct PodCgroups {
    ns: String,
    name: String,
    uid: String,
    cgroup: String,
    containers: Vec<(String, String)>,
}

fn pods(ctx: &Ctx) -> Vec<PodCgroups> {
    let mut names: HashMap<String, (String, String)> = HashMap::new();
    for e in std::fs::read_dir(&ctx.logs_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = e.file_name().to_string_lossy().into_owned();
        let mut parts = dir.rsplitn(2, '_');
        let (Some(uid), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Some((ns, name)) = rest.split_once('_') {
            names.insert(uid.to_owned(), (ns.to_owned(), name.to_owned()));
        }
    }
    let all = ctx.runtime.containers();
    let mut out = Vec::new();
    for uid in ctx.runtime.sandboxes() {
        let Ok(sb) = ctx.runtime.sandbox(&uid) else {
            continue;
        };
        let (ns, name) = names.get(&uid).cloned().unwrap_or_default();
        let mut latest: HashMap<String, (u32, String)> = HashMap::new();
        let prefix = format!("{uid}-");
        for id in all.iter().filter(|id| id.starts_with(&prefix)) {
            let Some((cname, n)) = id[prefix.len()..].rsplit_once('-') else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            if latest.get(cname).is_none_or(|(m, _)| n > *m) {
                latest.insert(cname.to_owned(), (n, id.clone()));
            }
        }
        let parent = sb.config.cgroup_parent.trim_end_matches('/').to_owned();
        out.push(PodCgroups {
            ns,
            name,
            uid,
            containers: latest
                .into_iter()
                .map(|(c, (_, id))| (c, format!("{parent}/{id}")))
                .collect(),
            cgroup: parent,
        });
    }
    out
}

/// The last CPU reading of each cgroup, for usageNanoCores.
#[derive(Debug, Default)]
pub struct Rates {
    last: HashMap<String, (Instant, u64)>,
}

impl Rates {
    fn nano_cores(&mut self, key: &str, cpu_ns: u64) -> u64 {
        let now = Instant::now();
        let rate = match self.last.get(key) {
            Some((t, prev)) if now > *t && cpu_ns >= *prev => {
                let secs = now.duration_since(*t).as_secs_f64();
                ((cpu_ns - prev) as f64 / secs) as u64
            }
            _ => 0,
        };
        self.last.insert(key.to_owned(), (now, cpu_ns));
        rate
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn summary(ctx: &Ctx, rates: &Mutex<Rates>) -> Value {
    let mut rates = rates
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = now();
    let node_cpu = node_cpu_ns();
    let total = crate::node::meminfo("MemTotal:").unwrap_or(0);
    let available = crate::node::meminfo("MemAvailable:").unwrap_or(0);
    let mut pods_json = Vec::new();
    for p in pods(ctx) {
        let u = usage_of(&p.cgroup);
        let containers: Vec<Value> = p
            .containers
            .iter()
            .map(|(name, cg)| {
                let cu = usage_of(cg);
                json!({
                    "name": name,
                    "cpu": {"time": t, "usageNanoCores": rates.nano_cores(cg, cu.cpu_ns), "usageCoreNanoSeconds": cu.cpu_ns},
                    "memory": {"time": t, "usageBytes": cu.usage, "workingSetBytes": cu.working_set},
                })
            })
            .collect();
        let mut pod = json!({
            "podRef": {"name": p.name, "namespace": p.ns, "uid": p.uid},
            "containers": containers,
            "cpu": {"time": t, "usageNanoCores": rates.nano_cores(&p.cgroup, u.cpu_ns), "usageCoreNanoSeconds": u.cpu_ns},
            "memory": {"time": t, "usageBytes": u.usage, "workingSetBytes": u.working_set},
        });
        let volumes = crate::csi::mounts::volume_stats(&ctx.csi, &ctx.pods_dir.join(&p.uid));
        if !volumes.is_empty() {
            pod["volume"] = Value::Array(volumes);
        }
        pods_json.push(pod);
    }
    json!({
        "node": {
            "nodeName": ctx.node.name,
            "cpu": {"time": t, "usageNanoCores": rates.nano_cores("/", node_cpu), "usageCoreNanoSeconds": node_cpu},
            "memory": {
                "time": t,
                "availableBytes": available,
                "usageBytes": total.saturating_sub(available),
                "workingSetBytes": total.saturating_sub(available),
            },
        },
        "pods": pods_json,
    })
}

pub async fn stats_summary(State(ctx): State<Arc<Ctx>>) -> Response {
    let rates = ctx.stats_rates.clone();
    let body = tokio::task::spawn_blocking(move || summary(&ctx, &rates))
        .await
        .unwrap_or(Value::Null);
    axum::Json(body).into_response()
}

pub async fn metrics_resource(State(ctx): State<Arc<Ctx>>) -> Response {
    let text = tokio::task::spawn_blocking(move || {
        let ms = jiff::Timestamp::now().as_millisecond();
        let total = crate::node::meminfo("MemTotal:").unwrap_or(0);
        let available = crate::node::meminfo("MemAvailable:").unwrap_or(0);
        let mut out = String::new();
        out.push_str("# HELP node_cpu_usage_seconds_total Cumulative cpu time consumed by the node in core-seconds\n# TYPE node_cpu_usage_seconds_total counter\n");
        out.push_str(&format!("node_cpu_usage_seconds_total {} {ms}\n", node_cpu_ns() as f64 / 1e9));
        out.push_str("# HELP node_memory_working_set_bytes Current working set of the node in bytes\n# TYPE node_memory_working_set_bytes gauge\n");
        out.push_str(&format!("node_memory_working_set_bytes {} {ms}\n", total.saturating_sub(available)));
        let pods = pods(&ctx);
        out.push_str("# HELP pod_cpu_usage_seconds_total Cumulative cpu time consumed by the pod in core-seconds\n# TYPE pod_cpu_usage_seconds_total counter\n");
        for p in &pods {
            let u = usage_of(&p.cgroup);
            out.push_str(&format!(
                "pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"{}\"}} {} {ms}\n",
                p.ns,
                p.name,
                u.cpu_ns as f64 / 1e9
            ));
        }
        out.push_str("# HELP pod_memory_working_set_bytes Current working set of the pod in bytes\n# TYPE pod_memory_working_set_bytes gauge\n");
        for p in &pods {
            let u = usage_of(&p.cgroup);
            out.push_str(&format!(
                "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}} {} {ms}\n",
                p.ns, p.name, u.working_set
            ));
        }
        out.push_str("# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed by the container in core-seconds\n# TYPE container_cpu_usage_seconds_total counter\n");
        for p in &pods {
            for (c, cg) in &p.containers {
                out.push_str(&format!(
                    "container_cpu_usage_seconds_total{{container=\"{c}\",namespace=\"{}\",pod=\"{}\"}} {} {ms}\n",
                    p.ns,
                    p.name,
                    usage_of(cg).cpu_ns as f64 / 1e9
                ));
            }
        }
        out.push_str("# HELP container_memory_working_set_bytes Current working set of the container in bytes\n# TYPE container_memory_working_set_bytes gauge\n");
        for p in &pods {
            for (c, cg) in &p.containers {
                out.push_str(&format!(
                    "container_memory_working_set_bytes{{container=\"{c}\",namespace=\"{}\",pod=\"{}\"}} {} {ms}\n",
                    p.ns,
                    p.name,
                    usage_of(cg).working_set
                ));
            }
        }
        out
    })
    .await
    .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}
