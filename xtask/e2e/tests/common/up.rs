//! `cargo xtask up` and `cargo xtask down` run as a user runs them, but with every
//! place and name of the test's own — data and run dirs in a temp dir, a bridge, pod
//! range, cgroup and bpf pin dir no other test uses, the apiserver and the kubelet API
//! on free loopback ports — and the debug binaries `cargo xtask test` built
//! (`--bin-dir`), so nothing is built or installed and tests running beside it are not
//! disturbed. On drop (a failed test) `up` is interrupted and `down` run.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use berth_testkit::unique_name;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// One `up`'s flags and places; on drop (a failed test) the `up` process is
/// interrupted and `down` run, so nothing is left on the host.
pub struct UpDown {
    pub xtask: PathBuf,
    pub flags: Vec<String>,
    pub data: PathBuf,
    pub run: PathBuf,
    pub cgroup: String,
    pub bridge: String,
    pub bpf_pins: PathBuf,
    pub stderr: PathBuf,
    pub up: Option<Child>,
    /// `up`'s stdout, line by line, and every line read so far.
    pub lines: Option<Receiver<String>>,
    pub seen: Vec<String>,
    pub down_done: bool,
    pub dir: tempfile::TempDir,
}

impl UpDown {
    /// `up`'s flags for a cluster of the test's own, plus `extra`.
    pub fn new(xtask: PathBuf, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let run = dir.path().join("run");
        let cgroup = unique_name("berthtest-up");
        let bridge = unique_name("bup");
        let bpf_pins = Path::new("/sys/fs/bpf").join(unique_name("berthtest-up"));
        // A /24 of its own per process: berth-cni routes it through the bridge in the
        // host's namespace (e2e agents keep 10.77.0.0/24 in their own namespaces).
        let pod_cidr = format!("10.213.{}.0/24", std::process::id() % 250);
        let mut flags: Vec<String> = vec![
            "--data-dir".into(),
            data.display().to_string(),
            "--run-dir".into(),
            run.display().to_string(),
            "--cgroup".into(),
            cgroup.clone(),
            "--bridge".into(),
            bridge.clone(),
            "--pod-cidr".into(),
            pod_cidr,
            "--address".into(),
            "127.0.0.1".into(),
            "--bpf-pin-dir".into(),
            bpf_pins.display().to_string(),
            // Tests never attach eBPF at the host's cgroup root.
            "--host-services=false".into(),
            // The host's disk is shared with builds: a full one must not evict the
            // test's pods or remove its preloaded images (as the testkit's agents).
            "--eviction-hard=memory.available<100Mi".into(),
            "--image-gc-high-threshold=100".into(),
            "--bin-dir".into(),
        ];
        flags.push(
            xtask
                .parent()
                .expect("target/<profile>")
                .display()
                .to_string(),
        );
        flags.extend(extra.iter().map(|f| (*f).to_owned()));
        Self {
            stderr: dir.path().join("up.stderr"),
            xtask,
            flags,
            data,
            run,
            cgroup,
            bridge,
            bpf_pins,
            up: None,
            lines: None,
            seen: Vec::new(),
            down_done: false,
            dir,
        }
    }

