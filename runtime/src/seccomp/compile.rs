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

/// The filters for `profile`, in installation order (one when they fit together, see
/// [`merge`]). Empty when the profile allows everything.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, Error> {
    let stack = stack(profile, true)?;
    // Merged only behind a base filter (a default other than ALLOW).
    Ok(
        if profile.default_action() == LinuxSeccompAction::ScmpActAllow {
            stack.into_iter().map(|(_, p)| p).collect()
        } else {
            merge(stack)
        },
    )
}

/// The filters for `profile` as a stack: the base filter (when the default action is
/// not ALLOW), then one per other action; each with the action it answers when not
/// ALLOW (the base: its default).
/// `tree`: the base filter's unconditional calls as a binary search ([`build_base`]),
/// else all of it as seccompiler builds it (the tests' reference).
fn stack(profile: &LinuxSeccomp, tree: bool) -> Result<Vec<(u32, BpfProgram)>, Error> {
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
        let ret = u32::from(default.clone());
        let prog = if tree {
            build_base(base, default, arch)?
        } else {
            build(base, default, SeccompAction::Allow, arch)?
        };
        programs.push((ret, prog));
    }
    // The order does not change the result: the base filter allows every syscall a
    // group names, so two filters only disagree when a profile gives one call two
    // actions, and then the kernel's precedence (KILL > TRAP > ERRNO > TRACE > LOG)
    // decides, as it would between libseccomp's rules.
    for (ret, (act, chains)) in others {
        programs.push((ret, build(chains, SeccompAction::Allow, act, arch)?));
    }
    Ok(programs)
}

/// `SECCOMP_RET_ALLOW`.
const RET_ALLOW: u32 = 0x7fff_0000;
/// `BPF_RET | BPF_K` and `BPF_JMP | BPF_JA`.
const RET_K: u16 = 0x06;
const JA: u16 = 0x05;

/// The kernel's precedence of a filter's return value: lower is more restrictive
/// (`SECCOMP_RET_ACTION_FULL` compared as signed, KILL_PROCESS first).
fn precedence(ret: u32) -> i32 {
    (ret & 0xffff_0000) as i32
}

/// One program with the result of the stacked ones, when it fits: each seccomp filter
/// installed costs the kernel its own conversion, JIT and action cache (≈ 0.3 ms for a
/// ten-instruction one here). The group filters (ALLOW or one action) run first, most
/// restrictive action first and, between equal actions, the last one installed first
/// (the kernel's tie-break); each ALLOW of theirs becomes a jump to the next, and the
/// base filter (the first of `stack`) ends the program. The base filter allows every call
/// a group names under the same conditions, so the first non-ALLOW answer is what the
/// stack would return.
fn merge(stack: Vec<(u32, BpfProgram)>) -> Vec<BpfProgram> {
    let total: usize = stack.iter().map(|(_, p)| p.len()).sum();
    if stack.len() < 2 || total > 4096 {
        return stack.into_iter().map(|(_, p)| p).collect();
    }
    let mut stack = stack;
    let (_, base) = stack.remove(0);
    let mut groups: Vec<(usize, u32, BpfProgram)> = stack
        .into_iter()
        .enumerate()
        .map(|(order, (ret, p))| (order, ret, p))
        .collect();
    groups.sort_by_key(|(order, ret, _)| (precedence(*ret), std::cmp::Reverse(*order)));
    let mut out = Vec::with_capacity(total);
    for (_, _, mut p) in groups {
        let len = p.len();
        for (i, ins) in p.iter_mut().enumerate() {
            if ins.code == RET_K && ins.k == RET_ALLOW {
                ins.code = JA;
                ins.jt = 0;
                ins.jf = 0;
                ins.k = (len - i - 1) as u32;
            }
        }
        out.extend(p);
    }
    out.extend(base);
    vec![out]
}

