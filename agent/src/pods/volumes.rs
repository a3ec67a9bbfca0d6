//! Pod volumes on the host, under `<root>/pods/<uid>/volumes/<name>`: emptyDir (disk,
//! or tmpfs for `medium: Memory` with its sizeLimit), hostPath (with its `type`
//! checks), configMap, secret (always on tmpfs), downwardAPI and projected, with
//! `items`, `defaultMode` and per-item `mode`. Setting up is idempotent and runs on
//! every sync, so ConfigMap and Secret updates reach running pods; each file is
//! replaced by rename, and files no longer wanted are removed.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, Volume};

use super::env::{self, Runtime};
use super::inputs::Inputs;
use super::resources;

const MANIFEST: &str = ".berth-files";

/// Why a volume could not be set up (the kubelet's FailedMount message).
pub type Error = String;

fn pod_volumes_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volumes")
}

/// Whether `path` is the root of a mount, from `statx`'s `STATX_ATTR_MOUNT_ROOT` (Linux
/// 5.8): a pod burst made the agent read `/proc/self/mountinfo` once per volume, and the
/// kernel's cost of writing it grows with every pod's mounts. Kernels without the
/// attribute fall back to mountinfo.
pub(crate) fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statx is a valid out-buffer; `c` is a NUL-terminated path.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_BASIC_STATS,
            &mut st,
        )
    };
    if rc != 0 {
        return false;
    }
    let mount_root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if st.stx_attributes_mask & mount_root != 0 {
        return st.stx_attributes & mount_root != 0;
    }
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

fn mount_tmpfs(dir: &Path, size: Option<i64>) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    if is_mountpoint(dir) {
        return Ok(());
    }
    let data = size.map(|s| format!("size={s}"));
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        data.as_deref(),
    )
    .map_err(|e| format!("mount tmpfs at {}: {e}", dir.display()))
}

/// A relative path that stays below its volume (no `..`, not absolute).
fn safe_relative(path: &str) -> Result<PathBuf, Error> {
    let p = Path::new(path);
    if path.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "invalid path {path:?}: must be relative and may not contain '..'"
        ));
    }
    Ok(p.to_path_buf())
}

/// Writes `files` (relative path → bytes, mode) into `dir` and removes what an
/// earlier call wrote that is no longer wanted.
fn write_files(dir: &Path, files: &BTreeMap<PathBuf, (Vec<u8>, u32)>) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let manifest = dir.join(MANIFEST);
    let old: Vec<PathBuf> = std::fs::read_to_string(&manifest)
        .unwrap_or_default()
        .lines()
        .map(PathBuf::from)
        .collect();
    for (rel, (bytes, mode)) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        let same = std::fs::read(&path).is_ok_and(|b| &b == bytes)
            && std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o7777 == *mode);
        if same {
            continue;
        }
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        std::fs::write(&tmp, bytes).map_err(|e| format!("write {}: {e}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("rename {}: {e}", path.display()))?;
    }
    for rel in old {
        if !files.contains_key(&rel) {
            let _ = std::fs::remove_file(dir.join(&rel));
        }
    }
    let list: Vec<String> = files.keys().map(|p| p.display().to_string()).collect();
    std::fs::write(&manifest, list.join("\n"))
        .map_err(|e| format!("write {}: {e}", manifest.display()))
}

fn keyed_files(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    what: &str,
    optional: bool,
    out: &mut BTreeMap<PathBuf, (Vec<u8>, u32)>,
) -> Result<(), Error> {
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                match data.get(&item.key) {
                    Some(bytes) => {
                        let m = item.mode.map_or(mode, |m| m as u32);
                        out.insert(safe_relative(&item.path)?, (bytes.clone(), m));
                    }
                    None if optional => {}
                    None => return Err(format!("{what}: key {:?} not found", item.key)),
                }
            }
        }
        _ => {
            for (k, bytes) in data {
                out.insert(safe_relative(k)?, (bytes.clone(), mode));
            }
        }
    }
    Ok(())
}

