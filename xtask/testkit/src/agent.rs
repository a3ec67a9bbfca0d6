//! A `berth-agent` started for a test: its own root, run and log dirs under a temp dir,
//! its pod network (bridge, veths) inside a network namespace of the test's, its pods
//! under a cgroup root of the test's, the test images preloaded. On drop the agent is
//! killed by PID and whatever its pods left is removed (containers through
//! `berth-runtime`, mounts, the cgroup tree, the namespace), so a failing test leaks
//! nothing; tests that check cleanup look at [`Agent::leftovers`] before that.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{ChildGuard, NetNs};

/// A binary of the workspace, from the target dir the running test was built in.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    dir.join(name)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The kube-dns Service's address (berth-server's default service range).
pub const CLUSTER_DNS: &str = "10.96.0.10";
/// Where a test agent's DNS server listens: the pod network's gateway, inside
/// [`Agent::netns`].
pub const DNS_LISTENER: &str = "10.77.0.1";

#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    pub netns: NetNs,
    pub cgroup_root: String,
    pub port: u16,
    kubeconfig: PathBuf,
    /// With a bootstrap kubeconfig the agent joins by TLS bootstrap and `kubeconfig`
    /// is where it writes its own.
    bootstrap: Option<PathBuf>,
    extra: Vec<String>,
    bin: PathBuf,
    child: Option<ChildGuard>,
}

impl Agent {
    /// Starts an agent for node `name` of the cluster at `kubeconfig`.
    pub fn start(name: &str, kubeconfig: &Path, parent: &Path) -> Self {
        Self::start_with(name, kubeconfig, parent, &[])
    }

    /// [`Agent::start`] with more command-line flags.
    pub fn start_with(name: &str, kubeconfig: &Path, parent: &Path, extra: &[&str]) -> Self {
        Self::start_bin(
            &workspace_bin("berth-agent"),
            name,
            kubeconfig,
            parent,
            extra,
        )
    }

    /// An agent that joins the cluster with `bootstrap_kubeconfig` (a bootstrap token,
    /// [`crate::BerthServer::bootstrap_kubeconfig`]): it gets its node certificate
    /// through a CSR and writes its kubeconfig into its dir.
    pub fn join_with(
        name: &str,
        bootstrap_kubeconfig: &Path,
        parent: &Path,
        extra: &[&str],
    ) -> Self {
        Self::start_full(
            &workspace_bin("berth-agent"),
            name,
            None,
            Some(bootstrap_kubeconfig),
            parent,
            extra,
        )
    }

    /// [`Agent::start_with`] running the `berth-agent` at `bin` (a release build, for
    /// benches); `berth-runtime` is taken from the same directory.
    pub fn start_bin(
        bin: &Path,
        name: &str,
        kubeconfig: &Path,
        parent: &Path,
        extra: &[&str],
    ) -> Self {
        Self::start_full(bin, name, Some(kubeconfig), None, parent, extra)
    }

    fn start_full(
        bin: &Path,
        name: &str,
        kubeconfig: Option<&Path>,
        bootstrap: Option<&Path>,
        parent: &Path,
        extra: &[&str],
    ) -> Self {
        let dir = parent.join(crate::unique_name("berth-agent"));
        std::fs::create_dir_all(&dir).expect("the agent's dir");
        let cgroup_root = format!("{}/kubepods", crate::unique_name("berthtest-agent"));
        let kubeconfig =
            kubeconfig.map_or_else(|| dir.join("kubelet.kubeconfig"), Path::to_path_buf);
        let mut agent = Self {
            name: name.into(),
            dir,
            netns: NetNs::new("bagent"),
            cgroup_root,
            port: free_port(),
            kubeconfig,
            bootstrap: bootstrap.map(Path::to_path_buf),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            bin: bin.to_path_buf(),
            child: None,
        };
        agent.restart();
        agent
    }

