//! The quota evaluators (kube's `pkg/quota/v1/evaluator/core` and the generic object
//! count evaluator): for each resource, the quota names it is counted in, an
//! object's usage, its scopes, and what a pod must state when a quota limits its
//! CPU or memory.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde_json::Value;

use super::scopes::{self, Selector};
use super::{Amount, ResourceList, add, count_name, list_of, parse_count_name};

const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// The quota names a pod's compute usage goes by (`podResources`).
const POD_RESOURCES: &[&str] = &[
    "count/pods",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
];

/// What a pod must state per container when a quota limits it (`validationSet`:
/// "it was a mistake", upstream says, kept for compatibility).
const MUST_SPECIFY: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

const CLAIM_RESOURCES: &[&str] = &["persistentvolumeclaims", "requests.storage"];

const SERVICE_RESOURCES: &[&str] = &[
    "count/services",
    "services",
    "services.loadbalancers",
    "services.nodeports",
];

/// How one resource is measured for quota.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evaluator {
    Pods,
    Claims,
    Services,
    /// Any other resource: its object count, under `count/<resource>.<group>` and,
    /// for the four core kinds quota counted before `count/` existed, the old name too.
    Count {
        group: String,
        plural: String,
        legacy: Option<&'static str>,
    },
}

impl Evaluator {
    pub fn for_resource(group: &str, plural: &str) -> Self {
        match (group, plural) {
            ("", "pods") => Evaluator::Pods,
            ("", "persistentvolumeclaims") => Evaluator::Claims,
            ("", "services") => Evaluator::Services,
            _ => Evaluator::Count {
                group: group.to_owned(),
                plural: plural.to_owned(),
                legacy: match (group, plural) {
                    ("", "configmaps") => Some("configmaps"),
                    ("", "secrets") => Some("secrets"),
                    ("", "replicationcontrollers") => Some("replicationcontrollers"),
                    ("", "resourcequotas") => Some("resourcequotas"),
                    _ => None,
                },
            },
        }
    }

    /// `(group, plural)` of the resource measured.
    pub fn resource(&self) -> (&str, &str) {
        match self {
            Evaluator::Pods => ("", "pods"),
            Evaluator::Claims => ("", "persistentvolumeclaims"),
            Evaluator::Services => ("", "services"),
            Evaluator::Count { group, plural, .. } => (group, plural),
        }
    }

