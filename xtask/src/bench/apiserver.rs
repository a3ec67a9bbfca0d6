//! `cargo xtask bench apiserver`: a release berth-server on a fresh data dir, driven by
//! the `kube` client (the client berth's own components use):
//! - idle RSS after start;
//! - 100 watchers on a namespace, and for 30 s 16 clients looping over
//!   create / get / update (merge patch) / list-of-1000 pods: per-verb p99 latency and
//!   watch delivery latency (from the write's acknowledgement to each watcher's event);
//! - durable creates/s with 16 clients for 10 s (every create is fsync'd before its
//!   answer, several per fsync through group commit);
//! - RSS with 10 000 pods stored.
//!
//! The figures are compared with the goals and Kubernetes' published anchors
//! (SLO p99 ≤ 1 s for single-object calls; a single etcd member does a few thousand
//! durable puts/s); no same-machine kube-apiserver baseline exists here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth_testkit::BerthServer;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use super::Report;
use super::stats::percentile;
use crate::util::{self, cmd, run_checked};

const CLIENTS: usize = 16;
const WATCHERS: usize = 100;
const MIX_SECS: u64 = 30;
const CREATE_SECS: u64 = 10;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/testserver:1",
            "ports": [{"containerPort": 8080}],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    }))
    .unwrap_or_default()
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn client(server: &BerthServer) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

