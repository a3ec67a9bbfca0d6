//! A container's rootfs: overlayfs over its image layers (read-only lowers, top first),
//! the init layer on top of them, and a private upper/work pair.

use std::fs;
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

/// Mounts the overlay at `<dir>/rootfs`.
pub fn mount(dir: &Path, lower_top_first: &[PathBuf]) -> Result<PathBuf, Error> {
    let upper = dir.join("upper");
    let work = dir.join("work");
    let rootfs = dir.join("rootfs");
    for d in [&upper, &work, &rootfs] {
        fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
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

/// Unmounts `<dir>/rootfs` if mounted.
pub fn unmount(dir: &Path) {
    let _ = umount2(&dir.join("rootfs"), MntFlags::MNT_DETACH);
}
