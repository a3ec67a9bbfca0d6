//! `cargo xtask bench dns`: the agent's cluster DNS against dnsmasq serving the same
//! names, in the same run, on loopback.
//!
//! - 10 000 Services (cluster IPs from berth-server) are created; a release
//!   `berth-agent` with its DNS on `127.0.0.1` follows them; dnsmasq is given the same
//!   Service names, 1 000 pod names and their addresses in a hosts file
//!   (`--addn-hosts`, `--local=/cluster.local/` so the rest is NXDOMAIN, as berth
//!   answers it).
//! - The query mix (the same file for both): 70 % Service names, 15 % pod names
//!   (`a-b-c-d.bench.pod.cluster.local`), 15 % names that do not exist.
//! - qps: `dnsperf` at full speed (100 queries outstanding, 10 s); p99: `dnsperf -Q
//!   10000 -v` (a fixed 10 000 qps offered load, every query's latency); the median of
//!   three trials each.
//! - update p99: a Service created through the apiserver → its name answered by the
//!   agent (polled every millisecond), 100 Services one after another.
//! - the DNS part's memory: the agent's RSS with 10 000 Services, with DNS and with
//!   `--dns=false`. With the eBPF object built the agent runs its socket LB in both,
//!   so the Service watch is in both and the difference is the DNS alone; without
//!   it, `--dns=false` drops the watch too and the difference includes it.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, UdpSocket},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use berth_testkit::{Agent, ChildGuard};
use bytes::Bytes;
use hyper::Method;

use super::{
    Report,
    apiserver::{Conn, Target, namespace, rss_mb},
    stats::{median, percentile},
};
use crate::util;

const SERVICES: usize = 10_000;
const PODS: usize = 1_000;
const QUERIES: usize = 20_000;
const UPDATES: usize = 100;
const TRIALS: usize = 3;
const NS: &str = "bench";
const CLIENTS: usize = 8;

fn service(name: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{{"ports":[{{"name":"http","port":80}}]}}}}"#
    ))
}

