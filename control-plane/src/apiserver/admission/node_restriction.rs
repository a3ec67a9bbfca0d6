//! NodeRestriction admission (`plugin/pkg/admission/noderestriction`): what a node
//! (`system:node:<name>`) may write, beyond what the Node authorizer lets it ask. It
//! may create only mirror pods bound to itself that use no Secrets, ConfigMaps,
//! claims or ServiceAccounts; delete, evict and update the status of only pods bound to
//! itself; create and change only its own Node, without setting or changing
//! `node-restriction.kubernetes.io/` labels or (after creation) its taints; create only
//! its own Lease; create, update and delete only PersistentVolumes whose node affinity
//! pins them to itself (berth's addition: its agent provisions its node's volumes);
//! and request ServiceAccount tokens only bound to its own pods. Denials
//! are 403s worded as upstream's. Entry points: [`admit_create`], [`admit_update`],
//! [`admit_delete`], [`admit_token`].

use serde_json::Value;

use crate::apiserver::auth::UserInfo;
use crate::apiserver::authz::forbidden_error;
use crate::apiserver::authz::node::node_name;
use crate::apiserver::object;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::status::ApiError;

const MIRROR: &str = "kubernetes.io/config.mirror";
const RESTRICTED_PREFIX: &str = "node-restriction.kubernetes.io/";

fn forbidden(def: &ResourceDef, name: &str, why: String) -> ApiError {
    forbidden_error(&def.group, &def.plural, name, &why)
}

fn bound_to(pod: &Value) -> &str {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Labels under `node-restriction.kubernetes.io/` that differ between `old` and `new`.
fn restricted_label_changes(old: Option<&Value>, new: &Value) -> Vec<String> {
    let labels = |o: Option<&Value>| {
        o.and_then(|o| o.pointer("/metadata/labels"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (before, after) = (labels(old), labels(Some(new)));
    let mut changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| {
            k.split_once('/')
                .is_some_and(|(prefix, _)| format!("{prefix}/").ends_with(RESTRICTED_PREFIX))
                && before.get(*k) != after.get(*k)
        })
        .cloned()
        .collect();
    changed.sort();
    changed.dedup();
    changed
}

/// Whether a mirror pod's spec names Secrets, ConfigMaps, claims or an account.
fn pod_references(spec: &Value) -> Option<&'static str> {
    let has = |ptr: &str| {
        spec.pointer(ptr)
            .and_then(Value::as_array)
            .is_some_and(|l| !l.is_empty())
    };
    let volumes = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for v in volumes {
        if v.get("secret").is_some() {
            return Some("secrets");
        }
        if v.get("configMap").is_some() {
            return Some("configmaps");
        }
        if v.get("persistentVolumeClaim").is_some() || v.get("ephemeral").is_some() {
            return Some("persistentvolumeclaims");
        }
        for s in v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if s.get("secret").is_some() {
                return Some("secrets");
            }
            if s.get("configMap").is_some() {
                return Some("configmaps");
            }
            if s.get("serviceAccountToken").is_some() {
                return Some("serviceaccounts");
            }
        }
    }
    if has("/imagePullSecrets") {
        return Some("secrets");
    }
    for key in ["/containers", "/initContainers", "/ephemeralContainers"] {
        for c in spec
            .pointer(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                if e.pointer("/valueFrom/secretKeyRef").is_some() {
                    return Some("secrets");
                }
                if e.pointer("/valueFrom/configMapKeyRef").is_some() {
                    return Some("configmaps");
                }
            }
            for f in c
                .get("envFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if f.get("secretRef").is_some() {
                    return Some("secrets");
                }
                if f.get("configMapRef").is_some() {
                    return Some("configmaps");
                }
            }
        }
    }
    let account = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    (!account.is_empty()).then_some("serviceaccounts")
}

/// Whether every term of the PersistentVolume's required node affinity selects only
/// `node` (an `In` expression whose one value is the node's name: the node's topology
/// label as a node-local CSI driver sets it, or `kubernetes.io/hostname`).
fn volume_pinned_to(volume: &Value, node: &str) -> bool {
    let terms = volume
        .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
        .and_then(Value::as_array);
    terms.is_some_and(|terms| {
        !terms.is_empty()
            && terms.iter().all(|t| {
                t.get("matchExpressions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|e| {
                        e.get("operator").and_then(Value::as_str) == Some("In")
                            && e.get("values")
                                .and_then(Value::as_array)
                                .is_some_and(|v| v.len() == 1 && v[0].as_str() == Some(node))
                    })
            })
    })
}

