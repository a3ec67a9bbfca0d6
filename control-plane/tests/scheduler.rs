//! The scheduler inside a real berth-server, with hollow nodes (Node objects only):
//! pods are bound where the filters allow, a pod that fits nowhere gets a
//! FailedScheduling event worded as kube-scheduler words it and PodScheduled=False,
//! and is bound once a node that fits appears; pods for another scheduler stay pending.

mod hollow;

use std::time::{Duration, Instant};

use berth_control_plane::client::from_kubeconfig as client_from_kubeconfig;
use berth_testkit::BerthServer;
use hollow::{node, pod};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

async fn bound_to(client: &kube::Client, name: &str, timeout: Duration) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + timeout;
    loop {
        let p = pods.get(name).await.expect("get pod");
        if let Some(n) = p.spec.and_then(|s| s.node_name) {
            return Some(n);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn scheduler_binds_reports_and_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir.path());
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = client_from_kubeconfig(&server.kubeconfig(), "e2e.test").await.expect("client");
        node(&client, "n1", "2", json!({"zone": "a"}), json!([])).await;
        node(&client, "n2", "4", json!({"zone": "b", "disk": "ssd"}), json!([])).await;
        node(&client, "n3", "8", json!({"zone": "c"}), json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])).await;

        pod(&client, "ssd", json!({"nodeSelector": {"disk": "ssd"}})).await;
        assert_eq!(bound_to(&client, "ssd", Duration::from_secs(15)).await.as_deref(), Some("n2"));
        // The binding set PodScheduled=True in the same write.
        let ssd = Api::<Pod>::namespaced(client.clone(), "default").get("ssd").await.expect("ssd");
        let scheduled = ssd.status.and_then(|s| s.conditions).unwrap_or_default().into_iter()
            .find(|c| c.type_ == "PodScheduled").map(|c| c.status);
        assert_eq!(scheduled.as_deref(), Some("True"));

        pod(&client, "gpu", json!({"nodeSelector": {"zone": "c"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]})).await;
        assert_eq!(bound_to(&client, "gpu", Duration::from_secs(15)).await.as_deref(), Some("n3"));

        pod(&client, "other", json!({"schedulerName": "someone-else"})).await;
        pod(&client, "huge", json!({"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "6"}}}]})).await;
        // The FailedScheduling event, in kube-scheduler's words.
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        let want = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu.";
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let list = events.list(&ListParams::default()).await.expect("events");
            let found = list.items.iter().find(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.involved_object.name.as_deref() == Some("huge")
            });
            if let Some(e) = found {
                assert_eq!(e.message.as_deref(), Some(want));
                assert_eq!(e.type_.as_deref(), Some("Warning"));
                break;
            }
            assert!(Instant::now() < deadline, "no FailedScheduling event for huge");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let huge = pods.get("huge").await.expect("huge");
        let cond = huge
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
            .expect("PodScheduled condition");
        assert_eq!((cond.status.as_str(), cond.reason.as_deref()), ("False", Some("Unschedulable")));

        // A node that fits appears: the pending pod is bound there.
        node(&client, "n4", "16", json!({"zone": "d"}), json!([])).await;
        assert_eq!(bound_to(&client, "huge", Duration::from_secs(20)).await.as_deref(), Some("n4"));

        // Another scheduler's pod is left alone.
        assert_eq!(bound_to(&client, "other", Duration::from_millis(500)).await, None);
    });
}

#[test]
fn a_pending_high_priority_pod_preempts_a_low_priority_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir.path());
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = client_from_kubeconfig(&server.kubeconfig(), "e2e.test").await.expect("client");
        node(&client, "only", "2", json!({}), json!([])).await;
        let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
        for (name, value) in [("low", 10), ("high", 1000)] {
            let pc = serde_json::from_value(json!({"metadata": {"name": name}, "value": value})).expect("class");
            classes.create(&PostParams::default(), &pc).await.expect("create class");
        }
        let cpu = |n: &str| json!([{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": n}}}]);
        pod(&client, "low", json!({"priorityClassName": "low", "containers": cpu("1500m")})).await;
        assert_eq!(bound_to(&client, "low", Duration::from_secs(15)).await.as_deref(), Some("only"));
        pod(&client, "high", json!({"priorityClassName": "high", "containers": cpu("1")})).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let high = pods.get("high").await.expect("high");
        assert_eq!(high.spec.as_ref().and_then(|s| s.priority), Some(1000));
        assert_eq!(high.spec.as_ref().and_then(|s| s.preemption_policy.clone()).as_deref(), Some("PreemptLowerPriority"));
        // An unknown class is refused as Kubernetes refuses it.
        let bad: Pod = serde_json::from_value(json!({"metadata": {"name": "bad"},
            "spec": {"priorityClassName": "nope", "containers": [{"name": "c", "image": "busybox"}]}})).expect("pod");
        match pods.create(&PostParams::default(), &bad).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 403);
                assert!(s.message.contains("no PriorityClass with name nope was found"), "{}", s.message);
            }
            other => panic!("unknown class accepted: {other:?}"),
        }
        // A preemptionPolicy other than the class's is refused too; with no class the
        // pod still gets priority 0 and PreemptLowerPriority, as upstream's plugin sets.
        let never: Pod = serde_json::from_value(json!({"metadata": {"name": "never"},
            "spec": {"priorityClassName": "high", "preemptionPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox"}]}})).expect("pod");
        match pods.create(&PostParams::default(), &never).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 403);
                assert!(s.message.contains("the string value of PreemptionPolicy (Never) must not be provided in pod spec; priority admission controller computed PreemptLowerPriority from the given PriorityClass name"), "{}", s.message);
            }
            other => panic!("a policy unlike the class's accepted: {other:?}"),
        }
        let plain: Pod = serde_json::from_value(json!({"metadata": {"name": "plain"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).expect("pod");
        let plain = pods
            .create(&PostParams { dry_run: true, ..Default::default() }, &plain)
            .await
            .expect("a pod without a class");
        let spec = plain.spec.expect("spec");
        assert_eq!((spec.priority, spec.preemption_policy.as_deref()), (Some(0), Some("PreemptLowerPriority")));
        // The scheduler deletes the victim and nominates the node; as the (fake) kubelet,
        // finish the victim's graceful deletion.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match pods.get_opt("low").await.expect("get low") {
                Some(p) if p.metadata.deletion_timestamp.is_some() => {
                    let dp = kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
                    let _ = pods.delete("low", &dp).await;
                }
                Some(_) => {}
                None => break,
            }
            assert!(Instant::now() < deadline, "low was not preempted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(bound_to(&client, "high", Duration::from_secs(20)).await.as_deref(), Some("only"));
        // Events are recorded in the background: wait for it.
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = events.list(&ListParams::default()).await.expect("events");
            if list.items.iter().any(|e| e.reason.as_deref() == Some("Preempted")
                && e.involved_object.name.as_deref() == Some("low"))
            {
                break;
            }
            assert!(Instant::now() < deadline, "no Preempted event");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
