//! `berth-runtime exec`: a new process in a running container, with or without a
//! terminal; waits for it and exits with its status unless detached.

use std::os::fd::{AsFd, AsRawFd};
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
        Some(nix::pty::openpty(None, None)?)
    } else {
        None
    };
    let opts = ExecOptions {
        process,
        stdio: None,
        tty: pty.as_ref().map(|p| p.slave.as_raw_fd()),
    };
    let pid = container::exec(root, &args.id, &opts)?;
    if let Some(path) = &args.pid_file {
        berth_runtime::state::write_atomic(path, pid.to_string().as_bytes())?;
    }
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let pid = Pid::from_raw(pid);
    if let Some(pty) = pty {
        drop(pty.slave);
        relay(&pty.master)?;
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

/// Copies our stdin to the terminal and the terminal to our stdout until the process
/// exits (the master reads EIO once the last slave holder is gone).
fn relay(master: &std::os::fd::OwnedFd) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut stdin_open = true;
    let mut buf = [0u8; 8192];
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let master_ready = fds[0].revents().unwrap_or(PollFlags::empty());
        let stdin_ready = fds
            .get(1)
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
