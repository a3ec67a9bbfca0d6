//! A quota's status from the objects of its namespace, without I/O
//! (`syncResourceQuota` over `quota.CalculateUsage` and `generic.CalculateUsageStats`):
//! `hard` is `spec.hard`; each limited resource an evaluator counts is used what the
//! namespace's objects in the quota's scopes use together; a limited resource no
//! evaluator could count keeps what it was last known to use.

use jiff::Timestamp;
use serde_json::Value;

use crate::quota::{self, Amount, Evaluator, Quota, ResourceList};

/// The status the quota should have: `(hard, used)`. `objects` gives an evaluator's
/// objects in the quota's namespace, or `None` when they cannot be read.
pub fn status<'a>(
    quota: &Quota,
    mut objects: impl FnMut(&Evaluator) -> Option<&'a [Value]>,
    now: Timestamp,
) -> (ResourceList, ResourceList) {
    let hard = quota.spec_hard.clone();
    let mut used = quota.used.clone();
    for evaluator in Evaluator::for_names(hard.keys()) {
        let resources = evaluator.matching_resources(hard.keys());
        let Some(objects) = objects(&evaluator) else {
            continue;
        };
        let mut stats: ResourceList = resources
            .iter()
            .map(|r| (r.clone(), Amount::ZERO))
            .collect();
        for obj in objects {
            if quota
                .selectors
                .iter()
                .all(|s| evaluator.matches_scope(s, obj))
            {
                stats = quota::add(&stats, &evaluator.usage(obj, now));
            }
        }
        used.extend(quota::mask(&stats, &resources));
    }
    (hard.clone(), quota::mask(&used, hard.keys()))
}

/// Whether the quota's stored status differs from `(hard, used)` — or it has none.
pub fn dirty(quota_obj: &Value, quota: &Quota, hard: &ResourceList, used: &ResourceList) -> bool {
    quota_obj.pointer("/status/hard").is_none()
        || quota_obj.pointer("/status/used").is_none()
        || !quota::equals(&quota.hard, hard)
        || !quota::equals(&quota.used, used)
}

/// Whether a quota needs counting now, whatever changed: its status does not yet
/// follow its spec (new, or its limits changed).
pub fn needs_sync(quota_obj: &Value) -> bool {
    let q = Quota::from_object(quota_obj);
    quota_obj.pointer("/status/hard").is_none()
        || !quota::equals(&q.spec_hard, &q.hard)
        || q.spec_hard.keys().any(|k| !q.used.contains_key(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> Vec<Value> {
        let pod = |name: &str, resources: Value, phase: &str| {
            json!({"metadata": {"name": name}, "spec": {"containers": [
                {"name": "c", "resources": resources}]}, "status": {"phase": phase}})
        };
        vec![
            pod(
                "a",
                json!({"requests": {"cpu": "500m", "memory": "1Gi"}}),
                "Running",
            ),
            pod("b", json!({"requests": {"cpu": "1"}}), "Pending"),
            pod("done", json!({"requests": {"cpu": "4"}}), "Succeeded"),
            pod("besteffort", json!({}), "Running"),
        ]
    }

    #[test]
    fn usage_is_summed_over_the_namespaces_objects() {
        let q = Quota::from_object(&json!({"metadata": {"name": "q"}, "spec": {"hard": {
            "pods": "10", "requests.cpu": "4", "requests.memory": "2Gi", "count/pods": "20",
            "count/deployments.apps": "2", "services": "1", "example.com/unknown": "1"}},
            "status": {"used": {"example.com/unknown": "1"}}}));
        let pods = pods();
        let deployments = vec![json!({}), json!({})];
        let (hard, used) = status(
            &q,
            |e| match e.resource() {
                ("", "pods") => Some(pods.as_slice()),
                ("apps", "deployments") => Some(deployments.as_slice()),
                ("", "services") => Some(&[]),
                _ => None,
            },
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(hard.len(), 7);
        assert_eq!(
            quota::pretty(&used),
            "count/deployments.apps=2,count/pods=4,example.com/unknown=1,pods=3,\
             requests.cpu=1500m,requests.memory=1Gi,services=0"
        );
        assert_eq!(
            quota::to_json(&used)["services"],
            json!("0"),
            "zero is written as 0"
        );
    }

    #[test]
    fn scoped_quotas_count_only_pods_in_scope() {
        let q = Quota::from_object(&json!({"metadata": {"name": "q"},
            "spec": {"hard": {"pods": "5"}, "scopes": ["BestEffort"]}}));
        let pods = pods();
        let (_, used) = status(&q, |_| Some(pods.as_slice()), Timestamp::UNIX_EPOCH);
        assert_eq!(quota::pretty(&used), "pods=1");
        let obj = json!({"spec": {"hard": {"pods": "5"}}, "status": {"hard": {"pods": "5"}}});
        assert!(needs_sync(&obj), "no used yet");
        let obj = json!({"spec": {"hard": {"pods": "5"}},
            "status": {"hard": {"pods": "5"}, "used": {"pods": "1"}}});
        assert!(!needs_sync(&obj));
        let q = Quota::from_object(&obj);
        assert!(!dirty(&obj, &q, &q.spec_hard, &q.used));
        assert!(dirty(&obj, &q, &q.spec_hard, &ResourceList::new()));
    }
}
