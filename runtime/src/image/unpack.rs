//! Layer unpacking into an overlayfs lower directory. Whiteouts become what overlayfs
//! reads: `.wh.<name>` a 0/0 character device named `<name>`, `.wh..wh..opq` the
//! `trusted.overlay.opaque=y` attribute on its directory. Every name is confined to the
//! target: `..` cannot climb out, and existing symlinks are resolved inside the target,
//! never followed out of it.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use tar::EntryType;

use crate::paths::{clean_relative, secure_join};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("layer entry {entry:?}: {source}")]
    Entry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("reading layer: {0}")]
    Read(#[source] io::Error),
}

fn at(entry: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Entry {
        entry: entry.display().to_string(),
        source,
    }
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Removes whatever is at `path` (never following a symlink there).
fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Where an archive name lands inside `target`: the parent resolved safely, the last
/// component as is (so an entry replaces a symlink instead of writing through it).
fn place(target: &Path, name: &Path) -> io::Result<Option<PathBuf>> {
    let Some(rel) = clean_relative(name) else {
        return Ok(None);
    };
    let parent = match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => secure_join(target, p)?,
        _ => target.to_path_buf(),
    };
    let Some(file) = rel.file_name() else {
        return Ok(None);
    };
    fs::create_dir_all(&parent)?;
    Ok(Some(parent.join(file)))
}

/// Unpacks an uncompressed tar stream into `target` (created if missing).
pub fn unpack(reader: impl Read, target: &Path) -> Result<(), Error> {
    fs::create_dir_all(target).map_err(Error::Read)?;
    let mut archive = tar::Archive::new(reader);
    let mut dirs: Vec<(PathBuf, u32, Option<i64>)> = Vec::new();
    for entry in archive.entries().map_err(Error::Read)? {
        let mut entry = entry.map_err(Error::Read)?;
        let name = entry.path().map_err(Error::Read)?.into_owned();
        let file_name = name
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();

        if file_name == OPAQUE {
            let dir = match name.parent() {
                Some(p) if clean_relative(p).is_some() => {
                    secure_join(target, &clean_relative(p).unwrap_or_default())
                        .map_err(at(&name))?
                }
                _ => target.to_path_buf(),
            };
            fs::create_dir_all(&dir).map_err(at(&name))?;
            sys::lsetxattr(&dir, "trusted.overlay.opaque", b"y").map_err(at(&name))?;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            let Some(path) = place(target, &name.with_file_name(hidden)).map_err(at(&name))? else {
                continue;
            };
            remove_existing(&path).map_err(at(&name))?;
            mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| at(&name)(e.into()))?;
            continue;
        }

        let Some(path) = place(target, &name).map_err(at(&name))? else {
            continue; // the root directory itself
        };
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let kind = header.entry_type();

        if kind != EntryType::Directory {
            remove_existing(&path).map_err(at(&name))?;
        }
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_existing(&path).map_err(at(&name))?;
                        fs::create_dir(&path).map_err(at(&name))?;
                    }
                    Err(_) => fs::create_dir(&path).map_err(at(&name))?,
                }
                dirs.push((path.clone(), mode, header.mtime().ok().map(|m| m as i64)));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut out = fs::File::create(&path).map_err(at(&name))?;
                io::copy(&mut entry, &mut out).map_err(at(&name))?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(at(&name))?
                    .ok_or_else(|| at(&name)(io::Error::other("symlink without a target")))?;
                // The target text is kept verbatim: it is resolved inside the container's
                // root at run time, and this unpack never follows it.
                symlink(link.as_ref(), &path).map_err(at(&name))?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(at(&name))?
                    .ok_or_else(|| at(&name)(io::Error::other("hardlink without a target")))?;
                let rel = clean_relative(&link)
                    .ok_or_else(|| at(&name)(io::Error::other("hardlink to the layer root")))?;
                let source = secure_join(target, &rel).map_err(at(&name))?;
                fs::hard_link(&source, &path).map_err(at(&name))?;
                continue; // shares the source's inode: no metadata of its own
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let flag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
                let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
                mknod(
                    &path,
                    flag,
                    Mode::from_bits_truncate(mode),
                    makedev(major, minor),
                )
                .map_err(|e| at(&name)(e.into()))?;
            }
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => continue,
            other => {
                return Err(at(&name)(io::Error::other(format!(
                    "unsupported entry type {other:?}"
                ))));
            }
        }
        let _ = nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if kind != EntryType::Symlink && kind != EntryType::Directory {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(at(&name))?;
        }
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let Ok(key) = ext.key()
                    && let Some(attr) = key.strip_prefix("SCHILY.xattr.")
                {
                    // Best effort, as the issue allows: some attributes need privileges
                    // or filesystem support the host may lack.
                    let _ = sys::lsetxattr(&path, attr, ext.value_bytes());
                }
            }
        }
        if kind != EntryType::Symlink
            && let Ok(mtime) = header.mtime()
        {
            set_mtime(&path, mtime as i64);
        }
    }
    // Directory modes and times last: writing into them changed their mtime, and a
    // read-only directory mode would have stopped the writes.
    for (dir, mode, mtime) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(at(&dir))?;
        if let Some(m) = mtime {
            set_mtime(&dir, m);
        }
    }
    Ok(())
}

fn set_mtime(path: &Path, secs: i64) {
    let ts = nix::sys::time::TimeSpec::new(secs, 0);
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
}
