//! The bootstrap RBAC policy kube-apiserver creates at start
//! (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`): the user-facing roles
//! (`cluster-admin`, and `admin`/`edit`/`view` aggregated from the
//! `system:aggregate-to-*` roles), the roles of the system's components
//! (`system:basic-user`, `system:discovery`, `system:public-info-viewer`,
//! `system:node`, `system:kube-scheduler`, `system:kube-controller-manager`, …) and
//! one `system:controller:<name>` role for each of berth's controllers, with
//! upstream's bindings. The rule lists are upstream's (its `testdata/*.yaml`), for the
//! resources berth serves.
//!
//! [`reconcile`] runs at every start, as upstream's `PostStartHook`: missing objects
//! are created; existing ones annotated `rbac.authorization.kubernetes.io/autoupdate:
//! "true"` (or not annotated) get back missing rules, selectors, labels and subjects;
//! `"false"` leaves an object alone. Extra permissions are never removed.

use std::sync::Arc;

use serde_json::{Value, json};

mod controllers;
mod roles;

use super::Rule;
use super::rules::uncovered;
use crate::apiserver::Api;
use crate::apiserver::rest::{self, Part};
use crate::apiserver::status::ApiResult;
use controllers::controller_roles;
pub use roles::{ClusterRole, cluster_roles};

pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
use roles::GROUP;

/// A subject: (kind, name, namespace).
pub type SubjectSpec = (&'static str, String, String);
/// A bootstrap ClusterRoleBinding: (name, role, subjects).
pub type BindingSpec = (String, String, Vec<SubjectSpec>);

/// The bootstrap ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<BindingSpec> {
    let group = |g: &str| ("Group", g.to_owned(), String::new());
    let user = |u: &str| ("User", u.to_owned(), String::new());
    let mut out = vec![
        (
            "cluster-admin".into(),
            "cluster-admin".into(),
            vec![group(super::MASTERS)],
        ),
        (
            "system:basic-user".into(),
            "system:basic-user".into(),
            vec![group("system:authenticated")],
        ),
        (
            "system:discovery".into(),
            "system:discovery".into(),
            vec![group("system:authenticated")],
        ),
        (
            "system:public-info-viewer".into(),
            "system:public-info-viewer".into(),
            vec![
                group("system:authenticated"),
                group("system:unauthenticated"),
            ],
        ),
        (
            "system:monitoring".into(),
            "system:monitoring".into(),
            vec![group("system:monitoring")],
        ),
        (
            "system:service-account-issuer-discovery".into(),
            "system:service-account-issuer-discovery".into(),
            vec![group("system:serviceaccounts")],
        ),
        ("system:node".into(), "system:node".into(), Vec::new()),
        // Node join, as kubeadm binds it: bootstrap tokens may file CSRs and have node
        // client certificates approved; nodes may renew their own.
        (
            "system:node-bootstrapper".into(),
            "system:node-bootstrapper".into(),
            vec![group(crate::apiserver::bootstrap_token::GROUP)],
        ),
        (
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient".into(),
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient".into(),
            vec![group(crate::apiserver::bootstrap_token::GROUP)],
        ),
        (
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient".into(),
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient".into(),
            vec![group("system:nodes")],
        ),
        // The apiserver's client to the kubelets.
        (
            "system:kubelet-api-admin".into(),
            "system:kubelet-api-admin".into(),
            vec![user(crate::apiserver::kubelet::CLIENT_USER)],
        ),
        // berth's agent is its node's kube-proxy and DNS server too.
        (
            "system:node-proxier".into(),
            "system:node-proxier".into(),
            vec![user("system:kube-proxy"), group("system:nodes")],
        ),
        (
            "system:berth:node-dns".into(),
            "system:berth:node-dns".into(),
            vec![group("system:nodes")],
        ),
        (
            "system:berth:node-volumes".into(),
            "system:berth:node-volumes".into(),
            vec![group("system:nodes")],
        ),
        // Agents enforce NetworkPolicy as this ServiceAccount (a token each node may
        // request), so the node identity itself stays limited to its own pods.
        (
            "system:berth:node-network-policy".into(),
            "system:berth:node-network-policy".into(),
            vec![(
                "ServiceAccount",
                crate::apiserver::authz::node::NETWORK_POLICY_ACCOUNT.into(),
                "kube-system".into(),
            )],
        ),
        (
            "system:kube-dns".into(),
            "system:kube-dns".into(),
            vec![("ServiceAccount", "kube-dns".into(), "kube-system".into())],
        ),
        (
            "system:kube-scheduler".into(),
            "system:kube-scheduler".into(),
            vec![user("system:kube-scheduler")],
        ),
        (
            "system:volume-scheduler".into(),
            "system:volume-scheduler".into(),
            vec![user("system:kube-scheduler")],
        ),
        (
            "system:kube-controller-manager".into(),
            "system:kube-controller-manager".into(),
            vec![user("system:kube-controller-manager")],
        ),
    ];
    // Each controller's role to the ServiceAccount of its name in kube-system.
    for (name, _) in controller_roles() {
        let account = name.trim_start_matches("system:controller:");
        out.push((
            name.into(),
            name.into(),
            vec![("ServiceAccount", account.into(), "kube-system".into())],
        ));
    }
    out
}

