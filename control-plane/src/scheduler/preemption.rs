//! Preemption (kube-scheduler's DefaultPreemption, without PodDisruptionBudgets): when a
//! pod fits nowhere, find the node where evicting pods of lower priority makes it fit,
//! evicting as few and as unimportant pods as possible: all lower-priority pods are
//! removed, then as many as still allow the fit are put back, highest priority first.
//! Among candidate nodes the one whose most important victim has the lowest priority
//! wins, then the smallest sum of victim priorities, then the fewest victims.

use k8s_openapi::api::core::v1::Pod;

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

/// The node to nominate and the pods to evict there, or None when preemption cannot
/// help (or the pod's `preemptionPolicy` is `Never`).
pub fn find(profile: &Profile, pod: &Pod, nodes: &[NodeInfo]) -> Option<(String, Vec<Pod>)> {
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        == Some("Never")
    {
        return None;
    }
    let p = priority(pod);
    // (most important victim, sum of victim priorities, victim count), node, victims.
    type Candidate = ((i32, i64, usize), String, Vec<Pod>);
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
        // Reprieve: put back the most important pods first while the pod still fits.
        lower.sort_by_key(|v| std::cmp::Reverse(priority(v)));
        let mut victims = Vec::new();
        for v in lower {
            cluster[i].add_pod(v.clone());
            if !fits(profile, pod, &cluster, i) {
                cluster[i].remove_pod(v.metadata.uid.as_deref().unwrap_or(""));
                victims.push(v);
            }
        }
        let key = (
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
            json!({"metadata": {"name": uid, "uid": uid, "namespace": "default"},
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
        let (node, victims) = find(&profile, &high, &nodes).expect("preemption helps");
        // n1 needs one victim of priority 10 (low-b is reprieved); n2 would lose a 50.
        assert_eq!(node, "n1");
        let names: Vec<_> = victims
            .iter()
            .filter_map(|v| v.metadata.name.clone())
            .collect();
        assert_eq!(names, vec!["low-a"]);
        // Never preempts with preemptionPolicy Never, nor pods of equal priority.
        assert!(find(&profile, &pod("polite", "1", 100, Some("Never")), &nodes).is_none());
        assert!(find(&profile, &pod("peer", "1", 10, None), &nodes).is_none());
    }
}
