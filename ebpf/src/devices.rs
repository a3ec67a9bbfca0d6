//! The device cgroup program for one container (cgroup v2): a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program generated from the container's rules as
//! straight-line eBPF — one compare-and-return block per rule, last rule first — and
//! attached to the container's cgroup with `BPF_PROG_ATTACH` (`BPF_F_ALLOW_MULTI`), as
//! runc does. Not a bpf_link: the attachment lives exactly as long as the cgroup, so the
//! runtime process may exit and nothing is left to clean up when the cgroup is removed.
//!
//! Why generated rather than a compiled object with the rules as globals: loading an ELF
//! object through aya parses the kernel's whole BTF (5 MB, ~10 ms of CPU) and probes
//! kernel features on every load, and the verifier has to walk a loop over the rule
//! table (~3 ms); a one-shot `berth-runtime create` paid all of it per container. The
//! generated program has no maps, no relocations and no loop: it verifies in
//! microseconds. A process that starts many containers (the agent) still loads one
//! program per distinct rule table and attaches it to every cgroup.
//! Entry point: [`attach_device_filter`].

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use berth_ebpf_common::{
    DEVICE_ACC_MKNOD, DEVICE_ACC_READ, DEVICE_ACC_WRITE, DEVICE_ANY, DEVICE_KIND_ANY, DeviceRule,
    MAX_DEVICE_RULES,
};

use crate::Error;

/// `BPF_PROG_LOAD` and `BPF_PROG_ATTACH` (include/uapi/linux/bpf.h, enum bpf_cmd).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
/// `BPF_PROG_TYPE_CGROUP_DEVICE` (enum bpf_prog_type).
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
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

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to `expected_attach_type` (the
/// kernel accepts a shorter attr and zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Generates the program for `rules` and attaches it to the cgroup2 directory
/// `cgroup_dir`, which must not be a hierarchy's root (that would govern every process
/// of the host).
pub fn attach_device_filter(rules: &[DeviceRule], cgroup_dir: &Path) -> Result<(), Error> {
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
    let prog_fd = loaded(rules)?;
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

/// The programs this process loaded, by rule table.
type Loaded = HashMap<Vec<DeviceRule>, Arc<OwnedFd>>;

fn cache() -> &'static Mutex<Loaded> {
    static CACHE: OnceLock<Mutex<Loaded>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The program for `rules` (from the cache, or loaded now): its fd, kept open by the
/// cache for the process's life.
fn loaded(rules: &[DeviceRule]) -> Result<Arc<OwnedFd>, Error> {
    let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(fd) = cache.get(rules) {
        return Ok(fd.clone());
    }
    let fd = Arc::new(load(&program(rules))?);
    cache.insert(rules.to_vec(), fd.clone());
    Ok(fd)
}

/// Loads `insns` as a device cgroup program. On a verifier refusal, loads again with
/// the verifier's log so the error says why.
fn load(insns: &[u64]) -> Result<OwnedFd, Error> {
    const LICENSE: &[u8] = b"GPL\0";
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"berth_devices");
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            prog_name: name,
            ..Default::default()
        };
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = buf.len() as u32;
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        // SAFETY: bpf(2) reads the attr, the `insn_cnt` instructions and the
        // NUL-terminated license, all alive for the call, and writes at most `log_size`
        // bytes to the log buffer when one is given.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            // SAFETY: a successful BPF_PROG_LOAD returns a new fd that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
        }
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            let mut log = vec![0u8; 64 * 1024];
            let _ = attempt(Some(&mut log));
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(4).collect();
            Err(Error::DeviceProgram {
                source: first,
                verifier: tail.into_iter().rev().collect::<Vec<_>>().join("; "),
            })
        }
    }
}

