//! Scraping: every resolution period, each Ready node's kubelet `/metrics/resource`
//! (through the apiserver's kubelet client), parsed from the Prometheus text format
//! into cumulative CPU and working-set memory points — what metrics-server's
//! `scraper` and `decode.go` do. A scrape that fails keeps nothing of that node (as
//! metrics-server drops a node it could not scrape).
//!
//! Entry point: [`run`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::storage::{Batch, NodeBatch, PodBatch, Point};
use crate::apiserver::{Api, kubelet};

/// Whether a Node object's Ready condition is True.
fn ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// One sample of the text format: `name{a="b",…} value [timestamp_ms]`.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

/// Parses one sample line (`None` for comments, blank lines and lines that are not
/// samples).
pub fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        let mut key = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()? {
                            (_, '\\') => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            (_, '"') => break,
                            (_, c) => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
        rest = &body[end? + 1..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next()?.parse().ok()?;
    let timestamp_ms = fields.next().and_then(|t| t.parse().ok());
    Some(Sample {
        name,
        labels,
        value,
        timestamp_ms,
    })
}

/// The points of one node's `/metrics/resource` (`scraped_ms`: when the scrape
/// answered, for samples without a timestamp).
pub fn decode(text: &str, scraped_ms: i64) -> NodeBatch {
    let mut node = NodeBatch::default();
    let mut node_point = Point::default();
    let mut node_cpu = false;
    let mut node_memory = false;
    for s in text.lines().filter_map(parse_line) {
        let at = s.timestamp_ms.unwrap_or(scraped_ms);
        let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        match s.name.as_str() {
            "node_cpu_usage_seconds_total" => {
                node_point.cpu_ns = (s.value * 1e9) as u64;
                node_point.timestamp_ms = at;
                node_cpu = true;
            }
            "node_memory_working_set_bytes" => {
                node_point.memory = s.value as u64;
                node_memory = true;
            }
            "container_cpu_usage_seconds_total" | "container_memory_working_set_bytes" => {
                let pod = node
                    .pods
                    .entry((label("namespace"), label("pod")))
                    .or_insert_with(PodBatch::default);
                let point = pod.containers.entry(label("container")).or_default();
                if s.name == "container_cpu_usage_seconds_total" {
                    point.cpu_ns = (s.value * 1e9) as u64;
                    point.timestamp_ms = at;
                } else {
                    point.memory = s.value as u64;
                    if point.timestamp_ms == 0 {
                        point.timestamp_ms = at;
                    }
                }
            }
            _ => {}
        }
    }
    if node_cpu && node_memory {
        node.node = Some(node_point);
    }
    node
}

/// Scrapes every Ready node once.
pub async fn scrape_all(api: &Api, timeout: Duration) -> Batch {
    let (nodes, _) = api.cache.list("/registry/core/nodes/", |_| true);
    let targets: Vec<(String, String)> = nodes
        .iter()
        .map(|n| n.value())
        .filter(ready)
        .filter_map(|n| {
            let name = n.pointer("/metadata/name")?.as_str()?.to_owned();
            Some((name, kubelet::endpoint(&n)?))
        })
        .collect();
    let scrapes = targets.into_iter().map(|(name, base)| async move {
        let result = kubelet::get_text(&base, "/metrics/resource", timeout).await;
        let at = jiff::Timestamp::now().as_millisecond();
        (name, result.map(|text| decode(&text, at)))
    });
    let mut batch = Batch::default();
    for (name, result) in futures_util::future::join_all(scrapes).await {
        match result {
            Ok(node) => {
                batch.nodes.insert(name, node);
            }
            Err(err) => tracing::debug!(node = %name, %err, "metrics scrape failed"),
        }
    }
    batch
}

/// Scrapes every `resolution` until the process ends, storing into `api`'s metrics
/// storage.
pub async fn run(api: Arc<Api>, resolution: Duration) {
    let mut ticker = tokio::time::interval(resolution);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // metrics-server gives a scrape 90 % of the period at most.
    let timeout = resolution.mul_f64(0.9).max(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let batch = scrape_all(&api, timeout).await;
        api.resource_metrics.store(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP node_cpu_usage_seconds_total Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 12.5 1700000000000
node_memory_working_set_bytes 1048576 1700000000000
pod_cpu_usage_seconds_total{namespace="default",pod="web"} 3 1700000000000
container_cpu_usage_seconds_total{container="c",namespace="default",pod="web"} 2.25 1700000000100
container_memory_working_set_bytes{container="c",namespace="default",pod="web"} 4096 1700000000100
container_memory_working_set_bytes{container="d",namespace="default",pod="web"} 8192
"#;

    #[test]
    fn samples_parse_with_labels_values_and_timestamps() {
        let s = parse_line(r#"x{a="1",b="q\"uote"} 2.5 17"#).expect("a sample");
        assert_eq!(s.name, "x");
        assert_eq!(s.labels["b"], "q\"uote");
        assert_eq!(s.value, 2.5);
        assert_eq!(s.timestamp_ms, Some(17));
        assert_eq!(parse_line("# HELP x"), None);
        assert_eq!(parse_line("y 3").map(|s| s.timestamp_ms), Some(None));
        assert_eq!(parse_line("broken{a=1} 2"), None);
    }

    #[test]
    fn a_scrape_decodes_into_node_and_container_points() {
        let batch = decode(TEXT, 1_700_000_000_500);
        let node = batch.node.expect("node point");
        assert_eq!(node.cpu_ns, 12_500_000_000);
        assert_eq!(node.memory, 1_048_576);
        let pod = &batch.pods[&("default".to_owned(), "web".to_owned())];
        assert_eq!(pod.containers["c"].cpu_ns, 2_250_000_000);
        assert_eq!(pod.containers["c"].timestamp_ms, 1_700_000_000_100);
        // A sample without a timestamp takes the scrape's time.
        assert_eq!(pod.containers["d"].timestamp_ms, 1_700_000_000_500);
    }
}
