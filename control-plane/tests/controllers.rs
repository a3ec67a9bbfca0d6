//! The controllers inside a real berth-server, with hollow nodes and a fake kubelet
//! (tests/hollow): Deployments roll out, update within maxSurge/maxUnavailable (checked
//! continuously by a watcher) and roll back with the real kubectl; ReplicaSets adopt
//! orphans; EndpointSlices and Endpoints follow pod readiness; namespaces cascade;
//! the garbage collector honours background, foreground and orphan deletion; a node
//! whose Lease stops is tainted and its pods evicted after their tolerationSeconds;
//! pods on deleted nodes are collected; two controller managers elect one leader.

mod hollow;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_control_plane::client::from_kubeconfig;
use berth_testkit::{BerthServer, Kubectl};
use futures_util::StreamExt;
use hollow::{Kubelet, default_service_account, eventually, image, node, ready};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

/// Waits until the garbage collector has finished a cascade started now (an owner
/// `name` deleted in the background, its dependent collected): the point after which
/// a decision it should not make about earlier objects would have been made.
async fn gc_barrier(cms: &Api<ConfigMap>, name: &str) {
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).expect("cm"),
        )
        .await
        .expect("barrier owner");
    let dep = format!("{name}-dep");
    let dependent = json!({"metadata": {"name": dep, "ownerReferences": [{"apiVersion": "v1",
        "kind": "ConfigMap", "name": name, "uid": owner.metadata.uid}]}});
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(dependent).expect("cm"),
    )
    .await
    .expect("barrier dependent");
    cms.delete(name, &DeleteParams::background())
        .await
        .expect("delete barrier owner");
    eventually(&format!("{dep} collected"), Duration::from_secs(20), || {
        let cms = cms.clone();
        let dep = dep.clone();
        async move { cms.get_opt(&dep).await.ok()?.is_none().then_some(()) }
    })
    .await;
}

fn server(dir: &std::path::Path, args: &[&str]) -> BerthServer {
    BerthServer::start_with(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir, args)
}

