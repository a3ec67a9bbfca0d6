//! The volume plugins' verdicts and messages, on fixed objects.
#![expect(
    clippy::field_reassign_with_default,
    reason = "each test grows its fixture step by step"
)]

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode, CSIStorageCapacity, StorageClass};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;
use crate::scheduler::framework::Profile;

#[derive(Default)]
struct Fixed {
    claims: Vec<Arc<PersistentVolumeClaim>>,
    volumes: Vec<Arc<PersistentVolume>>,
    classes: Vec<Arc<StorageClass>>,
    csi_nodes: Vec<Arc<CSINode>>,
    csi_drivers: Vec<Arc<CSIDriver>>,
    capacities: Vec<Arc<CSIStorageCapacity>>,
}

fn named<'a, K: kube::Resource>(list: &'a [Arc<K>], name: &str) -> Option<&'a Arc<K>> {
    list.iter().find(|o| o.meta().name.as_deref() == Some(name))
}

impl Listers for Fixed {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims
            .iter()
            .find(|c| {
                c.metadata.name.as_deref() == Some(name)
                    && c.metadata.namespace.as_deref() == Some(namespace)
            })
            .cloned()
    }
    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
        named(&self.volumes, name).cloned()
    }
    fn volumes(&self) -> Vec<Arc<PersistentVolume>> {
        self.volumes.clone()
    }
    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        named(&self.classes, name).cloned()
    }
    fn csi_node(&self, name: &str) -> Option<Arc<CSINode>> {
        named(&self.csi_nodes, name).cloned()
    }
    fn csi_driver(&self, name: &str) -> Option<Arc<CSIDriver>> {
        named(&self.csi_drivers, name).cloned()
    }
    fn capacities(&self) -> Vec<Arc<CSIStorageCapacity>> {
        self.capacities.clone()
    }
}

fn obj<K: DeserializeOwned>(v: Value) -> Arc<K> {
    Arc::new(serde_json::from_value(v).expect("object json"))
}

fn node(name: &str) -> NodeInfo {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "topology.berth.io/node": name}},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}},
    }))
    .expect("node");
    NodeInfo::new(n)
}

fn pod_with(name: &str, uid: &str, volumes: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": volumes},
    }))
    .expect("pod")
}

fn claim_volume(claim: &str) -> Value {
    json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}])
}

fn claim(name: &str, class: &str, extra: Value) -> Arc<PersistentVolumeClaim> {
    let mut c = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "resources": {"requests": {"storage": "1Gi"}}},
    });
    merge(&mut c, extra);
    obj(c)
}

fn bound(name: &str, volume: &str) -> Value {
    json!({"metadata": {"name": name, "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
        "spec": {"volumeName": volume}, "status": {"phase": "Bound"}})
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn wffc(name: &str, provisioner: &str) -> Arc<StorageClass> {
    obj(
        json!({"metadata": {"name": name}, "provisioner": provisioner,
        "volumeBindingMode": "WaitForFirstConsumer"}),
    )
}

fn pinned_volume(name: &str, on: &str, class: &str, extra: Value) -> Arc<PersistentVolume> {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "csi": {"driver": "csi.berth.io", "volumeHandle": name},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.berth.io/node", "operator": "In", "values": [on]}]}]}}},
        "status": {"phase": "Available"},
    });
    merge(&mut v, extra);
    obj(v)
}

fn capacity(name: &str, node: &str, class: &str, size: &str) -> Arc<CSIStorageCapacity> {
    obj(
        json!({"metadata": {"name": name, "namespace": "kube-system"},
        "storageClassName": class, "capacity": size,
        "nodeTopology": {"matchLabels": {"topology.berth.io/node": node}}}),
    )
}

/// Schedules `pod` over `nodes` with the volume plugins: the node, or the message.
fn schedule(pod: &Pod, nodes: &[NodeInfo], listers: &Fixed) -> Result<String, String> {
    let check = VolumeCheck::new(pod, listers, nodes)?;
    Profile::default()
        .schedule_with(pod, nodes, check.as_ref().map(|c| c as &dyn PodFilter))
        .map(|n| n.name.clone())
        .map_err(|e| e.to_string())
}

#[test]
fn pods_without_claims_get_no_check() {
    let listers = Fixed::default();
    let p = pod_with("p", "u1", json!([{"name": "tmp", "emptyDir": {}}]));
    let check = VolumeCheck::new(&p, &listers, &[]).expect("no prefilter failure");
    assert!(check.is_none(), "a pod without claims must not be checked");
    assert_eq!(schedule(&p, &[node("a")], &listers), Ok("a".to_owned()));
}

