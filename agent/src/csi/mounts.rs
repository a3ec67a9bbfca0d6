//! PersistentVolumeClaim volumes of pods through their CSI driver, at the kubelet's
//! paths: staged once per node at
//! `<root>/plugins/kubernetes.io/csi/<driver>/<sha256(volume handle)>/globalmount`,
//! published per pod at `<root>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`,
//! with `vol_data.json` beside it naming the driver, the volume handle and the staging
//! path, so teardown — also after an agent `kill -9` — knows what to unpublish and,
//! when no other pod on the node still uses the volume, unstage.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, Volume};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{Drivers, capability, rpc_error};
use crate::pods::inputs::Claim;

/// The directory of a pod's CSI volumes.
const CSI_DIR: &str = "kubernetes.io~csi";

/// What the agent records beside each published volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolData {
    driver_name: String,
    volume_handle: String,
    spec_vol_id: String,
    /// Empty when the driver does not stage.
    #[serde(default)]
    staging_path: String,
    /// The pod's name for the volume, and the claim it mounts (for volume stats).
    #[serde(default)]
    pod_volume: String,
    #[serde(default)]
    claim_namespace: String,
    #[serde(default)]
    claim_name: String,
}

/// Runs an async CSI call from the pod workers' blocking threads.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| handle.block_on(f))
}

fn staging_path(root: &Path, driver: &str, handle: &str) -> PathBuf {
    let digest = sha2::Sha256::digest(handle.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    root.join("plugins/kubernetes.io/csi")
        .join(driver)
        .join(hex)
        .join("globalmount")
}

/// Mounts the claim's volume for `pod`; returns the host path the containers get.
pub fn setup(
    drivers: &Drivers,
    root: &Path,
    pod_dir: &Path,
    pod: &Pod,
    v: &Volume,
    claim: &Claim,
) -> Result<PathBuf, String> {
    let pv_name = claim.volume.metadata.name.clone().unwrap_or_default();
    let spec = claim.volume.spec.clone().unwrap_or_default();
    let Some(csi) = &spec.csi else {
        return Err(format!(
            "persistent volume {pv_name:?} is not a CSI volume: berth-agent mounts PersistentVolumes only through a CSI driver"
        ));
    };
    let dir = pod_dir.join("volumes").join(CSI_DIR).join(&pv_name);
    let target = dir.join("mount");
    let block = spec.volume_mode.as_deref() == Some("Block");
    if block {
        return Err(format!(
            "volume {:?} is a Block volume: volumeDevices are not supported by berth-agent yet",
            v.name
        ));
    }
    if crate::pods::volumes::is_mountpoint(&target) && dir.join("vol_data.json").exists() {
        return Ok(target);
    }
    let driver = drivers.get(&csi.driver)?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let modes = spec.access_modes.clone().unwrap_or_default();
    let cap = capability(
        false,
        csi.fs_type.as_deref().unwrap_or_default(),
        spec.mount_options.as_deref().unwrap_or_default(),
        &modes,
    );
    let context: std::collections::HashMap<String, String> = csi
        .volume_attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let staging = if driver.stage_unstage {
        staging_path(root, &driver.name, &csi.volume_handle)
    } else {
        PathBuf::new()
    };
    // Recorded before mounting: a teardown after a crash between the two calls
    // still unpublishes/unstages (both are idempotent in the driver).
    let data = VolData {
        driver_name: driver.name.clone(),
        volume_handle: csi.volume_handle.clone(),
        spec_vol_id: pv_name.clone(),
        staging_path: staging.display().to_string(),
        pod_volume: v.name.clone(),
        claim_namespace: claim.claim.metadata.namespace.clone().unwrap_or_default(),
        claim_name: claim.claim.metadata.name.clone().unwrap_or_default(),
    };
    let json = serde_json::to_vec(&data).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("vol_data.json"), json)
        .map_err(|e| format!("write vol_data.json: {e}"))?;
    let readonly = v
        .persistent_volume_claim
        .as_ref()
        .and_then(|c| c.read_only)
        .unwrap_or(false)
        || csi.read_only == Some(true);
    block_on(async {
        let mut node = driver.node();
        if driver.stage_unstage {
            std::fs::create_dir_all(&staging)
                .map_err(|e| format!("create {}: {e}", staging.display()))?;
            node.node_stage_volume(berth_csi::proto::NodeStageVolumeRequest {
                volume_id: csi.volume_handle.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(cap.clone()),
                volume_context: context.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                format!(
                    "kubernetes.io/csi: attacher.MountDevice failed: {}",
                    rpc_error(&e)
                )
            })?;
        }
        node.node_publish_volume(berth_csi::proto::NodePublishVolumeRequest {
            volume_id: csi.volume_handle.clone(),
            staging_target_path: if driver.stage_unstage {
                staging.display().to_string()
            } else {
                String::new()
            },
            target_path: target.display().to_string(),
            volume_capability: Some(cap.clone()),
            readonly,
            volume_context: context.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            format!(
                "kubernetes.io/csi: mounter.SetUpAt failed: {}",
                rpc_error(&e)
            )
        })?;
        Ok::<(), String>(())
    })?;
    if let Some(sc) = pod.spec.as_ref().and_then(|s| s.security_context.as_ref())
        && let Some(group) = sc.fs_group
        && !readonly
    {
        let on_mismatch = sc.fs_group_change_policy.as_deref() == Some("OnRootMismatch");
        set_ownership(&target, group as u32, on_mismatch)?;
    }
    Ok(target)
}

