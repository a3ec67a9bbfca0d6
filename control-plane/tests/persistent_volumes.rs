//! PersistentVolumes and claims in a real berth-server, driven by the real kubectl:
//! static binding (the smallest volume that fits), pre-binding both ways, label
//! selectors, an access-mode mismatch staying Pending with upstream's event, reclaim
//! policies (Retain → Released, Delete of a host-path volume, a CSI volume with no
//! deleter going Failed), a claim losing its volume, Immediate binding handing a claim
//! to its provisioner, the protection finalizers (a claim in use waits for its
//! pod), the default StorageClass `local` and the DefaultStorageClass admission,
//! WaitForFirstConsumer, the `kubectl get pv,pvc,storageclass` tables and the 422/403
//! validation of claims, volumes and classes. No agent or CSI driver: volumes are
//! host-path or CSI objects nothing mounts.

mod hollow;

use std::time::Duration;

use berth_control_plane::client::from_kubeconfig;
use berth_testkit::{BerthServer, Kubectl};
use hollow::{eventually, node};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

struct Cluster {
    client: kube::Client,
    kubectl: Kubectl,
    dir: std::path::PathBuf,
}

fn with_cluster(test: impl AsyncFnOnce(Cluster)) {
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
        test(Cluster {
            client,
            kubectl,
            dir: dir.path().to_owned(),
        })
        .await;
    });
}

impl Cluster {
    fn pvs(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    fn pvcs(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn apply(&self, obj: Value) {
        self.kubectl.apply(&obj.to_string());
    }

    /// `kubectl <verb> -f <file>` that must fail; its stderr.
    fn refused(&self, verb: &str, obj: Value) -> String {
        let path = self.dir.join("refused.json");
        std::fs::write(&path, obj.to_string()).expect("write manifest");
        self.kubectl
            .fails(&[verb, "-f", path.to_str().expect("utf-8 path")])
    }

    async fn pv_phase(&self, name: &str, phase: &str) -> PersistentVolume {
        eventually(&format!("pv {name} {phase}"), WAIT, || async {
            let v = self.pvs().get(name).await.ok()?;
            (v.status.as_ref()?.phase.as_deref() == Some(phase)).then_some(v)
        })
        .await
    }

    async fn pvc_phase(&self, name: &str, phase: &str) -> PersistentVolumeClaim {
        eventually(&format!("pvc {name} {phase}"), WAIT, || async {
            let c = self.pvcs().get(name).await.ok()?;
            (c.status.as_ref()?.phase.as_deref() == Some(phase)).then_some(c)
        })
        .await
    }

    async fn gone_pv(&self, name: &str) {
        eventually(&format!("pv {name} deleted"), WAIT, || async {
            matches!(self.pvs().get(name).await, Err(kube::Error::Api(s)) if s.code == 404)
                .then_some(())
        })
        .await;
    }

    /// Waits for an Event with `reason` about the object named `name`; its message.
    async fn event(&self, ns: &str, name: &str, reason: &str) -> String {
        let events: Api<Event> = Api::namespaced(self.client.clone(), ns);
        eventually(&format!("event {reason} about {name}"), WAIT, || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some(name)
                        && e.reason.as_deref() == Some(reason)
                })
                .and_then(|e| e.message)
        })
        .await
    }
}