/// eBPF instruction classes, operations and sources used here (include/uapi/linux/bpf.h,
/// bpf_common.h).
mod op {
    /// `BPF_LDX | BPF_MEM | BPF_W`: a 32-bit load.
    pub const LDX_W: u8 = 0x61;
    /// `BPF_ALU | BPF_AND | BPF_K`, 32-bit.
    pub const AND32_K: u8 = 0x54;
    /// `BPF_ALU | BPF_RSH | BPF_K`, 32-bit.
    pub const RSH32_K: u8 = 0x74;
    /// `BPF_ALU | BPF_MOV | BPF_X`, 32-bit.
    pub const MOV32_X: u8 = 0xbc;
    /// `BPF_ALU64 | BPF_MOV | BPF_K`.
    pub const MOV64_K: u8 = 0xb7;
    /// `BPF_JMP32 | BPF_JNE | BPF_K`.
    pub const JNE32_K: u8 = 0x56;
    /// `BPF_JMP32 | BPF_JNE | BPF_X`.
    pub const JNE32_X: u8 = 0x5e;
    /// `BPF_JMP | BPF_EXIT`.
    pub const EXIT: u8 = 0x95;
}

/// Registers: r1 holds the context (`struct bpf_cgroup_dev_ctx`: access_type, major,
/// minor as u32s) on entry and is scratch after the prologue.
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;

/// One `struct bpf_insn` as the kernel reads it (little-endian: code, dst:4 src:4,
/// off s16, imm s32).
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst & 0xf) << 8)
        | (u64::from(src & 0xf) << 12)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

