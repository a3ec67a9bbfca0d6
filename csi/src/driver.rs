//! The driver's core: its configuration, the on-disk layout under `--root`, the
//! metadata and the quota mode. The gRPC services (`service.rs`) call the
//! synchronous methods in `controller/` and `node/` on a blocking thread; every call
//! that changes something holds the one state lock, so calls on the same name or
//! path never interleave.
//!
//! Layout: `<root>/state.json` (the metadata), `<root>/volumes/<id>/` (a volume),
//! `<root>/snapshots/<id>/` (a snapshot), `<root>/tmp/` (copies in progress).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::proto;
use crate::quota::Quota;
use crate::state::State;

/// The driver's name in GetPluginInfo; StorageClasses name it as their provisioner.
pub const DRIVER_NAME: &str = "csi.berth.io";
/// The topology key every volume and node carries.
pub const TOPOLOGY_KEY: &str = "topology.berth.io/node";

/// What the driver is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding the volumes, snapshots and metadata.
    pub root: PathBuf,
    /// This node's id (NodeGetInfo), normally the Kubernetes node name.
    pub node_id: String,
    /// Capacity of a volume whose CreateVolume gives no `capacity_range`.
    pub default_capacity: i64,
    /// Total bytes the driver may promise to volumes; `None` is the size of the
    /// filesystem holding `root`.
    pub capacity: Option<i64>,
    /// NodeGetInfo's `max_volumes_per_node` (0: no limit).
    pub max_volumes_per_node: i64,
}

/// The running driver.
#[derive(Debug)]
pub struct Driver {
    pub(crate) config: Config,
    pub(crate) quota: Quota,
    state: Mutex<State>,
    /// Serializes the node calls: two publishes of one target must not interleave.
    node: Mutex<()>,
}

impl Driver {
    /// Prepares `config.root`, loads the metadata, detects quota support and removes
    /// what a crash left half-made (directories with no metadata, unfinished copies).
    pub fn open(mut config: Config) -> Result<Self> {
        if config.node_id.is_empty() {
            return Err(Error::InvalidArgument("--node-id is required".into()));
        }
        for sub in ["volumes", "snapshots", "tmp"] {
            let dir = config.root.join(sub);
            fs::create_dir_all(&dir).map_err(Error::io("mkdir", &dir))?;
        }
        config.root =
            fs::canonicalize(&config.root).map_err(Error::io("canonicalize", &config.root))?;
        let state = State::load(&config.root.join("state.json"))?;
        let quota = Quota::detect(&config.root)?;
        match &quota {
            Quota::Project { fs_type, device } => tracing::info!(
                root = %config.root.display(), %fs_type, device = %device.display(),
                "volume sizes are enforced with project quotas"
            ),
            Quota::None { reason } => tracing::warn!(
                root = %config.root.display(), %reason,
                "volume sizes are NOT enforced (no project quotas); usage is reported from directory walks"
            ),
        }
        let driver = Self {
            config,
            quota,
            state: Mutex::new(state),
            node: Mutex::new(()),
        };
        driver.collect_garbage()?;
        Ok(driver)
    }

