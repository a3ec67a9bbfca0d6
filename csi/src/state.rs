//! The driver's metadata: which volume and snapshot names map to which ids, with their
//! capacity. It lives in one JSON file under `--root`, rewritten whole on each change
//! (write a temporary file, fsync, rename over the old one, fsync the directory), so a
//! crash leaves either the old or the new file and a restart keeps CreateVolume and
//! CreateSnapshot idempotent by name.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a volume's first contents came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// A copy of a snapshot.
    Snapshot(String),
    /// A clone of another volume.
    Volume(String),
}

/// One provisioned volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// The CreateVolume name the CO chose.
    pub name: String,
    /// The size limit, in bytes.
    pub capacity_bytes: i64,
    /// The project quota id of its directory, when quotas are enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u32>,
    /// The content source it was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// A block volume (an image file on a loop device) rather than a directory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block: bool,
}

/// One snapshot: a copy of a volume's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The CreateSnapshot name the CO chose.
    pub name: String,
    /// The volume it was taken from.
    pub source_volume_id: String,
    /// Bytes used by the copy.
    pub size_bytes: i64,
    /// Creation time, seconds since the epoch.
    pub created_seconds: i64,
    /// Creation time, the nanoseconds past `created_seconds`.
    pub created_nanos: i32,
    /// A copy of a block volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block: bool,
}

/// One NodePublishVolume in effect, keyed by its target path: the mount table says
/// what is mounted, this says with which access mode, so a second publish can be
/// checked against the spec's table (spec.md, NodePublishVolume).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Publication {
    /// The volume published there.
    pub volume_id: String,
    /// Its `VolumeCapability.AccessMode.Mode`.
    pub access_mode: i32,
    /// Whether it is mounted read-only.
    pub readonly: bool,
    /// The read-only loop device of a readonly block publish, detached at unpublish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_device: Option<u32>,
}

/// Everything the driver remembers, keyed by id (ids sort in creation order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    #[serde(default)]
    pub volumes: BTreeMap<String, Volume>,
    #[serde(default)]
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Target path → the publish in effect there.
    #[serde(default)]
    pub publications: BTreeMap<String, Publication>,
}

impl State {
    /// The id of the volume called `name`.
    pub fn volume_by_name(&self, name: &str) -> Option<(&String, &Volume)> {
        self.volumes.iter().find(|(_, v)| v.name == name)
    }

    /// The id of the snapshot called `name`.
    pub fn snapshot_by_name(&self, name: &str) -> Option<(&String, &Snapshot)> {
        self.snapshots.iter().find(|(_, s)| s.name == name)
    }

    /// Bytes promised to all volumes together.
    pub fn provisioned_bytes(&self) -> i64 {
        self.volumes.values().map(|v| v.capacity_bytes).sum()
    }

    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Metadata {
                path: path.to_owned(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io("read", path)(e)),
        }
    }

    /// Replaces the state file atomically with this state.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp: PathBuf = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Metadata {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("write", &tmp)(e));
        }
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("rename", path)(e));
        }
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io("fsync", dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("state.json");
        assert_eq!(
            State::load(&path).expect("missing is empty"),
            State::default()
        );
        let mut state = State::default();
        state.volumes.insert(
            "vol-1".into(),
            Volume {
                name: "pvc-a".into(),
                capacity_bytes: 1 << 20,
                project_id: Some(7),
                source: Some(Source::Snapshot("snap-1".into())),
                block: false,
            },
        );
        state.save(&path).expect("save");
        assert_eq!(State::load(&path).expect("load"), state);
        assert!(!path.with_extension("json.tmp").exists());
        assert_eq!(state.provisioned_bytes(), 1 << 20);
        assert_eq!(
            state.volume_by_name("pvc-a").map(|(id, _)| id.as_str()),
            Some("vol-1")
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("state.json");
        fs::write(&path, b"{not json").expect("write");
        assert!(matches!(State::load(&path), Err(Error::Metadata { .. })));
    }
}
