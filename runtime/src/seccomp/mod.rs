//! Seccomp for containers: Kubernetes' `RuntimeDefault` (moby's default profile, kept
//! verbatim as data in `default.json`), `Localhost` profiles in the same JSON format, and
//! the compilation of an OCI `linux.seccomp` into BPF filters that the container's init
//! installs last before `execve` (see `init.rs`).
//!
//! Entry points: [`Profile::parse`] + [`Profile::resolve`] (profile → OCI, for one
//! container's capabilities, as containerd does), [`compile`] and [`install`] (OCI →
//! kernel, as runc does).
//!
//! `default.json` is moby/profiles' `seccomp/default.json` at commit cd3bed8 (the file
//! last changed 2026-05-06); replace the file to follow upstream, never edit it by hand.

mod compile;
mod generated;
mod profile;

pub use compile::{compile, install};
pub use profile::{Profile, Target, kernel_version};
pub use seccompiler::BpfProgram;

/// The container's OCI seccomp section, kept in its state directory for `exec`.
pub const STATE_FILE: &str = "seccomp.json";

/// moby's default seccomp profile: containerd's and Docker's `RuntimeDefault`.
pub const DEFAULT_PROFILE: &str = include_str!("default.json");

/// Why a seccomp profile cannot be applied. Never a reason to run unconfined.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seccomp profile {what}: {source}")]
    Parse {
        what: String,
        source: serde_json::Error,
    },
    #[error("seccomp profile {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("seccomp profile: {0} is not supported by berth")]
    Unsupported(String),
    #[error("seccomp profile: {0}")]
    Invalid(String),
    #[error("seccomp filter: {0}")]
    Compile(seccompiler::BackendError),
    #[error("seccomp: installing the filter: {0}")]
    Install(String),
}

/// The number of syscall `name` on this architecture, if it has one.
pub fn syscall_number(name: &str) -> Option<i64> {
    #[cfg(target_arch = "x86_64")]
    {
        generated::x86_64::X86_64
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| generated::x86_64::X86_64[i].1)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = name;
        None
    }
}

/// Reads and resolves a `Localhost` profile file for a container with `caps`.
pub fn localhost(
    path: &std::path::Path,
    caps: &[String],
) -> Result<oci_spec::runtime::LinuxSeccomp, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Profile::parse(&path.display().to_string(), &bytes)?.resolve(&Target::host(caps))
}

/// `RuntimeDefault` for a container with `caps`.
pub fn runtime_default(caps: &[String]) -> Result<oci_spec::runtime::LinuxSeccomp, Error> {
    Profile::parse("RuntimeDefault", DEFAULT_PROFILE.as_bytes())?.resolve(&Target::host(caps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_agrees_with_libc() {
        let t = generated::x86_64::X86_64;
        assert!(
            t.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no duplicates"
        );
        assert_eq!(syscall_number("mkdir"), Some(libc::SYS_mkdir));
        assert_eq!(syscall_number("clone3"), Some(libc::SYS_clone3));
        assert_eq!(syscall_number("fchmodat2"), Some(libc::SYS_fchmodat2));
        assert_eq!(syscall_number("mseal"), Some(libc::SYS_mseal));
        assert_eq!(syscall_number("socketcall"), None, "not on x86_64");
    }
}
