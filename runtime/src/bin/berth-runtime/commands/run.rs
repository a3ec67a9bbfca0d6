//! `berth-runtime run`: create, start, wait, delete — the full lifecycle in one process,
//! which is the parent of the container and so gets its exit status.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_runtime::Root;
use berth_runtime::container::{self, CreateOptions, Gate, Stdio};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
    #[arg(long, short)]
    pub bundle: Option<PathBuf>,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Start and return without waiting (the container stays until `delete`).
    #[arg(long, short)]
    pub detach: bool,
}

pub fn run(root: &Root, args: &Args) -> anyhow::Result<ExitCode> {
    let bundle = super::bundle_dir(&args.bundle)?;
    let spec = container::create::load_spec(&bundle)?;
    if spec.process().as_ref().and_then(|p| p.terminal()) == Some(true) {
        anyhow::bail!("process.terminal is true: berth-runtime run needs terminal: false");
    }
    if args.detach {
        super::create::run(
            root,
            &super::create::Args {
                id: args.id.clone(),
                bundle: Some(bundle),
                pid_file: args.pid_file.clone(),
                console_socket: None,
                no_pivot: false,
            },
        )?;
        container::start(root, &args.id)?;
        return Ok(ExitCode::SUCCESS);
    }
    berth_runtime::become_subreaper()?;
    let created = container::create(CreateOptions {
        root,
        id: &args.id,
        bundle: &bundle,
        spec: &spec,
        gate: Gate::Pipe,
        stdio: Stdio::Inherit,
        host_mounts: Vec::new(),
        monitored: false,
    })?;
    if let Some(path) = &args.pid_file {
        berth_runtime::state::write_replace(path, created.state.pid.to_string().as_bytes())?;
    }
    let pid = Pid::from_raw(created.state.pid);
    if let Some(gate) = created.gate {
        std::fs::File::from(gate).write_all(b"1")?;
    }
    let code = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    container::delete(root, &args.id, true)?;
    Ok(ExitCode::from(code as u8))
}
