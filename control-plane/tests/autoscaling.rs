//! The metrics API and HorizontalPodAutoscalers inside a real berth-server, with a
//! hollow node whose fake kubelet serves `/metrics/resource` with a CPU load the test
//! sets (tests/hollow/metrics.rs), driven by the real kubectl and kube-rs:
//! `kubectl top node/pod`, `kubectl autoscale`, `kubectl get hpa`, a Deployment
//! scaled up under load and back down after it (behavior's short scale-down window), a
//! custom resource scaled through its `/scale`,
//! the v1 view of a v2 HPA, validation, a target without `/scale`, and missing metrics.
//! The scraper and the HPA run every second here (`--metric-resolution=1s`,
//! `--horizontal-pod-autoscaler-sync-period=1s`).

mod hollow;

use std::time::Duration;

use berth_testkit::{BerthServer, Kubectl};
use hollow::metrics::MetricsKubelet;
use hollow::{Kubelet, eventually, node};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

fn server(dir: &std::path::Path) -> BerthServer {
    BerthServer::start_with(
        env!("CARGO_BIN_EXE_berth-server").as_ref(),
        dir,
        &[
            "--metric-resolution=1s",
            "--horizontal-pod-autoscaler-sync-period=1s",
        ],
    )
}

async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    kube::Client::try_from(config).expect("client")
}

fn deployment(name: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: c
        image: busybox
        resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
"#
    )
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> i32 {
    deployments
        .get(name)
        .await
        .ok()
        .and_then(|d| d.spec.replicas)
        .unwrap_or(-1)
}

/// The HPA's condition of `type_`: (status, reason, message).
async fn condition(
    hpas: &Api<HorizontalPodAutoscaler>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let hpa = hpas.get(name).await.ok()?;
    let c = hpa
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((
        c.status,
        c.reason.unwrap_or_default(),
        c.message.unwrap_or_default(),
    ))
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas, labelSelectorPath: .status.selector}
"#;

const WIDGET: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
spec: {replicas: 1}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: w}
spec:
  scaleTargetRef: {apiVersion: example.com/v1, kind: Widget, name: w}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
"#;

