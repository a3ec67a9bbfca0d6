//! NodeStageVolume and NodeUnstageVolume: the volume directory bind-mounted onto the
//! CO's staging path. The staging path is the CO's (spec.md: "The CO SHALL ensure that
//! the path is directory"); the driver creates it only if missing, and never removes it.

use std::fs;

use crate::capability;
use crate::driver::Driver;
use crate::error::{Error, Result, required, required_path};
use crate::proto::{
    NodeStageVolumeRequest, NodeStageVolumeResponse, NodeUnstageVolumeRequest,
    NodeUnstageVolumeResponse,
};
use crate::sys;

use super::{At, unmount_all, what_is_at};

impl Driver {
    /// NodeStageVolume: idempotent for the same volume at the same path; another
    /// volume already staged there is ALREADY_EXISTS.
    pub fn node_stage_volume(
        &self,
        req: NodeStageVolumeRequest,
    ) -> Result<NodeStageVolumeResponse> {
        let id = required(&req.volume_id, "volume_id")?;
        let staging = required_path(&req.staging_target_path, "staging_target_path")?;
        let Some(cap) = &req.volume_capability else {
            return Err(Error::InvalidArgument(
                "volume_capability is required".into(),
            ));
        };
        capability::require_supported_on_node(cap)?;
        let _node = self.node_lock();
        let (dir, _) = self.known_volume(id)?;
        match what_is_at(staging, &dir)? {
            At::Volume(_) => return Ok(NodeStageVolumeResponse {}),
            At::Other(m) => {
                return Err(Error::AlreadyExists(format!(
                    "{} already has another mount ({} from {})",
                    staging.display(),
                    m.fs_type,
                    m.source.display()
                )));
            }
            At::Nothing => {}
        }
        let created = !staging.exists();
        if created {
            fs::create_dir(staging).map_err(Error::io("mkdir", staging))?;
        }
        if let Err(err) = sys::bind_mount(&dir, staging) {
            if created {
                let _ = fs::remove_dir(staging);
            }
            return Err(err);
        }
        tracing::info!(volume = %id, staging = %staging.display(), "staged volume");
        Ok(NodeStageVolumeResponse {})
    }

    /// NodeUnstageVolume: idempotent; unmounts whatever is stacked on the staging path.
    pub fn node_unstage_volume(
        &self,
        req: NodeUnstageVolumeRequest,
    ) -> Result<NodeUnstageVolumeResponse> {
        let id = required(&req.volume_id, "volume_id")?;
        let staging = required_path(&req.staging_target_path, "staging_target_path")?;
        let _node = self.node_lock();
        let known = self.known_volume(id).is_ok();
        let unmounted = unmount_all(staging)?;
        if !known && !unmounted {
            return Err(Error::NotFound(format!("volume {id:?} does not exist")));
        }
        if unmounted {
            tracing::info!(volume = %id, staging = %staging.display(), "unstaged volume");
        }
        Ok(NodeUnstageVolumeResponse {})
    }
}
