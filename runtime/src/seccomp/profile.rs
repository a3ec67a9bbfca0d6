//! Seccomp profiles in the Docker/moby JSON format (which is also what the OCI runtime
//! spec's `linux.seccomp` looks like, minus `includes`/`excludes`/`archMap`), and their
//! resolution for one container into the OCI form the runtime compiles.
//!
//! The resolution follows moby's `setupSeccomp` (profiles/seccomp/seccomp_linux.go):
//! a rule applies when the architecture, the container's capabilities and the running
//! kernel satisfy its `includes` and none of its `excludes`. containerd's CRI plugin does
//! the same with the capabilities the container ends up with.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};
use serde::Deserialize;

use super::Error;

/// A profile as written on disk (`RuntimeDefault`'s default.json or a `Localhost` file).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    architectures: Vec<Arch>,
    #[serde(default, deserialize_with = "null_default")]
    arch_map: Vec<ArchMap>,
    #[serde(default, deserialize_with = "null_default")]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default, deserialize_with = "null_default")]
    sub_architectures: Vec<Arch>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    #[serde(default, deserialize_with = "null_default")]
    names: Vec<String>,
    /// The old single-name form (moby still reads it).
    #[serde(default)]
    name: Option<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    args: Vec<Arg>,
    #[serde(default, deserialize_with = "null_default")]
    includes: Filter,
    #[serde(default, deserialize_with = "null_default")]
    excludes: Filter,
    #[serde(default)]
    #[expect(dead_code, reason = "a note for the reader of the profile")]
    comment: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Arg {
    index: usize,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: LinuxSeccompOperator,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    #[serde(default, deserialize_with = "null_default")]
    arches: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    caps: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// moby's profile writes `null` for empty lists (Go's nil slices).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What a rule's `includes`/`excludes` are checked against.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Go's name for the architecture, as moby's profiles use it (`amd64`).
    pub arch: &'a str,
    /// The container's capabilities (`CAP_…`).
    pub caps: &'a [String],
    /// The running kernel's (major, minor).
    pub kernel: (u32, u32),
}

impl Target<'_> {
    /// This host's architecture and kernel, with the given capabilities.
    pub fn host(caps: &[String]) -> Target<'_> {
        Target {
            arch: go_arch(),
            caps,
            kernel: kernel_version().unwrap_or((0, 0)),
        }
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        other => other,
    }
}

/// (major, minor) of the running kernel, from /proc/sys/kernel/osrelease.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_kernel(release.trim())
}

