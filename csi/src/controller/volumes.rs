//! CreateVolume, DeleteVolume, ControllerExpandVolume and ValidateVolumeCapabilities.
//!
//! CreateVolume is idempotent by name (spec.md, CreateVolume): the same name with a
//! compatible capacity and source returns the existing volume; an incompatible one is
//! ALREADY_EXISTS. A volume is made in this order — directory, quota, contents,
//! metadata — and every step undone if a later one fails; a crash in between leaves a
//! directory the metadata does not name, which the next start removes.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::capability;
use crate::driver::{Driver, new_id};
use crate::error::{Error, Result, required};
use crate::fsutil;
use crate::loopdev;
use crate::proto::{
    self, ControllerExpandVolumeRequest, ControllerExpandVolumeResponse, CreateVolumeRequest,
    CreateVolumeResponse, DeleteVolumeRequest, DeleteVolumeResponse,
    ValidateVolumeCapabilitiesRequest, ValidateVolumeCapabilitiesResponse, VolumeContentSource,
    validate_volume_capabilities_response::Confirmed, volume_content_source,
};
use crate::quota::PROJECT_ID_BASE;
use crate::state::{Source, State, Volume};

use super::{capacity_range, check_parameters, fits};

/// Volume directories are world-writable, as local-path-provisioner makes them
/// (`mkdir -m 0777`), so a pod running as any user can write; the agent narrows this
/// with `fsGroup` ownership.
const VOLUME_MODE: u32 = 0o777;