/// Deletes a claim no pod uses, then a volume no claim binds, each once it carries its
/// protection finalizer, and waits until both are gone: a point after which the
/// protection controllers have decided about everything deleted before.
async fn protection_barrier(c: &Cluster) {
    let has_finalizer =
        |meta: &kube::api::ObjectMeta, f: &str| meta.finalizers.iter().flatten().any(|x| x == f);
    c.apply(claim("barrier", "100Gi", &["ReadWriteOnce"], json!({})));
    eventually("the barrier claim protected", WAIT, || async {
        let b = c.pvcs().get("barrier").await.ok()?;
        has_finalizer(&b.metadata, "kubernetes.io/pvc-protection").then_some(())
    })
    .await;
    c.kubectl.ok(&["delete", "pvc", "barrier", "--wait=false"]);
    eventually("the barrier claim deleted", WAIT, || async {
        matches!(c.pvcs().get("barrier").await, Err(kube::Error::Api(s)) if s.code == 404)
            .then_some(())
    })
    .await;
    c.apply(host_path_pv("barrier", "1Mi", &["ReadOnlyMany"], json!({})));
    eventually("the barrier volume protected", WAIT, || async {
        let b = c.pvs().get("barrier").await.ok()?;
        has_finalizer(&b.metadata, "kubernetes.io/pv-protection").then_some(())
    })
    .await;
    c.kubectl.ok(&["delete", "pv", "barrier", "--wait=false"]);
    c.gone_pv("barrier").await;
}

fn host_path_pv(name: &str, size: &str, modes: &[&str], extra: Value) -> Value {
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {"capacity": {"storage": size}, "accessModes": modes,
            "storageClassName": "manual", "hostPath": {"path": format!("/tmp/{name}")}},
    });
    merge(&mut pv, extra);
    pv
}

fn claim(name: &str, size: &str, modes: &[&str], extra: Value) -> Value {
    let mut c = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}},
            "storageClassName": "manual"},
    });
    merge(&mut c, extra);
    c
}

fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            match (b.get_mut(&k), v) {
                (Some(old @ Value::Object(_)), v @ Value::Object(_)) => merge(old, v),
                (_, v) => {
                    b.insert(k, v);
                }
            }
        }
    }
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn volume_name(c: &PersistentVolumeClaim) -> Option<&str> {
    c.spec.as_ref()?.volume_name.as_deref()
}

#[test]
fn claims_bind_to_the_smallest_fitting_volume_and_tables_show_it() {
    with_cluster(async |c| {
        for (name, size) in [("pv-1g", "1Gi"), ("pv-5g", "5Gi"), ("pv-10g", "10Gi")] {
            c.apply(host_path_pv(name, size, &["ReadWriteOnce"], json!({})));
        }
        c.pv_phase("pv-5g", "Available").await;
        c.apply(claim("data", "2Gi", &["ReadWriteOnce"], json!({})));
        let bound = c.pvc_phase("data", "Bound").await;
        assert_eq!(volume_name(&bound), Some("pv-5g"));
        assert_eq!(
            annotation(&bound.metadata, "pv.kubernetes.io/bind-completed"),
            Some("yes")
        );
        assert_eq!(
            annotation(&bound.metadata, "pv.kubernetes.io/bound-by-controller"),
            Some("yes")
        );
        let status = bound.status.expect("status");
        assert_eq!(status.capacity.expect("capacity")["storage"].0, "5Gi");
        assert_eq!(status.access_modes.expect("modes"), ["ReadWriteOnce"]);
        let pv = c.pv_phase("pv-5g", "Bound").await;
        let r = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.clone())
            .expect("claimRef");
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref()),
            (Some("default"), Some("data"))
        );
        assert_eq!(r.uid, bound.metadata.uid);
        assert_eq!(
            annotation(&pv.metadata, "pv.kubernetes.io/bound-by-controller"),
            Some("yes")
        );
        c.pv_phase("pv-1g", "Available").await;

        // kubectl's tables, upstream's columns.
        let out = c.kubectl.ok(&["get", "pv", "pv-5g"]);
        let header: Vec<&str> = out
            .lines()
            .next()
            .expect("header")
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "NAME",
                "CAPACITY",
                "ACCESS",
                "MODES",
                "RECLAIM",
                "POLICY",
                "STATUS",
                "CLAIM",
                "STORAGECLASS",
                "VOLUMEATTRIBUTESCLASS",
                "REASON",
                "AGE"
            ],
            "{out}"
        );
        let row: Vec<&str> = out
            .lines()
            .nth(1)
            .expect("row")
            .split_whitespace()
            .collect();
        assert_eq!(
            row[..7],
            [
                "pv-5g",
                "5Gi",
                "RWO",
                "Retain",
                "Bound",
                "default/data",
                "manual"
            ],
            "{out}"
        );
        assert_eq!(row[7], "<unset>", "{out}");
        let out = c.kubectl.ok(&["get", "pvc", "data", "-o", "wide"]);
        let header: Vec<&str> = out
            .lines()
            .next()
            .expect("header")
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "NAME",
                "STATUS",
                "VOLUME",
                "CAPACITY",
                "ACCESS",
                "MODES",
                "STORAGECLASS",
                "VOLUMEATTRIBUTESCLASS",
                "AGE",
                "VOLUMEMODE"
            ],
            "{out}"
        );
        let row: Vec<&str> = out
            .lines()
            .nth(1)
            .expect("row")
            .split_whitespace()
            .collect();
        assert_eq!(
            row[..7],
            ["data", "Bound", "pv-5g", "5Gi", "RWO", "manual", "<unset>"],
            "{out}"
        );
        assert_eq!(row.last(), Some(&"Filesystem"), "{out}");
        let out = c.kubectl.ok(&["get", "storageclass"]);
        let header: Vec<&str> = out
            .lines()
            .next()
            .expect("header")
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "NAME",
                "PROVISIONER",
                "RECLAIMPOLICY",
                "VOLUMEBINDINGMODE",
                "ALLOWVOLUMEEXPANSION",
                "AGE"
            ],
            "{out}"
        );
        let row: Vec<&str> = out
            .lines()
            .nth(1)
            .expect("row")
            .split_whitespace()
            .collect();
        assert_eq!(
            row[..6],
            [
                "local",
                "(default)",
                "csi.berth.io",
                "Delete",
                "WaitForFirstConsumer",
                "true"
            ],
            "{out}"
        );
    });
}

