//! `cargo xtask bench lb`: berth's eBPF socket load balancing against kube-proxy's
//! iptables and nftables modes, all in the same run, each in its own netns.
//!
//! (a) connect()+close() latency from a client to a Service VIP with N = 1 and
//!     N = 10 000 Services of 2 endpoints each, and to the backend directly;
//! (b) time to program 1 000 and 10 000 Services from nothing, and to apply one
//!     changed endpoint of one Service when 10 000 exist: berth's map sync vs
//!     kube-proxy's partial sync in iptables mode (`iptables-restore --noflush
//!     --counters` of the top-level chains and the changed Service's chains only) and
//!     in nftables mode (one `nft -f` transaction of the changed chains only). Each
//!     programming figure is the median of [`PROGRAM_RUNS`] runs.
//!
//! (c) the NodePort path: connect()+close() from an outside host (a netns wired to the
//!     node's netns by a veth) to the node's address at a NodePort, with 10 000
//!     Services of which the first [`NODE_PORTS`] are NodePorts (the target last):
//!     berth's tc programs on the node's interface vs kube-proxy's iptables rules
//!     (KUBE-SERVICES, then its KUBE-NODEPORTS jump for local destinations), and the
//!     backend's port on the node's address without translation.
//!
//! The rules are written as kube-proxy writes them (KUBE-SERVICES → KUBE-SVC-… with
//! `statistic` probabilities → KUBE-SEP-… DNAT, the target Service last; the
//! nftables mode's verdict-map layout from KEP-3866). Backends are local addresses
//! on `lo` of each netns; the clients are `cargo xtask lb-client` processes.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use berth_ebpf::{Frontend, Protocol, SocketLb};
use berth_testkit::{Cgroup2Child, NetNs};
use serde_json::Value;

use super::{Report, stats::percentile};
use crate::{
    commands::build_ebpf,
    util::{self},
};

const BACKEND_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
const BIG: usize = 10_000;
const MID: usize = 1_000;
/// Client processes, each making ROUNDS_PER_CLIENT connects to every configuration.
const CLIENTS: usize = 5;
const ROUNDS_PER_CLIENT: usize = 600;
/// Timed runs per programming figure; the figure is their median.
const PROGRAM_RUNS: usize = 3;
/// NodePorts among the 10 000 Services of (c) (the range 30000–32767 holds 2 768).
const NODE_PORTS: usize = 2_000;
const NODE_PORT_BASE: u16 = 30_000;
/// The node's and the outside client's addresses on their veth, for (c).
const NODE_EXT: Ipv4Addr = Ipv4Addr::new(10, 212, 0, 1);
const CLIENT_EXT: Ipv4Addr = Ipv4Addr::new(10, 212, 0, 2);

fn node_port(s: &Svc) -> Option<u16> {
    (s.index < NODE_PORTS).then(|| NODE_PORT_BASE + s.index as u16)
}

/// kube-proxy's nat table for `svcs` with the NodePorts of [`node_port`]: the
/// KUBE-NODEPORTS chain (one jump per NodePort to its KUBE-EXT chain, which marks for
/// masquerade and goes to the KUBE-SVC chain), reached from KUBE-SERVICES' last rule.
fn iptables_rules_with_node_ports(svcs: &[Svc]) -> String {
    let table = iptables_rules(svcs);
    let (head, commit) = table.rsplit_once("COMMIT").unwrap_or((&table, ""));
    let mut chains = String::new();
    let mut rules = String::new();
    // The target Service is last in the list; its NodePort jump goes last too.
    let mut with_ports: Vec<&Svc> = svcs.iter().filter(|s| node_port(s).is_some()).collect();
    if let Some(last) = svcs.last()
        && node_port(last).is_none()
    {
        with_ports.push(last);
    }
    for s in with_ports {
        let port = node_port(s).unwrap_or(NODE_PORT_BASE + NODE_PORTS as u16);
        let ext = chain_id("KUBE-EXT-", s.index, 0);
        let svc = chain_id("KUBE-SVC-", s.index, 0);
        let _ = writeln!(chains, ":{ext} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-NODEPORTS -p tcp -m comment --comment \"default/svc-{}:http\" -m tcp --dport {port} -j {ext}",
            s.index
        );
        let _ = writeln!(
            rules,
            "-A {ext} -m comment --comment \"masquerade traffic for default/svc-{}:http external destinations\" -j KUBE-MARK-MASQ",
            s.index
        );
        let _ = writeln!(rules, "-A {ext} -j {svc}");
    }
    // Chains must be declared before the rules: put ours after the table's header.
    let (decl, body) = head.split_at(head.find("\n-A ").map_or(head.len(), |i| i + 1));
    format!("{decl}{chains}{body}{rules}COMMIT{commit}")
}

/// The node port the (c) clients use: the target Service's.
fn target_node_port(svcs: &[Svc]) -> u16 {
    svcs.last()
        .and_then(node_port)
        .unwrap_or(NODE_PORT_BASE + NODE_PORTS as u16)
}

