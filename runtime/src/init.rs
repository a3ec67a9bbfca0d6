//! The container's first process, between `clone` and `execve`: joins the cgroup and any
//! existing namespaces, builds the filesystem view, applies the process settings, tells
//! the runtime it is ready, waits at the start gate, then execs the workload.
//!
//! Runs in a forked child of a single-threaded process, so it may allocate; it reports
//! failure to the runtime as a message on the sync socket and exits.

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::socket::{MsgFlags, recv, send};
use oci_spec::runtime::Spec;

use crate::cgroups::Cgroup;
use crate::{rootfs, sys};

/// Why the container could not be set up; the text goes back to the caller verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitError(String);

impl InitError {
    pub fn msg(text: impl Into<String>) -> Self {
        Self(text.into())
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InitError {}

/// Runs one setup step, naming it in the error.
pub fn step<T, E: fmt::Display>(
    what: &str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, InitError> {
    f().map_err(|e| InitError(format!("{what}: {e}")))
}

/// Messages from the init to the runtime on the sync socket.
pub(crate) mod msg {
    /// Setup done; waiting at the gate.
    pub const READY: u8 = b'R';
    /// Setup failed; the rest of the message is the reason.
    pub const ERROR: u8 = b'E';
    /// The init forked into a joined PID namespace; 4 bytes of host PID follow.
    pub const PID: u8 = b'P';
    /// The init entered a new user namespace and waits for its uid and gid maps.
    pub const USERNS: u8 = b'U';
    /// (runtime → init) The maps are written.
    pub const MAPPED: u8 = b'M';
}

/// The uid_map and gid_map contents of a new user namespace.
#[derive(Debug, Clone)]
pub struct IdMaps {
    pub uid: String,
    pub gid: String,
}

/// The user namespace a container's init enters first.
#[derive(Debug)]
pub enum UserNs {
    /// An existing one (its `/proc/<pid>/ns/user`): the pod's, for its containers.
    Join(OwnedFd),
    /// A new one, which the runtime maps when the init asks ([`msg::USERNS`]).
    New(IdMaps),
}

/// Everything the child needs, prepared by the parent before `clone`.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub cgroup: Option<&'a Cgroup>,
    /// Existing namespaces to enter (`setns`), with their type.
    pub join: Vec<(CloneFlags, OwnedFd)>,
    /// Whether a PID namespace is joined (or made by `unshare`): the init must fork once
    /// more to be inside it.
    pub join_pid: bool,
    /// The user namespace to enter before anything else but the cgroup.
    pub user: Option<&'a UserNs>,
    /// Namespaces to make inside the user namespace (empty without one).
    pub unshare: CloneFlags,
    pub new_cgroup_ns: bool,
    pub new_mount_ns: bool,
    pub new_uts_ns: bool,
    /// The child's end of the sync socket.
    pub sync: RawFd,
    /// Read one byte from this fd before exec (the exec FIFO or a pipe).
    pub gate: RawFd,
    /// fds to install as stdin, stdout, stderr.
    pub stdio: Option<[RawFd; 3]>,
    /// A terminal slave to make the controlling terminal and stdio.
    pub tty: Option<RawFd>,
    /// The seccomp filters to install last (compiled by the runtime before `clone`).
    pub seccomp: &'a [crate::seccomp::BpfProgram],
}

fn report(sync: RawFd, tag: u8, payload: &[u8]) {
    let mut buf = Vec::with_capacity(1 + payload.len());
    buf.push(tag);
    buf.extend_from_slice(payload);
    let _ = send(sync, &buf, MsgFlags::empty());
}

/// The child's entry point after `clone`. Never returns.
pub(crate) fn child(ctx: Context<'_>) -> ! {
    match setup(&ctx) {
        Ok(exec) => {
            report(ctx.sync, msg::READY, &[]);
            let mut byte = [0u8; 1];
            match sys::read_raw(ctx.gate, &mut byte) {
                Ok(1) => {}
                // The runtime went away (delete before start): leave quietly.
                _ => sys::exit_now(0),
            }
            let err = sys::execve(&exec.path, &exec.args, &exec.env);
            eprintln!("berth-runtime: exec {}: {err}", exec.path.to_string_lossy());
            sys::exit_now(127)
        }
        Err(err) => {
            report(ctx.sync, msg::ERROR, err.to_string().as_bytes());
            sys::exit_now(1)
        }
    }
}

fn setup(ctx: &Context<'_>) -> Result<crate::process::Exec, InitError> {
    // First, so everything the init allocates is charged to the container.
    if let Some(cg) = ctx.cgroup {
        step("join cgroup", || cg.join_self())?;
    }
    if ctx.user.is_some()
        && let Some(process) = ctx.spec.process().as_ref()
    {
        crate::process::set_oom_score_adj(process)?;
    }
    match ctx.user {
        Some(UserNs::Join(fd)) => {
            step("setns user namespace", || {
                nix::sched::setns(fd, CloneFlags::CLONE_NEWUSER)
            })?;
        }
        Some(UserNs::New(_)) => {
            step("unshare user namespace", || {
                nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
            })?;
            report(ctx.sync, msg::USERNS, &[]);
            let mut answer = [0u8; 1];
            let n = step("wait for the user namespace's maps", || {
                recv(ctx.sync, &mut answer, MsgFlags::empty())
            })?;
            if n != 1 || answer[0] != msg::MAPPED {
                return Err(InitError::msg("the runtime did not map the user namespace"));
            }
        }
        None => {}
    }
    for (kind, fd) in &ctx.join {
        step(&format!("setns {kind:?}"), || nix::sched::setns(fd, *kind))?;
    }
    if ctx.user.is_some() {
        step("unshare namespaces", || nix::sched::unshare(ctx.unshare))?;
        // Root of the user namespace (the host's first id of its range).
        step("become root of the user namespace", || {
            sys::set_ids(0, 0, &[])
        })?;
    }
    if ctx.join_pid {
        // setns(CLONE_NEWPID) applies to children only.
        let pid = step("fork into the PID namespace", || sys::clone_fork(0))?;
        if pid > 0 {
            report(ctx.sync, msg::PID, &pid.to_ne_bytes());
            sys::exit_now(0);
        }
    }
    if ctx.new_cgroup_ns {
        step("unshare cgroup namespace", || {
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
        })?;
    }
    if let Some(tty) = ctx.tty {
        step("setsid", nix::unistd::setsid)?;
        step("controlling terminal", || sys::set_controlling_tty(tty))?;
        for target in 0..3 {
            step("terminal stdio", || dup_onto(tty, target))?;
        }
    } else if let Some(fds) = ctx.stdio {
        for (target, fd) in fds.iter().enumerate() {
            step("stdio", || dup_onto(*fd, target as RawFd))?;
        }
    }
    let process = ctx
        .spec
        .process()
        .as_ref()
        .ok_or_else(|| InitError::msg("config.json has no process"))?;

    rootfs::prepare(ctx.spec, ctx.rootfs, ctx.new_mount_ns)?;
    if let Some(name) = ctx.spec.hostname()
        && ctx.new_uts_ns
    {
        step("sethostname", || nix::unistd::sethostname(name))?;
    }
    rootfs::finish(ctx.spec)?;
    let exec = crate::process::prepare(process)?;
    finalize(process, ctx.seccomp)?;
    Ok(exec)
}

/// Drops privileges and installs the seccomp filters, in runc's order: the filter goes
/// on last, just before exec, once no_new_privs is set; a process that keeps the right to
/// gain privileges installs it while it still holds CAP_SYS_ADMIN (the kernel requires
/// one or the other), i.e. before the capabilities are dropped.
pub(crate) fn finalize(
    process: &oci_spec::runtime::Process,
    filters: &[crate::seccomp::BpfProgram],
) -> Result<(), InitError> {
    let nnp = process.no_new_privileges() == Some(true);
    if !nnp {
        step("seccomp", || crate::seccomp::install(filters))?;
    }
    crate::process::drop_privileges(process)?;
    if nnp {
        step("seccomp", || crate::seccomp::install(filters))?;
    }
    Ok(())
}

fn dup_onto(fd: RawFd, target: RawFd) -> std::io::Result<()> {
    if fd == target {
        return sys::set_cloexec(fd, false);
    }
    if sys::dup2(fd, target) < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The runtime's and the child's ends of a sync socket (message-preserving, closed on
/// exec so the runtime sees EOF once the child has exec'd).
pub(crate) fn sync_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

/// Reads one message from the init: (tag, payload). None at EOF.
pub(crate) fn read_message(sync: &OwnedFd) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match recv(sync.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                buf.truncate(n);
                let tag = buf[0];
                return Ok(Some((tag, buf[1..].to_vec())));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
