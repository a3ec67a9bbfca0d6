//! One file per OCI verb.

mod create;
mod exec;
mod image;
mod list;
mod monitor;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use berth_runtime::{Root, container};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container from a bundle; it waits for `start`.
    Create(create::Args),
    /// Start a created container.
    Start { id: String },
    /// Print a container's OCI state as JSON.
    State { id: String },
    /// Send a signal (default TERM) to a container.
    Kill {
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
        /// Signal every process in the container.
        #[arg(long, short)]
        all: bool,
    },
    /// Delete a container.
    Delete {
        id: String,
        /// Kill it first if it is running.
        #[arg(long, short)]
        force: bool,
    },
    /// Create, start, wait for and delete a container.
    Run(run::Args),
    /// Run a new process in a running container.
    Exec(exec::Args),
    /// List containers.
    List(list::Args),
    /// Manage images: import, pull, ls, rm, gc.
    Image(image::Args),
    /// The per-container monitor the library starts (internal).
    #[command(hide = true)]
    Monitor(monitor::Args),
}

pub fn run(root: &Root, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Create(args) => create::run(root, &args).map(|()| ExitCode::SUCCESS),
        Command::Start { id } => {
            container::start(root, &id)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::State { id } => {
            let state = root.load(&id)?;
            let doc = container::oci_state(root, &state);
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Kill { id, signal, all } => {
            let sig = container::parse_signal(&signal)?;
            container::kill(root, &id, sig, all)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete { id, force } => {
            container::delete(root, &id, force)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run::run(root, &args),
        Command::Exec(args) => exec::run(root, &args),
        Command::List(args) => list::run(root, &args).map(|()| ExitCode::SUCCESS),
        Command::Image(args) => image::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Monitor(args) => Ok(ExitCode::from(monitor::run(root.dir(), &args) as u8)),
    }
}

/// `--bundle` defaults to the current directory, as with runc.
fn bundle_dir(bundle: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir()?,
    };
    Ok(std::path::absolute(dir)?)
}
