//! `cargo xtask bench cni`: berth-cni against the reference `bridge` + `host-local`
//! on identical configs (only `type`, `ipam.type`, bridge name and subnet differ),
//! both invoked the way a runtime invokes a plugin (`berth_cni::exec`), from inside
//! a test "node" netns. Median ADD and DEL over 50 fresh pod netns each,
//! interleaved; then ADD again with 200 pods already attached to each bridge.
//!
//! DEL is timed two ways. `return`: until the plugin process exits, which is what a
//! runtime waits for. `done`: until the node is back to its prior state — berth-cni's
//! DEL returns once the kernel has unregistered the veth, while a child it forked
//! (cni/src/netlink/delete.rs) still sits in `RTM_DELLINK` through the kernel's
//! trailing RCU waits. The bench is a child subreaper, so that orphan becomes its
//! child; `done` is when every such child has been reaped. No timed step starts while
//! one is still running, so the reference's DEL never overlaps berth's cleanup.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result, bail};
use berth_cni::exec::{Attach, ConfList, Runner};
use berth_testkit::NetNs;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::{Report, stats::percentile};
use crate::util::{self, cmd, run_checked};

const RUNS: usize = 50;
const PREFILL: usize = 200;
const SETTLE_SECS: u64 = 3;
const REFERENCE_DIR: &str = "/usr/lib/cni";

struct Side {
    label: &'static str,
    /// This side's own node netns, so the two sides' bridges, ports and routes
    /// never slow each other down.
    node: NetNs,
    list: ConfList,
    pods: Vec<(NetNs, Attach, Value)>,
    add_ms: Vec<f64>,
    /// DEL until the plugin returned.
    del_return_ms: Vec<f64>,
    /// DEL until the plugin and every child it left behind had exited.
    del_done_ms: Vec<f64>,
    /// Children of the plugin reaped after it returned (berth-cni's detached deletes).
    orphans: usize,
    add_ms_at_prefill: Vec<f64>,
}

impl Side {
    fn new(label: &'static str, plugin: Value) -> Result<Self> {
        let list =
            json!({"cniVersion": "1.0.0", "name": format!("bench-{label}"), "plugins": [plugin]});
        let list =
            ConfList::parse(list.to_string().as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            label,
            node: NetNs::new("bbnode"),
            list,
            pods: Vec::new(),
            add_ms: Vec::new(),
            del_return_ms: Vec::new(),
            del_done_ms: Vec::new(),
            orphans: 0,
            add_ms_at_prefill: Vec::new(),
        })
    }

    /// Makes a pod netns and ADDs it; returns the ADD's wall time in ms.
    fn add(&mut self, runner: &Runner) -> Result<f64> {
        let ns = NetNs::new("bbp");
        let attach = Attach {
            container_id: format!("bench-{}", ns.name()),
            netns: ns.path(),
            ifname: "eth0".into(),
            args: String::new(),
            capability_args: serde_json::Map::new(),
        };
        let (ms, result) = self.node.run(|| {
            let t = Instant::now();
            let r = runner.add(&self.list, &attach);
            (t.elapsed().as_secs_f64() * 1e3, r)
        });
        let result = result.map_err(|e| anyhow::anyhow!("{} ADD: {e}", self.label))?;
        self.pods.push((ns, attach, result));
        Ok(ms)
    }

    /// Attaches [`PREFILL`] pods, lets the kernel settle, measures [`RUNS`] more
    /// ADDs (each DELed right away), then removes the prefill.
    fn at_prefill(&mut self, runner: &Runner) -> Result<()> {
        let bar = progress(
            PREFILL,
            &format!("{}: attaching {PREFILL} pods", self.label),
        );
        for _ in 0..PREFILL {
            self.add(runner)?;
            bar.inc(1);
        }
        bar.finish();
        // Let the kernel finish the background work of the new interfaces (IPv6
        // DAD holds RTNL) so this phase measures steady state, as the first does.
        std::thread::sleep(std::time::Duration::from_secs(SETTLE_SECS));
        let bar = progress(
            RUNS,
            &format!("{}: ADD with {PREFILL} attached", self.label),
        );
        for _ in 0..RUNS {
            let ms = self.add(runner)?;
            self.add_ms_at_prefill.push(ms);
            self.del_last(runner)?;
            bar.inc(1);
        }
        bar.finish();
        let bar = progress(PREFILL, &format!("{}: cleaning up", self.label));
        while !self.pods.is_empty() {
            self.del_last(runner)?;
            bar.inc(1);
        }
        bar.finish();
        Ok(())
    }

    /// DELs the most recently added pod; returns the DEL's wall time in ms until the
    /// plugin returned and until every child it left had exited (see the module doc).
    fn del_last(&mut self, runner: &Runner) -> Result<Timing> {
        let Some((ns, attach, result)) = self.pods.pop() else {
            bail!("no pod to delete")
        };
        let (t, returned, r) = self.node.run(|| {
            let t = Instant::now();
            let r = runner.del(&self.list, &attach, Some(&result));
            (t, t.elapsed().as_secs_f64() * 1e3, r)
        });
        r.map_err(|e| anyhow::anyhow!("{} DEL: {e}", self.label))?;
        self.orphans += reap_children()?;
        let done = t.elapsed().as_secs_f64() * 1e3;
        drop(ns);
        Ok(Timing { returned, done })
    }

    /// DELs the most recently added pod and records both timings.
    fn del_timed(&mut self, runner: &Runner) -> Result<()> {
        let t = self.del_last(runner)?;
        self.del_return_ms.push(t.returned);
        self.del_done_ms.push(t.done);
        Ok(())
    }
}