fn volume_forbidden(def: &ResourceDef, name: &str, node: &str, verb: &str) -> ApiError {
    forbidden(
        def,
        name,
        format!(
            "node \"{node}\" can only {verb} persistentvolumes whose node affinity pins them to itself"
        ),
    )
}

/// Creates by a node.
pub fn admit_create(
    user: Option<&UserInfo>,
    def: &ResourceDef,
    obj: &Value,
) -> Result<(), ApiError> {
    let Some(node) = user.and_then(node_name) else {
        return Ok(());
    };
    let name = object::name(obj);
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => {
            let mirror = obj
                .pointer("/metadata/annotations")
                .and_then(Value::as_object)
                .is_some_and(|a| a.contains_key(MIRROR));
            if !mirror {
                return Err(forbidden(
                    def,
                    name,
                    format!(
                        "pod does not have \"{MIRROR}\" annotation, node \"{node}\" can only create mirror pods"
                    ),
                ));
            }
            if bound_to(obj) != node {
                return Err(forbidden(
                    def,
                    name,
                    format!(
                        "node \"{node}\" can only create pods with spec.nodeName set to itself"
                    ),
                ));
            }
            if let Some(what) = obj.get("spec").and_then(pod_references) {
                return Err(forbidden(
                    def,
                    name,
                    format!("node \"{node}\" can not create pods that reference {what}"),
                ));
            }
            let foreign_owner = obj
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|o| {
                    o.get("kind").and_then(Value::as_str) != Some("Node")
                        || o.get("name").and_then(Value::as_str) != Some(node)
                });
            if foreign_owner {
                return Err(forbidden(
                    def,
                    name,
                    format!(
                        "node \"{node}\" can only create pods with an owner reference set to itself"
                    ),
                ));
            }
            Ok(())
        }
        ("", "Node") => {
            if name != node {
                return Err(forbidden(
                    def,
                    name,
                    format!("node \"{node}\" is not allowed to modify node \"{name}\""),
                ));
            }
            let labels = restricted_label_changes(None, obj);
            if !labels.is_empty() {
                return Err(forbidden(
                    def,
                    name,
                    format!(
                        "node \"{node}\" is not allowed to set the following labels: {}",
                        labels.join(", ")
                    ),
                ));
            }
            Ok(())
        }
        ("coordination.k8s.io", "Lease") if name != node => Err(forbidden(
            def,
            name,
            "can only access node lease with the same name as the requesting node".into(),
        )),
        // berth's agent provisions its node's volumes: only volumes on itself.
        ("", "PersistentVolume") if !volume_pinned_to(obj, node) => {
            Err(volume_forbidden(def, name, node, "create"))
        }
        _ => Ok(()),
    }
}

/// Updates (main resource and subresources) by a node.
pub fn admit_update(
    user: Option<&UserInfo>,
    def: &ResourceDef,
    status: bool,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let Some(node) = user.and_then(node_name) else {
        return Ok(());
    };
    let name = object::name(old);
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Node") => {
            if name != node {
                return Err(forbidden(
                    def,
                    name,
                    format!("node \"{node}\" is not allowed to modify node \"{name}\""),
                ));
            }
            let labels = restricted_label_changes(Some(old), new);
            if !labels.is_empty() {
                return Err(forbidden(
                    def,
                    name,
                    format!(
                        "node \"{node}\" is not allowed to modify labels: {}",
                        labels.join(", ")
                    ),
                ));
            }
            if !status && old.pointer("/spec/taints") != new.pointer("/spec/taints") {
                return Err(forbidden(
                    def,
                    name,
                    format!("node \"{node}\" is not allowed to modify taints"),
                ));
            }
            Ok(())
        }
        ("", "Pod") if status => {
            if bound_to(old) != node {
                return Err(forbidden(
                    def,
                    name,
                    format!(
                        "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                    ),
                ));
            }
            Ok(())
        }
        ("", "Pod") => Err(forbidden(
            def,
            name,
            format!(
                "unexpected operation \"UPDATE\", node \"{node}\" can only create and delete mirror pods"
            ),
        )),
        ("", "PersistentVolume")
            if !volume_pinned_to(old, node) || !volume_pinned_to(new, node) =>
        {
            Err(volume_forbidden(def, name, node, "update"))
        }
        _ => Ok(()),
    }
}

