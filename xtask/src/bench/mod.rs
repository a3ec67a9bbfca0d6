//! The benchmark frame. A bench measures berth and its baseline in the same run and
//! returns a [`Report`]: named figures (written as a flat JSON object to
//! `bench/results/<name>.json`) and a Markdown table (written to
//! `bench/results/<name>.md` and printed). Benches are registered in [`BENCHES`].

pub mod apiserver;
mod cni;
mod crossnode;
mod disk;
mod dns;
mod hollow;
mod lb;
mod netpol;
mod pod_startup;
pub mod runtime;
pub mod scheduler;
pub mod stats;
mod storage;
pub mod workloads;

use std::{fs, path::Path};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

/// Builds berth-server as `cargo xtask dist` ships it (the `release-lto` profile: one
/// codegen unit, whole-program LTO) and xtask in release, and starts that berth-server serving
/// the API alone (no scheduler, no controllers) on a fresh data dir under
/// `target/bench-<bench>`; returns the release dir (for the load process) and the server.
pub fn release_apiserver(bench: &str) -> Result<(std::path::PathBuf, berth_testkit::BerthServer)> {
    crate::util::run_checked(&mut crate::util::cmd(
        crate::util::cargo(),
        ["build", "--release", "--quiet", "-p", "xtask", "--bins"],
    ))?;
    let server_bin =
        crate::commands::dist::build_binary("berth-control-plane", "berth-server", None)?;
    let release = crate::util::target_dir().join("release");
    let data = crate::util::target_dir().join(format!("bench-{bench}"));
    let _ = fs::remove_dir_all(&data);
    fs::create_dir_all(&data).with_context(|| format!("mkdir {}", data.display()))?;
    let server = berth_testkit::BerthServer::start_with(
        &server_bin,
        &data,
        &["--scheduler=false", "--controllers=false"],
    );
    Ok((release, server))
}

/// The berth-server [`release_apiserver`] builds and starts: every server a bench of
/// the API starts besides (over etcd, with encryption, the controllers) runs it too.
pub fn server_binary() -> std::path::PathBuf {
    crate::util::target_dir()
        .join(crate::commands::dist::PROFILE)
        .join("berth-server")
}

/// A registered benchmark.
#[derive(Debug)]
pub struct Bench {
    /// `cargo xtask bench <name>`; also the results file stem.
    pub name: &'static str,
    /// One line for the usage message.
    pub about: &'static str,
    /// Runs the bench (berth and its baseline) and reports.
    pub run: fn() -> Result<Report>,
}

/// Every bench `cargo xtask bench` knows, by name.
pub const BENCHES: &[Bench] = &[
    Bench {
        name: "apiserver",
        about: "berth-server: per-verb p99, watch delivery, durable creates/s, RSS idle and with 10 000 pods; create p99, creates/s and watch p99 over a 1- and a 3-member etcd",
        run: apiserver::run,
    },
    Bench {
        name: "cni",
        about: "berth-cni vs the reference bridge + host-local: ADD and DEL latency",
        run: cni::run,
    },
    Bench {
        name: "crossnode",
        about: "pod-to-pod TCP between two netns nodes: RTT p50 and throughput on one node, routed (host-gw) and over VXLAN",
        run: crossnode::run,
    },
    Bench {
        name: "runtime",
        about: "berth-runtime vs crun and runc: full lifecycle of a busybox /bin/true bundle",
        run: runtime::run,
    },
    Bench {
        name: "scheduler",
        about: "scheduler_perf SchedulingBasic 5000 nodes / 10 000 pods: pods/s and create→bound p99",
        run: scheduler::run,
    },
    Bench {
        name: "dns",
        about: "the agent's cluster DNS vs dnsmasq with 10 000 Services: qps, p99, update latency, memory",
        run: dns::run,
    },
    Bench {
        name: "lb",
        about: "eBPF socket LB vs kube-proxy iptables and nftables: connect latency, programming time",
        run: lb::run,
    },
    Bench {
        name: "netpol",
        about: "eBPF NetworkPolicy vs kube-router's iptables + ipsets at 1 000 policies: connect latency, programming time",
        run: netpol::run,
    },
    Bench {
        name: "pod-startup",
        about: "100-pod burst on one berth-agent: create → Ready p50/p99 per phase, agent RSS",
        run: pod_startup::run,
    },
    Bench {
        name: "storage",
        about: "50 claims (berth-csi, WaitForFirstConsumer) with their pods beside 50 pods without: create → Bound, create → Ready p50/p99",
        run: storage::run,
    },
    Bench {
        name: "workloads",
        about: "Job (5 000 Indexed completions), StatefulSet (100, Parallel), DaemonSet (1 000 nodes) end to end on hollow nodes",
        run: workloads::run,
    },
];