/// The program for `rules`: the last matching rule decides, so rules are tested from
/// the last to the first and the first match returns its verdict; no match denies.
/// A rule that matches every request ends the program (what precedes it is dead code,
/// which the verifier refuses).
pub(crate) fn program(rules: &[DeviceRule]) -> Vec<u64> {
    let all = DEVICE_ACC_MKNOD | DEVICE_ACC_READ | DEVICE_ACC_WRITE;
    let mut p = vec![
        insn(op::LDX_W, TYPE, R1, 0, 0),
        insn(op::AND32_K, TYPE, 0, 0, 0xffff),
        insn(op::LDX_W, ACCESS, R1, 0, 0),
        insn(op::RSH32_K, ACCESS, 0, 0, 16),
        insn(op::LDX_W, MAJOR, R1, 4, 0),
        insn(op::LDX_W, MINOR, R1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        // The tests, each a list of instructions whose last one jumps past the block.
        let mut tests: Vec<Vec<(u8, u8, u8, i32)>> = Vec::new();
        if rule.kind != DEVICE_KIND_ANY {
            tests.push(vec![(op::JNE32_K, TYPE, 0, rule.kind as i32)]);
        }
        if rule.access & all != all {
            tests.push(vec![
                (op::MOV32_X, R1, ACCESS, 0),
                (op::AND32_K, R1, 0, rule.access as i32),
                (op::JNE32_X, R1, ACCESS, 0),
            ]);
        }
        if rule.major != DEVICE_ANY {
            tests.push(vec![(op::JNE32_K, MAJOR, 0, rule.major as i32)]);
        }
        if rule.minor != DEVICE_ANY {
            tests.push(vec![(op::JNE32_K, MINOR, 0, rule.minor as i32)]);
        }
        let len: usize = tests.iter().map(Vec::len).sum::<usize>() + 2;
        let mut at = 0;
        for test in tests {
            for (code, dst, src, imm) in test {
                at += 1;
                // A jump lands on the instruction after the block: pc + 1 + off.
                let off = if code == op::JNE32_K || code == op::JNE32_X {
                    (len - at) as i16
                } else {
                    0
                };
                p.push(insn(code, dst, src, off, imm));
            }
        }
        p.push(insn(op::MOV64_K, R0, 0, 0, rule.allow as i32));
        p.push(insn(op::EXIT, 0, 0, 0, 0));
        if len == 2 {
            return p;
        }
    }
    p.push(insn(op::MOV64_K, R0, 0, 0, 0));
    p.push(insn(op::EXIT, 0, 0, 0, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_ebpf_common::{DEVICE_KIND_BLOCK, DEVICE_KIND_CHAR};

    /// Runs `prog` on one request with an interpreter of the instructions `program`
    /// emits (anything else fails the test).
    fn run(prog: &[u64], access_type: u32, major: u32, minor: u32) -> u64 {
        let mut r = [0u64; 11];
        let ctx = [access_type, major, minor];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (code, dst, src) = (
                i as u8,
                ((i >> 8) & 0xf) as usize,
                ((i >> 12) & 0xf) as usize,
            );
            let off = (i >> 16) as u16 as i16;
            let imm = (i >> 32) as u32;
            let lo = |v: u64| v as u32;
            pc += 1;
            match code {
                op::LDX_W => {
                    assert_eq!(src, R1 as usize, "loads only from the context");
                    r[dst] = u64::from(ctx[off as usize / 4]);
                }
                op::AND32_K => r[dst] = u64::from(lo(r[dst]) & imm),
                op::RSH32_K => r[dst] = u64::from(lo(r[dst]) >> imm),
                op::MOV32_X => r[dst] = u64::from(lo(r[src])),
                op::MOV64_K => r[dst] = imm as i32 as i64 as u64,
                op::JNE32_K if lo(r[dst]) != imm => pc = (pc as i64 + off as i64) as usize,
                op::JNE32_X if lo(r[dst]) != lo(r[src]) => pc = (pc as i64 + off as i64) as usize,
                op::JNE32_K | op::JNE32_X => {}
                op::EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn rule(kind: u32, major: u32, minor: u32, access: u32, allow: bool) -> DeviceRule {
        DeviceRule {
            kind,
            major,
            minor,
            access,
            allow: u32::from(allow),
        }
    }

    fn reference(rules: &[DeviceRule], kind: u32, major: u32, minor: u32, access: u32) -> u64 {
        rules
            .iter()
            .rev()
            .find(|r| r.matches(kind, major, minor, access))
            .map_or(0, |r| u64::from(r.allow))
    }

    #[test]
    fn the_program_decides_as_the_last_matching_rule() {
        let rwm = DEVICE_ACC_MKNOD | DEVICE_ACC_READ | DEVICE_ACC_WRITE;
        let cri = vec![
            rule(DEVICE_KIND_ANY, DEVICE_ANY, DEVICE_ANY, rwm, false),
            rule(
                DEVICE_KIND_CHAR,
                DEVICE_ANY,
                DEVICE_ANY,
                DEVICE_ACC_MKNOD,
                true,
            ),
            rule(
                DEVICE_KIND_BLOCK,
                DEVICE_ANY,
                DEVICE_ANY,
                DEVICE_ACC_MKNOD,
                true,
            ),
            rule(DEVICE_KIND_CHAR, 1, 3, rwm, true),
            rule(DEVICE_KIND_CHAR, 136, DEVICE_ANY, rwm, true),
            rule(DEVICE_KIND_CHAR, 1, 9, DEVICE_ACC_READ, true),
            rule(DEVICE_KIND_CHAR, 4, 1, rwm, false),
            rule(DEVICE_KIND_CHAR, 0x8000_0001, 7, rwm, true),
        ];
        for rules in [cri.clone(), cri[1..].to_vec(), vec![], cri[..1].to_vec()] {
            let prog = program(&rules);
            for kind in [DEVICE_KIND_BLOCK, DEVICE_KIND_CHAR] {
                for (major, minor) in [(1, 3), (1, 9), (136, 4), (4, 1), (8, 0), (0x8000_0001, 7)] {
                    for access in 1..=rwm {
                        let got = run(&prog, (access << 16) | kind, major, minor);
                        let want = reference(&rules, kind, major, minor, access);
                        assert_eq!(
                            got, want,
                            "{rules:?}: type {kind} {major}:{minor} access {access}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_rule_matching_everything_ends_the_program() {
        let rwm = DEVICE_ACC_MKNOD | DEVICE_ACC_READ | DEVICE_ACC_WRITE;
        let rules = [
            rule(DEVICE_KIND_CHAR, 1, 3, rwm, true),
            rule(DEVICE_KIND_ANY, DEVICE_ANY, DEVICE_ANY, rwm, false),
        ];
        let prog = program(&rules);
        // Prologue (6) + the deny-all block (2): nothing unreachable after it.
        assert_eq!(prog.len(), 8);
        assert_eq!(run(&prog, (2 << 16) | DEVICE_KIND_CHAR, 1, 3), 0);
    }
}
