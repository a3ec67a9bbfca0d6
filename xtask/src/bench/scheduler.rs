//! `cargo xtask bench scheduler`: Kubernetes' scheduler_perf "SchedulingBasic
//! 5000Nodes_10000Pods" against berth. A release berth-server serves the API alone; a
//! release load process (`xtask scheduler-load`) creates 5 000 hollow nodes and
//! 10 000 pending pods (scheduler_perf's default pod: 100m CPU, 500Mi), watches the
//! pods, and only then starts a scheduler-only `berth-server --apiserver=false`, so:
//! - `pods_per_s`: 10 000 pods / the time from the first binding to the last, as seen
//!   by the watch (bindings through the real apiserver included);
//! - `p99_ms` / `p50_ms`: scheduler_perf's latency, the scheduling attempt (filters,
//!   scores, assume), from the scheduler's `scheduler_scheduling_attempt_duration_seconds`
//!   histogram scraped at the end (bucket upper bounds);
//! - `create_to_bound_p99_ms`: then, with the scheduler running, 3 000 more pods
//!   created open-loop at 1 000/s: per-pod latency from the create's acknowledgement to
//!   the watch event showing it bound (apiserver, watch and queueing included).
//!
//! Baseline: kube-scheduler is not installable on this machine (no Debian package, no
//! network beyond the package mirrors), so the table quotes scheduler_perf's threshold
//! for kube-scheduler on this test (680 pods/s) as the anchor and the ratio is to it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};

use super::Report;
use super::apiserver::{Conn, Target, namespace, rss_mb};
use super::stats::percentile;

const NODES: usize = 5_000;
const PODS: usize = 10_000;
const LATENCY_PODS: usize = 3_000;
const LATENCY_RATE: f64 = 1_000.0;
const CLIENTS: usize = 16;
/// scheduler_perf's threshold for kube-scheduler on SchedulingBasic 5000Nodes_10000Pods.
const ANCHOR_PODS_PER_S: f64 = 680.0;

/// Arguments of the load process.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub target: Target,
    /// The admin kubeconfig the scheduler process uses.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The berth-server binary to start as the scheduler.
    #[arg(long)]
    pub server_bin: PathBuf,
}

fn node(i: usize) -> (Bytes, Bytes) {
    let name = format!("node-{i}");
    let create = format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"kubernetes.io/hostname":"{name}","topology.kubernetes.io/zone":"zone-{}"}}}}}}"#,
        i % 10
    );
    let status = r#"{"status":{"capacity":{"cpu":"32","memory":"256Gi","pods":"110"},"allocatable":{"cpu":"32","memory":"256Gi","pods":"110"},"conditions":[{"type":"Ready","status":"True"}]}}"#;
    (Bytes::from(create), Bytes::from(status.to_owned()))
}

fn pod(name: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"containers":[{{"name":"pause","image":"registry.k8s.io/pause:3.10","resources":{{"requests":{{"cpu":"100m","memory":"500Mi"}},"limits":{{"cpu":"100m","memory":"500Mi"}}}}}}]}}}}"#
    ))
}

pub fn run() -> Result<Report> {
    let (release, server) = super::release_apiserver("scheduler")?;
    let pid = server.pid().context("server pid")?;
    let out = std::process::Command::new(release.join("xtask"))
        .arg("scheduler-load")
        .args([
            "--port",
            &server.port().to_string(),
            "--pid",
            &pid.to_string(),
        ])
        .arg("--ca")
        .arg(server.ca())
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .arg("--server-bin")
        .arg(release.join("berth-server"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run xtask scheduler-load")?;
    if !out.status.success() {
        bail!("scheduler-load failed ({})", out.status);
    }
    Report::from_value(&serde_json::from_slice(&out.stdout).context("scheduler-load output")?)
}

pub fn load(args: &LoadArgs) -> Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(measure(args))?;
    println!("{}", report.to_value());
    Ok(std::process::ExitCode::SUCCESS)
}

/// Runs `n` requests built by `make(i)` over CLIENTS connections.
pub(super) async fn fan_out<F>(target: &Target, n: usize, make: F) -> Result<()>
where
    F: Fn(usize) -> Vec<(Method, String, &'static str, Bytes)> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut conn = Conn::connect(target).await?;
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(CLIENTS) {
                for (method, path, media, body) in make(i) {
                    conn.call(method, &path, media, body).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Bound pods as a watch sees them: pod name → when the binding arrived.
type Bound = Arc<Mutex<HashMap<String, Instant>>>;

async fn watch_bindings(
    target: &Target,
    rv: &str,
    bound: Bound,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut conn = Conn::connect(target).await?;
    let path =
        format!("/api/v1/namespaces/sched/pods?watch=1&resourceVersion={rv}&timeoutSeconds=3600");
    let req = conn.request(Method::GET, &path, "application/json", Bytes::new())?;
    conn.send.ready().await?;
    let resp = conn.send.send_request(req).await?;
    if resp.status() != StatusCode::OK {
        bail!("watch: {}", resp.status());
    }
    tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            let now = Instant::now();
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                if let Ok(ev) = serde_json::from_slice::<serde_json::Value>(&buf[..nl])
                    && ev
                        .pointer("/object/spec/nodeName")
                        .and_then(|v| v.as_str())
                        .is_some_and(|n| !n.is_empty())
                    && let Some(name) = ev.pointer("/object/metadata/name").and_then(|v| v.as_str())
                    && let Ok(mut b) = bound.lock()
                {
                    b.entry(name.to_owned()).or_insert(now);
                }
                buf.drain(..=nl);
            }
        }
    });
    Ok(())
}