#[test]
fn pre_binding_either_way_and_selectors_choose_the_volume() {
    with_cluster(async |c| {
        // A volume reserved for a claim that does not exist yet: Available, and only
        // that claim gets it even though a smaller volume fits.
        c.apply(host_path_pv("small", "1Gi", &["ReadWriteOnce"], json!({})));
        c.apply(host_path_pv(
            "reserved",
            "8Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"claimRef": {"namespace": "default", "name": "mine"}}}),
        ));
        c.pv_phase("reserved", "Available").await;
        c.apply(claim("mine", "1Gi", &["ReadWriteOnce"], json!({})));
        let mine = c.pvc_phase("mine", "Bound").await;
        assert_eq!(volume_name(&mine), Some("reserved"));
        let pv = c.pv_phase("reserved", "Bound").await;
        // The user bound the volume: not the controller.
        assert_eq!(
            annotation(&pv.metadata, "pv.kubernetes.io/bound-by-controller"),
            None
        );
        assert_eq!(
            annotation(&mine.metadata, "pv.kubernetes.io/bound-by-controller"),
            Some("yes")
        );

        // A claim naming its volume.
        c.apply(host_path_pv("named", "3Gi", &["ReadWriteOnce"], json!({})));
        c.apply(claim(
            "wants-named",
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"volumeName": "named"}}),
        ));
        let wants = c.pvc_phase("wants-named", "Bound").await;
        assert_eq!(volume_name(&wants), Some("named"));
        assert_eq!(
            annotation(&wants.metadata, "pv.kubernetes.io/bound-by-controller"),
            None
        );
        // Naming a volume another claim has: Pending, upstream's event.
        c.apply(claim(
            "thief",
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"volumeName": "named"}}),
        ));
        let msg = c.event("default", "thief", "FailedBinding").await;
        assert_eq!(msg, "volume \"named\" already bound to a different claim.");
        c.pvc_phase("thief", "Pending").await;
        assert_eq!(
            c.pv_phase("small", "Available")
                .await
                .metadata
                .name
                .as_deref(),
            Some("small")
        );

        // Selectors: only labelled volumes.
        c.apply(host_path_pv(
            "fast-disk",
            "4Gi",
            &["ReadWriteOnce"],
            json!({"metadata": {"labels": {"speed": "fast"}}}),
        ));
        c.apply(claim(
            "picky",
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"selector": {"matchLabels": {"speed": "fast"}}}}),
        ));
        assert_eq!(
            volume_name(&c.pvc_phase("picky", "Bound").await),
            Some("fast-disk")
        );
        c.apply(claim(
            "pickier",
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"selector": {"matchLabels": {"speed": "warp"}}}}),
        ));
        c.event("default", "pickier", "ProvisioningFailed").await;
        assert_eq!(
            c.pvcs()
                .get("pickier")
                .await
                .expect("pvc")
                .spec
                .and_then(|s| s.volume_name),
            None
        );
    });
}

