//! The ServiceAccount admission plugin (`plugin/pkg/admission/serviceaccount`): a pod
//! being created runs as `spec.serviceAccountName` (`default` when it names none),
//! which must exist — a missing account is a 403 worded as kube-apiserver's — and,
//! unless `automountServiceAccountToken: false` on the pod or (when the pod does not
//! say) on the account, gets the `kube-api-access-<5 chars>` projected volume (a
//! bound token, the `kube-root-ca.crt` ConfigMap's `ca.crt`, the namespace) mounted
//! read-only at `/var/run/secrets/kubernetes.io/serviceaccount` in every container,
//! init container and ephemeral container that does not already mount that path.
//! Mirror pods (static pods the agent reports) may not name secrets through their
//! account and get nothing. Entry point: [`admit`].

use std::time::Duration;

use serde_json::{Value, json};

use crate::apiserver::object;
use crate::apiserver::status::ApiError;
use crate::apiserver::watch_cache::WatchCache;

/// Where the token, `ca.crt` and `namespace` appear in a container.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The prefix of the projected volume's name.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap the root CA publisher keeps in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The token's lifetime: an hour and 7 s, kube-apiserver's `warnOnlyBoundTokenExpiration`
/// marker value, so the kubelet refreshes it well before.
const TOKEN_EXPIRATION: i64 = 3607;
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const DEFAULT: &str = "default";

fn account_key(ns: &str, name: &str) -> String {
    format!("/registry/core/serviceaccounts/{ns}/{name}")
}

/// The ServiceAccount `ns/name`, waiting briefly for `default` as kube-apiserver does
/// (up to 10 lookups 100–200 ms apart: the ServiceAccount controller makes it right
/// after the namespace).
async fn account(cache: &WatchCache, ns: &str, name: &str) -> Option<Value> {
    let attempts = if name == DEFAULT { 10 } else { 1 };
    for i in 0..attempts {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        if let Some(sa) = cache.get(&account_key(ns, name)) {
            return Some(sa.value().clone());
        }
    }
    None
}

/// The projected volume kube-apiserver adds (`TokenVolumeSource` in the plugin).
fn volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
            "defaultMode": 420,
        },
    })
}

fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// Whether any volume or env of `spec` reads a Secret (`VisitPodSecretNames`).
fn uses_secrets(spec: &Value) -> bool {
    let volumes = spec.get("volumes").and_then(Value::as_array);
    let volume_hit = volumes.into_iter().flatten().any(|v| {
        v.get("secret").is_some()
            || v.pointer("/projected/sources")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|s| s.get("secret").is_some())
    });
    let pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty());
    let env_hit = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .any(|c| {
            let mut env = c.get("env").and_then(Value::as_array).into_iter().flatten();
            let mut from = c
                .get("envFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            env.any(|e| e.pointer("/valueFrom/secretKeyRef").is_some())
                || from.any(|f| f.get("secretRef").is_some())
        });
    volume_hit || pull_secrets || env_hit
}

fn uses_token_projection(spec: &Value) -> bool {
    spec.get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.pointer("/projected/sources").and_then(Value::as_array))
        .flatten()
        .any(|s| s.get("serviceAccountToken").is_some())
}

/// Admits the pod `pod` (being created in `ns`).
pub async fn admit(cache: &WatchCache, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
    let name = object::name(pod).to_owned();
    let forbidden =
        |msg: String| ApiError::forbidden(format!("pods \"{name}\" is forbidden: {msg}"));
    if is_mirror(pod) {
        let Some(spec) = pod.get("spec") else {
            return Ok(());
        };
        let account = spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !account.is_empty() {
            return Err(forbidden(
                "a mirror pod may not reference service accounts".into(),
            ));
        }
        if uses_secrets(spec) {
            return Err(forbidden("a mirror pod may not reference secrets".into()));
        }
        if uses_token_projection(spec) {
            return Err(forbidden(
                "a mirror pod may not use ServiceAccountToken volume projections".into(),
            ));
        }
        return Ok(());
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let account_name = match spec.get("serviceAccountName").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => {
            // The deprecated `serviceAccount` field, when it alone is set.
            match spec.get("serviceAccount").and_then(Value::as_str) {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => DEFAULT.to_owned(),
            }
        }
    };
    spec.insert("serviceAccountName".into(), json!(account_name));
    let Some(account) = account(cache, ns, &account_name).await else {
        return Err(forbidden(format!(
            "error looking up service account {ns}/{account_name}: serviceaccount \"{account_name}\" not found"
        )));
    };
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            account
                .get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    mount_token(spec);
    Ok(())
}

