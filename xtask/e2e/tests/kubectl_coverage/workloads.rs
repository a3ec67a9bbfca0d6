//! Deployments and the workload kinds: `expose`, `scale`, `wait`, `set`, every
//! `rollout` subcommand, and a StatefulSet and DaemonSet for `describe`.

use crate::common::Cluster;
use crate::{BUSYBOX, Coverage, TESTSERVER, contains, field, until};

/// Deployments, rollouts, scaling, `set`, `expose`, `wait`, and the workload kinds
/// `describe` must show events for.
pub fn workload_cases(cov: &mut Coverage, c: &Cluster) {
    let k = &c.kubectl;
    cov.case("expose", || {
        contains(
            &k.ok(&[
                "expose",
                "deployment",
                "web",
                "--port=80",
                "--target-port=8080",
            ]),
            "service/web exposed",
        );
        until(
            "the web Service's EndpointSlice to list the pod",
            30,
            || {
                let slices = k.json(&[
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=web",
                ]);
                slices.pointer("/items/0/endpoints/0/addresses/0").is_some()
            },
        );
    });
    cov.case("scale", || {
        contains(
            &k.ok(&["scale", "deployment", "web", "--replicas=2"]),
            "deployment.apps/web scaled",
        );
    });
    cov.case("wait", || {
        contains(
            &k.ok(&[
                "wait",
                "--for=jsonpath={.status.readyReplicas}=2",
                "deployment/web",
                "--timeout=90s",
            ]),
            "deployment.apps/web condition met",
        );
        k.ok(&[
            "wait",
            "--for=condition=Available",
            "deployment/web",
            "--timeout=30s",
        ]);
    });
    // A Deployment with no replicas for `set`, so nothing needs to run its changes.
    k.ok(&[
        "create",
        "deployment",
        "tuned",
        &format!("--image={BUSYBOX}"),
        "--replicas=0",
    ]);
    let container = |p: &str| {
        field(
            k,
            &["get", "deployment", "tuned"],
            &format!("/spec/template/spec/containers/0{p}"),
        )
    };
    cov.case("set env", || {
        contains(
            &k.ok(&["set", "env", "deployment/tuned", "MODE=debug"]),
            "deployment.apps/tuned env updated",
        );
        assert_eq!(
            container("/env/0"),
            serde_json::json!({"name": "MODE", "value": "debug"})
        );
    });
    cov.case("set image", || {
        contains(
            &k.ok(&[
                "set",
                "image",
                "deployment/tuned",
                &format!("busybox={TESTSERVER}"),
            ]),
            "deployment.apps/tuned image updated",
        );
        assert_eq!(container("/image"), TESTSERVER);
    });
    cov.case("set resources", || {
        contains(
            &k.ok(&[
                "set",
                "resources",
                "deployment/tuned",
                "--limits=cpu=200m,memory=64Mi",
                "--requests=cpu=100m",
            ]),
            "resource requirements updated",
        );
        assert_eq!(container("/resources/limits/memory"), "64Mi");
        assert_eq!(container("/resources/requests/cpu"), "100m");
    });
    cov.case("set serviceaccount", || {
        contains(
            &k.ok(&["set", "serviceaccount", "deployment/tuned", "builder"]),
            "serviceaccount updated",
        );
        assert_eq!(
            field(
                k,
                &["get", "deployment", "tuned"],
                "/spec/template/spec/serviceAccountName"
            ),
            "builder"
        );
    });
    cov.case("set selector", || {
        contains(
            &k.ok(&["set", "selector", "service/svc-clusterip", "app=web"]),
            "service/svc-clusterip selector updated",
        );
        assert_eq!(
            field(k, &["get", "service", "svc-clusterip"], "/spec/selector"),
            serde_json::json!({"app": "web"})
        );
    });
    cov.case("set subject", || {
        contains(
            &k.ok(&[
                "set",
                "subject",
                "rolebinding/cm-editors",
                "--serviceaccount=default:builder",
            ]),
            "subjects updated",
        );
        let subjects = field(k, &["get", "rolebinding", "cm-editors"], "/subjects");
        assert_eq!(subjects.as_array().map(Vec::len), Some(2), "{subjects}");
    });
    cov.case("rollout restart", || {
        contains(
            &k.ok(&["rollout", "restart", "deployment/web"]),
            "deployment.apps/web restarted",
        );
    });
    cov.case("rollout status", || {
        contains(
            &k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]),
            "successfully rolled out",
        );
    });
    cov.case("rollout history", || {
        let out = k.ok(&["rollout", "history", "deployment/web"]);
        contains(&out, "REVISION");
        contains(&out, "\n2 ");
    });
    cov.case("rollout undo", || {
        contains(
            &k.ok(&["rollout", "undo", "deployment/web", "--to-revision=1"]),
            "deployment.apps/web rolled back",
        );
        k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    });
    cov.case("rollout pause", || {
        contains(
            &k.ok(&["rollout", "pause", "deployment/web"]),
            "deployment.apps/web paused",
        );
        assert_eq!(
            field(k, &["get", "deployment", "web"], "/spec/paused"),
            true
        );
    });
    cov.case("rollout resume", || {
        contains(
            &k.ok(&["rollout", "resume", "deployment/web"]),
            "deployment.apps/web resumed",
        );
    });
    // The workload kinds `describe` shows controller events for.
    c.kubectl.apply(&format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: db, image: {BUSYBOX}, imagePullPolicy: Never, command: [sleep, "3600"]}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: agent, image: {BUSYBOX}, imagePullPolicy: Never, command: [sleep, "3600"]}}]
"#
    ));
}