#[test]
fn prefilter_reports_missing_deleting_and_unbound_immediate_claims() {
    let mut listers = Fixed::default();
    let p = pod_with("p", "u1", claim_volume("data"));
    assert_eq!(
        schedule(&p, &[node("a")], &listers),
        Err("persistentvolumeclaim \"data\" not found".to_owned())
    );
    listers.claims = vec![claim(
        "data",
        "",
        json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}),
    )];
    assert_eq!(
        schedule(&p, &[node("a")], &listers),
        Err("persistentvolumeclaim \"data\" is being deleted".to_owned())
    );
    // No class, and an Immediate class: the binder binds those, not the scheduler.
    listers.claims = vec![claim("data", "", json!({}))];
    assert_eq!(
        schedule(&p, &[node("a")], &listers),
        Err(UNBOUND_IMMEDIATE.to_owned())
    );
    listers.classes = vec![obj(
        json!({"metadata": {"name": "fast"}, "provisioner": "x"}),
    )];
    listers.claims = vec![claim("data", "fast", json!({}))];
    assert_eq!(
        schedule(&p, &[node("a")], &listers),
        Err(UNBOUND_IMMEDIATE.to_owned())
    );
}

#[test]
fn generic_ephemeral_claims_must_be_the_pods() {
    let mut listers = Fixed::default();
    listers.classes = vec![wffc("local", "csi.berth.io")];
    let p = pod_with(
        "web",
        "u1",
        json!([{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}]),
    );
    assert_eq!(
        schedule(&p, &[node("a")], &listers),
        Err("waiting for ephemeral volume controller to create the persistentvolumeclaim \"web-scratch\"".to_owned())
    );
    listers.claims = vec![claim("web-scratch", "local", json!({}))];
    assert_eq!(
        schedule(&p, &[node("a")], &listers),
        Err(
            "PVC default/web-scratch was not created for pod default/web (pod is not owner)"
                .to_owned()
        )
    );
    listers.claims = vec![claim(
        "web-scratch",
        "local",
        json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
            "name": "web", "uid": "u1", "controller": true}]}}),
    )];
    assert_eq!(schedule(&p, &[node("a")], &listers), Ok("a".to_owned()));
}

#[test]
fn a_bound_volume_pins_the_pod_to_its_node() {
    let mut listers = Fixed::default();
    listers.claims = vec![claim("data", "local", bound("data", "pv-b"))];
    listers.volumes = vec![pinned_volume(
        "pv-b",
        "b",
        "local",
        json!({"status": {"phase": "Bound"}}),
    )];
    let nodes = [node("a"), node("b"), node("c")];
    let p = pod_with("p", "u1", claim_volume("data"));
    for _ in 0..3 {
        assert_eq!(schedule(&p, &nodes, &listers), Ok("b".to_owned()));
    }
    let only_others = [node("a"), node("c")];
    assert_eq!(
        schedule(&p, &only_others, &listers),
        Err("0/2 nodes are available: 2 node(s) had volume node affinity conflict.".to_owned())
    );
    listers.volumes.clear();
    assert_eq!(
        schedule(&p, &nodes, &listers),
        Err("0/3 nodes are available: 3 node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s).".to_owned())
    );
}

#[test]
fn wait_for_first_consumer_needs_storage_capacity_on_the_node() {
    let mut listers = Fixed::default();
    listers.classes = vec![wffc("local", "csi.berth.io")];
    listers.claims = vec![claim("data", "local", json!({}))];
    listers.csi_drivers = vec![obj(json!({"metadata": {"name": "csi.berth.io"},
        "spec": {"storageCapacity": true}}))];
    listers.capacities = vec![
        capacity("cap-a", "a", "local", "10Gi"),
        capacity("cap-b", "b", "local", "500Mi"),
    ];
    let nodes = [node("a"), node("b")];
    let p = pod_with("p", "u1", claim_volume("data"));
    for _ in 0..3 {
        assert_eq!(schedule(&p, &nodes, &listers), Ok("a".to_owned()));
    }
    let check = VolumeCheck::new(&p, &listers, &nodes)
        .expect("prefilter")
        .expect("a check");
    let actions = check.decide(&nodes[0]).expect("a fits");
    assert!(
        matches!(actions.as_slice(), [Action::Provision { claim }] if claim.metadata.name.as_deref() == Some("data")),
        "provision on a: {actions:?}"
    );
    assert_eq!(
        schedule(&p, &nodes[1..], &listers),
        Err("0/1 nodes are available: 1 node(s) did not have enough free storage.".to_owned())
    );
    // maximumVolumeSize wins over capacity.
    listers.capacities = vec![obj(json!({"metadata": {"name": "c", "namespace": "x"},
        "storageClassName": "local", "capacity": "10Gi", "maximumVolumeSize": "100Mi",
        "nodeTopology": {"matchLabels": {"topology.berth.io/node": "a"}}}))];
    assert_eq!(
        schedule(&p, &nodes[..1], &listers),
        Err("0/1 nodes are available: 1 node(s) did not have enough free storage.".to_owned())
    );
    // Without storageCapacity on the driver, capacity is not checked.
    listers.csi_drivers = vec![obj(
        json!({"metadata": {"name": "csi.berth.io"}, "spec": {}}),
    )];
    assert_eq!(schedule(&p, &nodes[1..], &listers), Ok("b".to_owned()));
}

