//! A multi-node `cargo xtask up` (`--nodes N` > 1, or `--etcd`): this host runs the
//! control plane — one berth-server on the embedded store, or with `--etcd` a 3-member
//! etcd cluster on loopback ports and two berth-servers over it (the second with the
//! first's CA and service-account key) — and every node is a network-namespace host
//! ([`hosts`]) running berth-csi and a berth-agent that joins with a bootstrap token,
//! takes its podCIDR from the nodeipam allocator (`--allocate-node-cidrs
//! --cluster-cidr`) and routes pod traffic to the other nodes (`--pod-network-mode`).
//! Ctrl-C stops it all and removes the pods and the namespace hosts; the data dirs stay
//! (with `--etcd`, etcd's data is made afresh by each `up`). `down` removes the rest.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::hosts::{self, Names, Subnet};
use super::{
    Args, Interrupt, Layout, kubectl, node_ready, remove_pods, spawn, spawn_command, stop,
    stop_pid_file, stop_recorded, token_create,
};
use crate::util::step;

/// One running node: its name, namespace, layout and processes.
struct Node {
    name: String,
    netns: String,
    layout: Layout,
    agent: Option<Child>,
    csi: Option<Child>,
}

/// Everything a multi-node `up` started, stopped in order on drop.
struct Cluster {
    names: Names,
    servers: Vec<Child>,
    /// Servers seen to exit (0-based), each said once.
    servers_gone: Vec<usize>,
    nodes: Vec<Node>,
    etcd: Option<berth_testkit::Etcd>,
}

impl Cluster {
    /// Whether the cluster is down: a node's agent or CSI driver exited, or every
    /// server did. With two servers one may go (a fault a user tries HA with): the
    /// other serves, and the agents fail over to it.
    fn failed(&mut self) -> bool {
        let exited = |c: &mut Child| matches!(c.try_wait(), Ok(Some(_)));
        let node_down = self
            .nodes
            .iter_mut()
            .flat_map(|n| n.agent.iter_mut().chain(n.csi.iter_mut()))
            .any(exited);
        let mut servers_left = 0;
        for (i, server) in self.servers.iter_mut().enumerate() {
            if !exited(server) {
                servers_left += 1;
            } else if !self.servers_gone.contains(&i) {
                self.servers_gone.push(i);
                eprintln!("xtask up: berth-server {} exited", i + 1);
            }
        }
        node_down || servers_left == 0
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(agent) = &mut node.agent {
                stop(agent);
            }
            // Pods leave through the CSI driver (their volumes are unpublished).
            remove_pods(&node.layout, &node.name, Some(&node.netns));
            if let Some(csi) = &mut node.csi {
                stop(csi);
            }
            hosts::remove_node(&self.names, &node.name);
        }
        for server in self.servers.iter_mut().rev() {
            stop(server);
        }
        // Killed by PID on drop.
        self.etcd = None;
        hosts::remove_segment(&self.names);
    }
}

fn node_name(k: u32) -> String {
    format!("node{k}")
}

/// The flags of server `i` (1-based) at `ip`.
fn server_args(
    args: &Args,
    layout: &Layout,
    i: u32,
    ip: IpAddr,
    etcd: Option<&berth_testkit::Etcd>,
) -> Vec<String> {
    let first = layout.server_dir();
    let data = if i == 1 {
        first.clone()
    } else {
        layout.data.join(format!("server{i}"))
    };
    let mut flags = vec![
        "--data-dir".into(),
        data.display().to_string(),
        "--secure-port".into(),
        layout.port.to_string(),
        "--advertise-address".into(),
        ip.to_string(),
        "--bind-address".into(),
        ip.to_string(),
        "--allocate-node-cidrs".into(),
        "--cluster-cidr".into(),
        args.cluster_cidr.clone(),
    ];
    if let Some(pool) = &layout.lb_pool {
        flags.extend(["--lb-pool".into(), pool.clone()]);
    }
    if let Some(etcd) = etcd {
        flags.push(format!("--etcd-servers={}", etcd.endpoints_flag()));
    }
    if i > 1 {
        // One cluster: the first server's CA and service-account key, as an operator
        // copies them from the first server's pki/.
        let pki = first.join("pki");
        flags.extend([
            format!("--client-ca-file={}", pki.join("ca.crt").display()),
            format!("--client-ca-key-file={}", pki.join("ca.key").display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ),
        ]);
    }
    flags
}