/// The files of a ConfigMap or Secret source (`kind` "configmap" or "secret"), or
/// why they cannot be made; nothing for a missing optional object.
fn object_files(
    inputs: &Inputs,
    kind: &str,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    optional: bool,
    out: &mut BTreeMap<PathBuf, (Vec<u8>, u32)>,
) -> Result<(), Error> {
    let data = if kind == "secret" {
        secret_data(inputs, name)
    } else {
        config_map_data(inputs, name)
    };
    match data {
        Some(data) => keyed_files(
            &data,
            items,
            mode,
            &format!("{kind} {name:?}"),
            optional,
            out,
        ),
        None if optional => Ok(()),
        None => Err(format!("{kind} \"{name}\" not found")),
    }
}

fn config_map_data(inputs: &Inputs, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let cm = inputs.config_map(name)?;
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        data.insert(k.clone(), v.0.clone());
    }
    Some(data)
}

fn secret_data(inputs: &Inputs, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let s = inputs.secret(name)?;
    Some(
        s.data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
    )
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
    rt: &Runtime,
    out: &mut BTreeMap<PathBuf, (Vec<u8>, u32)>,
) -> Result<(), Error> {
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            env::field_value(pod, &f.field_path, rt)?
        } else if let Some(r) = &item.resource_field_ref {
            let c = pod
                .spec
                .as_ref()
                .and_then(|s| {
                    s.containers
                        .iter()
                        .find(|c| Some(c.name.as_str()) == r.container_name.as_deref())
                })
                .ok_or_else(|| format!("downwardAPI {:?}: container not found", item.path))?;
            env::resource_value(c, &r.resource, r.divisor.as_ref(), rt)?
        } else {
            String::new()
        };
        let m = item.mode.map_or(mode, |m| m as u32);
        out.insert(safe_relative(&item.path)?, (value.into_bytes(), m));
    }
    Ok(())
}

fn host_path_check(path: &Path, kind: &str) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path);
    let bad = |what: &str| {
        Err(format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        ))
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if !path.exists() {
                std::fs::create_dir_all(path)
                    .and_then(|()| {
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    })
                    .map_err(|e| format!("create {}: {e}", path.display()))?;
            }
            host_path_check(path, "Directory")
        }
        "FileOrCreate" => {
            if !path.exists() {
                if let Some(parent) = path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("create {}: {e}", path.display()))?;
            }
            host_path_check(path, "File")
        }
        "Directory" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            _ => bad("a directory"),
        },
        "File" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            _ => bad("a file"),
        },
        "Socket" => match meta {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => bad("a socket file"),
        },
        "CharDevice" => match meta {
            Ok(m) if m.file_type().is_char_device() => Ok(()),
            _ => bad("a character device"),
        },
        "BlockDevice" => match meta {
            Ok(m) if m.file_type().is_block_device() => Ok(()),
            _ => bad("a block device"),
        },
        other => Err(format!("unknown hostPath type {other:?}")),
    }
}

/// Where CSI volumes are mounted from: the registered drivers and the agent's root
/// dir (the drivers' staging paths live under it).
#[derive(Debug, Clone, Copy)]
pub struct Csi<'a> {
    pub drivers: &'a crate::csi::Drivers,
    pub root: &'a Path,
}

