//! The container's filesystem view, set up by its first process inside its new mount
//! namespace: the rootfs bind-mounted on itself, the spec's mounts (`/proc`, a tmpfs
//! `/dev` with the standard device nodes, devpts, shm, mqueue, read-only `/sys`, binds),
//! `pivot_root` into it, then masked and read-only paths as containerd's (the kubelet's) defaults.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::init::{InitError, step};
use crate::paths::secure_join;

/// The devices every container gets (the OCI runtime spec's default devices).
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The masked paths containerd's CRI plugin applies by default: the kubelet's
/// `defaultMaskedPaths` (pkg/securitycontext/util.go, Kubernetes 1.34), which it sends in
/// every CRI request. Used when the spec names none (a bare config.json may not).
/// [`default_masked`] adds the per-CPU `thermal_throttle` directories, as the kubelet does.
pub const DEFAULT_MASKED: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// [`DEFAULT_MASKED`] plus `/sys/devices/system/cpu/cpu<N>/thermal_throttle` for every CPU
/// of this host that has one (the kubelet lists them the same way).
pub fn default_masked() -> Vec<String> {
    let mut paths: Vec<String> = DEFAULT_MASKED.iter().map(|s| s.to_string()).collect();
    if let Ok(cpus) = fs::read_dir("/sys/devices/system/cpu") {
        let mut extra: Vec<String> = cpus
            .flatten()
            .filter(|e| {
                e.file_name().to_str().is_some_and(|n| {
                    n.strip_prefix("cpu")
                        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                })
            })
            .map(|e| e.path().join("thermal_throttle"))
            .filter(|p| p.exists())
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        extra.sort();
        paths.extend(extra);
    }
    paths
}

/// The kubelet's (and so containerd's CRI) default read-only paths, plus
/// `/sys/fs/cgroup`, which berth also mounts read-only.
pub const DEFAULT_READONLY: [&str; 6] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/sys/fs/cgroup",
];

/// Mount options → flags; anything else is filesystem data.
fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                propagation |= propagation_flags(opt);
                continue;
            }
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags |= set;
        flags &= !clear;
    }
    (flags, propagation, data.join(","))
}

fn propagation_flags(opt: &str) -> MsFlags {
    let base = match opt.trim_start_matches('r') {
        "private" => MsFlags::MS_PRIVATE,
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        _ => MsFlags::empty(),
    };
    if opt.starts_with('r') {
        base | MsFlags::MS_REC
    } else {
        base
    }
}

/// Everything up to and including `pivot_root`; the caller is then in the new root.
pub fn prepare(spec: &Spec, rootfs: &Path, new_mount_ns: bool) -> Result<(), InitError> {
    if !new_mount_ns {
        return Err(InitError::msg(
            "a container needs its own mount namespace (add {\"type\":\"mount\"} to linux.namespaces)",
        ));
    }
    let linux = spec.linux().as_ref();
    let propagation = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .map(propagation_flags)
        .filter(|f| !f.is_empty())
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    step("make / private", || {
        mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
    })?;
    step("bind rootfs", || {
        mount(
            Some(rootfs),
            rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
    })?;

    let mut dev_is_tmpfs = false;
    let mut dev_nodev = false;
    for m in spec.mounts().iter().flatten() {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
            dev_nodev = m.options().iter().flatten().any(|o| o == "nodev");
        }
        mount_one(rootfs, m)?;
    }
    if dev_is_tmpfs {
        let devices = linux.and_then(|l| l.devices().as_ref());
        // Bound from the host's /dev rather than made when /dev is nodev, and in a user
        // namespace, where mknod is not allowed (as runc does).
        let in_userns = linux
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
            });
        create_devices(
            rootfs,
            devices.map(Vec::as_slice).unwrap_or(&[]),
            dev_nodev || in_userns,
        )?;
    }

    step("chdir rootfs", || nix::unistd::chdir(rootfs))?;
    step("pivot_root", crate::sys::pivot_root_here)?;
    // The old root is now mounted over the new one: detach it.
    step("make old root private", || {
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
    })?;
    step("detach old root", || umount2(".", MntFlags::MNT_DETACH))?;
    step("chdir /", || nix::unistd::chdir("/"))?;
    Ok(())
}