#[test]
fn mismatched_claims_stay_pending_with_upstream_events() {
    with_cluster(async |c| {
        c.apply(host_path_pv(
            "rwo",
            "5Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"storageClassName": ""}}),
        ));
        c.pv_phase("rwo", "Available").await;
        // No class and no volume with the modes asked for.
        c.apply(claim(
            "shared",
            "1Gi",
            &["ReadWriteMany"],
            json!({"spec": {"storageClassName": ""}}),
        ));
        let msg = c.event("default", "shared", "FailedBinding").await;
        assert_eq!(
            msg,
            "no persistent volumes available for this claim and no storage class is set"
        );
        let pending = c.pvc_phase("shared", "Pending").await;
        assert_eq!(volume_name(&pending), None);
        // Naming a volume that does not fit.
        c.apply(claim(
            "named",
            "1Gi",
            &["ReadWriteMany"],
            json!({"spec": {"storageClassName": "", "volumeName": "rwo"}}),
        ));
        let msg = c.event("default", "named", "VolumeMismatch").await;
        assert_eq!(
            msg,
            "Cannot bind to requested volume \"rwo\": incompatible accessMode"
        );
        c.pvc_phase("named", "Pending").await;
        assert_eq!(
            c.pv_phase("rwo", "Available")
                .await
                .spec
                .and_then(|s| s.claim_ref),
            None
        );
        // A volume with the modes arrives: the claim binds to it.
        c.apply(host_path_pv(
            "rwx",
            "2Gi",
            &["ReadWriteMany"],
            json!({"spec": {"storageClassName": ""}}),
        ));
        assert_eq!(
            volume_name(&c.pvc_phase("shared", "Bound").await),
            Some("rwx")
        );
    });
}