async fn live_pods(api: &Api<Pod>, selector: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 10
  selector: {matchLabels: {app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 3, maxUnavailable: 2}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "berth.local/testserver:v1", ports: [{name: http, containerPort: 8080}]}
"#;

#[test]
fn deployment_rolls_out_updates_within_bounds_and_rolls_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path(), &[]);
    let Some(kubectl) = Kubectl::find(&server.kubeconfig(), dir.path()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = from_kubeconfig(&server.kubeconfig(), "e2e.test")
            .await
            .expect("client");
        for n in ["n1", "n2", "n3"] {
            node(&client, n, "8", json!({}), json!([])).await;
        }
        let _kubelet = Kubelet::start(client.clone(), &["n1", "n2", "n3"]);
        kubectl.apply(WEB);
        let out = kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
        assert!(out.contains("successfully rolled out"), "{out}");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
        let d = deployments.get("web").await.expect("get web");
        let status = d.status.clone().expect("status");
        assert_eq!(
            (
                status.replicas,
                status.available_replicas,
                status.updated_replicas
            ),
            (Some(10), Some(10), Some(10))
        );
        let available = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_.as_deref() == Some("Available"))
            .expect("Available condition");
        assert_eq!(available.status.as_deref(), Some("True"));

        // A watcher checks every state of the rollout: never fewer than 10 - 2 ready
        // pods, never more than 10 + 3 pods. `seen.2`: its latest view is the rollout's
        // end (10 ready v2 pods), so it has seen every state before it.
        let seen = Arc::new(Mutex::new((usize::MAX, 0usize, false)));
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn({
            let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
            let seen = seen.clone();
            let mut synced_tx = Some(synced_tx);
            async move {
                let mut current: HashMap<String, Pod> = HashMap::new();
                let mut stream =
                    std::pin::pin!(watcher(pods, watcher::Config::default().labels("app=web")));
                let mut synced = false;
                while let Some(Ok(ev)) = stream.next().await {
                    match ev {
                        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                            current.insert(p.metadata.name.clone().unwrap_or_default(), p);
                        }
                        watcher::Event::Delete(p) => {
                            current.remove(&p.metadata.name.clone().unwrap_or_default());
                        }
                        watcher::Event::Init => current.clear(),
                        watcher::Event::InitDone => synced = true,
                    }
                    if !synced {
                        continue;
                    }
                    if let Some(tx) = synced_tx.take() {
                        let _ = tx.send(());
                    }
                    let live: Vec<&Pod> = current
                        .values()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .collect();
                    let ready = live.iter().filter(|p| ready(p)).count();
                    let mut s = seen.lock().expect("lock");
                    s.0 = s.0.min(ready);
                    s.1 = s.1.max(live.len());
                    s.2 = live.len() == 10
                        && ready == 10
                        && live.iter().all(|p| image(p).ends_with(":v2"));
                }
            }
        });
        // The update starts only once the watcher has its initial list.
        tokio::time::timeout(Duration::from_secs(30), synced_rx)
            .await
            .expect("the watcher synced within 30 s")
            .expect("the watcher ran");
        kubectl.ok(&[
            "set",
            "image",
            "deployment/web",
            "web=berth.local/testserver:v2",
        ]);
        let out = kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
        assert!(out.contains("successfully rolled out"), "{out}");
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let live = eventually("10 v2 pods", Duration::from_secs(30), || {
            let pods = pods.clone();
            async move {
                let live = live_pods(&pods, "app=web").await;
                (live.len() == 10 && live.iter().all(|p| image(p).ends_with(":v2"))).then_some(live)
            }
        })
        .await;
        assert_eq!(live.len(), 10);
        eventually(
            "the watcher to see the finished rollout",
            Duration::from_secs(30),
            || {
                let done = seen.lock().expect("lock").2;
                async move { done.then_some(()) }
            },
        )
        .await;
        watch.abort();
        let (min_ready, max_total, _) = *seen.lock().expect("lock");
        assert!(
            min_ready >= 8,
            "ready pods dropped to {min_ready} (< replicas - maxUnavailable = 8)"
        );
        assert!(
            max_total <= 13,
            "{max_total} pods at once (> replicas + maxSurge = 13)"
        );
        assert!(min_ready < usize::MAX, "the watcher saw the rollout");

        // Two ReplicaSets, revisions 1 and 2; `rollout undo` brings v1 back as revision 3.
        let history = kubectl.ok(&["rollout", "history", "deployment/web"]);
        assert!(history.contains('1') && history.contains('2'), "{history}");
        kubectl.ok(&["rollout", "undo", "deployment/web"]);
        let out = kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
        assert!(out.contains("successfully rolled out"), "{out}");
        eventually("10 v1 pods again", Duration::from_secs(30), || {
            let pods = pods.clone();
            async move {
                let live = live_pods(&pods, "app=web").await;
                (live.len() == 10 && live.iter().all(|p| image(p).ends_with(":v1"))).then_some(())
            }
        })
        .await;
        let d = deployments.get("web").await.expect("get web");
        assert_eq!(
            d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                .map(String::as_str),
            Some("3")
        );
        let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
        let list = rss
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("rs");
        assert_eq!(
            list.items.len(),
            2,
            "the v1 ReplicaSet was reused, not copied"
        );

        // Scale through the scale subresource; deletion cascades (background).
        kubectl.ok(&["scale", "deployment/web", "--replicas=4"]);
        eventually("4 pods", Duration::from_secs(30), || {
            let pods = pods.clone();
            async move { (live_pods(&pods, "app=web").await.len() == 4).then_some(()) }
        })
        .await;
        kubectl.ok(&["delete", "deployment/web"]);
        eventually(
            "ReplicaSets and pods collected",
            Duration::from_secs(30),
            || {
                let (pods, rss) = (pods.clone(), rss.clone());
                async move {
                    let p = pods
                        .list(&ListParams::default().labels("app=web"))
                        .await
                        .ok()?;
                    let r = rss
                        .list(&ListParams::default().labels("app=web"))
                        .await
                        .ok()?;
                    (p.items.is_empty() && r.items.is_empty()).then_some(())
                }
            },
        )
        .await;
    });
}