/// Inside the new root: sysctls, masked and read-only paths, read-only rootfs.
pub fn finish(spec: &Spec) -> Result<(), InitError> {
    let linux = spec.linux().as_ref();
    if let Some(sysctl) = linux.and_then(|l| l.sysctl().as_ref()) {
        for (key, value) in sysctl {
            let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
            step(&format!("sysctl {key}"), || fs::write(&path, value))?;
        }
    }
    let masked: Vec<String> = match linux.and_then(|l| l.masked_paths().as_ref()) {
        Some(paths) => paths.clone(),
        None => default_masked(),
    };
    for path in &masked {
        mask(Path::new(path))?;
    }
    let readonly: Vec<&str> = match linux.and_then(|l| l.readonly_paths().as_ref()) {
        Some(paths) => paths.iter().map(String::as_str).collect(),
        None => DEFAULT_READONLY.to_vec(),
    };
    for path in readonly {
        make_readonly(Path::new(path))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        // The flags the rootfs mount already has stay: in a user namespace they are
        // locked, and a remount that drops one fails.
        let kept = kept_flags(Path::new("/"));
        step("remount / read-only", || {
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_REC
                    | kept,
                None::<&str>,
            )
        })?;
    }
    Ok(())
}

fn mount_one(rootfs: &Path, m: &Mount) -> Result<(), InitError> {
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(InitError::msg(format!(
            "mount destination {} is not absolute",
            dest.display()
        )));
    }
    let target = step(&format!("resolve {}", dest.display()), || {
        secure_join(rootfs, dest)
    })?;
    let options: Vec<String> = m.options().clone().unwrap_or_default();
    let (flags, propagation, data) = parse_options(&options);
    let typ = m.typ().as_deref().unwrap_or("none");
    let is_bind = flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let label = format!("mount {}", dest.display());

    if is_bind {
        let source = m.source().as_ref().ok_or_else(|| {
            InitError::msg(format!("bind mount {} has no source", dest.display()))
        })?;
        let meta = step(&format!("{label}: source {}", source.display()), || {
            fs::metadata(source)
        })?;
        if meta.is_dir() {
            step(&label, || fs::create_dir_all(&target))?;
        } else {
            if let Some(parent) = target.parent() {
                step(&label, || fs::create_dir_all(parent))?;
            }
            if !target.exists() {
                step(&label, || fs::File::create(&target).map(drop))?;
            }
        }
        let rec = flags & MsFlags::MS_REC;
        step(&label, || {
            mount(
                Some(source.as_path()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | rec,
                None::<&str>,
            )
        })?;
        let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            step(&format!("{label}: remount"), || {
                mount(
                    None::<&str>,
                    &target,
                    None::<&str>,
                    extra | kept_flags(&target) | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                    None::<&str>,
                )
            })?;
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        step(&label, || fs::create_dir_all(&target))?;
        mount_cgroup(&target, flags)?;
    } else {
        step(&label, || fs::create_dir_all(&target))?;
        let source = m
            .source()
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| typ.to_string());
        let data = (!data.is_empty()).then_some(data.as_str());
        // Read-only is applied to this mount, not to the filesystem: a superblock is
        // shared (sysfs per network namespace), and a read-only superblock would make
        // every later mount of it read-only too (a privileged container in a pod).
        let ro = flags.contains(MsFlags::MS_RDONLY);
        step(&label, || {
            mount(
                Some(source.as_str()),
                &target,
                Some(typ),
                flags - MsFlags::MS_RDONLY,
                data,
            )
        })?;
        if ro {
            step(&format!("{label}: read-only"), || {
                mount(
                    None::<&str>,
                    &target,
                    None::<&str>,
                    flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                    None::<&str>,
                )
            })?;
        }
    }
    if !propagation.is_empty() {
        step(&format!("{label}: propagation"), || {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                propagation,
                None::<&str>,
            )
        })?;
    }
    Ok(())
}

/// `/sys/fs/cgroup` inside the container, so a JVM, Go, .NET or Node can read its own
/// limits: the cgroup2 filesystem (in the container's cgroup namespace) on a v2 host; on
/// a v1 or hybrid host, as runc mounts it, a tmpfs holding each v1 hierarchy as a
/// read-only bind mount of the container's own cgroup directory in it (so
/// `/sys/fs/cgroup/memory/memory.limit_in_bytes` is the container's limit), with a
/// symlink per controller of a co-mounted hierarchy (`cpu` → `cpu,cpuacct`). The init
/// has joined its cgroups before this runs.
fn mount_cgroup(target: &Path, flags: MsFlags) -> Result<(), InitError> {
    if crate::cgroups::is_v2() {
        return step("mount cgroup2", || {
            mount(
                Some("cgroup2"),
                target,
                Some("cgroup2"),
                flags,
                None::<&str>,
            )
        });
    }
    step("mount cgroup tmpfs", || {
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            flags & !MsFlags::MS_RDONLY,
            Some("mode=755"),
        )
    })?;
    let own = step("read /proc/self/cgroup", || {
        fs::read_to_string("/proc/self/cgroup")
    })?;
    for (point, path) in crate::cgroups::v1_own_paths(&own) {
        let Some(dir) = point.file_name() else {
            continue;
        };
        let dest = target.join(dir);
        let source = point.join(path.trim_start_matches('/'));
        step("cgroup mount point", || fs::create_dir_all(&dest))?;
        step(&format!("bind cgroup {}", source.display()), || {
            mount(
                Some(&source),
                &dest,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
        })?;
        step(&format!("read-only cgroup {}", dest.display()), || {
            mount(
                None::<&str>,
                &dest,
                None::<&str>,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
        })?;
        let name = dir.to_string_lossy();
        if name.contains(',') {
            for part in name.split(',') {
                let link = target.join(part);
                if !link.exists() {
                    step("cgroup controller symlink", || {
                        std::os::unix::fs::symlink(&*name, &link)
                    })?;
                }
            }
        }
    }
    step("read-only cgroup tmpfs", || {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            Some("mode=755"),
        )
    })
}

