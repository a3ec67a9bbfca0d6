//! `cargo xtask bench storage`: what a PersistentVolumeClaim adds to pod startup on a
//! one-node cluster — a release `berth-server` (apiserver, scheduler, the PV binder and
//! the protection controllers), a release `berth-agent` and the release `berth-csi`
//! driver it provisions and mounts through (`--csi-socket`). In one burst, 16 clients
//! create 50 claims of the default class `local` (WaitForFirstConsumer, 10Mi), each
//! with a busybox pod using it, and 50 pods without volumes (`sleep 3600`, no probes,
//! image preloaded, as `pod-startup`). Watches time each claim from its create request
//! to `Bound` (which, WaitForFirstConsumer, includes its pod's creation and
//! scheduling) and each pod from its create request to Ready. The pods without volumes
//! are the baseline in the same run: the difference of the p99s is what the claim
//! costs. Three runs, each in a fresh namespace, started once the last one's pods,
//! claims, PVs and volume directories are gone; medians of the per-run percentiles.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use super::Report;
use super::apiserver::{Conn, Target};
use super::pod_startup::{ms, wait_node_ready, wait_root_ca, watch};
use super::stats::{median, percentile};
use crate::util;

const PVCS: usize = 50;
const PLAIN_PODS: usize = 50;
const CLIENTS: usize = 16;
const RUNS: usize = 3;
/// Claims (with their pods) and plain pods created one at a time after the bursts.
const IDLE_PAIRS: usize = 10;
const IMAGE: &str = "berth.local/busybox:1.35";
const NODE: &str = "bench-node";
const DRIVER: &str = "csi.berth.io";

/// Created and done (Bound for a claim, Ready for a pod), as the watch first showed it.
#[derive(Debug, Default, Clone, Copy)]
struct Span {
    created: Option<Instant>,
    done: Option<Instant>,
    /// When the watch first showed each of the kind's [`Steps`].
    steps: [Option<Instant>; 3],
}

impl Span {
    fn ms(&self) -> Option<f64> {
        ms(self.created, self.done)
    }

    fn step_ms(&self, i: usize) -> Option<f64> {
        ms(self.created, self.steps[i])
    }
}

/// The steps on the way to done that a watch shows, for the per-phase breakdown.
type Steps = [fn(&Value) -> bool; 3];

/// A claim: the scheduler picked its node (PreBind's selected-node), the binder handed
/// it to the provisioner, the binder set its volume.
const CLAIM_STEPS: Steps = [
    |c| c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"].is_string(),
    |c| c["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"].is_string(),
    |c| {
        c["spec"]["volumeName"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    },
];
/// A pod: bound to the node, its IP set (sandbox and network), its containers running.
const POD_STEPS: Steps = [
    |p| p["spec"]["nodeName"].is_string(),
    |p| p["status"]["podIP"].is_string(),
    |p| {
        p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| {
                !cs.is_empty() && cs.iter().all(|c| c["state"]["running"].is_object())
            })
    },
];

type Spans = Arc<Mutex<HashMap<String, Span>>>;

/// What one client creates next: claim `v-i` and pod `pv-i` using it, or pod `np-i`.
#[derive(Debug, Clone, Copy)]
enum Item {
    WithClaim(usize),
    Plain(usize),
}

fn claim(name: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{{"name":"{name}"}},"spec":{{"accessModes":["ReadWriteOnce"],"resources":{{"requests":{{"storage":"10Mi"}}}}}}}}"#
    ))
}

/// A busybox pod, with claim `claim` mounted at `/data` if given.
fn pod(name: &str, claim: Option<&str>) -> Bytes {
    let (mounts, volumes) = claim.map_or((String::new(), String::new()), |c| {
        (
            r#","volumeMounts":[{"name":"data","mountPath":"/data"}]"#.to_owned(),
            format!(
                r#","volumes":[{{"name":"data","persistentVolumeClaim":{{"claimName":"{c}"}}}}]"#
            ),
        )
    });
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{"app":"storage"}}}},"spec":{{"terminationGracePeriodSeconds":0,"containers":[{{"name":"c","image":"{IMAGE}","imagePullPolicy":"IfNotPresent","command":["sleep","3600"]{mounts}}}]{volumes}}}}}"#
    ))
}

