//! Table tests of kube-scheduler's behaviour: each filter's verdict and reason, the
//! FailedScheduling message, and which node the default scores pick.

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

use super::framework::Profile;
use super::node_info::NodeInfo;

fn node(name: &str, cpu: &str, mem: &str, extra: Value) -> NodeInfo {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"}},
    });
    merge(&mut n, extra);
    NodeInfo::new(serde_json::from_value::<Node>(n).expect("node"))
}

fn pod(extra: Value) -> Pod {
    let mut p = json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    });
    merge(&mut p, extra);
    serde_json::from_value(p).expect("pod")
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

fn requests(cpu: &str, mem: &str) -> Value {
    json!({"spec": {"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}})
}

#[test]
fn no_node_fits_message_reads_like_kube_scheduler() {
    let mut full = node("n1", "1", "4Gi", json!({}));
    full.add_pod(pod(
        json!({"metadata": {"uid": "x"}, "spec": {"containers": [{"name": "c",
        "resources": {"requests": {"cpu": "900m"}}}]}}),
    ));
    let nodes = vec![
        full,
        node(
            "n2",
            "8",
            "8Gi",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        ),
        node("n3", "8", "128Mi", json!({})),
    ];
    let err = Profile::default()
        .schedule(&pod(requests("500m", "256Mi")), &nodes)
        .expect_err("nothing fits");
    assert_eq!(
        err.to_string(),
        "0/3 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, 1 node(s) had untolerated taint {dedicated: gpu}."
    );
}

#[test]
fn filters_each_reject_for_their_reason() {
    let p = Profile::default();
    struct Case {
        what: &'static str,
        node: NodeInfo,
        pod: Pod,
        fits: bool,
        reason: &'static str,
    }
    let cases = vec![
        Case {
            what: "plain",
            node: node("n", "2", "2Gi", json!({})),
            pod: pod(json!({})),
            fits: true,
            reason: "",
        },
        Case {
            what: "cordoned",
            node: node("n", "2", "2Gi", json!({"spec": {"unschedulable": true}})),
            pod: pod(json!({})),
            fits: false,
            reason: "node(s) were unschedulable",
        },
        Case {
            what: "cordoned, tolerated",
            node: node("n", "2", "2Gi", json!({"spec": {"unschedulable": true}})),
            pod: pod(
                json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}}),
            ),
            fits: true,
            reason: "",
        },
        Case {
            what: "nodeName elsewhere",
            node: node("n", "2", "2Gi", json!({})),
            pod: pod(json!({"spec": {"nodeName": "other"}})),
            fits: false,
            reason: "node(s) didn't match the requested node name",
        },
        Case {
            what: "nodeSelector",
            node: node(
                "n",
                "2",
                "2Gi",
                json!({"metadata": {"labels": {"disk": "ssd"}}}),
            ),
            pod: pod(json!({"spec": {"nodeSelector": {"disk": "hdd"}}})),
            fits: false,
            reason: "node(s) didn't match Pod's node affinity/selector",
        },
        Case {
            what: "affinity In + Gt",
            node: node(
                "n",
                "2",
                "2Gi",
                json!({"metadata": {"labels": {"zone": "a", "cores": "16"}}}),
            ),
            pod: pod(
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}, {"key": "cores", "operator": "Gt", "values": ["8"]}]}
                ]}}}}}),
            ),
            fits: true,
            reason: "",
        },
        Case {
            what: "affinity DoesNotExist",
            node: node(
                "n",
                "2",
                "2Gi",
                json!({"metadata": {"labels": {"spot": "true"}}}),
            ),
            pod: pod(
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "spot", "operator": "DoesNotExist"}]}]}}}}}),
            ),
            fits: false,
            reason: "node(s) didn't match Pod's node affinity/selector",
        },
        Case {
            what: "matchFields name",
            node: node("n7", "2", "2Gi", json!({})),
            pod: pod(
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n7"]}]}]}}}}}),
            ),
            fits: true,
            reason: "",
        },
        Case {
            what: "NoExecute taint",
            node: node(
                "n",
                "2",
                "2Gi",
                json!({"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}),
            ),
            pod: pod(json!({})),
            fits: false,
            reason: "node(s) had untolerated taint {node.kubernetes.io/unreachable: }",
        },
        Case {
            what: "Exists with empty key tolerates all",
            node: node(
                "n",
                "2",
                "2Gi",
                json!({"spec": {"taints": [{"key": "a", "value": "b", "effect": "NoSchedule"}]}}),
            ),
            pod: pod(json!({"spec": {"tolerations": [{"operator": "Exists"}]}})),
            fits: true,
            reason: "",
        },
        Case {
            what: "Equal needs the value",
            node: node(
                "n",
                "2",
                "2Gi",
                json!({"spec": {"taints": [{"key": "a", "value": "b", "effect": "NoSchedule"}]}}),
            ),
            pod: pod(
                json!({"spec": {"tolerations": [{"key": "a", "operator": "Equal", "value": "c"}]}}),
            ),
            fits: false,
            reason: "node(s) had untolerated taint {a: b}",
        },
        Case {
            what: "toleration for another effect",
            node: node(
                "n",
                "2",
                "2Gi",
                json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}}),
            ),
            pod: pod(
                json!({"spec": {"tolerations": [{"key": "a", "operator": "Exists", "effect": "NoExecute"}]}}),
            ),
            fits: false,
            reason: "node(s) had untolerated taint {a: }",
        },
        Case {
            what: "PreferNoSchedule does not filter",
            node: node(
                "n",
                "2",
                "2Gi",
                json!({"spec": {"taints": [{"key": "a", "effect": "PreferNoSchedule"}]}}),
            ),
            pod: pod(json!({})),
            fits: true,
            reason: "",
        },
        Case {
            what: "extended resource",
            node: node(
                "n",
                "2",
                "2Gi",
                json!({"status": {"allocatable": {"example.com/gpu": "1"}}}),
            ),
            pod: pod(
                json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"example.com/gpu": "2"}}}]}}),
            ),
            fits: false,
            reason: "Insufficient example.com/gpu",
        },
        Case {
            what: "init container dominates",
            node: node("n", "1", "2Gi", json!({})),
            pod: pod(
                json!({"spec": {"initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1500m"}}}]}}),
            ),
            fits: false,
            reason: "Insufficient cpu",
        },
        Case {
            what: "pods allocatable",
            node: node(
                "n",
                "2",
                "2Gi",
                json!({"status": {"allocatable": {"pods": "0"}}}),
            ),
            pod: pod(json!({})),
            fits: false,
            reason: "Too many pods",
        },
    ];
    for c in cases {
        let nodes = vec![c.node];
        match p.feasible(&c.pod, &nodes) {
            Ok(_) => assert!(c.fits, "{}: fit, want {:?}", c.what, c.reason),
            Err(err) => {
                assert!(!c.fits, "{}: rejected: {err}", c.what);
                assert!(err.reasons.contains_key(c.reason), "{}: {err}", c.what);
            }
        }
    }
}

