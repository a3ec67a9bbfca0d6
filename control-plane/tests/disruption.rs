//! PodDisruptionBudgets inside a real berth-server, with hollow nodes and a fake
//! kubelet (tests/hollow), driven by the real kubectl and kube-rs: the disruption
//! controller's status, the eviction API refusing (429) and granting evictions (the
//! pod marked DisruptionTarget before it goes), `kubectl drain` (protobuf Evictions)
//! failing while a budget blocks it, a percent maxUnavailable, and validation.

mod hollow;

use std::time::Duration;

use berth_testkit::{BerthServer, Kubectl};
use futures_util::StreamExt;
use hollow::{Kubelet, eventually, node, ready};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, ListParams};
use kube::runtime::watcher;
use serde_json::json;

fn server(dir: &std::path::Path) -> BerthServer {
    BerthServer::start_with(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir, &[])
}

/// A client that does not retry 429s itself (kube-rs does by default): the tests want
/// to see them.
async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    config.default_retry = false;
    kube::Client::try_from(config).expect("client")
}

async fn ready_pods(api: &Api<Pod>, selector: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && ready(p))
        .collect()
}

/// `(currentHealthy, desiredHealthy, disruptionsAllowed, expectedPods)` once the
/// controller has observed the budget's generation.
async fn status_of(api: &Api<PodDisruptionBudget>, name: &str) -> Option<(i32, i32, i32, i32)> {
    let pdb = api.get(name).await.ok()?;
    let s = pdb.status?;
    (s.observed_generation == pdb.metadata.generation).then_some((
        s.current_healthy.unwrap_or(0),
        s.desired_healthy.unwrap_or(0),
        s.disruptions_allowed.unwrap_or(0),
        s.expected_pods.unwrap_or(0),
    ))
}

async fn wait_status(
    api: &Api<PodDisruptionBudget>,
    name: &str,
    want: (i32, i32, i32, i32),
) -> PodDisruptionBudget {
    eventually(
        &format!("budget {name} at (current, desired, allowed, expected) = {want:?}"),
        Duration::from_secs(30),
        || async move {
            (status_of(api, name).await == Some(want)).then_some(())?;
            api.get(name).await.ok()
        },
    )
    .await
}

fn deployment(name: &str, replicas: i32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - {{name: c, image: "berth.local/testserver:v1"}}
"#
    )
}

const WEB_BUDGET: &str = r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
"#;

const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