    /// The evaluators that count some of `names` (what a quota limiting them needs
    /// measured), each once.
    pub fn for_names<'a>(names: impl IntoIterator<Item = &'a String>) -> BTreeSet<Evaluator> {
        let mut out = BTreeSet::new();
        for name in names {
            let candidates = match parse_count_name(name) {
                Some((group, plural)) => vec![Evaluator::for_resource(group, plural)],
                None => vec![
                    Evaluator::Pods,
                    Evaluator::Claims,
                    Evaluator::Services,
                    Evaluator::for_resource("", name),
                ],
            };
            for e in candidates {
                if !e.matching_resources([name]).is_empty() {
                    out.insert(e);
                }
            }
        }
        out
    }

    /// `MatchingResources`: those of `names` this evaluator counts.
    pub fn matching_resources<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Vec<String> {
        names
            .into_iter()
            .filter(|n| self.counts(n))
            .cloned()
            .collect()
    }

    fn counts(&self, name: &str) -> bool {
        match self {
            Evaluator::Pods => {
                POD_RESOURCES.contains(&name)
                    || name.starts_with("hugepages-")
                    || name.starts_with("requests.hugepages-")
                    || name
                        .strip_prefix("requests.")
                        .is_some_and(is_extended_resource)
            }
            Evaluator::Claims => {
                name == "count/persistentvolumeclaims"
                    || CLAIM_RESOURCES.contains(&name)
                    || CLAIM_RESOURCES.iter().any(|r| {
                        name.strip_suffix(r)
                            .is_some_and(|p| p.ends_with(STORAGE_CLASS_SUFFIX))
                    })
            }
            Evaluator::Services => SERVICE_RESOURCES.contains(&name),
            Evaluator::Count {
                group,
                plural,
                legacy,
            } => Some(name) == *legacy || name == count_name(group, plural),
        }
    }

    /// Whether `obj` is in the scope `selector` names. Only pods have scopes; every
    /// other resource is in none (`MatchesNoScopeFunc`), so a scoped quota never
    /// counts it.
    pub fn matches_scope(&self, selector: &Selector, obj: &Value) -> bool {
        if *self != Evaluator::Pods {
            return false;
        }
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        match selector.scope.as_str() {
            scopes::TERMINATING => is_terminating(spec),
            scopes::NOT_TERMINATING => !is_terminating(spec),
            scopes::BEST_EFFORT => is_best_effort(obj),
            scopes::NOT_BEST_EFFORT => !is_best_effort(obj),
            scopes::PRIORITY_CLASS => {
                let class = spec
                    .get("priorityClassName")
                    .and_then(Value::as_str)
                    .filter(|c| !c.is_empty());
                selector.matches_value(class)
            }
            scopes::CROSS_NAMESPACE_POD_AFFINITY => cross_namespace_affinity(spec),
            _ => false,
        }
    }

    /// What the object uses, at `now` (a pod past its deletion grace uses nothing but
    /// its object count).
    pub fn usage(&self, obj: &Value, now: Timestamp) -> ResourceList {
        match self {
            Evaluator::Pods => pod_usage(obj, now),
            Evaluator::Claims => claim_usage(obj),
            Evaluator::Services => service_usage(obj),
            Evaluator::Count {
                group,
                plural,
                legacy,
            } => {
                let mut out = ResourceList::from([(count_name(group, plural), Amount::count(1))]);
                if let Some(l) = legacy {
                    out.insert((*l).to_owned(), Amount::count(1));
                }
                out
            }
        }
    }

    /// `Handles` for an update: whether a change of the object can change what it is
    /// charged (a pod only when it enters or leaves the Terminating scope).
    pub fn handles_update(&self, old: &Value, new: &Value) -> bool {
        match self {
            Evaluator::Pods => {
                let spec = |o: &Value| o.get("spec").cloned().unwrap_or(Value::Null);
                is_terminating(&spec(old)) != is_terminating(&spec(new))
            }
            Evaluator::Claims | Evaluator::Services => true,
            Evaluator::Count { .. } => false,
        }
    }

    /// `Constraints`: a pod's every container must state the CPU and memory requests
    /// or limits a quota limits; the error lists what each container left out.
    pub fn constraints(&self, required: &[String], obj: &Value) -> Result<(), String> {
        if *self != Evaluator::Pods {
            return Ok(());
        }
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        // With pod-level resources the containers need not state their own.
        if spec
            .get("resources")
            .and_then(Value::as_object)
            .is_some_and(|r| r.contains_key("requests") || r.contains_key("limits"))
        {
            return Ok(());
        }
        let required: BTreeSet<&str> = required
            .iter()
            .map(String::as_str)
            .filter(|r| MUST_SPECIFY.contains(r))
            .collect();
        let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for c in containers(spec, "containers").chain(containers(spec, "initContainers")) {
            let usage = compute_usage(&resources(c, "requests"), &resources(c, "limits"));
            for r in &required {
                if !usage.contains_key(*r) {
                    let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                    missing.entry(r).or_default().insert(name.to_owned());
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let parts: Vec<String> = missing
            .iter()
            .map(|(r, names)| {
                format!(
                    "{r} for: {}",
                    names.iter().cloned().collect::<Vec<_>>().join(",")
                )
            })
            .collect();
        Err(format!("must specify {}", parts.join("; ")))
    }
}

/// A resource name outside the `kubernetes.io` domain (`IsExtendedResourceName`).
fn is_extended_resource(name: &str) -> bool {
    name.contains('/') && !name.contains("kubernetes.io/") && !name.starts_with("requests.")
}

fn containers<'a>(spec: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    spec.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn resources(c: &Value, which: &str) -> ResourceList {
    list_of(c.pointer(&format!("/resources/{which}")))
}

fn max_into(into: &mut ResourceList, from: &ResourceList) {
    for (k, v) in from {
        let e = into.entry(k.clone()).or_insert(*v);
        if v.milli > e.milli {
            *e = *v;
        }
    }
}

/// The pod's `requests` or `limits` as kube's `resourcehelper.PodRequests` and
/// `PodLimits` total them: the containers and sidecars (init containers with
/// `restartPolicy: Always`) summed, raised to what any init container needs beside
/// the sidecars started before it; pod-level resources in their place; the overhead
/// added (to limits only where a limit is set).
fn pod_total(spec: &Value, which: &str) -> ResourceList {
    let mut total = ResourceList::new();
    for c in containers(spec, "containers") {
        total = add(&total, &resources(c, which));
    }
    let (mut sidecars, mut init_max) = (ResourceList::new(), ResourceList::new());
    for c in containers(spec, "initContainers") {
        let r = resources(c, which);
        let needs = if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            total = add(&total, &r);
            sidecars = add(&sidecars, &r);
            sidecars.clone()
        } else {
            add(&r, &sidecars)
        };
        max_into(&mut init_max, &needs);
    }
    max_into(&mut total, &init_max);
    for (k, v) in list_of(spec.pointer(&format!("/resources/{which}"))) {
        if matches!(k.as_str(), "cpu" | "memory") {
            total.insert(k, v);
        }
    }
    let overhead = list_of(spec.get("overhead"));
    if which == "requests" {
        total = add(&total, &overhead);
    } else {
        for (k, v) in overhead {
            if let Some(x) = total.get_mut(&k) {
                *x = *x + v;
            }
        }
    }
    total
}

