//! OCI `linux.seccomp` → classic-BPF programs (seccompiler), and their installation.
//!
//! seccompiler builds one filter with one match and one mismatch action; a profile mixes
//! actions (moby's allows most calls, answers `clone3` with ENOSYS and everything else
//! with EPERM). So a profile becomes a stack of filters, which the kernel evaluates all
//! of, taking the most restrictive result (seccomp(2), "multiple filters"; the newest
//! filter wins between equal actions):
//! 1. the base filter: every syscall any rule names (under that rule's argument
//!    conditions) is allowed, anything else gets the default action;
//! 2. one filter per other action: its syscalls (under their conditions) get that action,
//!    anything else is allowed.
//!
//! A call named by an ALLOW rule thus gets ALLOW, one named by an ERRNO(38) rule gets
//! ENOSYS, one no rule matches gets the default — what libseccomp's single filter gives
//! for a profile whose rules do not contradict each other. Syscall names this
//! architecture does not have are skipped, as runc (libseccomp) skips them.

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::Error;

/// A syscall's rules: `None` = matched unconditionally; else any one rule matches.
type Chains = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, Error> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Unsupported(
                "SCMP_ACT_NOTIFY (needs a seccomp agent)".into(),
            ));
        }
    })
}

fn target_arch() -> Result<TargetArch, Error> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| Error::Unsupported(format!("seccomp on {}", std::env::consts::ARCH)))
}

/// Adds one rule's conditions for `nr` to `chains`.
fn add(chains: &mut Chains, nr: i64, rule: Option<SeccompRule>) {
    match rule {
        None => {
            chains.insert(nr, None);
        }
        Some(r) => {
            // A syscall already matched unconditionally stays so.
            if let Some(list) = chains.entry(nr).or_insert_with(|| Some(Vec::new())) {
                list.push(r);
            }
        }
    }
}

fn condition(arg: &oci_spec::runtime::LinuxSeccompArg) -> Result<SeccompCondition, Error> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| Error::Invalid(format!("argument index {} (0-5)", arg.index())))?;
    // libseccomp compares all 64 bits; for MASKED_EQ `value` is the mask and
    // `valueTwo` the datum.
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(Error::Compile)
}

/// The filters for `profile`, in installation order. Empty when the profile allows
/// everything.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, Error> {
    let arch = target_arch()?;
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut base: Chains = BTreeMap::new();
    // Keyed by the action's return value, so equal actions share a filter.
    let mut others: BTreeMap<u32, (SeccompAction, Chains)> = BTreeMap::new();
    for call in profile.syscalls().iter().flatten() {
        let act = action(call.action(), call.errno_ret())?;
        let rule = match call.args().as_deref() {
            None | Some([]) => None,
            Some(args) => {
                let conds = args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
                Some(SeccompRule::new(conds).map_err(Error::Compile)?)
            }
        };
        for name in call.names() {
            let Some(nr) = super::syscall_number(name) else {
                continue;
            };
            add(&mut base, nr, rule.clone());
            if act != SeccompAction::Allow {
                let key = u32::from(act.clone());
                let (_, chains) = others
                    .entry(key)
                    .or_insert_with(|| (act.clone(), BTreeMap::new()));
                add(chains, nr, rule.clone());
            }
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(build(base, default, SeccompAction::Allow, arch)?);
    }
    // The order does not change the result: the base filter allows every syscall a
    // group names, so two filters only disagree when a profile gives one call two
    // actions, and then the kernel's precedence (KILL > TRAP > ERRNO > TRACE > LOG)
    // decides, as it would between libseccomp's rules.
    for (_, (act, chains)) in others {
        programs.push(build(chains, SeccompAction::Allow, act, arch)?);
    }
    Ok(programs)
}

fn build(
    chains: Chains,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, Error> {
    let rules = chains
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, matched, arch).map_err(Error::Compile)?;
    BpfProgram::try_from(filter).map_err(Error::Compile)
}

/// Installs the filters on the calling thread, in order. The kernel requires
/// no_new_privs or CAP_SYS_ADMIN; this sets neither (see `init::finalize`).
pub fn install(programs: &[BpfProgram]) -> Result<(), Error> {
    for p in programs {
        crate::sys::seccomp_set_filter(p).map_err(|e| Error::Install(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::{DEFAULT_PROFILE, Profile, Target};

    #[test]
    fn runtime_default_compiles_to_a_base_and_an_enosys_filter() {
        let caps = vec!["CAP_CHOWN".to_string()];
        let p = Profile::parse("default", DEFAULT_PROFILE.as_bytes())
            .expect("parse")
            .resolve(&Target::host(&caps))
            .expect("resolve");
        let progs = compile(&p).expect("compile");
        assert_eq!(progs.len(), 2, "base (EPERM default) + clone3 ENOSYS");
        assert!(progs[0].len() > 300, "one jump per allowed syscall");
        assert!(progs.iter().all(|p| p.len() < 4096), "BPF_MAXINSNS");
    }

    #[test]
    fn allow_all_profile_installs_nothing() {
        let p = Profile::parse("x", br#"{"defaultAction":"SCMP_ACT_ALLOW"}"#)
            .expect("parse")
            .resolve(&Target::host(&[]))
            .expect("resolve");
        assert!(compile(&p).expect("compile").is_empty());
    }

    #[test]
    fn deny_list_profile_is_one_filter() {
        let p = Profile::parse(
            "x",
            br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat","no_such_call"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .expect("parse")
        .resolve(&Target::host(&[]))
        .expect("resolve");
        assert_eq!(compile(&p).expect("compile").len(), 1);
    }
}
