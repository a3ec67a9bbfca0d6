//! `berth-server`: the control plane binary (today: the apiserver).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "berth-server",
    version,
    about = "berth's Kubernetes-compatible control plane"
)]
struct Args {
    /// Where the store, the PKI and the admin kubeconfig live.
    #[arg(long, default_value = "/var/lib/berth/server", env = "BERTH_DATA_DIR")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Address clients use to reach this server (kubeconfig, `kubernetes` endpoints).
    #[arg(long, default_value = "127.0.0.1")]
    advertise_address: IpAddr,
    /// Static bearer tokens (`token,user,uid,"group1,group2"` per line).
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Where to write the admin kubeconfig (default: <data-dir>/admin.kubeconfig).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Store reads and writes are short; a small blocking pool keeps thread (and malloc
    // arena) count — and so memory — down.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    runtime.block_on(berth_control_plane::apiserver::run(
        berth_control_plane::apiserver::Config {
            data_dir: args.data_dir,
            bind: SocketAddr::new(args.bind_address, args.secure_port),
            advertise: args.advertise_address,
            token_file: args.token_auth_file,
            kubeconfig: args.kubeconfig,
        },
    ))
}
