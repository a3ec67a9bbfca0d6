//! Every raw system call the driver makes: bind mounts, unmounts, the project-quota
//! `quotactl(2)` commands and the `FS_IOC_FS[GS]ETXATTR` ioctls (ioctl_xfs_fsgetxattr(2),
//! which ext4 implements too). Each `unsafe` block says why it is sound.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

/// `mount --bind source target`.
pub fn bind_mount(source: &Path, target: &Path) -> Result<()> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(Error::sys("mount(MS_BIND)", target))
}

/// Re-applies the per-mount flags of the bind mount at `target` (`mount -o remount,bind,…`),
/// e.g. `MS_RDONLY` for a readonly publish.
pub fn remount_bind(target: &Path, flags: MsFlags) -> Result<()> {
    nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .map_err(Error::sys("mount(MS_REMOUNT)", target))
}

/// `umount target`.
pub fn unmount(target: &Path) -> Result<()> {
    nix::mount::umount2(target, MntFlags::empty()).map_err(Error::sys("umount2", target))
}

/// Linux's project quota type (`PRJQUOTA` in <linux/quota.h>).
const PRJQUOTA: libc::c_int = 2;

fn quotactl(cmd: libc::c_int, device: &Path, id: u32, data: *mut libc::c_char) -> nix::Result<()> {
    let device = CString::new(device.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL)?;
    let id = libc::c_int::try_from(id).map_err(|_| nix::Error::EINVAL)?;
    // SAFETY: `device` is a NUL-terminated string that outlives the call; `data` points
    // to the structure `cmd` reads or writes (see the callers), or is null for commands
    // that take none.
    let rc = unsafe { libc::quotactl(libc::QCMD(cmd, PRJQUOTA), device.as_ptr(), id, data) };
    nix::errno::Errno::result(rc).map(drop)
}

/// Whether project quotas are on for the filesystem on `device` (`Q_GETINFO`).
pub fn project_quota_info(device: &Path) -> nix::Result<()> {
    // struct if_dqinfo: two u64 grace times, u32 flags, u32 valid.
    let mut info = [0u8; 24];
    quotactl(libc::Q_GETINFO, device, 0, info.as_mut_ptr().cast())
}

/// The block limit and current usage of project `id`.
pub fn get_project_quota(device: &Path, id: u32) -> Result<libc::dqblk> {
    let mut dq = empty_dqblk();
    quotactl(
        libc::Q_GETQUOTA,
        device,
        id,
        std::ptr::from_mut(&mut dq).cast(),
    )
    .map_err(Error::sys("quotactl(Q_GETQUOTA)", device))?;
    Ok(dq)
}

/// Sets the hard (and soft) block limit of project `id` to `bytes`, rounded up to
/// the 1 KiB quota block; 0 removes the limit.
pub fn set_project_limit(device: &Path, id: u32, bytes: u64) -> Result<()> {
    let mut dq = empty_dqblk();
    dq.dqb_bhardlimit = bytes.div_ceil(1024);
    dq.dqb_bsoftlimit = dq.dqb_bhardlimit;
    dq.dqb_valid = libc::QIF_BLIMITS;
    quotactl(
        libc::Q_SETQUOTA,
        device,
        id,
        std::ptr::from_mut(&mut dq).cast(),
    )
    .map_err(Error::sys("quotactl(Q_SETQUOTA)", device))
}

fn empty_dqblk() -> libc::dqblk {
    libc::dqblk {
        dqb_bhardlimit: 0,
        dqb_bsoftlimit: 0,
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: 0,
    }
}

/// `struct fsxattr` from <linux/fs.h>.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct FsXattr {
    pub xflags: u32,
    pub extsize: u32,
    pub nextents: u32,
    pub projid: u32,
    pub cowextsize: u32,
    pub pad: [u8; 8],
}

/// New files and directories inherit the directory's project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

nix::ioctl_read!(fs_ioc_fsgetxattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_ioc_fssetxattr, b'X', 32, FsXattr);

/// Puts directory `dir` (and, by inheritance, everything later made in it) in
/// project `id`.
pub fn set_project(dir: &Path, id: u32) -> Result<()> {
    let file = File::open(dir).map_err(Error::io("open", dir))?;
    let mut attr = FsXattr::default();
    // SAFETY: the fd is open for the duration of the call and `attr` is a valid,
    // exclusively borrowed `struct fsxattr` the kernel fills in.
    unsafe { fs_ioc_fsgetxattr(file.as_raw_fd(), &mut attr) }
        .map_err(Error::sys("ioctl(FS_IOC_FSGETXATTR)", dir))?;
    attr.projid = id;
    attr.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: as above; the kernel only reads `attr`.
    unsafe { fs_ioc_fssetxattr(file.as_raw_fd(), &attr) }
        .map_err(Error::sys("ioctl(FS_IOC_FSSETXATTR)", dir))?;
    Ok(())
}

// Loop devices (loop(4)): the ioctls on /dev/loop-control and /dev/loopN.
nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_int_bad!(ioc_loop_set_fd, 0x4C00);
nix::ioctl_none_bad!(ioc_loop_clr_fd, 0x4C01);
nix::ioctl_none_bad!(ioc_loop_set_capacity, 0x4C07);
nix::ioctl_read!(blk_get_size64, 0x12, 114, u64);

/// `LOOP_CTL_GET_FREE`: the number of a free loop device (made if needed).
pub fn loop_get_free(control: &File) -> nix::Result<u32> {
    // SAFETY: the fd is open for the call; the ioctl takes no argument.
    let n = unsafe { loop_ctl_get_free(control.as_raw_fd()) }?;
    u32::try_from(n).map_err(|_| nix::Error::EINVAL)
}

/// `LOOP_SET_FD`: backs the loop device `dev` by the open file `image`.
pub fn loop_set_fd(dev: &File, image: &File) -> nix::Result<()> {
    // SAFETY: both fds are open for the call; the argument is an fd, passed by value.
    unsafe { ioc_loop_set_fd(dev.as_raw_fd(), image.as_raw_fd()) }.map(drop)
}

/// `LOOP_CLR_FD`: detaches the loop device `dev` from its file.
pub fn loop_clr_fd(dev: &File) -> nix::Result<()> {
    // SAFETY: the fd is open for the call; the ioctl takes no argument.
    unsafe { ioc_loop_clr_fd(dev.as_raw_fd()) }.map(drop)
}

/// `LOOP_SET_CAPACITY`: re-reads the size of the backing file after it grew.
pub fn loop_set_capacity(dev: &File) -> nix::Result<()> {
    // SAFETY: the fd is open for the call; the ioctl takes no argument.
    unsafe { ioc_loop_set_capacity(dev.as_raw_fd()) }.map(drop)
}

/// `BLKGETSIZE64`: the size of a block device in bytes.
pub fn block_size(dev: &File) -> nix::Result<u64> {
    let mut size = 0u64;
    // SAFETY: the fd is open for the call and `size` is a valid u64 the kernel fills.
    unsafe { blk_get_size64(dev.as_raw_fd(), &mut size) }?;
    Ok(size)
}
