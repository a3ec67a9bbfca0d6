//! `cargo xtask lb-client --rounds R TARGET...` (hidden): the client process of
//! `bench lb` and `bench netpol`. A TARGET is `NETNS_FILE,CGROUP_DIR,ADDR[,SRC]` (SRC:
//! the local address to connect from, a pod's). Each round makes one timed
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
    source: Option<std::net::Ipv4Addr>,
}

fn parse(spec: &str) -> Result<Target> {
    let mut parts = spec.split(',');
    let (Some(ns), Some(cg), Some(addr), source, None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        bail!("target {spec:?} is not NETNS_FILE,CGROUP_DIR,ADDR[,SRC]");
    };
    Ok(Target {
        netns: File::open(ns).with_context(|| format!("open netns {ns}"))?,
        procs: PathBuf::from(cg).join("cgroup.procs"),
        addr: addr.parse().with_context(|| format!("address {addr:?}"))?,
        source: source
            .map(|s| s.parse().with_context(|| format!("source {s:?}")))
            .transpose()?,
    })
}

/// A TCP connect from `source` (bound first) to `addr`, then close.
fn connect_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let SocketAddr::V4(v4) = addr else {
        bail!("{addr} is not IPv4");
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // connect() gives up after this (SO_SNDTIMEO), as connect_timeout does.
    nix::sys::socket::setsockopt(
        &fd,
        nix::sys::socket::sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(2, 0),
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(std::net::SocketAddrV4::new(source, 0)),
    )?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))?;
    Ok(())
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
            let connected = match t.source {
                Some(source) => connect_from(source, t.addr).is_ok(),
                None => TcpStream::connect_timeout(&t.addr, Duration::from_secs(2)).is_ok(),
            };
            if connected {
                if round >= WARMUP {
                    samples[i].push(started.elapsed().as_secs_f64() * 1e6);
                }
            } else {
                errors[i] += 1;
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({ "samples_us": samples, "errors": errors })
    );
    Ok(ExitCode::SUCCESS)
}