fn bootstrap_meta(name: &str, extra_labels: &[(String, String)]) -> Value {
    let mut labels = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    for (k, v) in extra_labels {
        labels[k] = json!(v);
    }
    json!({"name": name, "labels": labels, "annotations": {AUTOUPDATE: "true"}})
}

/// The ClusterRole objects of the bootstrap policy.
pub fn cluster_role_objects() -> Vec<Value> {
    cluster_roles()
        .into_iter()
        .map(|role| {
            let labels: Vec<(String, String)> = role
                .aggregate_to
                .iter()
                .map(|t| (format!("rbac.authorization.k8s.io/aggregate-to-{t}"), "true".into()))
                .collect();
            let mut obj = json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": bootstrap_meta(role.name, &labels),
                "rules": role.rules,
            });
            if let Some(target) = role.aggregates {
                obj["aggregationRule"] = json!({"clusterRoleSelectors": [
                    {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{target}"): "true"}}
                ]});
            }
            obj
        })
        .collect()
}

/// The ClusterRoleBinding objects of the bootstrap policy.
pub fn cluster_role_binding_objects() -> Vec<Value> {
    cluster_role_bindings()
        .into_iter()
        .map(|(name, role, subjects)| {
            let subjects: Vec<Value> = subjects
                .into_iter()
                .map(|(kind, name, namespace)| {
                    if kind == "ServiceAccount" {
                        json!({"kind": kind, "name": name, "namespace": namespace})
                    } else {
                        json!({"kind": kind, "apiGroup": GROUP, "name": name})
                    }
                })
                .collect();
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": bootstrap_meta(&name, &[]),
                "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
                "subjects": subjects,
            })
        })
        .collect()
}

fn autoupdate(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(AUTOUPDATE))
        .and_then(Value::as_str)
        != Some("false")
}

/// Adds to `existing` what `expected` has and it lacks: labels, annotations, rules
/// not covered, aggregation selectors, subjects. `None` when nothing is missing.
pub fn reconciled(existing: &Value, expected: &Value) -> Option<Value> {
    if !autoupdate(existing) {
        return None;
    }
    let mut out = existing.clone();
    for field in ["labels", "annotations"] {
        if let Some(want) = expected
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
        {
            for (k, v) in want {
                if out.pointer(&format!(
                    "/metadata/{field}/{}",
                    k.replace('~', "~0").replace('/', "~1")
                )) != Some(v)
                {
                    if !out["metadata"][field].is_object() {
                        out["metadata"][field] = json!({});
                    }
                    out["metadata"][field][k] = v.clone();
                }
            }
        }
    }
    if expected.get("rules").is_some() && expected.get("aggregationRule").is_none() {
        let have = Rule::list(existing.get("rules"));
        let want = Rule::list(expected.get("rules"));
        let covered = |rule: &Rule| uncovered(&have, std::slice::from_ref(rule)).is_empty();
        let missing: Vec<&Rule> = want.iter().filter(|r| !covered(r)).collect();
        if !missing.is_empty() {
            let mut rules = existing
                .get("rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            rules.extend(missing.into_iter().map(|r| json!(r)));
            out["rules"] = Value::Array(rules);
        }
    }
    if let Some(selectors) = expected
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
    {
        let mut have = out
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let before = have.len();
        for s in selectors {
            if !have.contains(s) {
                have.push(s.clone());
            }
        }
        if have.len() != before || out.get("aggregationRule").is_none() {
            out["aggregationRule"] = json!({"clusterRoleSelectors": have});
        }
    }
    if let Some(subjects) = expected.get("subjects").and_then(Value::as_array) {
        let mut have = out
            .get("subjects")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let before = have.len();
        for s in subjects {
            let same = |h: &Value| {
                h.get("kind") == s.get("kind")
                    && h.get("name") == s.get("name")
                    && h.get("namespace") == s.get("namespace")
            };
            if !have.iter().any(same) {
                have.push(s.clone());
            }
        }
        if have.len() != before {
            out["subjects"] = Value::Array(have);
        }
    }
    (out != *existing).then_some(out)
}

/// Creates or repairs the bootstrap policy (see the module docs).
pub async fn reconcile(api: &Arc<Api>) -> ApiResult<()> {
    for (plural, objects) in [
        ("clusterroles", cluster_role_objects()),
        ("clusterrolebindings", cluster_role_binding_objects()),
    ] {
        let Some(ctx) = api.internal(GROUP, plural, None) else {
            continue;
        };
        for expected in objects {
            let name = crate::apiserver::object::name(&expected).to_owned();
            match ctx.current(&name).await? {
                None => match rest::create_object(&ctx, expected).await {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                },
                Some((existing, _)) => {
                    // A binding whose roleRef changed cannot be updated: upstream
                    // deletes and recreates it; berth leaves a changed roleRef to its owner.
                    if plural == "clusterrolebindings"
                        && existing.get("roleRef") != expected.get("roleRef")
                    {
                        tracing::warn!(binding = %name, "bootstrap binding has another roleRef; left alone");
                        continue;
                    }
                    if reconciled(&existing, &expected).is_none() {
                        continue;
                    }
                    rest::update_live(&ctx, &name, Part::Main, |current| {
                        Ok(reconciled(current, &expected).unwrap_or_else(|| current.clone()))
                    })
                    .await?;
                    tracing::info!(object = %name, kind = plural, "bootstrap RBAC policy reconciled");
                }
            }
        }
    }
    Ok(())
}
