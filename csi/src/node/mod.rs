//! The CSI Node service (spec.md, "Node Service RPC"): a volume directory is bind-mounted
//! onto the staging path (NodeStageVolume), and the staging mount onto each target path
//! (NodePublishVolume), read-only when asked. One verb pair a file: `stage.rs`,
//! `publish.rs`, `stats.rs` (NodeGetVolumeStats, NodeExpandVolume). What is mounted
//! where is read from the kernel's mount table every time, so every call is
//! idempotent and survives a driver restart.

mod publish;
mod stage;
mod stats;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::mounts::{self, MountInfo};
use crate::proto::{
    NodeGetCapabilitiesResponse, NodeGetInfoResponse, NodeServiceCapability,
    node_service_capability::{self, rpc::Type as Rpc},
};

const CAPABILITIES: &[Rpc] = &[
    Rpc::StageUnstageVolume,
    Rpc::GetVolumeStats,
    Rpc::ExpandVolume,
    Rpc::VolumeCondition,
    Rpc::SingleNodeMultiWriter,
];

/// What a staging or target path holds.
#[derive(Debug)]
pub(crate) enum At {
    /// No mount (the path may or may not exist).
    Nothing,
    /// A mount of the volume's directory.
    Volume(MountInfo),
    /// A mount of something else.
    Other(MountInfo),
}

/// What is mounted at `path`, compared with the volume directory `dir` by device and
/// inode (the root of a bind mount is the directory it binds).
pub(crate) fn what_is_at(path: &Path, dir: &Path) -> Result<At> {
    let canonical = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(At::Nothing),
        Err(e) => return Err(Error::io("canonicalize", path)(e)),
    };
    let Some(mount) = mounts::mount_at(&canonical)? else {
        return Ok(At::Nothing);
    };
    let here = fs::metadata(&canonical).map_err(Error::io("stat", &canonical))?;
    let same = fs::metadata(dir).is_ok_and(|d| d.dev() == here.dev() && d.ino() == here.ino());
    Ok(if same {
        At::Volume(mount)
    } else {
        At::Other(mount)
    })
}

/// What is mounted at `path`, compared with the block device node `device` by device
/// number (a block volume is published as a bind mount of its loop device's node).
pub(crate) fn what_device_is_at(path: &Path, device: &Path) -> Result<At> {
    let canonical = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(At::Nothing),
        Err(e) => return Err(Error::io("canonicalize", path)(e)),
    };
    let Some(mount) = mounts::mount_at(&canonical)? else {
        return Ok(At::Nothing);
    };
    let here = fs::metadata(&canonical).map_err(Error::io("stat", &canonical))?;
    let same = here.file_type().is_block_device()
        && fs::metadata(device)
            .is_ok_and(|d| d.file_type().is_block_device() && d.rdev() == here.rdev());
    Ok(if same {
        At::Volume(mount)
    } else {
        At::Other(mount)
    })
}

/// Removes a target path the driver made: a directory (filesystem volume) or a file
/// (block volume); a missing path is fine.
pub(crate) fn remove_target(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path)(e)),
    }
}

/// A mount point showing `dir` (or something inside it) other than `dir`'s own
/// filesystem mount: the volume is in use there.
pub(crate) fn mounted_anywhere(dir: &Path) -> Result<Option<PathBuf>> {
    let table = mounts::table()?;
    let Some(holding) = table
        .iter()
        .filter(|m| dir.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
    else {
        return Ok(None);
    };
    let Ok(rel) = dir.strip_prefix(&holding.mount_point) else {
        return Ok(None);
    };
    let want = holding.root.join(rel);
    Ok(table
        .iter()
        .find(|m| {
            m.dev == holding.dev
                && m.root.starts_with(&want)
                && m.mount_point != holding.mount_point
        })
        .map(|m| m.mount_point.clone()))
}

/// Unmounts everything stacked at `path`; returns whether anything was.
pub(crate) fn unmount_all(path: &Path) -> Result<bool> {
    let canonical = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("canonicalize", path)(e)),
    };
    let mut any = false;
    while mounts::mount_at(&canonical)?.is_some() {
        crate::sys::unmount(&canonical)?;
        any = true;
    }
    Ok(any)
}

impl Driver {
    /// NodeGetInfo: this node, its topology and how many volumes it takes.
    pub fn node_info(&self) -> NodeGetInfoResponse {
        NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: self.config.max_volumes_per_node,
            accessible_topology: Some(self.topology()),
        }
    }

    /// NodeGetCapabilities.
    pub fn node_capabilities(&self) -> NodeGetCapabilitiesResponse {
        NodeGetCapabilitiesResponse {
            capabilities: CAPABILITIES
                .iter()
                .map(|rpc| NodeServiceCapability {
                    r#type: Some(node_service_capability::Type::Rpc(
                        node_service_capability::Rpc {
                            r#type: *rpc as i32,
                        },
                    )),
                })
                .collect(),
        }
    }

    /// Where the driver makes loop device nodes when /dev does not have them.
    pub(crate) fn nodes_dir(&self) -> PathBuf {
        self.config.root.join("dev")
    }

    /// What `path` shows: volume `dir` itself (a bind of the directory, or of one of
    /// the loop devices of a block volume's image), something else, or nothing.
    pub(crate) fn volume_at(&self, path: &Path, dir: &Path, block: bool) -> Result<At> {
        if !block {
            return what_is_at(path, dir);
        }
        let mut at = what_device_is_at(path, Path::new("/nonexistent"))?;
        for dev in crate::loopdev::find_all(&dir.join(crate::loopdev::IMAGE))? {
            let device = crate::loopdev::device(dev.number, &self.nodes_dir())?;
            at = what_device_is_at(path, &device)?;
            if matches!(at, At::Volume(_)) {
                break;
            }
        }
        Ok(at)
    }

    /// NOT_FOUND unless volume `id` exists; returns its directory and record.
    pub(crate) fn known_volume(&self, id: &str) -> Result<(PathBuf, crate::state::Volume)> {
        let vol = self
            .lock()
            .volumes
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("volume {id:?} does not exist")))?;
        Ok((self.volume_dir(id), vol))
    }
}
