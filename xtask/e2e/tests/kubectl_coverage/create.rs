//! `kubectl create`: every subcommand, each object checked; the objects stay for the
//! later cases.

use crate::common::Cluster;
use crate::{BUSYBOX, Coverage, TESTSERVER, contains, field, until};

/// Every `kubectl create` subcommand; the objects stay for the later cases.
pub fn create_cases(cov: &mut Coverage, c: &Cluster) {
    let k = &c.kubectl;
    cov.case("create clusterrole", || {
        contains(
            &k.ok(&[
                "create",
                "clusterrole",
                "pod-reader",
                "--verb=get,list,watch",
                "--resource=pods",
            ]),
            "clusterrole.rbac.authorization.k8s.io/pod-reader created",
        );
        let rules = field(k, &["get", "clusterrole", "pod-reader"], "/rules/0/verbs");
        assert_eq!(rules, serde_json::json!(["get", "list", "watch"]));
    });
    cov.case("create clusterrolebinding", || {
        contains(
            &k.ok(&[
                "create",
                "clusterrolebinding",
                "pod-readers",
                "--clusterrole=pod-reader",
                "--user=alice",
            ]),
            "created",
        );
        let b = k.json(&["get", "clusterrolebinding", "pod-readers"]);
        assert_eq!(b["roleRef"]["name"], "pod-reader");
        assert_eq!(b["subjects"][0]["name"], "alice");
    });
    cov.case("create configmap", || {
        contains(
            &k.ok(&[
                "create",
                "configmap",
                "settings",
                "--from-literal=mode=fast",
            ]),
            "configmap/settings created",
        );
        assert_eq!(
            field(k, &["get", "configmap", "settings"], "/data/mode"),
            "fast"
        );
    });
    cov.case("create cronjob", || {
        contains(
            &k.ok(&[
                "create",
                "cronjob",
                "nightly",
                &format!("--image={BUSYBOX}"),
                "--schedule=0 3 * * *",
                "--",
                "true",
            ]),
            "cronjob.batch/nightly created",
        );
        assert_eq!(
            field(k, &["get", "cronjob", "nightly"], "/spec/schedule"),
            "0 3 * * *"
        );
    });
    cov.case("create deployment", || {
        contains(
            &k.ok(&[
                "create",
                "deployment",
                "web",
                &format!("--image={TESTSERVER}"),
                "--port=8080",
            ]),
            "deployment.apps/web created",
        );
        k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    });
    cov.case("create ingress", || {
        contains(
            &k.ok(&["create", "ingress", "web", "--rule=web.example/=web:80"]),
            "ingress.networking.k8s.io/web created",
        );
        let rule = field(k, &["get", "ingress", "web"], "/spec/rules/0");
        assert_eq!(rule["host"], "web.example");
        assert_eq!(
            rule["http"]["paths"][0]["backend"]["service"]["name"],
            "web"
        );
    });
    cov.case("create job", || {
        contains(
            &k.ok(&[
                "create",
                "job",
                "once",
                &format!("--image={BUSYBOX}"),
                "--",
                "sh",
                "-c",
                "echo job-done",
            ]),
            "job.batch/once created",
        );
    });
    cov.case("create namespace", || {
        contains(
            &k.ok(&["create", "namespace", "team-a"]),
            "namespace/team-a created",
        );
        until("namespace team-a Active", 10, || {
            field(k, &["get", "namespace", "team-a"], "/status/phase") == "Active"
        });
    });
    cov.case("create poddisruptionbudget", || {
        contains(
            &k.ok(&[
                "create",
                "poddisruptionbudget",
                "web",
                "--selector=app=web",
                "--min-available=1",
            ]),
            "poddisruptionbudget.policy/web created",
        );
        assert_eq!(field(k, &["get", "pdb", "web"], "/spec/minAvailable"), 1);
    });
    cov.case("create priorityclass", || {
        contains(
            &k.ok(&[
                "create",
                "priorityclass",
                "important",
                "--value=1000",
                "--description=coverage",
            ]),
            "priorityclass.scheduling.k8s.io/important created",
        );
        assert_eq!(
            field(k, &["get", "priorityclass", "important"], "/value"),
            1000
        );
    });
    cov.case("create quota", || {
        contains(
            &k.ok(&[
                "create",
                "quota",
                "small",
                "--namespace=team-a",
                "--hard=pods=10,services=5",
            ]),
            "resourcequota/small created",
        );
        assert_eq!(
            field(
                k,
                &["get", "quota", "small", "-n", "team-a"],
                "/spec/hard/pods"
            ),
            "10"
        );
    });
    cov.case("create role", || {
        contains(
            &k.ok(&[
                "create",
                "role",
                "cm-editor",
                "--verb=get,update",
                "--resource=configmaps",
            ]),
            "role.rbac.authorization.k8s.io/cm-editor created",
        );
    });
    cov.case("create rolebinding", || {
        contains(
            &k.ok(&[
                "create",
                "rolebinding",
                "cm-editors",
                "--role=cm-editor",
                "--user=alice",
            ]),
            "rolebinding.rbac.authorization.k8s.io/cm-editors created",
        );
    });
    cov.case("create secret docker-registry", || {
        contains(
            &k.ok(&[
                "create",
                "secret",
                "docker-registry",
                "regcred",
                "--docker-server=registry.example",
                "--docker-username=u",
                "--docker-password=p",
            ]),
            "secret/regcred created",
        );
        assert_eq!(
            field(k, &["get", "secret", "regcred"], "/type"),
            "kubernetes.io/dockerconfigjson"
        );
    });
    cov.case("create secret generic", || {
        contains(
            &k.ok(&[
                "create",
                "secret",
                "generic",
                "db",
                "--from-literal=password=s3cret",
            ]),
            "secret/db created",
        );
        // base64("s3cret")
        assert_eq!(
            field(k, &["get", "secret", "db"], "/data/password"),
            "czNjcmV0"
        );
    });
    cov.case("create secret tls", || {
        let pki = c.server.dir().join("pki");
        contains(
            &k.ok(&[
                "create",
                "secret",
                "tls",
                "web-tls",
                &format!("--cert={}", pki.join("apiserver.crt").display()),
                &format!("--key={}", pki.join("apiserver.key").display()),
            ]),
            "secret/web-tls created",
        );
        assert_eq!(
            field(k, &["get", "secret", "web-tls"], "/type"),
            "kubernetes.io/tls"
        );
    });
    for (kind, extra, ty) in [
        ("clusterip", "--tcp=80:8080", "ClusterIP"),
        (
            "externalname",
            "--external-name=db.example.com",
            "ExternalName",
        ),
        ("loadbalancer", "--tcp=80:8080", "LoadBalancer"),
        ("nodeport", "--tcp=80:8080", "NodePort"),
    ] {
        cov.case(&format!("create service {kind}"), || {
            let name = format!("svc-{kind}");
            contains(
                &k.ok(&["create", "service", kind, &name, extra]),
                &format!("service/{name} created"),
            );
            let svc = k.json(&["get", "service", &name]);
            assert_eq!(svc["spec"]["type"], ty, "{svc}");
            if kind == "nodeport" {
                assert!(svc["spec"]["ports"][0]["nodePort"].is_u64(), "{svc}");
            }
        });
    }
    cov.case("create serviceaccount", || {
        contains(
            &k.ok(&["create", "serviceaccount", "builder"]),
            "serviceaccount/builder created",
        );
    });
    cov.case("create token", || {
        let token = k.ok(&["create", "token", "builder", "--duration=10m"]);
        assert_eq!(
            token.trim().split('.').count(),
            3,
            "a JWT: header.payload.signature: {token}"
        );
    });
}
