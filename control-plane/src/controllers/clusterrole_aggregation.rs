//! The ClusterRole aggregation controller (kube-controller-manager's
//! `clusterrole-aggregation`): a ClusterRole with an `aggregationRule` holds the
//! union of the rules of every other ClusterRole its `clusterRoleSelectors` select
//! (in name order, each rule once), kept current as roles and labels change. This is
//! how `admin`, `edit` and `view` get their rules from the `aggregate-to-*` roles.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::queue::Queue;
use crate::client::Informers;
use crate::scheduler::labels::matches;

pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    // Any role's change may change any aggregated role: enqueue all of them (as
    // upstream's controller does).
    let roles: Arc<std::sync::OnceLock<Store<ClusterRole>>> = Arc::default();
    let store = informers.add(Api::<ClusterRole>::all(client.clone()), {
        let q = queue.clone();
        let roles = roles.clone();
        move |changed: &ClusterRole| {
            if changed.aggregation_rule.is_some() {
                q.add(changed.name_any());
            }
            if let Some(all) = roles.get() {
                for role in all.state() {
                    if role.aggregation_rule.is_some() {
                        q.add(role.name_any());
                    }
                }
            }
        }
    });
    let _ = roles.set(store.clone());
    async move {
        let _ = store.wait_until_ready().await;
        for role in store.state() {
            if role.aggregation_rule.is_some() {
                queue.add(role.name_any());
            }
        }
        let ctl = Arc::new((client, store));
        queue
            .work("clusterrole-aggregation", move |name| {
                let ctl = ctl.clone();
                async move { sync(&ctl.0, &ctl.1, &name).await }
            })
            .await;
    }
}

/// The rules `role` aggregates from `all`.
pub fn aggregate(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Vec<PolicyRule> {
    let Some(rule) = &role.aggregation_rule else {
        return role.rules.clone().unwrap_or_default();
    };
    let mut sources: Vec<&ClusterRole> = all
        .iter()
        .map(AsRef::as_ref)
        .filter(|other| other.name_any() != role.name_any())
        .filter(|other| {
            let labels = other.labels();
            rule.cluster_role_selectors
                .iter()
                .flatten()
                .any(|sel| matches(Some(sel), labels))
        })
        .collect();
    sources.sort_by_key(|r| r.name_any());
    let mut out: Vec<PolicyRule> = Vec::new();
    for source in sources {
        for r in source.rules.iter().flatten() {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
    }
    out
}

async fn sync(
    client: &Client,
    roles: &Store<ClusterRole>,
    name: &str,
) -> Result<Option<Duration>, kube::Error> {
    let Some(role) = roles.get(&ObjectRef::new(name)) else {
        return Ok(None);
    };
    if role.aggregation_rule.is_none() {
        return Ok(None);
    }
    let rules = aggregate(&role, &roles.state());
    if role.rules.as_deref().unwrap_or(&[]) == rules.as_slice() {
        return Ok(None);
    }
    match Api::<ClusterRole>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": rules})),
        )
        .await
    {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: serde_json::Value, rules: serde_json::Value) -> Arc<ClusterRole> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "labels": labels}, "rules": rules}),
            )
            .expect("role"),
        )
    }

    #[test]
    fn unions_selected_roles_in_name_order_once() {
        let view: ClusterRole = serde_json::from_value(json!({
            "metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "view"}}]},
        }))
        .expect("view");
        let r1 = json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]);
        let r2 = json!([{"verbs": ["list"], "apiGroups": ["x"], "resources": ["things"]},
                        {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]);
        let all = vec![
            role("z-more", json!({"agg": "view"}), r2),
            role("a-base", json!({"agg": "view"}), r1),
            role(
                "other",
                json!({"agg": "edit"}),
                json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]),
            ),
        ];
        let rules = aggregate(&view, &all);
        let verbs: Vec<&str> = rules.iter().map(|r| r.verbs[0].as_str()).collect();
        assert_eq!(
            verbs,
            ["get", "list"],
            "a-base first, the duplicate once, other not selected"
        );
    }
}
