//! `cargo xtask test`: everything CI checks, in order — setup when needed, `cargo fmt
//! --check`, clippy with `-D warnings`, the eBPF build, unit tests, integration tests
//! (privileged ones skip with a reason when not root) and e2e tests — ending with one
//! line `N passed, N failed, N skipped`.
//!
//! Skips are counted, not hidden: libtest's `ignored` plus every test that called
//! `berth_testkit::skip`, which records itself under `BERTH_TEST_SKIP_DIR`. In CI
//! (`CI=true`) nothing may be skipped: every tier must really run, so CI must run as
//! root (it stops at once otherwise) and any skip counts as a failure.

use std::{
    env, fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context, Result};

use crate::{
    commands::{build_ebpf, dist, images, setup},
    util::{self, cmd, step},
};

/// `cargo xtask test` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and clippy (for a quick local loop; CI never does).
    #[arg(long)]
    pub no_lint: bool,
}

/// Results of one libtest run or check.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
    }
}

/// `cargo xtask test`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let ci = is_ci(env::var("CI").ok().as_deref());
    ci_can_run_everything(ci, util::is_root())?;
    let started = std::time::Instant::now();
    let mut total = Counts::default();
    let mut report: Vec<String> = Vec::new();
    let tools_ready = ensure_setup()?;

    if !args.no_lint {
        check("cargo fmt --check", fmt_check(), &mut total, &mut report);
        let clippy = util::run_checked(&mut cmd(
            util::cargo(),
            [
                "clippy",
                "--workspace",
                "--all-targets",
                "--quiet",
                "--",
                "-D",
                "warnings",
            ],
        ));
        check("cargo clippy -D warnings", clippy, &mut total, &mut report);
    }

    if tools_ready {
        check(
            "cargo xtask build-ebpf",
            build_ebpf::build(),
            &mut total,
            &mut report,
        );
    } else {
        total.skipped += 1;
        report.push("cargo xtask build-ebpf: skipped (setup incomplete)".into());
    }

    // The runtime's tests run the images `cargo xtask images` builds (offline).
    check(
        "cargo xtask images",
        images::run().map(drop),
        &mut total,
        &mut report,
    );

    let skip_root = util::target_dir().join("test-skips");
    let _ = fs::remove_dir_all(&skip_root);
    let tiers: [(&str, &[&str]); 3] = [
        (
            "unit",
            &[
                "test",
                "--workspace",
                "--exclude",
                "berth-e2e",
                "--lib",
                "--bins",
                "--no-fail-fast",
            ],
        ),
        (
            "integration",
            &[
                "test",
                "--workspace",
                "--exclude",
                "berth-e2e",
                "--test",
                "*",
                "--no-fail-fast",
            ],
        ),
        (
            "e2e",
            &[
                "test",
                "--package",
                "berth-e2e",
                "--test",
                "*",
                "--no-fail-fast",
            ],
        ),
    ];
    let mut skip_lines = Vec::new();
    let dist_dir = util::target_dir().join("test-dist");
    for (tier, cargo_args) in tiers {
        step(format!("{tier} tests"));
        let skip_dir = skip_root.join(tier);
        let mut test = cmd(util::cargo(), cargo_args);
        if tier == "e2e" {
            // One tarball for every e2e test that installs from it (dist.rs,
            // multi_node.rs), from the debug binaries: no release build.
            match dist_for_tests(&dist_dir) {
                Ok(tarball) => {
                    test.env("BERTH_DIST_TARBALL", tarball);
                }
                Err(e) => check(
                    "cargo xtask dist --bin-dir target/debug",
                    Err(e),
                    &mut total,
                    &mut report,
                ),
            }
        }
        test.env("BERTH_TEST_SKIP_DIR", &skip_dir)
            .env("BERTH_EBPF_OBJECT", util::ebpf_object())
            .env("BERTH_TOOLS_VENV", util::venv_dir());
        let mut counts = run_libtest(&mut test).with_context(|| format!("running {tier} tests"))?;
        let skips = read_skips(&skip_dir);
        let recorded = skips.len() as u64;
        counts.passed = counts.passed.saturating_sub(recorded);
        counts.skipped += recorded;
        skip_lines.extend(skips.into_iter().map(|s| format!("  {tier}: {s}")));
        report.push(format!(
            "{tier} tests: {} passed, {} failed, {} skipped",
            counts.passed, counts.failed, counts.skipped
        ));
        total += counts;
    }
    let _ = fs::remove_dir_all(&dist_dir);

    println!();
    step("summary");
    for line in &report {
        println!("  {line}");
    }
    if !skip_lines.is_empty() {
        println!("  skipped:");
        for line in &skip_lines {
            println!("  {line}");
        }
    }
    if ci && total.skipped > 0 {
        println!("  CI runs every tier as root: the skips above count as failures");
        total.failed += total.skipped;
        total.skipped = 0;
    }
    println!("  took {} s", started.elapsed().as_secs());
    println!(
        "{} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    Ok(if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `cargo xtask dist --bin-dir target/debug --fast` into `dir` (the binaries built
/// first if any is missing); the tarball's path. Only the tarballs are kept: the staged
/// trees (some 400 MiB of unpacked debug info) go at once.
fn dist_for_tests(dir: &Path) -> Result<std::path::PathBuf> {
    util::run_checked(&mut cmd(util::cargo(), ["build", "--bins", "--quiet"]))?;
    let _ = fs::remove_dir_all(dir);
    dist::run(&dist::Args {
        out_dir: Some(dir.to_path_buf()),
        target: None,
        no_build: false,
        bin_dir: Some(util::target_dir().join("debug")),
        fast: true,
    })?;
    let mut tarball = None;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".tar.gz") && !n.ends_with("-debug.tar.gz"))
        {
            tarball = Some(path);
        }
    }
    tarball.with_context(|| format!("no tarball in {}", dir.display()))
}

