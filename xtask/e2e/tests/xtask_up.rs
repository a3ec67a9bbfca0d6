//! `cargo xtask up` and `cargo xtask down` on this host, run as a user runs them but
//! with every place and name of the test's own — data and run dirs in a temp dir, a
//! bridge, pod range, cgroup and bpf pin dir no other test uses, the apiserver and the
//! kubelet API on free loopback ports — and the debug binaries `cargo xtask test`
//! built (`--bin-dir`), so nothing is built or installed and tests running beside it
//! are not disturbed. `up` until its node is Ready, a pod to Running with the real
//! kubectl, Ctrl-C (SIGINT) leaves no pod on the host, `down` leaves nothing at all.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use berth_testkit::{Kubectl, require_root, skip, unique_name, workspace_bin};
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// One `up`'s flags and places; on drop (a failed test) the `up` process is
/// interrupted and `down` run, so nothing is left on the host.
struct UpDown {
    xtask: PathBuf,
    flags: Vec<String>,
    data: PathBuf,
    run: PathBuf,
    cgroup: String,
    bridge: String,
    bpf_pins: PathBuf,
    stderr: PathBuf,
    up: Option<Child>,
    /// `up`'s stdout, line by line, and every line read so far.
    lines: Option<Receiver<String>>,
    seen: Vec<String>,
    down_done: bool,
    dir: tempfile::TempDir,
}

impl UpDown {
    fn new(xtask: PathBuf) -> Self {
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
            "--bin-dir".into(),
        ];
        flags.push(
            xtask
                .parent()
                .expect("target/<profile>")
                .display()
                .to_string(),
        );
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
    fn start_up(&mut self) {
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
    fn wait_line(&mut self, what: &str, timeout: Duration) -> String {
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
    fn interrupt_up(&mut self, timeout: Duration) -> std::process::ExitStatus {
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

    fn down(&mut self) -> Output {
        self.down_done = true;
        Command::new(&self.xtask)
            .arg("down")
            .args(&self.flags)
            .stdin(Stdio::null())
            .output()
            .expect("run xtask down")
    }

    fn diagnostics(&self) -> String {
        let tail = |name: &str| {
            let log = std::fs::read_to_string(self.data.join(name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().rev().take(40).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        format!(
            "stdout so far:\n{}\nstderr:\n{}\nserver.log (end):\n{}\nagent.log (end):\n{}\ncsi.log (end):\n{}",
            self.seen.join("\n"),
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            tail("server.log"),
            tail("agent.log"),
            tail("csi.log"),
        )
    }

    /// What of pods is left on the host: container records and netns pins under the
    /// run dir, mounts under the data and run dirs, pod cgroups under the test's
    /// cgroup, veths on its bridge, the components still running.
    fn pod_leftovers(&self, pids: &[(String, u32)]) -> Vec<String> {
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

    fn mounts(&self) -> Vec<PathBuf> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
            .filter(|m| m.starts_with(&self.data) || m.starts_with(&self.run))
            .collect()
    }

    /// The test's cgroup and everything below it, in every hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
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

    fn bridge_exists(&self) -> bool {
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

fn wait_for(
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

#[test]
fn up_runs_a_pod_ctrl_c_removes_pods_and_down_removes_everything() {
    require_root!();
    // Built by `cargo xtask test` itself (the `cargo xtask` alias runs it).
    let xtask = workspace_bin("xtask");
    if !xtask.exists() {
        skip(&format!(
            "{} is not built (run the tests through `cargo xtask test`)",
            xtask.display()
        ));
        return;
    }
    let mut t = UpDown::new(xtask);
    let home = t.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("kubectl's HOME");
    t.start_up();

    let ready = t.wait_line("is Ready", Duration::from_secs(240));
    let node = ready
        .trim_start_matches("==> node ")
        .trim_end_matches(" is Ready")
        .to_owned();
    t.wait_line("berth is up", Duration::from_secs(30));
    let export = t.wait_line("export KUBECONFIG=", Duration::from_secs(10));
    let kubeconfig = PathBuf::from(export.trim().trim_start_matches("export KUBECONFIG="));
    assert_eq!(
        kubeconfig,
        t.data.join("server/admin.kubeconfig"),
        "up prints the admin kubeconfig under --data-dir"
    );
    let Some(kubectl) = Kubectl::find(&kubeconfig, &home) else {
        return;
    };

    let nodes = kubectl.json(&["get", "nodes"]);
    let items = nodes["items"].as_array().expect("a node list");
    assert_eq!(items.len(), 1, "one node: {nodes}");
    assert_eq!(items[0]["metadata"]["name"], node.as_str());
    let ready_status = items[0]["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].clone());
    assert_eq!(ready_status, Some(Value::from("True")), "{nodes}");

    kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    imagePullPolicy: Never
    command: [sh, -c, "exec sleep 3600"]
"#,
    );
    wait_for(
        "pod sleeper to be Running",
        Duration::from_secs(90),
        || {
            format!(
                "{}\n{}",
                String::from_utf8_lossy(
                    &kubectl.run(&["get", "pod", "sleeper", "-o", "yaml"]).stdout
                ),
                t.diagnostics()
            )
        },
        || {
            kubectl
                .run(&["get", "pod", "sleeper", "-o", "jsonpath={.status.phase}"])
                .stdout
                == b"Running"
        },
    );
    // The pod is on the host where the checks below look for it.
    let pids: Vec<(String, u32)> = ["server", "agent", "csi"]
        .iter()
        .map(|name| {
            let file = t.run.join(format!("{name}.pid"));
            let pid = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            (name.to_string(), pid.trim().parse().expect("a PID"))
        })
        .collect();
    let running = t.pod_leftovers(&[]);
    assert!(
        running.iter().any(|l| l.starts_with("container state"))
            && running.iter().any(|l| l.starts_with("cgroup"))
            && running.iter().any(|l| l.starts_with("veth")),
        "a running pod shows as containers, a pod cgroup and a veth: {running:?}"
    );

    let status = t.interrupt_up(Duration::from_secs(120));
    assert!(
        status.success(),
        "up exits 0 on Ctrl-C: {status}; {}",
        t.diagnostics()
    );
    let left = t.pod_leftovers(&pids);
    assert!(
        left.is_empty(),
        "after Ctrl-C no pod is left on the host: {left:?}"
    );

    let out = t.down();
    assert!(
        out.status.success(),
        "xtask down: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut left = Vec::new();
    for dir in [&t.data, &t.run, &t.bpf_pins] {
        if dir.exists() {
            left.push(format!("{}", dir.display()));
        }
    }
    if t.bridge_exists() {
        left.push(format!("bridge {}", t.bridge));
    }
    left.extend(
        t.cgroup_dirs()
            .iter()
            .map(|d| format!("cgroup {}", d.display())),
    );
    left.extend(t.mounts().iter().map(|m| format!("mount {}", m.display())));
    assert!(left.is_empty(), "after down nothing is left: {left:?}");
}
