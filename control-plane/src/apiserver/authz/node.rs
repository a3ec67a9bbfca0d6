//! The Node authorizer (`plugin/pkg/auth/authorizer/node`, `--authorization-mode=Node`):
//! a kubelet (`system:node:<name>` in `system:nodes`) may read only what the pods bound
//! to it use — their Secrets, ConfigMaps, PersistentVolumeClaims and the volumes bound
//! to those, and tokens of their ServiceAccounts — get its pods and list/watch pods
//! only with `fieldSelector=spec.nodeName=<itself>`, and use only its own Lease in
//! `kube-node-lease`. For everything else it holds the static `system:node` rules;
//! which objects a node may write (its own Node, its pods' status, mirror pods) is then
//! NodeRestriction admission's business (`admission/node_restriction.rs`). A request
//! the Node authorizer does not allow goes on to RBAC, as upstream's `Node,RBAC`.
//!
//! Upstream keeps a graph of pods and what they reference; berth answers from the
//! watch cache when asked: the node's pods in the request's namespace, what they name.
//! Entry points: [`node_name`], [`NodeAuthorizer::authorize`].

use std::sync::Arc;

use serde_json::Value;

use super::{Attributes, Decision, Rule};
use crate::apiserver::auth::UserInfo;
use crate::apiserver::watch_cache::WatchCache;

pub const NODES_GROUP: &str = "system:nodes";
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node a user is (`system:node:<name>` in `system:nodes`), if any.
pub fn node_name(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    (!name.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

#[derive(Debug)]
pub struct NodeAuthorizer {
    cache: Arc<WatchCache>,
    /// The static rules of the `system:node` role.
    rules: Vec<Rule>,
}

/// What a pod refers to, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Secret,
    ConfigMap,
    Claim,
    Account,
}

fn strs<'a>(v: &'a Value, ptr: &str) -> impl Iterator<Item = &'a Value> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Whether `pod` names the object `name` of `kind` (`podutil.VisitPod*Names`).
fn references(pod: &Value, kind: Kind, name: &str) -> bool {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let is = |v: Option<&Value>| v.and_then(Value::as_str) == Some(name);
    match kind {
        Kind::Account => is(spec.get("serviceAccountName")),
        Kind::Claim => strs(spec, "/volumes").any(|v| {
            is(v.pointer("/persistentVolumeClaim/claimName"))
                || (v.get("ephemeral").is_some()
                    && pod
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .zip(v.get("name").and_then(Value::as_str))
                        .is_some_and(|(p, vol)| format!("{p}-{vol}") == name))
        }),
        Kind::Secret | Kind::ConfigMap => {
            let (volume, projected, env_key, env_from) = if kind == Kind::Secret {
                ("/secret/secretName", "secret", "secretKeyRef", "secretRef")
            } else {
                (
                    "/configMap/name",
                    "configMap",
                    "configMapKeyRef",
                    "configMapRef",
                )
            };
            let in_volumes = strs(spec, "/volumes").any(|v| {
                is(v.pointer(volume))
                    || strs(v, "/projected/sources")
                        .any(|s| is(s.pointer(&format!("/{projected}/name"))))
                    || (kind == Kind::Secret
                        && [
                            "/csi/nodePublishSecretRef/name",
                            "/rbd/secretRef/name",
                            "/cephfs/secretRef/name",
                            "/iscsi/secretRef/name",
                            "/flexVolume/secretRef/name",
                            "/azureFile/secretName",
                        ]
                        .iter()
                        .any(|p| is(v.pointer(p))))
            });
            let pull =
                kind == Kind::Secret && strs(spec, "/imagePullSecrets").any(|s| is(s.get("name")));
            let in_env = ["/containers", "/initContainers", "/ephemeralContainers"]
                .iter()
                .flat_map(|k| strs(spec, k))
                .any(|c| {
                    strs(c, "/env").any(|e| is(e.pointer(&format!("/valueFrom/{env_key}/name"))))
                        || strs(c, "/envFrom").any(|f| is(f.pointer(&format!("/{env_from}/name"))))
                });
            in_volumes || pull || in_env
        }
    }
}

impl NodeAuthorizer {
    pub fn new(cache: Arc<WatchCache>) -> Self {
        let rules = super::bootstrap::cluster_roles()
            .into_iter()
            .find(|r| r.name == "system:node")
            .map(|r| r.rules)
            .unwrap_or_default();
        Self { cache, rules }
    }

    /// The pods bound to `node` in `namespace` (all namespaces when empty).
    fn pods(&self, node: &str, namespace: &str) -> Vec<Value> {
        let prefix = if namespace.is_empty() {
            "/registry/core/pods/".to_owned()
        } else {
            format!("/registry/core/pods/{namespace}/")
        };
        self.cache
            .list(&prefix, |_| true)
            .0
            .iter()
            .map(|c| c.value())
            .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
            .collect()
    }

    fn used_by_pods(&self, node: &str, namespace: &str, kind: Kind, name: &str) -> bool {
        !name.is_empty()
            && self
                .pods(node, namespace)
                .iter()
                .any(|p| references(p, kind, name))
    }

