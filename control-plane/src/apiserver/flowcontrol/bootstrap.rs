//! The FlowSchemas and PriorityLevelConfigurations kube-apiserver keeps in every cluster
//! (`k8s.io/apiserver/pkg/apis/flowcontrol/bootstrap`): the mandatory `exempt` and
//! `catch-all` of each kind and the suggested set (`system`, `node-high`,
//! `leader-election`, `workload-high`, `workload-low`, `global-default` and their
//! schemas), each annotated `apf.kubernetes.io/autoupdate-spec: "true"`.
//!
//! [`run`] is upstream's configuration-producer and -consumer in one: it creates what is
//! missing (at start and whenever one is deleted), puts back the spec of those still
//! annotated for auto-update, and keeps each FlowSchema's `Dangling` condition (does
//! its priority level exist?), which `kubectl get flowschemas` prints as MISSINGPL.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{CATCH_ALL, EXEMPT, GROUP};
use crate::apiserver::Api;
use crate::apiserver::object;
use crate::apiserver::rest::{self, Part};
use crate::apiserver::watch_cache::ChangeKind;

pub const AUTO_UPDATE: &str = "apf.kubernetes.io/autoupdate-spec";
const FLOW_SCHEMAS: &str = "/registry/flowcontrol.apiserver.k8s.io/flowschemas/";
const PRIORITY_LEVELS: &str = "/registry/flowcontrol.apiserver.k8s.io/prioritylevelconfigurations/";

fn all_rules() -> (Value, Value) {
    (
        json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"], "clusterScope": true}]),
        json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}]),
    )
}

fn groups(names: &[&str]) -> Vec<Value> {
    names
        .iter()
        .map(|n| json!({"kind": "Group", "group": {"name": n}}))
        .collect()
}

fn users(names: &[&str]) -> Vec<Value> {
    names
        .iter()
        .map(|n| json!({"kind": "User", "user": {"name": n}}))
        .collect()
}

fn kube_system_accounts(names: &[&str]) -> Vec<Value> {
    names
        .iter()
        .map(|n| json!({"kind": "ServiceAccount", "serviceAccount": {"name": n, "namespace": "kube-system"}}))
        .collect()
}

/// A FlowSchema spec matching `subjects` for every request.
fn all_for(pl: &str, precedence: i64, method: Option<&str>, subjects: Vec<Value>) -> Value {
    let (resource, non_resource) = all_rules();
    schema(
        pl,
        precedence,
        method,
        json!([{"subjects": subjects, "resourceRules": resource, "nonResourceRules": non_resource}]),
    )
}

fn schema(pl: &str, precedence: i64, method: Option<&str>, rules: Value) -> Value {
    let mut spec = json!({
        "priorityLevelConfiguration": {"name": pl},
        "matchingPrecedence": precedence,
        "rules": rules,
    });
    if let Some(m) = method {
        spec["distinguisherMethod"] = json!({"type": m});
    }
    spec
}

fn queued(shares: i64, lendable: i64, queues: i64, hand: i64) -> Value {
    json!({"type": "Limited", "limited": {
        "nominalConcurrencyShares": shares,
        "lendablePercent": lendable,
        "limitResponse": {"type": "Queue", "queuing": {"queues": queues, "handSize": hand, "queueLengthLimit": 50}},
    }})
}

/// The mandatory priority levels' specs.
pub fn mandatory_priority_level(name: &str) -> Option<Value> {
    match name {
        EXEMPT => Some(
            json!({"type": "Exempt", "exempt": {"nominalConcurrencyShares": 0, "lendablePercent": 0}}),
        ),
        CATCH_ALL => Some(json!({"type": "Limited", "limited": {
            "nominalConcurrencyShares": 5,
            "lendablePercent": 0,
            "limitResponse": {"type": "Reject"},
        }})),
        _ => None,
    }
}

/// The mandatory FlowSchemas' specs.
pub fn mandatory_flow_schema(name: &str) -> Option<Value> {
    match name {
        EXEMPT => Some(all_for(EXEMPT, 1, None, groups(&["system:masters"]))),
        CATCH_ALL => Some(all_for(
            CATCH_ALL,
            10000,
            Some("ByUser"),
            groups(&["system:unauthenticated", "system:authenticated"]),
        )),
        _ => None,
    }
}