#[test]
fn wait_for_first_consumer_takes_a_static_volume_or_honours_topology() {
    let mut listers = Fixed::default();
    listers.classes = vec![obj(json!({"metadata": {"name": "local"},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer"}))];
    listers.claims = vec![claim("data", "local", json!({}))];
    listers.volumes = vec![pinned_volume("pv-c", "c", "local", json!({}))];
    let nodes = [node("a"), node("b"), node("c")];
    let p = pod_with("p", "u1", claim_volume("data"));
    assert_eq!(schedule(&p, &nodes, &listers), Ok("c".to_owned()));
    let check = VolumeCheck::new(&p, &listers, &nodes)
        .expect("prefilter")
        .expect("a check");
    let actions = check.decide(&nodes[2]).expect("c fits");
    assert!(
        matches!(actions.as_slice(), [Action::Bind { volume, .. }] if volume.metadata.name.as_deref() == Some("pv-c")),
        "bind pv-c: {actions:?}"
    );
    assert_eq!(
        schedule(&p, &nodes[..2], &listers),
        Err(
            "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind."
                .to_owned()
        )
    );
    // A provisioner limited by allowedTopologies.
    listers.volumes.clear();
    listers.classes = vec![obj(json!({"metadata": {"name": "local"},
        "provisioner": "csi.berth.io", "volumeBindingMode": "WaitForFirstConsumer",
        "allowedTopologies": [{"matchLabelExpressions": [
            {"key": "topology.berth.io/node", "values": ["b"]}]}]}))];
    assert_eq!(schedule(&p, &nodes, &listers), Ok("b".to_owned()));
    // Provisioning asked for on a node already: only that node.
    listers.classes = vec![wffc("local", "csi.berth.io")];
    listers.claims = vec![claim(
        "data",
        "local",
        json!({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "a"}}}),
    )];
    for _ in 0..3 {
        assert_eq!(schedule(&p, &nodes, &listers), Ok("a".to_owned()));
    }
}

#[test]
fn a_read_write_once_pod_claim_in_use_fits_nowhere() {
    let mut listers = Fixed::default();
    listers.claims = vec![claim(
        "data",
        "",
        json!({"spec": {"accessModes": ["ReadWriteOncePod"], "volumeName": "pv"},
            "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}}}),
    )];
    listers.volumes = vec![obj(json!({"metadata": {"name": "pv"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOncePod"],
            "hostPath": {"path": "/x"}}}))];
    let mut nodes = vec![node("a"), node("b")];
    let p = pod_with("p", "u1", claim_volume("data"));
    assert_eq!(schedule(&p, &nodes, &listers).map(|_| ()), Ok(()));
    nodes[1].add_pod(pod_with("other", "u2", claim_volume("data")));
    assert_eq!(
        schedule(&p, &nodes, &listers),
        Err(format!("0/2 nodes are available: 2 {RWOP_CONFLICT}."))
    );
}

#[test]
fn a_csi_node_limits_the_volumes_of_its_driver() {
    let mut listers = Fixed::default();
    listers.classes = vec![wffc("local", "csi.berth.io")];
    listers.claims = vec![
        claim("one", "local", bound("one", "pv-1")),
        claim("new", "local", json!({})),
    ];
    listers.volumes = vec![pinned_volume(
        "pv-1",
        "a",
        "local",
        json!({"spec": {"nodeAffinity": null}, "status": {"phase": "Bound"}}),
    )];
    let limit = |n: &str, count: i32| -> Arc<CSINode> {
        obj(
            json!({"metadata": {"name": n}, "spec": {"drivers": [{"name": "csi.berth.io",
            "nodeID": n, "topologyKeys": ["topology.berth.io/node"],
            "allocatable": {"count": count}}]}}),
        )
    };
    listers.csi_nodes = vec![limit("a", 1)];
    let mut nodes = vec![node("a")];
    nodes[0].add_pod(pod_with("old", "u0", claim_volume("one")));
    let p = pod_with("p", "u1", claim_volume("new"));
    assert_eq!(
        schedule(&p, &nodes, &listers),
        Err("0/1 nodes are available: 1 node(s) exceed max volume count.".to_owned())
    );
    listers.csi_nodes = vec![limit("a", 2)];
    assert_eq!(schedule(&p, &nodes, &listers), Ok("a".to_owned()));
    // A volume already on the node does not count twice.
    listers.csi_nodes = vec![limit("a", 1)];
    let again = pod_with("again", "u3", claim_volume("one"));
    assert_eq!(schedule(&again, &nodes, &listers), Ok("a".to_owned()));
}
