//! The mount table as the kernel reports it in `/proc/self/mountinfo` (proc(5)): which
//! paths are mount points, and which filesystem and device hold a path. Publish and
//! stage read it to stay idempotent: the kernel's table, not the driver's memory, says
//! what is mounted, so a driver restart changes nothing.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The device's `major:minor`.
    pub dev: String,
    /// The directory of the filesystem that is mounted (not `/` for a bind mount).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, `nosuid`, …).
    pub mount_options: Vec<String>,
    /// Filesystem type (`ext4`, `xfs`, …).
    pub fs_type: String,
    /// The mount source, for block filesystems the device.
    pub source: PathBuf,
    /// Per-superblock options (`prjquota`, …).
    pub super_options: Vec<String>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = u32::from(bytes[i + 1] - b'0') * 64
                + u32::from(bytes[i + 2] - b'0') * 8
                + u32::from(bytes[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line; `None` for a line that does not have the documented shape.
pub fn parse_line(line: &str) -> Option<MountInfo> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let right: Vec<&str> = right.split(' ').collect();
    if left.len() < 6 || right.len() < 3 {
        return None;
    }
    Some(MountInfo {
        dev: left[2].to_owned(),
        root: PathBuf::from(unescape(left[3])),
        mount_point: PathBuf::from(unescape(left[4])),
        mount_options: left[5].split(',').map(str::to_owned).collect(),
        fs_type: right[0].to_owned(),
        source: PathBuf::from(unescape(right[1])),
        super_options: right[2].split(',').map(str::to_owned).collect(),
    })
}

/// The current mount table, in mount order.
pub fn table() -> Result<Vec<MountInfo>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(Error::io("read", path))?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// The topmost mount at exactly `path` (already canonical), if any.
pub fn mount_at(path: &Path) -> Result<Option<MountInfo>> {
    Ok(table()?.into_iter().rev().find(|m| m.mount_point == path))
}

/// The mount that holds `path` (already canonical): the last-mounted one whose mount
/// point is the longest prefix of it.
pub fn mount_holding(path: &Path) -> Result<Option<MountInfo>> {
    let table = table()?;
    let mut best: Option<MountInfo> = None;
    for m in table {
        if path.starts_with(&m.mount_point)
            && best
                .as_ref()
                .is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len())
        {
            best = Some(m);
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_line_with_optional_fields_and_escapes() {
        let line = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext4 /dev/root rw,errors=continue,prjquota";
        let m = parse_line(line).expect("a valid line");
        assert_eq!(m.mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(
            (m.dev.as_str(), m.root.as_path()),
            ("98:0", Path::new("/mnt1"))
        );
        assert_eq!(m.mount_options, vec!["rw", "noatime"]);
        assert_eq!(m.fs_type, "ext4");
        assert_eq!(m.source, PathBuf::from("/dev/root"));
        assert!(m.super_options.iter().any(|o| o == "prjquota"));
    }

    #[test]
    fn rejects_a_line_without_the_separator() {
        assert_eq!(parse_line("36 35 98:0 / / rw"), None);
    }

    #[test]
    fn the_root_filesystem_holds_everything() {
        let m = mount_holding(Path::new("/proc/self")).expect("mountinfo");
        assert_eq!(m.map(|m| m.fs_type), Some("proc".to_owned()));
    }
}
