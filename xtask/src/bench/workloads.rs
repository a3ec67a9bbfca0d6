//! `cargo xtask bench workloads`: berth-server's workload controllers end to end. A
//! release berth-server serves the API alone; a release load process
//! (`xtask workloads-load`) creates hollow nodes (`hollow-N`: Ready, 32 CPUs, 110
//! pods, no Lease) and runs a hollow kubelet for them ([`super::hollow`]), then starts
//! a second `berth-server --apiserver=false` running the scheduler and the controllers
//! (`--node-monitor-grace-period` far beyond the bench, so Lease-less nodes stay
//! Ready), warms it up with a one-pod Job, and times, each from the create to the
//! condition as a watch sees it:
//! - `job_s` / `job_pods_per_s`: an Indexed Job of 5 000 completions, parallelism 500,
//!   `restartPolicy: Never`, on 100 nodes, until its `Complete` condition. Each pod is
//!   created by the Job controller, bound by the scheduler, set Running then Succeeded
//!   by the hollow kubelet, recorded in `uncountedTerminatedPods`, released from its
//!   `batch.kubernetes.io/job-tracking` finalizer and counted;
//! - `sts_ready_s`: a 100-replica `Parallel` StatefulSet until `readyReplicas == 100`;
//! - `ds_ready_s`: with 1 000 nodes, a DaemonSet until
//!   `numberReady == desiredNumberScheduled == 1000`. Without a DaemonSet controller
//!   the phase fails after 30 s with no status written; the error is reported
//!   (`ds_error`) and `ds_ready_s` is null.
//!
//! The apiserver's `apiserver_request_total` is scraped around the Job, so the table
//! shows the API requests each Job pod cost (the hollow kubelet's included).
//!
//! Anchor: kube-controller-manager cannot be installed here. Its Job controller is
//! bound by its client's token bucket: `--kube-api-qps` defaults to 20 and
//! `--kube-api-burst` to 30 (the kube-controller-manager command-line reference,
//! kubernetes.io/docs/reference/command-line-tools-reference/kube-controller-manager/).
//! Each Job pod costs it at least two rate-limited writes — the pod's create and the
//! patch removing its tracking finalizer — plus a share of Job status updates, so at
//! defaults it finishes at most 20 / 2 = 10 pods/s: `anchor_job_pods_per_s`, and
//! `job_ratio` is berth's throughput over it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::Report;
use super::apiserver::{Conn, Target, namespace, rss_mb};
use super::hollow::{Counts, Kubelet, NODE_PREFIX};
use super::scheduler::fan_out;

const NS: &str = "workloads";
const JOB_NODES: usize = 100;
const DS_NODES: usize = 1_000;
const JOB_COMPLETIONS: usize = 5_000;
const JOB_PARALLELISM: usize = 500;
const STS_REPLICAS: usize = 100;
/// Runs of the Job phase; the median is reported.
const JOB_RUNS: usize = 3;
const JOB_TIMEOUT: Duration = Duration::from_secs(900);
const STS_TIMEOUT: Duration = Duration::from_secs(300);
const DS_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a DaemonSet may go without any status before the phase gives up: a
/// DaemonSet controller writes `observedGeneration` within its first sync.
const DS_NO_CONTROLLER: Duration = Duration::from_secs(30);
/// kube-controller-manager's default `--kube-api-qps`.
const KCM_API_QPS: f64 = 20.0;
/// Rate-limited writes per Job pod at least: its create and its finalizer removal.
const KCM_WRITES_PER_POD: f64 = 2.0;
const ANCHOR_JOB_PODS_PER_S: f64 = KCM_API_QPS / KCM_WRITES_PER_POD;
const GOAL_JOB_PODS_PER_S: f64 = 500.0;
const IMAGE: &str = "registry.k8s.io/pause:3.10";

/// Arguments of the load process.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub target: Target,
    /// The admin kubeconfig the controllers' process uses.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The berth-server binary to start with the scheduler and the controllers.
    #[arg(long)]
    pub server_bin: PathBuf,
    /// Where the scheduler's and controllers' log goes.
    #[arg(long)]
    pub components_log: PathBuf,
}