/// Whether `CI` (its value, if set) asks for a CI run.
fn is_ci(value: Option<&str>) -> bool {
    matches!(value, Some("true" | "1"))
}

/// A CI run must run every privileged test, and a run without root would skip them
/// all and pass: refuse it before building anything.
fn ci_can_run_everything(ci: bool, root: bool) -> Result<()> {
    if ci && !root {
        anyhow::bail!(
            "CI=true but not running as root: the privileged tests (netns, cgroups, \
             eBPF, the cluster e2e) would all skip, so this run could pass without \
             running them. Run CI as root (`sudo -E cargo xtask test`, or a root \
             container), or unset CI for a local run, where skips are reported."
        );
    }
    Ok(())
}

/// Runs setup if something is missing and we may; returns whether the tools are there.
fn ensure_setup() -> Result<bool> {
    if setup::is_complete() {
        return Ok(true);
    }
    match setup::check_host() {
        Ok(()) => {
            step("setup is incomplete: running cargo xtask setup");
            setup::run()?;
            Ok(setup::is_complete())
        }
        Err(why) => {
            println!(
                "note: setup is incomplete and cannot run here ({why}); tests needing its tools skip"
            );
            Ok(false)
        }
    }
}

fn check(name: &str, result: Result<()>, total: &mut Counts, report: &mut Vec<String>) {
    match result {
        Ok(()) => {
            total.passed += 1;
            report.push(format!("{name}: ok"));
        }
        Err(err) => {
            total.failed += 1;
            report.push(format!("{name}: FAILED ({err:#})"));
        }
    }
}

fn fmt_check() -> Result<()> {
    util::run_checked(&mut cmd(util::cargo(), ["fmt", "--all", "--check"]))?;
    let programs = util::root().join("ebpf/programs/Cargo.toml");
    util::run_checked(cmd(util::cargo(), ["fmt", "--check", "--manifest-path"]).arg(programs))
}

/// Runs a `cargo test` invocation, echoing its output, and sums its `test result:`
/// lines. A run that fails without any result line (a build error) counts as one
/// failure so it can never pass silently.
fn run_libtest(test: &mut Command) -> Result<Counts> {
    let mut child = test
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let mut counts = Counts::default();
    let mut saw_result = false;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if let Some(c) = parse_test_result(&line) {
                counts += c;
                saw_result = true;
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() && counts.failed == 0 {
        counts.failed += 1;
    }
    if status.success() && !saw_result {
        println!("(no test binaries in this tier)");
    }
    Ok(counts)
}

/// Parses libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; ...`.
pub fn parse_test_result(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, figures) = rest.split_once(". ")?;
    let mut counts = Counts::default();
    for part in figures.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" => counts.skipped = n,
            _ => {}
        }
    }
    Some(counts)
}

/// The skips recorded by `berth_testkit::skip` (`test\treason` per file).
fn read_skips(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut skips: Vec<String> = entries
        .filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
        .map(|s| s.trim_end().replace('\t', ": "))
        .collect();
    skips.sort();
    skips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summary_lines_are_parsed() {
        let line = "test result: ok. 5 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert_eq!(
            parse_test_result(line),
            Some(Counts {
                passed: 5,
                failed: 0,
                skipped: 2
            })
        );
        let line = "test result: FAILED. 1 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s";
        assert_eq!(
            parse_test_result(line),
            Some(Counts {
                passed: 1,
                failed: 3,
                skipped: 0
            })
        );
        assert_eq!(parse_test_result("running 5 tests"), None);
        assert_eq!(parse_test_result("test foo ... ok"), None);
    }

    #[test]
    fn ci_without_root_is_refused_and_anything_else_runs() {
        assert!(is_ci(Some("true")) && is_ci(Some("1")));
        assert!(!is_ci(None) && !is_ci(Some("false")));
        let err = ci_can_run_everything(true, false).expect_err("CI as non-root");
        assert!(err.to_string().contains("not running as root"), "{err}");
        ci_can_run_everything(true, true).expect("CI as root");
        ci_can_run_everything(false, false).expect("local, not root");
    }

    #[test]
    fn recorded_skips_are_read_back() {
        let dir = std::env::temp_dir().join(format!("xtask-skips-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("1-0"), "a::b\tneeds root\n").expect("write");
        assert_eq!(read_skips(&dir), ["a::b: needs root"]);
        fs::remove_dir_all(&dir).expect("cleanup");
        assert!(read_skips(&dir).is_empty());
    }
}