fn parse_kernel(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

impl Profile {
    /// Parses a profile; `what` names it in the error.
    pub fn parse(what: &str, bytes: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(bytes).map_err(|source| Error::Parse {
            what: what.to_string(),
            source,
        })
    }

    /// The OCI `linux.seccomp` for a container on `target`.
    pub fn resolve(&self, target: &Target<'_>) -> Result<LinuxSeccomp, Error> {
        if !self.flags.is_empty() {
            return Err(Error::Unsupported(format!(
                "filter flags {:?} (berth installs filters without flags)",
                self.flags
            )));
        }
        if self.listener_path.is_some() || self.listener_metadata.is_some() {
            return Err(Error::Unsupported(
                "listenerPath (SCMP_ACT_NOTIFY agents)".into(),
            ));
        }
        check_errno(
            "defaultErrnoRet",
            self.default_action,
            self.default_errno_ret,
        )?;
        let mut syscalls = Vec::new();
        for rule in &self.syscalls {
            if rule.name.is_some() && !rule.names.is_empty() {
                return Err(Error::Invalid("a rule has both 'name' and 'names'".into()));
            }
            if !rule.applies(target)? {
                continue;
            }
            let names: Vec<String> = match &rule.name {
                Some(n) => vec![n.clone()],
                None => rule.names.clone(),
            };
            check_errno(
                &format!("errnoRet of {names:?}"),
                rule.action,
                rule.errno_ret,
            )?;
            let mut args = Vec::with_capacity(rule.args.len());
            for a in &rule.args {
                args.push(
                    LinuxSeccompArgBuilder::default()
                        .index(a.index)
                        .value(a.value)
                        .value_two(a.value_two)
                        .op(a.op)
                        .build()
                        .map_err(|e| Error::Invalid(format!("argument of {names:?}: {e}")))?,
                );
            }
            let mut call = LinuxSyscall::default();
            call.set_names(names);
            call.set_action(rule.action);
            call.set_errno_ret(rule.errno_ret);
            call.set_args(if args.is_empty() { None } else { Some(args) });
            syscalls.push(call);
        }
        let mut arches = self.architectures.clone();
        for m in &self.arch_map {
            if oci_arch_matches(m.architecture) {
                arches.push(m.architecture);
                arches.extend(m.sub_architectures.iter().copied());
            }
        }
        let mut out = LinuxSeccomp::default();
        out.set_default_action(self.default_action);
        out.set_default_errno_ret(self.default_errno_ret);
        out.set_architectures(if arches.is_empty() {
            None
        } else {
            Some(arches)
        });
        out.set_syscalls(Some(syscalls));
        Ok(out)
    }
}

/// Whether `arch` is this host's native architecture.
fn oci_arch_matches(arch: Arch) -> bool {
    matches!(
        (std::env::consts::ARCH, arch),
        ("x86_64", Arch::ScmpArchX86_64) | ("aarch64", Arch::ScmpArchAarch64)
    )
}

fn check_errno(what: &str, action: LinuxSeccompAction, errno: Option<u32>) -> Result<(), Error> {
    if errno.is_some()
        && !matches!(
            action,
            LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace
        )
    {
        return Err(Error::Invalid(format!(
            "{what} is set but the action is {action}, not SCMP_ACT_ERRNO or SCMP_ACT_TRACE"
        )));
    }
    Ok(())
}

impl Rule {
    fn applies(&self, t: &Target<'_>) -> Result<bool, Error> {
        if self.excludes.arches.iter().any(|a| a == t.arch) {
            return Ok(false);
        }
        if !self.includes.arches.is_empty() && !self.includes.arches.iter().any(|a| a == t.arch) {
            return Ok(false);
        }
        if self.excludes.caps.iter().any(|c| t.caps.contains(c)) {
            return Ok(false);
        }
        if !self.includes.caps.iter().all(|c| t.caps.contains(c)) {
            return Ok(false);
        }
        if let Some(min) = &self.excludes.min_kernel
            && t.kernel >= min_kernel(min)?
        {
            return Ok(false);
        }
        if let Some(min) = &self.includes.min_kernel
            && t.kernel < min_kernel(min)?
        {
            return Ok(false);
        }
        Ok(true)
    }
}

fn min_kernel(text: &str) -> Result<(u32, u32), Error> {
    parse_kernel(text)
        .ok_or_else(|| Error::Invalid(format!("minKernel {text:?} is not MAJOR.MINOR")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn names(s: &LinuxSeccomp) -> Vec<String> {
        s.syscalls()
            .iter()
            .flatten()
            .flat_map(|c| c.names().clone())
            .collect()
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("5.10rc1"), Some((5, 10)));
        assert_eq!(parse_kernel("junk"), None);
    }

    #[test]
    fn caps_select_rules_as_moby_does() {
        let p = Profile::parse("default", super::super::DEFAULT_PROFILE.as_bytes()).expect("parse");
        let plain = caps(&["CAP_CHOWN", "CAP_NET_RAW"]);
        let t = Target {
            arch: "amd64",
            caps: &plain,
            kernel: (6, 6),
        };
        let s = p.resolve(&t).expect("resolve");
        let n = names(&s);
        assert!(!n.iter().any(|x| x == "mount"), "mount needs CAP_SYS_ADMIN");
        assert!(!n.iter().any(|x| x == "unshare"));
        assert!(n.iter().any(|x| x == "arch_prctl"));
        assert!(!n.iter().any(|x| x == "s390_runtime_instr"));
        // clone3 → ENOSYS without CAP_SYS_ADMIN, so glibc falls back to clone.
        let clone3 = s
            .syscalls()
            .iter()
            .flatten()
            .find(|c| c.names().iter().any(|x| x == "clone3"))
            .expect("clone3 rule");
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(38));
        let admin = caps(&["CAP_SYS_ADMIN"]);
        let t = Target {
            arch: "amd64",
            caps: &admin,
            kernel: (6, 6),
        };
        let n = names(&p.resolve(&t).expect("resolve"));
        assert!(n.iter().any(|x| x == "mount"));
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
    }

    #[test]
    fn min_kernel_gates_ptrace() {
        let p = Profile::parse("default", super::super::DEFAULT_PROFILE.as_bytes()).expect("parse");
        let none = caps(&[]);
        let old = Target {
            arch: "amd64",
            caps: &none,
            kernel: (4, 4),
        };
        assert!(!names(&p.resolve(&old).expect("resolve")).contains(&"ptrace".to_string()));
        let new = Target {
            kernel: (4, 8),
            ..old
        };
        assert!(names(&p.resolve(&new).expect("resolve")).contains(&"ptrace".to_string()));
    }

    #[test]
    fn bad_profiles_are_refused_with_a_reason() {
        let err = Profile::parse("x", br#"{"defaultAction":"SCMP_ACT_NOPE"}"#)
            .expect_err("unknown action");
        assert!(err.to_string().contains("SCMP_ACT_NOPE"), "{err}");
        let p = Profile::parse(
            "x",
            br#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#,
        )
        .expect("parse");
        let none = caps(&[]);
        assert!(p.resolve(&Target::host(&none)).is_err());
        let p = Profile::parse(
            "x",
            br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ALLOW","errnoRet":1}]}"#,
        )
        .expect("parse");
        assert!(p.resolve(&Target::host(&none)).is_err());
    }
}