/// The kubelet's `SetVolumeOwnership`: every file gets group `gid` and group
/// read/write, directories also the setgid bit and group search; with
/// `OnRootMismatch` nothing is done when the root already has them.
fn set_ownership(root: &Path, gid: u32, on_mismatch: bool) -> Result<(), String> {
    const RW: u32 = 0o660;
    const DIR: u32 = 0o2000 | 0o110;
    if on_mismatch
        && let Ok(m) = std::fs::metadata(root)
        && m.gid() == gid
        && m.mode() & (RW | DIR) == (RW | DIR)
    {
        return Ok(());
    }
    fn walk(path: &Path, gid: u32) -> Result<(), String> {
        let m = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if m.file_type().is_symlink() {
            return Ok(());
        }
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            None,
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
        let mut mode = (m.mode() & 0o7777) | RW;
        if m.is_dir() {
            mode |= DIR;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        if m.is_dir() {
            for entry in std::fs::read_dir(path).map_err(|e| e.to_string())? {
                let entry = entry.map_err(|e| e.to_string())?;
                walk(&entry.path(), gid)?;
            }
        }
        Ok(())
    }
    walk(root, gid)
}

/// Every `vol_data.json` under `pods_dir` but those of `except` (a pod dir).
fn staged_elsewhere(pods_dir: &Path, except: &Path, staging: &str) -> bool {
    let Ok(pods) = std::fs::read_dir(pods_dir) else {
        return false;
    };
    pods.flatten()
        .map(|p| p.path())
        .filter(|p| p != except)
        .flat_map(|p| {
            std::fs::read_dir(p.join("volumes").join(CSI_DIR))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|v| std::fs::read(v.path().join("vol_data.json")).ok())
        .filter_map(|b| serde_json::from_slice::<VolData>(&b).ok())
        .any(|d| d.staging_path == staging)
}

/// Unpublishes every CSI volume of the pod at `pod_dir` and unstages those no other
/// pod on the node uses; the records go last, so a failure is retried.
pub fn teardown(drivers: &Drivers, pods_dir: &Path, pod_dir: &Path) -> Result<(), String> {
    let dir = pod_dir.join("volumes").join(CSI_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let vol_dir = entry.path();
        let Ok(bytes) = std::fs::read(vol_dir.join("vol_data.json")) else {
            // Nothing was asked of a driver for it.
            continue;
        };
        let data: VolData = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: {e}", vol_dir.join("vol_data.json").display()))?;
        let driver = drivers.get(&data.driver_name)?;
        let target = vol_dir.join("mount");
        block_on(async {
            let mut node = driver.node();
            node.node_unpublish_volume(berth_csi::proto::NodeUnpublishVolumeRequest {
                volume_id: data.volume_handle.clone(),
                target_path: target.display().to_string(),
            })
            .await
            .map_err(|e| {
                format!(
                    "kubernetes.io/csi: Unmounter.TearDownAt failed: {}",
                    rpc_error(&e)
                )
            })?;
            if !data.staging_path.is_empty()
                && !staged_elsewhere(pods_dir, pod_dir, &data.staging_path)
            {
                node.node_unstage_volume(berth_csi::proto::NodeUnstageVolumeRequest {
                    volume_id: data.volume_handle.clone(),
                    staging_target_path: data.staging_path.clone(),
                })
                .await
                .map_err(|e| {
                    format!(
                        "kubernetes.io/csi: attacher.UnmountDevice failed: {}",
                        rpc_error(&e)
                    )
                })?;
                // The global mount dir and its per-volume parent.
                let staging = Path::new(&data.staging_path);
                let _ = std::fs::remove_dir(staging);
                if let Some(parent) = staging.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
            Ok::<(), String>(())
        })?;
        std::fs::remove_dir_all(&vol_dir)
            .map_err(|e| format!("remove {}: {e}", vol_dir.display()))?;
    }
    Ok(())
}

/// A CSI volume published into a pod.
#[derive(Debug, Clone)]
pub struct Published {
    pub driver: String,
    pub volume_handle: String,
    pub target: PathBuf,
    pub pod_volume: String,
    pub claim_namespace: String,
    pub claim_name: String,
}

/// The published CSI volumes of the pod at `pod_dir`.
pub fn published(pod_dir: &Path) -> Vec<Published> {
    std::fs::read_dir(pod_dir.join("volumes").join(CSI_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|v| {
            let data: VolData =
                serde_json::from_slice(&std::fs::read(v.path().join("vol_data.json")).ok()?)
                    .ok()?;
            Some(Published {
                driver: data.driver_name,
                volume_handle: data.volume_handle,
                target: v.path().join("mount"),
                pod_volume: data.pod_volume,
                claim_namespace: data.claim_namespace,
                claim_name: data.claim_name,
            })
        })
        .collect()
}

/// The kubelet's VolumeStats of each CSI volume of the pod at `pod_dir`
/// (`NodeGetVolumeStats`, for drivers that have it), as `/stats/summary` lists them.
pub fn volume_stats(drivers: &Drivers, pod_dir: &Path) -> Vec<serde_json::Value> {
    use berth_csi::proto::volume_usage::Unit;
    let time = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    published(pod_dir)
        .into_iter()
        .filter_map(|p| {
            let driver = drivers.get(&p.driver).ok().filter(|d| d.volume_stats)?;
            let usage = block_on(async {
                driver
                    .node()
                    .node_get_volume_stats(berth_csi::proto::NodeGetVolumeStatsRequest {
                        volume_id: p.volume_handle.clone(),
                        volume_path: p.target.display().to_string(),
                        staging_target_path: String::new(),
                    })
                    .await
            })
            .ok()?
            .into_inner()
            .usage;
            let mut v = serde_json::json!({"time": time, "name": p.pod_volume});
            for u in usage {
                match Unit::try_from(u.unit) {
                    Ok(Unit::Bytes) => {
                        v["availableBytes"] = u.available.into();
                        v["capacityBytes"] = u.total.into();
                        v["usedBytes"] = u.used.into();
                    }
                    Ok(Unit::Inodes) => {
                        v["inodesFree"] = u.available.into();
                        v["inodes"] = u.total.into();
                        v["inodesUsed"] = u.used.into();
                    }
                    _ => {}
                }
            }
            if !p.claim_name.is_empty() {
                v["pvcRef"] =
                    serde_json::json!({"name": p.claim_name, "namespace": p.claim_namespace});
            }
            Some(v)
        })
        .collect()
}