#[test]
fn replicasets_adopt_orphans_and_endpoints_follow_readiness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = from_kubeconfig(&server.kubeconfig(), "e2e.test").await.expect("client");
        node(&client, "n1", "8", json!({}), json!([])).await;
        let _kubelet = Kubelet::start(client.clone(), &["n1"]);
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        // A pod is admitted once its namespace's default ServiceAccount exists; on a busy
        // machine the controller may make it later than admission's 1.35 s wait.
        default_service_account(&client, "default").await;
        // An orphan that the ReplicaSet will adopt instead of creating a third pod.
        let orphan: Pod = serde_json::from_value(json!({
            "metadata": {"name": "orphan", "labels": {"app": "echo"}},
            "spec": {"containers": [{"name": "c", "image": "berth.local/testserver:v1",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
        })).expect("pod");
        pods.create(&PostParams::default(), &orphan).await.expect("orphan");
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "echo"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "echo"}},
                "template": {"metadata": {"labels": {"app": "echo"}},
                    "spec": {"containers": [{"name": "c", "image": "berth.local/testserver:v1",
                        "ports": [{"name": "http", "containerPort": 8080}]}]}}},
        })).expect("rs");
        let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
        rss.create(&PostParams::default(), &rs).await.expect("create rs");
        eventually("3 ready replicas", Duration::from_secs(30), || {
            let rss = rss.clone();
            async move {
                let rs = rss.get("echo").await.ok()?;
                (rs.status?.ready_replicas == Some(3)).then_some(())
            }
        })
        .await;
        let all = live_pods(&pods, "app=echo").await;
        assert_eq!(all.len(), 3);
        let adopted = pods.get("orphan").await.expect("orphan kept");
        let owner = adopted.metadata.owner_references.unwrap_or_default();
        assert!(owner.iter().any(|r| r.kind == "ReplicaSet" && r.name == "echo" && r.controller == Some(true)), "{owner:?}");

        // A Service with a named targetPort: one slice, port resolved, all ready.
        let svc = serde_json::from_value(json!({
            "metadata": {"name": "echo"},
            "spec": {"selector": {"app": "echo"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]},
        })).expect("svc");
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &svc).await.expect("create svc");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let slice = eventually("a slice with 3 ready endpoints", Duration::from_secs(20), || {
            let slices = slices.clone();
            async move {
                let l = slices.list(&ListParams::default().labels("kubernetes.io/service-name=echo")).await.ok()?;
                let s = l.items.into_iter().next()?;
                let n = s.endpoints.as_ref().map(|e| e.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)).count());
                (n == Some(3)).then_some(s)
            }
        })
        .await;
        let port = slice.ports.unwrap_or_default().into_iter().next().expect("a port");
        assert_eq!((port.name.as_deref(), port.port), (Some("web"), Some(8080)));
        assert_eq!(slice.metadata.owner_references.unwrap_or_default().first().map(|r| r.kind.clone()).as_deref(), Some("Service"));
        // The orphan turns not ready: ready=false in the slice, notReadyAddresses in Endpoints.
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        pods.patch_status("orphan", &PatchParams::default(), &Patch::Merge(patch)).await.expect("unready");
        let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
        eventually("the not-ready address", Duration::from_secs(20), || {
            let eps = eps.clone();
            async move {
                let e = eps.get("echo").await.ok()?;
                let s = e.subsets?.into_iter().next()?;
                (s.addresses.map(|a| a.len()) == Some(2) && s.not_ready_addresses.map(|a| a.len()) == Some(1)).then_some(())
            }
        })
        .await;
        // Scaled down: the not-ready pod goes first.
        rss.patch("echo", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await.expect("scale");
        eventually("the not-ready pod deleted first", Duration::from_secs(20), || {
            let pods = pods.clone();
            async move {
                let live = live_pods(&pods, "app=echo").await;
                (live.len() == 2 && live.iter().all(|p| p.metadata.name.as_deref() != Some("orphan"))).then_some(())
            }
        })
        .await;
    });
}

