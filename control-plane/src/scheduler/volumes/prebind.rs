//! VolumeBinding's PreBind (upstream's `BindPodVolumes`), run in the pod's bind task
//! before the Binding is created: each chosen static volume gets the claim in its
//! `claimRef`, each claim to provision gets `volume.kubernetes.io/selected-node`; then
//! it waits (up to upstream's 600 s bindTimeout) until the binder and the provisioner
//! have bound every one of them. A claim that loses its selected-node annotation (the
//! provisioner's way to say it failed on that node), a volume whose claimRef is reset
//! and a pod deleted meanwhile end the wait with an error; the pod is then scheduled
//! again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Action, fully_bound};
use crate::controllers::volume::{BOUND_BY_CONTROLLER, SELECTED_NODE};

/// How long PreBind waits for the claims to be bound (kube-scheduler's default
/// `bindTimeoutSeconds`).
pub const BIND_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the caches are looked at when no change wakes the wait first.
const POLL: Duration = Duration::from_millis(50);

/// The caches PreBind reads, and a notification each time a claim or volume changes.
#[derive(Clone)]
pub struct Watch {
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub pods: Store<Pod>,
    pub changed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// An action made in the API, with the resourceVersion the update returned (the
/// caches are not read until they have caught up with it).
struct Done {
    action: Action,
    version: String,
}

/// Makes the API updates for `actions` and waits for the claims to be bound; the
/// error is the message of the scheduling failure.
pub async fn bind_volumes(
    client: &kube::Client,
    pod: &Pod,
    node: &str,
    actions: Vec<Action>,
    watch: &Watch,
    timeout: Duration,
) -> Result<(), String> {
    let mut done = Vec::with_capacity(actions.len());
    for action in actions {
        let version = update(client, &action, node)
            .await
            .map_err(|e| e.to_string())?;
        done.push(Done { action, version });
    }
    let deadline = Instant::now() + timeout;
    loop {
        let notified = watch.changed.notified();
        match check(pod, node, &done, watch) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(format!("binding volumes: {e}")),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err("binding volumes: context deadline exceeded".to_owned());
        }
        let wait = POLL.min(deadline - now);
        let _ = tokio::time::timeout(wait, notified).await;
    }
}

/// `bindAPIUpdate` for one action.
async fn update(client: &kube::Client, action: &Action, node: &str) -> Result<String, kube::Error> {
    match action {
        Action::Bind { claim, volume } => {
            let mut pv = (**volume).clone();
            let spec = pv.spec.get_or_insert_with(Default::default);
            spec.claim_ref = Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
                ..Default::default()
            });
            pv.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(BOUND_BY_CONTROLLER.into(), "yes".into());
            let name = pv.metadata.name.clone().unwrap_or_default();
            let api: Api<PersistentVolume> = Api::all(client.clone());
            let new = api.replace(&name, &PostParams::default(), &pv).await?;
            Ok(new.metadata.resource_version.unwrap_or_default())
        }
        Action::Provision { claim } => {
            let mut pvc = (**claim).clone();
            pvc.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(SELECTED_NODE.into(), node.into());
            let ns = pvc.metadata.namespace.clone().unwrap_or_default();
            let name = pvc.metadata.name.clone().unwrap_or_default();
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            let new = api.replace(&name, &PostParams::default(), &pvc).await?;
            Ok(new.metadata.resource_version.unwrap_or_default())
        }
    }
}

/// The cache's object is older than the version our update made.
fn stale(cached: Option<&str>, ours: &str) -> bool {
    match (
        cached.and_then(|c| c.parse::<u64>().ok()),
        ours.parse::<u64>(),
    ) {
        (Some(c), Ok(o)) => c < o,
        _ => false,
    }
}

/// `checkBindings`: `Ok(true)` once every claim is bound, `Ok(false)` to wait more.
fn check(pod: &Pod, node: &str, done: &[Done], watch: &Watch) -> Result<bool, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let current = watch.pods.get(&ObjectRef::new(name).within(ns));
    if current.is_none_or(|p| p.metadata.uid != pod.metadata.uid) {
        return Err(format!(
            "pod does not exist any more: pods \"{name}\" not found"
        ));
    }
    let claim_of = |c: &PersistentVolumeClaim| {
        let cns = c.metadata.namespace.as_deref().unwrap_or_default();
        let cname = c.metadata.name.as_deref().unwrap_or_default();
        watch
            .claims
            .get(&ObjectRef::new(cname).within(cns))
            .filter(|x| x.metadata.uid == c.metadata.uid)
    };
    for d in done {
        match &d.action {
            Action::Bind { claim, volume } => {
                let pv_name = volume.metadata.name.as_deref().unwrap_or_default();
                let Some(pv) = watch.volumes.get(&ObjectRef::new(pv_name)) else {
                    return Err(format!(
                        "failed to check binding: persistentvolume \"{pv_name}\" not found"
                    ));
                };
                let claim_name = claim.metadata.name.as_deref().unwrap_or_default();
                let Some(pvc) = claim_of(claim) else {
                    return Err(format!(
                        "failed to check binding: persistentvolumeclaim \"{claim_name}\" not found"
                    ));
                };
                if stale(pv.metadata.resource_version.as_deref(), &d.version) {
                    return Ok(false);
                }
                let reset = pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .is_none_or(|r| r.uid.as_deref().is_none_or(str::is_empty));
                if reset {
                    return Err(format!("ClaimRef got reset for pv \"{pv_name}\""));
                }
                if !fully_bound(&pvc) {
                    return Ok(false);
                }
            }
            Action::Provision { claim } => {
                let claim_name = claim.metadata.name.as_deref().unwrap_or_default();
                let Some(pvc) = claim_of(claim) else {
                    return Err(format!(
                        "failed to check provisioning pvc: persistentvolumeclaim \"{claim_name}\" not found"
                    ));
                };
                if stale(pvc.metadata.resource_version.as_deref(), &d.version) {
                    return Ok(false);
                }
                let Some(annotations) = pvc.metadata.annotations.as_ref() else {
                    return Err(format!(
                        "selectedNode annotation reset for PVC \"{claim_name}\""
                    ));
                };
                if annotations.get(SELECTED_NODE).map(String::as_str) != Some(node) {
                    // The provisioner removes the annotation when it cannot provision
                    // on that node: schedule again.
                    return Err(format!("provisioning failed for PVC \"{claim_name}\""));
                }
                if !fully_bound(&pvc) {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::stale;

    #[test]
    fn an_older_cached_version_is_stale() {
        assert!(stale(Some("9"), "10"));
        assert!(!stale(Some("10"), "10"));
        assert!(!stale(Some("11"), "10"));
        assert!(!stale(None, "10"));
    }
}