/// A node netns (backends on `lo`, a server on every backend address and on the
/// node's veth address) wired to an outside netns by a veth; (node, outside, the
/// node's veth name).
fn nodeport_topology(prefix: &str) -> Result<(NetNs, NetNs, String)> {
    let node = node(prefix)?;
    let outside = NetNs::new(&format!("{prefix}o"));
    let dev = "npext".to_owned();
    node.ip_ok(&[
        "link",
        "add",
        &dev,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        outside.name(),
    ]);
    node.ip_ok(&["addr", "add", &format!("{NODE_EXT}/24"), "dev", &dev]);
    node.ip_ok(&["link", "set", &dev, "up"]);
    outside.ip_ok(&["addr", "add", &format!("{CLIENT_EXT}/24"), "dev", "eth0"]);
    outside.ip_ok(&["link", "set", "eth0", "up"]);
    Ok((node, outside, dev))
}

fn backend(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, i), BACKEND_PORT)
}

/// Service `i` of a set: its VIP and two endpoints.
#[derive(Clone, Copy, Debug)]
struct Svc {
    index: usize,
    vip: Ipv4Addr,
    backends: [SocketAddrV4; 2],
}

/// `n` Services; the one clients connect to is the last.
fn services(n: usize) -> Vec<Svc> {
    (0..n)
        .map(|i| {
            let i32 = u32::try_from(i).unwrap_or(0);
            Svc {
                index: i,
                vip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i32),
                backends: [backend(10), backend(11)],
            }
        })
        .collect()
}

fn chain_id(prefix: &str, svc: usize, ep: usize) -> String {
    // kube-proxy names chains by a hash; a fixed-width id keeps the shape.
    format!("{prefix}{:016X}", (svc as u64) << 8 | ep as u64)
}

/// The KUBE-SEP chain of endpoint `b` (slot `e`) of `s`. kube-proxy hashes the
/// endpoint into the name, so a changed endpoint is a new chain; so does this (its
/// last octet), within iptables' 28-character chain names.
fn sep_chain(s: &Svc, e: usize, b: &SocketAddrV4) -> String {
    let octet = u64::from(u32::from(*b.ip()) & 0xff);
    format!(
        "KUBE-SEP-{:016X}",
        (s.index as u64) << 16 | octet << 8 | (e as u64 + 1)
    )
}

/// The nat-table top-level chains kube-proxy declares in every restore
/// (`syncProxyRules`: KUBE-SERVICES, KUBE-NODEPORTS, KUBE-POSTROUTING, KUBE-MARK-MASQ)
/// and the fixed rules it writes into them.
const IPT_TOP_CHAINS: &str = ":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n";
const IPT_TOP_RULES: &str = "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
     -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
     -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
     -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n";
const IPT_NODEPORTS_LAST: &str = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";

/// The KUBE-SERVICES jump of `s` (kube-proxy writes it for every Service in every sync).
fn ipt_service_jump(s: &Svc) -> String {
    format!(
        "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"default/svc-{}:http cluster IP\" -m tcp --dport {SERVICE_PORT} -j {}\n",
        s.vip,
        s.index,
        chain_id("KUBE-SVC-", s.index, 0)
    )
}

/// The chain lines and rules of `s`'s own chains (KUBE-SVC and its KUBE-SEPs).
fn ipt_service_chains(s: &Svc, chains: &mut String, rules: &mut String) {
    let svc = chain_id("KUBE-SVC-", s.index, 0);
    let name = format!("default/svc-{}:http", s.index);
    let _ = writeln!(chains, ":{svc} - [0:0]");
    let n = s.backends.len();
    for (e, b) in s.backends.iter().enumerate() {
        let sep = sep_chain(s, e, b);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        if e + 1 < n {
            let p = 1.0 / (n - e) as f64;
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{name} -> {b}\" -m statistic --mode random --probability {p:.10} -j {sep}"
            );
        } else {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{name} -> {b}\" -j {sep}"
            );
        }
        let _ = writeln!(
            rules,
            "-A {sep} -s {}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ",
            b.ip()
        );
        let _ = writeln!(
            rules,
            "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {b}"
        );
    }
}

/// The nat table kube-proxy's iptables mode writes for `svcs`, from nothing (the
/// built-in chains' jumps included, which kube-proxy adds with `iptables -I` once).
fn iptables_rules(svcs: &[Svc]) -> String {
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    chains.push_str(IPT_TOP_CHAINS);
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    );
    rules.push_str(IPT_TOP_RULES);
    for s in svcs {
        rules.push_str(&ipt_service_jump(s));
        ipt_service_chains(s, &mut chains, &mut rules);
    }
    rules.push_str(IPT_NODEPORTS_LAST);
    chains + &rules + "COMMIT\n"
}

