//! What the scheduler knows about a node: its allocatable resources, the pods bound to
//! it and what they request (as the kubelet computes a pod's request: the larger of the
//! containers' sum and the largest init container, plus sidecars and overhead), the
//! host ports in use, and the images it holds.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity::{cpu_millis, units};

/// The request a container without one counts as when scoring (kube-scheduler's
/// `DefaultMilliCPURequest` and `DefaultMemoryRequest`).
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// Amounts of resources: CPU in millicores, the rest in units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources (`example.com/gpu`, `hugepages-2Mi`…).
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    pub fn from_map(map: Option<&BTreeMap<String, Quantity>>) -> Self {
        let mut r = Resources::default();
        for (name, q) in map.into_iter().flatten() {
            match name.as_str() {
                "cpu" => r.milli_cpu = cpu_millis(&q.0).unwrap_or(0),
                "memory" => r.memory = units(&q.0).unwrap_or(0),
                "ephemeral-storage" => r.ephemeral_storage = units(&q.0).unwrap_or(0),
                "pods" => r.pods = units(&q.0).unwrap_or(0),
                other => {
                    r.scalar.insert(other.to_string(), units(&q.0).unwrap_or(0));
                }
            }
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Each amount the larger of the two.
    fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

fn container_requests(c: &Container) -> Resources {
    Resources::from_map(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// A pod's effective request, as the kubelet and kube-scheduler compute it.
/// A value computed for one version of a pod: (uid, resourceVersion, value).
type Memo<T> = (String, String, T);

pub fn pod_requests(pod: &Pod) -> Resources {
    // One pod is filtered and scored against hundreds of nodes in a row: its requests
    // are parsed once (per thread) for each version of it.
    thread_local! {
        static LAST: std::cell::RefCell<Option<Memo<Resources>>> =
            const { std::cell::RefCell::new(None) };
    }
    let (Some(uid), Some(rv)) = (&pod.metadata.uid, &pod.metadata.resource_version) else {
        return compute_pod_requests(pod);
    };
    if let Some(hit) = LAST.with_borrow(|last| {
        last.as_ref()
            .filter(|(u, r, _)| u == uid && r == rv)
            .map(|(_, _, res)| res.clone())
    }) {
        return hit;
    }
    let res = compute_pod_requests(pod);
    LAST.set(Some((uid.clone(), rv.clone(), res.clone())));
    res
}

fn compute_pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c));
    }
    // Init containers run one at a time, sidecars stay: the peak is the largest of
    // (sidecars started so far + that init container), and of everything at steady state.
    let mut sidecars = Resources::default();
    let mut peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let req = container_requests(c);
        if is_sidecar(c) {
            sidecars.add(&req);
            peak.max_with(&sidecars);
        } else {
            let mut at = sidecars.clone();
            at.add(&req);
            peak.max_with(&at);
        }
    }
    sum.add(&sidecars);
    sum.max_with(&peak);
    if let Some(overhead) = spec.overhead.as_ref() {
        sum.add(&Resources::from_map(Some(overhead)));
    }
    sum.pods = 1;
    sum
}

/// CPU and memory requests with the scoring defaults for containers that ask for none.
pub fn nonzero_requests(pod: &Pod) -> (i64, i64) {
    thread_local! {
        static LAST: std::cell::RefCell<Option<Memo<(i64, i64)>>> =
            const { std::cell::RefCell::new(None) };
    }
    let (Some(uid), Some(rv)) = (&pod.metadata.uid, &pod.metadata.resource_version) else {
        return compute_nonzero_requests(pod);
    };
    if let Some(hit) = LAST.with_borrow(|last| {
        last.as_ref()
            .filter(|(u, r, _)| u == uid && r == rv)
            .map(|(_, _, res)| *res)
    }) {
        return hit;
    }
    let res = compute_nonzero_requests(pod);
    LAST.set(Some((uid.clone(), rv.clone(), res)));
    res
}

fn compute_nonzero_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0, 0);
    };
    let mut cpu = 0;
    let mut mem = 0;
    for c in &spec.containers {
        let r = container_requests(c);
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let has = |k: &str| requests.map(|m| m.contains_key(k)).unwrap_or(false);
        cpu += if has("cpu") {
            r.milli_cpu
        } else {
            DEFAULT_MILLI_CPU
        };
        mem += if has("memory") {
            r.memory
        } else {
            DEFAULT_MEMORY
        };
    }
    (cpu, mem)
}