#[test]
fn namespaces_cascade_and_the_collector_honours_propagation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path(), &[]);
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
        kubectl.ok(&["create", "namespace", "team"]);
        default_service_account(&client, "team").await;
        kubectl.ok(&[
            "-n",
            "team",
            "create",
            "deployment",
            "app",
            "--image=berth.local/testserver:v1",
            "--replicas=2",
        ]);
        kubectl.ok(&[
            "-n",
            "team",
            "create",
            "configmap",
            "settings",
            "--from-literal=a=1",
        ]);
        let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
        eventually("2 pods in team", Duration::from_secs(30), || {
            let pods = pods.clone();
            async move {
                (live_pods(&pods, "app=app")
                    .await
                    .iter()
                    .filter(|p| ready(p))
                    .count()
                    == 2)
                    .then_some(())
            }
        })
        .await;
        kubectl.ok(&["delete", "namespace", "team", "--wait=false"]);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = namespaces.get("team").await.expect("terminating namespace");
        assert_eq!(
            ns.status.and_then(|s| s.phase).as_deref(),
            Some("Terminating")
        );
        eventually("the namespace gone", Duration::from_secs(60), || {
            let namespaces = namespaces.clone();
            async move {
                namespaces
                    .get_opt("team")
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        })
        .await;
        assert!(
            pods.list(&ListParams::default())
                .await
                .map(|l| l.items.is_empty())
                .unwrap_or(true)
        );

        // The garbage collector, on ConfigMaps owned by ConfigMaps.
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let make = |name: &str, owner: Option<&ConfigMap>, finalizers: Vec<&str>| {
            let refs: Vec<_> = owner
                .into_iter()
                .map(|o| {
                    json!({"apiVersion": "v1", "kind": "ConfigMap",
                "name": o.metadata.name, "uid": o.metadata.uid, "blockOwnerDeletion": true})
                })
                .collect();
            serde_json::from_value::<ConfigMap>(json!({"metadata": {"name": name,
                "ownerReferences": refs, "finalizers": finalizers}}))
            .expect("cm")
        };
        let pp = PostParams::default();
        // Background: the dependent follows its owner.
        let owner = cms
            .create(&pp, &make("bg-owner", None, vec![]))
            .await
            .expect("owner");
        cms.create(&pp, &make("bg-dep", Some(&owner), vec![]))
            .await
            .expect("dep");
        cms.delete("bg-owner", &DeleteParams::background())
            .await
            .expect("delete");
        eventually("bg-dep collected", Duration::from_secs(20), || {
            let cms = cms.clone();
            async move { cms.get_opt("bg-dep").await.ok()?.is_none().then_some(()) }
        })
        .await;
        // Orphan: the dependent stays, without the reference.
        let owner = cms
            .create(&pp, &make("or-owner", None, vec![]))
            .await
            .expect("owner");
        cms.create(&pp, &make("or-dep", Some(&owner), vec![]))
            .await
            .expect("dep");
        kubectl.ok(&["delete", "configmap", "or-owner", "--cascade=orphan"]);
        eventually("or-owner gone", Duration::from_secs(20), || {
            let cms = cms.clone();
            async move { cms.get_opt("or-owner").await.ok()?.is_none().then_some(()) }
        })
        .await;
        // The collector has moved on past or-owner's deletion: a later cascade is done.
        gc_barrier(&cms, "or-barrier").await;
        let dep = cms
            .get("or-dep")
            .await
            .expect("or-dep orphaned, not deleted");
        assert!(dep.metadata.owner_references.unwrap_or_default().is_empty());
        // Foreground: the owner waits (foregroundDeletion) until its blocking dependent,
        // held here by a finalizer, is gone.
        let owner = cms
            .create(&pp, &make("fg-owner", None, vec![]))
            .await
            .expect("owner");
        cms.create(
            &pp,
            &make("fg-dep", Some(&owner), vec!["test.berth.dev/hold"]),
        )
        .await
        .expect("dep");
        cms.delete("fg-owner", &DeleteParams::foreground())
            .await
            .expect("delete");
        eventually(
            "fg-dep marked for deletion",
            Duration::from_secs(20),
            || {
                let cms = cms.clone();
                async move {
                    cms.get("fg-dep")
                        .await
                        .ok()?
                        .metadata
                        .deletion_timestamp
                        .map(drop)
                }
            },
        )
        .await;
        // The collector has moved on past fg-dep: a later cascade is done, and fg-owner
        // still waits.
        gc_barrier(&cms, "fg-barrier").await;
        let waiting = cms
            .get("fg-owner")
            .await
            .expect("fg-owner waits for its dependent");
        assert!(
            waiting
                .metadata
                .finalizers
                .unwrap_or_default()
                .contains(&"foregroundDeletion".to_owned())
        );
        cms.patch(
            "fg-dep",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release");
        eventually("fg-owner gone", Duration::from_secs(20), || {
            let cms = cms.clone();
            async move { cms.get_opt("fg-owner").await.ok()?.is_none().then_some(()) }
        })
        .await;
    });
}

