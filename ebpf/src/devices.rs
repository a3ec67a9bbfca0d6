//! The device cgroup program for one container (cgroup v2): loads
//! `berth-ebpf-devices` with the container's rules as read-only globals and attaches
//! it to the container's cgroup with `BPF_PROG_ATTACH` (`BPF_F_ALLOW_MULTI`), as runc
//! does — not a bpf_link: the attachment lives exactly as long as the cgroup, so the
//! runtime process may exit and nothing is left to clean up when the cgroup is removed.
//! A process that starts many containers (the agent) loads the program once per
//! distinct rule table and object and attaches that one program to every cgroup: the
//! ELF parse, the read-only map and the verifier run once, not per container.
//! Entry point: [`attach_device_filter`].

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use aya::EbpfLoader;
use aya::programs::CgroupDevice;
use berth_ebpf_common::{
    DEVICE_RULE_COUNT_GLOBAL, DEVICE_RULES_GLOBAL, DEVICES_PROGRAM, DeviceRule, MAX_DEVICE_RULES,
};

use crate::Error;

/// `BPF_PROG_ATTACH` (include/uapi/linux/bpf.h, enum bpf_cmd).
const BPF_PROG_ATTACH: libc::c_long = 8;
/// `BPF_CGROUP_DEVICE` (enum bpf_attach_type).
const BPF_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: other programs (a parent's, systemd's) keep running too; every
/// one of them must allow.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_ATTACH` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    relative_fd: u32,
    expected_revision: u64,
}

/// Loads the device program from `object` with `rules` and attaches it to the cgroup2
/// directory `cgroup_dir`, which must not be a hierarchy's root (that would govern every
/// process of the host).
pub fn attach_device_filter(
    object: &Path,
    rules: &[DeviceRule],
    cgroup_dir: &Path,
) -> Result<(), Error> {
    if rules.len() > MAX_DEVICE_RULES {
        return Err(Error::TooManyDeviceRules {
            count: rules.len(),
            max: MAX_DEVICE_RULES,
        });
    }
    // Only non-root cgroup2 directories have cgroup.type.
    if !cgroup_dir.join("cgroup.type").exists() {
        return Err(Error::CgroupRoot(cgroup_dir.to_path_buf()));
    }
    let prog_fd = loaded(object, rules, cgroup_dir)?;
    let cgroup = std::fs::File::open(cgroup_dir).map_err(|source| Error::Cgroup {
        path: cgroup_dir.to_path_buf(),
        source,
    })?;
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: bpf(2) reads `size_of::<ProgAttachAttr>()` bytes from a live, fully
    // initialized #[repr(C)] struct laid out as the kernel's attr for this command; both
    // fds stay open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(Error::Attach {
            path: cgroup_dir.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The programs this process loaded, by object and rule table.
type Loaded = HashMap<(PathBuf, Vec<DeviceRule>), Arc<OwnedFd>>;

fn cache() -> &'static Mutex<Loaded> {
    static CACHE: OnceLock<Mutex<Loaded>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The device program of `object` loaded with `rules` (from the cache, or loaded now):
/// its fd, kept open by the cache for the process's life.
fn loaded(object: &Path, rules: &[DeviceRule], cgroup_dir: &Path) -> Result<Arc<OwnedFd>, Error> {
    let key = (object.to_path_buf(), rules.to_vec());
    let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(fd) = cache.get(&key) {
        return Ok(fd.clone());
    }
    let mut table = [DeviceRule::NONE; MAX_DEVICE_RULES];
    table[..rules.len()].copy_from_slice(rules);
    let count = rules.len() as u32;
    // No BTF: the program does no CO-RE relocations, and parsing the kernel's BTF
    // would cost milliseconds per load.
    let mut bpf = EbpfLoader::new()
        .btf(None)
        .override_global(DEVICE_RULES_GLOBAL, &table, true)
        .override_global(DEVICE_RULE_COUNT_GLOBAL, &count, true)
        .load_file(object)
        .map_err(|source| Error::Load {
            path: object.to_path_buf(),
            source: Box::new(source),
        })?;
    let prog: &mut CgroupDevice = bpf
        .program_mut(DEVICES_PROGRAM)
        .ok_or(Error::Missing {
            kind: "program",
            name: DEVICES_PROGRAM,
        })?
        .try_into()
        .map_err(|source| Error::Program {
            name: DEVICES_PROGRAM,
            source,
        })?;
    prog.load().map_err(|source| Error::Program {
        name: DEVICES_PROGRAM,
        source,
    })?;
    let fd = prog.fd().map_err(|source| Error::Program {
        name: DEVICES_PROGRAM,
        source,
    })?;
    // The program stays loaded while this fd is open; its map with it.
    let fd: Arc<OwnedFd> =
        Arc::new(
            fd.as_fd()
                .try_clone_to_owned()
                .map_err(|source| Error::Attach {
                    path: cgroup_dir.to_path_buf(),
                    source,
                })?,
        );
    cache.insert(key, fd.clone());
    Ok(fd)
}
