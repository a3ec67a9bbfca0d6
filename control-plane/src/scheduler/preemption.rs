//! Preemption (kube-scheduler's DefaultPreemption): when a pod fits nowhere, find the
//! node where evicting pods of lower priority makes it fit, evicting as few and as
//! unimportant pods as possible: all lower-priority pods are removed, then as many as
//! still allow the fit are put back, highest priority first — those whose
//! PodDisruptionBudget would be violated by their eviction before the others. Among
//! candidate nodes the one with the fewest budget violations wins, then the one whose
//! most important victim has the lowest priority, then the smallest sum of victim
//! priorities, then the fewest victims.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::framework::Profile;
use super::node_info::NodeInfo;

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

fn fits(profile: &Profile, pod: &Pod, cluster: &[NodeInfo], i: usize) -> bool {
    profile
        .filters
        .iter()
        .all(|f| f.filter(pod, &cluster[i], cluster).is_ok())
}

/// `filterPodsWithPDBViolation`: splits `pods` (in reprieve order) into those whose
/// eviction would take a budget below zero disruptions and the rest. Here a budget with
/// an empty selector matches nothing, and a pod already in its `disruptedPods` costs it
/// nothing, as in kube-scheduler.
fn split_by_budget(pods: Vec<Pod>, budgets: &[PodDisruptionBudget]) -> (Vec<Pod>, Vec<Pod>) {
    let mut allowed: Vec<i32> = budgets
        .iter()
        .map(|b| {
            b.status
                .as_ref()
                .and_then(|s| s.disruptions_allowed)
                .unwrap_or(0)
        })
        .collect();
    let (mut violating, mut other) = (Vec::new(), Vec::new());
    for pod in pods {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let mut violates = false;
        for (i, b) in budgets.iter().enumerate() {
            let selector = b.spec.as_ref().and_then(|s| s.selector.as_ref());
            let empty = selector.is_none_or(|s| {
                s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                    && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
            });
            if labels.is_empty() || empty || !crate::disruption_budget::selects(b, ns, &labels) {
                continue;
            }
            let disrupted = b
                .status
                .as_ref()
                .and_then(|s| s.disrupted_pods.as_ref())
                .is_some_and(|d| d.contains_key(name));
            if disrupted {
                continue;
            }
            allowed[i] -= 1;
            violates |= allowed[i] < 0;
        }
        if violates {
            violating.push(pod);
        } else {
            other.push(pod);
        }
    }
    (violating, other)
}