#[test]
fn a_node_whose_lease_stops_is_tainted_and_its_pods_evicted_after_their_toleration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path(), &["--node-monitor-grace-period=3s"]);
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = from_kubeconfig(&server.kubeconfig(), "e2e.test").await.expect("client");
        node(&client, "n1", "8", json!({"zone": "a"}), json!([])).await;
        node(&client, "n2", "8", json!({"zone": "b"}), json!([])).await;
        let kubelet = Kubelet::start(client.clone(), &["n1", "n2"]);
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        // Pods are admitted once the namespace's default ServiceAccount exists (the
        // serviceaccount controller makes it a moment after start).
        default_service_account(&client, "default").await;
        let pp = PostParams::default();
        for (name, toleration) in [("quick", Some(2)), ("default", None)] {
            let mut spec = json!({"nodeSelector": {"zone": "a"},
                "containers": [{"name": "c", "image": "berth.local/testserver:v1"}]});
            if let Some(secs) = toleration {
                spec["tolerations"] = json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                    "effect": "NoExecute", "tolerationSeconds": secs}]);
            }
            let p: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("pod");
            pods.create(&pp, &p).await.expect("create");
        }
        eventually("both pods running on n1", Duration::from_secs(20), || {
            let pods = pods.clone();
            async move { (live_pods(&pods, "").await.iter().filter(|p| ready(p)).count() == 2).then_some(()) }
        })
        .await;
        // The default toleration came from admission (DefaultTolerationSeconds).
        let d = pods.get("default").await.expect("default");
        let tol = d.spec.and_then(|s| s.tolerations).unwrap_or_default();
        assert!(tol.iter().any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable") && t.toleration_seconds == Some(300)));

        kubelet.kill("n1");
        let nodes: Api<Node> = Api::all(client.clone());
        eventually("n1 Unknown and tainted unreachable:NoExecute", Duration::from_secs(20), || {
            let nodes = nodes.clone();
            async move {
                let n = nodes.get("n1").await.ok()?;
                let unknown = n.status.as_ref()?.conditions.as_ref()?.iter()
                    .any(|c| c.type_ == "Ready" && c.status == "Unknown");
                let tainted = n.spec.as_ref()?.taints.as_ref()?.iter()
                    .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
                (unknown && tainted).then_some(())
            }
        })
        .await;
        // Times are checked against the objects' own clocks: the grace period runs from
        // the last Lease renewal (which may precede the kill by a renewal interval) and
        // tolerationSeconds from the taint's timeAdded (kept at second precision).
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let renewed = leases.get("n1").await.expect("lease").spec.and_then(|s| s.renew_time).expect("renewTime").0;
        let n1 = nodes.get("n1").await.expect("n1");
        let added = n1.spec.and_then(|s| s.taints).unwrap_or_default().into_iter()
            .find(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
            .and_then(|t| t.time_added).expect("timeAdded").0;
        assert!(
            added + jiff::SignedDuration::from_secs(1) >= renewed + jiff::SignedDuration::from_secs(3),
            "tainted at {added} before the grace period after the last renewal at {renewed}"
        );
        let evicted = eventually("quick evicted", Duration::from_secs(20), || {
            let pods = pods.clone();
            async move { pods.get("quick").await.ok()?.metadata.deletion_timestamp.map(|_| jiff::Timestamp::now()) }
        })
        .await;
        assert!(
            evicted >= added + jiff::SignedDuration::from_secs(2),
            "evicted at {evicted}, before timeAdded {added} + tolerationSeconds 2"
        );
        let d = pods.get("default").await.expect("default still there");
        assert!(d.metadata.deletion_timestamp.is_none(), "a 300 s toleration was cut short");
        // n2 is healthy: no taint; memory pressure brings its NoSchedule taint.
        let n2 = nodes.get("n2").await.expect("n2");
        assert!(n2.spec.and_then(|s| s.taints).unwrap_or_default().is_empty());
        let pressure = |status: &str| json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": status}]}});
        nodes.patch_status("n2", &PatchParams::default(), &Patch::Strategic(pressure("True"))).await.expect("pressure");
        eventually("the memory-pressure taint", Duration::from_secs(10), || {
            let nodes = nodes.clone();
            async move {
                let n = nodes.get("n2").await.ok()?;
                n.spec?.taints?.iter().any(|t| t.key == "node.kubernetes.io/memory-pressure" && t.effect == "NoSchedule").then_some(())
            }
        })
        .await;
        nodes.patch_status("n2", &PatchParams::default(), &Patch::Strategic(pressure("False"))).await.expect("no pressure");
        eventually("the taint removed", Duration::from_secs(10), || {
            let nodes = nodes.clone();
            async move { nodes.get("n2").await.ok()?.spec?.taints.unwrap_or_default().is_empty().then_some(()) }
        })
        .await;

        // Pod GC: a pod bound to a node that no longer exists is deleted.
        nodes.delete("n1", &DeleteParams::default()).await.expect("delete n1");
        eventually("pods of the deleted node collected", Duration::from_secs(30), || {
            let pods = pods.clone();
            async move { pods.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(()) }
        })
        .await;
    });
}

