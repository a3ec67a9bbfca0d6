//! `cargo xtask`: berth's single task entry point. One file per subcommand under
//! `commands/`; shared helpers (paths, running commands) in `util.rs`.

mod bench;
mod commands;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "berth's build, test and bench tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what berth needs (apt packages, bpf-linker, kubectl + Python client); root on Debian.
    Setup,
    /// Build the eBPF programs (ebpf/programs) with Debian's rustc-web and bpf-linker.
    BuildEbpf,
    /// Build release binaries and the eBPF object.
    Build,
    /// Build a release tarball (stripped binaries, eBPF object, systemd units,
    /// install.sh) and its debug-info tarball into target/dist.
    Dist(commands::dist::Args),
    /// Build the test images (busybox, testserver, pause) into target/images, offline.
    Images,
    /// Start a one-node cluster on this host (Ctrl-C stops it).
    Up(commands::up::Args),
    /// Remove everything `up` left on this host: pods, network, cgroups, state (give
    /// the flags `up` was given).
    Down(commands::up::Args),
    /// Run setup if needed, then fmt, clippy, unit, integration and e2e tests.
    Test(commands::test::Args),
    /// Run a benchmark (with its baseline) and write bench/results/<name>.{json,md}.
    Bench(commands::bench::Args),
    /// Refresh control-plane/proto (Kubernetes' generated.proto files and the Go field facts) from k8s.io git checkouts at a tag.
    VendorProto(commands::vendor_proto::Args),
    /// The client process of `bench lb` (internal).
    #[command(hide = true)]
    LbClient(commands::lb_client::Args),
    /// The load process of `bench apiserver` (internal).
    #[command(hide = true)]
    ApiserverLoad(bench::apiserver::Target),
    /// The load process of `bench scheduler` (internal).
    #[command(hide = true)]
    SchedulerLoad(bench::scheduler::LoadArgs),
    /// The load process of `bench workloads` (internal).
    #[command(hide = true)]
    WorkloadsLoad(bench::workloads::LoadArgs),
    /// The timer process of `bench runtime` (internal).
    #[command(hide = true)]
    RuntimeTimer(bench::runtime::TimerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => commands::setup::run(),
        Command::BuildEbpf => commands::build_ebpf::run(),
        Command::Build => commands::build::run(),
        Command::Dist(args) => commands::dist::run(&args),
        Command::Images => commands::images::run(),
        Command::Up(args) => commands::up::run(&args),
        Command::Down(args) => commands::up::down(&args),
        Command::Test(args) => commands::test::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::VendorProto(args) => commands::vendor_proto::run(&args),
        Command::LbClient(args) => commands::lb_client::run(&args),
        Command::ApiserverLoad(target) => bench::apiserver::load(&target),
        Command::RuntimeTimer(args) => bench::runtime::timer(&args),
        Command::SchedulerLoad(args) => bench::scheduler::load(&args),
        Command::WorkloadsLoad(args) => bench::workloads::load(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