/// Every bootstrap priority level: (name, spec).
pub fn priority_levels() -> Vec<(&'static str, Value)> {
    let mut out: Vec<(&'static str, Value)> = [EXEMPT, CATCH_ALL]
        .into_iter()
        .filter_map(|n| Some((n, mandatory_priority_level(n)?)))
        .collect();
    out.extend([
        ("system", queued(30, 33, 64, 6)),
        ("node-high", queued(40, 25, 64, 6)),
        ("leader-election", queued(10, 0, 16, 4)),
        ("workload-high", queued(40, 50, 128, 6)),
        ("workload-low", queued(100, 90, 128, 6)),
        ("global-default", queued(20, 50, 128, 6)),
    ]);
    out
}

/// Every bootstrap FlowSchema: (name, spec).
pub fn flow_schemas() -> Vec<(&'static str, Value)> {
    let mut out: Vec<(&'static str, Value)> = [EXEMPT, CATCH_ALL]
        .into_iter()
        .filter_map(|n| Some((n, mandatory_flow_schema(n)?)))
        .collect();
    let leases = json!({"verbs": ["get", "create", "update"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "namespaces": ["*"]});
    let mut leader_subjects = users(&["system:kube-controller-manager", "system:kube-scheduler"]);
    leader_subjects.extend(kube_system_accounts(&["*"]));
    out.extend([
        ("probes", schema(EXEMPT, 2, None, json!([{
            "subjects": groups(&["system:unauthenticated", "system:authenticated"]),
            "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/readyz", "/livez"]}],
        }]))),
        ("system-leader-election", schema("leader-election", 100, Some("ByUser"), json!([{
            "subjects": leader_subjects,
            "resourceRules": [leases.clone()],
        }]))),
        ("system-node-high", schema("node-high", 400, Some("ByUser"), json!([{
            "subjects": groups(&["system:nodes"]),
            "resourceRules": [
                {"verbs": ["*"], "apiGroups": [""], "resources": ["nodes", "nodes/status"], "namespaces": ["*"], "clusterScope": true},
                {"verbs": ["*"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "namespaces": ["*"]},
            ],
        }]))),
        ("system-nodes", all_for("system", 500, Some("ByUser"), groups(&["system:nodes"]))),
        ("kube-controller-manager", all_for("workload-high", 800, Some("ByNamespace"), users(&["system:kube-controller-manager"]))),
        ("kube-scheduler", all_for("workload-high", 800, Some("ByNamespace"), users(&["system:kube-scheduler"]))),
        ("kube-system-service-accounts", all_for("workload-high", 900, Some("ByNamespace"), kube_system_accounts(&["*"]))),
        ("service-accounts", all_for("workload-low", 9000, Some("ByUser"), groups(&["system:serviceaccounts"]))),
        ("global-default", all_for("global-default", 9900, Some("ByUser"), groups(&["system:unauthenticated", "system:authenticated"]))),
    ]);
    out
}

/// Creates the missing bootstrap objects of `plural`, puts back the spec of those
/// whose `autoupdate-spec` annotation is `"true"` (mandatory ones always), and deletes
/// objects so annotated that are no longer bootstrap ones (upstream's
/// `removeDanglingBootstrapConfiguration`: the suggested `endpoint-controller` and
/// `workload-leader-election` FlowSchemas left in 1.34).
async fn ensure(api: &Arc<Api>, plural: &str, objects: Vec<(&'static str, Value)>, kind: &str) {
    let Some(ctx) = crate::apiserver::aggregator::internal_ctx(api, GROUP, plural, None) else {
        return;
    };
    let prefix = format!("/registry/{GROUP}/{plural}/");
    let names: HashSet<&str> = objects.iter().map(|(n, _)| *n).collect();
    for kv in api.cache.list(&prefix, |_| true).0 {
        let obj = kv.value();
        let name = object::name(&obj);
        if names.contains(name) || auto_update(&obj) != Some(true) {
            continue;
        }
        if let Err(e) = api.store.delete(kv.key.clone(), Some(kv.revision)).await {
            tracing::debug!(%name, error = %e, "removing a former APF bootstrap object failed");
        } else {
            tracing::info!(%name, kind, "removed an APF object no longer among the bootstrap ones");
        }
    }
    for (name, spec) in objects {
        let mandatory = matches!(name, EXEMPT | CATCH_ALL);
        let current = match ctx.current(name).await {
            Ok(c) => c.map(|(v, _)| v),
            Err(e) => {
                tracing::warn!(%name, error = %e.message, "reading an APF bootstrap object failed");
                continue;
            }
        };
        let result = match current {
            None => rest::create_object(
                &ctx,
                json!({
                    "apiVersion": format!("{GROUP}/v1"),
                    "kind": kind,
                    "metadata": {"name": name, "annotations": {AUTO_UPDATE: "true"}},
                    "spec": spec,
                }),
            )
            .await
            .map(|_| ()),
            Some(obj) => {
                let auto = auto_update(&obj) == Some(true);
                // The exempt level's concurrency settings are the admin's to change.
                let same = |o: &Value| {
                    let mut a = o.get("spec").cloned().unwrap_or(Value::Null);
                    let mut b = spec.clone();
                    if kind == "PriorityLevelConfiguration" && name == EXEMPT {
                        for s in [&mut a, &mut b] {
                            if let Some(m) = s.as_object_mut() {
                                m.remove("exempt");
                            }
                        }
                    }
                    a == b
                };
                if (mandatory || auto) && !same(&obj) {
                    rest::update_live(&ctx, name, Part::Main, |live| {
                        let mut next = live.clone();
                        next["spec"] = spec.clone();
                        Ok(next)
                    })
                    .await
                    .map(|_| ())
                } else {
                    Ok(())
                }
            }
        };
        match result {
            Ok(()) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => {
                tracing::warn!(%name, error = %e.message, "ensuring an APF bootstrap object failed")
            }
        }
    }
}

/// The object's `autoupdate-spec` annotation, when it is a boolean.
fn auto_update(obj: &Value) -> Option<bool> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(AUTO_UPDATE))
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
}