#[test]
fn reclaim_policies_lost_claims_and_immediate_provisioning() {
    with_cluster(async |c| {
        c.apply(host_path_pv("kept", "1Gi", &["ReadWriteOnce"], json!({})));
        c.apply(host_path_pv(
            "dropped",
            "2Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}}),
        ));
        c.apply(json!({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "csi-vol"},
            "spec": {"capacity": {"storage": "3Gi"}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual", "persistentVolumeReclaimPolicy": "Delete",
                "csi": {"driver": "csi.example.com", "volumeHandle": "h-1"}},
        }));
        for (claim_name, pv) in [("a", "kept"), ("b", "dropped"), ("c", "csi-vol")] {
            c.apply(claim(
                claim_name,
                "1Gi",
                &["ReadWriteOnce"],
                json!({"spec": {"volumeName": pv}}),
            ));
            c.pvc_phase(claim_name, "Bound").await;
        }
        for name in ["a", "b", "c"] {
            c.kubectl.ok(&["delete", "pvc", name]);
        }
        // Retain: Released, the claimRef kept, the transition stamped.
        let kept = c.pv_phase("kept", "Released").await;
        assert!(
            kept.status
                .as_ref()
                .and_then(|s| s.last_phase_transition_time.as_ref())
                .is_some()
        );
        assert!(kept.spec.and_then(|s| s.claim_ref).is_some());
        // Delete of a host-path volume: the object goes.
        c.gone_pv("dropped").await;
        // Delete of a CSI volume nothing can delete: Failed, upstream's event.
        let failed = c.pv_phase("csi-vol", "Failed").await;
        let msg = c.event("default", "csi-vol", "VolumeFailedDelete").await;
        assert_eq!(
            msg,
            "error getting deleter volume plugin for volume \"csi-vol\": no deletable volume plugin matched"
        );
        assert_eq!(failed.status.and_then(|s| s.message), Some(msg));
        let out = c.kubectl.ok(&["get", "pv", "kept", "csi-vol"]);
        assert!(out.contains("Released") && out.contains("Failed"), "{out}");

        // A bound claim whose volume is forced away is Lost.
        c.apply(host_path_pv("doomed", "1Gi", &["ReadWriteOnce"], json!({})));
        c.apply(claim(
            "orphan",
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"volumeName": "doomed"}}),
        ));
        c.pvc_phase("orphan", "Bound").await;
        c.kubectl.ok(&["delete", "pv", "doomed", "--wait=false"]);
        c.kubectl.ok(&[
            "patch",
            "pv",
            "doomed",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
        c.gone_pv("doomed").await;
        c.pvc_phase("orphan", "Lost").await;
        let msg = c.event("default", "orphan", "ClaimLost").await;
        assert_eq!(
            msg,
            "Bound claim has lost its PersistentVolume. Data on the volume is lost!"
        );

        // Immediate binding with a provisioner: handed to it at once.
        c.apply(
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "instant"}, "provisioner": "csi.example.com",
            "volumeBindingMode": "Immediate"}),
        );
        c.apply(claim(
            "now",
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"storageClassName": "instant"}}),
        ));
        let msg = c.event("default", "now", "ExternalProvisioning").await;
        assert_eq!(
            msg,
            "Waiting for a volume to be created either by the external provisioner 'csi.example.com' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
        );
        // A volume made for it (as a provisioner would) is bound at once.
        c.apply(host_path_pv(
            "made",
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"storageClassName": "instant"}}),
        ));
        assert_eq!(
            volume_name(&c.pvc_phase("now", "Bound").await),
            Some("made")
        );
    });
}