/// The base filter: the calls allowed whatever their arguments are found by a binary
/// search over their numbers ([`allow_tree`]); the calls allowed under argument
/// conditions, and the default, are seccompiler's filter after it. A linear chain of
/// ~370 calls made the kernel's install of moby's profile cost ≈ 1 ms: it emulates the
/// filter for every syscall number to fill its action cache, so the cost grows with
/// the square of a linear filter's length and only logarithmically with a tree's.
fn build_base(
    chains: Chains,
    default: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, Error> {
    let (free, conditional): (Vec<_>, Vec<_>) =
        chains.into_iter().partition(|(_, rules)| rules.is_none());
    let tail = build(
        conditional.into_iter().collect(),
        default,
        SeccompAction::Allow,
        arch,
    )?;
    let allowed: Vec<u32> = free
        .into_iter()
        .filter_map(|(nr, _)| u32::try_from(nr).ok())
        .collect();
    let mut prog = allow_tree(&allowed, audit_arch(arch));
    prog.extend(tail);
    if prog.len() > 4096 {
        return Err(Error::Invalid(format!(
            "the filter is {} instructions long (the kernel takes at most 4096)",
            prog.len()
        )));
    }
    Ok(prog)
}

/// `AUDIT_ARCH_*` of the architecture (include/uapi/linux/audit.h).
fn audit_arch(arch: TargetArch) -> u32 {
    match arch {
        TargetArch::aarch64 => 0xc000_00b7,
        TargetArch::riscv64 => 0xc000_00f3,
        _ => 0xc000_003e,
    }
}

/// Classic BPF opcodes the tree uses.
mod cbpf {
    /// `BPF_LD | BPF_W | BPF_ABS`.
    pub const LD_ABS: u16 = 0x20;
    /// `BPF_JMP | BPF_JEQ | BPF_K`, `BPF_JMP | BPF_JGE | BPF_K`, `BPF_JMP | BPF_JA`.
    pub const JEQ: u16 = 0x15;
    pub const JGE: u16 = 0x35;
    pub const JA: u16 = 0x05;
    /// `BPF_RET | BPF_K`.
    pub const RET: u16 = 0x06;
}

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

/// A program prefix that returns ALLOW for the syscall numbers in `sorted` (on the
/// native architecture) and otherwise runs on to whatever follows it.
fn allow_tree(sorted: &[u32], arch: u32) -> BpfProgram {
    let mut out = vec![
        // seccomp_data.arch at offset 4, nr at 0.
        ins(cbpf::LD_ABS, 0, 0, 4),
        ins(cbpf::JEQ, 1, 0, arch),
        ins(cbpf::JA, 0, 0, 0), // patched: to the end of the prefix
        ins(cbpf::LD_ABS, 0, 0, 0),
    ];
    // Jumps to patch to the end of the prefix (the fall-through).
    let mut to_end = vec![2usize];
    tree(sorted, &mut out, &mut to_end);
    let end = out.len();
    for at in to_end {
        out[at].k = (end - at - 1) as u32;
    }
    out
}

/// Emits the search over `nrs` (the accumulator holds the syscall number).
fn tree(nrs: &[u32], out: &mut BpfProgram, to_end: &mut Vec<usize>) {
    const LEAF: usize = 4;
    if nrs.len() <= LEAF {
        // jeq a → allow; jeq b → allow; …; ja end; allow: ret ALLOW
        let n = nrs.len();
        for (i, nr) in nrs.iter().enumerate() {
            // From instruction i, the `ret` is at n + 1 (after the ja).
            out.push(ins(cbpf::JEQ, (n - i) as u8, 0, *nr));
        }
        to_end.push(out.len());
        out.push(ins(cbpf::JA, 0, 0, 0));
        out.push(ins(cbpf::RET, 0, 0, RET_ALLOW));
        return;
    }
    let (left, right) = nrs.split_at(nrs.len() / 2);
    // jge right[0] → (fall into) ja RIGHT; else skip the ja into LEFT.
    out.push(ins(cbpf::JGE, 0, 1, right[0]));
    let ja = out.len();
    out.push(ins(cbpf::JA, 0, 0, 0));
    tree(left, out, to_end);
    out[ja].k = (out.len() - ja - 1) as u32;
    tree(right, out, to_end);
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
        assert_eq!(
            progs.len(),
            1,
            "clone3's ENOSYS filter merged before the base"
        );
        assert!(progs[0].len() > 300, "one jump per allowed syscall");
        assert!(progs.iter().all(|p| p.len() < 4096), "BPF_MAXINSNS");
    }

    /// Runs a classic BPF seccomp program (the instructions seccompiler and `merge`
    /// emit) on `struct seccomp_data` for x86_64.
    fn run(prog: &[seccompiler::sock_filter], nr: u32, args: [u64; 6]) -> u32 {
        run_as(prog, 0xc000_003e, nr, args)
    }

    fn run_as(prog: &[seccompiler::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let ins = &prog[pc];
            pc += 1;
            let k = ins.k;
            match ins.code {
                0x20 => {
                    let o = k as usize;
                    acc = u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
                }
                0x54 => acc &= k,
                0x05 => pc += k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let hit = match ins.code {
                        0x15 => acc == k,
                        0x25 => acc > k,
                        0x35 => acc >= k,
                        _ => acc & k != 0,
                    };
                    pc += usize::from(if hit { ins.jt } else { ins.jf });
                }
                0x06 => return k,
                other => panic!("instruction {other:#x}"),
            }
        }
    }

    /// What the kernel returns for stacked filters: the most restrictive action, the
    /// newest filter winning a tie.
    fn stacked(progs: &[BpfProgram], nr: u32, args: [u64; 6]) -> u32 {
        let mut best = RET_ALLOW;
        for p in progs {
            let r = run(p, nr, args);
            if precedence(r) <= precedence(best) {
                best = r;
            }
        }
        best
    }

    #[test]
    fn the_merged_filter_answers_as_the_stack() {
        let caps = vec!["CAP_CHOWN".to_string()];
        let p = Profile::parse("default", DEFAULT_PROFILE.as_bytes())
            .expect("parse")
            .resolve(&Target::host(&caps))
            .expect("resolve");
        let merged = compile(&p).expect("compile");
        let profile = Profile::parse(
            "mixed",
            br#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read","write","clone"],"action":"SCMP_ACT_ALLOW"},
                {"names":["clone"],"action":"SCMP_ACT_ERRNO","errnoRet":38,"args":[{"index":0,"value":2114060288,"op":"SCMP_CMP_MASKED_EQ","valueTwo":0}]},
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":5},
                {"names":["mkdir","rmdir"],"action":"SCMP_ACT_KILL_PROCESS"},
                {"names":["getpid"],"action":"SCMP_ACT_LOG"}]}"#,
        )
        .expect("parse")
        .resolve(&Target::host(&[]))
        .expect("resolve");
        for (profile, merged) in [
            (&p, merged),
            (&profile, compile(&profile).expect("compile")),
        ] {
            assert_eq!(merged.len(), 1);
            // The same filters, stacked.
            // seccompiler's filters, stacked: the reference.
            let stack: Vec<BpfProgram> = stack(profile, false)
                .expect("stack")
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            assert!(stack.len() >= 2);
            // Another architecture (i386) is killed either way, whatever the number.
            for nr in [0u32, 1, 3, 59] {
                let stacked_i386 = stack
                    .iter()
                    .map(|p| run_as(p, 0x4000_0003, nr, [0; 6]))
                    .min_by_key(|r| precedence(*r));
                assert_eq!(
                    Some(run_as(&merged[0], 0x4000_0003, nr, [0; 6])),
                    stacked_i386
                );
            }
            for nr in (0..470u32).chain([0x4000_0000, 0x4000_0001, 1 << 31, u32::MAX]) {
                for args in [[0u64; 6], [0x7e02_0000, 1, 2, 3, 4, 5], [u64::MAX; 6]] {
                    assert_eq!(
                        run(&merged[0], nr, args),
                        stacked(&stack, nr, args),
                        "syscall {nr} {args:?}"
                    );
                }
            }
        }
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
