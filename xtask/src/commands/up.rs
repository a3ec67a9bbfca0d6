//! `cargo xtask up`: a one-node cluster on this host — setup if needed, build, the test
//! images, then `berth-server` (embedded store) and `berth-agent` (pods on a bridge
//! `berth0` over 10.244.0.0/24) that joins the cluster with a bootstrap token (TLS
//! bootstrap: its own `system:node:<name>` certificate), waiting with a progress
//! display until the node is Ready; a second token is printed for more nodes. Ctrl-C
//! stops both and removes the pods from the host (the cluster's objects stay in the
//! store for the next `up`). `cargo xtask down` removes everything.
//!
//! Every place on the host `up` uses (and `down` removes) comes from [`Args`], whose
//! defaults are the ones above; a test gives its own (`xtask/e2e/tests/xtask_up.rs`)
//! and `--bin-dir` to run debug binaries instead of building release ones.

mod hosts;
mod nodes;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{
    commands::{build, images, setup},
    util::{self, step},
};

/// Where `up` keeps everything and what it names on the host (`down` takes the same
/// flags to find it all).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The cluster's state: store, certificates, images, pod volumes, logs.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/berth")]
    pub data_dir: PathBuf,
    /// Runtime state: container records, netns pins, the CSI socket, PID files.
    #[arg(long, value_name = "DIR", default_value = "/run/berth")]
    pub run_dir: PathBuf,
    /// The cgroup pods go under (`<cgroup>/kubepods` in every hierarchy).
    #[arg(long, value_name = "NAME", default_value = "berth")]
    pub cgroup: String,
    /// The pod network's bridge.
    #[arg(long, value_name = "NAME", default_value = "berth0")]
    pub bridge: String,
    /// The node's pod range, on the bridge.
    #[arg(long, value_name = "CIDR", default_value = "10.244.0.0/24")]
    pub pod_cidr: String,
    /// berth-server's port.
    #[arg(long, default_value_t = 6443)]
    pub port: u16,
    /// berth-agent's kubelet API port.
    #[arg(long, value_name = "PORT", default_value_t = 10250)]
    pub kubelet_port: u16,
    /// The one address berth-server and berth-agent listen on, advertise and take as the
    /// node's IP (default: listen on all, advertise this host's first address).
    #[arg(long, value_name = "IP")]
    pub address: Option<IpAddr>,
    /// The bpffs directory the socket-LB's maps and links are pinned in (they outlive
    /// agent restarts).
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/berth")]
    pub bpf_pin_dir: PathBuf,
    /// Run the berth binaries in this directory (e.g. target/debug) instead of building
    /// release ones; nothing is then built or installed (setup is not run, the test
    /// images are built only if missing).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Addresses `type: LoadBalancer` Services get (berth-server's `--lb-pool`: CIDRs
    /// and ranges, comma-separated, on a network this host is on); none by default.
    #[arg(long, value_name = "POOL")]
    pub lb_pool: Option<String>,
    /// CIDRs of further interfaces NodePorts answer on (berth-agent's flag); by
    /// default the interface of the node's IP.
    #[arg(long, value_name = "CIDRS")]
    pub nodeport_addresses: Option<String>,
    /// Let this host's own processes reach Services as on a kube-proxy node
    /// (ClusterIPs, NodePorts on its addresses and on 127.0.0.1): the socket LB is also
    /// attached at the cgroup2 root. `--host-services=false` keeps it to the pods.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub host_services: bool,
    /// How many nodes. One runs the node on this host; more (or `--etcd`) run every
    /// node as a network-namespace host of its own (own hostname, `eth0` on a shared
    /// segment, pod bridge, cgroup subtree and bpffs pins) while this host keeps the
    /// control plane.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub nodes: u32,
    /// Keep the objects in a 3-member etcd cluster (Debian's etcd-server, members on
    /// loopback ports, data under the data dir) and run two berth-servers over it.
    #[arg(long)]
    pub etcd: bool,
    /// The segment the nodes' hosts are on (with `--nodes` > 1 or `--etcd`): this host
    /// takes .1 (and .2 for the second server), node k takes .(10+k).
    #[arg(long, value_name = "CIDR", default_value = "172.30.77.0/24")]
    pub node_subnet: String,
    /// The pods' range each node's podCIDR (a /24) is cut from (with `--nodes` > 1 or
    /// `--etcd`; berth-server's `--cluster-cidr`).
    #[arg(long, value_name = "CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// How pod traffic crosses nodes: `routed`, `vxlan` or `auto` (berth-agent's flag).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = ["auto", "routed", "vxlan"])]
    pub pod_network_mode: String,
    /// The directory the nodes' binaries (berth-agent, berth-runtime, berth-cni,
    /// berth-csi) come from, e.g. the `bin/` of an unpacked `cargo xtask dist` tarball
    /// (default: as the servers').
    #[arg(long, value_name = "DIR")]
    pub node_bin_dir: Option<PathBuf>,
    /// The eBPF object the agents load (default: the one `cargo xtask build-ebpf`
    /// makes).
    #[arg(long, value_name = "FILE")]
    pub ebpf_object: Option<PathBuf>,
    /// The agents' hard eviction thresholds (berth-agent's `--eviction-hard`, e.g.
    /// `memory.available<100Mi`; default: the kubelet's, which include
    /// `imagefs.available<15%`).
    #[arg(long, value_name = "THRESHOLDS")]
    pub eviction_hard: Option<String>,
    /// The disk usage percent above which the agents remove unused images
    /// (berth-agent's `--image-gc-high-threshold`; 100 never does).
    #[arg(long, value_name = "PERCENT")]
    pub image_gc_high_threshold: Option<u8>,
}

