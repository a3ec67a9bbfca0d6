//! The real kubectl (pinned, installed by `cargo xtask setup` in the tools venv), run
//! against a cluster's kubeconfig with its own HOME, so nothing of the machine's
//! kubectl configuration leaks in.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{skip, tools::venv};

#[derive(Debug, Clone)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub home: PathBuf,
}

impl Kubectl {
    /// kubectl for `kubeconfig`; `None` (the test recorded as skipped) when kubectl is
    /// not installed.
    pub fn find(kubeconfig: &Path, home: &Path) -> Option<Self> {
        let bin = venv().join("bin/kubectl");
        if !bin.exists() {
            skip(&format!("{} is missing (cargo xtask setup)", bin.display()));
            return None;
        }
        Some(Kubectl {
            bin,
            kubeconfig: kubeconfig.into(),
            home: home.into(),
        })
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .env_remove("KUBERNETES_SERVICE_HOST");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run kubectl")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of one sample of the apiserver's `/metrics`: the first line starting
    /// with `series` (its name and labels as written, or a prefix of them).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.ok(&["get", "--raw", "/metrics"])
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Runs and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "kubectl {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `kubectl <args>` with `input` on its stdin, whatever its outcome.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write kubectl's stdin");
        child.wait_with_output().expect("kubectl")
    }

    /// `kubectl apply -f -` of `manifest`; returns stdout.
    pub fn apply(&self, manifest: &str) -> String {
        let out = self.run_with_stdin(&["apply", "-f", "-"], manifest);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl <args> -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl prints JSON")
    }
}
