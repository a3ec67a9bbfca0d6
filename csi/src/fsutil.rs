//! Directory helpers: measuring a tree's usage and copying one (snapshots and volumes
//! created from a snapshot or a clone are plain copies of the directory).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::Path;

use crate::error::{Error, Result};
use crate::quota::Usage;

/// Bytes allocated (`st_blocks` × 512, each hard-linked inode once) and inodes used
/// under `dir`, `dir` itself included. Entries that vanish mid-walk are skipped.
pub fn dir_usage(dir: &Path) -> Result<Usage> {
    let mut usage = Usage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_owned()];
    let root = fs::symlink_metadata(dir).map_err(Error::io("stat", dir))?;
    add(&mut usage, &mut seen, &root);
    while let Some(path) = stack.pop() {
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read_dir", &path)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io("read_dir", &path))?;
            let Ok(meta) = entry.metadata() else { continue };
            add(&mut usage, &mut seen, &meta);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

fn add(usage: &mut Usage, seen: &mut HashSet<(u64, u64)>, meta: &fs::Metadata) {
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
        return;
    }
    usage.bytes = usage
        .bytes
        .saturating_add(i64::try_from(meta.blocks().saturating_mul(512)).unwrap_or(i64::MAX));
    usage.inodes = usage.inodes.saturating_add(1);
}

/// Copies the contents of `from` into the existing directory `to`: directories, regular
/// files and symlinks with their modes and owners. Anything else (sockets, FIFOs,
/// devices) is refused rather than silently dropped.
pub fn copy_contents(from: &Path, to: &Path) -> Result<()> {
    for entry in fs::read_dir(from).map_err(Error::io("read_dir", from))? {
        let entry = entry.map_err(Error::io("read_dir", from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src).map_err(Error::io("stat", &src))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(&src).map_err(Error::io("readlink", &src))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(Error::io("symlink", &dst))?;
        } else if kind.is_dir() {
            fs::create_dir(&dst).map_err(Error::io("mkdir", &dst))?;
            copy_contents(&src, &dst)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(Error::io("chmod", &dst))?;
        } else if kind.is_file() {
            fs::copy(&src, &dst).map_err(Error::io("copy", &dst))?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(Error::io("chmod", &dst))?;
        } else {
            return Err(Error::FailedPrecondition(format!(
                "cannot copy {}: only directories, regular files and symlinks are copied",
                src.display()
            )));
        }
        lchown(&dst, Some(meta.uid()), Some(meta.gid())).map_err(Error::io("chown", &dst))?;
    }
    Ok(())
}

/// Removes `path` and everything under it; a missing path is not an error.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_dirs_and_symlinks_and_counts_usage() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let from = dir.path().join("from");
        let to = dir.path().join("to");
        fs::create_dir_all(from.join("sub")).expect("mkdir");
        fs::write(from.join("sub/file"), vec![7u8; 10_000]).expect("write");
        std::os::unix::fs::symlink("sub/file", from.join("link")).expect("symlink");
        fs::set_permissions(from.join("sub/file"), fs::Permissions::from_mode(0o640))
            .expect("chmod");
        fs::create_dir(&to).expect("mkdir");
        copy_contents(&from, &to).expect("copy");
        assert_eq!(fs::read(to.join("sub/file")).expect("read").len(), 10_000);
        assert_eq!(
            fs::read_link(to.join("link")).expect("readlink"),
            Path::new("sub/file")
        );
        let mode = fs::metadata(to.join("sub/file")).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o640);
        let usage = dir_usage(&to).expect("usage");
        assert_eq!(usage.inodes, 4, "to, sub, sub/file, link");
        assert!(
            usage.bytes >= 10_000,
            "at least the file's bytes: {usage:?}"
        );
        remove_tree(&to).expect("remove");
        remove_tree(&to).expect("removing again is fine");
    }
}