/// Adds the projected volume and its mounts, unless every container already mounts
/// something at [`MOUNT_PATH`].
fn mount_token(spec: &mut serde_json::Map<String, Value>) {
    let keys = ["initContainers", "containers", "ephemeralContainers"];
    let mounts_path = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH))
    };
    let needs: bool = keys
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .any(|c| !mounts_path(c));
    if !needs {
        return;
    }
    let taken: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    // An existing kube-api-access volume (a pod re-created from a dump) is reused.
    let existing = taken.iter().find(|n| n.starts_with(VOLUME_PREFIX)).cloned();
    let volume_name = existing.clone().unwrap_or_else(|| {
        loop {
            let candidate = format!("{VOLUME_PREFIX}{}", object::random_suffix());
            if !taken.contains(&candidate) {
                break candidate;
            }
        }
    });
    if existing.is_none() {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if !volumes.is_array() {
            *volumes = json!([]);
        }
        if let Some(list) = volumes.as_array_mut() {
            list.push(volume(&volume_name));
        }
    }
    for key in keys {
        let Some(containers) = spec.get_mut(key).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut() {
            if mounts_path(c) {
                continue;
            }
            let Some(c) = c.as_object_mut() else { continue };
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            if !mounts.is_array() {
                *mounts = json!([]);
            }
            if let Some(list) = mounts.as_array_mut() {
                list.push(json!({"name": volume_name, "readOnly": true, "mountPath": MOUNT_PATH}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pod: Value) -> serde_json::Map<String, Value> {
        pod["spec"].as_object().cloned().expect("a spec")
    }

    #[test]
    fn every_container_mounts_one_projected_volume() {
        let mut s = spec(json!({"spec": {
            "initContainers": [{"name": "i", "image": "x"}],
            "containers": [{"name": "a", "image": "x"},
                {"name": "b", "image": "x", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]}],
            "volumes": [{"name": "own", "emptyDir": {}}],
        }}));
        mount_token(&mut s);
        let volumes = s["volumes"].as_array().expect("volumes");
        assert_eq!(volumes.len(), 2, "one volume added: {volumes:?}");
        let name = volumes[1]["name"].as_str().expect("a name");
        assert!(name.starts_with(VOLUME_PREFIX) && name.len() == VOLUME_PREFIX.len() + 5);
        assert_eq!(volumes[1], volume(name));
        assert_eq!(
            s["initContainers"][0]["volumeMounts"],
            json!([{"name": name, "readOnly": true, "mountPath": MOUNT_PATH}])
        );
        assert_eq!(s["containers"][0]["volumeMounts"][0]["name"], json!(name));
        assert_eq!(
            s["containers"][1]["volumeMounts"],
            json!([{"name": "own", "mountPath": MOUNT_PATH}]),
            "a container mounting the path itself is left alone"
        );
    }

    #[test]
    fn mirror_pods_may_not_use_secrets() {
        assert!(uses_secrets(
            &json!({"volumes": [{"name": "s", "secret": {"secretName": "x"}}]})
        ));
        assert!(uses_secrets(&json!({"containers": [{"name": "c",
            "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}}]}]})));
        assert!(!uses_secrets(
            &json!({"containers": [{"name": "c", "env": [{"name": "A", "value": "b"}]}]})
        ));
        assert!(uses_token_projection(&json!({"volumes": [{"name": "t",
            "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]})));
    }
}
