//! `cargo xtask bench crossnode`: pod-to-pod TCP between two network-namespace
//! nodes on one L2 segment (a bridge in a third namespace), each node with its pod
//! bridge from berth-cni (the agent's own conflist: ipMasq with the cluster CIDR
//! exempt) and its routes from the agent's routing module (`berth_agent::routes`,
//! synced against Node objects made up for the bench) and its NodePort tc programs
//! with eBPF host routing attached as the agent attaches them. Four paths: two pods
//! on one node (the baseline), pods on two nodes routed directly (host-gw) with eBPF
//! host routing (the agent's default) and with the kernel forwarding, and the same
//! pods over VXLAN. For each: TCP request/response round trips (1 byte each way,
//! TCP_NODELAY) and bulk throughput (one stream), [`RUNS`] runs interleaved across
//! the paths; a run's figure is the p50 of its round trips or its throughput, and the
//! result the median over runs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_agent::routes::{Config, Mode, Router};
use berth_agent::service_lb::external;
use berth_cni::exec::{Attach, ConfList, Runner};
use berth_ebpf::SocketLb;
use berth_testkit::{NetNs, cable, forwarding_host};
use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use super::{Report, stats::percentile};
use crate::commands::build_ebpf;
use crate::util::{self, cmd, run_checked};

/// Runs per path (each one a batch of round trips and a bulk transfer).
const RUNS: usize = 7;
/// Round trips per run (after [`WARMUP`] unmeasured ones).
const ROUND_TRIPS: usize = 3000;
const WARMUP: usize = 200;
/// How long each bulk transfer lasts.
const BULK: Duration = Duration::from_millis(1500);
const ECHO_PORT: u16 = 7001;
const SINK_PORT: u16 = 7002;
const CLUSTER: &str = "10.231.0.0/16";

/// A bench node: its namespace, address and pod network.
struct BenchNode {
    ns: NetNs,
    name: &'static str,
    ip: Ipv4Addr,
    pod_cidr: &'static str,
    list: ConfList,
}

struct Pod {
    ns: NetNs,
    ip: Ipv4Addr,
}

impl BenchNode {
    fn new(name: &'static str, ip: &str, pod_cidr: &'static str, data: &Path) -> Result<Self> {
        let ns = forwarding_host(&format!("bx{name}"));
        let conf = berth_agent::network::default_conflist(
            pod_cidr,
            "berth0",
            &data.join(name),
            Some(CLUSTER),
        );
        let list = ConfList::parse(conf.to_string().as_bytes())
            .map_err(|e| anyhow::anyhow!("conflist: {e}"))?;
        Ok(Self {
            ns,
            name,
            ip: ip.parse().context("node IP")?,
            pod_cidr,
            list,
        })
    }

    fn pod(&self, runner: &Runner) -> Result<Pod> {
        let ns = NetNs::new("bxpod");
        let attach = Attach {
            container_id: format!("bench-{}", ns.name()),
            netns: ns.path(),
            ifname: "eth0".into(),
            args: String::new(),
            capability_args: serde_json::Map::new(),
        };
        let result = self
            .ns
            .run(|| runner.add(&self.list, &attach))
            .map_err(|e| anyhow::anyhow!("CNI ADD on {}: {e:?}", self.name))?;
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no address in {result}"))?;
        Ok(Pod { ns, ip })
    }

    /// The node's NodePort programs with eBPF host routing, as its agent attaches
    /// them (uplink and pod bridge); host routing starts off.
    fn dataplane(&self, object: &Path) -> Result<SocketLb> {
        let mut lb = SocketLb::load(object).map_err(|e| anyhow::anyhow!("{e}"))?;
        let cfg = external::Config {
            node_ip: Some(self.ip),
            nodeport_addresses: Vec::new(),
            pod_bridge: "berth0".into(),
            netns: None,
            host_routing: None,
        };
        self.ns
            .run(|| external::attach(&cfg, &mut lb, &mut Default::default(), true))
            .map_err(|e| anyhow::anyhow!("attaching on {}: {e}", self.name))?;
        Ok(lb)
    }

