//! The container process's own settings, applied by the init just before `execve`:
//! working directory, rlimits, umask, OOM score, no_new_privs, user and groups,
//! capabilities (bounding, effective, permitted, inheritable, ambient), and the
//! executable looked up on the container's `PATH`.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, Process};

use crate::init::{InitError, step};
use crate::sys;

/// Capability names by number (linux/capability.h).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities containerd gives a container that asks for nothing more
/// (containerd `oci.defaultUnixCaps`).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const RLIMIT_NAMES: [&str; 16] = [
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

/// The capability's number, from its spec name.
pub fn capability_number(cap: &Capability) -> Option<u32> {
    let name = serde_json::to_value(cap).ok()?;
    let name = name.as_str()?;
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|p| p as u32)
}

fn mask(caps: Option<&std::collections::HashSet<Capability>>) -> u64 {
    caps.into_iter()
        .flatten()
        .filter_map(capability_number)
        .fold(0u64, |m, n| m | (1u64 << n))
}

/// What `execve` needs, resolved inside the container.
#[derive(Debug)]
pub struct Exec {
    pub path: CString,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
}

fn cstring(s: &str, what: &str) -> Result<CString, InitError> {
    CString::new(s).map_err(|_| InitError::msg(format!("{what} contains a NUL byte: {s:?}")))
}

/// Finds `name` on `PATH` (from the process env) the way execvp does.
/// `root` is the container's root as seen by the caller (`/` inside the container).
pub fn resolve_executable(
    name: &str,
    env: &[String],
    root: &Path,
    cwd: &Path,
) -> Result<PathBuf, InitError> {
    let is_exec = |p: &Path| {
        let inside = p.strip_prefix("/").unwrap_or(p);
        std::fs::metadata(root.join(inside))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = cwd.join(name);
        return if is_exec(&p) {
            Ok(PathBuf::from(name))
        } else {
            Err(InitError::msg(format!(
                "executable {name:?} not found in the container (or not executable)"
            )))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if is_exec(&candidate) {
            return Ok(candidate);
        }
    }
    Err(InitError::msg(format!(
        "executable {name:?} not found in $PATH ({path}) in the container"
    )))
}

/// Working directory, rlimits, umask, OOM score and the executable: everything that can
/// fail because of the container's content, done while errors can still be reported.
/// Writes the process's `oomScoreAdj` unless it is already that. The init and exec call
/// it before entering a user namespace too: inside one, lowering the score (or writing
/// at all, once the ids changed) is refused.
pub fn set_oom_score_adj(process: &Process) -> Result<(), InitError> {
    let Some(score) = process.oom_score_adj() else {
        return Ok(());
    };
    let current = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
    if current.trim() == score.to_string() {
        return Ok(());
    }
    step("oom_score_adj", || {
        std::fs::write("/proc/self/oom_score_adj", score.to_string())
    })
}

pub fn prepare(process: &Process) -> Result<Exec, InitError> {
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(InitError::msg(format!(
            "process.cwd {} must be absolute",
            cwd.display()
        )));
    }
    // Like runc, a missing working directory is created.
    step(&format!("working directory {}", cwd.display()), || {
        std::fs::create_dir_all(cwd)
    })?;
    step(&format!("chdir {}", cwd.display()), || {
        nix::unistd::chdir(cwd.as_path())
    })?;

    for rl in process.rlimits().iter().flatten() {
        let name = serde_json::to_value(rl.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let Some(resource) = RLIMIT_NAMES.iter().position(|n| *n == name) else {
            return Err(InitError::msg(format!("unknown rlimit {name:?}")));
        };
        step(&format!("setrlimit {name}"), || {
            sys::setrlimit(resource as u32, rl.soft(), rl.hard())
        })?;
    }
    set_oom_score_adj(process)?;
    if let Some(umask) = process.user().umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    }

    let args = process.args().clone().unwrap_or_default();
    let Some(first) = args.first() else {
        return Err(InitError::msg("process.args is empty"));
    };
    let env = process.env().clone().unwrap_or_default();
    let path = resolve_executable(first, &env, Path::new("/"), cwd)?;
    Ok(Exec {
        path: cstring(&path.to_string_lossy(), "executable")?,
        args: args
            .iter()
            .map(|a| cstring(a, "argument"))
            .collect::<Result<_, _>>()?,
        env: env
            .iter()
            .map(|e| cstring(e, "environment variable"))
            .collect::<Result<_, _>>()?,
    })
}

/// no_new_privs, user/groups and capabilities, in the order the kernel requires: the
/// bounding set first (needs CAP_SETPCAP), ids with KEEPCAPS, then the final sets.
pub fn drop_privileges(process: &Process) -> Result<(), InitError> {
    let caps = process.capabilities().as_ref();
    let bounding = mask(caps.and_then(|c| c.bounding().as_ref()));
    let last = sys::last_cap();
    for cap in 0..=last {
        if bounding & (1u64 << cap) == 0 {
            step("drop bounding capability", || {
                sys::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0)
            })?;
        }
    }
    if process.no_new_privileges() == Some(true) {
        step("no_new_privs", || {
            sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)
        })?;
    }
    let user = process.user();
    let groups: Vec<u32> = user.additional_gids().clone().unwrap_or_default();
    step("keep capabilities across setuid", || {
        sys::prctl(libc::PR_SET_KEEPCAPS, 1, 0)
    })?;
    step(
        &format!("set uid {} gid {}", user.uid(), user.gid()),
        || sys::set_ids(user.uid(), user.gid(), &groups),
    )?;
    step("reset keepcaps", || sys::prctl(libc::PR_SET_KEEPCAPS, 0, 0))?;
    let effective = mask(caps.and_then(|c| c.effective().as_ref()));
    let permitted = mask(caps.and_then(|c| c.permitted().as_ref()));
    let inheritable = mask(caps.and_then(|c| c.inheritable().as_ref()));
    step("capset", || sys::capset(effective, permitted, inheritable))?;
    // The kernel raises an ambient capability only if it is both permitted and
    // inheritable; others are skipped, as runc does (with a warning there).
    let ambient = mask(caps.and_then(|c| c.ambient().as_ref())) & permitted & inheritable;
    for cap in 0..=last {
        if ambient & (1u64 << cap) != 0 {
            step("raise ambient capability", || {
                sys::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn capability_numbers_follow_the_kernel() {
        let cap = Capability::from_str("SYS_ADMIN").expect("parse");
        assert_eq!(capability_number(&cap), Some(21));
        let cap = Capability::from_str("CHOWN").expect("parse");
        assert_eq!(capability_number(&cap), Some(0));
        let cap = Capability::from_str("AUDIT_WRITE").expect("parse");
        assert_eq!(capability_number(&cap), Some(29));
    }

    #[test]
    fn executables_are_found_on_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let exe = bin.join("tool");
        std::fs::write(&exe, b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let env = vec!["PATH=/usr/bin:/bin".to_string()];
        assert_eq!(
            resolve_executable("tool", &env, dir.path(), Path::new("/")).expect("found"),
            PathBuf::from("/bin/tool")
        );
        let err =
            resolve_executable("nope", &env, dir.path(), Path::new("/")).expect_err("missing");
        assert!(err.to_string().contains("\"nope\" not found"), "{err}");
    }
}
