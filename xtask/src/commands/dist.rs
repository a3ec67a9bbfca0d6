//! `cargo xtask dist`: a release tarball a node is set up from without Rust or a build
//! — `target/dist/berth-<version>-linux-<arch>.tar.gz` holding the stripped binaries,
//! the eBPF object, the pause image, systemd units with the flags `cargo xtask up` uses
//! ([`units`]), `install.sh`/`uninstall.sh` and a [`manifest`] — and beside it
//! `berth-<version>-linux-<arch>-debug.tar.gz` with the debug info split off each
//! binary (`objcopy --only-keep-debug`, `strip`, `objcopy --add-gnu-debuglink`).
//!
//! The binaries are built in the `release-lto` profile ([`PROFILE`]: `release` with one
//! codegen unit and whole-program LTO, the build the benches of berth-server measure);
//! or, with `--bin-dir DIR`, the ones in DIR as they are (a CI job's `target/debug`),
//! with nothing built. Entry point: [`run`].

mod manifest;
mod units;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::Digest as _;

use crate::{
    commands::{build_ebpf, images},
    util::{self, cmd, run_checked, step},
};

/// The binaries of `bin/`, and what each is.
pub const BINARIES: &[(&str, &str)] = &[
    ("berth-server", "the control plane"),
    ("berth-agent", "the node agent"),
    (
        "berth-runtime",
        "the agent's container runtime (found beside berth-agent)",
    ),
    ("berth-csi", "the CSI driver"),
    ("berth-cni", "the CNI plugin (installed into /opt/cni/bin)"),
];

/// The eBPF object's name in the tarball (`lib/berth/`).
pub const EBPF_OBJECT: &str = "berth-ebpf-programs";

/// k3s' one binary (v1.3x, amd64), the footprint berth is compared with.
const K3S_BINARY_MIB: f64 = 70.0;

const INSTALL_SH: &str = include_str!("dist/install.sh");
const UNINSTALL_SH: &str = include_str!("dist/uninstall.sh");

/// `cargo xtask dist` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where the tarballs go.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Build for this Rust target instead of the host (`x86_64-unknown-linux-musl`:
    /// static binaries; needs the target installed and Debian's musl-tools). With
    /// --bin-dir it only names what the binaries there were built for.
    #[arg(long, value_name = "TRIPLE")]
    pub target: Option<String>,
    /// Package the binaries, eBPF object and pause image already built, building
    /// nothing.
    #[arg(long)]
    pub no_build: bool,
    /// Take the five binaries from DIR (`target/debug`, a CI job's build) instead of
    /// the release-lto build; builds nothing, as --no-build.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Gzip both tarballs at the fastest level rather than the smallest: for a tarball
    /// unpacked once and thrown away (tests, CI). With debug binaries it takes a third
    /// of the time, at 1.4 times the size.
    #[arg(long)]
    pub fast: bool,
}

/// `linux-amd64`, `linux-arm64`, … as Kubernetes' and k3s' releases name platforms.
pub fn platform(target: &str) -> String {
    let arch = target.split('-').next().unwrap_or(target);
    let arch = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "riscv64gc" => "riscv64",
        other => other,
    };
    format!("linux-{arch}")
}

/// The tarball's name without `.tar.gz` (also its top directory).
pub fn release_name(version: &str, target: &str) -> String {
    format!("berth-{version}-{}", platform(target))
}

fn host_target() -> String {
    util::output(&mut cmd("rustc", ["-vV"]))
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("host: "))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
}

/// What the tarball packages, each file known to exist before anything is staged.
struct Inputs {
    /// `BINARIES`, in its order.
    binaries: Vec<PathBuf>,
    ebpf_object: PathBuf,
    /// The pause image's OCI layout directory.
    pause: PathBuf,
}

impl Inputs {
    /// The binaries in `bin_dir`, the eBPF object and the pause image; an error naming
    /// every file that is missing, `build_hint` saying how to make the binaries.
    fn find(bin_dir: &Path, build_hint: &str) -> Result<Self> {
        let binaries: Vec<PathBuf> = BINARIES.iter().map(|(b, _)| bin_dir.join(b)).collect();
        let pause = images::layout_dir("pause");
        let absent: Vec<String> = binaries
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        let mut missing = Vec::new();
        if !absent.is_empty() {
            missing.push(format!("{} ({build_hint})", absent.join(", ")));
        }
        for (file, hint) in [
            (util::ebpf_object(), "run `cargo xtask build-ebpf`"),
            (pause.join("index.json"), "run `cargo xtask images`"),
        ] {
            if !file.is_file() {
                missing.push(format!("{} ({hint})", file.display()));
            }
        }
        if !missing.is_empty() {
            bail!("missing, nothing packaged:\n  {}", missing.join("\n  "));
        }
        Ok(Self {
            binaries,
            ebpf_object: util::ebpf_object(),
            pause,
        })
    }
}

