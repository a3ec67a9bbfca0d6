//! CreateSnapshot, DeleteSnapshot and ListSnapshots. A snapshot is a copy of the
//! volume's directory, made in `tmp/` and renamed into `snapshots/` once complete, so
//! no half-copied snapshot is ever listed. The copy is of a live directory: it is
//! consistent when the volume is not being written (the CO quiesces, as for any
//! snapshot without filesystem freeze).

use std::fs;

use crate::driver::{Driver, new_id, now};
use crate::error::{Error, Result, required};
use crate::fsutil;
use crate::proto::{
    self, CreateSnapshotRequest, CreateSnapshotResponse, DeleteSnapshotRequest,
    DeleteSnapshotResponse, ListSnapshotsRequest, ListSnapshotsResponse,
    list_snapshots_response::Entry,
};
use crate::state::Snapshot;

use super::{check_parameters, page};

impl Driver {
    /// CreateSnapshot: idempotent by name; the same name for another source volume is
    /// ALREADY_EXISTS.
    pub fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<CreateSnapshotResponse> {
        let source = required(&req.source_volume_id, "source_volume_id")?;
        let name = required(&req.name, "name")?;
        check_parameters(&req.parameters)?;
        let mut state = self.lock();
        if let Some((id, snap)) = state.snapshot_by_name(name) {
            if snap.source_volume_id != source {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {name:?} exists for volume {}, not {source}",
                    snap.source_volume_id
                )));
            }
            return Ok(CreateSnapshotResponse {
                snapshot: Some(snapshot_message(id, snap)),
            });
        }
        let Some(block) = state.volumes.get(source).map(|v| v.block) else {
            return Err(Error::NotFound(format!(
                "source volume {source:?} does not exist"
            )));
        };
        let id = new_id("snap")?;
        let tmp = self.tmp_path(&id);
        let dir = self.snapshot_dir(&id);
        let copy = || -> Result<i64> {
            fs::create_dir(&tmp).map_err(Error::io("mkdir", &tmp))?;
            // A full disk is "Not enough space to create snapshot" (RESOURCE_EXHAUSTED).
            fsutil::copy_contents(&self.volume_dir(source), &tmp).map_err(Error::out_of_space)?;
            // A block snapshot restores to at least its image's size (a smaller volume
            // would cut the image); a directory's size is what its files take.
            let size = if block {
                let image = tmp.join(crate::loopdev::IMAGE);
                let len = fs::metadata(&image)
                    .map_err(Error::io("stat", &image))?
                    .len();
                i64::try_from(len).unwrap_or(i64::MAX)
            } else {
                fsutil::dir_usage(&tmp)?.bytes
            };
            fs::rename(&tmp, &dir).map_err(Error::io("rename", &dir))?;
            Ok(size)
        };
        let size_bytes = match copy() {
            Ok(size) => size,
            Err(err) => {
                let _ = fsutil::remove_tree(&tmp);
                let _ = fsutil::remove_tree(&dir);
                return Err(err);
            }
        };
        let (created_seconds, created_nanos) = now();
        let snap = Snapshot {
            name: name.to_owned(),
            source_volume_id: source.to_owned(),
            size_bytes,
            created_seconds,
            created_nanos,
            block,
        };
        let mut next = state.clone();
        next.snapshots.insert(id.clone(), snap.clone());
        if let Err(err) = self.commit(&mut state, next) {
            let _ = fsutil::remove_tree(&dir);
            return Err(err);
        }
        tracing::info!(snapshot = %id, %name, volume = %source, size_bytes, "created snapshot");
        Ok(CreateSnapshotResponse {
            snapshot: Some(snapshot_message(&id, &snap)),
        })
    }

    /// DeleteSnapshot: idempotent, an unknown id is success. Volumes made from it are
    /// copies and stay.
    pub fn delete_snapshot(&self, req: DeleteSnapshotRequest) -> Result<DeleteSnapshotResponse> {
        let id = required(&req.snapshot_id, "snapshot_id")?;
        let mut state = self.lock();
        if !state.snapshots.contains_key(id) {
            return Ok(DeleteSnapshotResponse {});
        }
        let dir = self.snapshot_dir(id);
        let trash = self.tmp_path(id);
        fs::rename(&dir, &trash).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(Error::io("rename", &dir)(e))
            }
        })?;
        let mut next = state.clone();
        next.snapshots.remove(id);
        if let Err(err) = self.commit(&mut state, next) {
            let _ = fs::rename(&trash, &dir);
            return Err(err);
        }
        if let Err(err) = fsutil::remove_tree(&trash) {
            tracing::error!(?err, snapshot = %id, "cannot remove a deleted snapshot's copy");
        }
        tracing::info!(snapshot = %id, "deleted snapshot");
        Ok(DeleteSnapshotResponse {})
    }

    /// ListSnapshots, filtered by snapshot id or source volume, paginated like
    /// ListVolumes.
    pub fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        let state = self.lock();
        let items = state
            .snapshots
            .iter()
            .filter(|(id, s)| {
                (req.snapshot_id.is_empty() || **id == req.snapshot_id)
                    && (req.source_volume_id.is_empty()
                        || s.source_volume_id == req.source_volume_id)
            })
            .map(|(id, s)| (id.clone(), s));
        let (entries, next_token) = page(items, req.max_entries, &req.starting_token, "snap")?;
        Ok(ListSnapshotsResponse {
            entries: entries
                .into_iter()
                .map(|(id, s)| Entry {
                    snapshot: Some(snapshot_message(&id, s)),
                })
                .collect(),
            next_token,
        })
    }
}

fn snapshot_message(id: &str, snap: &Snapshot) -> proto::Snapshot {
    proto::Snapshot {
        size_bytes: snap.size_bytes,
        snapshot_id: id.to_owned(),
        source_volume_id: snap.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: snap.created_seconds,
            nanos: snap.created_nanos,
        }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}
