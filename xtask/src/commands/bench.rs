//! `cargo xtask bench <name>`: runs one registered bench (see `bench::BENCHES`), prints
//! its table and writes `bench/results/<name>.{json,md}`.

use std::process::ExitCode;

use anyhow::Result;

use crate::{
    bench::{self, BENCHES},
    util::{self, step},
};

/// `cargo xtask bench` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which bench to run.
    pub name: String,
}

/// `cargo xtask bench <name>`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let Some(bench) = bench::find(&args.name) else {
        eprintln!(
            "error: unknown bench '{}'\n\nUsage: cargo xtask bench <NAME>\n\nBenches:",
            args.name
        );
        if BENCHES.is_empty() {
            eprintln!("  (none yet: each arrives with the issue that names it)");
        }
        for b in BENCHES {
            eprintln!("  {:<14} {}", b.name, b.about);
        }
        return Ok(ExitCode::from(2));
    };
    step(format!("bench {}: {}", bench.name, bench.about));
    let report = (bench.run)()?;
    let dir = util::root().join("bench/results");
    // Result files are named with underscores (`pod-startup` → `pod_startup.json`).
    let file = bench.name.replace('-', "_");
    report.write(&dir, &file)?;
    println!("{}", report.markdown(bench.name));
    step(format!(
        "wrote bench/results/{file}.json and bench/results/{file}.md"
    ));
    Ok(ExitCode::SUCCESS)
}
