//! Resolving a path inside a root directory as if that directory were `/`: symlinks are
//! followed but can never lead outside it (`..` stops at the root, absolute link targets
//! are taken relative to the root). Used for mount destinations inside a rootfs and for
//! every entry a layer unpack writes.

use std::io;
use std::path::{Component, Path, PathBuf};

const MAX_LINKS: usize = 255;

/// Joins `unsafe_path` to `root`, resolving symlinks of existing components inside
/// `root`. Missing trailing components are appended as they are.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<PathBuf> = vec![unsafe_path.to_path_buf()];
    let mut resolved = PathBuf::new(); // relative to root
    let mut links = 0usize;
    while let Some(path) = pending.pop() {
        let mut comps: Vec<Component> = path.components().collect();
        comps.reverse();
        while let Some(comp) = comps.pop() {
            match comp {
                Component::RootDir => resolved = PathBuf::new(),
                Component::Prefix(_) | Component::CurDir => {}
                Component::ParentDir => {
                    resolved.pop();
                }
                Component::Normal(name) => {
                    let candidate = resolved.join(name);
                    let full = root.join(&candidate);
                    match std::fs::symlink_metadata(&full) {
                        Ok(meta) if meta.file_type().is_symlink() => {
                            links += 1;
                            if links > MAX_LINKS {
                                return Err(io::Error::other(format!(
                                    "too many symlinks resolving {}",
                                    unsafe_path.display()
                                )));
                            }
                            let target = std::fs::read_link(&full)?;
                            // The rest of this path comes after the link's target.
                            let rest: PathBuf = comps.iter().rev().collect();
                            pending.push(rest);
                            pending.push(target);
                            comps.clear();
                            break;
                        }
                        _ => resolved = candidate,
                    }
                }
            }
        }
    }
    Ok(root.join(resolved))
}

/// A path made only of normal components (no `..`, no root), for names taken from
/// untrusted archives. Returns None when nothing remains.
pub fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_and_dotdot_stay_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        symlink("/etc", root.join("abs")).expect("symlink");
        symlink("../../../../..", root.join("a/b/up")).expect("symlink");
        symlink("b", root.join("a/rel")).expect("symlink");
        assert_eq!(
            secure_join(root, Path::new("/abs/passwd")).expect("join"),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("a/b/up/x")).expect("join"),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("../../x")).expect("join"),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("a/rel/c")).expect("join"),
            root.join("a/b/c")
        );
        symlink("loop", root.join("loop")).expect("symlink");
        assert!(secure_join(root, Path::new("loop/x")).is_err());
    }

    #[test]
    fn clean_relative_drops_escapes() {
        assert_eq!(
            clean_relative(Path::new("../../etc/x")),
            Some(PathBuf::from("etc/x"))
        );
        assert_eq!(clean_relative(Path::new("/")), None);
        assert_eq!(
            clean_relative(Path::new("./a/../b")),
            Some(PathBuf::from("b"))
        );
    }
}
