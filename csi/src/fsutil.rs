//! Directory helpers: measuring a tree's usage and copying one (snapshots and volumes
//! created from a snapshot or a clone are plain copies of the directory).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

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

/// Copies the contents of `from` into the existing directory `to`, as `cp -a` would:
/// directories, regular files, symlinks, FIFOs and device nodes, with owners, modes
/// and modification times, hard links kept as links; `to` itself takes `from`'s
/// owner, mode and times. Sockets are skipped: a socket file means nothing without its
/// listener (MySQL keeps `mysql.sock` in its data directory, which must not stop a
/// snapshot).
pub fn copy_contents(from: &Path, to: &Path) -> Result<()> {
    let mut links = HashMap::new();
    copy_dir(from, to, &mut links)?;
    let meta = fs::symlink_metadata(from).map_err(Error::io("stat", from))?;
    apply_metadata(to, &meta)
}

fn copy_dir(from: &Path, to: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> Result<()> {
    for entry in fs::read_dir(from).map_err(Error::io("read_dir", from))? {
        let entry = entry.map_err(Error::io("read_dir", from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src).map_err(Error::io("stat", &src))?;
        let kind = meta.file_type();
        if !kind.is_dir() && meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                fs::hard_link(first, &dst).map_err(Error::io("link", &dst))?;
                continue;
            }
            links.insert((meta.dev(), meta.ino()), dst.clone());
        }
        if kind.is_symlink() {
            let target = fs::read_link(&src).map_err(Error::io("readlink", &src))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(Error::io("symlink", &dst))?;
        } else if kind.is_dir() {
            fs::create_dir(&dst).map_err(Error::io("mkdir", &dst))?;
            copy_dir(&src, &dst, links)?;
        } else if kind.is_file() {
            copy_sparse(&src, &dst)?;
        } else if kind.is_fifo() || kind.is_char_device() || kind.is_block_device() {
            let sflag = SFlag::from_bits_truncate(meta.mode() & SFlag::S_IFMT.bits());
            nix::sys::stat::mknod(&dst, sflag, Mode::from_bits_truncate(0o600), meta.rdev())
                .map_err(Error::sys("mknod", &dst))?;
        } else {
            tracing::debug!(path = %src.display(), "not copying a socket");
            continue;
        }
        apply_metadata(&dst, &meta)?;
    }
    Ok(())
}

/// Copies regular file `src` to a new `dst`, keeping its holes (SEEK_DATA/SEEK_HOLE,
/// lseek(2)): a block volume's image is mostly holes, and copying them as zeros would
/// allocate its whole size.
fn copy_sparse(src: &Path, dst: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsFd;

    use nix::unistd::{Whence, lseek};

    let mut from = fs::File::open(src).map_err(Error::io("open", src))?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(Error::io("create", dst))?;
    let len = from.metadata().map_err(Error::io("stat", src))?.len();
    let len_off = i64::try_from(len).unwrap_or(i64::MAX);
    let mut offset: i64 = 0;
    while offset < len_off {
        let data = match lseek(from.as_fd(), offset, Whence::SeekData) {
            Ok(data) => data,
            Err(nix::Error::ENXIO) => break, // only a hole is left
            Err(e) => return Err(Error::sys("lseek(SEEK_DATA)", src)(e)),
        };
        let hole = lseek(from.as_fd(), data, Whence::SeekHole)
            .map_err(Error::sys("lseek(SEEK_HOLE)", src))?;
        let start = u64::try_from(data).unwrap_or(0);
        let count = u64::try_from(hole - data).unwrap_or(0);
        from.seek(SeekFrom::Start(start))
            .map_err(Error::io("seek", src))?;
        to.seek(SeekFrom::Start(start))
            .map_err(Error::io("seek", dst))?;
        let copied =
            std::io::copy(&mut (&mut from).take(count), &mut to).map_err(Error::io("copy", dst))?;
        if copied < count {
            break; // the file shrank while being copied
        }
        offset = hole;
    }
    to.set_len(len).map_err(Error::io("truncate", dst))?;
    Ok(())
}

/// Gives `path` the owner, mode and times in `meta` (owner first: chown clears the
/// set-id bits, so the mode comes after it). Symlinks keep their own mode.
fn apply_metadata(path: &Path, meta: &fs::Metadata) -> Result<()> {
    lchown(path, Some(meta.uid()), Some(meta.gid())).map_err(Error::io("chown", path))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(Error::io("chmod", path))?;
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(Error::sys("utimensat", path))
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
    fn sparse_files_stay_sparse() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().expect("a temp dir");
        let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
        let mut f = fs::File::create(&src).expect("create");
        f.set_len(64 << 20).expect("64 MiB of hole");
        f.seek(SeekFrom::Start(32 << 20)).expect("seek");
        f.write_all(b"data in the middle").expect("write");
        drop(f);
        copy_sparse(&src, &dst).expect("copy");
        let (a, b) = (fs::read(&src).expect("read"), fs::read(&dst).expect("read"));
        assert!(a == b, "same bytes");
        let allocated = fs::metadata(&dst).expect("stat").blocks() * 512;
        assert!(
            allocated < 1 << 20,
            "the copy stays sparse: {allocated} bytes allocated"
        );
    }

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
        fs::hard_link(from.join("sub/file"), from.join("hardlink")).expect("hard link");
        nix::unistd::mkfifo(&from.join("fifo"), Mode::from_bits_truncate(0o640)).expect("mkfifo");
        let old = TimeSpec::new(1_000_000_000, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &from.join("sub/file"),
            &old,
            &old,
            UtimensatFlags::NoFollowSymlink,
        )
        .expect("set an old mtime");
        fs::create_dir(&to).expect("mkdir");
        copy_contents(&from, &to).expect("copy");
        let copied = fs::metadata(to.join("sub/file")).expect("stat");
        assert_eq!(copied.mtime(), 1_000_000_000, "mtime kept");
        let linked = fs::metadata(to.join("hardlink")).expect("stat");
        assert_eq!(
            (linked.ino(), linked.nlink()),
            (copied.ino(), 2),
            "hard link kept"
        );
        assert!(
            fs::symlink_metadata(to.join("fifo"))
                .expect("stat")
                .file_type()
                .is_fifo()
        );
        assert_eq!(fs::read(to.join("sub/file")).expect("read").len(), 10_000);
        assert_eq!(
            fs::read_link(to.join("link")).expect("readlink"),
            Path::new("sub/file")
        );
        let mode = fs::metadata(to.join("sub/file")).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o640);
        let usage = dir_usage(&to).expect("usage");
        assert_eq!(
            usage.inodes, 5,
            "to, sub, sub/file (+hardlink once), link, fifo"
        );
        assert!(
            usage.bytes >= 10_000,
            "at least the file's bytes: {usage:?}"
        );
        remove_tree(&to).expect("remove");
        remove_tree(&to).expect("removing again is fine");
    }
}
