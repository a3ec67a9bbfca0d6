//! `cargo xtask up`: a one-node cluster on this host — setup if needed, build, the test
//! images, then `berth-server` (embedded store) and `berth-agent` (pods on a bridge
//! `berth0` over 10.244.0.0/24) that joins the cluster with a bootstrap token (TLS
//! bootstrap: its own `system:node:<name>` certificate), waiting with a progress
//! display until the node is Ready; a second token is printed for more nodes. Ctrl-C stops both and removes the pods from the host (the cluster's objects
//! stay in the store for the next `up`). `cargo xtask down` removes everything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{
    commands::{build, images, setup},
    util::{self, step},
};

/// Where `up` keeps everything (and `down` removes).
const DATA_DIR: &str = "/var/lib/berth";
const RUN_DIR: &str = "/run/berth";
const CGROUP_TOP: &str = "berth";
const BRIDGE: &str = "berth0";
const POD_CIDR: &str = "10.244.0.0/24";
const PORT: u16 = 6443;
/// Where the socket-LB's maps and links are pinned (they outlive agent restarts).
const BPF_PINS: &str = "/sys/fs/bpf/berth";

struct Layout {
    data: PathBuf,
    run: PathBuf,
}

impl Layout {
    fn new() -> Self {
        Self {
            data: DATA_DIR.into(),
            run: RUN_DIR.into(),
        }
    }
    fn server_dir(&self) -> PathBuf {
        self.data.join("server")
    }
    fn kubeconfig(&self) -> PathBuf {
        self.server_dir().join("admin.kubeconfig")
    }
    /// The kubeconfig the agent writes for its own certificate.
    fn agent_kubeconfig(&self) -> PathBuf {
        self.data.join("agent/kubelet.kubeconfig")
    }
    /// A kubeconfig naming the cluster and the bootstrap `token`.
    fn bootstrap_kubeconfig(&self, token: &str) -> Result<PathBuf> {
        let path = self.data.join("agent/bootstrap.kubeconfig");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // The server as the admin kubeconfig names it (the advertised address, which
        // the agent also takes its node IP from).
        let admin = std::fs::read_to_string(self.kubeconfig())
            .with_context(|| format!("reading {}", self.kubeconfig().display()))?;
        let server = admin
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("https://127.0.0.1:{PORT}"));
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: berth\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: bootstrap\n  user:\n    token: {token}\ncontexts:\n- name: bootstrap\n  context: {{cluster: berth, user: bootstrap}}\ncurrent-context: bootstrap\n",
            self.server_dir().join("pki/ca.crt").display()
        );
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
    /// berth-csi's socket (the agent's `--csi-socket`).
    fn csi_socket(&self) -> PathBuf {
        self.run.join("csi/csi.sock")
    }
    fn agent_args(&self, node: &str) -> Vec<String> {
        let d = |p: &Path| p.display().to_string();
        vec![
            "--kubeconfig".into(),
            d(&self.kubeconfig()),
            "--hostname-override".into(),
            node.into(),
            "--root-dir".into(),
            d(&self.data),
            "--run-dir".into(),
            d(&self.run),
            "--pod-log-dir".into(),
            d(&self.data.join("pod-logs")),
            "--cni-conf-dir".into(),
            d(&self.data.join("cni/net.d")),
            "--pod-cidr".into(),
            POD_CIDR.into(),
            "--cgroup-root".into(),
            format!("{CGROUP_TOP}/kubepods"),
            // The kube-dns Service berth-server creates; this agent answers for it.
            "--cluster-dns".into(),
            "10.96.0.10".into(),
            "--cluster-domain".into(),
            "cluster.local".into(),
            "--csi-socket".into(),
            d(&self.csi_socket()),
        ]
    }
}

fn release_bin(name: &str) -> PathBuf {
    util::target_dir().join("release").join(name)
}

