//! A private bpffs instance mounted on a temporary directory, for pinning tests;
//! unmounted (which frees whatever is still pinned) and removed on drop.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::unique_name;

/// A bpffs mounted for one test.
#[derive(Debug)]
pub struct BpfFs {
    dir: PathBuf,
}

impl BpfFs {
    /// Mounts a new bpffs instance on a fresh temporary directory.
    #[expect(
        clippy::new_without_default,
        reason = "mounting a filesystem is not a default value"
    )]
    ///
    /// # Panics
    /// If the directory cannot be made or the mount fails.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("berth-bpffs-"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        mount(
            Some("bpf"),
            &dir,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount bpffs on {}: {e}", dir.display()));
        Self { dir }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.dir, MntFlags::MNT_DETACH) {
            eprintln!("warning: could not unmount {}: {e}", self.dir.display());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