/// Waits until `ip:port` accepts connections (and `ready` holds), or `child` exits,
/// or Ctrl-C.
fn wait_listening(
    interrupt: &mut Interrupt,
    child: &mut Child,
    ip: IpAddr,
    port: u16,
    ready: &Path,
    log: &Path,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready.exists() || std::net::TcpStream::connect((ip, port)).is_err() {
        if interrupt.interrupted() {
            bail!("interrupted");
        }
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            bail!(
                "berth-server did not come up on {ip}:{port}; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `cargo xtask up --nodes N` / `--etcd`.
pub(super) fn run(args: &Args, layout: &Layout) -> Result<ExitCode> {
    let subnet = Subnet::parse(&args.node_subnet)?;
    if args.nodes > subnet.max_nodes() {
        bail!(
            "--nodes {}: --node-subnet {} has room for {}",
            args.nodes,
            args.node_subnet,
            subnet.max_nodes()
        );
    }
    if args.etcd && berth_testkit::Etcd::binary().is_none() {
        bail!(
            "--etcd: etcd is not installed (Debian's etcd-server; `cargo xtask setup` installs it)"
        );
    }
    let servers = if args.etcd { 2 } else { 1 };
    let names = Names::new(&layout.bridge);
    names.check()?;
    step(format!(
        "making {} node host(s) on segment {} ({})",
        args.nodes,
        names.segment(),
        args.node_subnet
    ));
    // Ctrl-C from here on stops what was started (the cluster's Drop), also while
    // waiting for the servers and nodes.
    let mut interrupt = Interrupt::listen()?;
    let mut cluster = Cluster {
        names: names.clone(),
        servers: Vec::new(),
        servers_gone: Vec::new(),
        nodes: Vec::new(),
        etcd: None,
    };
    hosts::make_segment(&names, &subnet, servers)?;
    if args.etcd {
        step("starting a 3-member etcd cluster");
        let dir = layout.data.join("etcd");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let etcd = berth_testkit::Etcd::start_with(&dir, 3, None);
        for m in 0..etcd.len() {
            if let Some(pid) = etcd.member_pid(m) {
                let _ = std::fs::write(layout.run.join(format!("etcd-{m}.pid")), pid.to_string());
            }
        }
        cluster.etcd = Some(etcd);
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    for i in 1..=servers {
        let ip = IpAddr::V4(subnet.server(i));
        bar.set_message(format!("starting berth-server {i} on {ip}:{}", layout.port));
        let flags = server_args(args, layout, i, ip, cluster.etcd.as_ref());
        let log = layout.data.join(format!(
            "server{}.log",
            if i == 1 { String::new() } else { i.to_string() }
        ));
        let mut child = spawn(&layout.bin("berth-server"), &flags, &log)?;
        let pid_name = if i == 1 {
            "server".to_owned()
        } else {
            format!("server{i}")
        };
        let _ = std::fs::write(
            layout.run.join(format!("{pid_name}.pid")),
            child.id().to_string(),
        );
        let data = PathBuf::from(&flags[1]);
        let waited = wait_listening(
            &mut interrupt,
            &mut child,
            ip,
            layout.port,
            &data.join("admin.kubeconfig"),
            &log,
        );
        cluster.servers.push(child);
        if let Err(e) = waited {
            bar.finish_and_clear();
            return Err(e);
        }
    }
    let token = token_create(layout, "1h")?;
    let api_servers: Vec<String> = (1..=servers)
        .map(|i| format!("https://{}:{}", subnet.server(i), layout.port))
        .collect();
    for k in 1..=args.nodes {
        let name = node_name(k);
        let ip = IpAddr::V4(subnet.node(k));
        bar.set_message(format!("starting {name} ({ip})"));
        // In the cluster before anything can fail, so its Drop removes what was made.
        let netns = names.node_netns(&name);
        cluster.nodes.push(Node {
            name: name.clone(),
            netns: netns.clone(),
            layout: layout.for_node(args, &name, ip),
            agent: None,
            csi: None,
        });
        hosts::make_node(&names, &subnet, &name, k)?;
        let node = cluster.nodes.last_mut().context("the node just added")?;
        let node_layout = &node.layout;
        for dir in [&node_layout.data, &node_layout.run] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // `down` removes the node's pods with the same berth-agent, whatever its options.
        let _ = std::fs::write(
            node_layout.run.join(BIN_DIR_FILE),
            node_layout.bin_dir.as_os_str().as_encoded_bytes(),
        );
        let csi = spawn_command(
            hosts::in_netns(
                Command::new(node_layout.bin("berth-csi")).args(node_layout.csi_args(&name)),
                &netns,
                Some(&name),
            ),
            &node_layout.data.join("csi.log"),
        )?;
        let _ = std::fs::write(node_layout.run.join("csi.pid"), csi.id().to_string());
        node.csi = Some(csi);
        let node_layout = &node.layout;
        let mut flags = node_layout.join_args(&name, &token)?;
        if servers > 1 {
            flags.push(format!("--api-servers={}", api_servers.join(",")));
        }
        let agent = spawn_command(
            hosts::in_netns(
                Command::new(node_layout.bin("berth-agent")).args(&flags),
                &netns,
                Some(&name),
            ),
            &node_layout.data.join("agent.log"),
        )?;
        let _ = std::fs::write(node_layout.run.join("agent.pid"), agent.id().to_string());
        node.agent = Some(agent);
        if interrupt.interrupted() {
            bail!("interrupted");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    for i in 0..cluster.nodes.len() {
        let name = cluster.nodes[i].name.clone();
        bar.set_message(format!("waiting for node {name} to be Ready"));
        while !node_ready(layout, &name) {
            if interrupt.interrupted() {
                bar.finish_and_clear();
                drop(cluster);
                bail!("interrupted");
            }
            if Instant::now() > deadline || cluster.failed() {
                bar.finish_and_clear();
                let log = cluster.nodes[i].layout.data.join("agent.log");
                drop(cluster);
                bail!("node {name} did not become Ready; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    bar.finish_and_clear();
    step(format!(
        "{} node(s) Ready: {}",
        cluster.nodes.len(),
        cluster
            .nodes
            .iter()
            .map(|n| format!(
                "{} ({})",
                n.name,
                n.layout.address.map(|a| a.to_string()).unwrap_or_default()
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let store = match &cluster.etcd {
        Some(etcd) => format!(
            "a 3-member etcd ({}) behind servers {}",
            etcd.endpoints_flag(),
            api_servers.join(" and ")
        ),
        None => format!("the embedded store of {}", api_servers.join("")),
    };
    println!(
        "\nberth is up: {} nodes, {store}. Use it with kubectl:\n\n  export KUBECONFIG={}\n  export PATH={}:$PATH   # the pinned kubectl, or your own\n  kubectl get nodes -o wide\n\nA node's shell: ip netns exec {} sh. Logs: {}/server.log, {}/nodes/<node>/agent.log. Ctrl-C stops the cluster; `cargo xtask down{}` removes all of its state.",
        cluster.nodes.len(),
        layout.kubeconfig().display(),
        kubectl()
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        names.node_netns("node1"),
        layout.data.display(),
        layout.data.display(),
        if layout.bridge == "berth0" {
            String::new()
        } else {
            format!(" --bridge {}", layout.bridge)
        },
    );
    let stopped_by_user = interrupt.wait(|| cluster.failed());
    step("stopping the agents, CSI drivers, servers and etcd; removing the node hosts");
    drop(cluster);
    if stopped_by_user {
        step("stopped; the cluster's state stays in the data dir for `cargo xtask down`");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "xtask up: a component exited; see {}/server.log and {}/nodes/<node>/agent.log",
            layout.data.display(),
            layout.data.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// The file in a node's run directory naming the directory of its binaries.
const BIN_DIR_FILE: &str = "bin-dir";

/// `cargo xtask down` for what a multi-node `up` left: each node's agent, pods, CSI
/// driver and namespace, the servers, the etcd members and the segment.
pub(super) fn down(args: &Args, layout: &Layout) {
    let names = Names::new(&layout.bridge);
    let subnet = Subnet::parse(&args.node_subnet).ok();
    for name in names.present_nodes() {
        let k = name
            .strip_prefix("node")
            .and_then(|k| k.parse::<u32>().ok())
            .unwrap_or(1);
        let ip = subnet
            .map(|s| IpAddr::V4(s.node(k)))
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let mut node = layout.for_node(args, &name, ip);
        if let Ok(dir) = std::fs::read_to_string(node.run.join(BIN_DIR_FILE)) {
            node.bin_dir = PathBuf::from(dir);
        }
        let netns = names.node_netns(&name);
        step(format!("removing node {name}"));
        stop_recorded(&node, &["agent"]);
        remove_pods(&node, &name, Some(&netns));
        stop_recorded(&node, &["csi"]);
        hosts::remove_node(&names, &name);
    }
    // The servers before the etcd they write to.
    for server in ["server2", "server"] {
        stop_pid_file(&layout.run.join(format!("{server}.pid")), "berth-server");
    }
    for m in 0..3 {
        stop_pid_file(&layout.run.join(format!("etcd-{m}.pid")), "etcd");
    }
    hosts::remove_segment(&names);
}