async fn wait_bound(bound: &Bound, names: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = bound.lock().map(|b| b.len()).unwrap_or(0);
        if n >= names {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {n} of {names} pods bound within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn measure(args: &LoadArgs) -> Result<Report> {
    let target = &args.target;
    let mut admin = Conn::connect(target).await?;
    namespace(&mut admin, "sched").await?;
    let t = Instant::now();
    fan_out(target, NODES, |i| {
        let (create, status) = node(i);
        vec![
            (
                Method::POST,
                "/api/v1/nodes".into(),
                "application/json",
                create,
            ),
            (
                Method::PATCH,
                format!("/api/v1/nodes/node-{i}/status"),
                "application/merge-patch+json",
                status,
            ),
        ]
    })
    .await?;
    eprintln!(
        "bench scheduler: {NODES} nodes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let list = admin
        .call(
            Method::GET,
            "/api/v1/namespaces/sched/pods?limit=1",
            "application/json",
            Bytes::new(),
        )
        .await?;
    let rv = serde_json::from_slice::<serde_json::Value>(&list)?
        .pointer("/metadata/resourceVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("0")
        .to_owned();
    let bound: Bound = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    watch_bindings(target, &rv, bound.clone(), stop.clone()).await?;
    let t = Instant::now();
    fan_out(target, PODS, |i| {
        vec![(
            Method::POST,
            "/api/v1/namespaces/sched/pods".into(),
            "application/json",
            pod(&format!("p-{i}")),
        )]
    })
    .await?;
    eprintln!(
        "bench scheduler: {PODS} pending pods in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The scheduler, alone in its process.
    let started = Instant::now();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(&args.server_bin)
        .args([
            "--apiserver=false",
            "--controllers=false",
            "--leader-elect=false",
            "--kubeconfig",
        ])
        .arg(&args.kubeconfig)
        .arg(format!("--metrics-bind-address=127.0.0.1:{metrics_port}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("start the scheduler")?;
    let scheduler = berth_testkit::ChildGuard(child);
    wait_bound(&bound, PODS, Duration::from_secs(600)).await?;
    let (first, last) = {
        let b = bound.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        let first = b.values().min().copied().unwrap_or(started);
        let last = b.values().max().copied().unwrap_or(started);
        (first, last)
    };
    let span = last.duration_since(first).as_secs_f64().max(1e-3);
    let pods_per_s = PODS as f64 / span;
    let to_first = first.duration_since(started).as_secs_f64();
    let sched_rss = rss_mb(scheduler.id());
    eprintln!(
        "bench scheduler: {PODS} pods bound in {span:.2} s ({pods_per_s:.0}/s); first binding {to_first:.2} s after start"
    );

    // Latency at a steady 1 000 pods/s with the scheduler running.
    let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let period = Duration::from_secs_f64(CLIENTS as f64 / LATENCY_RATE);
    let begin = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut conn = Conn::connect(target).await?;
        let acks = acks.clone();
        tasks.push(tokio::spawn(async move {
            let mut due = begin + period.mul_f64(c as f64 / CLIENTS as f64);
            for i in (c..LATENCY_PODS).step_by(CLIENTS) {
                tokio::time::sleep_until(due.into()).await;
                let name = format!("l-{i}");
                conn.call(
                    Method::POST,
                    "/api/v1/namespaces/sched/pods",
                    "application/json",
                    pod(&name),
                )
                .await?;
                if let Ok(mut a) = acks.lock() {
                    a.insert(name, Instant::now());
                }
                due += period;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    wait_bound(&bound, PODS + LATENCY_PODS, Duration::from_secs(120)).await?;
    stop.store(true, Ordering::Relaxed);
    let latencies: Vec<f64> = {
        let b = bound.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        let a = acks.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        a.iter()
            .filter_map(|(name, at)| {
                b.get(name)
                    .map(|t| t.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    let p50 = percentile(&latencies, 50.0).unwrap_or(f64::NAN);
    let p99 = percentile(&latencies, 99.0).unwrap_or(f64::NAN);
    let metrics = scrape(metrics_port).await?;
    let attempt_p50 = bucket_quantile(&metrics, 0.50).unwrap_or(f64::NAN);
    let attempt_p99 = bucket_quantile(&metrics, 0.99).unwrap_or(f64::NAN);
    drop(scheduler);

    let mut report = Report::default();
    report.figure("nodes", NODES);
    report.figure("pods", PODS);
    report.figure("pods_per_s", pods_per_s.round());
    // scheduler_perf's latency: the scheduling attempt (filter, score, assume), from the
    // scheduler's own histogram (upper bound of the bucket holding the quantile).
    report.figure("p99_ms", attempt_p99);
    report.figure("p50_ms", attempt_p50);
    report.figure("create_to_bound_p99_ms", (p99 * 10.0).round() / 10.0);
    report.figure("create_to_bound_p50_ms", (p50 * 10.0).round() / 10.0);
    report.figure("anchor_pods_per_s", ANCHOR_PODS_PER_S);
    report.figure(
        "ratio_to_anchor",
        (pods_per_s / ANCHOR_PODS_PER_S * 100.0).round() / 100.0,
    );
    report.figure("scheduler_rss_mb", (sched_rss * 10.0).round() / 10.0);
    report.header = ["figure", "berth", "goal", "kube-scheduler (anchor)"]
        .map(String::from)
        .to_vec();
    report.rows = vec![
        vec![
            format!("throughput, {NODES} nodes / {PODS} pods"),
            format!("{pods_per_s:.0} pods/s"),
            "≥ 2000 pods/s".into(),
            format!(
                "{ANCHOR_PODS_PER_S:.0} pods/s (scheduler_perf threshold) — ratio {:.2}",
                pods_per_s / ANCHOR_PODS_PER_S
            ),
        ],
        vec![
            "scheduling attempt (scheduler_perf's latency), p50 / p99".into(),
            format!("≤ {attempt_p50} / ≤ {attempt_p99} ms"),
            "p99 < 50 ms".into(),
            "".into(),
        ],
        vec![
            format!("create → bound latency at {LATENCY_RATE:.0} pods/s, p50 / p99"),
            format!("{p50:.1} / {p99:.1} ms"),
            "".into(),
            "".into(),
        ],
        vec![
            "scheduler RSS after the run".into(),
            format!("{sched_rss:.0} MB"),
            "".into(),
            "".into(),
        ],
    ];
    report.notes = vec![
        format!(
            "Pods pending before the scheduler starts; throughput counts from its first binding to its last, as a watch sees them; first binding came {to_first:.1} s after the process started (cache sync of {NODES} nodes and {PODS} pods)."
        ),
        "kube-scheduler cannot be installed here; its scheduler_perf threshold is the anchor."
            .into(),
        "2 shared vCPUs: the apiserver, the scheduler and this load process share them.".into(),
    ];
    Ok(report)
}

/// The scheduler's `/metrics` (plain HTTP).
async fn scrape(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await?;
    Ok(out)
}

/// The quantile `q` of the `scheduled` attempts, as the upper bound (ms) of the
/// histogram bucket that holds it.
fn bucket_quantile(metrics: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("scheduler_scheduling_attempt_duration_seconds_bucket")
                && l.contains("result=\"scheduled\"")
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    let (le, _) = buckets.iter().find(|(_, c)| *c >= total * q)?;
    Some((le * 1000.0 * 1000.0).round() / 1000.0)
}