pub fn run() -> Result<Report> {
    let (release, server) = super::release_apiserver("workloads")?;
    let pid = server.pid().context("server pid")?;
    let out = std::process::Command::new(release.join("xtask"))
        .arg("workloads-load")
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
        .arg(super::server_binary())
        .arg("--components-log")
        .arg(crate::util::target_dir().join("bench-workloads-components.log"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run xtask workloads-load")?;
    if !out.status.success() {
        bail!("workloads-load failed ({})", out.status);
    }
    Report::from_value(&serde_json::from_slice(&out.stdout).context("workloads-load output")?)
}

pub fn load(args: &LoadArgs) -> Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(measure(args))?;
    println!("{}", report.to_value());
    Ok(std::process::ExitCode::SUCCESS)
}

fn node(i: usize) -> Vec<(Method, String, &'static str, Bytes)> {
    let name = format!("{NODE_PREFIX}{i}");
    let create = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
        "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}}});
    let status = json!({"status": {
        "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}});
    vec![
        (
            Method::POST,
            "/api/v1/nodes".into(),
            "application/json",
            Bytes::from(create.to_string()),
        ),
        (
            Method::PATCH,
            format!("/api/v1/nodes/{name}/status"),
            "application/merge-patch+json",
            Bytes::from(status.to_string()),
        ),
    ]
}

fn pod_template(app: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "main", "image": IMAGE}]}})
}

fn job(name: &str, completions: usize, parallelism: usize) -> Value {
    let mut template = pod_template(name);
    template["spec"]["restartPolicy"] = json!("Never");
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"completions": completions, "parallelism": parallelism,
            "completionMode": "Indexed", "template": template}})
}

fn statefulset(name: &str, replicas: usize) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
        "spec": {"replicas": replicas, "podManagementPolicy": "Parallel", "serviceName": name,
            "selector": {"matchLabels": {"app": name}}, "template": pod_template(name)}})
}

fn daemonset(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": pod_template(name)}})
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn has_condition(obj: &Value, type_: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == type_ && c["status"] == "True")
}

/// What a watch wait decides on each look at the object.
enum Verdict {
    Wait,
    Done,
}

/// Creates `obj` in collection `path` and watches it until `check` says it is done;
/// `check` sees the latest state of the object (or Null before the first event) and
/// the time since the create, at each event and at least once a second, and may fail
/// the wait. Prints `progress` every 5 s. Returns the seconds from create to done.
async fn create_and_wait(
    target: &Target,
    path: &str,
    obj: &Value,
    timeout: Duration,
    check: impl Fn(&Value, Duration) -> Result<Verdict>,
    progress: impl Fn(&Value) -> String,
) -> Result<f64> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .context("object without a name")?
        .to_owned();
    let mut conn = Conn::connect(target).await?;
    let list = conn
        .call(
            Method::GET,
            &format!("{path}?limit=1"),
            "application/json",
            Bytes::new(),
        )
        .await?;
    let rv = serde_json::from_slice::<Value>(&list)?
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("0")
        .to_owned();
    let watch = format!("{path}?watch=1&resourceVersion={rv}&timeoutSeconds=3600");
    let req = conn.request(Method::GET, &watch, "application/json", Bytes::new())?;
    conn.send.ready().await?;
    let resp = conn.send.send_request(req).await?;
    if resp.status() != StatusCode::OK {
        bail!("watch {path}: {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut creator = Conn::connect(target).await?;
    let started = Instant::now();
    creator
        .call(
            Method::POST,
            path,
            "application/json",
            Bytes::from(obj.to_string()),
        )
        .await?;
    let mut latest = Value::Null;
    let mut buf: Vec<u8> = Vec::new();
    let mut said = Instant::now();
    loop {
        let elapsed = started.elapsed();
        if elapsed > timeout {
            bail!(
                "{name} not done within {timeout:?}; last seen: {}",
                progress(&latest)
            );
        }
        if let Verdict::Done = check(&latest, elapsed)? {
            return Ok(elapsed.as_secs_f64());
        }
        if said.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "bench workloads:   {name} at {:.0} s: {}",
                elapsed.as_secs_f64(),
                progress(&latest)
            );
            said = Instant::now();
        }
        let frame = match tokio::time::timeout(Duration::from_secs(1), body.frame()).await {
            Err(_) => continue,
            Ok(None) => bail!("the watch on {path} ended"),
            Ok(Some(frame)) => frame?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            if let Ok(ev) = serde_json::from_slice::<Value>(&buf[..nl])
                && ev.pointer("/object/metadata/name").and_then(Value::as_str) == Some(&name)
            {
                latest = ev["object"].clone();
            }
            buf.drain(..=nl);
        }
    }
}