/// The Cargo profile of the shipped binaries: `release` with one codegen unit and
/// whole-program LTO (Cargo.toml).
pub const PROFILE: &str = "release-lto";

/// Builds the shipped binaries for `target` in the [`PROFILE`] profile (into
/// `target/release-lto` for the host, `target/<triple>/release-lto` otherwise), the eBPF object and
/// the pause image; returns the binaries' directory.
fn build_release(target: &str, host: &str) -> Result<PathBuf> {
    build_ebpf::build()?;
    for (bin, _) in BINARIES {
        let package = if *bin == "berth-server" {
            "berth-control-plane"
        } else {
            bin
        };
        build_binary(package, bin, (target != host).then_some(target))?;
    }
    images::pause()?;
    Ok(release_dir(target, host))
}

/// Builds `bin` of `package` in [`PROFILE`] for `target` (the host's when `None`), one
/// package at a time so that its dependencies' features are its own: the same binary
/// whoever builds it, dist or a bench of berth-server. Returns its path.
pub fn build_binary(package: &str, bin: &str, target: Option<&str>) -> Result<PathBuf> {
    step(format!("building {bin} ({PROFILE} profile)"));
    let mut cargo = cmd(
        util::cargo(),
        ["build", "--profile", PROFILE, "-p", package, "--bin", bin],
    );
    let mut dir = util::target_dir();
    if let Some(target) = target {
        cargo.args(["--target", target]);
        dir = dir.join(target);
    }
    run_checked(&mut cargo)?;
    Ok(dir.join(PROFILE).join(bin))
}

fn release_dir(target: &str, host: &str) -> PathBuf {
    if target == host {
        util::target_dir().join(PROFILE)
    } else {
        util::target_dir().join(target).join(PROFILE)
    }
}

