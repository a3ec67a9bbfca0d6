//! A container's rootfs: overlayfs over its image layers (read-only lowers, top first),
//! the init layer on top of them, and a private upper/work pair. In a pod with its own
//! user namespace the lowers and the volumes are seen through idmapped mounts
//! (`<dir>/idmap/*`), so files the host's root owns are root's inside.

use std::fs;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount as mount2, umount2};

use super::{Error, SandboxConfig, io};

/// Writes `<dir>/init/etc/{hosts,resolv.conf,hostname}` as the kubelet would.
pub fn write_init_layer(
    dir: &Path,
    sandbox: &SandboxConfig,
    pod_ip: Option<&str>,
) -> Result<PathBuf, Error> {
    let init = dir.join("init");
    let etc = init.join("etc");
    fs::create_dir_all(&etc).map_err(io(format!("create {}", etc.display())))?;
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip {
        hosts.push_str(&format!("{ip}\t{}\n", sandbox.hostname));
    }
    if !sandbox.host_aliases.is_empty() {
        hosts.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in &sandbox.host_aliases {
            hosts.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    let mut resolv = String::new();
    if !sandbox.searches.is_empty() {
        resolv.push_str(&format!("search {}\n", sandbox.searches.join(" ")));
    }
    for ns in &sandbox.nameservers {
        resolv.push_str(&format!("nameserver {ns}\n"));
    }
    if !sandbox.dns_options.is_empty() {
        resolv.push_str(&format!("options {}\n", sandbox.dns_options.join(" ")));
    }
    for (name, body) in [
        ("hosts", hosts),
        ("resolv.conf", resolv),
        ("hostname", format!("{}\n", sandbox.hostname)),
    ] {
        fs::write(etc.join(name), body).map_err(io(format!("write /etc/{name}")))?;
    }
    Ok(init)
}

/// Idmapped views of `paths`, owners mapped through the user namespace `userns`:
/// `<dir>/idmap/<prefix><i>` each (a directory, or a file for a file).
pub fn idmapped(
    dir: &Path,
    prefix: &str,
    paths: &[PathBuf],
    userns: RawFd,
) -> Result<Vec<PathBuf>, Error> {
    let base = dir.join("idmap");
    fs::create_dir_all(&base).map_err(io(format!("create {}", base.display())))?;
    let mut out = Vec::with_capacity(paths.len());
    for (i, source) in paths.iter().enumerate() {
        let target = base.join(format!("{prefix}{i}"));
        let is_dir = fs::metadata(source)
            .map_err(io(format!("stat {}", source.display())))?
            .is_dir();
        if is_dir {
            fs::create_dir_all(&target)
        } else {
            fs::File::create(&target).map(drop)
        }
        .map_err(io(format!("create {}", target.display())))?;
        crate::sys::idmapped_bind(source, &target, userns).map_err(|e| Error::Io {
            what: format!(
                "idmapped mount of {} for the pod's user namespace (its filesystem must support idmapped mounts)",
                source.display()
            ),
            source: e,
        })?;
        out.push(target);
    }
    Ok(out)
}

/// Detaches the idmapped views named `<prefix>*` (all with ""); true when none is left.
pub fn unmount_idmapped(dir: &Path, prefix: &str) -> bool {
    let Ok(entries) = fs::read_dir(dir.join("idmap")) else {
        return true;
    };
    let mut clean = true;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let p = e.path();
        let _ = umount2(&p, MntFlags::MNT_DETACH);
        let gone = if p.is_dir() {
            fs::remove_dir(&p)
        } else {
            fs::remove_file(&p)
        };
        clean &= gone.is_ok();
    }
    clean
}

/// Mounts the overlay at `<dir>/rootfs`; with `owner`, the upper layer (the rootfs's
/// root directory) belongs to that host uid and gid (the pod's user namespace root).
pub fn mount(
    dir: &Path,
    lower_top_first: &[PathBuf],
    owner: Option<u32>,
) -> Result<PathBuf, Error> {
    let upper = dir.join("upper");
    let work = dir.join("work");
    let rootfs = dir.join("rootfs");
    for d in [&upper, &work, &rootfs] {
        fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
    }
    if let Some(id) = owner {
        std::os::unix::fs::chown(&upper, Some(id), Some(id))
            .map_err(io(format!("chown {}", upper.display())))?;
    }
    let lower: Vec<String> = lower_top_first
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    mount2(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        // Device nodes in image layers or written into the container's upper layer are
        // never usable; the container's /dev is its own tmpfs on top.
        MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| Error::Io {
        what: format!("mount overlay at {}", rootfs.display()),
        source: e.into(),
    })?;
    Ok(rootfs)
}

/// Unmounts `<dir>/rootfs` and the idmapped views if mounted; false when a view could
/// not be removed (the directory must then not be removed recursively: it could reach
/// into a volume).
pub fn unmount(dir: &Path) -> bool {
    let _ = umount2(&dir.join("rootfs"), MntFlags::MNT_DETACH);
    unmount_idmapped(dir, "")
}
