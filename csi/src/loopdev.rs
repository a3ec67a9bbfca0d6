//! Block volumes: a sparse image file attached to a loop device (loop(4)) at
//! NodeStageVolume and detached at NodeUnstageVolume. Which device backs which image is
//! read from `/sys/block/loopN/loop/backing_file` every time, so a driver restart finds
//! its attachments again.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag};

use crate::error::{Error, Result};
use crate::sys;

/// The file inside a block volume's directory that holds its blocks.
pub const IMAGE: &str = "disk.img";

/// The read-write loop device backed by `image` (canonical), if any: the one
/// NodeStageVolume attached.
pub fn find(image: &Path) -> Result<Option<u32>> {
    Ok(find_all(image)?
        .into_iter()
        .find(|d| !d.read_only)
        .map(|d| d.number))
}

/// One loop device backed by a volume's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// N in /dev/loopN.
    pub number: u32,
    /// Attached read-only (a readonly publish has its own).
    pub read_only: bool,
}

/// Every loop device backed by `image` (canonical).
pub fn find_all(image: &Path) -> Result<Vec<Attached>> {
    let mut out = Vec::new();
    let sys_block = Path::new("/sys/block");
    let entries = fs::read_dir(sys_block).map_err(Error::io("read_dir", sys_block))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("read_dir", sys_block))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("loop")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue; // not attached
        };
        if Path::new(backing.trim_end_matches('\n')) == image {
            let read_only =
                fs::read_to_string(entry.path().join("ro")).is_ok_and(|ro| ro.trim() == "1");
            out.push(Attached {
                number: n,
                read_only,
            });
        }
    }
    Ok(out)
}

/// The device node of loop device `n`: `/dev/loopN`, or — where /dev is not a
/// devtmpfs that makes it — one the driver makes under `nodes`.
pub fn device(n: u32, nodes: &Path) -> Result<PathBuf> {
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    if dev.exists() {
        return Ok(dev);
    }
    let own = nodes.join(format!("loop{n}"));
    if !own.exists() {
        fs::create_dir_all(nodes).map_err(Error::io("mkdir", nodes))?;
        let rdev = fs::read_to_string(format!("/sys/block/loop{n}/dev"))
            .ok()
            .and_then(|s| {
                let (major, minor) = s.trim().split_once(':')?;
                Some(nix::sys::stat::makedev(
                    major.parse().ok()?,
                    minor.parse().ok()?,
                ))
            })
            .ok_or_else(|| Error::FailedPrecondition(format!("loop{n} has no /sys/block entry")))?;
        nix::sys::stat::mknod(&own, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), rdev)
            .map_err(Error::sys("mknod", &own))?;
    }
    Ok(own)
}

fn open(path: &Path) -> Result<File> {
    open_mode(path, true)
}

fn open_mode(path: &Path, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(Error::io("open", path))
}

/// Attaches `image` (canonical) to a free loop device and returns its number; with
/// `read_only` the image is opened read-only, which makes the device read-only (a
/// read-only bind mount of a device node does not stop writes to the device). Another
/// process may take the free device first (EBUSY): then it asks again.
pub fn attach(image: &Path, nodes: &Path, read_only: bool) -> Result<u32> {
    let control_path = Path::new("/dev/loop-control");
    let control = open(control_path)?;
    let file = open_mode(image, !read_only)?;
    for _ in 0..16 {
        let n = sys::loop_get_free(&control)
            .map_err(Error::sys("ioctl(LOOP_CTL_GET_FREE)", control_path))?;
        let path = device(n, nodes)?;
        let dev = open(&path)?;
        match sys::loop_set_fd(&dev, &file) {
            Ok(()) => return Ok(n),
            Err(nix::Error::EBUSY) => continue,
            Err(e) => return Err(Error::sys("ioctl(LOOP_SET_FD)", &path)(e)),
        }
    }
    Err(Error::ResourceExhausted(format!(
        "no free loop device for {} after 16 tries",
        image.display()
    )))
}

/// Detaches loop device `n`.
pub fn detach(n: u32, nodes: &Path) -> Result<()> {
    let path = device(n, nodes)?;
    let dev = open(&path)?;
    sys::loop_clr_fd(&dev).map_err(Error::sys("ioctl(LOOP_CLR_FD)", &path))
}

/// Makes loop device `n` see its file's new size; returns the size.
pub fn refresh_size(n: u32, nodes: &Path) -> Result<u64> {
    let path = device(n, nodes)?;
    let dev = open(&path)?;
    sys::loop_set_capacity(&dev).map_err(Error::sys("ioctl(LOOP_SET_CAPACITY)", &path))?;
    sys::block_size(&dev).map_err(Error::sys("ioctl(BLKGETSIZE64)", &path))
}