/// The `iptables-restore --noflush` input of kube-proxy's partial sync after one
/// endpoint of `svcs[changed]` changed (pkg/proxy/iptables/proxier.go,
/// `syncProxyRules`): the top-level chains are declared (so flushed) and rewritten
/// whole — KUBE-SERVICES with every Service's jump — and of the per-Service chains only
/// the changed Service's KUBE-SVC and KUBE-SEPs are declared and written; the others
/// are left as they are. The replaced endpoint's old KUBE-SEP chain is left behind, as
/// kube-proxy does above 1 000 endpoints (`largeClusterMode`: stale chains are removed
/// at most once per sync period, after an `iptables-save`).
fn iptables_partial_update(svcs: &[Svc], changed: usize) -> String {
    let mut chains = String::from("*nat\n");
    chains.push_str(IPT_TOP_CHAINS);
    let mut rules = String::from(IPT_TOP_RULES);
    for s in svcs {
        rules.push_str(&ipt_service_jump(s));
        if s.index == changed {
            ipt_service_chains(s, &mut chains, &mut rules);
        }
    }
    rules.push_str(IPT_NODEPORTS_LAST);
    chains + &rules + "COMMIT\n"
}

/// The table kube-proxy's nftables mode (KEP-3866) writes for `svcs`, as one
/// `nft -f` transaction. Chains come before whatever jumps to them.
fn nft_rules(svcs: &[Svc]) -> String {
    let mut out = String::from(
        "add table ip kube-proxy\nflush table ip kube-proxy\ntable ip kube-proxy {\n\
         \tchain mark-for-masquerade { meta mark set meta mark or 0x4000; }\n",
    );
    let mut elements = Vec::with_capacity(svcs.len());
    for s in svcs {
        let svc = chain_id("service-", s.index, 0);
        elements.push(format!("{} . tcp . {SERVICE_PORT} : goto {svc}", s.vip));
        out.push_str(&service_chain_nft(s));
    }
    let _ = write!(
        out,
        "\tmap service-ips {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict;\n\t\telements = {{ {} }};\n\t}}\n\
         \tchain services {{ ip daddr . meta l4proto . th dport vmap @service-ips; }}\n\
         \tchain nat-prerouting {{ type nat hook prerouting priority -100; policy accept; jump services; }}\n\
         \tchain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}\n}}\n",
        elements.join(", ")
    );
    out
}

/// A Service's chain and its endpoint chains, in nft syntax inside the table.
fn service_chain_nft(s: &Svc) -> String {
    let svc = chain_id("service-", s.index, 0);
    let mut out = String::new();
    let mut vmap = Vec::new();
    for (e, b) in s.backends.iter().enumerate() {
        let ep = endpoint_chain(s, e, b);
        vmap.push(format!("{e} : goto {ep}"));
        let _ = writeln!(
            out,
            "\tchain {ep} {{ ip saddr {} jump mark-for-masquerade; meta l4proto tcp dnat to {b}; }}",
            b.ip()
        );
    }
    let _ = writeln!(
        out,
        "\tchain {svc} {{ numgen random mod {} vmap {{ {} }}; }}",
        s.backends.len(),
        vmap.join(", ")
    );
    out
}

fn endpoint_chain(s: &Svc, e: usize, b: &SocketAddrV4) -> String {
    // Endpoint chains are named after the endpoint, so a changed endpoint is a new chain.
    format!(
        "{}-{}",
        chain_id("endpoint-", s.index, e + 1),
        u32::from(*b.ip()) & 0xff
    )
}

/// The one `nft -f` transaction kube-proxy's nftables mode makes when `old` becomes
/// `new` (pkg/proxy/nftables/proxier.go, `syncProxyRules`, partial sync): every chain
/// of the changed Service is ensured (`add` + `flush`, `ensureChain`) and rewritten —
/// its endpoint chains, then the service chain's `numgen` vmap; unchanged Services
/// and the unchanged `service-ips` element are not written; the replaced endpoint's
/// chain is only flushed (kube-proxy deletes stale chains in a later sync, at least
/// 1 s on, because kernels before 6.2 may still hold a reference to them).
fn nft_update(old: &Svc, new: &Svc) -> String {
    let mut out = String::new();
    for (e, b) in new.backends.iter().enumerate() {
        let ep = endpoint_chain(new, e, b);
        let _ = writeln!(out, "add chain ip kube-proxy {ep}");
        let _ = writeln!(out, "flush chain ip kube-proxy {ep}");
        let _ = writeln!(
            out,
            "add rule ip kube-proxy {ep} ip saddr {} jump mark-for-masquerade",
            b.ip()
        );
        let _ = writeln!(
            out,
            "add rule ip kube-proxy {ep} meta l4proto tcp dnat to {b}"
        );
    }
    let svc = chain_id("service-", new.index, 0);
    let vmap: Vec<String> = new
        .backends
        .iter()
        .enumerate()
        .map(|(e, b)| format!("{e} : goto {}", endpoint_chain(new, e, b)))
        .collect();
    let _ = writeln!(out, "add chain ip kube-proxy {svc}");
    let _ = writeln!(out, "flush chain ip kube-proxy {svc}");
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {svc} numgen random mod {} vmap {{ {} }}",
        new.backends.len(),
        vmap.join(", ")
    );
    for (e, b) in old.backends.iter().enumerate() {
        if new.backends.get(e) != Some(b) {
            let _ = writeln!(
                out,
                "flush chain ip kube-proxy {}",
                endpoint_chain(old, e, b)
            );
        }
    }
    out
}