#[test]
fn host_ports_conflict_on_overlapping_addresses() {
    let mut n = node("n", "4", "4Gi", json!({}));
    n.add_pod(pod(
        json!({"metadata": {"uid": "a"}, "spec": {"containers": [{"name": "c",
        "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.1"}]}]}}),
    ));
    let nodes = vec![n];
    let want = |ip: &str, proto: &str, port: i32| {
        pod(json!({"spec": {"containers": [{"name": "c",
            "ports": [{"containerPort": 80, "hostPort": port, "hostIP": ip, "protocol": proto}]}]}}))
    };
    let p = Profile::default();
    assert!(
        p.feasible(&want("0.0.0.0", "TCP", 8080), &nodes).is_err(),
        "wildcard overlaps"
    );
    assert!(
        p.feasible(&want("10.0.0.1", "TCP", 8080), &nodes).is_err(),
        "same address"
    );
    assert!(
        p.feasible(&want("10.0.0.2", "TCP", 8080), &nodes).is_ok(),
        "other address"
    );
    assert!(
        p.feasible(&want("10.0.0.1", "UDP", 8080), &nodes).is_ok(),
        "other protocol"
    );
    assert!(
        p.feasible(&want("10.0.0.1", "TCP", 8081), &nodes).is_ok(),
        "other port"
    );
}

