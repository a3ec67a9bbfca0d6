//! NodeGetVolumeStats and NodeExpandVolume. Usage comes from the project quota when
//! sizes are enforced, otherwise from walking the directory; either way `total` is the
//! volume's capacity, not the size of the filesystem underneath.

use std::path::Path;

use crate::capability;
use crate::driver::Driver;
use crate::error::{Error, Result, required, required_path};
use crate::proto::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetVolumeStatsRequest,
    NodeGetVolumeStatsResponse, VolumeCondition, VolumeUsage, volume_usage::Unit,
};

use super::At;
use crate::loopdev;

impl Driver {
    /// NOT_FOUND unless `path` shows volume `dir` (a publish or stage of it).
    fn require_at(&self, id: &str, path: &Path, dir: &Path, block: bool) -> Result<()> {
        match self.volume_at(path, dir, block)? {
            At::Volume(_) => Ok(()),
            _ => Err(Error::NotFound(format!(
                "volume {id} is not mounted at {}",
                path.display()
            ))),
        }
    }

    /// NodeGetVolumeStats: bytes and inodes used and available.
    pub fn node_get_volume_stats(
        &self,
        req: NodeGetVolumeStatsRequest,
    ) -> Result<NodeGetVolumeStatsResponse> {
        let id = required(&req.volume_id, "volume_id")?;
        let path = required_path(&req.volume_path, "volume_path")?;
        let (dir, vol) = self.known_volume(id)?;
        self.require_at(id, path, &dir, vol.block)?;
        if vol.block {
            // A block device's use is the filesystem's business inside it; its size is
            // all the driver knows.
            return Ok(NodeGetVolumeStatsResponse {
                usage: vec![VolumeUsage {
                    available: 0,
                    total: vol.capacity_bytes,
                    used: 0,
                    unit: Unit::Bytes as i32,
                }],
                volume_condition: Some(VolumeCondition {
                    abnormal: false,
                    message: String::new(),
                }),
            });
        }
        let usage = self.quota.usage(&dir, vol.project_id)?;
        let fs = nix::sys::statvfs::statvfs(&dir).map_err(Error::sys("statvfs", &dir))?;
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let fs_free = to_i64(fs.blocks_available().saturating_mul(fs.fragment_size()));
        let bytes_available = (vol.capacity_bytes - usage.bytes).max(0).min(fs_free);
        let inodes_free = to_i64(fs.files_available());
        Ok(NodeGetVolumeStatsResponse {
            usage: vec![
                VolumeUsage {
                    available: bytes_available,
                    total: vol.capacity_bytes,
                    used: usage.bytes,
                    unit: Unit::Bytes as i32,
                },
                VolumeUsage {
                    available: inodes_free,
                    total: usage.inodes.saturating_add(inodes_free),
                    used: usage.inodes,
                    unit: Unit::Inodes as i32,
                },
            ],
            volume_condition: Some(if usage.bytes > vol.capacity_bytes {
                VolumeCondition {
                    abnormal: true,
                    message: format!(
                        "{} bytes used, over the capacity of {} (sizes are not enforced: {})",
                        usage.bytes,
                        vol.capacity_bytes,
                        self.quota.mode()
                    ),
                }
            } else {
                VolumeCondition {
                    abnormal: false,
                    message: String::new(),
                }
            }),
        })
    }

    /// NodeExpandVolume: the controller already raised the quota; this re-applies it
    /// (idempotent) and reports the capacity. Asking for more than the controller
    /// granted is OUT_OF_RANGE.
    pub fn node_expand_volume(
        &self,
        req: NodeExpandVolumeRequest,
    ) -> Result<NodeExpandVolumeResponse> {
        let id = required(&req.volume_id, "volume_id")?;
        let path = required_path(&req.volume_path, "volume_path")?;
        if let Some(cap) = &req.volume_capability {
            capability::require_supported(std::slice::from_ref(cap))?;
        }
        let (dir, vol) = self.known_volume(id)?;
        self.require_at(id, path, &dir, vol.block)?;
        if let Some(range) = req.capacity_range
            && range.required_bytes > vol.capacity_bytes
        {
            return Err(Error::OutOfRange(format!(
                "volume {id} has {} bytes; expand it with ControllerExpandVolume before asking the node for {}",
                vol.capacity_bytes, range.required_bytes
            )));
        }
        if let Some(pid) = vol.project_id {
            self.quota.set_limit(pid, vol.capacity_bytes)?;
        }
        if vol.block {
            for dev in loopdev::find_all(&dir.join(loopdev::IMAGE))? {
                let size = loopdev::refresh_size(dev.number, &self.nodes_dir())?;
                tracing::info!(volume = %id, device = dev.number, size, "loop device sees the new size");
            }
        }
        Ok(NodeExpandVolumeResponse {
            capacity_bytes: vol.capacity_bytes,
        })
    }
}
