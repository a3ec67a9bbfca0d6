//! `berth-runtime exec`: a new process in a running container, with or without a
//! terminal; waits for it and exits with its status unless detached.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_runtime::Root;
use berth_runtime::container::{self, ExecOptions};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use oci_spec::runtime::Process;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
    /// The command and its arguments (unless --process is given).
    #[arg(trailing_var_arg = true)]
    pub command: Vec<String>,
    /// A process.json (the OCI `process` object) to run.
    #[arg(long, short)]
    pub process: Option<PathBuf>,
    /// Allocate a terminal.
    #[arg(long, short)]
    pub tty: bool,
    /// Working directory inside the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables (KEY=VALUE).
    #[arg(long, short)]
    pub env: Vec<String>,
    /// Run as uid[:gid].
    #[arg(long, short)]
    pub user: Option<String>,
    /// Do not wait for the process.
    #[arg(long, short)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// With --tty: a FIFO of `<columns> <rows>` lines; each resizes the terminal
    /// (how a caller relaying `kubectl exec -t` passes on window changes).
    #[arg(long, requires = "tty")]
    pub resize_fifo: Option<PathBuf>,
}

fn process_for(root: &Root, args: &Args) -> anyhow::Result<Process> {
    if let Some(path) = &args.process {
        let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return serde_json::from_slice(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid process: {e}", path.display()));
    }
    if args.command.is_empty() {
        anyhow::bail!("exec needs a command (or --process)");
    }
    let state = root.load(&args.id)?;
    let spec = container::create::load_spec(&state.bundle)?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.clone());
    }
    let mut env = process.env().clone().unwrap_or_default();
    env.extend(args.env.iter().cloned());
    process.set_env(Some(env));
    if let Some(user) = &args.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        let mut u = process.user().clone();
        u.set_uid(
            uid.parse()
                .map_err(|_| anyhow::anyhow!("bad uid in --user {user:?}"))?,
        );
        u.set_gid(
            gid.parse()
                .map_err(|_| anyhow::anyhow!("bad gid in --user {user:?}"))?,
        );
        process.set_user(u);
    }
    Ok(process)
}

pub fn run(root: &Root, args: &Args) -> anyhow::Result<ExitCode> {
    let process = process_for(root, args)?;
    let pty = if args.tty {
        let pty = nix::pty::openpty(None, None)?;
        // Neither end may leak into the process (it gets the slave as 0, 1 and 2).
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )?;
        }
        Some(pty)
    } else {
        None
    };
    // A size the caller already knows is set before the process starts.
    let resize = match (&args.resize_fifo, &pty) {
        (Some(path), Some(pty)) => {
            // Read and write, non-blocking: never an EOF, never a wait.
            let fifo = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            apply_resizes(&pty.master, &fifo, &mut String::new());
            Some(fifo)
        }
        _ => None,
    };
    let opts = ExecOptions {
        process,
        stdio: None,
        tty: pty.as_ref().map(|p| p.slave.as_raw_fd()),
    };
    let pid = container::exec(root, &args.id, &opts)?;
    if let Some(path) = &args.pid_file {
        berth_runtime::state::write_replace(path, pid.to_string().as_bytes())?;
    }
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let pid = Pid::from_raw(pid);
    if let Some(pty) = pty {
        drop(pty.slave);
        relay(&pty.master, resize.as_ref())?;
    }
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitCode::from(code as u8)),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Ok(ExitCode::from((128 + sig as i32) as u8));
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets the terminal's window size.
fn set_size(master: &std::os::fd::OwnedFd, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer on our own pty master.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

/// Applies every complete `<columns> <rows>` line read from `fifo`.
fn apply_resizes(master: &std::os::fd::OwnedFd, fifo: &std::fs::File, pending: &mut String) {
    let mut buf = [0u8; 256];
    while let Ok(n) = nix::unistd::read(fifo, &mut buf) {
        if n == 0 {
            break;
        }
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    while let Some(end) = pending.find('\n') {
        let line: String = pending.drain(..=end).collect();
        let mut it = line.split_whitespace().map(str::parse::<u16>);
        if let (Some(Ok(cols)), Some(Ok(rows))) = (it.next(), it.next()) {
            set_size(master, cols, rows);
        }
    }
}

/// Copies our stdin to the terminal and the terminal to our stdout until the process
/// exits (the master reads EIO once the last slave holder is gone); window sizes come
/// from `resize` when given.
fn relay(master: &std::os::fd::OwnedFd, resize: Option<&std::fs::File>) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut stdin_open = true;
    let mut buf = [0u8; 8192];
    let mut pending = String::new();
    loop {
        if let Some(fifo) = resize {
            apply_resizes(master, fifo, &mut pending);
        }
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if let Some(fifo) = resize {
            fds.push(PollFd::new(fifo.as_fd(), PollFlags::POLLIN));
        }
        let stdin_at = fds.len();
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let master_ready = fds[0].revents().unwrap_or(PollFlags::empty());
        let stdin_ready = fds
            .get(stdin_at)
            .filter(|_| stdin_open)
            .and_then(|f| f.revents())
            .unwrap_or(PollFlags::empty());
        if master_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(master, &mut buf) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(n) => {
                    nix::unistd::write(std::io::stdout(), &buf[..n])?;
                }
            }
        }
        if stdin_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    nix::unistd::write(master, &buf[..n])?;
                }
            }
        }
    }
}