    pub fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The static pod manifest directory (`--pod-manifest-path`).
    pub fn manifest_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// (Re)starts the agent process on the same dirs.
    pub fn restart(&mut self) {
        self.child = None;
        std::fs::create_dir_all(self.manifest_dir()).expect("the manifest dir");
        let images = crate::tools::images_dir();
        let preload: Vec<String> = ["pause", "busybox", "testserver"]
            .iter()
            .map(|i| images.join(i).display().to_string())
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("agent log");
        let child = Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--hostname-override", &self.name, "--node-ip", "127.0.0.1"])
            .arg("--root-dir")
            .arg(self.root_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--pod-log-dir")
            .arg(self.dir.join("logs"))
            .arg("--cni-conf-dir")
            .arg(self.dir.join("cni"))
            .args(["--pod-cidr", "10.77.0.0/24"])
            .args([
                "--cluster-dns",
                CLUSTER_DNS,
                "--cluster-domain",
                "cluster.local",
            ])
            .arg("--pod-network-netns")
            .arg(self.netns.path())
            .args(["--cgroup-root", &self.cgroup_root])
            .args(["--port", &self.port.to_string()])
            .arg("--preload-images")
            .arg(preload.join(","))
            .arg("--pod-manifest-path")
            .arg(self.manifest_dir())
            .args(
                Some(crate::tools::ebpf_object())
                    .filter(|o| o.exists())
                    .map(|o| vec!["--ebpf-object".to_owned(), o.display().to_string()])
                    .unwrap_or_default(),
            )
            .args(
                self.bootstrap
                    .iter()
                    .flat_map(|b| ["--bootstrap-kubeconfig".into(), b.display().to_string()]),
            )
            .args(self.test_defaults())
            .args(&self.extra)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn berth-agent");
        self.child = Some(ChildGuard(child));
    }

    /// Flags a test agent gets unless the test gives its own: no disk or PID eviction
    /// thresholds and no image garbage collection (as kind configures its kubelets) —
    /// the host's disk is shared with builds, and a full one must not taint the test's
    /// node or delete its preloaded images — and a registry configuration of its own
    /// (none), not the host's `/etc/berth/registries.yaml`.
    fn test_defaults(&self) -> Vec<String> {
        let given = |flag: &str| self.extra.iter().any(|a| a.starts_with(flag));
        let mut out = Vec::new();
        if !given("--eviction-hard") {
            out.push("--eviction-hard=memory.available<100Mi".to_owned());
        }
        if !given("--image-gc-high-threshold") {
            out.push("--image-gc-high-threshold=100".to_owned());
        }
        if !given("--registry-config") {
            out.push(format!(
                "--registry-config={}",
                self.dir.join("registries.yaml").display()
            ));
        }
        out
    }

    /// Kills the agent (`kill -9`); its pods keep running.
    pub fn kill(&mut self) {
        self.child = None;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::id)
    }

    /// What of pods is on the host: container records, netns pins, mounts under the
    /// agent's dirs, pod cgroups, veths in the node netns, IPAM leases.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let state = self.run_dir().join("containers");
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
        let prefix = self.dir.display().to_string();
        for m in std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
        {
            found.push(format!("mount {m}"));
        }
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let root = hierarchy.path().join(&self.cgroup_root);
            for qos in ["", "burstable", "besteffort"] {
                for e in std::fs::read_dir(root.join(qos))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if e.file_name().to_string_lossy().starts_with("pod") {
                        found.push(format!("cgroup {}", e.path().display()));
                    }
                }
            }
        }
        for link in self
            .netns
            .ip(&["-o", "link", "show", "type", "veth"])
            .lines()
        {
            found.push(format!("veth {link}"));
        }
        let ipam = self.root_dir().join("ipam");
        for e in walk(&ipam) {
            let name = e
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.parse::<std::net::Ipv4Addr>().is_ok() {
                found.push(format!("IP lease {}", e.display()));
            }
        }
        found
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.child = None;
        let runtime = self.bin.with_file_name("berth-runtime");
        let state = self.run_dir().join("containers");
        for e in std::fs::read_dir(&state).into_iter().flatten().flatten() {
            if e.file_name() == "netns" {
                continue;
            }
            // Drop cannot fail the test; a container this leaves is reported, and
            // `leftovers()` checks are what fail.
            let out = Command::new(&runtime)
                .arg("--root")
                .arg(&state)
                .args(["delete", "--force"])
                .arg(e.file_name())
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "warning: berth-runtime delete --force {:?} failed ({}): {}",
                    e.file_name(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(err) => eprintln!("warning: cannot run {}: {err}", runtime.display()),
            }
        }
        let prefix = self.dir.display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // The agent and the monitors it started sit in its cgroup2 directory (the
        // socket LB's); they may take a moment to be gone after the kills above.
        let top = self.cgroup_root.split('/').next().unwrap_or("").to_owned();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let mut left = false;
            for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let root = hierarchy.path().join(&top);
                let mut dirs: Vec<PathBuf> = walk_dirs(&root);
                dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
                dirs.push(root);
                for d in dirs {
                    if std::fs::remove_dir(&d).is_err() && d.exists() {
                        left = true;
                    }
                }
            }
            if !left || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk_dirs(&p));
            out.push(p);
        }
    }
    out
}
