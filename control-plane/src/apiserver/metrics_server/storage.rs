//! The last two points of every node and container, and the usage they give: CPU as
//! the rate of the cumulative counter between the two (nano-cores), memory as the
//! newest working set, `timestamp` the newest point's time and `window` the time
//! between the two — metrics-server's `storage` (`resourceUsage`). Nothing is
//! reported before a second point exists, nor across a counter reset.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

/// One reading of a cumulative CPU counter and a working set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Point {
    pub cpu_ns: u64,
    pub memory: u64,
    pub timestamp_ms: i64,
}

/// A pod's containers in one scrape.
#[derive(Debug, Clone, Default)]
pub struct PodBatch {
    pub containers: BTreeMap<String, Point>,
}

/// One node's scrape.
#[derive(Debug, Clone, Default)]
pub struct NodeBatch {
    pub node: Option<Point>,
    /// (namespace, pod) → containers.
    pub pods: BTreeMap<(String, String), PodBatch>,
}

/// One scrape of every node.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub nodes: BTreeMap<String, NodeBatch>,
}

/// Usage over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub nano_cores: u64,
    pub memory: u64,
    pub timestamp_ms: i64,
    pub window_ms: i64,
}

/// `resourceUsage`: the rate between `prev` and `last`, or `None` if the counter went
/// backwards or no time passed.
fn usage(last: Point, prev: Point) -> Option<Usage> {
    let window_ms = last.timestamp_ms - prev.timestamp_ms;
    if last.cpu_ns < prev.cpu_ns || window_ms <= 0 {
        return None;
    }
    let rate = (last.cpu_ns - prev.cpu_ns) as f64 / (window_ms as f64 / 1000.0);
    Some(Usage {
        nano_cores: rate as u64,
        memory: last.memory,
        timestamp_ms: last.timestamp_ms,
        window_ms,
    })
}

/// The newest point and the one before it.
#[derive(Debug, Clone, Copy)]
struct Pair {
    last: Point,
    prev: Option<Point>,
}

impl Pair {
    /// The pair after `point` arrives: a newer point pushes the last one back; the same
    /// timestamp again changes nothing.
    fn advance(old: Option<Pair>, point: Point) -> Pair {
        match old {
            Some(p) if point.timestamp_ms > p.last.timestamp_ms => Pair {
                last: point,
                prev: Some(p.last),
            },
            Some(p) if point.timestamp_ms == p.last.timestamp_ms => p,
            _ => Pair {
                last: point,
                prev: None,
            },
        }
    }

    fn usage(&self) -> Option<Usage> {
        usage(self.last, self.prev?)
    }
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<String, Pair>,
    /// (namespace, pod) → container → points.
    pods: HashMap<(String, String), BTreeMap<String, Pair>>,
}

/// Every node's and pod's recent points.
#[derive(Debug, Default)]
pub struct Storage {
    state: RwLock<State>,
}

impl Storage {
    /// Takes a scrape: what it has advances, what it lacks is forgotten.
    pub fn store(&self, batch: Batch) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut nodes = HashMap::new();
        let mut pods = HashMap::new();
        for (name, node) in batch.nodes {
            if let Some(point) = node.node {
                nodes.insert(
                    name.clone(),
                    Pair::advance(state.nodes.get(&name).copied(), point),
                );
            }
            for (key, pod) in node.pods {
                let old = state.pods.get(&key);
                let containers: BTreeMap<String, Pair> = pod
                    .containers
                    .into_iter()
                    .map(|(c, point)| {
                        let before = old.and_then(|o| o.get(&c)).copied();
                        (c, Pair::advance(before, point))
                    })
                    .collect();
                pods.insert(key, containers);
            }
        }
        *state = State { nodes, pods };
    }

    /// A node's usage, once two points of it exist.
    pub fn node(&self, name: &str) -> Option<Usage> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.nodes.get(name)?.usage()
    }

    /// A pod's containers' usage, once every container has two points (as
    /// metrics-server leaves out a pod with a container it cannot report).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Vec<(String, Usage)>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let containers = state.pods.get(&(namespace.to_owned(), name.to_owned()))?;
        if containers.is_empty() {
            return None;
        }
        containers
            .iter()
            .map(|(c, pair)| Some((c.clone(), pair.usage()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(cpu_ns: u64, memory: u64, at: i64) -> Batch {
        let mut pods = BTreeMap::new();
        let mut containers = BTreeMap::new();
        containers.insert(
            "c".to_owned(),
            Point {
                cpu_ns: cpu_ns / 2,
                memory,
                timestamp_ms: at,
            },
        );
        pods.insert(("ns".to_owned(), "p".to_owned()), PodBatch { containers });
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "n".to_owned(),
            NodeBatch {
                node: Some(Point {
                    cpu_ns,
                    memory,
                    timestamp_ms: at,
                }),
                pods,
            },
        );
        Batch { nodes }
    }

    #[test]
    fn usage_is_the_rate_between_two_scrapes() {
        let s = Storage::default();
        s.store(batch(1_000_000_000, 100, 10_000));
        assert_eq!(s.node("n"), None, "one point is not a rate");
        assert_eq!(s.pod("ns", "p"), None);
        // 1.5 CPU-seconds more in 15 s: 0.1 cores.
        s.store(batch(2_500_000_000, 200, 25_000));
        let u = s.node("n").expect("node usage");
        assert_eq!(u.nano_cores, 100_000_000);
        assert_eq!(u.memory, 200);
        assert_eq!(u.window_ms, 15_000);
        assert_eq!(u.timestamp_ms, 25_000);
        let pod = s.pod("ns", "p").expect("pod usage");
        assert_eq!(pod[0].0, "c");
        assert_eq!(pod[0].1.nano_cores, 50_000_000);
    }

    #[test]
    fn a_counter_reset_or_a_missing_scrape_reports_nothing() {
        let s = Storage::default();
        s.store(batch(5_000_000_000, 1, 10_000));
        s.store(batch(1_000_000_000, 1, 25_000));
        assert_eq!(s.node("n"), None, "a restarted counter is no rate");
        s.store(Batch::default());
        s.store(batch(2_000_000_000, 1, 40_000));
        assert_eq!(
            s.node("n"),
            None,
            "a node missing from a scrape starts over"
        );
    }
}