impl Driver {
    /// CreateVolume.
    pub fn create_volume(&self, req: CreateVolumeRequest) -> Result<CreateVolumeResponse> {
        let name = required(&req.name, "name")?;
        capability::require_supported(&req.volume_capabilities)?;
        let block = capability::is_block(&req.volume_capabilities)?;
        check_parameters(&req.parameters)?;
        let (required_bytes, limit_bytes) = capacity_range(req.capacity_range)?;
        self.check_requisite_topology(req.accessibility_requirements.as_ref())?;
        let source = content_source(req.volume_content_source.as_ref())?;

        let mut state = self.lock();
        if let Some((id, vol)) = state.volume_by_name(name) {
            if !fits(vol.capacity_bytes, required_bytes, limit_bytes) {
                return Err(Error::AlreadyExists(format!(
                    "volume {name:?} exists with capacity {} bytes, outside the requested range (required {required_bytes}, limit {limit_bytes})",
                    vol.capacity_bytes
                )));
            }
            if vol.block != block {
                return Err(Error::AlreadyExists(format!(
                    "volume {name:?} exists as a {} volume",
                    if vol.block { "block" } else { "filesystem" }
                )));
            }
            if vol.source != source {
                return Err(Error::AlreadyExists(format!(
                    "volume {name:?} exists with a different content source"
                )));
            }
            return Ok(CreateVolumeResponse {
                volume: Some(self.volume_message(id, vol)),
            });
        }

        let (source_dir, source_bytes, source_block) = match &source {
            None => (None, 0, block),
            Some(Source::Snapshot(id)) => {
                let snap = state.snapshots.get(id).ok_or_else(|| {
                    Error::NotFound(format!("source snapshot {id:?} does not exist"))
                })?;
                (Some(self.snapshot_dir(id)), snap.size_bytes, snap.block)
            }
            Some(Source::Volume(id)) => {
                let vol = state.volumes.get(id).ok_or_else(|| {
                    Error::NotFound(format!("source volume {id:?} does not exist"))
                })?;
                (Some(self.volume_dir(id)), vol.capacity_bytes, vol.block)
            }
        };
        if source_block != block {
            // spec.md, CreateVolume: "Source incompatible or not supported".
            return Err(Error::InvalidArgument(format!(
                "a {} volume cannot be made from a {} source",
                if block { "block" } else { "filesystem" },
                if source_block { "block" } else { "filesystem" }
            )));
        }
        let mut capacity = if required_bytes > 0 {
            required_bytes
        } else if limit_bytes > 0 {
            self.config.default_capacity.min(limit_bytes)
        } else {
            self.config.default_capacity
        };
        if capacity < source_bytes {
            // A volume made from a source is at least as large as the source.
            if limit_bytes > 0 && source_bytes > limit_bytes {
                return Err(Error::OutOfRange(format!(
                    "the source needs {source_bytes} bytes, more than limit_bytes {limit_bytes}"
                )));
            }
            capacity = source_bytes;
        }
        self.check_room(&state, capacity)?;

        let id = new_id("vol")?;
        // A block volume's limit is its image's size; quotas are for directories.
        let project_id = (self.quota.enforced() && !block).then(|| next_project_id(&state));
        let dir = self.volume_dir(&id);
        let build = || -> Result<()> {
            fs::create_dir(&dir).map_err(Error::io("mkdir", &dir))?;
            let mode = if block { 0o700 } else { VOLUME_MODE };
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(Error::io("chmod", &dir))?;
            if let Some(pid) = project_id {
                self.quota.apply(&dir, pid, capacity)?;
            }
            if let Some(from) = &source_dir {
                fsutil::copy_contents(from, &dir).map_err(Error::out_of_space)?;
            }
            if block {
                // Sparse: blocks are allocated as they are written.
                let image = dir.join(loopdev::IMAGE);
                fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&image)
                    .and_then(|f| f.set_len(u64::try_from(capacity).unwrap_or(0)))
                    .map_err(Error::io("create", &image))?;
            }
            Ok(())
        };
        let vol = Volume {
            name: name.to_owned(),
            capacity_bytes: capacity,
            project_id,
            source,
            block,
        };
        let mut next = state.clone();
        next.volumes.insert(id.clone(), vol.clone());
        if let Err(err) = build().and_then(|()| self.commit(&mut state, next)) {
            self.undo_volume(&dir, project_id);
            return Err(err);
        }
        tracing::info!(volume = %id, %name, capacity, "created volume");
        Ok(CreateVolumeResponse {
            volume: Some(self.volume_message(&id, &vol)),
        })
    }

    /// Removes a half-made volume's directory and quota (best effort: the next start
    /// removes a directory this leaves).
    fn undo_volume(&self, dir: &std::path::Path, project_id: Option<u32>) {
        if let Err(err) = fsutil::remove_tree(dir) {
            tracing::error!(?err, "cannot remove a half-made volume");
        }
        if let Some(pid) = project_id
            && let Err(err) = self.quota.release(pid)
        {
            tracing::error!(
                ?err,
                project = pid,
                "cannot clear a half-made volume's quota"
            );
        }
    }

    /// DeleteVolume: idempotent, an unknown id is success. A volume still mounted
    /// somewhere on this node is FAILED_PRECONDITION ("Volume in use").
    pub fn delete_volume(&self, req: DeleteVolumeRequest) -> Result<DeleteVolumeResponse> {
        let id = required(&req.volume_id, "volume_id")?;
        let mut state = self.lock();
        let Some(vol) = state.volumes.get(id).cloned() else {
            return Ok(DeleteVolumeResponse {});
        };
        let dir = self.volume_dir(id);
        if vol.block
            && let Some(dev) = loopdev::find_all(&dir.join(loopdev::IMAGE))?.first()
        {
            return Err(Error::FailedPrecondition(format!(
                "block volume {id} is still attached to /dev/loop{} (staged or published)",
                dev.number
            )));
        }
        if let Some(at) = crate::node::mounted_anywhere(&dir)? {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still mounted at {}",
                at.display()
            )));
        }
        // Move it aside first: the metadata then never names a missing directory, and a
        // crash leaves only a leftover in tmp/, which the next start removes.
        let trash = self.tmp_path(id);
        fs::rename(&dir, &trash).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(Error::io("rename", &dir)(e))
            }
        })?;
        let mut next = state.clone();
        next.volumes.remove(id);
        if let Err(err) = self.commit(&mut state, next) {
            let _ = fs::rename(&trash, &dir);
            return Err(err);
        }
        self.undo_volume(&trash, vol.project_id);
        tracing::info!(volume = %id, name = %vol.name, "deleted volume");
        Ok(DeleteVolumeResponse {})
    }

    /// ControllerExpandVolume: raises the quota. Shrinking is a no-op that reports the
    /// current size, as the spec allows; the node has nothing left to do.
    pub fn controller_expand_volume(
        &self,
        req: ControllerExpandVolumeRequest,
    ) -> Result<ControllerExpandVolumeResponse> {
        let id = required(&req.volume_id, "volume_id")?;
        let Some(range) = req.capacity_range else {
            return Err(Error::InvalidArgument("capacity_range is required".into()));
        };
        let (required_bytes, limit_bytes) = capacity_range(Some(range))?;
        if let Some(cap) = &req.volume_capability {
            capability::require_supported(std::slice::from_ref(cap))?;
        }
        let mut state = self.lock();
        let vol = state
            .volumes
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("volume {id:?} does not exist")))?;
        if limit_bytes > 0 && vol.capacity_bytes > limit_bytes {
            return Err(Error::OutOfRange(format!(
                "volume {id} has {} bytes, more than limit_bytes {limit_bytes}; volumes do not shrink",
                vol.capacity_bytes
            )));
        }
        if required_bytes <= vol.capacity_bytes {
            return Ok(ControllerExpandVolumeResponse {
                capacity_bytes: vol.capacity_bytes,
                node_expansion_required: false,
            });
        }
        let total = self.total_capacity()?;
        let available = total - state.provisioned_bytes();
        if required_bytes - vol.capacity_bytes > available {
            return Err(Error::OutOfRange(format!(
                "growing volume {id} to {required_bytes} bytes needs {} more; {available} are free",
                required_bytes - vol.capacity_bytes
            )));
        }
        if let Some(pid) = vol.project_id {
            self.quota.set_limit(pid, required_bytes)?;
        }
        if vol.block {
            let image = self.volume_dir(id).join(loopdev::IMAGE);
            fs::OpenOptions::new()
                .write(true)
                .open(&image)
                .and_then(|f| f.set_len(u64::try_from(required_bytes).unwrap_or(0)))
                .map_err(Error::io("grow", &image))?;
        }
        let mut next = state.clone();
        if let Some(v) = next.volumes.get_mut(id) {
            v.capacity_bytes = required_bytes;
        }
        if let Err(err) = self.commit(&mut state, next) {
            if let Some(pid) = vol.project_id {
                let _ = self.quota.set_limit(pid, vol.capacity_bytes);
            }
            return Err(err);
        }
        tracing::info!(volume = %id, from = vol.capacity_bytes, to = required_bytes, "expanded volume");
        Ok(ControllerExpandVolumeResponse {
            capacity_bytes: required_bytes,
            // A loop device attached to the image re-reads its size at NodeExpandVolume.
            node_expansion_required: vol.block,
        })
    }

    /// ValidateVolumeCapabilities.
    pub fn validate_volume_capabilities(
        &self,
        req: ValidateVolumeCapabilitiesRequest,
    ) -> Result<ValidateVolumeCapabilitiesResponse> {
        let id = required(&req.volume_id, "volume_id")?;
        let reason = capability::unsupported(&req.volume_capabilities)?;
        let Some(vol) = self.lock().volumes.get(id).cloned() else {
            return Err(Error::NotFound(format!("volume {id:?} does not exist")));
        };
        let reason = reason.or_else(|| match capability::is_block(&req.volume_capabilities) {
            Ok(block) if block == vol.block => None,
            Ok(_) => Some(format!(
                "volume {id} is a {} volume",
                if vol.block { "block" } else { "filesystem" }
            )),
            Err(err) => Some(err.to_string()),
        });
        let reason = reason.or_else(|| {
            check_parameters(&req.parameters)
                .err()
                .map(|e| e.to_string())
        });
        Ok(match reason {
            Some(message) => ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message,
            },
            None => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            },
        })
    }

    /// OUT_OF_RANGE for a volume larger than the node, RESOURCE_EXHAUSTED for one larger
    /// than what is left.
    pub(crate) fn check_room(&self, state: &State, capacity: i64) -> Result<()> {
        let total = self.total_capacity()?;
        if capacity > total {
            return Err(Error::OutOfRange(format!(
                "{capacity} bytes is more than this node's capacity of {total} bytes"
            )));
        }
        let available = total - state.provisioned_bytes();
        if capacity > available {
            return Err(Error::ResourceExhausted(format!(
                "{capacity} bytes requested, {available} of {total} bytes are unprovisioned"
            )));
        }
        Ok(())
    }

    /// RESOURCE_EXHAUSTED when the requisite topology excludes this node (spec.md,
    /// CreateVolume: "Unable to provision in `accessible_topology`").
    fn check_requisite_topology(&self, req: Option<&proto::TopologyRequirement>) -> Result<()> {
        let Some(req) = req else { return Ok(()) };
        if req.requisite.is_empty() || req.requisite.iter().any(|t| self.is_this_node(t)) {
            return Ok(());
        }
        Err(Error::ResourceExhausted(format!(
            "the requisite topology does not include this node ({}={})",
            crate::driver::TOPOLOGY_KEY,
            self.config.node_id
        )))
    }

    /// Whether topology `t` names this node (and nothing this driver does not know).
    pub(crate) fn is_this_node(&self, t: &proto::Topology) -> bool {
        t.segments
            .iter()
            .all(|(k, v)| k == crate::driver::TOPOLOGY_KEY && *v == self.config.node_id)
    }

    /// The CSI message for volume `id`.
    pub(crate) fn volume_message(&self, id: &str, vol: &Volume) -> proto::Volume {
        proto::Volume {
            capacity_bytes: vol.capacity_bytes,
            volume_id: id.to_owned(),
            volume_context: Default::default(),
            content_source: vol.source.as_ref().map(|s| VolumeContentSource {
                r#type: Some(match s {
                    Source::Snapshot(id) => volume_content_source::Type::Snapshot(
                        volume_content_source::SnapshotSource {
                            snapshot_id: id.clone(),
                        },
                    ),
                    Source::Volume(id) => {
                        volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                            volume_id: id.clone(),
                        })
                    }
                }),
            }),
            accessible_topology: vec![self.topology()],
        }
    }
}

/// The source a CreateVolume asks for; INVALID_ARGUMENT for an empty one.
fn content_source(source: Option<&VolumeContentSource>) -> Result<Option<Source>> {
    let Some(source) = source else {
        return Ok(None);
    };
    match &source.r#type {
        None => Err(Error::InvalidArgument(
            "volume_content_source has neither snapshot nor volume".into(),
        )),
        Some(volume_content_source::Type::Snapshot(s)) => Ok(Some(Source::Snapshot(
            required(&s.snapshot_id, "volume_content_source.snapshot.snapshot_id")?.to_owned(),
        ))),
        Some(volume_content_source::Type::Volume(v)) => Ok(Some(Source::Volume(
            required(&v.volume_id, "volume_content_source.volume.volume_id")?.to_owned(),
        ))),
    }
}

/// The lowest project id above every one in use.
fn next_project_id(state: &State) -> u32 {
    state
        .volumes
        .values()
        .filter_map(|v| v.project_id)
        .max()
        .map_or(PROJECT_ID_BASE, |m| m.saturating_add(1))
}
