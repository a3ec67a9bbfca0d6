//! Reading and changing objects: `get`, `describe` (with events), `explain`,
//! discovery, `events`, `apply` (client-side) and its subcommands, `diff`, `replace`,
//! `patch`, `edit` (scripted through `KUBE_EDITOR`), `label`, `annotate`, `delete`.

use std::path::Path;

use berth_testkit::Kubectl;

use crate::{Coverage, contains, describe_shows_event, field, until};

/// get/describe/explain/discovery/events, and the ways to change an object.
pub fn object_cases(cov: &mut Coverage, k: &Kubectl, dir: &Path) {
    cov.case("get", || {
        let out = k.ok(&["get", "deployments,services,configmaps", "-o", "wide"]);
        contains(&out, "deployment.apps/web");
        contains(&out, "service/svc-nodeport");
        contains(&out, "configmap/settings");
        // The rollouts' old pods finish terminating; the two replicas stay.
        let mut names = String::new();
        until("two web pods", 60, || {
            names = k.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
            names.lines().count() == 2
        });
    });
    cov.case("describe", || {
        k.ok(&[
            "wait",
            "--for=condition=Complete",
            "job/once",
            "--timeout=60s",
        ]);
        // What the controllers, the scheduler and the kubelet record, as upstream.
        let missing: Vec<String> = [
            ("deployment/web", "ScalingReplicaSet"),
            ("job/once", "Completed"),
            ("statefulset/db", "SuccessfulCreate"),
            ("daemonset/agent", "SuccessfulCreate"),
            ("pod/db-0", "Started"),
            ("pod/db-0", "Scheduled"),
            // The node lifecycle controller's event for a node it starts watching.
            ("node/node-e2e", "RegisteredNode"),
        ]
        .into_iter()
        .filter_map(|(object, reason)| describe_shows_event(k, object, reason).err())
        .collect();
        // A ClusterIP Service has no controller events upstream either: the section is there.
        contains(&k.ok(&["describe", "service/web"]), "\nEvents:");
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    });
    cov.case("explain", || {
        let out = k.ok(&["explain", "deployment.spec.replicas"]);
        contains(&out, "FIELD: replicas <integer>");
        contains(&k.ok(&["explain", "pods.spec.containers.image"]), "image");
    });
    cov.case("api-resources", || {
        let out = k.ok(&["api-resources", "-o", "wide"]);
        for r in [
            "deployments",
            "cronjobs",
            "ingresses",
            "leases",
            "customresourcedefinitions",
        ] {
            contains(&out, r);
        }
    });
    cov.case("api-versions", || {
        let out = k.ok(&["api-versions"]);
        for v in [
            "v1\n",
            "apps/v1\n",
            "batch/v1\n",
            "rbac.authorization.k8s.io/v1\n",
        ] {
            contains(&out, v);
        }
    });
    cov.case("events", || {
        let out = k.ok(&["events", "--for=deployment/web"]);
        contains(&out, "ScalingReplicaSet");
        contains(
            &k.ok(&["events", "-A", "--types=Normal"]),
            "SuccessfulCreate",
        );
    });
    let manifest = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: applied}}\ndata: {{k: {value}}}\n"
        )
    };
    let file = dir.join("applied.yaml");
    let data = |key: &str| field(k, &["get", "configmap", "applied"], &format!("/data/{key}"));
    cov.case("apply", || {
        std::fs::write(&file, manifest("one")).expect("write manifest");
        let f = file.to_str().expect("utf-8 path");
        contains(&k.ok(&["apply", "-f", f]), "configmap/applied created");
        std::fs::write(&file, manifest("two")).expect("write manifest");
        contains(&k.ok(&["apply", "-f", f]), "configmap/applied configured");
        assert_eq!(data("k"), "two");
    });
    cov.case("apply view-last-applied", || {
        contains(
            &k.ok(&["apply", "view-last-applied", "configmap/applied"]),
            "k: two",
        );
    });
    cov.case("apply set-last-applied", || {
        std::fs::write(&file, manifest("three")).expect("write manifest");
        k.ok(&[
            "apply",
            "set-last-applied",
            "-f",
            file.to_str().expect("utf-8"),
        ]);
        contains(
            &k.ok(&["apply", "view-last-applied", "configmap/applied"]),
            "k: three",
        );
        assert_eq!(
            data("k"),
            "two",
            "set-last-applied changes only the annotation"
        );
    });
    cov.case("apply edit-last-applied", || {
        let out = k
            .cmd(&["apply", "edit-last-applied", "configmap/applied"])
            .env("KUBE_EDITOR", "sed -i s/three/four/")
            .output()
            .expect("kubectl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        contains(
            &k.ok(&["apply", "view-last-applied", "configmap/applied"]),
            "k: four",
        );
        assert_eq!(
            data("k"),
            "two",
            "edit-last-applied changes only the annotation"
        );
    });
    cov.case("diff", || {
        std::fs::write(&file, manifest("five")).expect("write manifest");
        let out = k.run(&["diff", "-f", file.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(1), "1: differences found");
        let text = String::from_utf8_lossy(&out.stdout);
        contains(&text, "-  k: two");
        contains(&text, "+  k: five");
    });
    cov.case("replace", || {
        contains(
            &k.ok(&["replace", "-f", file.to_str().expect("utf-8")]),
            "configmap/applied replaced",
        );
        assert_eq!(data("k"), "five");
    });
    cov.case("patch", || {
        k.ok(&[
            "patch",
            "configmap",
            "applied",
            "-p",
            r#"{"data":{"merge":"yes"}}"#,
        ]);
        k.ok(&[
            "patch",
            "configmap",
            "applied",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/data/json","value":"yes"}]"#,
        ]);
        k.ok(&[
            "patch",
            "deployment",
            "tuned",
            "--type=strategic",
            "-p",
            r#"{"spec":{"template":{"metadata":{"labels":{"patched":"yes"}}}}}"#,
        ]);
        assert_eq!(data("merge"), "yes");
        assert_eq!(data("json"), "yes");
    });
    cov.case("edit", || {
        let out = k
            .cmd(&["edit", "configmap", "applied"])
            .env("KUBE_EDITOR", "sed -i s/k:\\ five/k:\\ edited/")
            .output()
            .expect("kubectl edit");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        contains(
            &String::from_utf8_lossy(&out.stdout),
            "configmap/applied edited",
        );
        assert_eq!(data("k"), "edited");
    });
    cov.case("label", || {
        contains(
            &k.ok(&["label", "configmap", "applied", "tier=backend"]),
            "configmap/applied labeled",
        );
        k.ok(&[
            "label",
            "configmap",
            "applied",
            "tier=frontend",
            "--overwrite",
        ]);
        let names = k.ok(&["get", "configmap", "-l", "tier=frontend", "-o", "name"]);
        assert_eq!(names.trim(), "configmap/applied");
    });
    cov.case("annotate", || {
        contains(
            &k.ok(&["annotate", "configmap", "applied", "owner=team-a"]),
            "configmap/applied annotated",
        );
        assert_eq!(
            field(
                k,
                &["get", "configmap", "applied"],
                "/metadata/annotations/owner"
            ),
            "team-a"
        );
    });
    cov.case("delete", || {
        contains(
            &k.ok(&["delete", "configmap", "applied"]),
            "configmap \"applied\" deleted",
        );
        k.ok(&["delete", "deployment", "tuned", "--wait=true"]);
        let out = k.run(&["get", "configmap", "applied"]);
        assert!(!out.status.success(), "the ConfigMap is gone");
    });
}