/// A host port a pod asks for: protocol, host IP (0.0.0.0 when unset), port.
pub type HostPort = (String, String, i32);

pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for p in c.ports.iter().flatten() {
            if let Some(hp) = p.host_port
                && hp > 0
            {
                out.push((
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    p.host_ip
                        .clone()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "0.0.0.0".into()),
                    hp,
                ));
            }
        }
    }
    out
}

/// One node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Node,
    pub name: String,
    pub allocatable: Resources,
    pub requested: Resources,
    /// Requested CPU and memory with scoring defaults.
    pub nonzero_requested: (i64, i64),
    pub pods: Vec<Pod>,
    pub used_ports: HashSet<HostPort>,
    /// Image name → size in bytes, from `status.images`.
    pub images: HashMap<String, i64>,
    /// Pods here with any pod (anti-)affinity term, and with a required anti-affinity
    /// term: what lets inter-pod affinity skip nodes (kube-scheduler keeps the same
    /// lists: PodsWithAffinity, PodsWithRequiredAntiAffinity).
    pub pods_with_affinity: usize,
    pub pods_with_required_anti_affinity: usize,
}

/// (any pod affinity or anti-affinity, a required anti-affinity term)
fn affinity_flags(pod: &Pod) -> (bool, bool) {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let any = a.is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some());
    let required_anti = a
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|x| {
            x.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|t| !t.is_empty());
    (any, required_anti)
}

impl NodeInfo {
    pub fn new(node: Node) -> Self {
        let status = node.status.as_ref();
        let allocatable = Resources::from_map(
            status
                .and_then(|s| s.allocatable.as_ref())
                .or(status.and_then(|s| s.capacity.as_ref())),
        );
        let mut images = HashMap::new();
        for img in status.and_then(|s| s.images.as_ref()).into_iter().flatten() {
            for name in img.names.iter().flatten() {
                images.insert(name.clone(), img.size_bytes.unwrap_or(0));
            }
        }
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            node,
            allocatable,
            requested: Resources::default(),
            nonzero_requested: (0, 0),
            pods: Vec::new(),
            used_ports: HashSet::new(),
            images,
            pods_with_affinity: 0,
            pods_with_required_anti_affinity: 0,
        }
    }

    pub fn add_pod(&mut self, pod: Pod) {
        self.requested.add(&pod_requests(&pod));
        let (c, m) = nonzero_requests(&pod);
        self.nonzero_requested.0 += c;
        self.nonzero_requested.1 += m;
        self.used_ports.extend(host_ports(&pod));
        let (any, anti) = affinity_flags(&pod);
        self.pods_with_affinity += usize::from(any);
        self.pods_with_required_anti_affinity += usize::from(anti);
        self.pods.push(pod);
    }

    /// A new version of the node object; its pods stay.
    pub fn set_node(&mut self, node: Node) {
        let pods = std::mem::take(&mut self.pods);
        *self = NodeInfo::new(node);
        for p in pods {
            self.add_pod(p);
        }
    }

    pub fn remove_pod(&mut self, uid: &str) {
        if let Some(i) = self
            .pods
            .iter()
            .position(|p| p.metadata.uid.as_deref() == Some(uid))
        {
            let pod = self.pods.remove(i);
            let (any, anti) = affinity_flags(&pod);
            self.pods_with_affinity -= usize::from(any);
            self.pods_with_required_anti_affinity -= usize::from(anti);
            self.requested.sub(&pod_requests(&pod));
            let (c, m) = nonzero_requests(&pod);
            self.nonzero_requested.0 -= c;
            self.nonzero_requested.1 -= m;
            let ports: HashSet<HostPort> = self.pods.iter().flat_map(host_ports).collect();
            self.used_ports = ports;
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod json")
    }

    #[test]
    fn requests_take_the_larger_of_containers_and_init_containers() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [
                    {"name": "i1", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}},
                    {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}}
                ],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "250m", "example.com/gpu": "1"}}}
                ],
                "overhead": {"cpu": "10m"}
            }
        }));
        let r = pod_requests(&p);
        // max(2000 init, 750 + 100 sidecar) + 10 overhead.
        assert_eq!(r.milli_cpu, 2010);
        assert_eq!(r.memory, 1 << 30);
        assert_eq!(r.scalar["example.com/gpu"], 1);
        assert_eq!(nonzero_requests(&p), (750, (256 << 20) + DEFAULT_MEMORY));
    }
}