/// What a bench found.
#[derive(Debug, Default)]
pub struct Report {
    figures: Map<String, Value>,
    /// Column headers of the table.
    pub header: Vec<String>,
    /// Table rows, one cell per header.
    pub rows: Vec<Vec<String>>,
    /// Lines printed under the table (method, machine, caveats).
    pub notes: Vec<String>,
}

impl Report {
    /// Records figure `key` (a number) for the JSON file.
    pub fn figure(&mut self, key: &str, value: impl Into<Value>) {
        self.figures.insert(key.to_string(), value.into());
    }

    /// A numeric figure recorded earlier.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.figures.get(key).and_then(Value::as_f64)
    }

    /// A figure recorded earlier, as recorded (a number, or a list of per-round ones).
    pub fn raw(&self, key: &str) -> Option<&Value> {
        self.figures.get(key)
    }

    /// The figures as the flat JSON object written to `<name>.json`.
    pub fn json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.figures).unwrap_or_else(|_| "{}".into());
        text.push('\n');
        text
    }

    /// The Markdown table written to `<name>.md`.
    pub fn markdown(&self, name: &str) -> String {
        let mut md = format!("# bench: {name}\n\n");
        md.push_str(&format!("| {} |\n", self.header.join(" | ")));
        md.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        for row in &self.rows {
            md.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        if !self.notes.is_empty() {
            md.push('\n');
            for note in &self.notes {
                md.push_str(&format!("- {note}\n"));
            }
        }
        md
    }

    /// The whole report as JSON, for a bench's helper process to hand back.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "figures": self.figures,
            "header": self.header,
            "rows": self.rows,
            "notes": self.notes,
        })
    }

    /// The inverse of [`Report::to_value`].
    pub fn from_value(v: &Value) -> Result<Self> {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Self {
            figures: v["figures"]
                .as_object()
                .cloned()
                .context("report without figures")?,
            header: strings(&v["header"]),
            rows: v["rows"]
                .as_array()
                .map(|rows| rows.iter().map(strings).collect())
                .unwrap_or_default(),
            notes: strings(&v["notes"]),
        })
    }

    /// Writes `<dir>/<name>.json` and `<dir>/<name>.md`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let json = dir.join(format!("{name}.json"));
        fs::write(&json, self.json()).with_context(|| format!("write {}", json.display()))?;
        let md = dir.join(format!("{name}.md"));
        fs::write(&md, self.markdown(name)).with_context(|| format!("write {}", md.display()))?;
        Ok(())
    }
}

/// The bench called `name`.
pub fn find(name: &str) -> Option<&'static Bench> {
    BENCHES.iter().find(|b| b.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::default();
        r.figure("berth_ms_p50", 1.5);
        r.figure("runs", 50);
        r.header = vec!["what".into(), "p50 ms".into()];
        r.rows = vec![
            vec!["berth".into(), "1.50".into()],
            vec!["crun".into(), "3.00".into()],
        ];
        r.notes.push("ratio 0.50".into());
        r
    }

    #[test]
    fn json_is_a_flat_object_of_figures() {
        let v: Value = serde_json::from_str(&sample().json()).expect("valid JSON");
        let obj = v.as_object().expect("an object");
        assert_eq!(obj.len(), 2);
        assert_eq!(obj["berth_ms_p50"], 1.5);
        assert_eq!(obj["runs"], 50);
    }

    #[test]
    fn markdown_has_header_rule_rows_and_notes() {
        let md = sample().markdown("runtime");
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "# bench: runtime");
        assert_eq!(lines[2], "| what | p50 ms |");
        assert_eq!(lines[3], "|---|---|");
        assert_eq!(lines[4], "| berth | 1.50 |");
        assert!(md.ends_with("- ratio 0.50\n"));
    }

    #[test]
    fn both_files_are_written() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        sample().write(&dir, "demo").expect("write");
        assert!(
            fs::read_to_string(dir.join("demo.json"))
                .expect("json")
                .contains("berth_ms_p50")
        );
        assert!(
            fs::read_to_string(dir.join("demo.md"))
                .expect("md")
                .contains("| crun | 3.00 |")
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
