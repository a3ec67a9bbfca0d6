//! `cargo xtask bench runtime`: the full OCI lifecycle (`run` = create + start + wait +
//! delete) of one busybox `/bin/true` bundle under berth-runtime, crun and runc,
//! interleaved, from a single-threaded timer process.
//!
//! crun 1.8 refuses this machine's hybrid cgroup layout, so the timer also holds a
//! private mount namespace with `/sys/fs/cgroup/unified` unmounted and enters it (setns)
//! before each crun run; berth-runtime and runc run in the host mount namespace, on the
//! hybrid layout as it is.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use super::{Report, stats::percentile};
use crate::util::{self, run_checked};

const RUNS: usize = 60;
/// Independent timer passes; the headline figures are the medians of the passes' medians.
const PASSES: usize = 3;

/// The runtimes in the order the timer rotates through.
const RUNTIMES: [&str; 3] = ["berth", "crun", "runc"];

/// Writes a busybox bundle whose process is `/bin/true`, from `crun spec`.
fn make_bundle(dir: &Path) -> Result<()> {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .context("/bin/busybox (busybox-static)")?;
    for applet in ["true", "sh"] {
        let _ = std::fs::remove_file(rootfs.join("bin").join(applet));
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    let _ = std::fs::remove_file(dir.join("config.json"));
    run_checked(Command::new("crun").arg("spec").current_dir(dir))?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

pub fn run() -> Result<Report> {
    util::step("building berth-runtime (release)");
    run_checked(Command::new(util::cargo()).current_dir(util::root()).args([
        "build",
        "--release",
        "-p",
        "berth-runtime",
        "--bin",
        "berth-runtime",
    ]))?;
    run_checked(Command::new(util::cargo()).current_dir(util::root()).args([
        "build",
        "--release",
        "-p",
        "xtask",
    ]))?;
    let berth = util::target_dir().join("release/berth-runtime");
    let dir = util::target_dir().join("bench-runtime");
    let _ = std::fs::remove_dir_all(&dir);
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle)?;
    make_bundle(&bundle)?;

    let mut passes: Vec<[Vec<f64>; 3]> = Vec::new();
    for pass in 1..=PASSES {
        util::step(format!(
            "pass {pass}/{PASSES}: timing {RUNS} runs of each runtime, interleaved"
        ));
        let out = Command::new(util::target_dir().join("release/xtask"))
            .args(["runtime-timer", "--runs", &RUNS.to_string()])
            .arg("--berth")
            .arg(&berth)
            .arg("--bundle")
            .arg(&bundle)
            .arg("--state")
            .arg(dir.join("state"))
            .stderr(Stdio::inherit())
            .output()
            .context("runtime-timer")?;
        if !out.status.success() {
            bail!("runtime-timer failed");
        }
        let samples: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let get = |name: &str| -> Vec<f64> {
            samples[name]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
                .unwrap_or_default()
        };
        passes.push([get("berth"), get("crun"), get("runc")]);
    }
    let p = |s: &[f64], q: f64| percentile(s, q).unwrap_or(f64::NAN);
    let round = |x: f64| (x * 100.0).round() / 100.0;
    // Per runtime: the median of the passes' p50 and p90; min over everything.
    let summary = |k: usize| -> (f64, f64, f64, Vec<f64>) {
        let p50s: Vec<f64> = passes.iter().map(|ps| p(&ps[k], 50.0)).collect();
        let p90s: Vec<f64> = passes.iter().map(|ps| p(&ps[k], 90.0)).collect();
        let min = passes
            .iter()
            .flat_map(|ps| ps[k].iter().copied())
            .fold(f64::INFINITY, f64::min);
        (p(&p50s, 50.0), p(&p90s, 50.0), min, p50s)
    };
    let (b50, b90, bmin, bpass) = summary(0);
    let (c50, c90, cmin, cpass) = summary(1);
    let (r50, r90, rmin, rpass) = summary(2);
    let mut report = Report {
        header: [
            "runtime",
            "p50 ms (median of passes)",
            "p90 ms",
            "min ms",
            "p50 per pass",
            "runs",
            "p50 vs crun",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let fmt_passes = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for (label, p50, p90, min, per) in [
        (
            "berth-runtime (host mount ns, hybrid cgroups)",
            b50,
            b90,
            bmin,
            &bpass,
        ),
        (
            "crun 1.8.1 (private mount ns, unified unmounted)",
            c50,
            c90,
            cmin,
            &cpass,
        ),
        (
            "runc 1.1.5 (host mount ns, hybrid cgroups)",
            r50,
            r90,
            rmin,
            &rpass,
        ),
    ] {
        report.rows.push(vec![
            label.to_string(),
            format!("{p50:.2}"),
            format!("{p90:.2}"),
            format!("{min:.2}"),
            fmt_passes(per),
            format!("{}", RUNS * PASSES),
            format!("{:.2}×", p50 / c50),
        ]);
    }
    report.figure("berth_ms_p50", round(b50));
    report.figure("crun_ms_p50", round(c50));
    report.figure("runc_ms_p50", round(r50));
    report.figure("berth_ms_p90", round(b90));
    report.figure("runs", (RUNS * PASSES) as u64);
    report.figure("berth_vs_crun_p50", round(b50 / c50));
    report.notes = vec![
        "Full lifecycle: `<runtime> run --bundle B <id>` = create + start + wait + delete of a busybox-static `/bin/true` bundle made by `crun spec` (pid, net, ipc, uts, mount namespaces; read-only rootfs; runc's masked/read-only paths).".into(),
        "Timed from one single-threaded process, runtimes rotated each round; wall time of the whole command.".into(),
        "crun 1.8.1 refuses hybrid cgroups (`cgroups in hybrid mode not supported`): its runs enter a private mount namespace with /sys/fs/cgroup/unified unmounted (pure v1). berth and runc run on the host's hybrid layout.".into(),
        format!("Machine: 2 shared vCPUs, noisy; {PASSES} timer passes of {RUNS} runs per runtime; p50/p90 are the medians of the passes' values."),
        "berth-runtime's init joins its v1 cgroups by writing 0 to each `tasks` file (single-threaded: no global threadgroup lock, so no RCU grace-period wait, which the `cgroup.procs` writes of crun and runc pay).".into(),
    ];
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// Arguments of the hidden `xtask runtime-timer`.
#[derive(Debug, clap::Args)]
pub struct TimerArgs {
    #[arg(long)]
    runs: usize,
    #[arg(long)]
    berth: PathBuf,
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    state: PathBuf,
}

/// The timer process: single-threaded, so it can switch mount namespaces with setns.
pub fn timer(args: &TimerArgs) -> Result<std::process::ExitCode> {
    let host = std::fs::File::open("/proc/self/ns/mnt")?;
    unshare(CloneFlags::CLONE_NEWNS).context("unshare mount ns")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH).context("umount unified")?;
    let legacy = std::fs::File::open("/proc/self/ns/mnt")?;
    setns(host.as_fd(), CloneFlags::CLONE_NEWNS)?;

    let bar = ProgressBar::new((args.runs * RUNTIMES.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("  {bar:40} {pos}/{len} runs")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut samples: [Vec<f64>; 3] = Default::default();
    for round in 0..args.runs {
        for k in 0..RUNTIMES.len() {
            let which = (round + k) % RUNTIMES.len();
            let id = format!("bench-{}-{round}", RUNTIMES[which]);
            let mut cmd = match RUNTIMES[which] {
                "berth" => {
                    let mut c = Command::new(&args.berth);
                    c.arg("--root").arg(&args.state);
                    c
                }
                other => Command::new(other),
            };
            cmd.arg("run")
                .arg("--bundle")
                .arg(&args.bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if RUNTIMES[which] == "crun" {
                setns(legacy.as_fd(), CloneFlags::CLONE_NEWNS)?;
            }
            let start = Instant::now();
            let out = cmd.output();
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            if RUNTIMES[which] == "crun" {
                setns(host.as_fd(), CloneFlags::CLONE_NEWNS)?;
            }
            let out = out.with_context(|| format!("spawn {}", RUNTIMES[which]))?;
            if !out.status.success() {
                bail!(
                    "{} run failed: {}",
                    RUNTIMES[which],
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            samples[which].push(ms);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let doc = serde_json::json!({
        "berth": samples[0], "crun": samples[1], "runc": samples[2],
    });
    println!("{doc}");
    Ok(std::process::ExitCode::SUCCESS)
}