    /// Whether the PersistentVolume `name` is bound to a claim a pod of `node` uses.
    fn volume_used(&self, node: &str, name: &str) -> bool {
        let Some(pv) = self
            .cache
            .get(&format!("/registry/core/persistentvolumes/{name}"))
        else {
            return false;
        };
        let pv = pv.value();
        let claim_ns = pv
            .pointer("/spec/claimRef/namespace")
            .and_then(Value::as_str);
        let claim = pv.pointer("/spec/claimRef/name").and_then(Value::as_str);
        match (claim_ns, claim) {
            (Some(ns), Some(claim)) => self.used_by_pods(node, ns, Kind::Claim, claim),
            _ => false,
        }
    }

    /// `Some(decision)` when the Node authorizer has an opinion about a node's request
    /// (it only ever allows), `None` for everyone else and for what it does not allow.
    pub fn authorize(&self, attrs: &Attributes) -> Option<Decision> {
        let node = node_name(&attrs.user)?;
        let allow = || Some(Decision::allow(""));
        if !attrs.resource_request {
            return self
                .rules
                .iter()
                .any(|r| r.allows(attrs))
                .then(Decision::default_allow);
        }
        let (verb, ns, name) = (
            attrs.verb.as_str(),
            attrs.namespace.as_str(),
            attrs.name.as_str(),
        );
        let read = matches!(verb, "get" | "list" | "watch");
        match (attrs.api_group.as_str(), attrs.resource.as_str()) {
            // Reads of one object (a list or watch narrowed to it by name counts as
            // that object).
            ("", "secrets") if read && attrs.subresource.is_empty() => self
                .used_by_pods(node, ns, Kind::Secret, name)
                .then(Decision::default_allow),
            ("", "configmaps") if read && attrs.subresource.is_empty() => self
                .used_by_pods(node, ns, Kind::ConfigMap, name)
                .then(Decision::default_allow),
            ("", "secrets" | "configmaps") => None,
            ("", "persistentvolumeclaims") => match (verb, attrs.subresource.as_str()) {
                ("get", "") => self
                    .used_by_pods(node, ns, Kind::Claim, name)
                    .then(Decision::default_allow),
                ("get" | "update" | "patch", "status") => self
                    .used_by_pods(node, ns, Kind::Claim, name)
                    .then(Decision::default_allow),
                _ => None,
            },
            ("", "persistentvolumes") => {
                (verb == "get" && attrs.subresource.is_empty() && self.volume_used(node, name))
                    .then(Decision::default_allow)
            }
            ("", "serviceaccounts") => (verb == "create"
                && attrs.subresource == "token"
                && self.used_by_pods(node, ns, Kind::Account, name))
            .then(Decision::default_allow),
            ("coordination.k8s.io", "leases") => {
                let ok = matches!(verb, "get" | "create" | "update" | "patch" | "delete")
                    && ns == NODE_LEASE_NAMESPACE
                    && (verb == "create" || name == node);
                ok.then(Decision::default_allow)
            }
            ("", "pods") if attrs.subresource.is_empty() && read => {
                if verb == "get" {
                    let key = format!("/registry/core/pods/{ns}/{name}");
                    let bound = self.cache.get(&key).is_some_and(|p| {
                        p.value().pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                    });
                    return bound.then(Decision::default_allow);
                }
                // list/watch: only its own pods (`AuthorizeNodeWithSelectors`).
                let own = attrs.field_selector.split(',').any(|t| {
                    t == format!("spec.nodeName={node}") || t == format!("spec.nodeName=={node}")
                });
                own.then(Decision::default_allow)
            }
            _ => {
                if self.rules.iter().any(|r| r.allows(attrs)) {
                    allow()
                } else {
                    None
                }
            }
        }
    }
}

impl Decision {
    fn default_allow() -> Self {
        Decision::allow("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_reference_what_they_mount_and_read() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "serviceAccountName": "sa",
            "volumes": [
                {"name": "s", "secret": {"secretName": "vol-secret"}},
                {"name": "c", "projected": {"sources": [{"configMap": {"name": "proj-cm"}}]}},
                {"name": "d", "persistentVolumeClaim": {"claimName": "claim"}},
                {"name": "e", "ephemeral": {}},
            ],
            "containers": [{"name": "a",
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "env-cm"}}]}],
        }});
        for (kind, name) in [
            (Kind::Secret, "vol-secret"),
            (Kind::Secret, "env-secret"),
            (Kind::ConfigMap, "proj-cm"),
            (Kind::ConfigMap, "env-cm"),
            (Kind::Claim, "claim"),
            (Kind::Claim, "p-e"),
            (Kind::Account, "sa"),
        ] {
            assert!(references(&pod, kind, name), "{kind:?} {name}");
        }
        assert!(!references(&pod, Kind::Secret, "proj-cm"));
        assert!(!references(&pod, Kind::ConfigMap, "other"));
    }

    #[test]
    fn node_identities() {
        let user = |name: &str, groups: &[&str]| UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..UserInfo::default()
        };
        assert_eq!(
            node_name(&user("system:node:a", &["system:nodes"])),
            Some("a")
        );
        assert_eq!(node_name(&user("system:node:a", &[])), None);
        assert_eq!(node_name(&user("alice", &["system:nodes"])), None);
    }
}