    /// Removes directories the metadata does not know: the leftovers of a crash between
    /// making a directory and recording it (or between forgetting and removing it).
    fn collect_garbage(&self) -> Result<()> {
        let mut state = self.lock();
        let tmp = self.config.root.join("tmp");
        fsutil::remove_tree(&tmp)?;
        fs::create_dir_all(&tmp).map_err(Error::io("mkdir", &tmp))?;
        for (sub, known) in [
            (
                "volumes",
                &state.volumes.keys().cloned().collect::<Vec<_>>(),
            ),
            (
                "snapshots",
                &state.snapshots.keys().cloned().collect::<Vec<_>>(),
            ),
        ] {
            let dir = self.config.root.join(sub);
            for entry in fs::read_dir(&dir).map_err(Error::io("read_dir", &dir))? {
                let entry = entry.map_err(Error::io("read_dir", &dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !known.contains(&name) {
                    tracing::warn!(path = %entry.path().display(), "removing a leftover with no metadata");
                    fsutil::remove_tree(&entry.path())?;
                }
            }
        }
        // Forget publications whose target no longer shows the volume (unmounted by
        // someone else, or the node rebooted).
        let stale: Vec<String> = state
            .publications
            .iter()
            .filter(|(target, p)| {
                !matches!(
                    crate::node::what_is_at(Path::new(target), &self.volume_dir(&p.volume_id)),
                    Ok(crate::node::At::Volume(_))
                )
            })
            .map(|(target, _)| target.clone())
            .collect();
        if !stale.is_empty() {
            let mut next = state.clone();
            for target in &stale {
                tracing::info!(%target, "forgetting a publication that is no longer mounted");
                next.publications.remove(target);
            }
            self.commit(&mut state, next)?;
        }
        Ok(())
    }

    /// The state, locked.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed: changes
        // are made on a copy and stored only after the file is written.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The node-call lock.
    pub(crate) fn node_lock(&self) -> MutexGuard<'_, ()> {
        self.node
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Persists `next` and makes it the state.
    pub(crate) fn commit(&self, state: &mut State, next: State) -> Result<()> {
        next.save(&self.config.root.join("state.json"))?;
        *state = next;
        Ok(())
    }

    /// Applies `change` to a copy of the state and persists it.
    pub(crate) fn record(&self, change: impl FnOnce(&mut State)) -> Result<()> {
        let mut state = self.lock();
        let mut next = state.clone();
        change(&mut next);
        self.commit(&mut state, next)
    }

    /// The directory of volume `id`.
    pub(crate) fn volume_dir(&self, id: &str) -> PathBuf {
        self.config.root.join("volumes").join(id)
    }

    /// The directory of snapshot `id`.
    pub(crate) fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.config.root.join("snapshots").join(id)
    }

    /// A scratch path for a copy in progress.
    pub(crate) fn tmp_path(&self, id: &str) -> PathBuf {
        self.config.root.join("tmp").join(id)
    }

    /// How sizes are enforced.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// Total bytes the driver may promise.
    pub(crate) fn total_capacity(&self) -> Result<i64> {
        if let Some(c) = self.config.capacity {
            return Ok(c);
        }
        let st = nix::sys::statvfs::statvfs(&self.config.root)
            .map_err(Error::sys("statvfs", &self.config.root))?;
        Ok(i64::try_from(st.blocks().saturating_mul(st.fragment_size())).unwrap_or(i64::MAX))
    }

    /// This node's topology segment.
    pub(crate) fn topology(&self) -> proto::Topology {
        proto::Topology {
            segments: [(TOPOLOGY_KEY.to_owned(), self.config.node_id.clone())].into(),
        }
    }
}

/// A new id, `<prefix>-` then the creation time and random bits in hex, so ids sort in
/// creation order (ListVolumes pages walk them in that order).
pub(crate) fn new_id(prefix: &str) -> Result<String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut random = [0u8; 4];
    let urandom = Path::new("/dev/urandom");
    fs::File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(Error::io("read", urandom))?;
    Ok(format!(
        "{prefix}-{:020x}{:08x}",
        nanos as u64,
        u32::from_be_bytes(random)
    ))
}

/// Whether `id` has the shape [`new_id`] gives (also guards paths: no `/` or `..`).
pub(crate) fn valid_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| hex.len() == 28 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The current time as a protobuf timestamp's two fields.
pub(crate) fn now() -> (i64, i32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i32::try_from(d.subsec_nanos()).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_sorted_and_unique() {
        let a = new_id("vol").expect("id");
        let b = new_id("vol").expect("id");
        assert!(valid_id("vol", &a), "{a}");
        assert!(a < b, "{a} then {b}");
        assert!(!valid_id("vol", "vol-../../etc"));
        assert!(!valid_id("snap", &a));
    }
}