#[test]
fn a_deployment_scales_with_the_load_its_kubelet_reports() {
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
        let metrics = MetricsKubelet::start(client.clone(), "n1", &server.dir().join("pki")).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let port =
            json!({"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": metrics.port}}}});
        nodes
            .patch_status("n1", &PatchParams::default(), &Patch::Merge(port))
            .await
            .expect("kubelet port");

        // Discovery: the metrics group, read-only, in both discovery documents.
        let raw = |path: &str| -> Value {
            serde_json::from_str(&kubectl.ok(&["get", "--raw", path])).expect("JSON")
        };
        let group = raw("/apis/metrics.k8s.io/v1beta1");
        let verbs: Vec<Value> = group["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r["verbs"].clone())
            .collect();
        assert_eq!(
            verbs,
            [json!(["get", "list"]), json!(["get", "list"])],
            "{group}"
        );

        kubectl.apply(&deployment("web"));
        metrics.set_load(0.09);
        // kubectl top: the node, then the pod at 90m and 20Mi once two scrapes exist.
        let top = eventually("kubectl top node", Duration::from_secs(30), || async {
            let out = kubectl.run(&["top", "node"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && text.contains("n1")).then_some(text)
        })
        .await;
        assert!(top.starts_with("NAME"), "{top}");
        assert!(top.contains("512Mi"), "{top}");
        let top = eventually("kubectl top pod", Duration::from_secs(30), || async {
            let out = kubectl.run(&["top", "pod", "--containers"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && text.contains("90m")).then_some(text)
        })
        .await;
        assert!(top.contains("20Mi") && top.contains(" c "), "{top}");
        let all = kubectl.ok(&["top", "pod", "-A"]);
        assert!(
            all.contains("NAMESPACE") && all.contains("default"),
            "{all}"
        );
        let list =
            raw("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dweb");
        let item = &list["items"][0];
        assert_eq!(list["kind"], "PodMetricsList");
        assert_eq!(item["containers"][0]["name"], "c");
        assert!(
            item["window"].as_str().is_some_and(|w| w.ends_with('s')),
            "{item}"
        );
        assert!(
            item["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{item}"
        );
        let missing = kubectl.fails(&["top", "pod", "nope"]);
        assert!(
            missing.contains("podmetrics.metrics.k8s.io \"default/nope\" not found"),
            "{missing}"
        );

        // kubectl autoscale, then a short scale-down window through behavior.
        kubectl.ok(&[
            "autoscale",
            "deployment",
            "web",
            "--cpu-percent=50",
            "--min=1",
            "--max=4",
        ]);
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "default");
        let behavior =
            json!({"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 3}}}});
        hpas.patch("web", &PatchParams::default(), &Patch::Merge(behavior))
            .await
            .expect("behavior");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
        // 90 % of the request against 50 %: ceil(1.8) = 2.
        eventually(
            "the deployment scaled to 2",
            Duration::from_secs(60),
            || async { (replicas(&deployments, "web").await == 2).then_some(()) },
        )
        .await;
        let rescaled = eventually(
            "a SuccessfulRescale event",
            Duration::from_secs(20),
            || async {
                let events: Api<Event> = Api::namespaced(client.clone(), "default");
                let list = events.list(&ListParams::default()).await.ok()?;
                list.items
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some("SuccessfulRescale"))
            },
        )
        .await;
        assert_eq!(
            rescaled.message.as_deref(),
            Some(
                "New size: 2; reason: cpu resource utilization (percentage of request) above target"
            )
        );
        assert_eq!(
            rescaled.involved_object.kind.as_deref(),
            Some("HorizontalPodAutoscaler")
        );
        let table = eventually(
            "kubectl get hpa with a current value",
            Duration::from_secs(20),
            || async {
                let out = kubectl.ok(&["get", "hpa"]);
                out.contains("cpu: 90%/50%").then_some(out)
            },
        )
        .await;
        let header: Vec<&str> = table
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "NAME",
                "REFERENCE",
                "TARGETS",
                "MINPODS",
                "MAXPODS",
                "REPLICAS",
                "AGE"
            ],
            "{table}"
        );
        assert!(table.contains("Deployment/web"), "{table}");
        let c = condition(&hpas, "web", "ScalingActive").await;
        assert_eq!(c.map(|c| c.1), Some("ValidMetricFound".into()));
        // The controller's Prometheus series, in one exposition with one EOF; one
        // stored-objects series for the two served versions.
        let exposition = kubectl.ok(&["get", "--raw", "/metrics"]);
        assert!(
            exposition.contains("horizontal_pod_autoscaler_controller_reconciliations_total{action=\"scale_up\",error=\"none\"}"),
            "{exposition}"
        );
        assert_eq!(exposition.matches("# EOF").count(), 1);
        assert!(exposition.trim_end().ends_with("# EOF"));
        assert_eq!(
            exposition
                .matches("apiserver_storage_objects{resource=\"horizontalpodautoscalers.autoscaling\"}")
                .count(),
            1
        );

        // The same object as autoscaling/v1.
        let v1 = raw("/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web");
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 90);

        // Two HPAs over the same pods: the second is AmbiguousSelector, and scales nothing.
        kubectl.ok(&[
            "autoscale",
            "deployment",
            "web",
            "--name=twin",
            "--cpu-percent=50",
            "--max=4",
        ]);
        let (_, reason, message) = eventually(
            "AmbiguousSelector on twin",
            Duration::from_secs(20),
            || async {
                condition(&hpas, "twin", "ScalingActive")
                    .await
                    .filter(|c| c.0 == "False")
            },
        )
        .await;
        assert_eq!(reason, "AmbiguousSelector");
        assert_eq!(
            message,
            "pods by selector app=web are controlled by multiple HPAs: [default/twin default/web]"
        );
        kubectl.ok(&["delete", "hpa", "twin"]);

        // A custom resource with a scale subresource is a target like any other: its
        // selector picks busy pods (another Deployment's), and the HPA writes its
        // spec.replicas.
        kubectl.apply(&deployment("web2"));
        kubectl.apply(WIDGET_CRD);
        eventually(
            "the widgets resource served",
            Duration::from_secs(20),
            || async {
                kubectl
                    .run(&["get", "widgets"])
                    .status
                    .success()
                    .then_some(())
            },
        )
        .await;
        kubectl.apply(WIDGET);
        kubectl.ok(&[
            "patch",
            "widget",
            "w",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"replicas":1,"selector":"app=web2"}}"#,
        ]);
        let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
        let widgets: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk));
        eventually("the widget scaled up", Duration::from_secs(60), || async {
            let w = widgets.get("w").await.ok()?;
            let n = w.data.pointer("/spec/replicas").and_then(Value::as_i64)?;
            (n >= 2).then_some(())
        })
        .await;
        let (status, reason, _) = condition(&hpas, "w", "AbleToScale")
            .await
            .expect("the widget HPA's AbleToScale");
        // SucceededRescale right after the rescale; a later sync (the test may read
        // after it) says the HPA is ready again or holding a scale-down, or — a sync
        // with nothing to change, where upstream's behavior path sets nothing after
        // reading the scale — SucceededGetScale.
        assert_eq!(status, "True", "{reason}");
        assert!(
            [
                "SucceededRescale",
                "ReadyForNewScale",
                "ScaleDownStabilized",
                "SucceededGetScale"
            ]
                .contains(&reason.as_str()),
            "AbleToScale reason {reason}"
        );
        kubectl.ok(&["delete", "hpa", "w"]);

        // The load stops: back to 1 after the 3 s window.
        metrics.set_load(0.0);
        eventually(
            "the deployment scaled back to 1",
            Duration::from_secs(60),
            || async { (replicas(&deployments, "web").await == 1).then_some(()) },
        )
        .await;
    });
}

