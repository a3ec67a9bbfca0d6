//! NodePublishVolume and NodeUnpublishVolume: the staging mount bind-mounted onto the
//! target path, then remounted read-only (`MS_REMOUNT|MS_BIND|MS_RDONLY`, mount(2)) when
//! the publish is readonly. The driver creates the target path ("Creation of
//! target_path is the responsibility of the SP", spec.md) and removes it on unpublish.

use std::fs;
use std::path::Path;

use nix::mount::MsFlags;

use crate::capability;
use crate::driver::Driver;
use crate::error::{Error, Result, required, required_path};
use crate::proto::volume_capability::access_mode::Mode;
use crate::proto::{
    NodePublishVolumeRequest, NodePublishVolumeResponse, NodeUnpublishVolumeRequest,
    NodeUnpublishVolumeResponse,
};
use crate::state::Publication;
use crate::{loopdev, sys};

use super::{At, remove_target, unmount_all};

/// The per-mount flags for `flags` (already checked against `capability::MOUNT_FLAGS`).
fn ms_flags(flags: &[String], readonly: bool) -> MsFlags {
    let mut out = MsFlags::empty();
    for flag in flags {
        out |= match flag.as_str() {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            _ => MsFlags::empty(),
        };
    }
    if readonly {
        out |= MsFlags::MS_RDONLY;
    }
    out
}

/// The per-mount flags the new bind mount at `target` already has. A bind remount must
/// repeat them: the kernel refuses (EPERM) to clear `nosuid`, `nodev`, `noexec` or the
/// atime flags that a less privileged mount namespace inherited locked (mount(2),
/// "MS_REMOUNT"), which is what Kubernetes' mount-utils does too.
fn locked_flags(target: &Path) -> MsFlags {
    let Ok(Some(mount)) = fs::canonicalize(target)
        .map_err(|_| ())
        .and_then(|p| crate::mounts::mount_at(&p).map_err(|_| ()))
    else {
        return MsFlags::empty();
    };
    let options: Vec<String> = mount
        .mount_options
        .into_iter()
        .filter(|o| o != "ro" && o != "rw")
        .collect();
    ms_flags(&options, false)
}

