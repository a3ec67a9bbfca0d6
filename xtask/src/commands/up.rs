//! `cargo xtask up`: one-node cluster on this host — setup if needed, build, start
//! `berth-server` and `berth-agent`. Until both binaries exist (their issues), it builds
//! what exists and says what is missing.

use std::process::ExitCode;

use anyhow::Result;

use crate::{
    commands::{build, setup},
    util::{self, step},
};

/// The binaries a cluster needs, with the piece of work that brings each.
const CLUSTER_BINARIES: &[(&str, &str)] = &[
    ("berth-server", "the apiserver (\"Control plane I\")"),
    ("berth-agent", "the node agent (\"Node agent\")"),
];

/// `cargo xtask up`.
pub fn run() -> Result<ExitCode> {
    if !setup::is_complete() {
        if let Err(why) = setup::check_host() {
            eprintln!("xtask up: setup is incomplete and cannot run here: {why}");
            return Ok(ExitCode::FAILURE);
        }
        setup::run()?;
    }
    build::build()?;
    let release = util::target_dir().join("release");
    let missing: Vec<_> = CLUSTER_BINARIES
        .iter()
        .filter(|(bin, _)| !release.join(bin).exists())
        .collect();
    step(format!(
        "built the workspace and the eBPF object ({})",
        util::ebpf_object().display()
    ));
    for (bin, what) in &missing {
        eprintln!("xtask up: {bin} does not exist yet: it comes with {what}");
    }
    eprintln!(
        "xtask up: berth cannot start a cluster yet (starting one lands with the node agent)"
    );
    Ok(ExitCode::FAILURE)
}
