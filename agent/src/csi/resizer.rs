//! Volume expansion for this node's volumes — external-resizer (and the kubelet's
//! part of it) inside the agent: a Bound claim whose request grew past its capacity,
//! on a volume this driver made on this node, gets `ControllerExpandVolume`; the
//! PersistentVolume's capacity follows; then `NodeExpandVolume` on the published
//! volume when the driver asks for it, and the claim's `status.capacity` is set with
//! its resize conditions cleared. Events as upstream's: Resizing,
//! VolumeResizeSuccessful, VolumeResizeFailed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimCondition,
};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::reflector;

use super::provisioner::{Caches, bytes, on_this_node, quantity};
use super::{Driver, event, rpc_error};
use crate::pods::Ctx;

fn requested(claim: &PersistentVolumeClaim) -> i64 {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(bytes)
        .unwrap_or(0)
}

fn status_capacity(claim: &PersistentVolumeClaim) -> i64 {
    claim
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(bytes)
        .unwrap_or(0)
}

/// Watches claims and volumes; expands those that grew.
pub async fn run(ctx: Arc<Ctx>, driver: Arc<Driver>, caches: Caches) {
    if !driver.controller_expand && !driver.node_expand {
        return;
    }
    caches.ready().await;
    let wake = caches.resizer_wake();
    let (claims, volumes) = (caches.claims, caches.volumes);
    let mut retry: BTreeMap<String, (Instant, Duration)> = BTreeMap::new();
    loop {
        for claim in claims.state() {
            let want = requested(&claim);
            let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            if !bound
                || want <= status_capacity(&claim)
                || claim.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let Some(pv_name) = claim.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
                continue;
            };
            let Some(volume) = volumes.get(&reflector::ObjectRef::new(&pv_name)) else {
                continue;
            };
            let ours = volume
                .spec
                .as_ref()
                .and_then(|s| s.csi.as_ref())
                .is_some_and(|c| c.driver == driver.name)
                && on_this_node(&driver, &volume);
            if !ours {
                continue;
            }
            let key = format!(
                "{}/{}",
                claim.metadata.namespace.as_deref().unwrap_or_default(),
                claim.metadata.name.as_deref().unwrap_or_default()
            );
            if retry.get(&key).is_some_and(|(at, _)| *at > Instant::now()) {
                continue;
            }
            match expand(&ctx, &driver, &claim, &volume, want).await {
                Ok(()) => {
                    retry.remove(&key);
                }
                Err(()) => {
                    let delay = retry.get(&key).map_or(Duration::from_secs(1), |(_, d)| {
                        (*d * 2).min(Duration::from_secs(300))
                    });
                    retry.insert(key, (Instant::now() + delay, delay));
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
    }
}

fn condition(type_: &str, message: Option<&str>) -> PersistentVolumeClaimCondition {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    PersistentVolumeClaimCondition {
        type_: type_.into(),
        status: "True".into(),
        last_transition_time: Some(now.clone()),
        last_probe_time: None,
        message: message.map(str::to_owned),
        reason: None,
    }
}

async fn expand(
    ctx: &Ctx,
    driver: &Driver,
    claim: &PersistentVolumeClaim,
    volume: &PersistentVolume,
    want: i64,
) -> Result<(), ()> {
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let pv_name = volume.metadata.name.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(csi) = volume.spec.as_ref().and_then(|s| s.csi.clone()) else {
        return Ok(());
    };
    let pv_size = volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(bytes)
        .unwrap_or(0);
    // 1. The claim says it is resizing.
    let mut resizing = claim.clone();
    {
        let status = resizing.status.get_or_insert_with(Default::default);
        let mut conds: Vec<_> = status
            .conditions
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ != "Resizing")
            .collect();
        conds.push(condition("Resizing", None));
        status.conditions = Some(conds);
        status.allocated_resources = Some(BTreeMap::from([("storage".into(), quantity(want))]));
        status.allocated_resource_statuses = Some(BTreeMap::from([(
            "storage".into(),
            "ControllerResizeInProgress".into(),
        )]));
    }
    let resizing = match claims
        .replace_status(&name, &PostParams::default(), &resizing)
        .await
    {
        Ok(c) => c,
        Err(err) => {
            tracing::debug!(claim = %name, %err, "marking the claim Resizing");
            return Err(());
        }
    };
    event(
        ctx,
        &driver.name,
        claim,
        false,
        "Resizing",
        &format!("External resizer is resizing volume {pv_name}"),
    )
    .await;
    // 2. The driver grows the volume.
    let mut new_size = want;
    let mut node_needed = false;
    if driver.controller_expand && pv_size < want {
        match driver
            .controller()
            .controller_expand_volume(berth_csi::proto::ControllerExpandVolumeRequest {
                volume_id: csi.volume_handle.clone(),
                capacity_range: Some(berth_csi::proto::CapacityRange {
                    required_bytes: want,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                new_size = r.capacity_bytes.max(want);
                node_needed = r.node_expansion_required;
            }
            Err(status) => {
                event(
                    ctx,
                    &driver.name,
                    claim,
                    true,
                    "VolumeResizeFailed",
                    &format!(
                        "resize volume \"{pv_name}\" by resizer \"{}\" failed: {}",
                        driver.name,
                        rpc_error(&status)
                    ),
                )
                .await;
                return Err(());
            }
        }
    } else if !driver.controller_expand {
        node_needed = true;
    }
    // 3. The volume object follows.
    if pv_size < new_size {
        let mut pv = volume.clone();
        if let Some(spec) = pv.spec.as_mut() {
            spec.capacity
                .get_or_insert_with(Default::default)
                .insert("storage".into(), quantity(new_size));
        }
        if let Err(err) = volumes.replace(&pv_name, &PostParams::default(), &pv).await {
            tracing::debug!(volume = %pv_name, %err, "updating the volume's capacity");
            return Err(());
        }
    }
    // 4. The node part, where the volume is published on this node.
    if node_needed && driver.node_expand {
        let published: Vec<std::path::PathBuf> = std::fs::read_dir(&ctx.pods_dir)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|p| super::mounts::published(&p.path()))
            .filter(|p| p.driver == driver.name && p.volume_handle == csi.volume_handle)
            .map(|p| p.target)
            .collect();
        let Some(path) = published.first() else {
            let mut pending = resizing.clone();
            let status = pending.status.get_or_insert_with(Default::default);
            status.conditions = Some(vec![condition(
                "FileSystemResizePending",
                Some(
                    "Waiting for user to (re-)start a pod to finish file system resize of volume on node.",
                ),
            )]);
            status.allocated_resource_statuses = Some(BTreeMap::from([(
                "storage".into(),
                "NodeResizePending".into(),
            )]));
            let _ = claims
                .replace_status(&name, &PostParams::default(), &pending)
                .await;
            return Err(());
        };
        if let Err(status) = driver
            .node()
            .node_expand_volume(berth_csi::proto::NodeExpandVolumeRequest {
                volume_id: csi.volume_handle.clone(),
                volume_path: path.display().to_string(),
                capacity_range: Some(berth_csi::proto::CapacityRange {
                    required_bytes: new_size,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await
        {
            event(
                ctx,
                &driver.name,
                claim,
                true,
                "VolumeResizeFailed",
                &format!(
                    "MountVolume.NodeExpandVolume failed for volume \"{pv_name}\": {}",
                    rpc_error(&status)
                ),
            )
            .await;
            return Err(());
        }
    }
    // 5. Done: the claim's capacity, its conditions cleared.
    let mut done = resizing.clone();
    {
        let status = done.status.get_or_insert_with(Default::default);
        status
            .capacity
            .get_or_insert_with(Default::default)
            .insert("storage".into(), quantity(new_size));
        status.conditions = None;
        status.allocated_resource_statuses = None;
    }
    if let Err(err) = claims
        .replace_status(&name, &PostParams::default(), &done)
        .await
    {
        tracing::debug!(claim = %name, %err, "setting the claim's new capacity");
        return Err(());
    }
    event(
        ctx,
        &driver.name,
        claim,
        false,
        "VolumeResizeSuccessful",
        "Resize volume succeeded",
    )
    .await;
    Ok(())
}
