//! `berth-runtime monitor` (internal): the per-container monitor the library starts.

use std::path::PathBuf;

use berth_runtime::logs::Rotation;
use berth_runtime::monitor::{self, MonitorArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
    #[arg(long)]
    pub bundle: PathBuf,
    #[arg(long)]
    pub log_path: PathBuf,
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub log_max_size: u64,
    #[arg(long, default_value_t = 5)]
    pub log_max_files: usize,
    #[arg(long)]
    pub host_mount: Vec<PathBuf>,
    /// Give the container a stdin FIFO at this path.
    #[arg(long)]
    pub stdin_fifo: Option<PathBuf>,
}

pub fn run(root: &std::path::Path, args: &Args) -> i32 {
    monitor::run(&MonitorArgs {
        root: root.to_path_buf(),
        id: args.id.clone(),
        bundle: args.bundle.clone(),
        log_path: args.log_path.clone(),
        rotation: Rotation {
            max_size: args.log_max_size,
            max_files: args.log_max_files,
        },
        host_mounts: args.host_mount.clone(),
        stdin_fifo: args.stdin_fifo.clone(),
    })
}
