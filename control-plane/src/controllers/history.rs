//! ControllerRevisions: the history of a StatefulSet's or DaemonSet's pod template, as
//! kube-controller-manager keeps it. Each revision stores the strategic-merge patch
//! `{"spec":{"template":{…,"$patch":"replace"}}}` that `kubectl rollout undo` applies,
//! is named `<owner>-<hash>` and numbered; the pods of a revision carry its name in
//! the `controller-revision-hash` label. Going back to an old template renumbers its
//! revision instead of making a copy; history beyond `revisionHistoryLimit` is pruned.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use serde_json::{Value, json};

use super::pods;

/// The label naming a pod's revision.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// FNV-1a (32 bit) of `bytes` and the collision count, its decimal digits spelled in
/// the alphabet of generated names (Kubernetes' pod-template-hash and revision hash).
pub fn name_hash(bytes: &[u8], collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(bytes);
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|d| ALPHABET[usize::from(d - b'0') % ALPHABET.len()] as char)
        .collect()
}

/// The patch a revision of `template` stores.
pub fn patch_of(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The pod template a revision stores.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = revision.data.0.pointer("/spec/template")?.clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// What an owner (StatefulSet or DaemonSet) tells [`sync`] about itself.
#[derive(Debug)]
pub struct Owner<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub meta: &'a ObjectMeta,
    pub template: &'a PodTemplateSpec,
    pub collision_count: Option<i32>,
    pub history_limit: i32,
}

/// The owner's revisions after a sync.
#[derive(Debug)]
pub struct Revisions {
    /// The revision of the current template.
    pub update: ControllerRevision,
    /// Every revision the owner has, oldest first.
    pub all: Vec<ControllerRevision>,
    /// The collision count, raised when a hash collided with another template.
    pub collision_count: Option<i32>,
}

/// The revisions the owner controls, oldest first.
pub fn owned(store: &Store<ControllerRevision>, meta: &ObjectMeta) -> Vec<ControllerRevision> {
    let uid = meta.uid.as_deref().unwrap_or_default();
    let mut all: Vec<ControllerRevision> = store
        .state()
        .into_iter()
        .filter(|r| {
            r.metadata.namespace == meta.namespace
                && pods::controller_ref(&r.metadata).is_some_and(|c| c.uid == uid)
        })
        .map(|r| (*r).clone())
        .collect();
    all.sort_by_key(|r| r.revision.unwrap_or(0));
    all
}

/// Makes sure a revision of the owner's current template exists and is the newest,
/// creating or renumbering one.
pub async fn sync(
    client: &Client,
    store: &Store<ControllerRevision>,
    owner: &Owner<'_>,
) -> Result<Revisions, kube::Error> {
    let ns = owner.meta.namespace.as_deref().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let mut all = owned(store, owner.meta);
    let data = patch_of(owner.template);
    let next = all.last().map_or(1, |r| r.revision.unwrap_or(0) + 1);
    let mut collision_count = owner.collision_count;
    let update = match all.iter().rposition(|r| r.data.0 == data) {
        Some(i) if i + 1 == all.len() => all[i].clone(),
        Some(i) => {
            // Back to an older template: its revision becomes the newest.
            let name = all[i].metadata.name.clone().unwrap_or_default();
            let patch = Patch::Merge(json!({"revision": next}));
            let r = api.patch(&name, &PatchParams::default(), &patch).await?;
            all[i] = r.clone();
            all.sort_by_key(|r| r.revision.unwrap_or(0));
            r
        }
        None => loop {
            let owner_name = owner.meta.name.as_deref().unwrap_or_default();
            let bytes = serde_json::to_vec(&data).unwrap_or_default();
            let hash = name_hash(&bytes, collision_count);
            let revision = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(format!("{owner_name}-{hash}")),
                    namespace: Some(ns.to_owned()),
                    labels: Some(
                        owner
                            .template
                            .metadata
                            .as_ref()
                            .and_then(|m| m.labels.clone())
                            .unwrap_or_default()
                            .into_iter()
                            .chain([(HASH_LABEL.to_owned(), hash.clone())])
                            .collect(),
                    ),
                    annotations: owner.meta.annotations.clone(),
                    owner_references: Some(vec![pods::owner_ref(
                        owner.api_version,
                        owner.kind,
                        owner.meta,
                    )]),
                    ..Default::default()
                },
                data: RawExtension(data.clone()),
                revision: Some(next),
            };
            match api.create(&PostParams::default(), &revision).await {
                Ok(r) => {
                    all.push(r.clone());
                    break r;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let existing = api.get(&format!("{owner_name}-{hash}")).await?;
                    let ours = pods::controller_ref(&existing.metadata)
                        .is_some_and(|c| Some(&c.uid) == owner.meta.uid.as_ref());
                    if ours && existing.data.0 == data {
                        // Ours, made by a sync whose result the cache has not shown yet.
                        all.retain(|r| r.metadata.name != existing.metadata.name);
                        all.push(existing.clone());
                        break existing;
                    }
                    collision_count = Some(collision_count.unwrap_or(0) + 1);
                }
                Err(e) => return Err(e),
            }
        },
    };
    Ok(Revisions {
        update,
        all,
        collision_count,
    })
}

/// Deletes the oldest revisions beyond the owner's history limit that no live pod
/// and neither the current nor the update revision uses.
pub async fn prune(
    client: &Client,
    owner: &Owner<'_>,
    revisions: &[ControllerRevision],
    in_use: &HashSet<String>,
) -> Result<(), kube::Error> {
    let ns = owner.meta.namespace.as_deref().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let unused: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| !in_use.contains(r.metadata.name.as_deref().unwrap_or_default()))
        .collect();
    let limit = usize::try_from(owner.history_limit.max(0)).unwrap_or(0);
    let excess = unused.len().saturating_sub(limit);
    for r in unused.into_iter().take(excess) {
        let name = r.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The revision name a pod carries.
pub fn pod_revision(meta: &ObjectMeta) -> Option<&str> {
    meta.labels.as_ref()?.get(HASH_LABEL).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_patches_round_trip_their_template() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .expect("template");
        let data = patch_of(&t);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let r = ControllerRevision {
            data: RawExtension(data),
            ..Default::default()
        };
        assert_eq!(template_of(&r), Some(t));
        let h = name_hash(b"x", None);
        assert_ne!(h, name_hash(b"x", Some(1)));
        assert!(h.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