fn free_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Creates `svc-0..n` in the bench namespace and returns name → cluster IP.
async fn create_services(target: &Target, n: usize) -> Result<BTreeMap<String, Ipv4Addr>> {
    let mut conn = Conn::connect(target).await?;
    namespace(&mut conn, NS).await?;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut conn = Conn::connect(target).await?;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (c..n).step_by(CLIENTS) {
                let name = format!("svc-{i}");
                let body = conn
                    .call(
                        Method::POST,
                        &format!("/api/v1/namespaces/{NS}/services"),
                        "application/json",
                        service(&name),
                    )
                    .await?;
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                let ip: Ipv4Addr = v["spec"]["clusterIP"]
                    .as_str()
                    .context("a cluster IP")?
                    .parse()?;
                out.push((name, ip));
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// One DNS query for `name` A; true when it is answered NOERROR with an address.
fn answered(sock: &UdpSocket, id: u16, name: &str) -> bool {
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    let Ok(qname) = Name::from_ascii(name) else {
        return false;
    };
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.add_query(Query::query(qname, RecordType::A));
    let Ok(bytes) = msg.to_vec() else {
        return false;
    };
    if sock.send(&bytes).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    loop {
        let Ok(n) = sock.recv(&mut buf) else {
            return false;
        };
        let Ok(reply) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if reply.metadata.id != id {
            continue; // a late answer to an earlier poll
        }
        return reply.metadata.response_code == ResponseCode::NoError && !reply.answers.is_empty();
    }
}

fn dns_socket(port: u16) -> Result<UdpSocket> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(sock)
}

/// Waits until `name` is answered on `port`.
fn wait_answer(port: u16, name: &str, timeout: Duration) -> Result<Duration> {
    let sock = dns_socket(port)?;
    let started = Instant::now();
    let mut id = 0u16;
    while started.elapsed() < timeout {
        id = id.wrapping_add(1);
        if answered(&sock, id, name) {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("{name} not answered on 127.0.0.1:{port} within {timeout:?}")
}

/// dnsperf's figures: queries per second, and every latency (ms) with `-v`.
struct Perf {
    qps: f64,
    latencies_ms: Vec<f64>,
    lost: u64,
}

fn dnsperf(port: u16, queries: &Path, rate: Option<u32>) -> Result<Perf> {
    let mut cmd = util::cmd(
        "dnsperf",
        ["-s", "127.0.0.1", "-p", &port.to_string(), "-l", "10"],
    );
    cmd.arg("-d").arg(queries);
    if let Some(r) = rate {
        cmd.args(["-Q", &r.to_string(), "-v"]);
    }
    let out = cmd
        .output()
        .context("dnsperf (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!("dnsperf: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let latencies_ms = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect();
    Ok(Perf {
        qps: value("Queries per second:").context("dnsperf printed no qps")?,
        latencies_ms,
        lost: value("Queries lost:").unwrap_or(0.0) as u64,
    })
}

/// Median qps and median p99 (ms) over [`TRIALS`] trials, and queries lost.
fn measure(port: u16, queries: &Path) -> Result<(f64, f64, u64)> {
    let (mut qps, mut p99, mut lost) = (Vec::new(), Vec::new(), 0);
    for _ in 0..TRIALS {
        let full = dnsperf(port, queries, None)?;
        qps.push(full.qps);
        lost += full.lost;
        let paced = dnsperf(port, queries, Some(10_000))?;
        p99.push(percentile(&paced.latencies_ms, 99.0).unwrap_or(f64::NAN));
        lost += paced.lost;
    }
    Ok((median(qps), median(p99), lost))
}

struct Dnsmasq {
    _child: ChildGuard,
}

impl Dnsmasq {
    fn start(port: u16, hosts: &Path) -> Result<Self> {
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--local=/cluster.local/",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--cache-size=10000",
                &format!("--port={port}"),
            ])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("dnsmasq (cargo xtask setup installs dnsmasq-base)")?;
        let d = Self {
            _child: ChildGuard(child),
        };
        wait_answer(
            port,
            "svc-0.bench.svc.cluster.local",
            Duration::from_secs(10),
        )?;
        Ok(d)
    }
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, (i / 250) as u8, (i % 250 + 2) as u8)
}

pub fn run() -> Result<Report> {
    util::run_checked(&mut util::cmd(
        util::cargo(),
        [
            "build",
            "--release",
            "--quiet",
            "-p",
            "berth-agent",
            "-p",
            "berth-runtime",
            "--bins",
        ],
    ))?;
    let (release, server) = super::release_apiserver("dns")?;
    let data = util::target_dir().join("bench-dns");
    let target = Target {
        port: server.port(),
        ca: server.ca(),
        data_dir: None,
        pid: server.pid().context("server pid")?,
        etcd_port: None,
        etcd_pids: Vec::new(),
        secrets_only: false,
        core_only: false,
    };
    let rt = tokio::runtime::Runtime::new()?;
    eprintln!("bench dns: creating {SERVICES} Services");
    let ips = rt.block_on(create_services(&target, SERVICES))?;

    // The same names for both servers, and one query file.
    let domain = "cluster.local";
    let mut hosts = String::new();
    for (name, ip) in &ips {
        hosts.push_str(&format!("{ip} {name}.{NS}.svc.{domain}\n"));
    }
    for i in 0..PODS {
        let ip = pod_ip(i);
        hosts.push_str(&format!(
            "{ip} {}.{NS}.pod.{domain}\n",
            ip.to_string().replace('.', "-")
        ));
    }
    let hosts_file = data.join("hosts");
    std::fs::write(&hosts_file, hosts)?;
    let mut queries = String::new();
    for q in 0..QUERIES {
        let name = match q % 20 {
            0..14 => format!("svc-{}.{NS}.svc.{domain}", (q * 7919) % SERVICES),
            14..17 => format!(
                "{}.{NS}.pod.{domain}",
                pod_ip((q * 31) % PODS).to_string().replace('.', "-")
            ),
            _ => format!("nope-{q}.{NS}.svc.{domain}"),
        };
        queries.push_str(&format!("{name} A\n"));
    }
    let query_file = data.join("queries");
    std::fs::write(&query_file, queries)?;

    // berth: the agent's DNS on loopback.
    let dns_port = free_port()?;
    let dns_args = [
        "--dns-bind-address",
        "127.0.0.1",
        "--dns-port",
        &dns_port.to_string(),
        "--dns-upstream",
        "127.0.0.1:9",
    ];
    let agent_bin = release.join("berth-agent");
    let lb = berth_testkit::tools::ebpf_object().exists();
    let mut agent = Agent::start_bin(
        &agent_bin,
        "bench-dns",
        &server.kubeconfig(),
        &data,
        &dns_args,
    );
    let last = format!("svc-{}.{NS}.svc.{domain}", SERVICES - 1);
    let synced = wait_answer(dns_port, &last, Duration::from_secs(120))
        .with_context(|| format!("agent log: {}", agent.log_file().display()))?;
    eprintln!("bench dns: the agent answers all {SERVICES} Services ({synced:?} after start)");
    std::thread::sleep(Duration::from_secs(2));
    let rss_dns = rss_mb(agent.pid().context("agent pid")?);
    eprintln!("bench dns: dnsperf against berth");
    let (berth_qps, berth_p99, berth_lost) = measure(dns_port, &query_file)?;

    // Update latency: create → answered.
    let mut updates = Vec::new();
    rt.block_on(async {
        let mut conn = Conn::connect(&target).await?;
        for i in 0..UPDATES {
            let name = format!("new-{i}");
            let started = Instant::now();
            conn.call(
                Method::POST,
                &format!("/api/v1/namespaces/{NS}/services"),
                "application/json",
                service(&name),
            )
            .await?;
            let fqdn = format!("{name}.{NS}.svc.{domain}");
            tokio::task::spawn_blocking(move || {
                wait_answer(dns_port, &fqdn, Duration::from_secs(10))
            })
            .await??;
            updates.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::Ok(())
    })?;
    let update_p99 = percentile(&updates, 99.0).unwrap_or(f64::NAN);
    let update_p50 = percentile(&updates, 50.0).unwrap_or(f64::NAN);

    // The same agent without DNS, for the DNS part's memory.
    agent.kill();
    drop(agent);
    let plain = Agent::start_bin(
        &agent_bin,
        "bench-dns",
        &server.kubeconfig(),
        &data,
        &["--dns=false"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && !std::fs::read_to_string(plain.log_file())
            .unwrap_or_default()
            .contains("kubelet API serving")
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let rss_plain = rss_mb(plain.pid().context("agent pid")?);
    drop(plain);

    // dnsmasq with the same names.
    let dnsmasq_port = free_port()?;
    let dnsmasq = Dnsmasq::start(dnsmasq_port, &hosts_file)?;
    eprintln!("bench dns: dnsperf against dnsmasq");
    let (dnsmasq_qps, dnsmasq_p99, dnsmasq_lost) = measure(dnsmasq_port, &query_file)?;
    drop(dnsmasq);
    drop(server);

    let dns_rss = rss_dns - rss_plain;
    let round = |v: f64, d: i32| (v * 10f64.powi(d)).round() / 10f64.powi(d);
    let mut r = Report::default();
    r.figure("services", SERVICES as u64);
    r.figure("berth_qps", round(berth_qps, 0));
    r.figure("dnsmasq_qps", round(dnsmasq_qps, 0));
    r.figure("berth_p99_ms", round(berth_p99, 3));
    r.figure("dnsmasq_p99_ms", round(dnsmasq_p99, 3));
    r.figure("berth_update_ms_p99", round(update_p99, 1));
    r.figure("agent_dns_rss_mb", round(dns_rss, 1));
    r.header = ["measure", "berth agent", "dnsmasq", "goal"]
        .map(String::from)
        .to_vec();
    r.rows = vec![
        vec![
            "queries/s (dnsperf, 100 outstanding)".into(),
            format!("{berth_qps:.0}"),
            format!("{dnsmasq_qps:.0}"),
            format!("≥ dnsmasq (ratio {:.2})", berth_qps / dnsmasq_qps),
        ],
        vec![
            "p99 latency at 10 000 qps".into(),
            format!("{berth_p99:.3} ms"),
            format!("{dnsmasq_p99:.3} ms"),
            "< 1 ms".into(),
        ],
        vec![
            "Service created → answered (p50 / p99)".into(),
            format!("{update_p50:.1} / {update_p99:.1} ms"),
            "— (static hosts file)".into(),
            "p99 < 100 ms".into(),
        ],
        vec![
            format!("agent RSS with {SERVICES} Services, DNS on − off"),
            format!("{rss_dns:.1} − {rss_plain:.1} = {dns_rss:.1} MB"),
            "".into(),
            "< 20 MB".into(),
        ],
    ];
    r.notes = vec![
        format!(
            "{SERVICES} ClusterIP Services and {PODS} pod names; query mix 70 % Service names, 15 % pod names, 15 % NXDOMAIN; UDP on 127.0.0.1; dnsperf 10 s per trial, median of {TRIALS} trials"
        ),
        format!("queries lost: berth {berth_lost}, dnsmasq {dnsmasq_lost}"),
        "dnsmasq serves the names from a hosts file (--addn-hosts) with --local=/cluster.local/; berth answers from its Service watch".into(),
        "the machine has 2 vCPUs shared by dnsperf and the server under test".into(),
        "baseline: Debian's dnsmasq, run in the same run by the same dnsperf with the same query file; no quoted figures".into(),
        format!(
            "memory: the eBPF socket LB {} in both agent runs ({})",
            if lb { "ran" } else { "did not run" },
            if lb { "the Service watch is in both: the difference is the DNS alone" } else { "the difference includes the Service watch" }
        ),
    ];
    Ok(r)
}