/// One DEL's wall times, ms.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Until the plugin process exited.
    returned: f64,
    /// Until it and every child it left behind had exited.
    done: f64,
}

/// Reaps every child this process has, blocking until none is left; returns how many.
/// With the bench a child subreaper and the plugin already waited for, those are the
/// plugin's orphans (berth-cni's detached `RTM_DELLINK`).
fn reap_children() -> Result<usize> {
    use nix::errno::Errno;
    let mut reaped = 0;
    loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(_) => reaped += 1,
            Err(Errno::ECHILD) => return Ok(reaped),
            Err(Errno::EINTR) => {}
            Err(e) => bail!("waitpid: {e}"),
        }
    }
}

/// Makes this process the reaper of its descendants' orphans while it lives (and
/// undoes it on drop), so a plugin's detached child can be waited for.
struct Subreaper;

impl Subreaper {
    fn new() -> Result<Self> {
        nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
        Ok(Self)
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        let _ = nix::sys::prctl::set_child_subreaper(false);
    }
}

fn p50(v: &[f64]) -> f64 {
    percentile(v, 50.0).unwrap_or(f64::NAN)
}

fn p90(v: &[f64]) -> f64 {
    percentile(v, 90.0).unwrap_or(f64::NAN)
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:<28} {bar:30} {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// Runs the bench.
pub fn run() -> Result<Report> {
    if !util::is_root() {
        bail!("bench cni needs root (network namespaces)");
    }
    for plugin in ["bridge", "host-local"] {
        if !PathBuf::from(REFERENCE_DIR).join(plugin).exists() {
            bail!("reference plugin {REFERENCE_DIR}/{plugin} is missing: run cargo xtask setup");
        }
    }
    run_checked(&mut cmd(
        util::cargo(),
        ["build", "--release", "--quiet", "-p", "berth-cni"],
    ))?;
    let bin_dir = util::target_dir().join("release");
    let runner = Runner::new(vec![bin_dir, REFERENCE_DIR.into()]);
    let _subreaper = Subreaper::new()?;
    // Nothing of ours may be left to reap but the plugins' orphans.
    reap_children()?;
    let data = util::target_dir().join("bench-cni");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).with_context(|| format!("mkdir {}", data.display()))?;

    let mut berth = Side::new(
        "berth",
        json!({"type": "berth-cni", "bridge": "bbr0", "isGateway": true, "hairpinMode": true,
               "ipam": {"type": "berth-ipam", "subnet": "10.80.0.0/16", "dataDir": data.join("berth")}}),
    )?;
    let mut reference = Side::new(
        "reference",
        json!({"type": "bridge", "bridge": "rbr0", "isGateway": true, "hairpinMode": true,
               "ipam": {"type": "host-local", "subnet": "10.81.0.0/16", "dataDir": data.join("ref")}}),
    )?;

    // Warm-up: the first ADD creates each bridge; not measured.
    berth.add(&runner)?;
    reference.add(&runner)?;
    berth.del_last(&runner)?;
    reference.del_last(&runner)?;

    let bar = progress(RUNS, "ADD/DEL, empty bridges");
    for _ in 0..RUNS {
        let ms = berth.add(&runner)?;
        berth.add_ms.push(ms);
        let ms = reference.add(&runner)?;
        reference.add_ms.push(ms);
        // berth's detached delete is reaped inside del_timed, before the reference's
        // DEL starts.
        berth.del_timed(&runner)?;
        reference.del_timed(&runner)?;
        bar.inc(1);
    }
    bar.finish();

    // With 200 pods attached: one side at a time, so one side's 200 pods (their
    // neighbour discovery, their timers) never load the machine while the other
    // side is measured.
    for side in [&mut berth, &mut reference] {
        side.at_prefill(&runner)?;
    }
    let _ = std::fs::remove_dir_all(&data);

    let mut report = Report::default();
    let figures = [
        ("berth_add_ms_p50", p50(&berth.add_ms)),
        ("ref_add_ms_p50", p50(&reference.add_ms)),
        ("berth_del_return_ms_p50", p50(&berth.del_return_ms)),
        ("ref_del_return_ms_p50", p50(&reference.del_return_ms)),
        ("berth_del_done_ms_p50", p50(&berth.del_done_ms)),
        ("ref_del_done_ms_p50", p50(&reference.del_done_ms)),
        ("berth_add_ms_p50_at_200", p50(&berth.add_ms_at_prefill)),
        ("ref_add_ms_p50_at_200", p50(&reference.add_ms_at_prefill)),
        ("berth_add_ms_p90", p90(&berth.add_ms)),
        ("ref_add_ms_p90", p90(&reference.add_ms)),
        ("berth_del_return_ms_p90", p90(&berth.del_return_ms)),
        ("ref_del_return_ms_p90", p90(&reference.del_return_ms)),
        ("berth_del_done_ms_p90", p90(&berth.del_done_ms)),
        ("ref_del_done_ms_p90", p90(&reference.del_done_ms)),
    ];
    for (k, v) in figures {
        report.figure(k, round(v));
    }
    report.figure("runs", RUNS as u64);
    report.figure(
        "add_ratio",
        round(p50(&berth.add_ms) / p50(&reference.add_ms)),
    );
    // The headline DEL ratio: node back to its prior state on both sides.
    report.figure(
        "del_done_ratio",
        round(p50(&berth.del_done_ms) / p50(&reference.del_done_ms)),
    );
    report.figure(
        "del_return_ratio",
        round(p50(&berth.del_return_ms) / p50(&reference.del_return_ms)),
    );
    report.figure(
        "add_ratio_at_200",
        round(p50(&berth.add_ms_at_prefill) / p50(&reference.add_ms_at_prefill)),
    );
    report.figure("berth_del_orphans_reaped", berth.orphans as u64);
    report.figure("ref_del_orphans_reaped", reference.orphans as u64);

    report.header = [
        "operation",
        "berth-cni p50 ms",
        "reference p50 ms",
        "berth / reference",
        "berth p90 ms",
        "reference p90 ms",
    ]
    .map(String::from)
    .to_vec();
    let row = |name: &str, b: &[f64], r: &[f64]| {
        vec![
            name.to_string(),
            format!("{:.2}", p50(b)),
            format!("{:.2}", p50(r)),
            format!("{:.2}", p50(b) / p50(r)),
            format!("{:.2}", p90(b)),
            format!("{:.2}", p90(r)),
        ]
    };
    report
        .rows
        .push(row("ADD, empty bridge", &berth.add_ms, &reference.add_ms));
    report.rows.push(row(
        "DEL, until the node is back to its prior state",
        &berth.del_done_ms,
        &reference.del_done_ms,
    ));
    report.rows.push(row(
        "DEL, until the plugin returns",
        &berth.del_return_ms,
        &reference.del_return_ms,
    ));
    report.rows.push(row(
        "ADD, 200 pods attached",
        &berth.add_ms_at_prefill,
        &reference.add_ms_at_prefill,
    ));
    report.notes = vec![
        format!("{RUNS} fresh pod netns per side and operation, berth and reference interleaved; wall time of the plugin process as a runtime runs it (spawn, env + stdin, wait)."),
        "reference = Debian containernetworking-plugins 1.1.1 `bridge` with `host-local` IPAM; berth = `berth-cni` with its built-in `berth-ipam`; same bridge options (isGateway, hairpinMode), cniVersion 1.0.0.".into(),
        "each side runs in its own test node netns (its own bridge and /16); the 200-pod phase runs one side at a time, after 3 s for the kernel to settle.".into(),
        format!("DEL two ways: until the plugin returns (what a runtime waits for) and until the node is back to its prior state: berth-cni returns once the kernel has unregistered the veth and leaves a forked child in RTM_DELLINK through the kernel's RCU waits; the bench is a child subreaper and reaps it (and any other orphan) before the next step, so no timed step overlaps it. Orphans reaped: berth {}, reference {} (over all DELs, prefill included). The headline DEL ratio is the second.", berth.orphans, reference.orphans),
        "baseline: the reference plugins are run in the same run, on the same machine, interleaved with berth.".into(),
        "goal: berth <= 0.5 x reference for ADD and DEL, and no slower at 200 pods than at 0.".into(),
    ];
    Ok(report)
}