#[test]
fn two_controller_managers_elect_one_leader_and_fail_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = server(dir.path(), &["--controllers=false", "--scheduler=false"]);
    let spawn = |name: &str| {
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_berth-server"))
            .args(["--apiserver=false", "--scheduler=false", "--kubeconfig"])
            .arg(api.kubeconfig())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn controller manager");
        berth_testkit::ChildGuard(child)
    };
    let mut managers = vec![Some(spawn("cm-a")), Some(spawn("cm-b"))];
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = from_kubeconfig(&api.kubeconfig(), "e2e.test").await.expect("client");
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
        let holder = eventually("a leader", Duration::from_secs(20), || {
            let leases = leases.clone();
            async move { leases.get_opt("kube-controller-manager").await.ok()??.spec?.holder_identity }
        })
        .await;
        // Which process leads: the one whose log says it became leader as the holder.
        let leads = |name: &str, identity: &str| {
            std::fs::read_to_string(dir.path().join(format!("{name}.log")))
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("became leader") && l.contains(identity))
        };
        eventually("the holder's log to say it leads", Duration::from_secs(10), || {
            let found = leads("cm-a", &holder) || leads("cm-b", &holder);
            async move { found.then_some(()) }
        })
        .await;
        // The other stays a follower while the leader renews (every 2 s retry period,
        // in which the follower tries too).
        let renewed = |l: Lease| l.spec.and_then(|s| s.renew_time).map(|t| t.0);
        let first = renewed(leases.get("kube-controller-manager").await.expect("lease"));
        eventually("the leader to renew its Lease", Duration::from_secs(20), || {
            let leases = leases.clone();
            let holder = holder.clone();
            async move {
                let l = leases.get("kube-controller-manager").await.ok()?;
                (l.spec.as_ref()?.holder_identity.as_ref() == Some(&holder) && renewed(l) > first).then_some(())
            }
        })
        .await;
        let (a, b) = (leads("cm-a", "became leader"), leads("cm-b", "became leader"));
        assert!(a ^ b, "exactly one leader (a: {a}, b: {b})");
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let owner = cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "o1"}})).expect("cm")).await.expect("o1");
        let dep = json!({"metadata": {"name": "d1", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o1", "uid": owner.metadata.uid}]}});
        cms.create(&PostParams::default(), &serde_json::from_value(dep).expect("cm")).await.expect("d1");
        // Kill the leader: the other takes the Lease once it expires and acts.
        managers[if a { 0 } else { 1 }] = None;
        cms.delete("o1", &DeleteParams::background()).await.expect("delete o1");
        let next = eventually("a new leader", Duration::from_secs(40), || {
            let leases = leases.clone();
            let holder = holder.clone();
            async move {
                let l = leases.get_opt("kube-controller-manager").await.ok()??;
                let h = l.spec?.holder_identity?;
                (h != holder).then_some(h)
            }
        })
        .await;
        assert_ne!(next, holder);
        eventually("the new leader collects d1", Duration::from_secs(30), || {
            let cms = cms.clone();
            async move { cms.get_opt("d1").await.ok()?.is_none().then_some(()) }
        })
        .await;
    });
    drop(managers);
}

