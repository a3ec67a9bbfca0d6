//! A child cgroup in the cgroup2 hierarchy — never the root — removed on drop after
//! killing whatever is still in it.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::unique_name;

/// Where cgroup2 is mounted: `/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        // mountinfo: ... mount_point ... - fstype source options
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        before.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A child of the cgroup2 root, made for one test.
#[derive(Debug)]
pub struct Cgroup2Child {
    path: PathBuf,
}

impl Cgroup2Child {
    /// Makes `<cgroup2 root>/<prefix><unique>`.
    ///
    /// # Panics
    /// If there is no cgroup2 mount or the directory cannot be made.
    pub fn new(prefix: &str) -> Self {
        let root = cgroup2_mount().expect("no cgroup2 mount in /proc/self/mountinfo");
        let path = root.join(unique_name(prefix));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    /// The cgroup directory (attach programs here).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cgroup.procs` of this cgroup: a process that writes its pid here joins it.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup2Child {
    fn drop(&mut self) {
        for _ in 0..50 {
            for pid in self.pids() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}