/// Deletes (`verb` `delete` or `evict`) by a node.
pub fn admit_delete(
    user: Option<&UserInfo>,
    def: &ResourceDef,
    obj: &Value,
    evict: bool,
) -> Result<(), ApiError> {
    let Some(node) = user.and_then(node_name) else {
        return Ok(());
    };
    if def.group.is_empty() && def.kind == "PersistentVolume" && !volume_pinned_to(obj, node) {
        return Err(volume_forbidden(def, object::name(obj), node, "delete"));
    }
    if def.group.is_empty() && def.kind == "Pod" && bound_to(obj) != node {
        let verb = if evict { "evict" } else { "delete" };
        return Err(forbidden(
            def,
            object::name(obj),
            format!("node \"{node}\" can only {verb} pods with spec.nodeName set to itself"),
        ));
    }
    Ok(())
}

/// A TokenRequest by a node: bound to a pod of its own.
pub fn admit_token(
    user: Option<&UserInfo>,
    def: &ResourceDef,
    namespace: &str,
    account: &str,
    request: &Value,
    pod: impl Fn(&str) -> Option<Value>,
) -> Result<(), ApiError> {
    let Some(node) = user.and_then(node_name) else {
        return Ok(());
    };
    // berth's one exception: the NetworkPolicy identity agents run their policy
    // watch as (crate::apiserver::authz::node::NETWORK_POLICY_ACCOUNT), not tied to
    // any pod.
    if namespace == "kube-system"
        && account == crate::apiserver::authz::node::NETWORK_POLICY_ACCOUNT
    {
        return Ok(());
    }
    let bound = request.pointer("/spec/boundObjectRef");
    if bound.and_then(|b| b.get("kind")).and_then(Value::as_str) != Some("Pod") {
        return Err(forbidden(
            def,
            account,
            "node requested token not bound to a pod".into(),
        ));
    }
    let pod_name = bound
        .and_then(|b| b.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    match pod(pod_name) {
        Some(p) if bound_to(&p) == node => {
            let uid = bound
                .and_then(|b| b.get("uid"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !uid.is_empty() && object::meta_str(&p, "uid") != Some(uid) {
                return Err(forbidden(
                    def,
                    account,
                    format!(
                        "the UID in the bound object reference ({uid}) does not match the UID in record"
                    ),
                ));
            }
            Ok(())
        }
        Some(_) => Err(forbidden(
            def,
            account,
            "node requested token bound to a pod scheduled on a different node".into(),
        )),
        None => Err(forbidden(
            def,
            account,
            format!("pod \"{pod_name}\" not found"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restricted_labels_are_found() {
        let old =
            json!({"metadata": {"labels": {"a": "1", "node-restriction.kubernetes.io/x": "1"}}});
        let new = json!({"metadata": {"labels": {"a": "2", "node-restriction.kubernetes.io/y": "1", "sub.node-restriction.kubernetes.io/z": "1"}}});
        assert_eq!(
            restricted_label_changes(Some(&old), &new),
            [
                "node-restriction.kubernetes.io/x",
                "node-restriction.kubernetes.io/y",
                "sub.node-restriction.kubernetes.io/z"
            ]
        );
    }

    #[test]
    fn mirror_pods_may_not_reference_secrets_or_accounts() {
        assert_eq!(
            pod_references(&json!({"containers": [{"name": "c"}]})),
            None
        );
        assert_eq!(
            pod_references(&json!({"serviceAccountName": "default"})),
            Some("serviceaccounts")
        );
        assert_eq!(
            pod_references(&json!({"volumes": [{"name": "s", "secret": {"secretName": "x"}}]})),
            Some("secrets")
        );
    }

    #[test]
    fn nodes_touch_only_volumes_pinned_to_themselves() {
        let pinned = |key: &str, values: Value| {
            json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": key, "operator": "In", "values": values}]}
            ]}}}})
        };
        assert!(volume_pinned_to(
            &pinned("topology.berth.io/node", json!(["n1"])),
            "n1"
        ));
        assert!(volume_pinned_to(
            &pinned("kubernetes.io/hostname", json!(["n1"])),
            "n1"
        ));
        assert!(!volume_pinned_to(
            &pinned("topology.berth.io/node", json!(["n2"])),
            "n1"
        ));
        assert!(!volume_pinned_to(
            &pinned("topology.berth.io/node", json!(["n1", "n2"])),
            "n1"
        ));
        assert!(!volume_pinned_to(&json!({"spec": {}}), "n1"));
        let two_terms = json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "k", "operator": "In", "values": ["n1"]}]},
            {"matchExpressions": [{"key": "k", "operator": "Exists"}]},
        ]}}}});
        assert!(!volume_pinned_to(&two_terms, "n1"));
    }
}