#[test]
fn bad_targets_missing_metrics_and_invalid_specs_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path());
    let Some(kubectl) = Kubectl::find(&server.kubeconfig(), dir.path()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = client(&server.kubeconfig()).await;
        // A node whose kubelet serves no metrics.
        node(&client, "n1", "8", json!({}), json!([])).await;
        let _kubelet = Kubelet::start(client.clone(), &["n1"]);
        kubectl.apply(&deployment("web"));
        kubectl.apply(
            r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: c, image: busybox}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: agent}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: DaemonSet, name: agent}
  maxReplicas: 3
---
apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  maxReplicas: 3
  targetCPUUtilizationPercentage: 60
"#,
        );
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "default");
        let (status, reason, message) = eventually("AbleToScale=False on the DaemonSet", Duration::from_secs(30), || async {
            condition(&hpas, "agent", "AbleToScale").await.filter(|c| c.0 == "False")
        })
        .await;
        assert_eq!((status.as_str(), reason.as_str()), ("False", "FailedGetScale"));
        assert_eq!(
            message,
            "the HPA controller was unable to get the target's current scale: could not find scale subresource for apps/v1, Resource=daemonsets in discovery information"
        );

        // No metrics for the pods: the size stays and ScalingActive says why.
        let (_, reason, message) = eventually("ScalingActive=False on web", Duration::from_secs(30), || async {
            condition(&hpas, "web", "ScalingActive").await.filter(|c| c.0 == "False")
        })
        .await;
        assert_eq!(reason, "FailedGetResourceMetric");
        assert_eq!(
            message,
            "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API"
        );
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
        assert_eq!(replicas(&deployments, "web").await, 1);
        // The v1 object as v2: the CPU target became a metric, defaults filled in.
        let web = hpas.get("web").await.expect("web as v2");
        let metric = web.spec.metrics.as_ref().and_then(|m| m.first()).and_then(|m| m.resource.clone());
        assert_eq!(metric.and_then(|r| r.target.average_utilization), Some(60));
        assert_eq!(web.spec.min_replicas, Some(1));
        let table = kubectl.ok(&["get", "hpa", "web"]);
        assert!(table.contains("cpu: <unknown>/60%"), "{table}");
        assert!(table.contains("Deployment/web"), "{table}");
        let out = kubectl.ok(&["describe", "hpa", "web"]);
        assert!(out.contains("FailedGetResourceMetric"), "{out}");

        // Validation: 422 with upstream's field paths, in either version.
        let bad: HorizontalPodAutoscaler = serde_json::from_value(json!({
            "metadata": {"name": "bad"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "maxReplicas": 0},
        }))
        .expect("hpa");
        match hpas.create(&PostParams::default(), &bad).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422);
                assert_eq!(
                    s.message,
                    "HorizontalPodAutoscaler.autoscaling \"bad\" is invalid: [spec.maxReplicas: Invalid value: 0: must be greater than 0, spec.maxReplicas: Invalid value: 0: must be greater than or equal to `minReplicas`]"
                );
            }
            other => panic!("expected a 422, got {other:?}"),
        }
        let gvk = GroupVersionKind::gvk("autoscaling", "v1", "HorizontalPodAutoscaler");
        let v1: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk));
        let bad_v1: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "bad"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 2, "targetCPUUtilizationPercentage": 0},
        }))
        .expect("v1 hpa");
        match v1.create(&PostParams::default(), &bad_v1).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422);
                assert!(
                    s.message.ends_with("spec.metrics[0].resource.target.averageUtilization: Invalid value: 0: must be greater than 0"),
                    "{}",
                    s.message
                );
            }
            other => panic!("expected a 422, got {other:?}"),
        }
    });
}