/// The standard nodes and the spec's `linux.devices` in the container's /dev tmpfs. When
/// that tmpfs is `nodev` (berth's pods), nodes made there could not be opened, so each
/// is a bind mount of the host's node instead (runc's way in a user namespace): a bind
/// mount keeps its source's flags, and anything the container itself makes in /dev stays
/// unopenable.
fn create_devices(rootfs: &Path, extra: &[LinuxDevice], bind: bool) -> Result<(), InitError> {
    let dev = rootfs.join("dev");
    if bind {
        for (name, _, _) in DEFAULT_DEVICES {
            bind_node(&Path::new("/dev").join(name), &dev.join(name))?;
        }
        for d in extra {
            let path = step("resolve device", || secure_join(rootfs, d.path()))?;
            bind_node(d.path(), &path)?;
        }
        return dev_links(&dev);
    }
    for (name, major, minor) in DEFAULT_DEVICES {
        make_node(&dev.join(name), SFlag::S_IFCHR, major, minor, 0o666, 0, 0)?;
    }
    for d in extra {
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let path = step("resolve device", || secure_join(rootfs, d.path()))?;
        make_node(
            &path,
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )?;
    }
    dev_links(&dev)
}

/// /dev's symlinks (fd, stdio, core) and ptmx → pts/ptmx.
fn dev_links(dev: &Path) -> Result<(), InitError> {
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        let path = dev.join(link);
        if path.symlink_metadata().is_err() {
            step(&format!("symlink /dev/{link}"), || symlink(target, &path))?;
        }
    }
    let ptmx = dev.join("ptmx");
    if dev.join("pts").is_dir() {
        let _ = fs::remove_file(&ptmx);
        step("symlink /dev/ptmx", || symlink("pts/ptmx", &ptmx))?;
    }
    Ok(())
}

/// Bind-mounts the host's device node `source` onto a new empty file at `target`.
fn bind_node(source: &Path, target: &Path) -> Result<(), InitError> {
    let label = format!("device {} (bind of {})", target.display(), source.display());
    if let Some(parent) = target.parent() {
        step(&label, || fs::create_dir_all(parent))?;
    }
    let _ = fs::remove_file(target);
    step(&label, || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
            .map(drop)
    })?;
    step(&label, || {
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
}

fn make_node(
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), InitError> {
    let label = format!("device {}", path.display());
    if let Some(parent) = path.parent() {
        step(&label, || fs::create_dir_all(parent))?;
    }
    let _ = fs::remove_file(path);
    step(&label, || {
        mknod(
            path,
            kind,
            Mode::from_bits_truncate(mode & 0o7777),
            makedev(major, minor),
        )
    })?;
    // mknod is subject to the umask: set the exact mode and owner.
    step(&label, || {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
    })?;
    step(&label, || {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
    })
}

fn mask(path: &Path) -> Result<(), InitError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return Ok(()), // nothing to hide
    };
    let label = format!("mask {}", path.display());
    if meta.is_dir() {
        step(&label, || {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        })
    } else {
        step(&label, || {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })
    }
}

/// The nodev, nosuid and noexec flags of the mount at `path`.
fn kept_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (have, keep) in [
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if f.contains(have) {
            out |= keep;
        }
    }
    out
}

fn make_readonly(path: &Path) -> Result<(), InitError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let label = format!("read-only {}", path.display());
    step(&label, || {
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
    })?;
    step(&label, || {
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_REC,
            None::<&str>,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["nosuid", "strictatime", "mode=755", "size=65536k", "ro"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, prop, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | MsFlags::MS_RDONLY));
        assert!(prop.is_empty());
        assert_eq!(data, "mode=755,size=65536k");
        let (_, prop, _) = parse_options(&["rprivate".to_string()]);
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    }
}