/// The places and names of one cluster, all derived from [`Args`] (`cargo xtask dist`
/// renders its systemd units from the defaults, so they run what `up` runs).
pub(crate) struct Layout {
    data: PathBuf,
    run: PathBuf,
    /// berth-server's data dir (the first server's when there are two).
    server_data: PathBuf,
    cgroup: String,
    bridge: String,
    /// The node's pod range; `None`: the Node's podCIDR (multi-node).
    pod_cidr: Option<String>,
    /// Multi-node: the cluster's pod range and how it crosses nodes.
    cluster: Option<(String, String)>,
    ebpf_object: PathBuf,
    port: u16,
    kubelet_port: u16,
    address: Option<IpAddr>,
    bpf_pins: PathBuf,
    bin_dir: PathBuf,
    lb_pool: Option<String>,
    nodeport_addresses: Option<String>,
    host_services: bool,
    /// The agents' `--eviction-hard` and `--image-gc-high-threshold`, when given.
    eviction: Vec<String>,
}

impl Layout {
    pub(crate) fn new(args: &Args) -> Result<Self> {
        // `down` deletes these recursively: never a whole filesystem or hierarchy.
        for dir in [&args.data_dir, &args.run_dir, &args.bpf_pin_dir] {
            if !dir.is_absolute() || dir.parent().is_none() {
                bail!("{} must be an absolute path below /", dir.display());
            }
        }
        let cgroup = Path::new(&args.cgroup);
        if args.cgroup.is_empty()
            || cgroup.is_absolute()
            || cgroup
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!(
                "--cgroup {:?} must name a cgroup below the root, as `berth`",
                args.cgroup
            );
        }
        Ok(Self {
            data: args.data_dir.clone(),
            run: args.run_dir.clone(),
            server_data: args.data_dir.join("server"),
            cgroup: args.cgroup.clone(),
            bridge: args.bridge.clone(),
            pod_cidr: Some(args.pod_cidr.clone()),
            cluster: None,
            ebpf_object: args.ebpf_object.clone().unwrap_or_else(util::ebpf_object),
            port: args.port,
            kubelet_port: args.kubelet_port,
            address: args.address,
            bpf_pins: args.bpf_pin_dir.clone(),
            lb_pool: args.lb_pool.clone(),
            nodeport_addresses: args.nodeport_addresses.clone(),
            host_services: args.host_services,
            eviction: eviction_args(args),
            bin_dir: args
                .bin_dir
                .clone()
                .unwrap_or_else(|| util::target_dir().join("release")),
        })
    }
    /// A berth binary: from `--bin-dir`, else the release build.
    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
    /// Where the apiserver is reached from this host.
    fn local_address(&self) -> IpAddr {
        self.address.unwrap_or([127, 0, 0, 1].into())
    }
    pub(crate) fn server_dir(&self) -> PathBuf {
        self.server_data.clone()
    }
    /// Node `node` of a multi-node cluster, a network-namespace host at `ip`: its own
    /// data, run, cgroup and bpffs places below this cluster's, the binaries of
    /// `--node-bin-dir`, its podCIDR from its Node.
    pub(crate) fn for_node(&self, args: &Args, node: &str, ip: IpAddr) -> Self {
        Self {
            data: self.data.join("nodes").join(node),
            run: self.run.join("nodes").join(node),
            server_data: self.server_data.clone(),
            cgroup: format!("{}/{node}", self.cgroup),
            bridge: self.bridge.clone(),
            pod_cidr: None,
            cluster: Some((args.cluster_cidr.clone(), args.pod_network_mode.clone())),
            ebpf_object: self.ebpf_object.clone(),
            port: self.port,
            kubelet_port: self.kubelet_port,
            address: Some(ip),
            bpf_pins: self.bpf_pins.join(node),
            bin_dir: args
                .node_bin_dir
                .clone()
                .unwrap_or_else(|| self.bin_dir.clone()),
            lb_pool: None,
            nodeport_addresses: self.nodeport_addresses.clone(),
            host_services: false,
            eviction: self.eviction.clone(),
        }
    }
    fn kubeconfig(&self) -> PathBuf {
        self.server_dir().join("admin.kubeconfig")
    }
    /// The kubeconfig the agent writes for its own certificate.
    pub(crate) fn agent_kubeconfig(&self) -> PathBuf {
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
            .unwrap_or_else(|| format!("https://{}:{}", self.local_address(), self.port));
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: berth\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: bootstrap\n  user:\n    token: {token}\ncontexts:\n- name: bootstrap\n  context: {{cluster: berth, user: bootstrap}}\ncurrent-context: bootstrap\n",
            self.server_dir().join("pki/ca.crt").display()
        );
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
    /// berth-server's flags, advertising `advertise`.
    pub(crate) fn server_args(&self, advertise: &str) -> Vec<String> {
        let mut args = vec![
            "--data-dir".into(),
            self.server_dir().display().to_string(),
            "--secure-port".into(),
            self.port.to_string(),
            "--advertise-address".into(),
            advertise.to_owned(),
        ];
        if let Some(ip) = self.address {
            args.extend(["--bind-address".into(), ip.to_string()]);
        }
        if let Some(pool) = &self.lb_pool {
            args.extend(["--lb-pool".into(), pool.clone()]);
        }
        args
    }
    /// berth-csi's flags on node `node`.
    pub(crate) fn csi_args(&self, node: &str) -> Vec<String> {
        vec![
            format!("--endpoint=unix://{}", self.csi_socket().display()),
            format!("--root={}", self.data.join("csi").display()),
            format!("--node-id={node}"),
        ]
    }
    /// The agent's flags for joining as `node` with the bootstrap `token`: its own
    /// kubeconfig (written after TLS bootstrap), the test images preloaded, the eBPF
    /// object when built, the bpffs pins.
    fn join_args(&self, node: &str, token: &str) -> Result<Vec<String>> {
        let bootstrap = self.bootstrap_kubeconfig(token)?;
        let mut args = self.agent_args(node);
        // Not the admin kubeconfig: the agent's own, which it writes after TLS bootstrap.
        if let Some(i) = args.iter().position(|a| a == "--kubeconfig") {
            args[i + 1] = self.agent_kubeconfig().display().to_string();
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
        // Built by `build`; with `--bin-dir` it may not be (Services are then not
        // load-balanced on this node).
        if self.ebpf_object.exists() {
            args.extend([
                "--ebpf-object".into(),
                self.ebpf_object.display().to_string(),
            ]);
        }
        args.extend(["--bpf-pin-dir".into(), self.bpf_pins.display().to_string()]);
        Ok(args)
    }
    /// berth-csi's socket (the agent's `--csi-socket`).
    pub(crate) fn csi_socket(&self) -> PathBuf {
        self.run.join("csi/csi.sock")
    }
    pub(crate) fn agent_args(&self, node: &str) -> Vec<String> {
        let d = |p: &Path| p.display().to_string();
        let mut args = vec![
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
            "--pod-bridge".into(),
            self.bridge.clone(),
            "--cgroup-root".into(),
            format!("{}/kubepods", self.cgroup),
            "--port".into(),
            self.kubelet_port.to_string(),
            // The kube-dns Service berth-server creates; this agent answers for it on
            // its pod gateway, and only its cgroup's socket-LB sends the address there,
            // so clusters side by side on one host (tests) may all use it.
            "--cluster-dns".into(),
            "10.96.0.10".into(),
            "--cluster-domain".into(),
            "cluster.local".into(),
            "--csi-socket".into(),
            d(&self.csi_socket()),
        ];
        if let Some(cidr) = &self.pod_cidr {
            args.extend(["--pod-cidr".into(), cidr.clone()]);
        }
        if let Some((cluster, mode)) = &self.cluster {
            args.extend(["--cluster-cidr".into(), cluster.clone()]);
            args.extend(["--pod-network-mode".into(), mode.clone()]);
        }
        if let Some(ip) = self.address {
            args.extend(["--node-ip".into(), ip.to_string()]);
            args.extend(["--address".into(), ip.to_string()]);
        }
        if let Some(cidrs) = &self.nodeport_addresses {
            args.extend(["--nodeport-addresses".into(), cidrs.clone()]);
        }
        if self.host_services {
            args.extend(["--host-services-cgroup".into(), "/".into()]);
        }
        args.extend(self.eviction.iter().cloned());
        args
    }
}

