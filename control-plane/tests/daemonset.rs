//! The DaemonSet controller inside a real berth-server, with hollow nodes and their
//! fake kubelet: a pod on every fitting node and none on a tainted one, bound by the
//! scheduler through a `metadata.name` affinity term; a node added later gets its pod,
//! a relabelled one loses it; a rolling update with maxUnavailable 1 never leaves two
//! nodes without a ready pod (checked by a watcher); `kubectl rollout
//! status|history|undo` — through the real kubectl.

mod hollow;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_control_plane::client::from_kubeconfig;
use berth_testkit::{BerthServer, Kubectl};
use futures_util::StreamExt;
use hollow::{Kubelet, eventually, image, node, ready};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;

/// node → images of its live pods.
async fn placement(pods: &Api<Pod>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for p in pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .expect("list")
        .items
    {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        out.entry(node).or_default().push(image(&p));
    }
    out
}

const AGENT: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      nodeSelector: {role: worker}
      containers: [{name: agent, image: "agent:1"}]
"#;

#[test]
fn a_pod_per_fitting_node_following_nodes_and_rolling_within_max_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server =
        BerthServer::start_with(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir.path(), &[]);
    let Some(kubectl) = Kubectl::find(&server.kubeconfig(), dir.path()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = from_kubeconfig(&server.kubeconfig(), "e2e.test")
            .await
            .expect("client");
        let worker = json!({"role": "worker"});
        for n in ["n1", "n2", "n3"] {
            node(&client, n, "8", worker.clone(), json!([])).await;
        }
        node(
            &client,
            "tainted",
            "8",
            worker.clone(),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        )
        .await;
        let _kubelet = Kubelet::start(client.clone(), &["n1", "n2", "n3", "tainted"]);
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
        kubectl.apply(AGENT);
        let out = kubectl.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
        assert!(out.contains("successfully rolled out"), "{out}");
        let placed = placement(&pods).await;
        assert_eq!(placed.len(), 3, "{placed:?}");
        for n in ["n1", "n2", "n3"] {
            assert_eq!(
                placed.get(n).map(Vec::len),
                Some(1),
                "one pod on {n}: {placed:?}"
            );
        }
        let s = sets.get("agent").await.expect("ds").status.expect("status");
        assert_eq!(
            (
                s.desired_number_scheduled,
                s.current_number_scheduled,
                s.number_ready
            ),
            (3, 3, 3)
        );
        assert_eq!(s.number_misscheduled, 0);
        // The scheduler bound them through the metadata.name affinity term.
        let p = &pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .expect("list")
            .items[0];
        let terms = p
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .expect("required node affinity")
            .node_selector_terms;
        let field = &terms[0].match_fields.as_ref().expect("matchFields")[0];
        assert_eq!(field.key, "metadata.name");
        let tolerations = p
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable"))
        );

        // A node added later gets its pod; a relabelled one loses it.
        node(&client, "n4", "8", worker.clone(), json!([])).await;
        let _kubelet4 = Kubelet::start(client.clone(), &["n4"]);
        eventually("a pod on n4", Duration::from_secs(30), || async {
            placement(&pods).await.contains_key("n4").then_some(())
        })
        .await;
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .patch(
                "n3",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"role": "db"}}})),
            )
            .await
            .expect("relabel n3");
        eventually("n3's pod gone", Duration::from_secs(30), || async {
            (!placement(&pods).await.contains_key("n3")).then_some(())
        })
        .await;
        let out = kubectl.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
        assert!(out.contains("successfully rolled out"), "{out}");

        // Rolling update: a watcher checks no two nodes are without a ready pod.
        // `worst.1`: its latest view is the rollout's end (agent:2 ready on all three).
        let worst = Arc::new(Mutex::new((0usize, false)));
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn({
            let (pods, worst) = (pods.clone(), worst.clone());
            let mut synced_tx = Some(synced_tx);
            async move {
                let mut live: HashMap<String, Pod> = HashMap::new();
                let config = watcher::Config::default().labels("app=agent");
                let mut stream = std::pin::pin!(watcher(pods, config));
                while let Some(Ok(ev)) = stream.next().await {
                    match ev {
                        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                            live.insert(p.metadata.name.clone().unwrap_or_default(), p);
                        }
                        watcher::Event::Delete(p) => {
                            live.remove(p.metadata.name.as_deref().unwrap_or_default());
                        }
                        watcher::Event::InitDone => {
                            if let Some(tx) = synced_tx.take() {
                                let _ = tx.send(());
                            }
                            continue;
                        }
                        watcher::Event::Init => continue,
                    }
                    let covered: std::collections::HashSet<String> = live
                        .values()
                        .filter(|p| ready(p) && p.metadata.deletion_timestamp.is_none())
                        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
                        .collect();
                    let missing = ["n1", "n2", "n4"]
                        .iter()
                        .filter(|n| !covered.contains(**n))
                        .count();
                    let done = live
                        .values()
                        .filter(|p| ready(p) && p.metadata.deletion_timestamp.is_none())
                        .filter(|p| image(p) == "agent:2")
                        .count()
                        == 3;
                    let mut w = worst.lock().expect("lock");
                    w.0 = w.0.max(missing);
                    w.1 = done;
                }
            }
        });
        // Measure from the watcher's full initial list on (the partial one counts
        // nodes as uncovered).
        tokio::time::timeout(Duration::from_secs(30), synced_rx)
            .await
            .expect("the watcher synced within 30 s")
            .expect("the watcher ran");
        worst.lock().expect("lock").0 = 0;
        kubectl.ok(&["set", "image", "daemonset/agent", "agent=agent:2"]);
        let out = kubectl.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
        assert!(out.contains("successfully rolled out"), "{out}");
        let placed = placement(&pods).await;
        assert!(
            placed.values().all(|imgs| imgs == &["agent:2"]),
            "{placed:?}"
        );
        eventually(
            "the watcher to see the finished rollout",
            Duration::from_secs(30),
            || {
                let done = worst.lock().expect("lock").1;
                async move { done.then_some(()) }
            },
        )
        .await;
        watch.abort();
        let worst = worst.lock().expect("lock").0;
        assert!(worst <= 1, "{worst} nodes at once without a ready pod");
        let history = kubectl.ok(&["rollout", "history", "daemonset/agent"]);
        assert!(history.contains('2'), "{history}");
        kubectl.ok(&["rollout", "undo", "daemonset/agent"]);
        let out = kubectl.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
        assert!(out.contains("successfully rolled out"), "{out}");
        eventually("back to agent:1", Duration::from_secs(30), || async {
            let placed = placement(&pods).await;
            (placed.len() == 3 && placed.values().all(|imgs| imgs == &["agent:1"])).then_some(())
        })
        .await;
    });
}