#[test]
fn scores_pick_the_node_kubernetes_would() {
    let p = Profile::default();
    // LeastAllocated + BalancedAllocation: the emptier node.
    let mut busy = node("busy", "4", "8Gi", json!({}));
    busy.add_pod(pod(
        json!({"metadata": {"uid": "b"}, "spec": {"containers": [{"name": "c",
        "resources": {"requests": {"cpu": "3", "memory": "6Gi"}}}]}}),
    ));
    let nodes = vec![busy, node("idle", "4", "8Gi", json!({}))];
    assert_eq!(
        p.schedule(&pod(requests("500m", "512Mi")), &nodes)
            .expect("fits")
            .name,
        "idle"
    );

    // Preferred node affinity outweighs a small resource difference.
    let mut a = node(
        "zone-a",
        "4",
        "8Gi",
        json!({"metadata": {"labels": {"zone": "a"}}}),
    );
    a.add_pod(pod(
        json!({"metadata": {"uid": "c"}, "spec": {"containers": [{"name": "c",
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]}}),
    ));
    let nodes = vec![
        a,
        node(
            "zone-b",
            "4",
            "8Gi",
            json!({"metadata": {"labels": {"zone": "b"}}}),
        ),
    ];
    let prefers_a = pod(
        json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]}}}}),
    );
    assert_eq!(p.schedule(&prefers_a, &nodes).expect("fits").name, "zone-a");

    // PreferNoSchedule steers away unless tolerated.
    let nodes = vec![
        node(
            "soft",
            "4",
            "8Gi",
            json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}}),
        ),
        node("clean", "4", "8Gi", json!({})),
    ];
    for _ in 0..4 {
        assert_eq!(
            p.schedule(&pod(json!({})), &nodes).expect("fits").name,
            "clean"
        );
    }
    // Equal scores alternate instead of piling onto one node.
    let nodes = vec![
        node("x1", "4", "8Gi", json!({})),
        node("x2", "4", "8Gi", json!({})),
    ];
    let picks: std::collections::BTreeSet<String> = (0..4)
        .map(|_| {
            p.schedule(&pod(json!({})), &nodes)
                .expect("fits")
                .name
                .clone()
        })
        .collect();
    assert_eq!(picks.len(), 2);

    // ImageLocality: a node holding a 500 MB image wins over an equal one without it.
    let with_image = node(
        "cached",
        "4",
        "8Gi",
        json!({"status": {"images": [
        {"names": ["docker.io/library/big:1"], "sizeBytes": 500 * 1024 * 1024}]}}),
    );
    let nodes = vec![node("cold", "4", "8Gi", json!({})), with_image];
    let big = pod(json!({"spec": {"containers": [{"name": "c", "image": "big:1"}]}}));
    for _ in 0..3 {
        assert_eq!(p.schedule(&big, &nodes).expect("fits").name, "cached");
    }
}

#[test]
fn resource_scores_match_kubernetes_formulas() {
    use super::scores::Score;
    use super::scores::resources::{BalancedAllocation, LeastAllocated};
    // Node 4 CPU / 8 GiB; pod asks 1 CPU / 2 GiB → 75 and 75 free → LeastAllocated 75.
    let n = node("n", "4", "8Gi", json!({}));
    let p = pod(requests("1", "2Gi"));
    assert_eq!(LeastAllocated.score(&p, &n, &[&n]), 75);
    // Equal fractions: perfectly balanced → 100.
    assert_eq!(BalancedAllocation.score(&p, &n, &[&n]), 100);
    // 2 CPU / 2 GiB: fractions 0.5 and 0.25 → std 0.125 → 87.
    let p = pod(requests("2", "2Gi"));
    assert_eq!(BalancedAllocation.score(&p, &n, &[&n]), 87);
    // No requests count as 100m / 200 MiB.
    let p = pod(json!({}));
    assert_eq!(LeastAllocated.score(&p, &n, &[&n]), (97 + 97) / 2);
}

fn labelled(name: &str, zone: &str) -> NodeInfo {
    node(
        name,
        "8",
        "16Gi",
        json!({"metadata": {"labels": {"zone": zone}}}),
    )
}

fn app_pod(uid: &str, app: &str) -> Pod {
    pod(json!({"metadata": {"uid": uid, "labels": {"app": app}}}))
}

