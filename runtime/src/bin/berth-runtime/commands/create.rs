//! `berth-runtime create`.

use std::path::PathBuf;

use berth_runtime::Root;
use berth_runtime::container::{self, CreateOptions, Gate, Stdio};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
    /// The bundle directory holding config.json (default: current directory).
    #[arg(long, short)]
    pub bundle: Option<PathBuf>,
    /// Write the container's PID to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to receive the terminal master (terminal: true).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted for compatibility (berth-runtime never changes the process's cgroup).
    #[arg(long, hide = true)]
    pub no_pivot: bool,
}

pub fn run(root: &Root, args: &Args) -> anyhow::Result<()> {
    let bundle = super::bundle_dir(&args.bundle)?;
    let spec = container::create::load_spec(&bundle)?;
    if spec.process().as_ref().and_then(|p| p.terminal()) == Some(true) {
        anyhow::bail!(
            "process.terminal is true: berth-runtime create does not hand out a console socket yet; \
             set terminal to false"
        );
    }
    let created = container::create(CreateOptions {
        root,
        id: &args.id,
        bundle: &bundle,
        spec: &spec,
        gate: Gate::Fifo,
        stdio: Stdio::Inherit,
        host_mounts: Vec::new(),
        monitored: false,
    })?;
    if let Some(path) = &args.pid_file {
        berth_runtime::state::write_replace(path, created.state.pid.to_string().as_bytes())?;
    }
    Ok(())
}
