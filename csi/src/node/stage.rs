//! NodeStageVolume and NodeUnstageVolume: the volume directory bind-mounted onto the
//! CO's staging path. The staging path is the CO's (spec.md: "The CO SHALL ensure that
//! the path is directory"); the driver creates it only if missing, and never removes it.

use std::fs;
use std::path::Path;

use crate::capability;
use crate::driver::Driver;
use crate::error::{Error, Result, required, required_path};
use crate::proto::{
    NodeStageVolumeRequest, NodeStageVolumeResponse, NodeUnstageVolumeRequest,
    NodeUnstageVolumeResponse,
};
use crate::{loopdev, sys};

use super::{At, remove_target, unmount_all, what_device_is_at, what_is_at};

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
        let (dir, vol) = self.known_volume(id)?;
        capability::require_kind(cap, vol.block)?;
        if vol.block {
            return self.stage_block(id, &dir, staging);
        }
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

    /// Stages a block volume: attaches its image to a loop device (unless attached) and
    /// bind-mounts the device node on `<staging>/<volume id>`, a file the driver makes.
    fn stage_block(&self, id: &str, dir: &Path, staging: &Path) -> Result<NodeStageVolumeResponse> {
        let image = dir.join(loopdev::IMAGE);
        let nodes = self.nodes_dir();
        let (n, attached) = match loopdev::find(&image)? {
            Some(n) => (n, false),
            None => (loopdev::attach(&image, &nodes, false)?, true),
        };
        let file = staging.join(id);
        let mut made_dir = false;
        let mut made_file = false;
        let mut stage = || -> Result<bool> {
            let device = loopdev::device(n, &nodes)?;
            match what_device_is_at(&file, &device)? {
                At::Volume(_) => return Ok(false),
                At::Other(m) => {
                    return Err(Error::AlreadyExists(format!(
                        "{} already has another mount ({} from {})",
                        file.display(),
                        m.fs_type,
                        m.source.display()
                    )));
                }
                At::Nothing => {}
            }
            if !staging.exists() {
                fs::create_dir(staging).map_err(Error::io("mkdir", staging))?;
                made_dir = true;
            }
            if !file.exists() {
                fs::File::create(&file).map_err(Error::io("create", &file))?;
                made_file = true;
            }
            sys::bind_mount(&device, &file)?;
            Ok(true)
        };
        match stage() {
            Ok(staged) => {
                if staged {
                    tracing::info!(volume = %id, device = n, staging = %staging.display(), "staged block volume");
                }
                Ok(NodeStageVolumeResponse {})
            }
            Err(err) => {
                if made_file {
                    let _ = fs::remove_file(&file);
                }
                if made_dir {
                    let _ = fs::remove_dir(staging);
                }
                if attached {
                    let _ = loopdev::detach(n, &nodes);
                }
                Err(err)
            }
        }
    }

    /// NodeUnstageVolume: idempotent; unmounts whatever is stacked on the staging path.
    pub fn node_unstage_volume(
        &self,
        req: NodeUnstageVolumeRequest,
    ) -> Result<NodeUnstageVolumeResponse> {
        let id = required(&req.volume_id, "volume_id")?;
        let staging = required_path(&req.staging_target_path, "staging_target_path")?;
        let _node = self.node_lock();
        let known = self.known_volume(id).ok();
        if let Some((dir, vol)) = &known
            && vol.block
        {
            let file = staging.join(id);
            let unmounted = unmount_all(&file)?;
            remove_target(&file)?;
            // Every device of the image: the staged one, and any a readonly publish left.
            for dev in loopdev::find_all(&dir.join(loopdev::IMAGE))? {
                loopdev::detach(dev.number, &self.nodes_dir())?;
                tracing::info!(volume = %id, device = dev.number, "detached block volume");
            }
            if unmounted {
                tracing::info!(volume = %id, staging = %staging.display(), "unstaged block volume");
            }
            return Ok(NodeUnstageVolumeResponse {});
        }
        let known = known.is_some();
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