#[test]
fn inter_pod_affinity_and_anti_affinity() {
    let p = Profile::default();
    let mut a1 = labelled("a1", "a");
    a1.add_pod(app_pod("db", "db"));
    let nodes = vec![a1, labelled("a2", "a"), labelled("b1", "b")];
    // Affinity to app=db by zone: only zone a.
    let near_db = pod(
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": "db"}}}]}}}}),
    );
    let fit: Vec<String> = p
        .feasible(&near_db, &nodes)
        .expect("fits")
        .iter()
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(fit, vec!["a1", "a2"]);
    // Anti-affinity to app=db by hostname: anywhere but a1.
    let away = pod(json!({"spec": {"affinity": {"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}}]}}}}));
    let fit: Vec<String> = p
        .feasible(&away, &nodes)
        .expect("fits")
        .iter()
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(fit, vec!["a2", "b1"]);
    // An existing pod's anti-affinity keeps matching pods out of its zone.
    let mut b1 = labelled("b1", "b");
    b1.add_pod(pod(json!({"metadata": {"uid": "lonely", "labels": {"app": "lonely"}}, "spec": {"affinity": {"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": "web"}}}]}}}})));
    let nodes = vec![labelled("a1", "a"), b1];
    let web = app_pod("w", "web");
    let err_or: Vec<String> = p
        .feasible(&web, &nodes)
        .expect("fits")
        .iter()
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(err_or, vec!["a1"]);
    let only_b = vec![nodes[1].clone()];
    let err = p.feasible(&web, &only_b).expect_err("blocked");
    assert_eq!(
        err.to_string(),
        "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."
    );
    // The first pod of a self-affine group may go anywhere.
    let first = pod(
        json!({"metadata": {"labels": {"app": "group"}}, "spec": {"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": "group"}}}]}}}}),
    );
    assert_eq!(
        p.feasible(&first, &[labelled("a1", "a"), labelled("b1", "b")])
            .expect("fits")
            .len(),
        2
    );
}

#[test]
fn topology_spread_do_not_schedule_and_schedule_anyway() {
    let p = Profile::default();
    let mut a1 = labelled("a1", "a");
    a1.add_pod(app_pod("x1", "web"));
    a1.add_pod(app_pod("x2", "web"));
    let mut b1 = labelled("b1", "b");
    b1.add_pod(app_pod("x3", "web"));
    let nodes = vec![a1, b1, node("nozone", "8", "16Gi", json!({}))];
    let spread = |when: &str| {
        pod(
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": when,
             "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
        )
    };
    // zone a has 2, zone b has 1: a would make skew 2 → only b.
    let fit: Vec<String> = p
        .feasible(&spread("DoNotSchedule"), &nodes)
        .expect("fits")
        .iter()
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(fit, vec!["b1"]);
    // With zone b's only node tainted, zone b still counts (taints are ignored for
    // domains by default): zone a would reach skew 3.
    let mut tainted_b = labelled("b2", "b");
    tainted_b.node.spec = Some(
        serde_json::from_value(json!({"taints": [{"key": "x", "effect": "NoSchedule"}]}))
            .expect("spec"),
    );
    let err = p
        .feasible(&spread("DoNotSchedule"), &[nodes[0].clone(), tainted_b])
        .expect_err("skew");
    assert_eq!(
        err.to_string(),
        "0/2 nodes are available: 1 node(s) didn't match pod topology spread constraints, 1 node(s) had untolerated taint {x: }."
    );
    // ScheduleAnyway: every node fits, the emptier zone wins.
    assert_eq!(
        p.feasible(&spread("ScheduleAnyway"), &nodes[..2])
            .expect("fits")
            .len(),
        2
    );
    for _ in 0..3 {
        assert_eq!(
            p.schedule(&spread("ScheduleAnyway"), &nodes[..2])
                .expect("fits")
                .name,
            "b1"
        );
    }
}

#[test]
fn preferred_pod_affinity_attracts_and_anti_affinity_repels() {
    let p = Profile::default();
    let mut a1 = labelled("a1", "a");
    a1.add_pod(app_pod("c", "cache"));
    let nodes = vec![a1, labelled("b1", "b")];
    let likes = pod(
        json!({"spec": {"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "cache"}}}}]}}}}),
    );
    let avoids = pod(
        json!({"spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "cache"}}}}]}}}}),
    );
    for _ in 0..3 {
        assert_eq!(p.schedule(&likes, &nodes).expect("fits").name, "a1");
        assert_eq!(p.schedule(&avoids, &nodes).expect("fits").name, "b1");
    }
}