/// `podComputeUsageHelper`: the quota names requests and limits are counted under.
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::from([("pods".to_owned(), Amount::count(1))]);
    for res in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(r) = requests.get(res) {
            out.insert(res.to_owned(), *r);
            out.insert(format!("requests.{res}"), *r);
        }
        if let Some(l) = limits.get(res) {
            out.insert(format!("limits.{res}"), *l);
        }
    }
    for (res, r) in requests {
        if res.starts_with("hugepages-") {
            out.insert(res.clone(), *r);
            out.insert(format!("requests.{res}"), *r);
        } else if is_extended_resource(res) {
            out.insert(format!("requests.{res}"), *r);
        }
    }
    out
}

/// `QuotaV1Pod`: a pod in a terminal phase, or deleted with its grace period over
/// (stuck terminating on a lost node), is charged nothing but its object count.
pub fn pod_counts(pod: &Value, now: Timestamp) -> bool {
    if matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    grace_ends(pod).is_none_or(|end| now <= end)
}

/// When a deleted pod's grace period ends.
pub fn grace_ends(pod: &Value) -> Option<Timestamp> {
    let deleted: Timestamp = pod
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)?
        .parse()
        .ok()?;
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)?;
    deleted
        .checked_add(jiff::SignedDuration::from_secs(grace))
        .ok()
}

fn pod_usage(pod: &Value, now: Timestamp) -> ResourceList {
    let mut out = ResourceList::from([("count/pods".to_owned(), Amount::count(1))]);
    if !pod_counts(pod, now) {
        return out;
    }
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let compute = compute_usage(&pod_total(spec, "requests"), &pod_total(spec, "limits"));
    out.extend(compute);
    out
}

/// `IsTerminating`: an active deadline bounds the pod's life.
fn is_terminating(spec: &Value) -> bool {
    spec.get("activeDeadlineSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|s| s >= 0)
}

/// The pod's QoS class as stored (`status.qosClass`), or computed from its spec.
fn is_best_effort(pod: &Value) -> bool {
    let qos = match pod.pointer("/status/qosClass").and_then(Value::as_str) {
        Some(q) if !q.is_empty() => q,
        _ => crate::apiserver::admission::defaults::qos_class(
            pod.get("spec").unwrap_or(&Value::Null),
        ),
    };
    qos == "BestEffort"
}

/// Whether a pod (anti-)affinity term looks outside the pod's namespace.
fn cross_namespace_affinity(spec: &Value) -> bool {
    let term = |t: &Value| {
        t.get("namespaces")
            .and_then(Value::as_array)
            .is_some_and(|n| !n.is_empty())
            || t.get("namespaceSelector").is_some_and(|s| !s.is_null())
    };
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let Some(a) = spec.pointer(&format!("/affinity/{kind}")) else {
            return false;
        };
        containers(a, "requiredDuringSchedulingIgnoredDuringExecution").any(term)
            || containers(a, "preferredDuringSchedulingIgnoredDuringExecution")
                .any(|w| w.get("podAffinityTerm").is_some_and(term))
    })
}