/// The median of `PROGRAM_RUNS` timings by `f` (each run is given its index).
fn median_of_runs(mut f: impl FnMut(usize) -> Result<f64>) -> Result<f64> {
    let mut samples = Vec::with_capacity(PROGRAM_RUNS);
    for run in 0..PROGRAM_RUNS {
        samples.push(f(run)?);
    }
    Ok(percentile(&samples, 50.0).unwrap_or(f64::NAN))
}

/// Runs `program args` inside `ns` with `stdin`; returns the wall time in ms.
pub(super) fn timed_in(ns: &NetNs, program: &str, args: &[&str], stdin: &str) -> Result<f64> {
    ns.run(|| -> Result<f64> {
        let started = Instant::now();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {program}"))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            bail!(
                "{program} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(ms)
    })
}

/// A netns set up as a node whose Services point at backends on `lo`, with a TCP
/// server on every backend address.
fn node(prefix: &str) -> Result<NetNs> {
    let ns = NetNs::new(prefix);
    for i in [10, 11, 12] {
        ns.ip_ok(&["addr", "add", &format!("10.244.0.{i}/32"), "dev", "lo"]);
    }
    // A route to the service range, as every node has (its default route).
    ns.ip_ok(&["route", "add", "10.96.0.0/12", "dev", "lo"]);
    let listener = ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, BACKEND_PORT)))
        .context("bind backend")?;
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    Ok(ns)
}

/// One measured configuration.
struct Config {
    label: &'static str,
    key: &'static str,
    ns: NetNs,
    /// The cgroup the client joins for this configuration.
    cgroup: PathBuf,
    target: SocketAddrV4,
    samples: Vec<f64>,
}

