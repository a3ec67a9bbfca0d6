//! `cargo xtask lb-client --rounds R TARGET...` (hidden): the client process of
//! `bench lb`. A TARGET is `NETNS_FILE,CGROUP_DIR,ADDR`. Each round makes one timed
//! TCP connect()+close() to every target in turn (rotating which goes first), so
//! all configurations see the same moments of a noisy machine. Before each connect,
//! untimed, the client moves itself into the target's cgroup (the socket-LB
//! programs apply by the cgroup a socket is created in) and enters its netns (the
//! socket's namespace is fixed at creation). Prints `{"samples_us": [[...], ...],
//! "errors": [N, ...]}`, one list per target.

use std::{
    fs::{self, File},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

/// `lb-client` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Timed connects per target.
    #[arg(long)]
    pub rounds: usize,
    /// `NETNS_FILE,CGROUP_DIR,ADDR`.
    #[arg(required = true)]
    pub targets: Vec<String>,
}

struct Target {
    netns: File,
    procs: PathBuf,
    addr: SocketAddr,
}

fn parse(spec: &str) -> Result<Target> {
    let mut parts = spec.split(',');
    let (Some(ns), Some(cg), Some(addr), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("target {spec:?} is not NETNS_FILE,CGROUP_DIR,ADDR");
    };
    Ok(Target {
        netns: File::open(ns).with_context(|| format!("open netns {ns}"))?,
        procs: PathBuf::from(cg).join("cgroup.procs"),
        addr: addr.parse().with_context(|| format!("address {addr:?}"))?,
    })
}

const WARMUP: usize = 10;

/// `cargo xtask lb-client`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|t| parse(t))
        .collect::<Result<_>>()?;
    let mut samples = vec![Vec::with_capacity(args.rounds); targets.len()];
    let mut errors = vec![0u64; targets.len()];
    for round in 0..WARMUP + args.rounds {
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let t = &targets[i];
            fs::write(&t.procs, "0").with_context(|| format!("join {}", t.procs.display()))?;
            setns(&t.netns, CloneFlags::CLONE_NEWNET).context("setns")?;
            let started = Instant::now();
            match TcpStream::connect_timeout(&t.addr, Duration::from_secs(2)) {
                Ok(stream) => {
                    drop(stream);
                    if round >= WARMUP {
                        samples[i].push(started.elapsed().as_secs_f64() * 1e6);
                    }
                }
                Err(_) => errors[i] += 1,
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({ "samples_us": samples, "errors": errors })
    );
    Ok(ExitCode::SUCCESS)
}
