//! `cargo xtask build`: release binaries of every crate plus the eBPF object.

use std::process::ExitCode;

use anyhow::Result;

use crate::{
    commands::build_ebpf,
    util::{self, cmd, run_checked, step},
};

/// `cargo xtask build`.
pub fn run() -> Result<ExitCode> {
    build()?;
    Ok(ExitCode::SUCCESS)
}

/// Builds everything `cargo xtask up` and the benches run.
pub fn build() -> Result<()> {
    build_ebpf::build()?;
    step("building release binaries");
    run_checked(&mut cmd(
        util::cargo(),
        ["build", "--release", "--workspace", "--exclude", "xtask"],
    ))?;
    Ok(())
}
