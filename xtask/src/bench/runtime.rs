//! `cargo xtask bench runtime`: the full OCI lifecycle (`run` = create + start + wait +
//! delete) of one busybox `/bin/true` bundle under berth-runtime, crun and runc,
//! interleaved, from a single-threaded timer process.
//!
//! crun 1.8 refuses this machine's hybrid cgroup layout, so the timer also holds a
//! private mount namespace with `/sys/fs/cgroup/unified` unmounted and enters it (setns)
//! before each crun run; berth-runtime and runc run in the host mount namespace, on the
//! hybrid layout as it is.
//!
//! The seccomp rows (`berth_seccomp_ms_p50`): the same bundle with moby's default
//! profile (RuntimeDefault, resolved for the bundle's capabilities) and the CRI's
//! "deny all" device rule. berth runs it on cgroup v2 (a third private mount namespace
//! with cgroup2 at /sys/fs/cgroup) so the device program is part of the lifecycle, beside
//! a v2 baseline without seccomp or device rules; crun runs the same profile.

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

/// How a variant's runs are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    /// The host mount namespace (hybrid cgroups).
    Host,
    /// /sys/fs/cgroup/unified unmounted (pure v1), for crun.
    Legacy,
    /// cgroup2 mounted at /sys/fs/cgroup (pure v2).
    V2,
}

/// One timed configuration: (name, binary, bundle directory name, namespace).
struct Variant {
    name: &'static str,
    binary: &'static str,
    bundle: &'static str,
    ns: Ns,
}

/// The variants in the order the timer rotates through.
const VARIANTS: [Variant; 6] = [
    Variant {
        name: "berth",
        binary: "berth",
        bundle: "plain",
        ns: Ns::Host,
    },
    Variant {
        name: "crun",
        binary: "crun",
        bundle: "plain",
        ns: Ns::Legacy,
    },
    Variant {
        name: "runc",
        binary: "runc",
        bundle: "plain",
        ns: Ns::Host,
    },
    Variant {
        name: "berth-v2",
        binary: "berth",
        bundle: "v2-plain",
        ns: Ns::V2,
    },
    Variant {
        name: "berth-seccomp",
        binary: "berth",
        bundle: "seccomp",
        ns: Ns::V2,
    },
    Variant {
        name: "crun-seccomp",
        binary: "crun",
        bundle: "seccomp",
        ns: Ns::Legacy,
    },
];