/// Records the first event showing `done(object)` for the object it names.
fn observe(
    event: &Value,
    now: Instant,
    spans: &Spans,
    done: fn(&Value) -> bool,
    steps: &Steps,
) -> usize {
    let obj = &event["object"];
    let Ok(mut s) = spans.lock() else {
        return 0;
    };
    if let Some(name) = obj["metadata"]["name"].as_str() {
        let span = s.entry(name.to_owned()).or_default();
        if span.done.is_none() && done(obj) {
            span.done = Some(now);
        }
        for (at, step) in span.steps.iter_mut().zip(steps) {
            if at.is_none() && step(obj) {
                *at = Some(now);
            }
        }
    }
    s.values().filter(|p| p.done.is_some()).count()
}

fn bound(pvc: &Value) -> bool {
    pvc["status"]["phase"] == "Bound"
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The `items` of the list at `path`.
async fn items(conn: &mut Conn, path: &str) -> Result<Vec<Value>> {
    let list: Value = serde_json::from_slice(
        &conn
            .call(Method::GET, path, "application/json", Bytes::new())
            .await?,
    )?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Which spans of a run a figure is over.
type Pick = fn(&Run) -> &[Span];

/// What one run measured.
#[derive(Debug)]
struct Run {
    claims: Vec<Span>,
    with_claim: Vec<Span>,
    without: Vec<Span>,
}

/// One run in namespace `ns`, then its cleanup.
/// How a run creates its objects.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Everything at once by [`CLIENTS`] clients: the measured burst.
    Burst,
    /// `n` claims with their pods and `n` plain pods, one at a time, each waited on
    /// until Ready: the latency of the chain itself, on an otherwise idle cluster.
    OneAtATime(usize),
}

async fn run_once(
    target: &Target,
    ns: &str,
    agent: &berth_testkit::Agent,
    csi: &berth_testkit::CsiDriver,
    shape: Shape,
) -> Result<Run> {
    let (pvcs, plain, clients) = match shape {
        Shape::Burst => (PVCS, PLAIN_PODS, CLIENTS),
        Shape::OneAtATime(n) => (n, n, 1),
    };
    let one_at_a_time = matches!(shape, Shape::OneAtATime(_));
    let mut admin = Conn::connect(target).await?;
    super::apiserver::namespace(&mut admin, ns).await?;
    wait_root_ca(&mut admin, ns).await?;
    let claims: Spans = Arc::default();
    let pods: Spans = Arc::default();

    let seen = claims.clone();
    let claims_watch = watch(
        target,
        &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"),
        move |event, now| observe(event, now, &seen, bound, &CLAIM_STEPS) == pvcs,
    )
    .await?;
    let seen = pods.clone();
    let pods_watch = watch(
        target,
        &format!("/api/v1/namespaces/{ns}/pods"),
        move |event, now| observe(event, now, &seen, pod_ready, &POD_STEPS) == pvcs + plain,
    )
    .await?;

    // The two kinds interleaved, so both meet the same load.
    let work: Arc<Vec<Item>> = Arc::new(
        (0..pvcs.max(plain))
            .flat_map(|i| {
                (i < pvcs)
                    .then_some(Item::WithClaim(i))
                    .into_iter()
                    .chain((i < plain).then_some(Item::Plain(i)))
            })
            .collect(),
    );
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut conn = Conn::connect(target).await?;
        let (claims, pods, ns, work) = (claims.clone(), pods.clone(), ns.to_owned(), work.clone());
        tasks.push(tokio::spawn(async move {
            let created = |spans: &Spans, name: &str| {
                if let Ok(mut s) = spans.lock() {
                    s.entry(name.to_owned()).or_default().created = Some(Instant::now());
                }
            };
            for item in work.iter().skip(c).step_by(clients) {
                let pod_name = match *item {
                    Item::WithClaim(i) => format!("pv-{i}"),
                    Item::Plain(i) => format!("np-{i}"),
                };
                let body = match *item {
                    Item::WithClaim(i) => {
                        let name = format!("v-{i}");
                        created(&claims, &name);
                        conn.call(
                            Method::POST,
                            &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"),
                            "application/json",
                            claim(&name),
                        )
                        .await?;
                        created(&pods, &pod_name);
                        pod(&pod_name, Some(&name))
                    }
                    Item::Plain(_) => {
                        created(&pods, &pod_name);
                        pod(&pod_name, None)
                    }
                };
                conn.call(
                    Method::POST,
                    &format!("/api/v1/namespaces/{ns}/pods"),
                    "application/json",
                    body,
                )
                .await?;
                if one_at_a_time {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while pods
                        .lock()
                        .ok()
                        .and_then(|s| s.get(&pod_name).and_then(|p| p.done))
                        .is_none()
                    {
                        anyhow::ensure!(
                            Instant::now() < deadline,
                            "pod {pod_name} was not Ready within 60 s"
                        );
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    tokio::time::timeout(Duration::from_secs(240), claims_watch)
        .await
        .context("the claims were not all Bound within 240 s")??;
    tokio::time::timeout(Duration::from_secs(240), pods_watch)
        .await
        .context("the pods were not all Ready within 240 s")??;

    // Clean up and wait for it: the next run pays nothing of this one's teardown.
    for collection in ["pods", "persistentvolumeclaims"] {
        admin
            .call(
                Method::DELETE,
                &format!("/api/v1/namespaces/{ns}/{collection}?gracePeriodSeconds=0"),
                "application/json",
                Bytes::new(),
            )
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let pods_left = items(&mut admin, &format!("/api/v1/namespaces/{ns}/pods"))
            .await?
            .len();
        let claims_left = items(
            &mut admin,
            &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"),
        )
        .await?
        .len();
        let pvs_left = items(&mut admin, "/api/v1/persistentvolumes").await?.len();
        let host_left = agent.leftovers();
        let volumes_left = csi.volumes();
        if pods_left + claims_left + pvs_left == 0
            && host_left.is_empty()
            && volumes_left.is_empty()
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the run was not cleaned up within 240 s: {pods_left} pods, {claims_left} claims, \
             {pvs_left} PVs, {} volume dirs left; on the host: {host_left:?}",
            volumes_left.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let claims: Vec<Span> = claims
        .lock()
        .map(|s| s.values().copied().collect())
        .unwrap_or_default();
    let pods = pods.lock().map(|s| s.clone()).unwrap_or_default();
    let of = |with: bool| -> Vec<Span> {
        pods.iter()
            .filter(|(name, _)| name.starts_with("pv-") == with)
            .map(|(_, s)| *s)
            .collect()
    };
    Ok(Run {
        claims,
        with_claim: of(true),
        without: of(false),
    })
}

/// Waits until the default StorageClass `local` exists and the agent has registered
/// the driver in its CSINode.
async fn wait_storage_ready(target: &Target) -> Result<()> {
    let mut conn = Conn::connect(target).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let class = conn
            .call(
                Method::GET,
                "/apis/storage.k8s.io/v1/storageclasses/local",
                "application/json",
                Bytes::new(),
            )
            .await
            .is_ok();
        let csinode: Value = conn
            .call(
                Method::GET,
                &format!("/apis/storage.k8s.io/v1/csinodes/{NODE}"),
                "application/json",
                Bytes::new(),
            )
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let registered = csinode["spec"]["drivers"]
            .as_array()
            .is_some_and(|ds| ds.iter().any(|d| d["name"] == DRIVER));
        if class && registered {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "within 60 s: StorageClass local {}, {DRIVER} in CSINode {NODE} {}",
            if class { "present" } else { "missing" },
            if registered {
                "registered"
            } else {
                "not registered"
            }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn run() -> Result<Report> {
    util::run_checked(&mut util::cmd(
        util::cargo(),
        [
            "build",
            "--release",
            "--quiet",
            "-p",
            "berth-control-plane",
            "-p",
            "berth-agent",
            "-p",
            "berth-runtime",
            "-p",
            "berth-csi",
            "--bins",
        ],
    ))?;
    let release = util::target_dir().join("release");
    let data = util::target_dir().join("bench-storage");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    // Besides the root CA publisher the pods need, the controllers a claim's life
    // needs: the binder (it hands WaitForFirstConsumer claims to the provisioner once
    // the scheduler picked a node, then binds), and the protection finalizers' two.
    let server = berth_testkit::BerthServer::start_with(
        &release.join("berth-server"),
        &data,
        &[
            "--controllers=root-ca-cert-publisher,persistentvolume-binder,pvc-protection,pv-protection",
        ],
    );
    // Locals drop in reverse order: the agent, then the driver, then the server.
    let csi = berth_testkit::CsiDriver::start(&release.join("berth-csi"), &data, NODE);
    let csi_flag = format!("--csi-socket={}", csi.socket.display());
    let agent = berth_testkit::Agent::start_bin(
        &release.join("berth-agent"),
        NODE,
        &server.kubeconfig(),
        &data,
        &[&csi_flag],
    );
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
    rt.block_on(async {
        wait_node_ready(&target, NODE).await?;
        wait_storage_ready(&target).await
    })?;

    let mut runs = Vec::new();
    for r in 0..RUNS {
        let run = rt
            .block_on(run_once(
                &target,
                &format!("storage-{r}"),
                &agent,
                &csi,
                Shape::Burst,
            ))
            .with_context(|| {
                let tail = |path: std::path::PathBuf| {
                    let log = std::fs::read_to_string(path).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                };
                format!(
                    "run {r}; the agent log's end:\n{}\nthe CSI driver log's end:\n{}",
                    tail(agent.log_file()),
                    tail(csi.log_file())
                )
            })?;
        let p = |spans: &[Span], q: f64| {
            let v: Vec<f64> = spans.iter().filter_map(Span::ms).collect();
            percentile(&v, q).unwrap_or(f64::NAN)
        };
        anyhow::ensure!(
            run.claims.iter().filter_map(Span::ms).count() == PVCS,
            "run {r}: not every claim was seen Bound"
        );
        eprintln!(
            "bench storage: run {r}: claim bind p50 {:.0} ms p99 {:.0} ms; pod Ready p99 with claim {:.0} ms, without {:.0} ms (ratio {:.2})",
            p(&run.claims, 50.0),
            p(&run.claims, 99.0),
            p(&run.with_claim, 99.0),
            p(&run.without, 99.0),
            p(&run.with_claim, 99.0) / p(&run.without, 99.0)
        );
        runs.push(run);
    }
    // The chain's own latency: one claim and its pod at a time on the idle cluster.
    let idle = rt
        .block_on(run_once(
            &target,
            "storage-idle",
            &agent,
            &csi,
            Shape::OneAtATime(IDLE_PAIRS),
        ))
        .context("the one-at-a-time run")?;
    drop(agent);
    drop(csi);
    drop(server);
    let idle_p50 = |spans: &[Span]| {
        let v: Vec<f64> = spans.iter().filter_map(Span::ms).collect();
        percentile(&v, 50.0).unwrap_or(f64::NAN)
    };
    let (idle_bind, idle_with, idle_without) = (
        idle_p50(&idle.claims),
        idle_p50(&idle.with_claim),
        idle_p50(&idle.without),
    );

    let stat = |pick: fn(&Run) -> &[Span], q: f64| -> f64 {
        median(runs.iter().map(|run| {
            let v: Vec<f64> = pick(run).iter().filter_map(Span::ms).collect();
            percentile(&v, q).unwrap_or(f64::NAN)
        }))
    };
    fn claims(r: &Run) -> &[Span] {
        &r.claims
    }
    fn with_claim(r: &Run) -> &[Span] {
        &r.with_claim
    }
    fn without(r: &Run) -> &[Span] {
        &r.without
    }
    let bind_p50 = stat(claims, 50.0);
    let bind_p99 = stat(claims, 99.0);
    let with_p50 = stat(with_claim, 50.0);
    let with_p99 = stat(with_claim, 99.0);
    let without_p50 = stat(without, 50.0);
    let without_p99 = stat(without, 99.0);
    let added_p99 = with_p99 - without_p99;
    let step = |pick: fn(&Run) -> &[Span], i: usize, q: f64| -> f64 {
        median(runs.iter().map(|run| {
            let v: Vec<f64> = pick(run).iter().filter_map(|s| s.step_ms(i)).collect();
            percentile(&v, q).unwrap_or(f64::NAN)
        }))
    };
    // (key, what, kind, step)
    let phases: [(&str, &str, Pick, usize); 7] = [
        (
            "claim_selected_node",
            "claim: node selected (scheduler PreBind)",
            claims,
            0,
        ),
        (
            "claim_handed_to_provisioner",
            "claim: handed to the provisioner (binder)",
            claims,
            1,
        ),
        (
            "claim_volume_set",
            "claim: volume bound (provisioned, binder)",
            claims,
            2,
        ),
        (
            "pod_with_pvc_scheduled",
            "pod with a claim: bound to the node",
            with_claim,
            0,
        ),
        (
            "pod_with_pvc_network",
            "pod with a claim: IP set (sandbox, CNI)",
            with_claim,
            1,
        ),
        (
            "pod_with_pvc_running",
            "pod with a claim: containers running",
            with_claim,
            2,
        ),
        (
            "pod_no_pvc_scheduled",
            "pod without volumes: bound to the node",
            without,
            0,
        ),
    ];
    let round = |x: f64| (x * 10.0).round() / 10.0;

    let mut report = Report::default();
    report.figure("pvcs", PVCS);
    report.figure("bind_p50_ms", round(bind_p50));
    report.figure("bind_p99_ms", round(bind_p99));
    report.figure("pod_with_pvc_ready_p50_ms", round(with_p50));
    report.figure("pod_with_pvc_ready_p99_ms", round(with_p99));
    report.figure("pod_no_pvc_ready_p50_ms", round(without_p50));
    report.figure("pod_no_pvc_ready_p99_ms", round(without_p99));
    report.figure("pvc_added_p99_ms", round(added_p99));
    report.figure("idle_bind_p50_ms", round(idle_bind));
    report.figure("idle_pod_with_pvc_ready_p50_ms", round(idle_with));
    report.figure("idle_pod_no_pvc_ready_p50_ms", round(idle_without));
    for (key, _, pick, i) in &phases {
        report.figure(&format!("phase_{key}_p50_ms"), round(step(*pick, *i, 50.0)));
        report.figure(&format!("phase_{key}_p99_ms"), round(step(*pick, *i, 99.0)));
    }
    report.header = vec!["measure".into(), "p50".into(), "p99".into()];
    let row = |what: &str, p50: f64, p99: f64| {
        vec![
            what.to_owned(),
            format!("{p50:.0} ms"),
            format!("{p99:.0} ms"),
        ]
    };
    report.rows = vec![
        row(
            &format!("claim create → Bound ({PVCS} claims, WaitForFirstConsumer)"),
            bind_p50,
            bind_p99,
        ),
        row(
            &format!("pod with a claim: create → Ready ({PVCS} pods)"),
            with_p50,
            with_p99,
        ),
        row(
            &format!("pod without volumes: create → Ready ({PLAIN_PODS} pods, same burst)"),
            without_p50,
            without_p99,
        ),
        vec![
            "added by the claim (p99 with − without)".into(),
            String::new(),
            format!("{added_p99:.0} ms (ratio {:.2})", with_p99 / without_p99),
        ],
    ];
    let p50_only = |what: String, p50: f64| vec![what, format!("{p50:.0} ms"), "—".to_owned()];
    report.rows.push(p50_only(
        format!("one at a time ({IDLE_PAIRS} claims): claim create → Bound"),
        idle_bind,
    ));
    report.rows.push(p50_only(
        format!("one at a time ({IDLE_PAIRS} pods): pod with a claim, create → Ready"),
        idle_with,
    ));
    report.rows.push(p50_only(
        format!("one at a time ({IDLE_PAIRS} pods): pod without volumes, create → Ready"),
        idle_without,
    ));
    for (_, what, pick, i) in &phases {
        report.rows.push(row(
            &format!("phase, from create: {what}"),
            step(*pick, *i, 50.0),
            step(*pick, *i, 99.0),
        ));
    }
    report.notes = vec![
        format!("{RUNS} runs on one release berth-server (apiserver, scheduler, root CA publisher, PV binder, pvc- and pv-protection), one release berth-agent and the release berth-csi driver it uses (`--csi-socket`); each run in a fresh namespace: {PVCS} claims (class `local`, 10Mi) each with a pod using it and {PLAIN_PODS} pods without volumes ({IMAGE}, `sleep 3600`, no probes, image preloaded), all created by {CLIENTS} HTTP/2 clients at once; times from each create request to the watch event showing the claim Bound or the pod Ready; medians of the per-run percentiles"),
        "a claim's create → Bound includes its pod's create and scheduling (WaitForFirstConsumer binds only then) and the provisioning on the node".into(),
        format!("after the bursts, {IDLE_PAIRS} claims with their pods and {IDLE_PAIRS} pods without volumes are created one at a time, each waited on until Ready: the latency of the chain itself (scheduler PreBind → agent CreateVolume and PV → binder → scheduler binds → agent stage/publish) on an idle cluster, p50"),
        "between runs the pods, claims, PVs and volume directories are deleted and waited on, and the agent has torn every pod down".into(),
        "anchor: k3s' local-path-provisioner creates each volume by running a helper pod on the node; no controlled published measurement of its provisioning time was found. User reports: usually under 3 s per StatefulSet pod with its claim, about 1 in 10 taking 5 min (https://github.com/kubernetes/kubernetes/issues/122003); several minutes for 100+ claims created at once (https://github.com/rancher/local-path-provisioner/issues/555); helper pods timing out after 120 s under load (https://github.com/rancher/local-path-provisioner/issues/178)".into(),
        "baselines: the pods without volumes run in the same run, in the same burst; the local-path-provisioner figures are quoted user reports from the links above, not run here".into(),
    ];
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_mounts_its_claim_and_a_plain_pod_has_no_volumes() {
        let with: Value = serde_json::from_slice(&pod("pv-1", Some("v-1"))).expect("JSON");
        assert_eq!(
            with["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "v-1"
        );
        assert_eq!(
            with["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            "/data"
        );
        let plain: Value = serde_json::from_slice(&pod("np-1", None)).expect("JSON");
        assert!(plain["spec"].get("volumes").is_none(), "{plain}");
        assert_eq!(plain["spec"]["containers"][0]["image"], IMAGE);
        let c: Value = serde_json::from_slice(&claim("v-1")).expect("JSON");
        assert_eq!(c["spec"]["resources"]["requests"]["storage"], "10Mi");
        assert!(c["spec"].get("storageClassName").is_none(), "{c}");
    }

    #[test]
    fn claims_are_seen_bound_once() {
        let spans: Spans = Arc::default();
        let t0 = Instant::now();
        let event = |phase: &str| serde_json::json!({"type": "MODIFIED", "object": {"metadata": {"name": "v-0"}, "status": {"phase": phase}}});
        assert_eq!(
            observe(&event("Pending"), t0, &spans, bound, &CLAIM_STEPS),
            0
        );
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(observe(&event("Bound"), t1, &spans, bound, &CLAIM_STEPS), 1);
        assert_eq!(
            observe(
                &event("Bound"),
                t1 + Duration::from_secs(1),
                &spans,
                bound,
                &CLAIM_STEPS
            ),
            1
        );
        let s = spans.lock().expect("lock")["v-0"];
        assert_eq!(s.done, Some(t1));
    }
}
