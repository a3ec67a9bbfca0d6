//! Shared helpers of the runtime's integration tests: test images, leak checks.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use berth_runtime::image::ImageStore;

/// `target/images/<name>` as `cargo xtask images` writes it.
pub fn image_layout(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/images")
        .join(name);
    assert!(
        dir.join("index.json").exists(),
        "{} is missing: run `cargo xtask images` (cargo xtask test does)",
        dir.display()
    );
    dir
}

pub fn runtime_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth-runtime"))
}

/// Imports the test images into a store at `dir`.
pub fn store_with_images(dir: &Path) -> ImageStore {
    let store = ImageStore::open(dir).expect("open store");
    for name in ["busybox", "testserver", "pause"] {
        store
            .import_layout(&image_layout(name), None)
            .unwrap_or_else(|e| panic!("import {name}: {e}"));
    }
    store
}

/// Mount points in this mount namespace under `prefix`.
pub fn mounts_under(prefix: &Path) -> Vec<String> {
    let prefix = prefix.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// cgroup directories named `name` under any v1/v2 hierarchy at `rel` (a path below
/// each hierarchy root).
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = entry.path().join(rel);
        if p.exists() {
            found.push(p);
        }
    }
    let unified = Path::new("/sys/fs/cgroup").join(rel);
    if unified.exists() {
        found.push(unified);
    }
    found
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    berth_runtime::state::pid_start_time(pid).is_some()
}