/// The agents' eviction and image garbage collection flags `up` was given.
fn eviction_args(args: &Args) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(thresholds) = &args.eviction_hard {
        out.push(format!("--eviction-hard={thresholds}"));
    }
    if let Some(percent) = args.image_gc_high_threshold {
        out.push(format!("--image-gc-high-threshold={percent}"));
    }
    out
}

/// A new bootstrap token from `berth-server token create` (valid for `ttl`).
fn token_create(layout: &Layout, ttl: &str) -> Result<String> {
    let out = Command::new(layout.bin("berth-server"))
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
    spawn_command(Command::new(bin).args(args), log)
}

/// [`spawn`] for a command already set up (e.g. to run in a node's namespace).
fn spawn_command(cmd: &mut Command, log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))
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

/// The pinned kubectl `cargo xtask setup` installs.
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
pub fn run(args: &Args) -> Result<ExitCode> {
    if !util::is_root() {
        eprintln!("xtask up: berth runs pods in namespaces and cgroups; run it as root");
        return Ok(ExitCode::FAILURE);
    }
    let layout = Layout::new(args)?;
    if args.bin_dir.is_none() {
        if !setup::is_complete() {
            if let Err(why) = setup::check_host() {
                eprintln!("xtask up: setup is incomplete and cannot run here: {why}");
                return Ok(ExitCode::FAILURE);
            }
            setup::run()?;
        }
        build::build()?;
        images::run()?;
    } else {
        // Given binaries: nothing to build or install (and the images other tests may
        // be reading are left as they are).
        if !kubectl().exists() {
            bail!(
                "{} is missing; run `cargo xtask setup`",
                kubectl().display()
            );
        }
        images::ensure()?;
    }
    let left = still_running(&layout.run, &layout.data);
    if !left.is_empty() {
        let list: Vec<String> = left
            .iter()
            .map(|(exe, pid, file)| format!("{exe} (pid {pid}, {})", file.display()))
            .collect();
        eprintln!(
            "xtask up: a cluster from an earlier `cargo xtask up` still runs here: {}.\nStop it (Ctrl-C where it runs, or `cargo xtask down` with the same options) first.",
            list.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    for dir in [&layout.data, &layout.run] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if args.nodes > 1 || args.etcd {
        return nodes::run(args, &layout);
    }
    let node = node_name();
    step("starting berth-server");
    let advertise = match layout.address {
        Some(ip) => ip.to_string(),
        None => util::output(Command::new("hostname").arg("-I"))
            .and_then(|s| s.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "127.0.0.1".into()),
    };
    let mut server = spawn(
        &layout.bin("berth-server"),
        &layout.server_args(&advertise),
        &layout.data.join("server.log"),
    )?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message("waiting for the apiserver");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !layout.kubeconfig().exists()
        || std::net::TcpStream::connect((layout.local_address(), layout.port)).is_err()
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
        &layout.bin("berth-csi"),
        &layout.csi_args(&node),
        &layout.data.join("csi.log"),
    )?;
    bar.set_message("starting berth-agent (joining with a bootstrap token)");
    let token = token_create(&layout, "1h")?;
    let args = layout.join_args(&node, &token)?;
    let mut agent = spawn(
        &layout.bin("berth-agent"),
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
            remove_pods(&layout, &node, None);
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
    // Listening for Ctrl-C before saying the cluster is up, so one that follows the
    // message at once still stops it in order.
    let interrupt = Interrupt::listen()?;
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
    let stopped_by_user = interrupt.wait(|| {
        [&mut server, &mut agent, &mut csi]
            .into_iter()
            .any(|c| matches!(c.try_wait(), Ok(Some(_))))
    });
    step("stopping berth-agent, berth-csi and berth-server");
    stop(&mut agent);
    // Pods leave the host through the driver (their volumes are unpublished), so it
    // stops after them.
    remove_pods(&layout, &node, None);
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

/// Ctrl-C, listened for from before the cluster is announced.
struct Interrupt {
    rt: tokio::runtime::Runtime,
    signal: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn listen() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let signal = rt.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        })?;
        Ok(Self { rt, signal })
    }

    /// Whether Ctrl-C came since the last look (without waiting).
    fn interrupted(&mut self) -> bool {
        let signal = &mut self.signal;
        self.rt.block_on(async {
            tokio::time::timeout(Duration::ZERO, signal.recv())
                .await
                .is_ok()
        })
    }

    /// Waits for Ctrl-C (`true`) or for `exited` to say a component exited (`false`).
    fn wait(mut self, mut exited: impl FnMut() -> bool) -> bool {
        let signal = &mut self.signal;
        self.rt.block_on(async {
            let mut ticker = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = signal.recv() => return true,
                    _ = ticker.tick() => if exited() { return false },
                }
            }
        })
    }
}

