//! `exec`: start a new process in a running container — in its cgroup and namespaces
//! (entered with `setns` through `/proc/<pid>/ns/*`), with the container's process
//! settings unless the caller overrides them, optionally on a new terminal.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sched::CloneFlags;
use oci_spec::runtime::Process;

use super::{Error, Status, io_err, status};
use crate::cgroups::Cgroup;
use crate::init::{self, InitError, msg, step};
use crate::state::Root;
use crate::sys;

#[derive(Debug)]
pub struct ExecOptions {
    pub process: Process,
    /// stdin, stdout, stderr for the new process (inherited when None and no tty).
    pub stdio: Option<[RawFd; 3]>,
    /// A terminal slave to use as controlling terminal and stdio.
    pub tty: Option<RawFd>,
}

/// The namespaces a process joins, in the order it joins them (user first: the others
/// may belong to it; mount last: entering it changes the root).
const NAMESPACES: [(&str, CloneFlags); 6] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

fn same_ns(pid: i32, name: &str) -> bool {
    let ours = std::fs::read_link(format!("/proc/self/ns/{name}"));
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{name}"));
    matches!((ours, theirs), (Ok(a), Ok(b)) if a == b)
}

/// Starts the process and returns its host PID once it has exec'd. The caller must be
/// single-threaded, and it is moved into the container's PID namespace for its future
/// children (so a caller that waits must be the parent: it is).
pub fn exec(root: &Root, id: &str, opts: &ExecOptions) -> Result<i32, Error> {
    let state = root.load(id)?;
    let current = status(root, &state);
    if current != Status::Running && current != Status::Created {
        return Err(Error::WrongStatus {
            id: id.to_string(),
            status: current,
            needed: "exec needs a running container",
        });
    }
    let mut fds: Vec<(CloneFlags, OwnedFd)> = Vec::new();
    for (name, flag) in NAMESPACES {
        if same_ns(state.pid, name) {
            continue;
        }
        let path = std::path::PathBuf::from(format!("/proc/{}/ns/{name}", state.pid));
        let fd =
            sys::open_raw(&path, libc::O_RDONLY).map_err(io_err(path.display().to_string()))?;
        fds.push((flag, fd));
    }
    if !same_ns(state.pid, "pid") {
        let path = std::path::PathBuf::from(format!("/proc/{}/ns/pid", state.pid));
        let fd =
            sys::open_raw(&path, libc::O_RDONLY).map_err(io_err(path.display().to_string()))?;
        nix::sched::setns(&fd, CloneFlags::CLONE_NEWPID).map_err(|e| Error::Io {
            what: "setns pid".into(),
            source: e.into(),
        })?;
    }
    let cgroup = Cgroup::load(&state.cgroup);
    // The container's seccomp profile confines exec'd processes too (as runc's exec);
    // `create` kept it in the state directory.
    let filters = load_seccomp(root, id)?;
    let (parent_sock, child_sock) = init::sync_pair().map_err(io_err("socketpair"))?;
    let child = sys::clone_fork(0).map_err(io_err("fork"))?;
    if child == 0 {
        drop(parent_sock);
        let err = run_child(&cgroup, &fds, opts, &filters);
        let _ = nix::sys::socket::send(
            child_sock.as_raw_fd(),
            &[&[msg::ERROR][..], err.to_string().as_bytes()].concat(),
            nix::sys::socket::MsgFlags::empty(),
        );
        sys::exit_now(127);
    }
    drop(child_sock);
    match init::read_message(&parent_sock).map_err(io_err("read from exec child"))? {
        None => Ok(child),
        Some((_, payload)) => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
            Err(Error::Init(String::from_utf8_lossy(&payload).into_owned()))
        }
    }
}

/// The filters of the profile `create` recorded for `id`; none when it had no profile.
fn load_seccomp(root: &Root, id: &str) -> Result<Vec<crate::seccomp::BpfProgram>, Error> {
    let path = root.container_dir(id).join(crate::seccomp::STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path.display().to_string())(e)),
    };
    let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Spec(format!("{}: {e}", path.display())))?;
    crate::seccomp::compile(&profile).map_err(|e| Error::Spec(e.to_string()))
}

fn run_child(
    cgroup: &Cgroup,
    fds: &[(CloneFlags, OwnedFd)],
    opts: &ExecOptions,
    filters: &[crate::seccomp::BpfProgram],
) -> InitError {
    let result = (|| -> Result<std::io::Error, InitError> {
        step("join cgroup", || cgroup.join_self())?;
        crate::process::set_oom_score_adj(&opts.process)?;
        for (flag, fd) in fds {
            step(&format!("setns {flag:?}"), || nix::sched::setns(fd, *flag))?;
        }
        if let Some(tty) = opts.tty {
            step("setsid", nix::unistd::setsid)?;
            step("controlling terminal", || sys::set_controlling_tty(tty))?;
            for target in 0..3 {
                if sys::dup2(tty, target) < 0 {
                    return Err(InitError::msg("dup terminal"));
                }
            }
        } else if let Some(stdio) = opts.stdio {
            for (target, fd) in stdio.iter().enumerate() {
                if sys::dup2(*fd, target as RawFd) < 0 {
                    return Err(InitError::msg("dup stdio"));
                }
            }
        }
        let exec = crate::process::prepare(&opts.process)?;
        init::finalize(&opts.process, filters)?;
        Ok(sys::execve(&exec.path, &exec.args, &exec.env))
    })();
    match result {
        Ok(err) => InitError::msg(format!("exec: {err}")),
        Err(e) => e,
    }
}