/// `cargo xtask dist`.
pub fn run(args: &Args) -> Result<ExitCode> {
    for tool in ["objcopy", "strip", "ldd"] {
        if util::output(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_none() {
            bail!("{tool} is missing (Debian: binutils / libc-bin)");
        }
    }
    let host = host_target();
    let target = args.target.clone().unwrap_or_else(|| host.clone());
    // --bin-dir and --no-build package what is there; otherwise it is built first.
    let (inputs, origin) = match &args.bin_dir {
        Some(dir) => (
            Inputs::find(
                dir,
                "--bin-dir needs all five binaries: `cargo build --bins` makes them in target/debug",
            )?,
            manifest::Origin::Dir(dir),
        ),
        None => {
            let dir = if args.no_build {
                release_dir(&target, &host)
            } else {
                build_release(&target, &host)?
            };
            (
                Inputs::find(&dir, "run `cargo xtask dist` once without --no-build")?,
                manifest::Origin::Release,
            )
        }
    };
    let version = env!("CARGO_PKG_VERSION");
    let name = release_name(version, &target);
    let out = args
        .out_dir
        .clone()
        .unwrap_or_else(|| util::target_dir().join("dist"));
    let stage = out.join(&name);
    let debug_name = format!("{name}-debug");
    let debug_stage = out.join(&debug_name);
    for dir in [&stage, &debug_stage] {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("removing {}: {e}", dir.display()),
        }
    }
    for dir in [
        stage.join("bin"),
        stage.join("systemd"),
        debug_stage.clone(),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    step("splitting debug info off the binaries");
    let bar = bar(BINARIES.len() as u64, "{msg:28} [{bar:30}] {pos}/{len}");
    let mut binaries = Vec::new();
    for built in &inputs.binaries {
        bar.set_message(file_name(built));
        binaries.push(split(built, &stage.join("bin"), &debug_stage)?);
        bar.inc(1);
    }
    bar.finish_and_clear();

    // The eBPF object keeps its BTF and debug sections: the loader reads them.
    copy(
        &inputs.ebpf_object,
        &stage.join("lib/berth").join(EBPF_OBJECT),
    )?;
    copy(&inputs.pause, &stage.join("lib/berth/images/pause"))?;

    let installed = units::Installed::default();
    for unit in units::units(&installed)? {
        write(
            &stage.join("systemd").join(unit.name),
            &units::render(&unit),
        )?;
    }
    write_executable(&stage.join("install.sh"), INSTALL_SH)?;
    write_executable(&stage.join("uninstall.sh"), UNINSTALL_SH)?;
    write(
        &stage.join("README"),
        &format!(
            "berth {version} ({}): a Kubernetes-compatible cluster.\n\n\
             Set up a node:     sudo ./install.sh --server https://SERVER:6443 --token ID.SECRET --ca-file ca.crt\n\
             The first server:  sudo ./install.sh --control-plane\n\
             Remove:            sudo ./uninstall.sh [--purge]\n\n\
             ./install.sh --help lists every flag; MANIFEST says what is here.\n",
            platform(&target)
        ),
    )?;
    let source = source_revision();
    let debug_tarball = format!("{debug_name}.tar.gz");
    write(
        &stage.join("MANIFEST"),
        &manifest::render(&manifest::Build {
            version,
            platform: &platform(&target),
            target: &target,
            origin,
            source: &source,
            binaries: &binaries,
            debug_tarball: &debug_tarball,
        }),
    )?;
    let mut sums = Vec::new();
    for file in files(&stage)? {
        let rel = file
            .strip_prefix(&stage)
            .context("a staged file outside the stage")?
            .display()
            .to_string();
        if rel != "SHA256SUMS" {
            sums.push((rel, sha256_file(&file)?));
        }
    }
    write(&stage.join("SHA256SUMS"), &manifest::sha256sums(&sums))?;

    step("writing the tarballs");
    // The debug info is several times the binaries' size: the default level, at a
    // third of the time of the best.
    let (level, debug_level) = if args.fast {
        (flate2::Compression::fast(), flate2::Compression::fast())
    } else {
        (flate2::Compression::best(), flate2::Compression::default())
    };
    let tarball = out.join(format!("{name}.tar.gz"));
    tar_gz(&stage, &name, &tarball, level)?;
    let debug_tar = out.join(&debug_tarball);
    tar_gz(&debug_stage, &debug_name, &debug_tar, debug_level)?;

    report(&binaries, &tarball, &debug_tar);
    println!("{}", tarball.display());
    Ok(ExitCode::SUCCESS)
}

fn bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A file's size; 0 when it cannot be read (only ever reported, never relied on).
fn size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Copies `built` into `bin_dir` stripped, with its debug info in `debug_dir`.
fn split(built: &Path, bin_dir: &Path, debug_dir: &Path) -> Result<manifest::Binary> {
    let name = file_name(built);
    let shipped = bin_dir.join(&name);
    let debug = debug_dir.join(format!("{name}.debug"));
    copy(built, &shipped)?;
    quiet(
        cmd("objcopy", ["--only-keep-debug"])
            .arg(&shipped)
            .arg(&debug),
    )?;
    quiet(cmd("strip", ["--strip-all"]).arg(&shipped))?;
    // The link names the file only; it is looked up beside the binary, in its .debug/
    // and under /usr/lib/debug/<dir>/.
    quiet(
        cmd(
            "objcopy",
            [format!("--add-gnu-debuglink={}", debug.display())],
        )
        .arg(&shipped)
        .current_dir(debug_dir),
    )?;
    let libraries = util::output(&mut cmd("ldd", [&shipped]))
        .map(|o| manifest::parse_ldd(&o))
        .unwrap_or_default();
    let bytes = fs::read(&shipped).with_context(|| format!("reading {}", shipped.display()))?;
    Ok(manifest::Binary {
        unstripped: size(built),
        stripped: size(&shipped),
        debug: size(&debug),
        glibc: if libraries.is_empty() {
            None
        } else {
            manifest::glibc_floor(&bytes)
        },
        libraries,
        name,
    })
}

/// Runs `c`, showing its output only when it fails.
fn quiet(c: &mut Command) -> Result<()> {
    let out = c
        .output()
        .with_context(|| format!("running {:?}", c.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed: {}",
            c.get_program(),
            c.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Copies the file `from` to `to`, or the directory `from` with everything below it,
/// making `to`'s parent directories.
fn copy(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        for file in files(from)? {
            let rel = file.strip_prefix(from).context("a file outside the tree")?;
            copy(&file, &to.join(rel))?;
        }
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Every file under `dir`, sorted.
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let mut hash = sha2::Sha256::new();
    let mut file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `dir`'s files as `<top>/…` in a gzip'd tar at `to`, deterministically (sorted, no
/// owners or times), with a progress bar over the bytes.
fn tar_gz(dir: &Path, top: &str, to: &Path, level: flate2::Compression) -> Result<()> {
    let files = files(dir)?;
    let total: u64 = files.iter().map(|f| size(f)).sum();
    let bar = bar(total, "{msg:28} [{bar:30}] {bytes}/{total_bytes} ({eta})");
    bar.set_message(file_name(to));
    let partial = to.with_extension("gz.part");
    let file =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let gz = flate2::write::GzEncoder::new(file, level);
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for file in &files {
        let rel = file.strip_prefix(dir).context("a file outside the tree")?;
        tar.append_path_with_name(file, Path::new(top).join(rel))
            .with_context(|| format!("adding {}", file.display()))?;
        bar.inc(size(file));
    }
    let mut gz = tar.into_inner().context("finishing the tar")?;
    gz.flush()?;
    gz.finish().context("finishing the gzip stream")?;
    fs::rename(&partial, to).with_context(|| format!("renaming to {}", to.display()))?;
    bar.finish_and_clear();
    Ok(())
}

/// The commit the tarball is built from, `+changes` when the tree differs from it.
fn source_revision() -> String {
    let root = util::root();
    let Some(rev) =
        util::output(cmd("git", ["rev-parse", "--short=12", "HEAD"]).current_dir(&root))
    else {
        return "unknown".into();
    };
    let dirty = util::output(cmd("git", ["status", "--porcelain"]).current_dir(&root))
        .is_some_and(|s| !s.trim().is_empty());
    format!("{}{}", rev.trim(), if dirty { "+changes" } else { "" })
}

/// The sizes, next to k3s' one binary.
fn report(binaries: &[manifest::Binary], tarball: &Path, debug: &Path) {
    step("sizes");
    println!(
        "  {:<14} {:>12} {:>12} {:>12}  linking",
        "binary", "stripped", "unstripped", "debug file"
    );
    for b in binaries {
        println!(
            "  {:<14} {:>12} {:>12} {:>12}  {}",
            b.name,
            manifest::mib(b.stripped),
            manifest::mib(b.unstripped),
            manifest::mib(b.debug),
            b.linking()
        );
    }
    let total: u64 = binaries.iter().map(|b| b.stripped).sum();
    println!("  {:<14} {:>12}", "bin/ total", manifest::mib(total));
    for tar in [tarball, debug] {
        println!("  {:<40} {:>12}", tar.display(), manifest::mib(size(tar)));
    }
    println!(
        "  k3s ships one binary of ~{K3S_BINARY_MIB:.0} MiB; berth's binaries are {} together ({:.2}×), {} as this tarball",
        manifest::mib(total),
        manifest::mebibytes(total) / K3S_BINARY_MIB,
        manifest::mib(size(tarball))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarballs_are_named_as_kubernetes_releases_are() {
        assert_eq!(
            release_name("0.1.0", "x86_64-unknown-linux-gnu"),
            "berth-0.1.0-linux-amd64"
        );
        assert_eq!(
            release_name("0.1.0", "x86_64-unknown-linux-musl"),
            "berth-0.1.0-linux-amd64"
        );
        assert_eq!(
            release_name("1.2.3", "aarch64-unknown-linux-gnu"),
            "berth-1.2.3-linux-arm64"
        );
    }

    #[test]
    fn the_scripts_are_posix_sh_and_know_every_binary() {
        for script in [INSTALL_SH, UNINSTALL_SH] {
            assert!(script.starts_with("#!/bin/sh\n"));
            for (bin, _) in BINARIES {
                assert!(script.contains(bin), "{bin} missing from a script");
            }
        }
        for unit in [
            "berth-server.service",
            "berth-agent.service",
            "berth-csi.service",
        ] {
            assert!(INSTALL_SH.contains(unit), "{unit}");
            assert!(UNINSTALL_SH.contains(unit), "{unit}");
        }
    }
}
