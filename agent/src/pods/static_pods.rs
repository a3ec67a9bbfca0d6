//! Static pods: manifests (YAML or JSON, one Pod per file) in `--pod-manifest-path`,
//! read every few seconds. Each becomes a pod of this node named `<name>-<node>`
//! whose uid is a hash of the manifest, node and source (a changed file is a new pod,
//! as with the kubelet), run by the same workers as API pods; a mirror pod (annotation
//! `kubernetes.io/config.mirror`) shows it in the apiserver and is recreated if
//! deleted there. Removing the file removes the pod and its mirror.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::Value;
use sha2::Digest;

pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// How often the manifest directory is read again (the kubelet's fileCheckFrequency
/// is 20 s; berth looks more often).
pub const CHECK_EVERY: Duration = Duration::from_secs(3);

/// Whether `pod` is the mirror of a static pod.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

fn uid_for(bytes: &[u8], node: &str, file: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(bytes);
    h.update(node.as_bytes());
    h.update(file.as_bytes());
    let d = h.finalize();
    let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Reads one manifest into the pod the node runs, or says why it cannot.
pub fn load(path: &Path, node: &str) -> Result<Pod, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let value: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    };
    if value.get("kind").and_then(Value::as_str) != Some("Pod") {
        return Err(format!("{}: not a Pod manifest", path.display()));
    }
    let mut pod: Pod =
        serde_json::from_value(value).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("{}: metadata.name is required", path.display()))?;
    let uid = uid_for(&bytes, node, &path.display().to_string());
    pod.metadata.name = Some(format!("{name}-{node}"));
    pod.metadata.namespace = Some(
        pod.metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
    );
    pod.metadata.uid = Some(uid.clone());
    let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(HASH_ANNOTATION.into(), uid);
    ann.insert(SOURCE_ANNOTATION.into(), "file".into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.to_owned());
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        c.image_pull_policy
            .get_or_insert_with(|| "IfNotPresent".into());
    }
    pod.status = None;
    Ok(pod)
}

/// Every static pod in `dir` (unreadable manifests are logged and skipped).
pub fn scan(dir: &Path, node: &str) -> Vec<Pod> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| match load(p, node) {
            Ok(pod) => Some(pod),
            Err(err) => {
                tracing::warn!(%err, "skipping a static pod manifest");
                None
            }
        })
        .collect()
}

/// Makes sure `pod`'s mirror exists in the apiserver with this pod's hash.
pub async fn ensure_mirror(client: &Client, pod: &Pod, node_uid: &str) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.clone().unwrap_or_default();
    let hash = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    // Listed with this node's selector, not read by name: the Node authorizer lets a
    // node read only pods bound to it, and a GET of a missing one is 403.
    let lp = ListParams::default().fields(&format!("spec.nodeName={node},metadata.name={name}"));
    match api.list(&lp).await.map(|l| l.items.into_iter().next()) {
        Ok(Some(existing)) => {
            let same = existing
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MIRROR_ANNOTATION))
                == Some(&hash);
            if same && existing.metadata.deletion_timestamp.is_none() {
                return;
            }
            delete_now(&api, &name).await;
        }
        Ok(None) => {}
        Err(err) => {
            tracing::debug!(%err, "reading a mirror pod");
            return;
        }
    }
    let mut mirror = pod.clone();
    mirror.metadata.uid = None;
    mirror.metadata.resource_version = None;
    mirror
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(MIRROR_ANNOTATION.into(), hash);
    mirror.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        uid: node_uid.to_owned(),
        controller: Some(true),
        ..Default::default()
    }]);
    if let Err(err) = api.create(&PostParams::default(), &mirror).await {
        tracing::warn!(%err, pod = %name, "creating the mirror pod");
    }
}

/// Removes the mirror of a static pod that is gone.
pub async fn delete_mirror(client: &Client, pod: &Arc<Pod>) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.clone().unwrap_or_default();
    delete_now(&Api::namespaced(client.clone(), ns), &name).await;
}

/// Deletes a mirror pod at once (nothing runs for it; the static pod is on the host).
async fn delete_now(api: &Api<Pod>, name: &str) {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let _ = api.delete(name, &dp).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_node_pods() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.yaml");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
        )
        .expect("write");
        let pod = load(&path, "n1").expect("load");
        assert_eq!(pod.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let uid = pod.metadata.uid.clone().expect("uid");
        assert_eq!(uid.len(), 36);
        assert_eq!(
            load(&path, "n1").expect("again").metadata.uid,
            Some(uid.clone())
        );
        std::fs::write(&path, "kind: Service\n").expect("write");
        assert!(load(&path, "n1").is_err());
        std::fs::write(&path, "kind: Pod\nmetadata: {}\n").expect("write");
        assert!(
            load(&path, "n1")
                .expect_err("no name")
                .contains("metadata.name")
        );
    }
}