/// A new bootstrap token from `berth-server token create` (valid for `ttl`).
fn token_create(layout: &Layout, ttl: &str) -> Result<String> {
    let out = Command::new(release_bin("berth-server"))
        .arg("--data-dir")
        .arg(layout.server_dir())
        .args(["token", "create", "--ttl", ttl])
        .output()
        .context("running berth-server token create")?;
    if !out.status.success() {
        bail!(
            "berth-server token create: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn node_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().to_lowercase())
        .unwrap_or_else(|_| "berth-node".into())
}

/// A child in its own process group (Ctrl-C reaches `up`, which stops it in order).
fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    use std::os::unix::process::CommandExt;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn kubectl() -> PathBuf {
    util::venv_dir().join("bin/kubectl")
}

fn node_ready(layout: &Layout, node: &str) -> bool {
    util::output(
        Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(layout.kubeconfig())
            .args([
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]),
    )
    .is_some_and(|s| s.trim() == "True")
}

/// `cargo xtask up`.
pub fn run() -> Result<ExitCode> {
    if !util::is_root() {
        eprintln!("xtask up: berth runs pods in namespaces and cgroups; run it as root");
        return Ok(ExitCode::FAILURE);
    }
    if !setup::is_complete() {
        if let Err(why) = setup::check_host() {
            eprintln!("xtask up: setup is incomplete and cannot run here: {why}");
            return Ok(ExitCode::FAILURE);
        }
        setup::run()?;
    }
    build::build()?;
    images::run()?;
    let layout = Layout::new();
    for dir in [&layout.data, &layout.run] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let node = node_name();
    step("starting berth-server");
    let advertise = util::output(Command::new("hostname").arg("-I"))
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1".into());
    let mut server = spawn(
        &release_bin("berth-server"),
        &[
            "--data-dir".into(),
            layout.server_dir().display().to_string(),
            "--secure-port".into(),
            PORT.to_string(),
            "--advertise-address".into(),
            advertise,
        ],
        &layout.data.join("server.log"),
    )?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message("waiting for the apiserver");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !layout.kubeconfig().exists()
        || std::net::TcpStream::connect(("127.0.0.1", PORT)).is_err()
    {
        if Instant::now() > deadline || matches!(server.try_wait(), Ok(Some(_))) {
            bar.finish_and_clear();
            stop(&mut server);
            bail!(
                "berth-server did not come up; see {}",
                layout.data.join("server.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The node's CSI driver beside the agent, as a CSI driver runs beside any kubelet
    // (a separate process the agent reaches through its socket).
    bar.set_message("starting berth-csi");
    let mut csi = spawn(
        &release_bin("berth-csi"),
        &[
            format!("--endpoint=unix://{}", layout.csi_socket().display()),
            format!("--root={}", layout.data.join("csi").display()),
            format!("--node-id={node}"),
        ],
        &layout.data.join("csi.log"),
    )?;
    bar.set_message("starting berth-agent (joining with a bootstrap token)");
    let token = token_create(&layout, "1h")?;
    let bootstrap = layout.bootstrap_kubeconfig(&token)?;
    let mut args = layout.agent_args(&node);
    // Not the admin kubeconfig: the agent's own, which it writes after TLS bootstrap.
    if let Some(i) = args.iter().position(|a| a == "--kubeconfig") {
        args[i + 1] = layout.agent_kubeconfig().display().to_string();
    }
    args.extend([
        "--bootstrap-kubeconfig".into(),
        bootstrap.display().to_string(),
    ]);
    let images = util::target_dir().join("images");
    args.push("--preload-images".into());
    args.push(
        ["pause", "busybox", "testserver"]
            .iter()
            .map(|i| images.join(i).display().to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    args.extend([
        "--ebpf-object".into(),
        util::ebpf_object().display().to_string(),
        "--bpf-pin-dir".into(),
        BPF_PINS.into(),
    ]);
    let mut agent = spawn(
        &release_bin("berth-agent"),
        &args,
        &layout.data.join("agent.log"),
    )?;
    for (name, child) in [("server", &server), ("agent", &agent), ("csi", &csi)] {
        let _ = std::fs::write(
            layout.run.join(format!("{name}.pid")),
            child.id().to_string(),
        );
    }
    bar.set_message(format!("waiting for node {node} to be Ready"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !node_ready(&layout, &node) {
        if Instant::now() > deadline || matches!(agent.try_wait(), Ok(Some(_))) {
            bar.finish_and_clear();
            stop(&mut agent);
            remove_pods(&layout, &node);
            stop(&mut csi);
            stop(&mut server);
            bail!(
                "the node did not become Ready; see {}",
                layout.data.join("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bar.finish_and_clear();
    step(format!("node {node} is Ready"));
    let join = token_create(&layout, "24h")?;
    println!(
        "\nMore nodes join with this bootstrap token (valid 24 h; `berth-server token create` makes more):\n\n  {join}\n\n  berth-agent --bootstrap-kubeconfig <a kubeconfig with this token and {}> --kubeconfig <where the node's own goes>",
        layout.server_dir().join("pki/ca.crt").display()
    );
    println!(
        "\nberth is up. Use it with kubectl:\n\n  export KUBECONFIG={}\n  export PATH={}:$PATH   # the pinned kubectl, or your own\n  kubectl get nodes\n  kubectl run web --image=berth.local/testserver:v1 --image-pull-policy=IfNotPresent\n  kubectl logs web\n\nImages available offline: berth.local/busybox:1.35, berth.local/testserver:v1.\nLogs: {}/server.log, {}/agent.log. Ctrl-C stops the cluster; `cargo xtask down` removes all of its state.",
        layout.kubeconfig().display(),
        kubectl()
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        layout.data.display(),
        layout.data.display(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stopped_by_user = rt.block_on(async {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return true,
                _ = ticker.tick() => {
                    if [&mut server, &mut agent, &mut csi].into_iter().any(|c| matches!(c.try_wait(), Ok(Some(_)))) {
                        return false;
                    }
                }
            }
        }
    });
    step("stopping berth-agent, berth-csi and berth-server");
    stop(&mut agent);
    // Pods leave the host through the driver (their volumes are unpublished), so it
    // stops after them.
    remove_pods(&layout, &node);
    stop(&mut csi);
    stop(&mut server);
    if stopped_by_user {
        step("stopped; the cluster's objects stay in the store for the next `cargo xtask up`");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "xtask up: a component exited; see {}/server.log, {}/agent.log and {}/csi.log",
            layout.data.display(),
            layout.data.display(),
            layout.data.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Every pod off the host, through the agent's own teardown.
fn remove_pods(layout: &Layout, node: &str) {
    let bin = release_bin("berth-agent");
    if !bin.exists() || !layout.kubeconfig().exists() {
        return;
    }
    let mut args = layout.agent_args(node);
    args.push("--remove-all-pods".into());
    let _ = Command::new(&bin)
        .args(&args)
        .stdout(Stdio::null())
        .status();
}

/// `cargo xtask down`: removes what `up` made — pods (containers, netns, veths, IPs,
/// cgroups, mounts), the bridge, the cgroup tree, the pinned bpf links and maps, and
/// the data and run dirs.
pub fn down() -> Result<ExitCode> {
    if !util::is_root() {
        eprintln!("xtask down: run it as root");
        return Ok(ExitCode::FAILURE);
    }
    let layout = Layout::new();
    // A cluster still running (from another terminal): stopped by the PIDs `up` wrote;
    // the CSI driver after the pods, whose volumes it unpublishes.
    stop_recorded(&layout, &["agent", "server"]);
    step("removing pods");
    remove_pods(&layout, &node_name());
    stop_recorded(&layout, &["csi"]);
    step("removing the bridge, cgroups, mounts and state");
    let _ = Command::new("ip")
        .args(["link", "del", BRIDGE])
        .stderr(Stdio::null())
        .status();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(DATA_DIR) || m.starts_with(RUN_DIR))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let mut dirs = Vec::new();
        collect_dirs(&hierarchy.path().join(CGROUP_TOP), &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
    // Unpinning the links detaches the Service load balancer.
    for dir in [&layout.data, &layout.run, &PathBuf::from(BPF_PINS)] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("removing {}: {e}", dir.display()),
        }
    }
    step("berth is gone from this host");
    Ok(ExitCode::SUCCESS)
}

/// Stops the components `up` recorded in `<run>/<name>.pid`, if still running.
fn stop_recorded(layout: &Layout, names: &[&str]) {
    for name in names {
        let Ok(pid) = std::fs::read_to_string(layout.run.join(format!("{name}.pid"))) else {
            continue;
        };
        let Ok(pid) = pid.trim().parse::<i32>() else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe
            .file_name()
            .is_some_and(|f| f.to_string_lossy() == format!("berth-{name}"))
        {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
    out.push(dir.to_path_buf());
}