    /// Starts `xtask up` with the test's flags and its own ports.
    pub fn start_up(&mut self) {
        let stderr = std::fs::File::create(&self.stderr).expect("up's stderr file");
        let mut child = Command::new(&self.xtask)
            .arg("up")
            .args(&self.flags)
            .args(["--port", &free_port().to_string()])
            .args(["--kubelet-port", &free_port().to_string()])
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn xtask up");
        let stdout = child.stdout.take().expect("up's stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.up = Some(child);
        self.lines = Some(rx);
    }

    /// Reads `up`'s output until a line contains `what`; fails when `up` exits first
    /// or `timeout` passes.
    pub fn wait_line(&mut self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let rx = self.lines.as_ref().expect("up was started");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.up.as_mut().and_then(|c| c.wait().ok());
                    panic!(
                        "xtask up exited ({status:?}) before printing {what:?}; {}",
                        self.diagnostics()
                    );
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    panic!(
                        "xtask up did not print {what:?} within {timeout:?}; {}",
                        self.diagnostics()
                    );
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Sends `up` what Ctrl-C sends and waits for it to exit.
    pub fn interrupt_up(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.up.as_mut().expect("up was started");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT to up");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for up") {
                self.up = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "xtask up still runs {timeout:?} after SIGINT; {}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn down(&mut self) -> Output {
        self.down_done = true;
        Command::new(&self.xtask)
            .arg("down")
            .args(&self.flags)
            .stdin(Stdio::null())
            .output()
            .expect("run xtask down")
    }

    /// What a failed wait shows: `up`'s output, the end of every component's log and,
    /// last (CI keeps the end of a long message), the cluster's own account: its
    /// pods with their conditions and container states, and its newest events.
    pub fn diagnostics(&self) -> String {
        let tail = |name: &str| {
            let log = std::fs::read_to_string(self.data.join(name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().rev().take(25).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        let mut nodes = String::new();
        for e in std::fs::read_dir(self.data.join("nodes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let node = e.file_name().to_string_lossy().into_owned();
            nodes.push_str(&format!(
                "\nnodes/{node}/agent.log (end):\n{}",
                tail(&format!("nodes/{node}/agent.log"))
            ));
        }
        format!(
            "stdout so far:\n{}\nstderr:\n{}\nserver.log (end):\n{}\nserver2.log (end):\n{}\ncsi.log (end):\n{}\nagent.log (end):\n{}{nodes}\n{}",
            self.seen.join("\n"),
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            tail("server.log"),
            tail("server2.log"),
            tail("csi.log"),
            tail("agent.log"),
            self.cluster_account(),
        )
    }

    /// The cluster's pods (phase, node, conditions, container states) and its last
    /// events, through kubectl with the admin kubeconfig, if the server answers.
    fn cluster_account(&self) -> String {
        let kubeconfig = self.data.join("server/admin.kubeconfig");
        let home = self.dir.path().join("diagnostics-home");
        if !kubeconfig.exists() || std::fs::create_dir_all(&home).is_err() {
            return "no admin kubeconfig yet".into();
        }
        // Not `Kubectl::find`: a missing kubectl must not record the test as skipped.
        let client = berth_testkit::Kubectl {
            bin: berth_testkit::tools::venv().join("bin/kubectl"),
            kubeconfig,
            home,
        };
        let kubectl = |args: &[&str]| {
            client
                .cmd(args)
                .args(["--request-timeout", "5s"])
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_else(|e| format!("kubectl: {e}"))
        };
        let pods = kubectl(&[
            "get",
            "pods",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {.status.phase} on {.spec.nodeName}: {.status.conditions[*].type}={.status.conditions[*].status} {.status.conditions[*].message} {.status.containerStatuses[*].state}{\"\\n\"}{end}",
        ]);
        let events = kubectl(&[
            "get",
            "events",
            "-A",
            "--sort-by=.metadata.creationTimestamp",
        ]);
        let events: Vec<&str> = events.lines().rev().take(15).collect();
        format!(
            "pods:\n{pods}\nevents (newest last):\n{}",
            events.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// What of pods is left on the host: container records and netns pins under the
    /// run dir, mounts under the data and run dirs, pod cgroups under the test's
    /// cgroup, veths on its bridge, the components still running.
    pub fn pod_leftovers(&self, pids: &[(String, u32)]) -> Vec<String> {
        let mut found = Vec::new();
        let state = self.run.join("containers");
        for e in std::fs::read_dir(&state).into_iter().flatten().flatten() {
            if e.file_name() != "netns" {
                found.push(format!("container state {}", e.path().display()));
            }
        }
        for e in std::fs::read_dir(state.join("netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            found.push(format!("netns pin {}", e.path().display()));
        }
        found.extend(
            self.mounts()
                .into_iter()
                .map(|m| format!("mount {}", m.display())),
        );
        for dir in self.cgroup_dirs() {
            if dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pod"))
            {
                found.push(format!("cgroup {}", dir.display()));
            }
        }
        let veths = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        found.extend(veths.lines().map(|l| format!("veth {l}")));
        for (name, pid) in pids {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            if exe
                .file_name()
                .is_some_and(|f| f.to_string_lossy() == format!("berth-{name}"))
            {
                found.push(format!("berth-{name} (pid {pid}) still runs"));
            }
        }
        found
    }

    pub fn mounts(&self) -> Vec<PathBuf> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
            .filter(|m| m.starts_with(&self.data) || m.starts_with(&self.run))
            .collect()
    }

    /// The test's cgroup and everything below it, in every hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if !dir.is_dir() {
                return;
            }
            out.push(dir.to_path_buf());
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            walk(&hierarchy.path().join(&self.cgroup), &mut out);
        }
        out
    }

    pub fn bridge_exists(&self) -> bool {
        Command::new("ip")
            .args(["link", "show", &self.bridge])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for UpDown {
    fn drop(&mut self) {
        if let Some(mut child) = self.up.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.down_done {
            let _ = self.down();
        }
    }
}

pub fn wait_for(
    what: &str,
    timeout: Duration,
    diagnostics: impl Fn() -> String,
    mut ok: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; {}",
                diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