/// The node to nominate and the pods to evict there, or None when preemption cannot
/// help (or the pod's `preemptionPolicy` is `Never`).
pub fn find(
    profile: &Profile,
    pod: &Pod,
    nodes: &[NodeInfo],
    budgets: &[PodDisruptionBudget],
) -> Option<(String, Vec<Pod>)> {
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        == Some("Never")
    {
        return None;
    }
    let p = priority(pod);
    // (budget violations, most important victim, sum of victim priorities, victim
    // count), node, victims.
    type Candidate = ((usize, i32, i64, usize), String, Vec<Pod>);
    let mut best: Option<Candidate> = None;
    for i in 0..nodes.len() {
        let mut lower: Vec<Pod> = nodes[i]
            .pods
            .iter()
            .filter(|v| priority(v) < p && v.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        if lower.is_empty() {
            continue;
        }
        let mut cluster = nodes.to_vec();
        for v in &lower {
            cluster[i].remove_pod(v.metadata.uid.as_deref().unwrap_or(""));
        }
        if !fits(profile, pod, &cluster, i) {
            continue;
        }
        // Reprieve: put back the most important pods first while the pod still fits,
        // those a budget protects before the others.
        lower.sort_by_key(|v| std::cmp::Reverse(priority(v)));
        let (violating, other) = split_by_budget(lower, budgets);
        let mut victims = Vec::new();
        let mut violations = 0;
        let reprieve_order = violating
            .into_iter()
            .map(|v| (v, true))
            .chain(other.into_iter().map(|v| (v, false)));
        for (v, violates) in reprieve_order {
            cluster[i].add_pod(v.clone());
            if !fits(profile, pod, &cluster, i) {
                cluster[i].remove_pod(v.metadata.uid.as_deref().unwrap_or(""));
                violations += usize::from(violates);
                victims.push(v);
            }
        }
        victims.sort_by_key(|v| std::cmp::Reverse(priority(v)));
        let key = (
            violations,
            victims.iter().map(priority).max().unwrap_or(i32::MIN),
            victims.iter().map(|v| priority(v) as i64).sum::<i64>(),
            victims.len(),
        );
        if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
            best = Some((key, nodes[i].name.clone(), victims));
        }
    }
    best.map(|(_, node, victims)| (node, victims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn node(name: &str) -> NodeInfo {
        NodeInfo::new(
            serde_json::from_value::<Node>(json!({"metadata": {"name": name},
                "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "10"}}}))
            .expect("node"),
        )
    }

    fn pod(uid: &str, cpu: &str, priority: i32, policy: Option<&str>) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": uid, "uid": uid, "namespace": "default", "labels": {"app": uid}},
            "spec": {"priority": priority, "preemptionPolicy": policy,
                "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}),
        )
        .expect("pod")
    }

    #[test]
    fn evicts_the_fewest_least_important_pods() {
        let profile = Profile::default();
        let mut n1 = node("n1");
        n1.add_pod(pod("low-a", "1", 10, None));
        n1.add_pod(pod("low-b", "1", 20, None));
        let mut n2 = node("n2");
        n2.add_pod(pod("mid", "2", 50, None));
        let nodes = vec![n1, n2];
        let high = pod("high", "1", 100, None);
        assert!(profile.feasible(&high, &nodes).is_err());
        let (node, victims) = find(&profile, &high, &nodes, &[]).expect("preemption helps");
        // n1 needs one victim of priority 10 (low-b is reprieved); n2 would lose a 50.
        assert_eq!(node, "n1");
        let names: Vec<_> = victims
            .iter()
            .filter_map(|v| v.metadata.name.clone())
            .collect();
        assert_eq!(names, vec!["low-a"]);
        // Never preempts with preemptionPolicy Never, nor pods of equal priority.
        assert!(
            find(
                &profile,
                &pod("polite", "1", 100, Some("Never")),
                &nodes,
                &[]
            )
            .is_none()
        );
        assert!(find(&profile, &pod("peer", "1", 10, None), &nodes, &[]).is_none());
    }

    fn budget(app: &str, allowed: i32) -> PodDisruptionBudget {
        serde_json::from_value(json!({"metadata": {"name": app, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": app}}},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": 1, "desiredHealthy": 1,
                "expectedPods": 1}}))
        .expect("pdb")
    }

    #[test]
    fn budgets_steer_victims_and_nodes() {
        let profile = Profile::default();
        // One node, two equal victims of which one is enough: the one whose budget
        // allows no disruption is reprieved first and stays.
        let mut n1 = node("n1");
        n1.add_pod(pod("guarded", "1", 10, None));
        n1.add_pod(pod("free", "1", 10, None));
        let high = pod("high", "2", 100, None);
        let one = vec![n1];
        let (_, victims) = find(
            &profile,
            &pod("high", "1", 100, None),
            &one,
            &[budget("guarded", 0)],
        )
        .expect("preemption helps");
        let names: Vec<_> = victims
            .iter()
            .filter_map(|v| v.metadata.name.clone())
            .collect();
        assert_eq!(names, ["free"]);
        // Two nodes: the less important victim sits under an exhausted budget, so the
        // node whose victim violates nothing wins though its victim matters more.
        let mut a = node("a");
        a.add_pod(pod("low", "2", 10, None));
        let mut b = node("b");
        b.add_pod(pod("mid", "2", 50, None));
        let nodes = vec![a, b];
        let (node, _) = find(&profile, &high, &nodes, &[]).expect("helps");
        assert_eq!(node, "a");
        let (node, victims) = find(&profile, &high, &nodes, &[budget("low", 0)]).expect("helps");
        assert_eq!(node, "b");
        assert_eq!(victims[0].metadata.name.as_deref(), Some("mid"));
        // A budget that still allows the disruption changes nothing.
        let (node, _) = find(&profile, &high, &nodes, &[budget("low", 1)]).expect("helps");
        assert_eq!(node, "a");
    }
}
