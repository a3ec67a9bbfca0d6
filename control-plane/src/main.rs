//! `berth-server`: the control plane binary: the apiserver and the scheduler, each of
//! which can run alone (`--apiserver=false` runs the scheduler against the cluster
//! named by `--kubeconfig`, like kube-scheduler).

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
    /// Where to write the admin kubeconfig (default: <data-dir>/admin.kubeconfig); with
    /// `--apiserver=false`, the kubeconfig of the cluster to schedule for.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Serve the API.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    apiserver: bool,
    /// Run the scheduler (kube-scheduler's default profile).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    scheduler: bool,
}

/// Starts the scheduler once the kubeconfig exists and the apiserver answers; restarts
/// it if its watches end.
async fn scheduler(kubeconfig: PathBuf) {
    use berth_control_plane::scheduler::{framework::Profile, run};
    loop {
        match run::client_from_kubeconfig(&kubeconfig).await {
            Ok(client) if client.apiserver_version().await.is_ok() => {
                if let Err(err) = run::run(client, Profile::default()).await {
                    tracing::warn!(%err, "scheduler stopped; restarting");
                }
            }
            Ok(_) => tracing::debug!("scheduler waiting for the apiserver"),
            Err(err) => tracing::debug!(%err, "scheduler waiting for the apiserver"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
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
    let kubeconfig = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| args.data_dir.join("admin.kubeconfig"));
    runtime.block_on(async move {
        if args.scheduler {
            tokio::spawn(scheduler(kubeconfig));
        }
        if !args.apiserver {
            if !args.scheduler {
                anyhow::bail!("nothing to run: --apiserver=false and --scheduler=false");
            }
            return std::future::pending().await;
        }
        berth_control_plane::apiserver::run(berth_control_plane::apiserver::Config {
            data_dir: args.data_dir,
            bind: SocketAddr::new(args.bind_address, args.secure_port),
            advertise: args.advertise_address,
            token_file: args.token_auth_file,
            kubeconfig: args.kubeconfig,
        })
        .await
    })
}