/// Every pod off the host, through the agent's own teardown (in the node's network
/// namespace `netns` when it is a namespace host).
fn remove_pods(layout: &Layout, node: &str, netns: Option<&str>) {
    let bin = layout.bin("berth-agent");
    if !bin.exists() || !layout.kubeconfig().exists() {
        return;
    }
    let mut args = layout.agent_args(node);
    args.push("--remove-all-pods".into());
    let mut cmd = Command::new(&bin);
    cmd.args(&args).stdout(Stdio::null());
    if let Some(ns) = netns {
        hosts::in_netns(&mut cmd, ns, None);
    }
    let _ = cmd.status();
}

/// `cargo xtask down`: removes what `up` made — pods (containers, netns, veths, IPs,
/// cgroups, mounts), the bridge, the cgroup tree, the pinned bpf links and maps, and
/// the data and run dirs.
pub fn down(args: &Args) -> Result<ExitCode> {
    if !util::is_root() {
        eprintln!("xtask down: run it as root");
        return Ok(ExitCode::FAILURE);
    }
    let layout = Layout::new(args)?;
    // A multi-node cluster's nodes, servers and etcd members, and its segment.
    nodes::down(args, &layout);
    // A cluster still running (from another terminal): stopped by the PIDs `up` wrote;
    // the CSI driver after the pods, whose volumes it unpublishes.
    stop_recorded(&layout, &["agent", "server"]);
    step("removing pods");
    remove_pods(&layout, &node_name(), None);
    stop_recorded(&layout, &["csi"]);
    step("removing the bridge, cgroups, mounts and state");
    let _ = Command::new("ip")
        .args(["link", "del", &layout.bridge])
        .stderr(Stdio::null())
        .status();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| Path::new(m).starts_with(&layout.data) || Path::new(m).starts_with(&layout.run))
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
        collect_dirs(&hierarchy.path().join(&layout.cgroup), &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
    // Unpinning the links detaches the Service load balancer.
    for dir in [&layout.data, &layout.run, &layout.bpf_pins] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("removing {}: {e}", dir.display()),
        }
    }
    step("berth is gone from this host");
    Ok(ExitCode::SUCCESS)
}