/// Sets up one volume; returns its host path.
fn setup_one(
    pod: &Pod,
    v: &Volume,
    pod_dir: &Path,
    inputs: &Inputs,
    rt: &Runtime,
    csi: Csi<'_>,
) -> Result<PathBuf, Error> {
    let dir = pod_volumes_dir(pod_dir);
    let path = dir.join(&v.name);
    if v.persistent_volume_claim.is_some() || v.ephemeral.is_some() {
        let claim = inputs.claim(&v.name)?;
        return crate::csi::mounts::setup(csi.drivers, csi.root, pod_dir, pod, v, claim);
    }
    if let Some(e) = &v.empty_dir {
        if e.medium.as_deref() == Some("Memory") {
            let size = e.size_limit.as_ref().and_then(resources::units);
            mount_tmpfs(&path, size)?;
        } else {
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("create {}: {e}", path.display()))?;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
        }
        return Ok(path);
    }
    if let Some(h) = &v.host_path {
        let host = PathBuf::from(&h.path);
        host_path_check(&host, h.type_.as_deref().unwrap_or(""))?;
        return Ok(host);
    }
    let mut files = BTreeMap::new();
    if let Some(cm) = &v.config_map {
        let mode = cm.default_mode.map_or(0o644, |m| m as u32);
        object_files(
            inputs,
            "configmap",
            &cm.name,
            cm.items.as_ref(),
            mode,
            cm.optional == Some(true),
            &mut files,
        )?;
        std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        write_files(&path, &files)?;
        return Ok(path);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = s.default_mode.map_or(0o644, |m| m as u32);
        object_files(
            inputs,
            "secret",
            &name,
            s.items.as_ref(),
            mode,
            s.optional == Some(true),
            &mut files,
        )?;
        mount_tmpfs(&path, None)?;
        write_files(&path, &files)?;
        return Ok(path);
    }
    if let Some(d) = &v.downward_api {
        let mode = d.default_mode.map_or(0o644, |m| m as u32);
        downward_files(
            pod,
            d.items.as_deref().unwrap_or_default(),
            mode,
            rt,
            &mut files,
        )?;
        std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        write_files(&path, &files)?;
        return Ok(path);
    }
    if let Some(p) = &v.projected {
        let mode = p.default_mode.map_or(0o644, |m| m as u32);
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                object_files(
                    inputs,
                    "configmap",
                    &cm.name,
                    cm.items.as_ref(),
                    mode,
                    cm.optional == Some(true),
                    &mut files,
                )?;
            }
            if let Some(s) = &src.secret {
                object_files(
                    inputs,
                    "secret",
                    &s.name,
                    s.items.as_ref(),
                    mode,
                    s.optional == Some(true),
                    &mut files,
                )?;
            }
            if let Some(d) = &src.downward_api {
                downward_files(
                    pod,
                    d.items.as_deref().unwrap_or_default(),
                    mode,
                    rt,
                    &mut files,
                )?;
            }
            if let Some(t) = &src.service_account_token {
                let token = inputs
                    .token(&v.name, &t.path)
                    .ok_or_else(|| format!("no service account token for {:?}", t.path))?;
                files.insert(
                    safe_relative(&t.path)?,
                    (token.as_bytes().to_vec(), mode.min(0o600)),
                );
            }
        }
        mount_tmpfs(&path, None)?;
        write_files(&path, &files)?;
        return Ok(path);
    }
    Err(format!(
        "volume {:?}: this volume type is not supported by berth-agent (emptyDir, hostPath, configMap, secret, downwardAPI, projected, persistentVolumeClaim and ephemeral are)",
        v.name
    ))
}

/// Sets up every volume of `pod` under `pod_dir`; returns name → host path.
pub fn setup(
    pod: &Pod,
    pod_dir: &Path,
    inputs: &Inputs,
    rt: &Runtime,
    csi: Csi<'_>,
) -> Result<BTreeMap<String, PathBuf>, Error> {
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = setup_one(pod, v, pod_dir, inputs, rt, csi)
            .map_err(|e| format!("MountVolume.SetUp failed for volume {:?}: {e}", v.name))?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// Unpublishes the pod's CSI volumes through their drivers, then unmounts every mount
/// below `pod_dir` (deepest first) and removes the directory.
pub fn teardown(pod_dir: &Path, csi: Csi<'_>) -> Result<(), String> {
    if let Some(pods_dir) = pod_dir.parent() {
        crate::csi::mounts::teardown(csi.drivers, pods_dir, pod_dir)?;
    }
    let prefix = format!("{}/", pod_dir.display());
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmount {m}: {e}"))?;
    }
    match std::fs::remove_dir_all(pod_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", pod_dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        assert!(safe_relative("a/b").is_ok());
        assert!(safe_relative("../x").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("").is_err());
    }

    #[test]
    fn files_are_replaced_and_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = BTreeMap::new();
        files.insert(PathBuf::from("a"), (b"1".to_vec(), 0o644));
        files.insert(PathBuf::from("sub/b"), (b"2".to_vec(), 0o600));
        write_files(dir.path(), &files).expect("write");
        assert_eq!(std::fs::read(dir.path().join("sub/b")).expect("b"), b"2");
        files.remove(&PathBuf::from("sub/b"));
        files.insert(PathBuf::from("a"), (b"3".to_vec(), 0o644));
        write_files(dir.path(), &files).expect("rewrite");
        assert_eq!(std::fs::read(dir.path().join("a")).expect("a"), b"3");
        assert!(!dir.path().join("sub/b").exists());
    }
}