    fn router(&self, mode: Mode) -> Result<Router> {
        Ok(Router::new(Config {
            node_name: self.name.into(),
            node_ip: self.ip,
            mode,
            netns: Some(self.ns.path()),
        })?)
    }

    fn node(&self, created: &str, mac: [u8; 6]) -> Result<Node> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": self.name, "creationTimestamp": created,
                "annotations": {berth_agent::routes::VTEP_MAC_ANNOTATION:
                    berth_agent::routes::plan::format_mac(mac)}},
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": self.ip.to_string()}]},
        }))?)
    }
}

/// Starts the echo and sink servers of `pod`: threads that live as long as the
/// process (the listeners go with the pod's namespace at the end of the bench).
fn serve(pod: &Pod) -> Result<()> {
    for (port, echo) in [(ECHO_PORT, true), (SINK_PORT, false)] {
        let listener = pod
            .ns
            .run(|| TcpListener::bind((pod.ip, port)))
            .with_context(|| format!("bind {}:{port}", pod.ip))?;
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut conn = conn;
                    let _ = conn.set_nodelay(true);
                    let mut buf = vec![0u8; if echo { 1 } else { 1 << 20 }];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) if echo => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
    }
    Ok(())
}

/// One run's p50 round trip (µs) from `client` to `server`.
fn rtt_p50(client: &Pod, server: &Pod) -> Result<f64> {
    let to = SocketAddr::from((server.ip, ECHO_PORT));
    let samples = client.ns.run(|| -> Result<Vec<f64>> {
        let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .with_context(|| format!("connect {to}"))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut byte = [0u8; 1];
        let mut samples = Vec::with_capacity(ROUND_TRIPS);
        for i in 0..WARMUP + ROUND_TRIPS {
            let t = Instant::now();
            conn.write_all(b"x")?;
            conn.read_exact(&mut byte)?;
            if i >= WARMUP {
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(samples)
    })?;
    percentile(&samples, 50.0).context("no samples")
}

/// One run's bulk throughput (Gbit/s) from `client` to `server`.
fn gbps(client: &Pod, server: &Pod) -> Result<f64> {
    let to = SocketAddr::from((server.ip, SINK_PORT));
    client.ns.run(|| -> Result<f64> {
        let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .with_context(|| format!("connect {to}"))?;
        let buf = vec![0x5au8; 1 << 20];
        let mut sent: u64 = 0;
        let t = Instant::now();
        while t.elapsed() < BULK {
            conn.write_all(&buf)?;
            sent += buf.len() as u64;
        }
        let secs = t.elapsed().as_secs_f64();
        Ok(sent as f64 * 8.0 / secs / 1e9)
    })
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0).unwrap_or(f64::NAN)
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// The three paths' samples.
#[derive(Default)]
struct Samples {
    /// Same node, routed with eBPF host routing, VXLAN, routed by the kernel.
    rtt: [Vec<f64>; 4],
    gbps: [Vec<f64>; 4],
}

/// Runs the bench.
pub fn run() -> Result<Report> {
    if !util::is_root() {
        bail!("bench crossnode needs root (network namespaces)");
    }
    run_checked(&mut cmd(
        util::cargo(),
        ["build", "--release", "--quiet", "-p", "berth-cni"],
    ))?;
    build_ebpf::build()?;
    let object = util::ebpf_object();
    let runner = Runner::new(vec![util::target_dir().join("release")]);
    let data = util::target_dir().join("bench-crossnode");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).with_context(|| format!("mkdir {}", data.display()))?;

    let a = BenchNode::new("a", "192.168.231.1", "10.231.0.0/24", &data)?;
    let b = BenchNode::new("b", "192.168.231.2", "10.231.1.0/24", &data)?;
    cable(
        (&a.ns, "eth0", "192.168.231.1/24"),
        (&b.ns, "eth0", "192.168.231.2/24"),
    );
    let (a1, a2, b1) = (a.pod(&runner)?, a.pod(&runner)?, b.pod(&runner)?);
    serve(&a2)?;
    serve(&b1)?;
    let mut lbs = [a.dataplane(&object)?, b.dataplane(&object)?];
    let cluster: external::Cidr = CLUSTER.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let host_routing = |lbs: &mut [SocketLb], on: bool| -> Result<()> {
        for lb in lbs {
            lb.set_host_routing(on.then_some((cluster.addr, cluster.prefix)))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let routers = rt.block_on(async {
        let mut out = Vec::new();
        for mode in [Mode::Routed, Mode::Vxlan] {
            out.push((mode, a.router(mode)?, b.router(mode)?));
        }
        anyhow::Ok(out)
    })?;
    let sync = |mode: Mode| -> Result<()> {
        let (_, ra, rb) = routers
            .iter()
            .find(|(m, _, _)| *m == mode)
            .context("router")?;
        let nodes = vec![
            a.node("2030-01-01T00:00:01Z", ra.vtep_mac())?,
            b.node("2030-01-01T00:00:02Z", rb.vtep_mac())?,
        ];
        rt.block_on(async {
            for r in [ra, rb] {
                let plan = r.sync(&nodes).await?;
                if plan.routes.len() != 1 {
                    bail!("{mode}: expected one route, got {plan:?}");
                }
            }
            Ok(())
        })
    };

    let bar = indicatif::ProgressBar::new(RUNS as u64);
    bar.set_message("same node, routed (eBPF, kernel), VXLAN");
    let mut s = Samples::default();
    let routed_before = lbs[0]
        .stats()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .host_routed;
    let mut ebpf_routed = 0;
    for _ in 0..RUNS {
        s.rtt[0].push(rtt_p50(&a1, &a2)?);
        s.gbps[0].push(gbps(&a1, &a2)?);
        sync(Mode::Routed)?;
        host_routing(&mut lbs, true)?;
        let before = lbs[0]
            .stats()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .host_routed;
        s.rtt[1].push(rtt_p50(&a1, &b1)?);
        s.gbps[1].push(gbps(&a1, &b1)?);
        ebpf_routed += lbs[0]
            .stats()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .host_routed
            - before;
        host_routing(&mut lbs, false)?;
        s.rtt[3].push(rtt_p50(&a1, &b1)?);
        s.gbps[3].push(gbps(&a1, &b1)?);
        host_routing(&mut lbs, true)?;
        sync(Mode::Vxlan)?;
        s.rtt[2].push(rtt_p50(&a1, &b1)?);
        s.gbps[2].push(gbps(&a1, &b1)?);
        bar.inc(1);
    }
    bar.finish();
    let vxlan_host_routed = lbs[0]
        .stats()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .host_routed
        - routed_before
        - ebpf_routed;
    if ebpf_routed < (RUNS * ROUND_TRIPS) as u64 {
        bail!(
            "eBPF host routing forwarded {ebpf_routed} packets on node a, fewer than the round trips"
        );
    }
    drop(lbs);
    let vxlan_mtu = a.ns.ip(&[
        "-o",
        "link",
        "show",
        "dev",
        berth_agent::routes::VXLAN_DEVICE,
    ]);
    rt.block_on(async {
        for (_, ra, rb) in &routers {
            ra.teardown().await?;
            rb.teardown().await?;
        }
        anyhow::Ok(())
    })?;
    drop((a1, a2, b1));
    let _ = std::fs::remove_dir_all(&data);

    let rtt: Vec<f64> = s.rtt.iter().map(|v| median(v)).collect();
    let gb: Vec<f64> = s.gbps.iter().map(|v| median(v)).collect();
    let mut report = Report::default();
    report.figure("same_node_rtt_us_p50", round(rtt[0], 1));
    report.figure("routed_rtt_us_p50", round(rtt[1], 1));
    report.figure("vxlan_rtt_us_p50", round(rtt[2], 1));
    report.figure("same_node_gbps", round(gb[0], 2));
    report.figure("routed_gbps", round(gb[1], 2));
    report.figure("vxlan_gbps", round(gb[2], 2));
    report.figure("routed_kernel_rtt_us_p50", round(rtt[3], 1));
    report.figure("routed_kernel_gbps", round(gb[3], 2));
    report.figure("routed_kernel_vs_same_node_rtt", round(rtt[3] / rtt[0], 2));
    report.figure("host_routed_packets_node_a", ebpf_routed);
    report.figure("host_routed_packets_vxlan", vxlan_host_routed);
    report.figure("routed_vs_same_node_rtt", round(rtt[1] / rtt[0], 2));
    report.figure("vxlan_vs_routed_rtt", round(rtt[2] / rtt[1], 2));
    report.figure("routed_vs_same_node_gbps", round(gb[1] / gb[0], 2));
    report.figure("vxlan_vs_routed_gbps", round(gb[2] / gb[1], 2));
    report.figure("runs", RUNS as u64);
    report.header = [
        "path",
        "RTT p50 µs",
        "RTT / same node",
        "throughput Gbit/s",
        "throughput / same node",
    ]
    .map(String::from)
    .to_vec();
    for (i, label) in [
        (0, "same node (baseline)"),
        (
            1,
            "two nodes, routed (host-gw), eBPF host routing (the agent's default)",
        ),
        (
            3,
            "two nodes, routed (host-gw), kernel forwarding (--ebpf-host-routing=false)",
        ),
        (2, "two nodes, VXLAN"),
    ] {
        report.rows.push(vec![
            label.into(),
            format!("{:.1}", rtt[i]),
            format!("{:.2}", rtt[i] / rtt[0]),
            format!("{:.2}", gb[i]),
            format!("{:.2}", gb[i] / gb[0]),
        ]);
    }
    report.notes = vec![
        format!("{RUNS} runs per path, interleaved (same node, routed with eBPF host routing, routed by the kernel, VXLAN, repeat); each run: {ROUND_TRIPS} TCP round trips of 1 byte each way (TCP_NODELAY, after {WARMUP} unmeasured) and one {} s single-stream bulk transfer (1 MiB writes); figures are the median over runs of each run's p50 RTT and throughput.", BULK.as_secs_f64()),
        "nodes: two network namespaces joined point to point by a veth pair (their eth0, MTU 1500, one /24: the routed path needs one L2 segment); pods attached by berth-cni with the agent's own conflist (ipMasq, cluster CIDR exempt), routes and the VXLAN device (VNI 1, UDP 8472, learning off) programmed by berth_agent::routes from Node objects.".into(),
        format!("VXLAN device: {}", vxlan_mtu.split("qdisc").next().unwrap_or_default().trim()),
        "pods keep MTU 1500 in VXLAN mode: the node answers the first oversized segment with ICMP fragmentation-needed and the pod's TCP lowers its MSS (path MTU discovery, local to the node).".into(),
        "eBPF host routing (berth_agent::service_lb::external::attach, as the agent does it: the NodePort tc programs on each node's eth0 and pod bridge, the cluster CIDR in HOST_ROUTING): pod-to-pod packets between those interfaces are forwarded by a FIB lookup and bpf_redirect_neigh in tc ingress; the kernel row turns it off (HOST_ROUTING cleared) for the same pods and routes. Segmented (GSO) packets take the eBPF path too (their segments checked against the MTU), so the bulk transfer's packets do as well; VXLAN traffic leaves through the tunnel device, which has no program, so it is the kernel's too.".into(),
        "goal: routed within 1.2 x of same-node RTT; VXLAN's overhead reported against routed.".into(),
        "everything runs on this machine's cores: client, server and both nodes' kernels share them, so throughput is CPU-bound and the ratios matter more than the absolute figures.".into(),
    ];
    Ok(report)
}