#[test]
fn paused_deployments_wait_and_stuck_ones_exceed_their_progress_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path(), &[]);
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
        kubectl.ok(&[
            "create",
            "deployment",
            "app",
            "--image=berth.local/testserver:v1",
            "--replicas=2",
        ]);
        kubectl.ok(&["rollout", "status", "deployment/app", "--timeout=60s"]);
        let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
        // Paused: a new template makes no new ReplicaSet until resumed.
        kubectl.ok(&["rollout", "pause", "deployment/app"]);
        kubectl.ok(&[
            "set",
            "image",
            "deployment/app",
            "testserver=berth.local/testserver:v2",
        ]);
        // The controller has handled the new template once it observed its generation.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
        eventually(
            "the controller to observe the paused update",
            Duration::from_secs(20),
            || {
                let deployments = deployments.clone();
                async move {
                    let d = deployments.get("app").await.ok()?;
                    let observed = d.status?.observed_generation?;
                    (Some(observed) == d.metadata.generation).then_some(())
                }
            },
        )
        .await;
        let count = rss
            .list(&ListParams::default())
            .await
            .expect("rs")
            .items
            .len();
        assert_eq!(count, 1, "a paused deployment rolled out");
        let d = deployments.get("app").await.expect("app");
        let progressing = d
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_.as_deref() == Some("Progressing"))
            .expect("Progressing");
        assert_eq!(progressing.reason.as_deref(), Some("DeploymentPaused"));
        kubectl.ok(&["rollout", "resume", "deployment/app"]);
        kubectl.ok(&["rollout", "status", "deployment/app", "--timeout=60s"]);
        assert_eq!(
            rss.list(&ListParams::default())
                .await
                .expect("rs")
                .items
                .len(),
            2
        );

        // Pods that can never be scheduled: the rollout times out after its deadline.
        kubectl.apply(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: stuck}
spec:
  replicas: 1
  progressDeadlineSeconds: 2
  selector: {matchLabels: {app: stuck}}
  template:
    metadata: {labels: {app: stuck}}
    spec:
      nodeSelector: {nowhere: "true"}
      containers: [{name: c, image: "berth.local/testserver:v1"}]
"#,
        );
        let out = kubectl.run(&["rollout", "status", "deployment/stuck", "--timeout=30s"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("exceeded its progress deadline"), "{err}");
    });
}
