//! The StatefulSet controller inside a real berth-server, with hollow nodes and their
//! fake kubelet: ordered creation (a watcher checks db-1 appears only once db-0 is
//! Ready), stable names and hostnames, one claim per pod from volumeClaimTemplates kept
//! on scale-down, scale-down from the highest ordinal, a partitioned rolling update,
//! `kubectl rollout status|history|undo`, a pod waiting unscheduled while its claim is
//! unbound, Parallel management with `.spec.ordinals`,
//! and the apiserver refusing changes to volumeClaimTemplates — through the real kubectl.

mod hollow;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_control_plane::client::from_kubeconfig;
use berth_testkit::{BerthServer, Kubectl};
use futures_util::StreamExt;
use hollow::{Kubelet, eventually, image, node, ready};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;

const DB: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - {name: db, image: "busybox:1", volumeMounts: [{name: data, mountPath: /data}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#;

#[test]
fn ordered_pods_stable_names_claims_partitioned_updates_and_undo() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The test binds the claims itself (a stand-in below), so the real binder is off.
    let server = BerthServer::start_with(
        env!("CARGO_BIN_EXE_berth-server").as_ref(),
        dir.path(),
        &["--controllers=*,-persistentvolume-binder"],
    );
    let Some(kubectl) = Kubectl::find(&server.kubeconfig(), dir.path()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = from_kubeconfig(&server.kubeconfig(), "e2e.test").await.expect("client");
        for n in ["n1", "n2"] {
            node(&client, n, "16", json!({}), json!([])).await;
        }
        let _kubelet = Kubelet::start(client.clone(), &["n1", "n2"]);
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");

        // A watcher: each pod's creation must find its predecessor Ready.
        let violations = Arc::new(Mutex::new(Vec::<String>::new()));
        let created = Arc::new(Mutex::new(Vec::<String>::new()));
        let watch = tokio::spawn({
            let (pods, violations, created) = (pods.clone(), violations.clone(), created.clone());
            async move {
                let mut state: HashMap<String, bool> = HashMap::new();
                let mut stream =
                    std::pin::pin!(watcher(pods, watcher::Config::default().labels("app=db")));
                while let Some(Ok(ev)) = stream.next().await {
                    let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                        if let watcher::Event::Delete(p) = ev {
                            state.remove(p.metadata.name.as_deref().unwrap_or_default());
                        }
                        continue;
                    };
                    let name = p.metadata.name.clone().unwrap_or_default();
                    if !state.contains_key(&name) {
                        created.lock().expect("lock").push(name.clone());
                        let n: i32 = name.trim_start_matches("db-").parse().unwrap_or(0);
                        if n > 0 && state.get(&format!("db-{}", n - 1)) != Some(&true) {
                            violations
                                .lock()
                                .expect("lock")
                                .push(format!("{name} created before db-{} was Ready", n - 1));
                        }
                    }
                    state.insert(name, ready(&p) && p.metadata.deletion_timestamp.is_none());
                }
            }
        });
        kubectl.apply(DB);
        // Nothing provisions claims in this cluster: the default class waits for its
        // first consumer, and no node has published storage capacity for csi.berth.io
        // (no agent runs a driver), so db-0 waits unscheduled for its claim.
        let message = eventually("db-0 unschedulable", Duration::from_secs(30), || async {
            let p = pods.get("db-0").await.ok()?;
            let c = p.status?.conditions?.into_iter().find(|c| c.type_ == "PodScheduled")?;
            (c.status == "False").then_some(c.message.unwrap_or_default())
        })
        .await;
        assert!(
            message.contains("did not have enough free storage"),
            "{message}"
        );
        assert!(pods.get("db-1").await.is_err(), "db-1 waits for db-0");
        // A stand-in provisioner and binder: every claim gets a volume of its own and
        // becomes Bound to it.
        let binder = tokio::spawn({
            let claims = claims.clone();
            let volumes: Api<PersistentVolume> = Api::all(client.clone());
            async move {
                loop {
                    for c in claims.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
                        let phase = c.status.as_ref().and_then(|s| s.phase.clone());
                        if phase.as_deref() == Some("Bound") {
                            continue;
                        }
                        let name = c.metadata.name.clone().unwrap_or_default();
                        let pv = format!("pv-{name}");
                        let _ = volumes
                            .create(
                                &Default::default(),
                                &serde_json::from_value(json!({
                                    "metadata": {"name": pv},
                                    "spec": {
                                        "capacity": {"storage": "1Gi"},
                                        "accessModes": ["ReadWriteOnce"],
                                        "hostPath": {"path": "/tmp"},
                                        "storageClassName": "local",
                                        "claimRef": {"namespace": "default", "name": name, "uid": c.metadata.uid},
                                    },
                                }))
                                .expect("a PersistentVolume"),
                            )
                            .await;
                        let _ = claims
                            .patch(&name, &PatchParams::default(), &Patch::Merge(json!({
                                "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                                "spec": {"volumeName": pv},
                            })))
                            .await;
                        let _ = claims
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Bound"}})))
                            .await;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        let rollout = kubectl.run(&["rollout", "status", "statefulset/db", "--timeout=60s"]);
        if !rollout.status.success() {
            let more = kubectl.run(&["get", "pods,pvc,pv", "-o", "wide"]);
            let ev = kubectl.run(&["get", "events"]);
            panic!(
                "rollout: {}\n{}\n{}",
                String::from_utf8_lossy(&rollout.stderr),
                String::from_utf8_lossy(&more.stdout),
                String::from_utf8_lossy(&ev.stdout)
            );
        }
        assert_eq!(*created.lock().expect("lock"), ["db-0", "db-1", "db-2"]);
        assert!(violations.lock().expect("lock").is_empty(), "{:?}", violations.lock());
        for i in 0..3 {
            let p = pods.get(&format!("db-{i}")).await.expect("pod");
            let labels = p.metadata.labels.clone().unwrap_or_default();
            assert_eq!(labels["statefulset.kubernetes.io/pod-name"], format!("db-{i}"));
            assert_eq!(labels["apps.kubernetes.io/pod-index"], i.to_string());
            assert!(labels.contains_key("controller-revision-hash"));
            let spec = p.spec.clone().expect("spec");
            assert_eq!(spec.hostname.as_deref(), Some(format!("db-{i}").as_str()));
            assert_eq!(spec.subdomain.as_deref(), Some("db"));
            let vol = spec
                .volumes
                .unwrap_or_default()
                .into_iter()
                .find(|v| v.name == "data")
                .expect("data volume");
            assert_eq!(
                vol.persistent_volume_claim.map(|c| c.claim_name).as_deref(),
                Some(format!("data-db-{i}").as_str())
            );
            claims.get(&format!("data-db-{i}")).await.expect("claim made before the pod");
        }
        let s = sets.get("db").await.expect("db").status.expect("status");
        assert_eq!(
            (s.replicas, s.ready_replicas, s.current_replicas, s.updated_replicas, s.available_replicas),
            (3, Some(3), Some(3), Some(3), Some(3))
        );
        assert_eq!(s.current_revision, s.update_revision);
        watch.abort();

        // A deleted pod comes back with the same name.
        let uid = pods.get("db-1").await.expect("db-1").metadata.uid;
        pods.delete("db-1", &DeleteParams::default()).await.expect("delete db-1");
        eventually("db-1 back", Duration::from_secs(30), || async {
            let p = pods.get("db-1").await.ok()?;
            (p.metadata.uid != uid && ready(&p)).then_some(())
        })
        .await;

        // Partitioned update: only db-2 moves to the new template.
        kubectl.ok(&[
            "patch", "statefulset", "db", "--type=merge", "-p",
            r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":2}}}}"#,
        ]);
        kubectl.ok(&["set", "image", "statefulset/db", "db=busybox:2"]);
        eventually("db-2 updated", Duration::from_secs(30), || async {
            let p = pods.get("db-2").await.ok()?;
            (image(&p) == "busybox:2" && ready(&p)).then_some(())
        })
        .await;
        // The controller has synced with db-2 updated and Ready: the sync in which it
        // would move on to db-1 had the partition not stopped it.
        eventually("the status to count db-2 Ready", Duration::from_secs(30), || async {
            let set = sets.get("db").await.ok()?;
            let s = set.status?;
            (s.observed_generation == set.metadata.generation && s.ready_replicas == Some(3))
                .then_some(())
        })
        .await;
        for i in 0..2 {
            let p = pods.get(&format!("db-{i}")).await.expect("pod");
            assert_eq!(image(&p), "busybox:1");
            assert!(p.metadata.deletion_timestamp.is_none(), "db-{i} is being replaced");
        }
        let s = sets.get("db").await.expect("db").status.expect("status");
        assert_eq!((s.updated_replicas, s.current_replicas), (Some(1), Some(2)));
        assert_ne!(s.current_revision, s.update_revision);

        // Partition 0 finishes the rollout; undo goes back to busybox:1.
        kubectl.ok(&[
            "patch", "statefulset", "db", "--type=merge", "-p",
            r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
        ]);
        let out = kubectl.ok(&["rollout", "status", "statefulset/db", "--timeout=60s"]);
        assert!(out.contains("roll out complete"), "{out}");
        let history = kubectl.ok(&["rollout", "history", "statefulset/db"]);
        assert!(history.contains("REVISION") && history.contains('2'), "{history}");
        let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
        assert_eq!(revisions.list(&ListParams::default()).await.expect("list").items.len(), 2);
        kubectl.ok(&["rollout", "undo", "statefulset/db"]);
        let out = kubectl.ok(&["rollout", "status", "statefulset/db", "--timeout=60s"]);
        assert!(out.contains("roll out complete"), "{out}");
        for i in 0..3 {
            assert_eq!(image(&pods.get(&format!("db-{i}")).await.expect("pod")), "busybox:1");
        }
        // The old revision was renumbered, not copied.
        assert_eq!(revisions.list(&ListParams::default()).await.expect("list").items.len(), 2);

        // Scale down removes the highest ordinal first; the claims stay.
        kubectl.ok(&["scale", "statefulset/db", "--replicas=1"]);
        eventually("scaled to 1", Duration::from_secs(30), || async {
            let live: Vec<String> = pods
                .list(&ListParams::default().labels("app=db"))
                .await
                .ok()?
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            (live == ["db-0"]).then_some(())
        })
        .await;
        for i in 0..3 {
            claims.get(&format!("data-db-{i}")).await.expect("claims are kept");
        }

        // volumeClaimTemplates may not change.
        let out = kubectl.fails(&[
            "patch", "statefulset", "db", "--type=json", "-p",
            r#"[{"op":"replace","path":"/spec/volumeClaimTemplates/0/spec/resources/requests/storage","value":"2Gi"}]"#,
        ]);
        assert!(out.contains("updates to statefulset spec for fields other than"), "{out}");
        binder.abort();
    });
}

#[test]
fn parallel_sets_start_at_their_first_ordinal_and_scale_at_once() {
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
        node(&client, "n1", "64", json!({}), json!([])).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        // No kubelet yet: Parallel creates every pod without waiting for readiness.
        kubectl.apply(
            r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 4
  podManagementPolicy: Parallel
  ordinals: {start: 5}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: busybox}]}
"#,
        );
        let names = eventually("4 pods", Duration::from_secs(30), || async {
            let mut names: Vec<String> = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            names.sort();
            (names.len() == 4).then_some(names)
        })
        .await;
        assert_eq!(names, ["web-5", "web-6", "web-7", "web-8"]);
        let _kubelet = Kubelet::start(client.clone(), &["n1"]);
        let out = kubectl.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
        assert!(out.contains("roll out complete"), "{out}");
    });
}