/// Sets each FlowSchema's `Dangling` condition to whether its priority level exists.
async fn mark_dangling(api: &Arc<Api>) {
    let Some(ctx) = crate::apiserver::aggregator::internal_ctx(api, GROUP, "flowschemas", None)
    else {
        return;
    };
    let levels: HashSet<String> = api
        .cache
        .list(PRIORITY_LEVELS, |_| true)
        .0
        .iter()
        .filter_map(|o| o.key.strip_prefix(PRIORITY_LEVELS).map(str::to_owned))
        .collect();
    for fs in api.cache.list(FLOW_SCHEMAS, |_| true).0 {
        let fs = fs.value();
        let name = object::name(&fs).to_owned();
        let pl = fs
            .pointer("/spec/priorityLevelConfiguration/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let (status, reason, message) = if levels.contains(&pl) {
            (
                "False",
                "Found",
                format!(
                    "This FlowSchema references the PriorityLevelConfiguration object named \"{pl}\" and it exists"
                ),
            )
        } else {
            (
                "True",
                "NotFound",
                format!(
                    "This FlowSchema references the PriorityLevelConfiguration object named \"{pl}\" but there is no such object"
                ),
            )
        };
        let current = fs
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Dangling"));
        if current.is_some_and(|c| {
            c["status"] == status && c["reason"] == reason && c["message"] == message.as_str()
        }) {
            continue;
        }
        let result = rest::update_live(&ctx, &name, Part::Status, |live| {
            let mut next = live.clone();
            let cond = json!({"type": "Dangling", "status": status, "lastTransitionTime": object::now(), "reason": reason, "message": message});
            let mut conditions: Vec<Value> = next
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            conditions.retain(|c| c["type"] != "Dangling");
            conditions.push(cond);
            next["status"] = json!({"conditions": conditions});
            Ok(next)
        })
        .await;
        if let Err(e) = result
            && e.code != 404
        {
            tracing::debug!(flowschema = %name, error = %e.message, "Dangling condition update failed");
        }
    }
}

/// Creates the bootstrap objects, then keeps them and the `Dangling` conditions as the
/// FlowSchemas and priority levels change.
pub async fn run(api: Arc<Api>) {
    let (_, mut watch) = api.cache.snapshot_and_watch(FLOW_SCHEMAS);
    let sync = |api: Arc<Api>| async move {
        ensure(
            &api,
            "prioritylevelconfigurations",
            priority_levels(),
            "PriorityLevelConfiguration",
        )
        .await;
        ensure(&api, "flowschemas", flow_schemas(), "FlowSchema").await;
        api.cache.wait_for(api.store.current_revision()).await;
        mark_dangling(&api).await;
    };
    sync(api.clone()).await;
    // Upstream's configuration producer runs once a minute besides.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let received = tokio::select! {
            r = watch.live.recv() => r,
            _ = tick.tick() => {
                sync(api.clone()).await;
                continue;
            }
        };
        match received {
            Ok(change) => {
                let key = change.object.key.as_str();
                if !key.starts_with(FLOW_SCHEMAS) && !key.starts_with(PRIORITY_LEVELS) {
                    continue;
                }
                // A status write of ours changes nothing that matters here.
                let spec_changed = change.kind != ChangeKind::Modified
                    || change
                        .prev
                        .as_ref()
                        .is_none_or(|p| p.value().get("spec") != change.object.value().get("spec"));
                if spec_changed {
                    if change.kind == ChangeKind::Deleted {
                        sync(api.clone()).await;
                    } else {
                        mark_dangling(&api).await;
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => sync(api.clone()).await,
            Err(_) => return,
        }
    }
}
