//! berth-csi: parses flags, opens the driver and serves it until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_csi::{Config, Driver};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// A CSI 1.x driver for node-local directory volumes.
#[derive(Debug, Parser)]
#[command(name = "berth-csi", version)]
struct Args {
    /// Where to listen: unix:///path/csi.sock (the flag name csi-driver-host-path uses).
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        default_value = "unix:///var/lib/berth/csi/csi.sock"
    )]
    endpoint: String,
    /// Directory holding volumes, snapshots and the metadata.
    #[arg(long, default_value = "/var/lib/berth/csi/root")]
    root: PathBuf,
    /// This node's id, normally its Kubernetes node name.
    #[arg(long, env = "NODE_ID")]
    node_id: String,
    /// Capacity of a volume created without a capacity_range, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    default_capacity: i64,
    /// Total bytes to hand out to volumes (default: the size of the filesystem under --root).
    #[arg(long)]
    capacity: Option<i64>,
    /// NodeGetInfo's max_volumes_per_node (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_volumes_per_node: i64,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    let socket = berth_csi::socket_path(&args.endpoint)?;
    let driver = Driver::open(Config {
        root: args.root.clone(),
        node_id: args.node_id,
        default_capacity: args.default_capacity,
        capacity: args.capacity,
        max_volumes_per_node: args.max_volumes_per_node,
    })
    .with_context(|| format!("opening the driver on {}", args.root.display()))?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down");
    };
    berth_csi::serve(Arc::new(driver), &socket, shutdown).await?;
    Ok(())
}
