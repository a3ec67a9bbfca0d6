//! `cargo xtask build-ebpf`: builds `ebpf/programs` into a BPF ELF object with Debian's
//! `rustc-web` (whose library source `rust-web-src` matches it exactly), `-Z
//! build-std=core` unlocked by `RUSTC_BOOTSTRAP=1`, and `bpf-linker` from PATH — the
//! recipe in shared/docs/ebpf-toolchain.md (what aya-build does, minus rustup nightly).

use std::{path::Path, process::ExitCode};

use anyhow::{Result, bail};

use crate::util::{self, cmd, run_checked, step};

/// `cargo xtask build-ebpf`.
pub fn run() -> Result<ExitCode> {
    build()?;
    Ok(ExitCode::SUCCESS)
}

/// Builds the eBPF object and returns nothing; the object is at [`util::ebpf_object`].
pub fn build() -> Result<()> {
    if !Path::new("/usr/bin/rustc").exists() {
        bail!("Debian's rustc-web (/usr/bin/rustc) is missing: run `cargo xtask setup` as root");
    }
    if !util::cargo_bin_dir().join("bpf-linker").exists() {
        bail!("bpf-linker is missing: run `cargo xtask setup` as root");
    }
    step("building eBPF programs (ebpf/programs)");
    let flags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let mut build = cmd(
        util::cargo(),
        [
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ],
    );
    build
        .arg(util::target_dir().join("ebpf"))
        .current_dir(util::root().join("ebpf/programs"))
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env("PATH", util::path_with_cargo_bin())
        // Flags meant for the host build must not leak into the BPF one.
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTUP_TOOLCHAIN");
    run_checked(&mut build)?;
    let object = util::ebpf_object();
    if !object.exists() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    step(format!("eBPF object: {}", object.display()));
    Ok(())
}