/// Runs one `lb-client` over every configuration, interleaved connect by connect.
fn measure(xtask: &std::path::Path, configs: &mut [Config], rounds: usize) -> Result<()> {
    let targets: Vec<String> = configs
        .iter()
        .map(|c| {
            format!(
                "{},{},{}",
                c.ns.path().display(),
                c.cgroup.display(),
                c.target
            )
        })
        .collect();
    let out = Command::new(xtask)
        .arg("lb-client")
        .arg("--rounds")
        .arg(rounds.to_string())
        .args(&targets)
        .output()
        .context("run lb-client")?;
    if !out.status.success() {
        bail!("lb-client failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("lb-client output")?;
    for (i, c) in configs.iter_mut().enumerate() {
        if v["errors"][i].as_u64() != Some(0) {
            bail!("{}: {} failed connects", c.label, v["errors"][i]);
        }
        c.samples.extend(
            v["samples_us"][i]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64),
        );
    }
    Ok(())
}

fn program_ebpf(lb: &mut SocketLb, svcs: &[Svc]) -> Result<f64> {
    let started = Instant::now();
    for s in svcs {
        let frontend = Frontend {
            addr: s.vip,
            port: SERVICE_PORT,
            protocol: Protocol::Tcp,
        };
        lb.set_service(frontend, &s.backends)
            .map_err(|e| anyhow::anyhow!("program service {}: {e}", s.index))?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Runs the bench.
pub fn run() -> Result<Report> {
    if !util::is_root() {
        bail!("bench lb needs root (netns, cgroups, eBPF)");
    }
    build_ebpf::build()?;
    let object = util::ebpf_object();
    let xtask = std::env::current_exe().context("own path")?;
    let mut report = Report::default();

    // iptables: pick the faster backend on a 1 000-Service restore (median of runs,
    // each into a fresh netns).
    let mid = services(MID);
    let mid_rules = iptables_rules(&mid);
    let mut restore_ms = Vec::new();
    for tool in ["iptables-legacy-restore", "iptables-nft-restore"] {
        let ms = median_of_runs(|_| {
            let ns = NetNs::new("bblbprobe");
            timed_in(&ns, tool, &[], &mid_rules)
        })?;
        restore_ms.push((tool, ms));
        println!("  {tool}: {MID} Services in {ms:.0} ms (median of {PROGRAM_RUNS})");
    }
    restore_ms.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (iptables_restore, _) = restore_ms[0];
    let iptables_family = if iptables_restore.contains("legacy") {
        "iptables-legacy"
    } else {
        "iptables-nft"
    };
    report.figure(
        "iptables_legacy_program_ms_n1000",
        r2(restore_ms
            .iter()
            .find(|t| t.0.contains("legacy"))
            .map_or(f64::NAN, |t| t.1)),
    );
    report.figure(
        "iptables_nft_program_ms_n1000",
        r2(restore_ms
            .iter()
            .find(|t| t.0.contains("nft"))
            .map_or(f64::NAN, |t| t.1)),
    );

    let big = services(BIG);
    let one = services(1);
    let target = |svcs: &[Svc]| SocketAddrV4::new(svcs[svcs.len() - 1].vip, SERVICE_PORT);

    // (b) programming, and the netns for (a) set up by it. From nothing: every run
    // but the last into a scratch map set or netns, the last into the one (a) uses.
    println!("  programming {BIG} Services: eBPF, {iptables_family}, nft");
    let cg1 = Cgroup2Child::new("berth-bench-");
    let cg_big = Cgroup2Child::new("berth-bench-");
    // Where the client sits for the configurations without eBPF.
    let cg_plain = Cgroup2Child::new("berth-bench-");
    let plain = cg_plain.path().to_path_buf();
    let mut lb1 = SocketLb::load(&object).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut lb_big = SocketLb::load(&object).map_err(|e| anyhow::anyhow!("{e}"))?;
    lb1.attach(cg1.path()).map_err(|e| anyhow::anyhow!("{e}"))?;
    lb_big
        .attach(cg_big.path())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    program_ebpf(&mut lb1, &one)?;
    let scratch_ebpf = |svcs: &[Svc]| -> Result<f64> {
        let mut scratch = SocketLb::load(&object).map_err(|e| anyhow::anyhow!("{e}"))?;
        program_ebpf(&mut scratch, svcs)
    };
    let ebpf_mid_ms = median_of_runs(|_| scratch_ebpf(&mid))?;
    let ebpf_big_ms = median_of_runs(|run| {
        if run + 1 == PROGRAM_RUNS {
            program_ebpf(&mut lb_big, &big)
        } else {
            scratch_ebpf(&big)
        }
    })?;
    let mut changed = big[BIG / 2];
    changed.backends[1] = backend(12);
    let set = |lb: &mut SocketLb, s: &Svc| -> Result<f64> {
        let started = Instant::now();
        lb.set_service(
            Frontend {
                addr: s.vip,
                port: SERVICE_PORT,
                protocol: Protocol::Tcp,
            },
            &s.backends,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    };
    // Each timed change is undone (untimed) before the next, and at the end.
    let ebpf_update_ms = median_of_runs(|_| {
        let ms = set(&mut lb_big, &changed)?;
        set(&mut lb_big, &big[BIG / 2])?;
        Ok(ms)
    })?;

    let ns_ipt1 = node("bblbi1")?;
    let ns_ipt_big = node("bblbib")?;
    timed_in(&ns_ipt1, iptables_restore, &[], &iptables_rules(&one))?;
    let ipt_mid_ms = restore_ms[0].1;
    let big_rules = iptables_rules(&big);
    let ipt_big_ms = median_of_runs(|run| {
        if run + 1 == PROGRAM_RUNS {
            timed_in(&ns_ipt_big, iptables_restore, &[], &big_rules)
        } else {
            let ns = NetNs::new("bblbprobe");
            timed_in(&ns, iptables_restore, &[], &big_rules)
        }
    })?;
    let mut big_changed = big.clone();
    big_changed[BIG / 2] = changed;
    let noflush = ["--noflush", "--counters"];
    let ipt_partial_ms = median_of_runs(|_| {
        let ms = timed_in(
            &ns_ipt_big,
            iptables_restore,
            &noflush,
            &iptables_partial_update(&big_changed, BIG / 2),
        )?;
        timed_in(
            &ns_ipt_big,
            iptables_restore,
            &noflush,
            &iptables_partial_update(&big, BIG / 2),
        )?;
        Ok(ms)
    })?;
    // What the figure used to be: the whole table restored for the one change (a
    // kube-proxy full sync, which it runs at least hourly and after a failure).
    let big_changed_rules = iptables_rules(&big_changed);
    let ipt_full_update_ms = median_of_runs(|_| {
        let ms = timed_in(&ns_ipt_big, iptables_restore, &[], &big_changed_rules)?;
        timed_in(&ns_ipt_big, iptables_restore, &[], &big_rules)?;
        Ok(ms)
    })?;

    let ns_nft1 = node("bblbn1")?;
    let ns_nft_big = node("bblbnb")?;
    timed_in(&ns_nft1, "nft", &["-f", "-"], &nft_rules(&one))?;
    let mid_nft = nft_rules(&mid);
    let nft_mid_ms = median_of_runs(|_| {
        let ns = NetNs::new("bblbprobe");
        timed_in(&ns, "nft", &["-f", "-"], &mid_nft)
    })?;
    let big_nft = nft_rules(&big);
    let nft_big_ms = median_of_runs(|run| {
        if run + 1 == PROGRAM_RUNS {
            timed_in(&ns_nft_big, "nft", &["-f", "-"], &big_nft)
        } else {
            let ns = NetNs::new("bblbprobe");
            timed_in(&ns, "nft", &["-f", "-"], &big_nft)
        }
    })?;
    let nft_update_ms = median_of_runs(|_| {
        let ms = timed_in(
            &ns_nft_big,
            "nft",
            &["-f", "-"],
            &nft_update(&big[BIG / 2], &changed),
        )?;
        timed_in(
            &ns_nft_big,
            "nft",
            &["-f", "-"],
            &nft_update(&changed, &big[BIG / 2]),
        )?;
        Ok(ms)
    })?;

    // (c) the NodePort path: the NodePorts programmed beside the 10 000 Services, the
    // tc programs on the node's veth; the same Services with kube-proxy's NodePort rules.
    let np = target_node_port(&big);
    for s in big
        .iter()
        .filter(|s| node_port(s).is_some() || s.index + 1 == BIG)
    {
        let port = node_port(s).unwrap_or(np);
        lb_big
            .set_service(
                Frontend {
                    addr: Ipv4Addr::UNSPECIFIED,
                    port,
                    protocol: Protocol::Tcp,
                },
                &s.backends,
            )
            .map_err(|e| anyhow::anyhow!("NodePort {port}: {e}"))?;
    }
    lb_big
        .set_node_ips(&[NODE_EXT])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (np_ebpf_node, np_ebpf_out, dev) = nodeport_topology("bblbpe")?;
    np_ebpf_node
        .run(|| lb_big.attach_external(&dev))
        .map_err(|e| anyhow::anyhow!("attach the NodePort programs: {e}"))?;
    let (np_ipt_node, np_ipt_out, _) = nodeport_topology("bblbpi")?;
    timed_in(
        &np_ipt_node,
        iptables_restore,
        &[],
        &iptables_rules_with_node_ports(&big),
    )?;
    let (np_direct_node, np_direct_out, _) = nodeport_topology("bblbpd")?;
    let _nodes = [np_ebpf_node, np_ipt_node, np_direct_node];

    // (a) and (c) connect latency, configurations interleaved round by round.
    let mut configs = vec![
        Config {
            label: "direct to the backend",
            key: "direct_us_p50",
            ns: node("bblbd")?,
            cgroup: plain.clone(),
            target: backend(10),
            samples: vec![],
        },
        Config {
            label: "eBPF, N = 1",
            key: "ebpf_us_p50_n1",
            ns: node("bblbe1")?,
            cgroup: cg1.path().to_path_buf(),
            target: target(&one),
            samples: vec![],
        },
        Config {
            label: "eBPF, N = 10 000",
            key: "ebpf_us_p50_n10000",
            ns: node("bblbeb")?,
            cgroup: cg_big.path().to_path_buf(),
            target: target(&big),
            samples: vec![],
        },
        Config {
            label: "iptables, N = 1",
            key: "iptables_us_p50_n1",
            ns: ns_ipt1,
            cgroup: plain.clone(),
            target: target(&one),
            samples: vec![],
        },
        Config {
            label: "iptables, N = 10 000",
            key: "iptables_us_p50_n10000",
            ns: ns_ipt_big,
            cgroup: plain.clone(),
            target: target(&big),
            samples: vec![],
        },
        Config {
            label: "nftables, N = 1",
            key: "nft_us_p50_n1",
            ns: ns_nft1,
            cgroup: plain.clone(),
            target: target(&one),
            samples: vec![],
        },
        Config {
            label: "nftables, N = 10 000",
            key: "nft_us_p50_n10000",
            ns: ns_nft_big,
            cgroup: plain.clone(),
            target: target(&big),
            samples: vec![],
        },
        Config {
            label: "from outside: the node's address, backend port (no translation)",
            key: "direct_nodeport_us_p50",
            ns: np_direct_out,
            cgroup: plain.clone(),
            target: SocketAddrV4::new(NODE_EXT, BACKEND_PORT),
            samples: vec![],
        },
        Config {
            label: "from outside: NodePort, eBPF tc, N = 10 000",
            key: "ebpf_nodeport_us_p50",
            ns: np_ebpf_out,
            cgroup: plain.clone(),
            target: SocketAddrV4::new(NODE_EXT, np),
            samples: vec![],
        },
        Config {
            label: "from outside: NodePort, iptables, N = 10 000",
            key: "iptables_nodeport_us_p50",
            ns: np_ipt_out,
            cgroup: plain.clone(),
            target: SocketAddrV4::new(NODE_EXT, np),
            samples: vec![],
        },
    ];
    for client in 0..CLIENTS {
        println!("  connect latency: client {}/{CLIENTS}", client + 1);
        measure(&xtask, &mut configs, ROUNDS_PER_CLIENT)?;
    }
    let translated = lb1.stats().map_err(|e| anyhow::anyhow!("{e}"))?.translated
        + lb_big
            .stats()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .translated;
    if translated < (2 * CLIENTS * ROUNDS_PER_CLIENT) as u64 {
        bail!("the eBPF clients were not balanced ({translated} translated connects)");
    }

    let direct = percentile(&configs[0].samples, 50.0).unwrap_or(f64::NAN);
    report.header = ["path", "connect+close p50 µs", "p90 µs", "vs direct"]
        .map(String::from)
        .to_vec();
    for c in &configs {
        let p50 = percentile(&c.samples, 50.0).unwrap_or(f64::NAN);
        let p90 = percentile(&c.samples, 90.0).unwrap_or(f64::NAN);
        report.figure(c.key, r2(p50));
        report.rows.push(vec![
            c.label.to_string(),
            format!("{p50:.1}"),
            format!("{p90:.1}"),
            format!("{:.2}", p50 / direct),
        ]);
    }
    let prog = [
        ("ebpf_program_ms_n1000", ebpf_mid_ms),
        ("ebpf_program_ms_n10000", ebpf_big_ms),
        ("ebpf_update_ms_n10000", ebpf_update_ms),
        ("iptables_program_ms_n1000", ipt_mid_ms),
        ("iptables_program_ms_n10000", ipt_big_ms),
        ("iptables_update_noflush_ms_n10000", ipt_partial_ms),
        ("iptables_update_full_restore_ms_n10000", ipt_full_update_ms),
        ("nft_program_ms_n1000", nft_mid_ms),
        ("nft_program_ms_n10000", nft_big_ms),
        ("nft_partial_update_ms_n10000", nft_update_ms),
    ];
    for (k, v) in prog {
        report.figure(k, r2(v));
    }
    report.rows.push(vec![
        "**programming**".into(),
        "1 000 Services ms".into(),
        "10 000 Services ms".into(),
        "1 change at 10 000 ms".into(),
    ]);
    report.rows.push(vec![
        "berth eBPF map sync".into(),
        format!("{ebpf_mid_ms:.2}"),
        format!("{ebpf_big_ms:.2}"),
        format!("{ebpf_update_ms:.3}"),
    ]);
    report.rows.push(vec![
        format!("{iptables_family}-restore (kube-proxy partial sync: --noflush, changed chains)"),
        format!("{ipt_mid_ms:.0}"),
        format!("{ipt_big_ms:.0}"),
        format!("{ipt_partial_ms:.0}"),
    ]);
    report.rows.push(vec![
        format!("{iptables_family}-restore (kube-proxy full sync: whole table)"),
        "".into(),
        "".into(),
        format!("{ipt_full_update_ms:.0}"),
    ]);
    report.rows.push(vec![
        "nft -f (kube-proxy nftables mode: one transaction, changed chains)".into(),
        format!("{nft_mid_ms:.1}"),
        format!("{nft_big_ms:.0}"),
        format!("{nft_update_ms:.2}"),
    ]);
    report.figure("connects_per_config", (CLIENTS * ROUNDS_PER_CLIENT) as u64);
    report.figure("programming_runs", PROGRAM_RUNS as u64);
    report.notes = vec![
        format!("connect latency: {} timed connect()+close() per configuration from {CLIENTS} client processes (cargo xtask lb-client), interleaved connect by connect: before each (untimed) the client joins the configuration's cgroup and netns; each configuration has its own netns with its backends on lo; the eBPF ones a child cgroup with the programs attached.", CLIENTS * ROUNDS_PER_CLIENT),
        format!("iptables: {iptables_family} (faster here: {} {:.0} ms vs {} {:.0} ms for a {MID}-Service restore); rules as kube-proxy writes them, target Service last in KUBE-SERVICES, KUBE-NODEPORTS jump at the end; nat table only (kube-proxy also rewrites its filter-table chains each sync, empty for these Services, not included).", restore_ms[0].0, restore_ms[0].1, restore_ms[1].0, restore_ms[1].1),
        format!("one change = endpoint 2 of Service {} replaced. iptables: as kube-proxy's partial sync (pkg/proxy/iptables/proxier.go) — `iptables-restore --noflush --counters` declaring and rewriting KUBE-SERVICES (all {BIG} jumps), KUBE-NODEPORTS, KUBE-POSTROUTING, KUBE-MARK-MASQ and the changed Service's KUBE-SVC and KUBE-SEP chains only; the old KUBE-SEP chain is left (kube-proxy's large-cluster mode). The full-restore row is the whole table, as a full sync writes it.", BIG / 2),
        "nftables: kube-proxy's nftables-mode layout (service-ips verdict map, per-Service numgen chains, per-endpoint DNAT chains); one change = one `nft -f` transaction as its partial sync (pkg/proxy/nftables/proxier.go): add+flush+rules for the Service's endpoint chains and service chain, the replaced endpoint chain flushed (deleted by kube-proxy in a later sync); the map element is unchanged so not written. kube-proxy's `nft list chains` before the transaction is not timed.".into(),
        format!("programming figures are the median of {PROGRAM_RUNS} runs: from nothing, each run into a fresh netns (or a fresh eBPF map set); a change is undone (untimed) between runs."),
        "baselines: kube-proxy itself is not run; its iptables and nftables rule sets are generated here in kube-proxy's shapes and applied with this machine's iptables-restore / nft, in the same run as berth's eBPF.".into(),
        "IPVS is not measured: this kernel has no IP_VS and no modules.".into(),
        format!("NodePort path: the client in an outside netns wired to the node's netns by a veth; {NODE_PORTS} of the {BIG} Services are NodePorts (ports {NODE_PORT_BASE}-…, the target's last); eBPF: the tc programs on the node's veth (DNAT to a backend on the node's lo, reverse NAT of replies); iptables: kube-proxy's KUBE-NODEPORTS → KUBE-EXT-… → KUBE-SVC-… reached from KUBE-SERVICES' last rule (after the {BIG} ClusterIP rules); direct: the backend's port on the node's address."),
        "goal: eBPF <= 1.1 x direct, N = 10 000 within 5 % of N = 1; programming 10 000 Services < 200 ms, one change < 1 ms; ahead of nftables mode.".into(),
    ];
    drop(lb1);
    drop(lb_big);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_look_like_kube_proxy_and_target_is_last() {
        let rules = iptables_rules(&services(3));
        let svc_lines: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES -d"))
            .collect();
        assert_eq!(svc_lines.len(), 3);
        assert!(
            svc_lines[2].contains("10.96.0.12/32"),
            "target last: {}",
            svc_lines[2]
        );
        assert!(rules.contains("--mode random --probability 0.5000000000"));
        assert!(rules.contains("-j DNAT --to-destination 10.244.0.11:8080"));
        assert!(rules.trim_end().ends_with("COMMIT"));
    }

    #[test]
    fn node_port_rules_declare_their_chains_first_and_jump_last_to_the_target() {
        let svcs = services(3);
        let rules = iptables_rules_with_node_ports(&svcs);
        let first_rule = rules.find("\n-A ").expect("rules");
        let last_decl = rules.rfind("\n:").expect("chains");
        assert!(
            last_decl < first_rule,
            "every chain declared before the rules"
        );
        let jumps: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A KUBE-NODEPORTS"))
            .collect();
        assert_eq!(jumps.len(), 3);
        assert!(jumps[2].contains(&format!("--dport {}", target_node_port(&svcs))));
        assert!(rules.contains("-j KUBE-NODEPORTS"));
        assert!(rules.trim_end().ends_with("COMMIT"));
    }

    #[test]
    fn nft_rules_use_a_verdict_map_and_updates_touch_one_service() {
        let svcs = services(2);
        let rules = nft_rules(&svcs);
        assert!(rules.contains("10.96.0.11 . tcp . 80 : goto service-"));
        assert!(rules.contains("numgen random mod 2 vmap"));
        let mut changed = svcs[1];
        changed.backends[1] = backend(12);
        let update = nft_update(&svcs[1], &changed);
        // Both endpoint chains and the service chain ensured (add + flush), as
        // kube-proxy's ensureChain; the replaced endpoint chain only flushed.
        assert_eq!(
            update
                .lines()
                .filter(|l| l.starts_with("add chain"))
                .count(),
            3
        );
        assert_eq!(
            update
                .lines()
                .filter(|l| l.starts_with("flush chain"))
                .count(),
            4
        );
        assert!(!update.contains("delete chain"));
        assert!(
            !update.contains("service-ips"),
            "the map element is unchanged"
        );
        assert!(update.contains("dnat to 10.244.0.12:8080"));
    }

    #[test]
    fn the_iptables_partial_update_is_kube_proxys_noflush_shape() {
        let svcs = services(3);
        let mut after = svcs.clone();
        after[1].backends[1] = backend(12);
        let update = iptables_partial_update(&after, 1);
        let chains: Vec<&str> = update.lines().filter(|l| l.starts_with(':')).collect();
        // The four top-level chains, then the changed Service's SVC and two SEPs.
        assert_eq!(chains.len(), 7, "{chains:?}");
        assert!(chains.iter().all(|c| c.ends_with(" - [0:0]")));
        assert!(
            !update.contains(":PREROUTING"),
            "no built-in chain is declared (it would be flushed)"
        );
        let unchanged = chain_id("KUBE-SVC-", 0, 0);
        assert!(
            update
                .lines()
                .filter(|l| l.contains(&unchanged))
                .all(|l| l.starts_with("-A KUBE-SERVICES")),
            "an unchanged Service appears only as its KUBE-SERVICES jump"
        );
        assert_eq!(
            update
                .lines()
                .filter(|l| l.starts_with("-A KUBE-SERVICES -d"))
                .count(),
            3,
            "KUBE-SERVICES is rewritten whole"
        );
        assert!(update.contains("DNAT --to-destination 10.244.0.12:8080"));
        assert!(!update.contains("10.244.0.11:8080\""));
        let new_sep = sep_chain(&after[1], 1, &backend(12));
        let old_sep = sep_chain(&svcs[1], 1, &backend(11));
        assert_ne!(new_sep, old_sep, "a changed endpoint is a new chain");
        assert!(
            new_sep.len() <= 28,
            "iptables chain names are at most 28 characters"
        );
        assert!(update.trim_end().ends_with("COMMIT"));
        // The full table declares every Service's chains.
        assert_eq!(
            iptables_rules(&svcs)
                .lines()
                .filter(|l| l.starts_with(":KUBE-SEP-"))
                .count(),
            6
        );
    }
}