#[test]
fn protection_finalizers_hold_a_claim_in_use_and_a_bound_volume() {
    with_cluster(async |c| {
        c.apply(host_path_pv("vol", "1Gi", &["ReadWriteOnce"], json!({})));
        c.apply(claim("used", "1Gi", &["ReadWriteOnce"], json!({})));
        let used = c.pvc_phase("used", "Bound").await;
        assert_eq!(
            used.metadata.finalizers.as_deref(),
            Some(&["kubernetes.io/pvc-protection".to_owned()][..])
        );
        let pv = c.pvs().get("vol").await.expect("pv");
        assert_eq!(
            pv.metadata.finalizers.as_deref(),
            Some(&["kubernetes.io/pv-protection".to_owned()][..])
        );
        // A pod on a node uses the claim.
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
        c.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user", "namespace": "default"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "used"}}]}}));
        c.kubectl.ok(&["delete", "pvc", "used", "--wait=false"]);
        // Deleting the bound volume waits too.
        c.kubectl.ok(&["delete", "pv", "vol", "--wait=false"]);
        // The protection controllers have handled later deletions (a free claim, then a
        // free volume, each with its finalizer, are gone): they kept these on purpose.
        protection_barrier(&c).await;
        let held = c
            .pvcs()
            .get("used")
            .await
            .expect("claim held by its finalizer");
        assert!(held.metadata.deletion_timestamp.is_some());
        let out = c.kubectl.ok(&["get", "pvc", "used"]);
        assert!(out.contains("Terminating"), "{out}");
        assert!(c.pvs().get("vol").await.is_ok(), "a Bound volume is held");
        // The pod goes: the claim goes, the volume is released and goes too.
        pods.delete("user", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete pod");
        eventually("claim deleted", WAIT, || async {
            matches!(c.pvcs().get("used").await, Err(kube::Error::Api(s)) if s.code == 404)
                .then_some(())
        })
        .await;
        c.gone_pv("vol").await;
    });
}

#[test]
fn default_class_and_wait_for_first_consumer() {
    with_cluster(async |c| {
        // The default class exists at start, as specified.
        let local = c.kubectl.json(&["get", "storageclass", "local"]);
        assert_eq!(local["provisioner"], "csi.berth.io");
        assert_eq!(local["volumeBindingMode"], "WaitForFirstConsumer");
        assert_eq!(local["reclaimPolicy"], "Delete");
        assert_eq!(local["allowVolumeExpansion"], true);
        assert_eq!(
            local["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
            "true"
        );
        node(
            &c.client,
            "n1",
            "4",
            json!({"kubernetes.io/hostname": "n1"}),
            json!([]),
        )
        .await;
        // A local volume on n1 exists, but WaitForFirstConsumer holds the claim.
        c.apply(json!({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "local-n1"},
            "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": "local", "local": {"path": "/mnt/disk"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}},
        }));
        let mut no_class = claim("db", "1Gi", &["ReadWriteOnce"], json!({}));
        no_class["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("storageClassName");
        c.apply(no_class.clone());
        let db = c.pvcs().get("db").await.expect("pvc");
        assert_eq!(
            db.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref()),
            Some("local")
        );
        let msg = c.event("default", "db", "WaitForFirstConsumer").await;
        assert_eq!(
            msg,
            "waiting for first consumer to be created before binding"
        );
        c.pvc_phase("db", "Pending").await;
        // A pod that uses it and is not scheduled yet is named.
        let mut wanted = no_class.clone();
        wanted["metadata"]["name"] = json!("wanted");
        c.apply(wanted);
        c.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "consumer", "namespace": "default"},
            "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "busybox"}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "wanted"}}]}}));
        let msg = c.event("default", "wanted", "WaitForPodScheduled").await;
        assert_eq!(msg, "waiting for pod consumer to be scheduled");
        // The scheduler picks n1: the claim binds to the volume there.
        c.pvcs()
            .patch(
                "db",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations":
                {"volume.kubernetes.io/selected-node": "n1"}}})),
            )
            .await
            .expect("select node");
        assert_eq!(
            volume_name(&c.pvc_phase("db", "Bound").await),
            Some("local-n1")
        );
        // With no volume to bind, the class's provisioner is asked.
        let mut other = no_class.clone();
        other["metadata"]["name"] = json!("cache");
        other["metadata"]["annotations"] = json!({"volume.kubernetes.io/selected-node": "n1"});
        c.apply(other);
        let msg = c.event("default", "cache", "ExternalProvisioning").await;
        assert!(msg.contains("external provisioner 'csi.berth.io'"), "{msg}");
        let cache = c.pvcs().get("cache").await.expect("pvc");
        assert_eq!(
            annotation(&cache.metadata, "volume.kubernetes.io/storage-provisioner"),
            Some("csi.berth.io")
        );
        // An explicit "" keeps no class.
        let mut none = no_class.clone();
        none["metadata"]["name"] = json!("classless");
        none["spec"]["storageClassName"] = json!("");
        c.apply(none);
        let classless = c.pvcs().get("classless").await.expect("pvc");
        assert_eq!(
            classless.spec.and_then(|s| s.storage_class_name).as_deref(),
            Some("")
        );
        // Two defaults: the newest wins.
        c.apply(json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "fast", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "csi.berth.io"}));
        let mut newest = no_class.clone();
        newest["metadata"]["name"] = json!("newest");
        c.apply(newest);
        let newest = c.pvcs().get("newest").await.expect("pvc");
        assert_eq!(
            newest.spec.and_then(|s| s.storage_class_name).as_deref(),
            Some("fast")
        );

        // Growing the bound claim: its class allows expansion.
        c.kubectl.ok(&[
            "patch",
            "pvc",
            "db",
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
        ]);
        // Shrinking below what it has is refused.
        let err = c.kubectl.fails(&[
            "patch",
            "pvc",
            "db",
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}"#,
        ]);
        assert!(err.contains("spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"), "{err}");

        // No default when the claim is made: it gets the one that comes later
        // (retroactive default class, Kubernetes 1.28+).
        c.kubectl.ok(&["delete", "storageclass", "local", "fast"]);
        let mut late = no_class.clone();
        late["metadata"]["name"] = json!("late");
        c.apply(late);
        let late = c.pvcs().get("late").await.expect("pvc");
        assert_eq!(late.spec.and_then(|s| s.storage_class_name), None);
        c.apply(json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "later", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "csi.berth.io", "allowVolumeExpansion": true}));
        eventually("late claim gets the default class", WAIT, || async {
            let late = c.pvcs().get("late").await.ok()?;
            (late.spec?.storage_class_name.as_deref() == Some("later")).then_some(())
        })
        .await;
    });
}