/// Writes the busybox rootfs and three bundles whose process is `/bin/true`, from
/// `crun spec`: `plain` (crun's spec as it is: deny-all device rule, no seccomp),
/// `seccomp` (plus RuntimeDefault) and `v2-plain` (no device rules, no seccomp).
pub(crate) fn make_bundles(dir: &Path) -> Result<()> {
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
    std::fs::remove_file(dir.join("config.json"))?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    spec["root"]["path"] = rootfs.display().to_string().into();
    for (name, spec) in bundle_specs(&spec)? {
        let b = dir.join(name);
        std::fs::create_dir_all(&b)?;
        std::fs::write(b.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
    }
    Ok(())
}

/// The three bundles' config.json from `crun spec`'s.
pub(crate) fn bundle_specs(
    base: &serde_json::Value,
) -> Result<Vec<(&'static str, serde_json::Value)>> {
    let caps: Vec<String> = base["process"]["capabilities"]["bounding"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let profile = berth_runtime::seccomp::runtime_default(&caps)?;
    let mut seccomp = base.clone();
    seccomp["linux"]["seccomp"] = serde_json::to_value(profile)?;
    seccomp["linux"]["resources"]["devices"] =
        serde_json::json!([{"allow": false, "access": "rwm"}]);
    let mut v2_plain = base.clone();
    v2_plain["linux"]["resources"]["devices"] =
        serde_json::json!([{"allow": true, "access": "rwm"}]);
    Ok(vec![
        ("plain", base.clone()),
        ("seccomp", seccomp),
        ("v2-plain", v2_plain),
    ])
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
    let crun = tool_version("crun")?;
    let runc = tool_version("runc")?;
    let dir = util::target_dir().join("bench-runtime");
    let _ = std::fs::remove_dir_all(&dir);
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle)?;
    make_bundles(&bundle)?;

    let mut passes: Vec<Vec<Vec<f64>>> = Vec::new();
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
        passes.push(VARIANTS.iter().map(|v| get(v.name)).collect());
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
    let (v50, v90, vmin, vpass) = summary(3);
    let (s50, s90, smin, spass) = summary(4);
    let (cs50, cs90, csmin, cspass) = summary(5);
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
            "berth-runtime (host mount ns, hybrid cgroups)".to_string(),
            b50,
            b90,
            bmin,
            &bpass,
        ),
        (
            format!("crun {crun} (private mount ns, unified unmounted)"),
            c50,
            c90,
            cmin,
            &cpass,
        ),
        (
            format!("runc {runc} (host mount ns, hybrid cgroups)"),
            r50,
            r90,
            rmin,
            &rpass,
        ),
        (
            "berth-runtime, cgroup v2, no seccomp, no device rules".to_string(),
            v50,
            v90,
            vmin,
            &vpass,
        ),
        (
            "berth-runtime, cgroup v2, RuntimeDefault + device program".to_string(),
            s50,
            s90,
            smin,
            &spass,
        ),
        (
            format!("crun {crun}, RuntimeDefault (private mount ns, v1)"),
            cs50,
            cs90,
            csmin,
            &cspass,
        ),
    ] {
        report.rows.push(vec![
            label,
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
    report.figure("berth_v2_ms_p50", round(v50));
    report.figure("berth_seccomp_ms_p50", round(s50));
    report.figure("crun_seccomp_ms_p50", round(cs50));
    report.figure("seccomp_devices_added_ms", round(s50 - v50));
    report.figure("berth_seccomp_vs_crun_seccomp_p50", round(s50 / cs50));
    report.figure("crun_version", crun.clone());
    report.figure("runc_version", runc.clone());
    report.notes = vec![
        "Full lifecycle: `<runtime> run --bundle B <id>` = create + start + wait + delete of a busybox-static `/bin/true` bundle made by `crun spec` (read-only rootfs; runc's masked/read-only paths).".into(),
        format!("Baselines: crun {crun} and runc {runc} (versions from their `--version`), run in the same run as berth, on the same bundles, interleaved by the same timer."),
        "Every row (from the bundle and each runtime's code): namespaces pid, network, ipc, uts, mount (crun spec's list; no user or cgroup namespace); one cgroup per container, made in every mounted hierarchy, with no cpu, memory or pids limit written — the spec sets none, its only resource is the device list.".into(),
        "berth-runtime, plain (host, hybrid): the spec's deny-all then runc's default allow-list (runtime/src/devices.rs `rules`), written to the v1 devices controller (`devices.deny a`, then each rule: cgroups.rs `apply_devices`) before the init is cloned; no seccomp.".into(),
        format!("crun {crun}, plain (private mount ns, pure v1): the spec's rules then crun's built-in allow-list (libcrun cgroup-resources.c `write_devices_resources_v1`: mknod of any c/b device, null, zero, full, tty, random, urandom, console, pts, ptmx, net/tun) to the v1 devices controller; no seccomp."),
        format!("runc {runc}, plain (host, hybrid): the spec's rules plus runc's default allowed devices (libcontainer specconv) through the v1 devices controller; no seccomp."),
        "berth-runtime, cgroup v2, no seccomp, no device rules: the `v2-plain` bundle's only device rule allows everything, which `devices::rules` reduces to nothing to enforce, so no device program is attached; no seccomp.".into(),
        "berth-runtime, cgroup v2, RuntimeDefault + device program: the spec's deny-all then runc's defaults, enforced by berth's BPF_PROG_TYPE_CGROUP_DEVICE program, generated from the rules, loaded and attached to the container's cgroup each run; moby's default profile (berth's RuntimeDefault for the bundle's capabilities) compiled at create and installed by the init. `seccomp_devices_added_ms` is this row minus the v2 row without either.".into(),
        format!("crun {crun}, RuntimeDefault: the same profile (crun loads it through libseccomp) and the same device rules as its plain row, on v1."),
        "Timed from one single-threaded process, runtimes rotated each round; wall time of the whole command.".into(),
        format!("crun {crun} refuses hybrid cgroups (`cgroups in hybrid mode not supported`): its runs enter a private mount namespace with /sys/fs/cgroup/unified unmounted (pure v1). berth and runc run on the host's hybrid layout; berth's v2 rows in a private mount namespace with cgroup2 at /sys/fs/cgroup."),
        format!("Machine: 2 shared vCPUs, noisy; {PASSES} timer passes of {RUNS} runs per runtime; p50/p90 are the medians of the passes' values."),
        "berth-runtime's init joins its v1 cgroups by writing 0 to each `tasks` file (single-threaded: no global threadgroup lock, so no RCU grace-period wait, which the `cgroup.procs` writes of crun and runc pay).".into(),
    ];
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// The version `<binary> --version` reports ("crun version 1.8.1" → "1.8.1").
fn tool_version(binary: &str) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("{binary} --version"))?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("no version in `{binary} --version`"))
}