fn claim_usage(claim: &Value) -> ResourceList {
    let mut out = ResourceList::from([
        ("persistentvolumeclaims".to_owned(), Amount::count(1)),
        ("count/persistentvolumeclaims".to_owned(), Amount::count(1)),
    ]);
    let class =
        Some(crate::apiserver::admission::storage::claim_class(claim)).filter(|c| !c.is_empty());
    if let Some(c) = class {
        out.insert(
            format!("{c}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
            Amount::count(1),
        );
    }
    // The request in whole bytes, or what was allocated when a failed expansion left
    // more allocated than now requested.
    let requested = claim
        .pointer("/spec/resources/requests/storage")
        .and_then(Amount::from_value)
        .map(Amount::round_up);
    let allocated = claim
        .pointer("/status/allocatedResources/storage")
        .and_then(Amount::from_value)
        .map(Amount::round_up);
    let storage = match (requested, allocated) {
        (Some(r), Some(a)) if a.milli > r.milli => Some(a),
        (r, _) => r,
    };
    if let Some(s) = storage {
        out.insert("requests.storage".to_owned(), s);
        if let Some(c) = class {
            out.insert(format!("{c}{STORAGE_CLASS_SUFFIX}requests.storage"), s);
        }
    }
    out
}

fn service_usage(svc: &Value) -> ResourceList {
    let spec = svc.get("spec").unwrap_or(&Value::Null);
    let ports: Vec<&Value> = containers(spec, "ports").collect();
    let (node_ports, balancers) = match spec.get("type").and_then(Value::as_str) {
        Some("NodePort") => (ports.len(), 0),
        Some("LoadBalancer") => {
            // Without allocated node ports only those asked for explicitly count.
            let allocate = spec
                .get("allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let n = if allocate {
                ports.len()
            } else {
                ports
                    .iter()
                    .filter(|p| p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) > 0)
                    .count()
            };
            (n, 1)
        }
        _ => (0, 0),
    };
    let n = |v: usize| Amount::count(i64::try_from(v).unwrap_or(i64::MAX));
    ResourceList::from([
        ("count/services".to_owned(), Amount::count(1)),
        ("services".to_owned(), Amount::count(1)),
        ("services.loadbalancers".to_owned(), n(balancers)),
        ("services.nodeports".to_owned(), n(node_ports)),
    ])
}

