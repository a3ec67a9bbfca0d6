//! The monitor: one small process per pod container (like conmon or a containerd shim),
//! started by the library as `berth-runtime monitor`. It creates the container as its
//! own child, copies the container's stdout/stderr into the CRI log file, waits for the
//! exit and records it (`exit.json`, with OOMKilled from the cgroup's OOM counter). It
//! runs in its own session, so the process that started it (the agent) can die and come
//! back: the container keeps running and its exit is not lost.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cgroups::Cgroup;
use crate::container::{self, CreateOptions, Gate, Stdio};
use crate::logs::{LogWriter, Rotation, Stream};
use crate::state::{Exit, Root};

/// What `berth-runtime monitor` is asked to do.
#[derive(Debug, Clone)]
pub struct MonitorArgs {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub log_path: PathBuf,
    pub rotation: Rotation,
    /// Host mounts to undo when the container is deleted (its overlay rootfs).
    pub host_mounts: Vec<PathBuf>,
    /// Give the container a stdin: a FIFO at this path (what `kubectl attach -i`
    /// writes to); without it stdin is /dev/null.
    pub stdin_fifo: Option<PathBuf>,
}

fn nonblocking(fd: &OwnedFd) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        );
    }
}

/// Runs the monitor. Prints `created <pid>` (or `error: …`) on stdout once the
/// container is parked at its start gate, then closes stdout. Returns the exit code of
/// the monitor process.
pub fn run(args: &MonitorArgs) -> i32 {
    if let Err(err) = crate::become_subreaper() {
        println!("error: subreaper: {err}");
        return 1;
    }
    let root = Root::new(&args.root);
    let result = (|| -> Result<(i32, OwnedFd, OwnedFd, String), String> {
        let spec = container::create::load_spec(&args.bundle).map_err(|e| e.to_string())?;
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
        let null = match &args.stdin_fifo {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|e| format!("stdin fifo {}: {e}", path.display()))?;
                // Read and write: the FIFO never reports EOF while the monitor lives,
                // however often writers come and go.
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| format!("stdin fifo {}: {e}", path.display()))?
            }
            None => std::fs::File::open("/dev/null").map_err(|e| e.to_string())?,
        };
        let created = container::create(CreateOptions {
            root: &root,
            id: &args.id,
            bundle: &args.bundle,
            spec: &spec,
            gate: Gate::Fifo,
            stdio: Stdio::Fds([null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()]),
            host_mounts: args.host_mounts.clone(),
            monitored: true,
        })
        .map_err(|e| e.to_string())?;
        let mut state = created.state;
        state.monitor_pid = std::process::id() as i32;
        root.save(&state).map_err(|e| e.to_string())?;
        Ok((state.pid, out_r, err_r, state.cgroup))
    })();
    let (pid, out_r, err_r, cgroup) = match result {
        Ok(v) => v,
        Err(err) => {
            println!("error: {err}");
            return 1;
        }
    };
    println!("created {pid}");
    let _ = std::io::stdout().flush();
    // The library reads our stdout until EOF: close it for good.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = crate::sys::dup2(null.as_raw_fd(), 1);
    }

    let mut log = match LogWriter::open(&args.log_path, args.rotation) {
        Ok(l) => Some(l),
        Err(err) => {
            eprintln!(
                "berth-runtime monitor: log {}: {err}",
                args.log_path.display()
            );
            None
        }
    };
    nonblocking(&out_r);
    nonblocking(&err_r);
    let status = copy_until_exit(pid, &out_r, &err_r, log.as_mut());
    if let Some(l) = log.as_mut() {
        let _ = l.flush();
    }
    let cg = Cgroup::load(&cgroup);
    let (code, signal) = match status {
        WaitStatus::Exited(_, c) => (c, None),
        WaitStatus::Signaled(_, s, _) => (128 + s as i32, Some(s as i32)),
        _ => (255, None),
    };
    let oom_killed = signal == Some(libc::SIGKILL) && cg.oom_kills() > 0;
    let exit = Exit {
        code,
        signal,
        oom_killed,
        finished_at_ns: jiff::Timestamp::now().as_nanosecond(),
    };
    if let Err(err) = root.save_exit(&args.id, &exit) {
        eprintln!("berth-runtime monitor: record exit: {err}");
        return 1;
    }
    0
}

fn drain(fd: &OwnedFd, stream: Stream, log: &mut Option<&mut LogWriter>) -> bool {
    let mut buf = [0u8; 32 * 1024];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                if let Some(l) = log.as_deref_mut() {
                    let _ = l.write(stream, &buf[..n]);
                }
            }
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Copies output until the container's first process has exited and its pipes are
/// drained (or a short grace passed: a process outside its PID namespace may hold them).
fn copy_until_exit(
    pid: i32,
    out_r: &OwnedFd,
    err_r: &OwnedFd,
    mut log: Option<&mut LogWriter>,
) -> WaitStatus {
    let mut open = [true, true];
    let mut exited: Option<(WaitStatus, Instant)> = None;
    loop {
        let mut fds = Vec::new();
        if open[0] {
            fds.push(PollFd::new(out_r.as_fd(), PollFlags::POLLIN));
        }
        if open[1] {
            fds.push(PollFd::new(err_r.as_fd(), PollFlags::POLLIN));
        }
        if !fds.is_empty() {
            let _ = poll(&mut fds, PollTimeout::from(100u16));
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        if open[0] {
            open[0] = drain(out_r, Stream::Stdout, &mut log);
        }
        if open[1] {
            open[1] = drain(err_r, Stream::Stderr, &mut log);
        }
        // Reap everything re-parented to us; remember the container's own status.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid() == Some(Pid::from_raw(pid)) && exited.is_none() {
                        exited = Some((status, Instant::now()));
                    }
                }
            }
        }
        if let Some((status, at)) = exited
            && ((!open[0] && !open[1]) || at.elapsed() > Duration::from_millis(500))
        {
            return status;
        }
    }
}

/// Spawn arguments for `berth-runtime monitor` (used by the library).
pub fn command_args(args: &MonitorArgs) -> Vec<String> {
    let mut v = vec![
        "--root".to_string(),
        args.root.display().to_string(),
        "monitor".to_string(),
        "--bundle".to_string(),
        args.bundle.display().to_string(),
        "--log-path".to_string(),
        args.log_path.display().to_string(),
        "--log-max-size".to_string(),
        args.rotation.max_size.to_string(),
        "--log-max-files".to_string(),
        args.rotation.max_files.to_string(),
    ];
    for m in &args.host_mounts {
        v.push("--host-mount".to_string());
        v.push(m.display().to_string());
    }
    if let Some(f) = &args.stdin_fifo {
        v.push("--stdin-fifo".to_string());
        v.push(f.display().to_string());
    }
    v.push(args.id.clone());
    v
}