#[test]
fn budget_blocks_then_grants_evictions_and_drain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path());
    let Some(kubectl) = Kubectl::find(&server.kubeconfig(), dir.path()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = client(&server.kubeconfig()).await;
        node(&client, "n1", "8", json!({}), json!([])).await;
        let _kubelet = Kubelet::start(client.clone(), &["n1"]);
        kubectl.apply(&deployment("web", 2));
        let out = kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
        assert!(out.contains("successfully rolled out"), "{out}");
        kubectl.apply(WEB_BUDGET);
        let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
        let pdb = wait_status(&budgets, "web", (2, 2, 0, 2)).await;
        let condition = pdb
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "DisruptionAllowed")
            .expect("DisruptionAllowed condition");
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "InsufficientPods")
        );

        // kube-rs: 429 with upstream's message and cause.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let victim = ready_pods(&pods, "app=web").await[0]
            .metadata
            .name
            .clone()
            .expect("name");
        match pods.evict(&victim, &EvictParams::default()).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(
                    (s.code, s.reason.as_str()),
                    (429, "TooManyRequests"),
                    "{s:?}"
                );
                assert_eq!(s.message, VIOLATION);
                let cause = &s.details.expect("details").causes[0];
                assert_eq!(cause.reason, "DisruptionBudget");
                assert_eq!(
                    cause.message,
                    "The disruption budget web needs 2 healthy pods and has 2 currently"
                );
            }
            other => panic!("eviction should be refused with 429, got {other:?}"),
        }

        // kubectl drain (protobuf Evictions) keeps being refused until its timeout.
        let err = kubectl.fails(&[
            "drain",
            "n1",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=5s",
        ]);
        assert!(err.contains(VIOLATION), "drain: {err}");
        kubectl.ok(&["uncordon", "n1"]);
        assert_eq!(
            ready_pods(&pods, "app=web").await.len(),
            2,
            "nothing was evicted"
        );

        // With a third pod one disruption is allowed: one eviction goes (the pod marked
        // DisruptionTarget first), the next is refused.
        kubectl.ok(&["scale", "deployment/web", "--replicas=3"]);
        wait_status(&budgets, "web", (3, 2, 1, 3)).await;
        let victim = ready_pods(&pods, "app=web").await[0]
            .metadata
            .name
            .clone()
            .expect("name");
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let seen = tokio::spawn({
            let pods = pods.clone();
            let victim = victim.clone();
            let mut synced_tx = Some(synced_tx);
            async move {
                let cfg = watcher::Config::default().labels("app=web");
                let mut stream = std::pin::pin!(watcher(pods, cfg));
                while let Some(Ok(ev)) = stream.next().await {
                    if matches!(ev, watcher::Event::InitDone)
                        && let Some(tx) = synced_tx.take()
                    {
                        let _ = tx.send(());
                    }
                    if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev
                        && p.metadata.name.as_deref() == Some(victim.as_str())
                    {
                        let target = p
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionTarget"))
                            .cloned();
                        if let Some(c) = target {
                            return (c, p.metadata.deletion_timestamp.is_some());
                        }
                    }
                }
                panic!("the watch ended before the DisruptionTarget condition");
            }
        });
        // Evict only once the watcher has its initial list, so it sees every change after.
        tokio::time::timeout(Duration::from_secs(30), synced_rx)
            .await
            .expect("the watcher synced within 30 s")
            .expect("the watcher ran");
        let status = pods
            .evict(&victim, &EvictParams::default())
            .await
            .expect("one eviction is allowed");
        assert_eq!(status.code, 201, "{status:?}");
        let next = ready_pods(&pods, "app=web")
            .await
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .find(|n| *n != victim)
            .expect("another ready pod");
        match pods.evict(&next, &EvictParams::default()).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 429, "{s:?}"),
            other => panic!("the second eviction should be refused, got {other:?}"),
        }
        let (condition, deleting) = tokio::time::timeout(Duration::from_secs(10), seen)
            .await
            .expect("DisruptionTarget within 10 s")
            .expect("watch task");
        assert_eq!(condition.status, "True");
        assert_eq!(condition.reason.as_deref(), Some("EvictionByEvictionAPI"));
        assert_eq!(condition.message.as_deref(), Some("Eviction API: evicting"));
        assert!(!deleting, "the condition is written before the delete");
        // The evicted pod goes and is replaced; the budget recovers.
        wait_status(&budgets, "web", (3, 2, 1, 3)).await;
        assert!(pods.get_opt(&victim).await.expect("get").is_none());
    });
}

#[test]
fn percent_max_unavailable_and_validation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path());
    let Some(kubectl) = Kubectl::find(&server.kubeconfig(), dir.path()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = client(&server.kubeconfig()).await;
        node(&client, "n1", "8", json!({}), json!([])).await;
        let _kubelet = Kubelet::start(client.clone(), &["n1"]);
        kubectl.apply(&deployment("api", 5));
        let out = kubectl.ok(&["rollout", "status", "deployment/api", "--timeout=60s"]);
        assert!(out.contains("successfully rolled out"), "{out}");
        // 25% of the Deployment's 5 replicas, rounded up: 2 may be unavailable.
        kubectl.apply(
            r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: api}
spec:
  maxUnavailable: 25%
  selector: {matchLabels: {app: api}}
"#,
        );
        let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
        wait_status(&budgets, "api", (5, 3, 2, 5)).await;
        // The scale follows the Deployment, not the pods counted.
        kubectl.ok(&["scale", "deployment/api", "--replicas=8"]);
        wait_status(&budgets, "api", (8, 6, 2, 8)).await;

        let out = kubectl
            .cmd(&["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().expect("stdin").write_all(
                    br#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: both}
spec:
  minAvailable: 1
  maxUnavailable: 1
  selector: {matchLabels: {app: api}}
"#,
                )?;
                child.wait_with_output()
            })
            .expect("kubectl apply");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "both fields must be refused");
        assert!(
            stderr.contains("is invalid: spec: Invalid value:")
                && stderr.contains("minAvailable and maxUnavailable cannot be both set"),
            "{stderr}"
        );
        let bad = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "bad"}, "spec": {"minAvailable": -1, "maxUnavailable": "150%"}});
        let bad: PodDisruptionBudget = serde_json::from_value(bad).expect("pdb");
        match budgets.create(&Default::default(), &bad).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{s:?}");
                let fields: Vec<String> = s
                    .details
                    .expect("details")
                    .causes
                    .into_iter()
                    .map(|c| c.field)
                    .collect();
                for f in ["spec", "spec.minAvailable", "spec.maxUnavailable"] {
                    assert!(fields.iter().any(|x| x == f), "{f} in {fields:?}");
                }
            }
            other => panic!("an invalid budget must be refused, got {other:?}"),
        }
    });
}