#[cfg(test)]
mod tests {
    use super::super::pretty;
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2025-01-01T00:00:00Z"
            .parse()
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn a_pods_usage_counts_requests_limits_and_init_containers() {
        let p = json!({"spec": {
            "initContainers": [
                {"name": "sidecar", "restartPolicy": "Always",
                 "resources": {"requests": {"cpu": "100m"}}},
                {"name": "init", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}},
            ],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"},
                                             "limits": {"cpu": "1", "memory": "128Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m", "example.com/gpu": "1"}}},
            ],
        }});
        let u = Evaluator::Pods.usage(&p, now());
        assert_eq!(
            pretty(&u),
            "count/pods=1,cpu=2100m,limits.cpu=1,limits.memory=128Mi,memory=1Gi,pods=1,\
             requests.cpu=2100m,requests.example.com/gpu=1,requests.memory=1Gi"
        );
    }

    #[test]
    fn terminal_and_expired_pods_count_only_as_objects() {
        let mut p = pod(json!([{"name": "c", "resources": {"requests": {"cpu": "1"}}}]));
        p["status"] = json!({"phase": "Succeeded"});
        assert_eq!(pretty(&Evaluator::Pods.usage(&p, now())), "count/pods=1");
        p["status"] = json!({"phase": "Running"});
        p["metadata"]["deletionTimestamp"] = json!("2024-12-31T23:59:00Z");
        p["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        assert_eq!(pretty(&Evaluator::Pods.usage(&p, now())), "count/pods=1");
        p["metadata"]["deletionGracePeriodSeconds"] = json!(120);
        assert!(
            Evaluator::Pods
                .usage(&p, now())
                .contains_key("requests.cpu")
        );
    }

    #[test]
    fn pods_must_specify_what_a_quota_limits() {
        let p = pod(json!([
            {"name": "c", "resources": {"requests": {"cpu": "1"}}},
            {"name": "d"},
        ]));
        let required = ["limits.cpu", "limits.memory", "requests.cpu", "pods"].map(String::from);
        assert_eq!(
            Evaluator::Pods.constraints(&required, &p),
            Err(
                "must specify limits.cpu for: c,d; limits.memory for: c,d; requests.cpu for: d"
                    .into()
            )
        );
        assert_eq!(Evaluator::Pods.constraints(&["pods".into()], &p), Ok(()));
    }

    #[test]
    fn pod_scopes() {
        let mut p = pod(json!([{"name": "c"}]));
        let sel = |scope: &str| Selector {
            scope: scope.into(),
            operator: "Exists".into(),
            values: vec![],
        };
        assert!(Evaluator::Pods.matches_scope(&sel("BestEffort"), &p));
        assert!(Evaluator::Pods.matches_scope(&sel("NotTerminating"), &p));
        assert!(!Evaluator::Pods.matches_scope(&sel("PriorityClass"), &p));
        p["spec"]["activeDeadlineSeconds"] = json!(60);
        p["spec"]["priorityClassName"] = json!("high");
        p["status"] = json!({"qosClass": "Burstable"});
        assert!(Evaluator::Pods.matches_scope(&sel("Terminating"), &p));
        assert!(Evaluator::Pods.matches_scope(&sel("NotBestEffort"), &p));
        assert!(Evaluator::Pods.matches_scope(&sel("PriorityClass"), &p));
        let not_in = Selector {
            scope: "PriorityClass".into(),
            operator: "NotIn".into(),
            values: vec!["high".into()],
        };
        assert!(!Evaluator::Pods.matches_scope(&not_in, &p));
        p["spec"]["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "k", "namespaceSelector": {}}]}});
        assert!(Evaluator::Pods.matches_scope(&sel("CrossNamespacePodAffinity"), &p));
        // Other resources are in no scope.
        assert!(!Evaluator::Services.matches_scope(&sel("BestEffort"), &json!({})));
    }

    #[test]
    fn claims_services_and_object_counts() {
        let claim = json!({"spec": {"storageClassName": "fast",
            "resources": {"requests": {"storage": "1500M"}}},
            "status": {"allocatedResources": {"storage": "2Gi"}}});
        assert_eq!(
            pretty(&Evaluator::Claims.usage(&claim, now())),
            "count/persistentvolumeclaims=1,fast.storageclass.storage.k8s.io/persistentvolumeclaims=1,\
             fast.storageclass.storage.k8s.io/requests.storage=2Gi,persistentvolumeclaims=1,\
             requests.storage=2Gi"
        );
        let svc = json!({"spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
            "ports": [{"port": 80, "nodePort": 30080}, {"port": 443}]}});
        assert_eq!(
            pretty(&Evaluator::Services.usage(&svc, now())),
            "count/services=1,services=1,services.loadbalancers=1,services.nodeports=1"
        );
        let cm = Evaluator::for_resource("", "configmaps");
        assert_eq!(
            pretty(&cm.usage(&json!({}), now())),
            "configmaps=1,count/configmaps=1"
        );
        let names = [
            "count/deployments.apps",
            "requests.cpu",
            "fast.storageclass.storage.k8s.io/requests.storage",
            "secrets",
            "count/pods",
        ]
        .map(String::from);
        let evaluators: Vec<(String, String)> = Evaluator::for_names(&names)
            .iter()
            .map(|e| (e.resource().0.to_owned(), e.resource().1.to_owned()))
            .collect();
        assert_eq!(
            evaluators,
            [
                ("", "pods"),
                ("", "persistentvolumeclaims"),
                ("", "secrets"),
                ("apps", "deployments"),
            ]
            .map(|(g, r)| (g.to_owned(), r.to_owned()))
        );
    }
}