/// Deletes Job `name` (its pods with it, in the background, by the garbage collector)
/// and waits until none of its pods is left.
async fn remove_job(conn: &mut Conn, name: &str) -> Result<()> {
    let t = Instant::now();
    conn.call(
        Method::DELETE,
        &format!("/apis/batch/v1/namespaces/{NS}/jobs/{name}"),
        "application/json",
        Bytes::from(r#"{"propagationPolicy":"Background"}"#),
    )
    .await?;
    let pods = format!(
        "/api/v1/namespaces/{NS}/pods?labelSelector=batch.kubernetes.io%2Fjob-name%3D{name}&limit=1"
    );
    loop {
        let list: Value = serde_json::from_slice(
            &conn
                .call(Method::GET, &pods, "application/json", Bytes::new())
                .await?,
        )?;
        if list["items"].as_array().is_none_or(Vec::is_empty) {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("the pods of Job {name} still exist 300 s after its delete");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "bench workloads: Job {name} and its pods deleted in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `apiserver_request_total` summed by (verb, resource).
async fn request_counts(conn: &mut Conn) -> Result<HashMap<(String, String), f64>> {
    let text = conn
        .call(Method::GET, "/metrics", "text/plain", Bytes::new())
        .await?;
    let text = String::from_utf8_lossy(&text);
    let label = |line: &str, key: &str| -> Option<String> {
        Some(
            line.split(&format!("{key}=\""))
                .nth(1)?
                .split('"')
                .next()?
                .to_owned(),
        )
    };
    let mut counts = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let (Some(verb), Some(resource), Some(n)) = (
            label(line, "verb"),
            label(line, "resource"),
            line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()),
        ) else {
            continue;
        };
        *counts.entry((verb, resource)).or_insert(0.0) += n;
    }
    Ok(counts)
}

/// The scheduler and the controllers in their own process, stopped on drop.
fn start_components(args: &LoadArgs) -> Result<berth_testkit::ChildGuard> {
    let log_path = &args.components_log;
    let log = std::fs::File::create(log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let child = std::process::Command::new(&args.server_bin)
        .args([
            "--apiserver=false",
            "--leader-elect=false",
            // Hollow nodes renew no Lease: keep them Ready for the whole bench.
            "--node-monitor-grace-period=24h",
            "--kubeconfig",
        ])
        .arg(&args.kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("start berth-server --apiserver=false")?;
    eprintln!(
        "bench workloads: scheduler + controllers (pid {}) log to {}",
        child.id(),
        log_path.display()
    );
    Ok(berth_testkit::ChildGuard(child))
}

fn kubelet_line(counts: &Counts) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    format!(
        "kubelet: {} running, {} succeeded, {} errors",
        counts.running.load(Relaxed),
        counts.succeeded.load(Relaxed),
        counts.errors.load(Relaxed)
    )
}

/// CPU seconds (user + system) process `pid` has used (0 once it is gone).
fn cpu_s(pid: u32) -> f64 {
    super::apiserver::cpu_ms(pid).map_or(0.0, |ms| ms / 1000.0)
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub async fn measure(args: &LoadArgs) -> Result<Report> {
    let target = &args.target;
    let mut admin = Conn::connect(target).await?;
    namespace(&mut admin, NS).await?;
    let kubelet = Kubelet::start(target).await?;
    let t = Instant::now();
    fan_out(target, JOB_NODES, node).await?;
    eprintln!(
        "bench workloads: {JOB_NODES} hollow nodes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let components = start_components(args)?;
    let jobs = format!("/apis/batch/v1/namespaces/{NS}/jobs");
    let job_done = |j: &Value, _: Duration| {
        if has_condition(j, "Failed") {
            bail!("the Job failed: {}", j["status"]);
        }
        Ok(if has_condition(j, "Complete") {
            Verdict::Done
        } else {
            Verdict::Wait
        })
    };
    let job_progress = |j: &Value| {
        format!(
            "{} succeeded, {} active, {}",
            int(j, "/status/succeeded"),
            int(j, "/status/active"),
            kubelet_line(&kubelet.counts)
        )
    };
    // Warm-up: scheduler, controllers and kubelet all working, caches synced.
    let warm = create_and_wait(
        target,
        &jobs,
        &job("warmup", 1, 1),
        Duration::from_secs(120),
        job_done,
        job_progress,
    )
    .await
    .context("warm-up Job")?;
    eprintln!("bench workloads: warm-up Job complete {warm:.1} s after create");

    // 1. The Indexed Job, JOB_RUNS times; each Job and its pods are deleted before the next.
    let pids = [
        ("apiserver", target.pid),
        ("controllers", components.id()),
        ("load", std::process::id()),
    ];
    let mut cpu = vec![0.0; pids.len()];
    let mut requests: HashMap<String, f64> = HashMap::new();
    let writes_before = kubelet.counts.writes();
    let mut runs = Vec::new();
    for run in 0..JOB_RUNS {
        // API requests and CPU are counted while the Jobs run, not while they are deleted.
        let cpu_before: Vec<f64> = pids.iter().map(|(_, p)| cpu_s(*p)).collect();
        let before = request_counts(&mut admin).await?;
        eprintln!(
            "bench workloads: Job {}/{JOB_RUNS}: {JOB_COMPLETIONS} completions, parallelism {JOB_PARALLELISM}",
            run + 1
        );
        let name = format!("indexed-{run}");
        let s = create_and_wait(
            target,
            &jobs,
            &job(&name, JOB_COMPLETIONS, JOB_PARALLELISM),
            JOB_TIMEOUT,
            job_done,
            job_progress,
        )
        .await
        .context("Job phase")?;
        eprintln!(
            "bench workloads: Job complete in {s:.2} s ({:.0} pods/s)",
            JOB_COMPLETIONS as f64 / s
        );
        runs.push(s);
        for ((c, (_, p)), b) in cpu.iter_mut().zip(&pids).zip(&cpu_before) {
            *c += cpu_s(*p) - b;
        }
        for (k, n) in request_counts(&mut admin).await? {
            let d = n - before.get(&k).copied().unwrap_or(0.0);
            *requests.entry(format!("{} {}", k.0, k.1)).or_default() += d;
        }
        if run + 1 < JOB_RUNS {
            remove_job(&mut admin, &name).await?;
        }
    }
    let busy: f64 = runs.iter().sum();
    let kubelet_writes = kubelet.counts.writes() - writes_before;
    let job_s = super::stats::percentile(&runs, 50.0).context("no Job run")?;
    let job_pods_per_s = JOB_COMPLETIONS as f64 / job_s;
    let pods_all = (JOB_COMPLETIONS * JOB_RUNS) as f64;
    let mut requests: Vec<(String, f64)> =
        requests.into_iter().filter(|(_, d)| *d >= 1.0).collect();
    requests.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total_requests: f64 = requests.iter().map(|(_, d)| d).sum();
    let per_pod: Vec<String> = requests
        .iter()
        .take(8)
        .map(|(what, d)| format!("{what} {:.2}", d / pods_all))
        .collect();
    let cpu_line: Vec<String> = pids
        .iter()
        .zip(&cpu)
        .map(|((what, _), c)| format!("{what} {:.2} cores", c / busy))
        .collect();
    eprintln!(
        "bench workloads: during the Jobs: {total_requests:.0} API requests; per pod: {}; CPU: {}",
        per_pod.join(", "),
        cpu_line.join(", ")
    );

    // 2. The Parallel StatefulSet.
    let sets = format!("/apis/apps/v1/namespaces/{NS}/statefulsets");
    let sts_ready_s = create_and_wait(
        target,
        &sets,
        &statefulset("web", STS_REPLICAS),
        STS_TIMEOUT,
        |s, _| {
            Ok(if int(s, "/status/readyReplicas") == STS_REPLICAS as i64 {
                Verdict::Done
            } else {
                Verdict::Wait
            })
        },
        |s| {
            format!(
                "{} replicas, {} ready",
                int(s, "/status/replicas"),
                int(s, "/status/readyReplicas")
            )
        },
    )
    .await
    .context("StatefulSet phase")?;
    eprintln!("bench workloads: StatefulSet of {STS_REPLICAS} ready in {sts_ready_s:.2} s");

    // 3. The DaemonSet over 1 000 nodes.
    let t = Instant::now();
    fan_out(target, DS_NODES - JOB_NODES, |i| node(JOB_NODES + i)).await?;
    eprintln!(
        "bench workloads: {DS_NODES} hollow nodes in all ({:.1} s for the last {})",
        t.elapsed().as_secs_f64(),
        DS_NODES - JOB_NODES
    );
    let daemonsets = format!("/apis/apps/v1/namespaces/{NS}/daemonsets");
    let ds = create_and_wait(
        target,
        &daemonsets,
        &daemonset("agent"),
        DS_TIMEOUT,
        |d, elapsed| {
            if d.pointer("/status/observedGeneration").is_none() && elapsed > DS_NO_CONTROLLER {
                bail!(
                    "no DaemonSet controller: the DaemonSet has no status {} s after its create (is control-plane/src/controllers/daemonset.rs in this build?)",
                    DS_NO_CONTROLLER.as_secs()
                );
            }
            let desired = int(d, "/status/desiredNumberScheduled");
            Ok(
                if desired == DS_NODES as i64 && int(d, "/status/numberReady") == desired {
                    Verdict::Done
                } else {
                    Verdict::Wait
                },
            )
        },
        |d| {
            format!(
                "{} desired, {} scheduled, {} ready",
                int(d, "/status/desiredNumberScheduled"),
                int(d, "/status/currentNumberScheduled"),
                int(d, "/status/numberReady")
            )
        },
    )
    .await;
    let (ds_ready_s, ds_error) = match ds {
        Ok(s) => {
            eprintln!("bench workloads: DaemonSet on {DS_NODES} nodes ready in {s:.2} s");
            (Some(s), None)
        }
        Err(err) => {
            eprintln!("bench workloads: DaemonSet phase failed: {err:#}");
            (None, Some(format!("{err:#}")))
        }
    };
    let apiserver_rss = rss_mb(target.pid);
    let components_rss = rss_mb(components.id());
    drop(components);
    drop(kubelet);

    let mut report = Report::default();
    report.figure("job_pods", JOB_COMPLETIONS);
    report.figure("job_parallelism", JOB_PARALLELISM);
    report.figure("job_nodes", JOB_NODES);
    report.figure("job_s", r2(job_s));
    report.figure(
        "job_runs_s",
        runs.iter().map(|s| r2(*s)).collect::<Vec<_>>(),
    );
    report.figure("job_pods_per_s", job_pods_per_s.round());
    report.figure("anchor_job_pods_per_s", ANCHOR_JOB_PODS_PER_S);
    report.figure("job_ratio", r2(job_pods_per_s / ANCHOR_JOB_PODS_PER_S));
    report.figure("job_api_requests_per_pod", r2(total_requests / pods_all));
    report.figure("job_api_requests_per_s", (total_requests / busy).round());
    for ((what, _), c) in pids.iter().zip(&cpu) {
        report.figure(&format!("job_cpu_cores_{what}"), r2(c / busy));
    }
    report.figure("job_kubelet_writes", kubelet_writes);
    report.figure("sts_pods", STS_REPLICAS);
    report.figure("sts_ready_s", r2(sts_ready_s));
    report.figure("ds_nodes", DS_NODES);
    report.figure("ds_ready_s", ds_ready_s.map(r2));
    if let Some(err) = &ds_error {
        report.figure("ds_error", err.clone());
    }
    report.figure("apiserver_rss_mb", r2(apiserver_rss));
    report.figure("components_rss_mb", r2(components_rss));
    report.header = [
        "workload",
        "berth",
        "goal",
        "kube-controller-manager (anchor)",
    ]
    .map(String::from)
    .to_vec();
    report.rows = vec![
        vec![
            format!(
                "Indexed Job, {JOB_COMPLETIONS} completions, parallelism {JOB_PARALLELISM}, {JOB_NODES} nodes"
            ),
            format!("{job_pods_per_s:.0} pods/s ({job_s:.1} s)"),
            format!("≥ {GOAL_JOB_PODS_PER_S:.0} pods/s"),
            format!(
                "≤ {ANCHOR_JOB_PODS_PER_S:.0} pods/s (client QPS 20 / 2 writes a pod) — ratio {:.1}",
                job_pods_per_s / ANCHOR_JOB_PODS_PER_S
            ),
        ],
        vec![
            format!("StatefulSet, {STS_REPLICAS} replicas, Parallel: create → all Ready"),
            format!("{sts_ready_s:.2} s"),
            "".into(),
            "".into(),
        ],
        vec![
            format!("DaemonSet, {DS_NODES} nodes: create → all Ready"),
            match (ds_ready_s, &ds_error) {
                (Some(s), _) => format!("{s:.2} s"),
                (None, Some(_)) => "not measured (see notes)".into(),
                (None, None) => "".into(),
            },
            "".into(),
            "".into(),
        ],
        vec![
            "RSS after the run: apiserver / scheduler + controllers".into(),
            format!("{apiserver_rss:.0} MB / {components_rss:.0} MB"),
            "".into(),
            "".into(),
        ],
    ];
    report.notes = vec![
        format!(
            "During the {JOB_RUNS} Jobs: {total_requests:.0} API requests ({:.0}/s), per Job pod: {}; CPU used: {}.",
            total_requests / busy,
            per_pod.join(", "),
            cpu_line.join(", ")
        ),
        "Hollow nodes and a hollow kubelet (one pod watch, status writes over HTTP/2) in the load process; the scheduler and controllers run in a second berth-server (--apiserver=false); 2 shared vCPUs for all three processes.".into(),
        format!(
            "Anchor: kube-controller-manager's default --kube-api-qps=20 (burst 30) and ≥ {KCM_WRITES_PER_POD:.0} rate-limited writes per Job pod (create, finalizer removal); kube-controller-manager cannot be installed here, so nothing is run: the anchor is derived from its documented defaults (kubernetes.io/docs/reference/command-line-tools-reference/kube-controller-manager/), an upper bound, not a measurement. The StatefulSet and DaemonSet rows have no baseline."
        ),
        format!(
            "Job: median of {JOB_RUNS} runs ({}); StatefulSet and DaemonSet: one run each; times from the create to the condition as a watch sees it.",
            runs.iter().map(|s| format!("{s:.2} s")).collect::<Vec<_>>().join(", ")
        ),
    ];
    if let Some(err) = ds_error {
        report
            .notes
            .push(format!("DaemonSet phase not measured: {err}"));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_what_the_phases_need() {
        let j = job("indexed", JOB_COMPLETIONS, JOB_PARALLELISM);
        assert_eq!(j["spec"]["completionMode"], "Indexed");
        assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never");
        let s = statefulset("web", STS_REPLICAS);
        assert_eq!(s["spec"]["podManagementPolicy"], "Parallel");
        assert!(s["spec"]["volumeClaimTemplates"].is_null());
        let d = daemonset("agent");
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            d["spec"]["template"]["metadata"]["labels"]
        );
    }

    #[test]
    fn conditions_must_be_true() {
        let j = json!({"status": {"conditions": [
            {"type": "SuccessCriteriaMet", "status": "True"},
            {"type": "Complete", "status": "False"}]}});
        assert!(has_condition(&j, "SuccessCriteriaMet"));
        assert!(!has_condition(&j, "Complete"));
        assert_eq!(int(&j, "/status/succeeded"), 0);
    }

    #[test]
    fn anchor_is_qps_over_writes_per_pod() {
        assert_eq!(ANCHOR_JOB_PODS_PER_S, 10.0);
    }
}
