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

use super::{Attributes, Rule};
use crate::apiserver::auth::UserInfo;
use crate::apiserver::watch_cache::WatchCache;

pub const NODES_GROUP: &str = "system:nodes";
/// The ServiceAccount (in kube-system) agents enforce NetworkPolicy as: any node may
/// request its tokens (its role reads every pod, namespace and policy, which the node
/// identity may not).
pub const NETWORK_POLICY_ACCOUNT: &str = "berth-network-policy";
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

    /// `Ok(())` when the Node authorizer allows a node's request; `Err(reason)` when it
    /// has no opinion (the reason joins RBAC's in the 403, as upstream's union of
    /// authorizers words it); `None` for anyone who is not a node.
    pub fn authorize(&self, attrs: &Attributes) -> Option<Result<(), String>> {
        let node = node_name(&attrs.user)?;
        let static_rules = || {
            if self.rules.iter().any(|r| r.allows(attrs)) {
                Ok(())
            } else {
                Err(String::new())
            }
        };
        if !attrs.resource_request {
            return Some(static_rules());
        }
        let (verb, ns, name) = (
            attrs.verb.as_str(),
            attrs.namespace.as_str(),
            attrs.name.as_str(),
        );
        let read = matches!(verb, "get" | "list" | "watch");
        let related = |ok: bool| {
            if ok {
                Ok(())
            } else if name.is_empty() {
                Err("can only get individual resources of this type".to_owned())
            } else {
                Err(format!(
                    "no relationship found between node '{node}' and this object"
                ))
            }
        };
        let decision = match (attrs.api_group.as_str(), attrs.resource.as_str()) {
            // Reads of one object (a list or watch narrowed to it by name counts as
            // that object).
            ("", "secrets") if read && attrs.subresource.is_empty() => {
                related(self.used_by_pods(node, ns, Kind::Secret, name))
            }
            ("", "configmaps") if read && attrs.subresource.is_empty() => {
                related(self.used_by_pods(node, ns, Kind::ConfigMap, name))
            }
            ("", "secrets" | "configmaps") => Err("can only read resources of this type".into()),
            ("", "persistentvolumeclaims") => match (verb, attrs.subresource.as_str()) {
                ("get", "") | ("get" | "update" | "patch", "status") => {
                    related(self.used_by_pods(node, ns, Kind::Claim, name))
                }
                _ => Err("can only get a persistentvolumeclaim or update its status".into()),
            },
            ("", "persistentvolumes") if verb == "get" && attrs.subresource.is_empty() => {
                related(self.volume_used(node, name))
            }
            ("", "persistentvolumes") => {
                Err("can only get individual resources of this type".into())
            }
            ("", "serviceaccounts")
                if verb == "create"
                    && attrs.subresource == "token"
                    && ns == "kube-system"
                    && name == NETWORK_POLICY_ACCOUNT =>
            {
                Ok(())
            }
            ("", "serviceaccounts") if verb == "create" && attrs.subresource == "token" => {
                related(self.used_by_pods(node, ns, Kind::Account, name))
            }
            ("", "serviceaccounts") => {
                Err("can only create tokens for individual service accounts".into())
            }
            ("coordination.k8s.io", "leases") => {
                if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
                    Err("can only get, create, update, patch, or delete a node lease".into())
                } else if ns != NODE_LEASE_NAMESPACE {
                    Err("can only access leases in the kube-node-lease system namespace".into())
                } else if verb != "create" && name != node {
                    Err(
                        "can only access node lease with the same name as the requesting node"
                            .into(),
                    )
                } else {
                    Ok(())
                }
            }
            ("", "pods") if attrs.subresource.is_empty() && verb == "get" => {
                let key = format!("/registry/core/pods/{ns}/{name}");
                related(self.cache.get(&key).is_some_and(|p| {
                    p.value().pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                }))
            }
            ("", "pods") if attrs.subresource.is_empty() && read => {
                // list/watch: only its own pods (`AuthorizeNodeWithSelectors`).
                let own = attrs.field_selector.split(',').any(|t| {
                    t == format!("spec.nodeName={node}") || t == format!("spec.nodeName=={node}")
                });
                if own {
                    Ok(())
                } else {
                    Err("can only list/watch pods with spec.nodeName field selector".into())
                }
            }
            _ => static_rules(),
        };
        Some(decision)
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
