//! `subPath` and `subPathExpr` mounts made safe as the kubelet makes them
//! (CVE-2017-1002101): the sub-path is resolved inside its volume in one `openat2` with
//! `RESOLVE_BENEATH` — a symlink a container planted that leads out of the volume fails
//! the lookup instead of being followed — missing directories are made one component
//! at a time with `mkdirat` under an already-resolved parent, and what the container
//! gets is a bind mount of the opened descriptor (`/proc/self/fd/<n>`) at
//! `<pod dir>/volume-subpaths/<volume>/<container>/<index>`, which nothing in a
//! container can swap afterwards. The pod's teardown unmounts it with its volumes.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why a sub-path could not be prepared; the kubelet's CreateContainerConfigError
/// messages, which name the mount but not the host paths.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    Create,
    Prepare,
}

impl Failure {
    pub fn message(&self, volume_mount: &str, container: &str) -> String {
        match self {
            Failure::Create => format!(
                "failed to create subPath directory for volumeMount {volume_mount:?} of container {container:?}"
            ),
            Failure::Prepare => format!(
                "failed to prepare subPath for volumeMount {volume_mount:?} of container {container:?}"
            ),
        }
    }
}

/// `openat2(dir, path, O_PATH | O_CLOEXEC, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.
fn open_beneath(dir: &OwnedFd, path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; all zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `c` is NUL-terminated, `how` is a valid open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok(fd)
}

/// Makes the missing directories of `sub` inside the volume open as `root`, each with
/// `mkdirat` under its resolved parent and the volume root's mode.
fn make_dirs(root: &OwnedFd, sub: &Path, mode: u32) -> std::io::Result<()> {
    let mut prefix = PathBuf::new();
    for part in sub.components() {
        let Component::Normal(name) = part else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let parent = if prefix.as_os_str().is_empty() {
            root.try_clone()?
        } else {
            open_beneath(root, &prefix)?
        };
        prefix.push(name);
        match open_beneath(root, &prefix) {
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let c = CString::new(name.as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `c` is a NUL-terminated single path component.
        let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Prepares `sub` of the volume at `volume` for mount `index` of `container` and
/// returns the path to bind into the container.
pub fn prepare(
    pod_dir: &Path,
    volume_name: &str,
    volume: &Path,
    sub: &Path,
    container: &str,
    index: usize,
) -> Result<PathBuf, Failure> {
    let root = open_dir(volume).map_err(|_| Failure::Prepare)?;
    let found = match open_beneath(&root, sub) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            let mode = std::fs::metadata(volume)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
                .unwrap_or(0o755);
            make_dirs(&root, sub, mode).map_err(|err| {
                tracing::warn!(volume = %volume.display(), sub = %sub.display(), %err, "subPath directory");
                Failure::Create
            })?;
            open_beneath(&root, sub).map_err(|_| Failure::Prepare)?
        }
        Err(err) => {
            tracing::warn!(volume = %volume.display(), sub = %sub.display(), %err, "subPath refused");
            return Err(Failure::Prepare);
        }
    };
    let is_dir = nix::sys::stat::fstat(&found)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .map_err(|_| Failure::Prepare)?;
    let target = pod_dir
        .join("volume-subpaths")
        .join(volume_name)
        .join(container)
        .join(index.to_string());
    if super::volumes::is_mountpoint(&target) {
        // A mount from an earlier instance: made again from what the volume holds now.
        nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|_| Failure::Prepare)?;
    }
    let made = if is_dir {
        std::fs::create_dir_all(&target)
    } else {
        target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&target)
                    .map(drop)
            })
    };
    made.map_err(|_| Failure::Prepare)?;
    let source = PathBuf::from(format!("/proc/self/fd/{}", found.as_raw_fd()));
    nix::mount::mount(
        Some(&source),
        &target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|err| {
        tracing::warn!(target = %target.display(), %err, "subPath bind mount");
        Failure::Prepare
    })?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_stay_beneath_the_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(vol.join("a/b")).expect("dirs");
        std::os::unix::fs::symlink("/", vol.join("escape")).expect("symlink");
        std::os::unix::fs::symlink("a/b", vol.join("inside")).expect("symlink");
        std::os::unix::fs::symlink("../..", vol.join("a/up")).expect("symlink");
        let root = open_dir(&vol).expect("open");
        assert!(open_beneath(&root, Path::new("a/b")).is_ok());
        assert!(
            open_beneath(&root, Path::new("inside")).is_ok(),
            "a symlink within"
        );
        assert!(
            open_beneath(&root, Path::new("escape")).is_err(),
            "a symlink to /"
        );
        assert!(open_beneath(&root, Path::new("escape/etc")).is_err());
        assert!(open_beneath(&root, Path::new("a/up")).is_err(), "../.. out");
        // Missing directories are made, never through a symlink out.
        make_dirs(&root, Path::new("new/deeper"), 0o750).expect("made");
        assert!(vol.join("new/deeper").is_dir());
        assert!(make_dirs(&root, Path::new("escape/tmp/berth-subpath-test"), 0o750).is_err());
        assert!(!Path::new("/tmp/berth-subpath-test").exists());
    }
}