async fn namespace(client: &kube::Client, name: &str) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// Creates pods `prefix-0..n` with `CLIENTS` concurrent clients.
async fn fill(api: &Api<Pod>, prefix: &str, n: usize) -> Result<()> {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let api = api.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(CLIENTS) {
                api.create(&PostParams::default(), &pod(&format!("{prefix}-{i}")))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub fn run() -> Result<Report> {
    run_checked(&mut cmd(
        util::cargo(),
        [
            "build",
            "--release",
            "--quiet",
            "-p",
            "berth-control-plane",
            "--bin",
            "berth-server",
        ],
    ))?;
    let binary = util::target_dir().join("release/berth-server");
    let data = util::target_dir().join("bench-apiserver");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).with_context(|| format!("mkdir {}", data.display()))?;
    let server = BerthServer::start(&binary, &data);
    let pid = server.pid().context("server pid")?;
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_mb(pid);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = runtime.block_on(measure(&server, pid))?;
    report.figure("idle_rss_mb", (idle_rss * 10.0).round() / 10.0);
    report.rows.insert(
        0,
        vec![
            "idle RSS".into(),
            format!("{idle_rss:.1} MB"),
            "< 40 MB".into(),
            "k3s server ≈ 1.6 GB with a workload".into(),
        ],
    );
    Ok(report)
}

async fn measure(server: &BerthServer, pid: u32) -> Result<Report> {
    let client = client(server).await?;
    namespace(&client, "list1000").await?;
    namespace(&client, "bench").await?;
    let list_api: Api<Pod> = Api::namespaced(client.clone(), "list1000");
    fill(&list_api, "l", 1000).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "bench");
    fill(&api, "seed", 200).await?;

    // 100 watchers, each recording delivery latency of every ADDED event.
    let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let deliveries: Arc<Mutex<Vec<f64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rv = api
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let api = api.clone();
        let (acks, deliveries, rv) = (acks.clone(), deliveries.clone(), rv.clone());
        let stop = stop.clone();
        watchers.push(tokio::spawn(async move {
            let Ok(stream) = api
                .watch(&WatchParams::default().timeout(MIX_SECS as u32 + 20), &rv)
                .await
            else {
                return;
            };
            let mut stream = stream.boxed();
            while let Some(Ok(event)) = stream.next().await {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                if let WatchEvent::Added(p) = event {
                    let now = Instant::now();
                    let name = p.metadata.name.unwrap_or_default();
                    let acked = acks.lock().ok().and_then(|a| a.get(&name).copied());
                    if let (Some(at), Ok(mut d)) = (acked, deliveries.lock()) {
                        d.push(now.saturating_duration_since(at).as_secs_f64() * 1000.0);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 30 s of mixed traffic.
    let lat: Arc<Mutex<HashMap<&'static str, Vec<f64>>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(MIX_SECS);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (api, list_api, lat, acks) = (api.clone(), list_api.clone(), lat.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while Instant::now() < deadline {
                let verb = ["create", "get", "update", "list1000"][i % 4];
                let started = Instant::now();
                match verb {
                    "create" => {
                        let name = format!("mix-{c}-{i}");
                        api.create(&PostParams::default(), &pod(&name)).await?;
                        if let Ok(mut a) = acks.lock() {
                            a.insert(name, Instant::now());
                        }
                    }
                    "get" => {
                        api.get(&format!("seed-{}", (c * 7 + i) % 200)).await?;
                    }
                    "update" => {
                        let patch = json!({"metadata": {"labels": {"round": format!("r{i}")}}});
                        api.patch(
                            &format!("seed-{}", (c * 13 + i) % 200),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await?;
                    }
                    _ => {
                        let list = list_api.list(&ListParams::default()).await?;
                        anyhow::ensure!(
                            list.items.len() == 1000,
                            "listed {} pods",
                            list.items.len()
                        );
                    }
                }
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                if let Ok(mut l) = lat.lock() {
                    l.entry(verb).or_default().push(ms);
                }
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in watchers {
        w.abort();
    }

    // Durable creates/s.
    namespace(&client, "throughput").await?;
    let tp_api: Api<Pod> = Api::namespaced(client.clone(), "throughput");
    let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(CREATE_SECS);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (tp_api, created) = (tp_api.clone(), created.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < deadline {
                tp_api
                    .create(&PostParams::default(), &pod(&format!("t-{c}-{i}")))
                    .await?;
                created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let creates = created.load(std::sync::atomic::Ordering::Relaxed);
    let creates_per_s = creates as f64 / started.elapsed().as_secs_f64();

    // Top up to 10 000 pods stored, then RSS.
    let all: Api<Pod> = Api::all(client.clone());
    let stored = all.list(&ListParams::default()).await?.items.len();
    if stored < 10_000 {
        namespace(&client, "fill").await?;
        fill(
            &Api::namespaced(client.clone(), "fill"),
            "f",
            10_000 - stored,
        )
        .await?;
    }
    let total = all.list(&ListParams::default()).await?.items.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_10k = rss_mb(pid);

    let lat = lat.lock().map(|l| l.clone()).unwrap_or_default();
    let p99 = |verb: &str| {
        lat.get(verb)
            .and_then(|v| percentile(v, 99.0))
            .unwrap_or(f64::NAN)
    };
    let count = |verb: &str| lat.get(verb).map_or(0, Vec::len);
    let deliveries = deliveries.lock().map(|d| d.clone()).unwrap_or_default();
    let watch_p99 = percentile(&deliveries, 99.0).unwrap_or(f64::NAN);
    let round = |x: f64| (x * 100.0).round() / 100.0;

    let mut report = Report::default();
    report.figure("create_p99_ms", round(p99("create")));
    report.figure("get_p99_ms", round(p99("get")));
    report.figure("update_p99_ms", round(p99("update")));
    report.figure("list1000_p99_ms", round(p99("list1000")));
    report.figure("watch_delivery_p99_ms", round(watch_p99));
    report.figure("creates_per_s", creates_per_s.round());
    report.figure("rss_mb_10k_pods", round(rss_10k));
    report.figure("pods_stored", total);
    report.header = vec![
        "measure".into(),
        "berth".into(),
        "goal".into(),
        "anchor".into(),
    ];
    let single = "Kubernetes SLO p99 ≤ 1 s";
    report.rows = vec![
        vec![
            format!("create p99 ({} calls)", count("create")),
            format!("{:.2} ms", p99("create")),
            "< 10 ms".into(),
            single.into(),
        ],
        vec![
            format!("get p99 ({} calls)", count("get")),
            format!("{:.2} ms", p99("get")),
            "< 10 ms".into(),
            single.into(),
        ],
        vec![
            format!("update p99 ({} calls)", count("update")),
            format!("{:.2} ms", p99("update")),
            "< 10 ms".into(),
            single.into(),
        ],
        vec![
            format!("list 1000 pods p99 ({} calls)", count("list1000")),
            format!("{:.2} ms", p99("list1000")),
            "—".into(),
            "Kubernetes SLO p99 ≤ 30 s (cluster-wide list)".into(),
        ],
        vec![
            format!(
                "watch delivery p99 ({} events × {WATCHERS} watchers)",
                deliveries.len() / WATCHERS.max(1)
            ),
            format!("{watch_p99:.2} ms"),
            "< 10 ms".into(),
            "—".into(),
        ],
        vec![
            "durable creates/s (16 clients)".into(),
            format!("{creates_per_s:.0}"),
            "≥ 5000".into(),
            "one etcd member: a few thousand puts/s".into(),
        ],
        vec![
            format!("RSS with {total} pods"),
            format!("{rss_10k:.1} MB"),
            "< 250 MB".into(),
            "k3s server ≈ 1.6 GB".into(),
        ],
    ];
    report.notes = vec![
        format!("{CLIENTS} clients for {MIX_SECS} s over create / get / update (merge patch) / list of 1000 pods, with {WATCHERS} watchers on the namespace; clients, watchers and server share this 2-core machine"),
        "latencies are measured in the client (kube-rs over HTTP/2 + TLS), from request to parsed response; watch delivery from the create's acknowledgement to the event at each watcher".into(),
        "every create is durable (fsync'd) before it is acknowledged; group commit shares one fsync among concurrent writes".into(),
        "no same-machine kube-apiserver + etcd baseline (not installable here); anchors are Kubernetes' published SLOs and figures".into(),
    ];
    Ok(report)
}