/// Stops the components `up` recorded in `<run>/<name>.pid` (berth-`<name>`), if
/// still running.
fn stop_recorded(layout: &Layout, names: &[&str]) {
    for name in names {
        stop_pid_file(
            &layout.run.join(format!("{name}.pid")),
            &format!("berth-{name}"),
        );
    }
}

/// Stops the process whose PID `file` holds if it still runs `exe` (SIGTERM, then up
/// to 10 s for it to exit).
fn stop_pid_file(file: &Path, exe: &str) {
    let Ok(pid) = std::fs::read_to_string(file) else {
        return;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return;
    };
    // Read once: a PID left in the file must not reach another process later.
    let _ = std::fs::remove_file(file);
    let running = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    if running
        .file_name()
        .is_some_and(|f| f.to_string_lossy() == exe)
    {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The processes PID files under `run` (and its nodes' directories) name that still
/// run what they were recorded for — berth-* or etcd, with this cluster's `data` dir in
/// their arguments (a PID reused by another cluster's process is not this one's):
/// (executable, pid, file).
fn still_running(run: &Path, data: &Path) -> Vec<(String, i32, PathBuf)> {
    let data = data.display().to_string();
    let mut dirs = Vec::new();
    collect_dirs(run, &mut dirs);
    let mut out = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = entry.path();
            if file.extension().is_none_or(|e| e != "pid") {
                continue;
            }
            let Some(pid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let exe = exe
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline).contains(&data);
            if ours && (exe.starts_with("berth-") || exe == "etcd") {
                out.push((exe, pid, file));
            }
        }
    }
    out.sort();
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A PID file counts only while its process runs a berth binary (or etcd) for this
    /// cluster's data dir: not once it exited, not for another cluster's process.
    #[test]
    fn still_running_sees_only_this_clusters_live_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (run, data) = (dir.path().join("run"), dir.path().join("data"));
        std::fs::create_dir_all(run.join("nodes/node1")).expect("run dirs");
        // A "berth-" binary: a copy of sh(1) with the data dir as its $0, waiting in
        // its builtin `read` on a pipe (no command looked up in $PATH) until killed.
        let bin = dir.path().join("berth-test");
        std::fs::copy("/bin/sh", &bin).expect("copy sh");
        let spawn = |arg: &Path| {
            use std::io::BufRead;
            use std::os::unix::process::CommandExt;
            let mut child = Command::new(&bin)
                .args(["-c", "echo ready; read line"])
                .arg(arg)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .process_group(0)
                .spawn()
                .expect("spawn the copy of sh");
            // `spawn` returns once exec closed the child's close-on-exec pipe, which the
            // kernel does before the new image's argument area is set up: until then
            // /proc/<pid>/cmdline reads empty. The child's first line comes after that.
            let stdout = child.stdout.take().expect("piped stdout");
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .expect("the child's ready line");
            assert_eq!(line, "ready\n", "the copy of sh starts");
            child
        };
        let kill = |child: &mut std::process::Child| {
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        };
        // What /proc shows of a child, for a failure's message.
        let seen = |child: &mut std::process::Child| {
            let pid = child.id();
            format!(
                "pid {pid}: exe {:?}, cmdline {:?}, exited {:?}",
                std::fs::read_link(format!("/proc/{pid}/exe")),
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " ")),
                child.try_wait()
            )
        };
        let mut ours = spawn(&data);
        let mut other = spawn(&dir.path().join("other-data"));
        std::fs::write(run.join("nodes/node1/agent.pid"), ours.id().to_string()).expect("pid");
        std::fs::write(run.join("server.pid"), other.id().to_string()).expect("pid");
        std::fs::write(run.join("csi.pid"), "not a pid").expect("pid");
        let found = still_running(&run, &data);
        let found_ours = found
            .iter()
            .map(|(exe, pid, _)| (exe.as_str(), *pid))
            .collect::<Vec<_>>();
        assert_eq!(
            found_ours,
            [("berth-test", ours.id() as i32)],
            "ours {}; other {}",
            seen(&mut ours),
            seen(&mut other)
        );
        kill(&mut ours);
        assert!(still_running(&run, &data).is_empty(), "an exited process");
        kill(&mut other);
    }
}