impl Driver {
    /// NodePublishVolume: needs the volume staged at `staging_target_path` first
    /// (FAILED_PRECONDITION otherwise, as for a missing staging path). A second publish
    /// follows the spec's table: the same target with the same arguments is success,
    /// with other arguments ALREADY_EXISTS; another target is success only when both
    /// are SINGLE_NODE_MULTI_WRITER, FAILED_PRECONDITION otherwise.
    pub fn node_publish_volume(
        &self,
        req: NodePublishVolumeRequest,
    ) -> Result<NodePublishVolumeResponse> {
        let id = required(&req.volume_id, "volume_id")?;
        let target = required_path(&req.target_path, "target_path")?;
        let Some(cap) = &req.volume_capability else {
            return Err(Error::InvalidArgument(
                "volume_capability is required".into(),
            ));
        };
        if req.staging_target_path.is_empty() {
            return Err(Error::FailedPrecondition(
                "staging_target_path is not set: berth-csi has STAGE_UNSTAGE_VOLUME, call NodeStageVolume first".into(),
            ));
        }
        let staging = required_path(&req.staging_target_path, "staging_target_path")?;
        capability::require_supported_on_node(cap)?;
        let mode = capability::mode(cap);
        let flags = ms_flags(
            capability::mount_flags(cap),
            req.readonly || capability::is_reader_only(cap),
        );
        let readonly = flags.contains(MsFlags::MS_RDONLY);

        let _node = self.node_lock();
        let (dir, vol) = self.known_volume(id)?;
        capability::require_kind(cap, vol.block)?;
        // A block volume is staged as `<staging>/<id>`, a bind of its loop device.
        let staged = if vol.block {
            staging.join(id)
        } else {
            staging.to_owned()
        };
        if !matches!(self.volume_at(&staged, &dir, vol.block)?, At::Volume(_)) {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is not staged at {}: call NodeStageVolume first",
                staging.display()
            )));
        }
        let key = req.target_path.clone();
        let mut publication = Publication {
            volume_id: id.to_owned(),
            access_mode: mode as i32,
            readonly,
            loop_device: None,
        };
        match self.volume_at(target, &dir, vol.block)? {
            At::Volume(m) => {
                let is_ro = m.mount_options.iter().any(|o| o == "ro");
                let recorded = self.lock().publications.get(&key).cloned();
                if is_ro == readonly
                    && recorded
                        .as_ref()
                        .is_none_or(|p| p.access_mode == mode as i32)
                {
                    if recorded.is_none() {
                        self.record(|s| {
                            s.publications.insert(key, publication);
                        })?;
                    }
                    return Ok(NodePublishVolumeResponse {});
                }
                return Err(Error::AlreadyExists(format!(
                    "volume {id} is already published at {} with other arguments (readonly={is_ro})",
                    target.display()
                )));
            }
            At::Other(m) => {
                return Err(Error::AlreadyExists(format!(
                    "{} already has another mount ({} from {})",
                    target.display(),
                    m.fs_type,
                    m.source.display()
                )));
            }
            At::Nothing => {}
        }
        self.check_other_targets(id, &key, mode, &dir, vol.block)?;
        // A readonly block publish gets its own read-only loop device: a read-only bind
        // mount of a device node still lets the device be opened for writing.
        let source = if vol.block && readonly {
            let nodes = self.nodes_dir();
            let n = loopdev::attach(&dir.join(loopdev::IMAGE), &nodes, true)?;
            publication.loop_device = Some(n);
            match loopdev::device(n, &nodes) {
                Ok(path) => path,
                Err(err) => {
                    let _ = loopdev::detach(n, &nodes);
                    return Err(err);
                }
            }
        } else {
            staged.clone()
        };
        let ro_loop = publication.loop_device;
        let created = !target.exists();
        if created {
            let made = if vol.block {
                fs::File::create(target)
                    .map(drop)
                    .map_err(Error::io("create", target))
            } else {
                fs::create_dir(target).map_err(Error::io("mkdir", target))
            };
            if let Err(err) = made {
                if let Some(n) = ro_loop {
                    let _ = loopdev::detach(n, &self.nodes_dir());
                }
                return Err(err);
            }
        }
        let mount = || -> Result<()> {
            sys::bind_mount(&source, target)?;
            if !flags.is_empty()
                && let Err(err) = sys::remount_bind(target, flags | locked_flags(target))
            {
                let _ = sys::unmount(target);
                return Err(err);
            }
            if let Err(err) = self.record(|s| {
                s.publications.insert(key, publication);
            }) {
                let _ = sys::unmount(target);
                return Err(err);
            }
            Ok(())
        };
        if let Err(err) = mount() {
            if created {
                let _ = remove_target(target);
            }
            if let Some(n) = ro_loop {
                let _ = loopdev::detach(n, &self.nodes_dir());
            }
            return Err(err);
        }
        tracing::info!(volume = %id, target = %target.display(), readonly, mode = mode.as_str_name(), "published volume");
        Ok(NodePublishVolumeResponse {})
    }

    /// FAILED_PRECONDITION when volume `id` is published at another target and either
    /// publish is not SINGLE_NODE_MULTI_WRITER (spec.md, NodePublishVolume's second
    /// table; Kubernetes sends SINGLE_NODE_MULTI_WRITER for ReadWriteOnce and
    /// SINGLE_NODE_SINGLE_WRITER for ReadWriteOncePod to a driver with that capability).
    fn check_other_targets(
        &self,
        id: &str,
        target: &str,
        mode: Mode,
        dir: &Path,
        block: bool,
    ) -> Result<()> {
        let others: Vec<(String, Publication)> = self
            .lock()
            .publications
            .iter()
            .filter(|(t, p)| p.volume_id == id && t.as_str() != target)
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        for (other, p) in others {
            if !matches!(
                self.volume_at(Path::new(&other), dir, block)?,
                At::Volume(_)
            ) {
                continue; // a stale record: nothing is mounted there any more
            }
            let multi = Mode::SingleNodeMultiWriter as i32;
            if mode as i32 != multi || p.access_mode != multi {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is already published at {other} ({}); only SINGLE_NODE_MULTI_WRITER publishes at more than one target",
                    Mode::try_from(p.access_mode)
                        .unwrap_or(Mode::Unknown)
                        .as_str_name()
                )));
            }
        }
        Ok(())
    }

    /// NodeUnpublishVolume: idempotent; unmounts the target and removes the directory.
    pub fn node_unpublish_volume(
        &self,
        req: NodeUnpublishVolumeRequest,
    ) -> Result<NodeUnpublishVolumeResponse> {
        let id = required(&req.volume_id, "volume_id")?;
        let target = required_path(&req.target_path, "target_path")?;
        let _node = self.node_lock();
        let known = self.known_volume(id).ok();
        let unmounted = unmount_all(target)?;
        if known.is_none() && !unmounted {
            return Err(Error::NotFound(format!("volume {id:?} does not exist")));
        }
        remove_target(target)?;
        // A readonly block publish's own loop device goes with it — if it is still
        // this image's (the number may have been reused since).
        let record = self.lock().publications.get(&req.target_path).cloned();
        if let (Some((dir, vol)), Some(n)) = (&known, record.and_then(|p| p.loop_device))
            && vol.block
            && loopdev::find_all(&dir.join(loopdev::IMAGE))?
                .iter()
                .any(|d| d.number == n && d.read_only)
        {
            loopdev::detach(n, &self.nodes_dir())?;
        }
        if self.lock().publications.contains_key(&req.target_path) {
            self.record(|s| {
                s.publications.remove(&req.target_path);
            })?;
        }
        if unmounted {
            tracing::info!(volume = %id, target = %target.display(), "unpublished volume");
        }
        Ok(NodeUnpublishVolumeResponse {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readonly_adds_rdonly() {
        assert_eq!(ms_flags(&[], false), MsFlags::empty());
        assert_eq!(ms_flags(&[], true), MsFlags::MS_RDONLY);
        assert_eq!(
            ms_flags(&["nosuid".into(), "ro".into()], false),
            MsFlags::MS_NOSUID | MsFlags::MS_RDONLY
        );
    }
}