#[test]
fn invalid_claims_volumes_and_classes_are_refused_with_field_paths() {
    with_cluster(async |c| {
        let err = c.refused(
            "create",
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "bad"}, "spec": {"resources": {"requests": {"storage": "0"}}}}),
        );
        assert!(
            err.contains("spec.accessModes: Required value: at least 1 access mode is required"),
            "{err}"
        );
        assert!(
            err.contains(
                "spec.resources[storage]: Invalid value: \"0\": must be greater than zero"
            ),
            "{err}"
        );
        let err = c.refused(
            "create",
            json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "bad"}, "spec": {"capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOncePod", "ReadWriteOnce"]}}),
        );
        assert!(
            err.contains("spec: Required value: must specify a volume type"),
            "{err}"
        );
        assert!(
            err.contains(
                "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes"
            ),
            "{err}"
        );
        let err = c.refused("create", json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "bad"}, "provisioner": "csi.berth.io", "reclaimPolicy": "Recycle"}));
        assert!(
            err.contains("reclaimPolicy: Unsupported value: \"Recycle\""),
            "{err}"
        );

        // Claims: the spec is fixed; a claim in a class without expansion may not grow.
        c.apply(host_path_pv("v", "1Gi", &["ReadWriteOnce"], json!({})));
        c.apply(claim("fixed", "1Gi", &["ReadWriteOnce"], json!({})));
        c.pvc_phase("fixed", "Bound").await;
        let err = c.kubectl.fails(&[
            "patch",
            "pvc",
            "fixed",
            "-p",
            r#"{"spec":{"accessModes":["ReadWriteMany"]}}"#,
        ]);
        assert!(err.contains("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"), "{err}");
        let err = c.kubectl.fails(&[
            "patch",
            "pvc",
            "fixed",
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
        ]);
        assert!(err.contains("only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"), "{err}");
        // Volumes: the source is fixed.
        let err = c.kubectl.fails(&[
            "patch",
            "pv",
            "v",
            "-p",
            r#"{"spec":{"hostPath":{"path":"/elsewhere"}}}"#,
        ]);
        assert!(err.contains("spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation"), "{err}");
        // Classes: parameters and provisioner are fixed.
        let err = c.kubectl.fails(&[
            "patch",
            "storageclass",
            "local",
            "-p",
            r#"{"parameters":{"x":"y"},"provisioner":"other.io"}"#,
        ]);
        assert!(
            err.contains("parameters: Forbidden: updates to parameters are forbidden."),
            "{err}"
        );
        assert!(
            err.contains("provisioner: Forbidden: updates to provisioner are forbidden."),
            "{err}"
        );
    });
}