/// The word after "version" on the first line that has one.
fn parse_version(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "version")?;
        words.next().map(str::to_owned)
    })
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
    unshare(CloneFlags::CLONE_NEWNS).context("unshare mount ns")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    umount2("/sys/fs/cgroup", MntFlags::MNT_DETACH).context("umount /sys/fs/cgroup")?;
    mount(
        Some("none"),
        "/sys/fs/cgroup",
        Some("cgroup2"),
        MsFlags::empty(),
        None::<&str>,
    )
    .context("mount cgroup2")?;
    let v2 = std::fs::File::open("/proc/self/ns/mnt")?;
    setns(host.as_fd(), CloneFlags::CLONE_NEWNS)?;

    let bar = ProgressBar::new((args.runs * VARIANTS.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("  {bar:40} {pos}/{len} runs")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    for round in 0..args.runs {
        for k in 0..VARIANTS.len() {
            let which = (round + k) % VARIANTS.len();
            let v = &VARIANTS[which];
            let id = format!("bench-{}-{round}", v.name);
            let mut cmd = match v.binary {
                "berth" => {
                    let mut c = Command::new(&args.berth);
                    c.arg("--root").arg(&args.state);
                    c
                }
                other => Command::new(other),
            };
            cmd.arg("run")
                .arg("--bundle")
                .arg(args.bundle.join(v.bundle))
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            match v.ns {
                Ns::Host => {}
                Ns::Legacy => setns(legacy.as_fd(), CloneFlags::CLONE_NEWNS)?,
                Ns::V2 => setns(v2.as_fd(), CloneFlags::CLONE_NEWNS)?,
            }
            let start = Instant::now();
            let out = cmd.output();
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            if v.ns != Ns::Host {
                setns(host.as_fd(), CloneFlags::CLONE_NEWNS)?;
            }
            let out = out.with_context(|| format!("spawn {}", v.binary))?;
            if !out.status.success() {
                bail!(
                    "{} run failed: {}",
                    v.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            samples[which].push(ms);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let doc: serde_json::Map<String, serde_json::Value> = VARIANTS
        .iter()
        .zip(samples)
        .map(|(v, s)| (v.name.to_string(), serde_json::json!(s)))
        .collect();
    println!("{}", serde_json::Value::Object(doc));
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `crun spec` writes, cut to the fields the bench reads.
    fn crun_spec() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.0",
            "process": {
                "args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "capabilities": {
                    "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                },
            },
            "root": {"path": "rootfs", "readonly": true},
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
        })
    }

    #[test]
    fn the_seccomp_bundle_has_runtime_default_and_deny_all_devices() {
        let specs = bundle_specs(&crun_spec()).expect("bundle specs");
        let names: Vec<&str> = specs.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["plain", "seccomp", "v2-plain"]);
        for v in VARIANTS {
            assert!(
                names.contains(&v.bundle),
                "{} runs a bundle that exists",
                v.name
            );
        }
        let seccomp = &specs[1].1["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed: Vec<&str> = seccomp["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .flat_map(|r| r["names"].as_array().into_iter().flatten())
            .filter_map(|n| n.as_str())
            .collect();
        assert!(allowed.contains(&"execve") && !allowed.contains(&"mount"));
        assert_eq!(
            specs[1].1["linux"]["resources"]["devices"][0]["allow"],
            false
        );
        assert_eq!(
            specs[2].1["linux"]["resources"]["devices"][0]["allow"],
            true
        );
        assert!(specs[2].1["linux"]["seccomp"].is_null());
    }

    #[test]
    fn versions_are_read_from_the_tools_output() {
        let crun = "crun version 1.8.1\ncommit: f8a096be\nrundir: /run/crun\nspec: 1.0.0\n";
        assert_eq!(parse_version(crun).as_deref(), Some("1.8.1"));
        let runc = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n";
        assert_eq!(parse_version(runc).as_deref(), Some("1.1.5+ds1"));
        assert_eq!(parse_version("no such thing\n"), None);
    }

    #[test]
    fn the_plain_bundle_gets_device_rules_enforced_and_v2_plain_none() {
        let specs = bundle_specs(&crun_spec()).expect("bundle specs");
        let spec = |k: usize| -> oci_spec::runtime::Spec {
            serde_json::from_value(specs[k].1.clone()).expect("an OCI spec")
        };
        // plain: the spec's deny-all, then runc's defaults — something to enforce.
        let plain = berth_runtime::devices::rules(&spec(0))
            .expect("valid rules")
            .expect("rules to enforce");
        assert!(!plain[0].allow && plain[0].is_everything());
        assert!(plain.len() > 1);
        // seccomp: the same deny-all.
        assert!(
            berth_runtime::devices::rules(&spec(1))
                .expect("valid rules")
                .is_some()
        );
        // v2-plain: allow-all, so nothing is enforced (no device program).
        assert!(
            berth_runtime::devices::rules(&spec(2))
                .expect("valid rules")
                .is_none()
        );
    }
}
