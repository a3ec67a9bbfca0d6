//! Size limits for volume directories: ext4 and xfs project quotas (ext4(5) `prjquota`,
//! xfs_quota(8)). Each volume directory gets its own project id with the inherit flag
//! and a hard block limit equal to its capacity, so writes past it fail with `EDQUOT`,
//! and `statfs` inside it reports the limit. Whether the filesystem under `--root` can
//! do this is checked once at start, honestly: when it cannot, the driver says why,
//! keeps accounting capacity, and measures usage by walking the directory.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::{mounts, sys};

/// Project ids the driver hands out start here, well above the small ids an
/// administrator writes into /etc/projid by hand.
pub const PROJECT_ID_BASE: u32 = 4_000_000;

/// How volume sizes are enforced on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quota {
    /// Project quotas on the block device holding `--root`.
    Project {
        /// The filesystem type (`ext4` or `xfs`).
        fs_type: String,
        /// The device `quotactl(2)` is called on.
        device: PathBuf,
    },
    /// Not enforced; usage is measured by walking the directory.
    None {
        /// Why project quotas are not available.
        reason: String,
    },
}

/// Usage of one volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated.
    pub bytes: i64,
    /// Inodes (files, directories, links) in use.
    pub inodes: i64,
}

impl Quota {
    /// Finds out whether the filesystem holding `root` (canonical) enforces project quotas.
    pub fn detect(root: &Path) -> Result<Self> {
        let Some(mount) = mounts::mount_holding(root)? else {
            return Ok(Quota::None {
                reason: format!("no mount holds {} in /proc/self/mountinfo", root.display()),
            });
        };
        if mount.fs_type != "ext4" && mount.fs_type != "xfs" {
            return Ok(Quota::None {
                reason: format!(
                    "{} is on {} ({}), which has no project quotas (ext4 and xfs do)",
                    root.display(),
                    mount.mount_point.display(),
                    mount.fs_type
                ),
            });
        }
        if !mount
            .super_options
            .iter()
            .any(|o| o == "prjquota" || o == "pquota")
        {
            return Ok(Quota::None {
                reason: format!(
                    "{} ({} on {}) is mounted without prjquota",
                    mount.mount_point.display(),
                    mount.fs_type,
                    mount.source.display()
                ),
            });
        }
        if let Err(errno) = sys::project_quota_info(&mount.source) {
            return Ok(Quota::None {
                reason: format!(
                    "quotactl(Q_GETINFO, PRJQUOTA) on {} failed: {errno}",
                    mount.source.display()
                ),
            });
        }
        Ok(Quota::Project {
            fs_type: mount.fs_type,
            device: mount.source,
        })
    }

    /// A short name for logs and the plugin manifest.
    pub fn mode(&self) -> String {
        match self {
            Quota::Project { fs_type, .. } => format!("{fs_type}-project-quota"),
            Quota::None { .. } => "none".to_owned(),
        }
    }

    /// Whether sizes are enforced.
    pub fn enforced(&self) -> bool {
        matches!(self, Quota::Project { .. })
    }

    /// Puts `dir` in project `id` and limits it to `bytes`.
    pub fn apply(&self, dir: &Path, id: u32, bytes: i64) -> Result<()> {
        if let Quota::Project { device, .. } = self {
            sys::set_project(dir, id)?;
            sys::set_project_limit(device, id, u64::try_from(bytes).unwrap_or(0))?;
        }
        Ok(())
    }

    /// Changes the limit of project `id`.
    pub fn set_limit(&self, id: u32, bytes: i64) -> Result<()> {
        if let Quota::Project { device, .. } = self {
            sys::set_project_limit(device, id, u64::try_from(bytes).unwrap_or(0))?;
        }
        Ok(())
    }

    /// Removes the limit of project `id` (its directory is gone).
    pub fn release(&self, id: u32) -> Result<()> {
        self.set_limit(id, 0)
    }

    /// Usage of the volume at `dir`: from the quota when enforced (exact and cheap),
    /// otherwise by walking the directory.
    pub fn usage(&self, dir: &Path, id: Option<u32>) -> Result<Usage> {
        if let (Quota::Project { device, .. }, Some(id)) = (self, id) {
            let dq = sys::get_project_quota(device, id)?;
            return Ok(Usage {
                bytes: i64::try_from(dq.dqb_curspace).unwrap_or(i64::MAX),
                inodes: i64::try_from(dq.dqb_curinodes).unwrap_or(i64::MAX),
            });
        }
        crate::fsutil::dir_usage(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filesystem_without_project_quotas_says_why() {
        let quota = Quota::detect(Path::new("/proc/self")).expect("mountinfo");
        match &quota {
            Quota::None { reason } => assert!(reason.contains("proc"), "{reason}"),
            Quota::Project { .. } => panic!("procfs has no project quotas"),
        }
        assert!(!quota.enforced());
        assert_eq!(quota.mode(), "none");
        // Without quotas, applying and releasing limits changes nothing and fails nothing.
        quota
            .apply(Path::new("/nonexistent"), PROJECT_ID_BASE, 1)
            .expect("no-op");
        quota.release(PROJECT_ID_BASE).expect("no-op");
    }
}