#[test]
fn failed_daemon_pods_are_replaced_with_a_growing_back_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server =
        BerthServer::start_with(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir.path(), &[]);
    let Some(kubectl) = Kubectl::find(&server.kubeconfig(), dir.path()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = from_kubeconfig(&server.kubeconfig(), "e2e.test")
            .await
            .expect("client");
        node(&client, "n1", "8", json!({}), json!([])).await;
        let _kubelet = Kubelet::start(client.clone(), &["n1"]);
        // The hollow kubelet fails every pod of this DaemonSet 100 ms after it runs.
        kubectl.apply(
            r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: crashy}
spec:
  selector: {matchLabels: {app: crashy}}
  template:
    metadata:
      labels: {app: crashy}
      annotations: {hollow.berth.io/exit-code: "1", hollow.berth.io/run-ms: "100"}
    spec: {containers: [{name: c, image: busybox}]}
"#,
        );
        // The 8 s are the measuring window of the failure rate, not a wait for a state.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let events = kubectl.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=crashy,reason=FailedDaemonPod",
            "-o",
            "name",
        ]);
        let failures = events.lines().count();
        // Without back-off a pod fails and is replaced every few hundred ms (> 15 in
        // 8 s); with 1 s, 2 s, 4 s… at most a handful.
        assert!(
            (1..=6).contains(&failures),
            "{failures} failed pods replaced in 8 s"
        );
    });
}
