//! Server-side apply and managed fields with the real kubectl and kube-rs against a
//! berth-server: `kubectl apply --server-side` creates and updates, a field another
//! manager set is a conflict (upstream's message) until `--force-conflicts`, two
//! managers own different fields of one Deployment, a field a manager stops applying
//! goes only if nobody else owns it, client-side apply migrates to server-side apply,
//! `kubectl diff --server-side`, kube-rs' `Patch::Apply` on a custom resource's
//! associative list, managers of a version a CRD no longer lists dropped, `/scale`
//! applied, recorded and admitted as a Scale, bad requests and options refused as
//! upstream, and a re-apply of defaulted content that writes nothing.

use berth_testkit::{BerthServer, Kubectl};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

fn server(dir: &std::path::Path) -> BerthServer {
    BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir)
}

fn run(k: &Kubectl, args: &[&str], manifest: &str) -> (bool, String) {
    let out = k.run_with_stdin(args, manifest);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn deployment(name: &str, replicas: u32, image: &str, extra_meta: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: default\n{extra_meta}spec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n      - name: main\n        image: {image}\n"
    )
}

/// The managedFields entry of `manager` with `operation`.
fn entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
}

#[test]
fn kubectl_server_side_apply_creates_updates_conflicts_and_forces() {
    let home = tempfile::tempdir().expect("temp home");
    let server = server(home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let apply = ["apply", "--server-side", "-f", "-"];
    let (ok, out) = run(&k, &apply, &deployment("web", 2, "nginx:1", ""));
    assert!(ok, "{out}");
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let obj = k.json(&["get", "deployment", "web", "--show-managed-fields"]);
    let applied = entry(&obj, "kubectl", "Apply").expect("kubectl's Apply entry");
    assert_eq!(applied["apiVersion"], "apps/v1");
    assert_eq!(applied["fieldsType"], "FieldsV1");
    assert_eq!(applied["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
    assert_eq!(
        applied["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"main\"}"]
            ["f:image"],
        json!({})
    );

    // Another manager sets replicas: applying a different value is a conflict.
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "--field-manager=scaler",
        "-p",
        r#"{"spec":{"replicas":5}}"#,
    ]);
    let obj = k.json(&["get", "deployment", "web", "--show-managed-fields"]);
    let scaler = entry(&obj, "scaler", "Update").expect("scaler's Update entry");
    assert_eq!(scaler["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    assert!(
        entry(&obj, "kubectl", "Apply").expect("apply entry")["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none(),
        "the update took .spec.replicas from the applier"
    );
    let (ok, out) = run(&k, &apply, &deployment("web", 3, "nginx:1", ""));
    assert!(!ok, "a conflicting apply succeeded: {out}");
    assert!(
        out.contains(
            r#"Apply failed with 1 conflict: conflict with "scaler" using apps/v1: .spec.replicas"#
        ),
        "{out}"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "5"
    );
    // The same value as the other manager's is no conflict: both own it.
    let (ok, out) = run(&k, &apply, &deployment("web", 5, "nginx:2", ""));
    assert!(ok, "{out}");
    let obj = k.json(&["get", "deployment", "web", "--show-managed-fields"]);
    assert!(entry(&obj, "scaler", "Update").is_some());
    assert_eq!(
        entry(&obj, "kubectl", "Apply").expect("apply")["fieldsV1"]["f:spec"]["f:replicas"],
        json!({})
    );
    // --force-conflicts takes the field over.
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "--field-manager=scaler",
        "-p",
        r#"{"spec":{"replicas":6}}"#,
    ]);
    let forced = ["apply", "--server-side", "--force-conflicts", "-f", "-"];
    let (ok, out) = run(&k, &forced, &deployment("web", 3, "nginx:2", ""));
    assert!(ok, "{out}");
    let obj = k.json(&["get", "deployment", "web", "--show-managed-fields"]);
    assert_eq!(obj["spec"]["replicas"], 3);
    assert!(
        entry(&obj, "scaler", "Update").is_none(),
        "the forced apply left scaler owning fields: {}",
        obj["metadata"]["managedFields"]
    );
    // Applying the same configuration again changes nothing.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: same, namespace: default}\ndata: {a: b}\n";
    let (ok, out) = run(&k, &apply, cm);
    assert!(ok, "{out}");
    let rv = k.ok(&[
        "get",
        "configmap",
        "same",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let (ok, out) = run(&k, &apply, cm);
    assert!(ok, "{out}");
    let again = k.ok(&[
        "get",
        "configmap",
        "same",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    assert_eq!(again, rv, "a no-op apply wrote");
    // kubectl diff --server-side shows what an apply would change (exit 1).
    let out = k.run_with_stdin(
        &["diff", "--server-side", "-f", "-"],
        &deployment("web", 4, "nginx:2", ""),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("replicas: 4"), "{text}");
    assert!(text.contains("replicas: 3"), "{text}");
    assert_eq!(
        k.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );
}

#[test]
fn two_managers_own_different_fields_and_removal_respects_ownership() {
    let home = tempfile::tempdir().expect("temp home");
    let server = server(home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let as_a = [
        "apply",
        "--server-side",
        "--field-manager=team-a",
        "-f",
        "-",
    ];
    let as_b = [
        "apply",
        "--server-side",
        "--field-manager=team-b",
        "-f",
        "-",
    ];
    let a_meta = "  annotations: {owner: a, common: shared}\n  labels: {tier: web}\n";
    let (ok, out) = run(&k, &as_a, &deployment("shared", 1, "busybox:1", a_meta));
    assert!(ok, "{out}");
    // team-b applies only annotations, one with team-a's value: no conflict.
    let b_config = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shared\n  namespace: default\n  annotations: {team: b, common: shared}\n";
    let (ok, out) = run(&k, &as_b, b_config);
    assert!(ok, "{out}");
    let obj = k.json(&["get", "deployment", "shared", "--show-managed-fields"]);
    let a = entry(&obj, "team-a", "Apply").expect("team-a");
    let b = entry(&obj, "team-b", "Apply").expect("team-b");
    assert_eq!(
        b["fieldsV1"],
        json!({"f:metadata": {"f:annotations": {"f:common": {}, "f:team": {}}}})
    );
    assert_eq!(
        a["fieldsV1"]["f:metadata"]["f:annotations"]["f:owner"],
        json!({})
    );
    assert_eq!(
        a["fieldsV1"]["f:metadata"]["f:annotations"]["f:common"],
        json!({})
    );
    assert!(a["fieldsV1"]["f:spec"]["f:replicas"].is_object());
    // team-a stops applying `owner`, `common` and the label: `owner` and the label go,
    // `common` stays (team-b owns it too).
    let (ok, out) = run(&k, &as_a, &deployment("shared", 1, "busybox:1", ""));
    assert!(ok, "{out}");
    let obj = k.json(&["get", "deployment", "shared"]);
    let annotations = &obj["metadata"]["annotations"];
    assert!(annotations.get("owner").is_none(), "{annotations}");
    assert_eq!(annotations["common"], "shared");
    assert_eq!(annotations["team"], "b");
    assert!(
        obj["metadata"]["labels"].get("tier").is_none(),
        "{}",
        obj["metadata"]
    );
    // team-b changing team-a's image is a conflict naming team-a.
    let b_image = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: shared, namespace: default}\nspec:\n  template:\n    spec:\n      containers:\n      - {name: main, image: busybox:2}\n";
    let (ok, out) = run(&k, &as_b, b_image);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            r#"conflict with "team-a": .spec.template.spec.containers[name="main"].image"#
        ),
        "{out}"
    );
    // A container team-a stops applying is removed.
    let two = deployment("shared", 1, "busybox:1", "").replace(
        "        image: busybox:1\n",
        "        image: busybox:1\n      - name: side\n        image: busybox:1\n",
    );
    let (ok, out) = run(&k, &as_a, &two);
    assert!(ok, "{out}");
    let names = || {
        k.ok(&[
            "get",
            "deployment",
            "shared",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name}",
        ])
    };
    assert_eq!(names(), "main side");
    let (ok, out) = run(&k, &as_a, &deployment("shared", 1, "busybox:1", ""));
    assert!(ok, "{out}");
    assert_eq!(names(), "main");
    // Past ten updaters the oldest are merged into `ancient-changes`, as upstream.
    for i in 0..12 {
        k.ok(&[
            "label",
            "deployment",
            "shared",
            &format!("l{i}=v"),
            &format!("--field-manager=labeler-{i:02}"),
        ]);
    }
    let obj = k.json(&["get", "deployment", "shared", "--show-managed-fields"]);
    let managed = obj["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields");
    let updaters: Vec<&Value> = managed
        .iter()
        .filter(|e| e["operation"] == "Update")
        .collect();
    assert_eq!(updaters.len(), 10, "{managed:?}");
    let ancient = entry(&obj, "ancient-changes", "Update").expect("ancient-changes");
    assert!(
        ancient["fieldsV1"]["f:metadata"]["f:labels"]["f:l0"].is_object(),
        "{ancient}"
    );
    assert!(entry(&obj, "labeler-11", "Update").is_some());
    assert!(entry(&obj, "team-a", "Apply").is_some());
}

#[test]
fn client_side_apply_migrates_to_server_side_apply() {
    let home = tempfile::tempdir().expect("temp home");
    let server = server(home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let config = |value: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: default}}\ndata:\n  mode: {value}\n{extra}"
        )
    };
    k.apply(&config("fast", "  extra: one\n"));
    let obj = k.json(&["get", "configmap", "settings", "--show-managed-fields"]);
    let csa = entry(&obj, "kubectl-client-side-apply", "Update").expect("client-side entry");
    assert_eq!(csa["fieldsV1"]["f:data"]["f:mode"], json!({}));
    // kubectl apply --server-side over a client-side-applied object: no conflict for
    // fields as last applied; kubectl then moves the client-side apply manager's
    // fields to its own (a managedFields JSON patch pinned to the resourceVersion,
    // taken as is) and applies again, which removes what the configuration dropped.
    let (ok, out) = run(
        &k,
        &["apply", "--server-side", "-f", "-"],
        &config("slow", ""),
    );
    assert!(ok, "{out}");
    let obj = k.json(&["get", "configmap", "settings", "--show-managed-fields"]);
    assert_eq!(obj["data"], json!({"mode": "slow"}));
    assert!(
        entry(&obj, "kubectl-client-side-apply", "Update").is_none(),
        "{}",
        obj["metadata"]["managedFields"]
    );
    let applied = entry(&obj, "kubectl", "Apply").expect("kubectl's Apply entry");
    assert_eq!(applied["fieldsV1"]["f:data"], json!({"f:mode": {}}));
    let last = obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        last.contains("slow"),
        "the annotation follows the apply: {last}"
    );
    // A create records its manager as an update.
    k.ok(&["create", "configmap", "made", "--from-literal=a=b"]);
    let obj = k.json(&["get", "configmap", "made", "--show-managed-fields"]);
    let created = entry(&obj, "kubectl-create", "Update").expect("kubectl-create entry");
    assert_eq!(created["fieldsV1"], json!({"f:data": {".": {}, "f:a": {}}}));
    assert_eq!(created["apiVersion"], "v1");
    assert!(created["time"].is_string());
}

/// HorizontalPodAutoscalers are served as autoscaling/v1 and v2, which name the CPU
/// target differently (`spec.targetCPUUtilizationPercentage` / `spec.metrics`): each
/// managedFields entry names fields in its own version, and a write is checked against
/// an entry in that entry's version, as upstream's field manager converts.
#[test]
fn managed_fields_of_an_hpa_follow_each_managers_version() {
    let home = tempfile::tempdir().expect("temp home");
    let server = server(home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let v2 = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web, namespace: default}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  maxReplicas: 5\n  metrics:\n  - type: Resource\n    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}\n";
    let v1 = |target: u32| {
        format!(
            "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {{name: web, namespace: default}}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}\n  maxReplicas: 5\n  targetCPUUtilizationPercentage: {target}\n"
        )
    };
    let get_named = |version: &str, name: &str| {
        k.json(&[
            "get",
            &format!("horizontalpodautoscalers.{version}.autoscaling"),
            name,
            "--show-managed-fields",
        ])
    };
    let get = |version: &str| get_named(version, "web");
    let apply_v2 = [
        "apply",
        "--server-side",
        "--field-manager=team-v2",
        "-f",
        "-",
    ];
    let (ok, out) = run(&k, &apply_v2, v2);
    assert!(ok, "{out}");
    let obj = get("v2");
    let mine = entry(&obj, "team-v2", "Apply").expect("team-v2's entry");
    assert_eq!(mine["apiVersion"], "autoscaling/v2");
    assert!(
        mine["fieldsV1"]["f:spec"]["f:metrics"].is_object(),
        "{mine}"
    );

    // The v1 CPU target is v2's metrics: a conflict with the v2 applier, in its terms.
    let apply_v1 = [
        "apply",
        "--server-side",
        "--field-manager=team-v1",
        "-f",
        "-",
    ];
    let (ok, out) = run(&k, &apply_v1, &v1(80));
    assert!(!ok, "applied over another manager's metric: {out}");
    assert!(
        out.contains(r#"conflict with "team-v2": .spec.metrics"#),
        "{out}"
    );
    let forced = [&apply_v1[..], &["--force-conflicts"]].concat();
    let (ok, out) = run(&k, &forced, &v1(80));
    assert!(ok, "{out}");
    let obj = get("v1");
    assert_eq!(obj["spec"]["targetCPUUtilizationPercentage"], 80);
    let v1_entry = entry(&obj, "team-v1", "Apply").expect("team-v1's entry");
    assert_eq!(v1_entry["apiVersion"], "autoscaling/v1");
    assert_eq!(
        v1_entry["fieldsV1"]["f:spec"]["f:targetCPUUtilizationPercentage"],
        json!({}),
        "{v1_entry}"
    );
    let v2_entry = entry(&obj, "team-v2", "Apply").expect("team-v2 keeps its other fields");
    assert!(
        v2_entry["fieldsV1"]["f:spec"].get("f:metrics").is_none(),
        "the forced apply took the metrics: {v2_entry}"
    );
    assert_eq!(v2_entry["fieldsV1"]["f:spec"]["f:maxReplicas"], json!({}));

    // An update through v1 records v1's field names and takes the field from the v1
    // applier; v2 readers see the new target.
    k.ok(&[
        "patch",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "--type=merge",
        "--field-manager=tuner",
        "-p",
        r#"{"spec":{"targetCPUUtilizationPercentage":70}}"#,
    ]);
    let obj = get("v1");
    let tuner = entry(&obj, "tuner", "Update").expect("tuner's entry");
    assert_eq!(tuner["apiVersion"], "autoscaling/v1");
    assert_eq!(
        tuner["fieldsV1"],
        json!({"f:spec": {"f:targetCPUUtilizationPercentage": {}}})
    );
    let v1_entry = entry(&obj, "team-v1", "Apply").expect("team-v1's entry");
    assert!(
        v1_entry["fieldsV1"]["f:spec"]
            .get("f:targetCPUUtilizationPercentage")
            .is_none(),
        "{v1_entry}"
    );
    let obj = get("v2");
    assert_eq!(
        obj["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );

    // A v1 update that leaves the metrics alone takes nothing of them, though v1
    // carries the other metrics in an annotation and converts back in another order.
    let multi = v2.replace("name: web, namespace", "name: multi, namespace")
        + "  - type: Resource\n    resource: {name: memory, target: {type: AverageValue, averageValue: 100Mi}}\n";
    let (ok, out) = run(&k, &apply_v2, &multi);
    assert!(ok, "{out}");
    k.ok(&[
        "patch",
        "horizontalpodautoscalers.v1.autoscaling",
        "multi",
        "--type=merge",
        "--field-manager=scaler",
        "-p",
        r#"{"spec":{"maxReplicas":7}}"#,
    ]);
    let obj = get_named("v2", "multi");
    let v2_entry = entry(&obj, "team-v2", "Apply").expect("team-v2's entry");
    assert!(
        v2_entry["fieldsV1"]["f:spec"]["f:metrics"].is_object(),
        "{v2_entry}"
    );
    assert!(
        v2_entry["fieldsV1"]["f:spec"]
            .get("f:maxReplicas")
            .is_none(),
        "{v2_entry}"
    );
    let scaler = entry(&obj, "scaler", "Update").expect("scaler's entry");
    assert_eq!(scaler["fieldsV1"], json!({"f:spec": {"f:maxReplicas": {}}}));

    // An applier that applies in another version than last time: what it owned last
    // time is pruned as that version names it, so a v2 metric it no longer sets as
    // v1's CPU target goes (the server's default CPU target may take its place).
    let switch =
        |manifest: &str| manifest.replace("name: web, namespace", "name: switch, namespace");
    let apply_switch = [
        "apply",
        "--server-side",
        "--field-manager=switcher",
        "-f",
        "-",
    ];
    let (ok, out) = run(&k, &apply_switch, &switch(v2));
    assert!(ok, "{out}");
    let without_target = v1(1).replace("  targetCPUUtilizationPercentage: 1\n", "");
    let (ok, out) = run(&k, &apply_switch, &switch(&without_target));
    assert!(ok, "{out}");
    let obj = get_named("v2", "switch");
    let target = &obj["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"];
    assert_ne!(target, 50, "the metric applied in v2 was not pruned: {obj}");
    let switched = entry(&obj, "switcher", "Apply").expect("switcher's entry");
    assert_eq!(switched["apiVersion"], "autoscaling/v1", "{switched}");
    assert!(
        switched["fieldsV1"]["f:spec"].get("f:metrics").is_none(),
        "{switched}"
    );

    // A create through v1 names v1's fields too.
    let other = v1(60).replace("name: web, namespace", "name: api, namespace");
    let (ok, out) = run(&k, &["create", "-f", "-"], &other);
    assert!(ok, "{out}");
    let obj = get_named("v1", "api");
    let created = entry(&obj, "kubectl-create", "Update").expect("kubectl-create's entry");
    assert_eq!(created["apiVersion"], "autoscaling/v1");
    let spec = &created["fieldsV1"]["f:spec"];
    assert_eq!(
        spec["f:targetCPUUtilizationPercentage"],
        json!({}),
        "{created}"
    );
    assert!(spec.get("f:metrics").is_none(), "{created}");
}

#[test]
fn explicit_nulls_in_an_applied_configuration_are_owned_as_upstream() {
    let home = tempfile::tempdir().expect("temp home");
    let server = server(home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let apply_as = |manager: &str, manifest: &str, force: bool| {
        let mut args = vec![
            "apply",
            "--server-side",
            "--field-manager",
            manager,
            "-f",
            "-",
        ];
        if force {
            args.push("--force-conflicts");
        }
        run(&k, &args, manifest)
    };
    let get = || k.json(&["get", "deployment", "nulls", "--show-managed-fields"]);
    let with_strategy = deployment("nulls", 3, "nginx:1", "").replace(
        "  replicas: 3\n",
        "  replicas: 3\n  strategy: {type: Recreate}\n",
    );
    let (ok, out) = apply_as("team-a", &with_strategy, false);
    assert!(ok, "{out}");

    // A null for a scalar another manager owns changes it: a conflict.
    let only_replicas = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: nulls, namespace: default}\nspec:\n  replicas: null\n";
    let (ok, out) = apply_as("team-b", only_replicas, false);
    assert!(!ok, "{out}");
    assert!(
        out.contains("Apply failed with 1 conflict: conflict with \"team-a\": .spec.replicas"),
        "{out}"
    );
    // Forced, the null takes the field and the default fills it.
    let (ok, out) = apply_as("team-b", only_replicas, true);
    assert!(ok, "{out}");
    let obj = get();
    assert_eq!(obj["spec"]["replicas"], 1, "{obj}");
    let b = entry(&obj, "team-b", "Apply").expect("team-b's entry");
    assert_eq!(b["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}), "{b}");
    let a = entry(&obj, "team-a", "Apply").expect("team-a's entry");
    assert!(a["fieldsV1"]["f:spec"].get("f:replicas").is_none(), "{a}");

    // A null for a granular struct leaves it, owned by the applier as a whole; what
    // the applier owned in it and no longer applies goes, and the default is back.
    let strategy_null =
        deployment("nulls", 3, "nginx:1", "").replace("  replicas: 3\n", "  strategy: null\n");
    let (ok, out) = apply_as("team-a", &strategy_null, false);
    assert!(ok, "{out}");
    let obj = get();
    assert_eq!(obj["spec"]["strategy"]["type"], "RollingUpdate", "{obj}");
    let a = entry(&obj, "team-a", "Apply").expect("team-a's entry");
    assert_eq!(a["fieldsV1"]["f:spec"]["f:strategy"], json!({}), "{a}");
    assert_eq!(obj["spec"]["replicas"], 1, "{obj}");

    // A null value in a map is its value type's zero value (`""` for a label or a
    // ConfigMap key, as Go decodes it upstream), the key owned by the applier — over
    // a value the key had, too.
    let config_map = |data: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: nulls\n  namespace: default\n  labels: {{team: null}}\ndata: {data}\n"
        )
    };
    let (ok, out) = apply_as("team-c", &config_map("{a: one, b: two}"), false);
    assert!(ok, "{out}");
    let (ok, out) = apply_as("team-c", &config_map("{a: null, b: two}"), false);
    assert!(ok, "{out}");
    let obj = k.json(&["get", "configmap", "nulls", "--show-managed-fields"]);
    assert_eq!(obj["data"], json!({"a": "", "b": "two"}), "{obj}");
    assert_eq!(obj["metadata"]["labels"]["team"], "", "{obj}");
    let c = entry(&obj, "team-c", "Apply").expect("team-c's entry");
    assert_eq!(c["fieldsV1"]["f:data"]["f:a"], json!({}), "{c}");
    assert_eq!(
        c["fieldsV1"]["f:metadata"]["f:labels"]["f:team"],
        json!({}),
        "{c}"
    );

    // YAML as `kubectl create --dry-run=client -o yaml` writes it: the template's
    // `creationTimestamp: null` is owned by both appliers, no conflict.
    let generated = deployment("generated", 1, "nginx:1", "  creationTimestamp: null\n").replace(
        "    metadata: {labels: {app: generated}}\n",
        "    metadata: {creationTimestamp: null, labels: {app: generated}}\n",
    ) + "status: {}\n";
    for manager in ["gen-1", "gen-2"] {
        let (ok, out) = apply_as(manager, &generated, false);
        assert!(ok, "{manager}: {out}");
    }
    let obj = k.json(&["get", "deployment", "generated", "--show-managed-fields"]);
    for manager in ["gen-1", "gen-2"] {
        let e = entry(&obj, manager, "Apply").expect("an Apply entry");
        assert_eq!(
            e["fieldsV1"]["f:spec"]["f:template"]["f:metadata"]["f:creationTimestamp"],
            json!({}),
            "{e}"
        );
    }

    // A custom resource: a nullable field keeps its null, a non-nullable one with a
    // default gets the default, one without loses the null.
    k.apply(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gadgets.ssa.berth.dev}\nspec:\n  group: ssa.berth.dev\n  scope: Namespaced\n  names: {plural: gadgets, singular: gadget, kind: Gadget}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            properties:\n              note: {type: string, nullable: true}\n              mode: {type: string, default: fast}\n              size: {type: integer}\n",
    );
    let gadget = "apiVersion: ssa.berth.dev/v1\nkind: Gadget\nmetadata: {name: g, namespace: default}\nspec: {note: null, mode: null, size: null}\n";
    let mut applied = None;
    for _ in 0..50 {
        let (ok, out) = apply_as("team-c", gadget, false);
        if ok {
            applied = Some(out);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(applied.is_some(), "the Gadget was never applied");
    let obj = k.json(&["get", "gadget", "g", "--show-managed-fields"]);
    assert_eq!(obj["spec"], json!({"note": null, "mode": "fast"}), "{obj}");
    let c = entry(&obj, "team-c", "Apply").expect("team-c's entry");
    assert_eq!(
        c["fieldsV1"]["f:spec"],
        json!({"f:note": {}, "f:mode": {}, "f:size": {}}),
        "{c}"
    );
}

/// A CRD served in `v1` (stored), listing `v1beta1` served or not (`Some`) or not at
/// all (`None`).
fn widgets(beta: Option<bool>) -> String {
    let version = |name: &str, served: bool, storage: bool| {
        format!(
            "  - name: {name}\n    served: {served}\n    storage: {storage}\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            properties:\n              size: {{type: integer}}\n              color: {{type: string}}\n"
        )
    };
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: widgets.ssa.berth.dev}}\nspec:\n  group: ssa.berth.dev\n  scope: Namespaced\n  names: {{plural: widgets, singular: widget, kind: Widget}}\n  versions:\n{}{}",
        version("v1", true, true),
        beta.map_or_else(String::new, |served| version("v1beta1", served, false))
    )
}

#[test]
fn managers_of_a_version_no_longer_listed_are_dropped_at_the_next_write() {
    let home = tempfile::tempdir().expect("temp home");
    let server = server(home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    k.apply(&widgets(Some(true)));
    let widget = |version: &str, name: &str, size: u32| {
        format!(
            "apiVersion: ssa.berth.dev/{version}\nkind: Widget\nmetadata: {{name: {name}, namespace: default}}\nspec: {{size: {size}}}\n"
        )
    };
    let apply_as = |manager: &str, manifest: &str| {
        run(
            &k,
            &[
                "apply",
                "--server-side",
                &format!("--field-manager={manager}"),
                "-f",
                "-",
            ],
            manifest,
        )
    };
    // The CRD is served a moment after it is created.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, out) = apply_as("beta-team", &widget("v1beta1", "w1", 3));
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (ok, out) = apply_as("beta-team", &widget("v1beta1", "w2", 3));
    assert!(ok, "{out}");
    let get = |name: &str| {
        k.json(&[
            "get",
            "widgets.v1.ssa.berth.dev",
            name,
            "--show-managed-fields",
        ])
    };
    let beta = entry(&get("w1"), "beta-team", "Apply")
        .expect("beta-team's entry")
        .clone();
    assert_eq!(beta["apiVersion"], "ssa.berth.dev/v1beta1");

    let unserved = |crd: &str| {
        k.apply(crd);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while k
            .run(&["get", "widgets.v1beta1.ssa.berth.dev", "w1"])
            .status
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "v1beta1 is still served"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    // Listed but not served (a deprecation step): its manager stays, as upstream's
    // field manager still converts to every version a CRD lists.
    unserved(&widgets(Some(false)));
    k.ok(&[
        "patch",
        "widgets.v1.ssa.berth.dev",
        "w1",
        "--type=merge",
        "--field-manager=labeller",
        "-p",
        r#"{"metadata":{"labels":{"tier":"a"}}}"#,
    ]);
    assert!(
        entry(&get("w1"), "beta-team", "Apply").is_some(),
        "the manager of a listed, unserved version was dropped"
    );
    // Removed from the CRD: the next write drops its manager.
    unserved(&widgets(None));
    // An update: the fields stay, their manager goes.
    k.ok(&[
        "patch",
        "widgets.v1.ssa.berth.dev",
        "w1",
        "--type=merge",
        "--field-manager=painter",
        "-p",
        r#"{"spec":{"color":"blue"}}"#,
    ]);
    let obj = get("w1");
    assert!(
        entry(&obj, "beta-team", "Apply").is_none(),
        "the v1beta1 manager is still listed: {obj}"
    );
    assert!(entry(&obj, "painter", "Update").is_some(), "{obj}");
    assert_eq!(obj["spec"]["size"], 3);
    // An apply: the dropped manager's field is no conflict.
    let (ok, out) = apply_as("v1-team", &widget("v1", "w2", 4));
    assert!(ok, "a dropped manager's field is no conflict: {out}");
    let obj = get("w2");
    assert!(entry(&obj, "beta-team", "Apply").is_none(), "{obj}");
    assert_eq!(obj["spec"]["size"], 4);
}

async fn client(server: &BerthServer) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    kube::Client::try_from(config).expect("client")
}

async fn raw_patch(client: &kube::Client, path: &str, media: &str, body: &str) -> (u16, Value) {
    let req = axum::http::Request::patch(path)
        .header("content-type", media)
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .expect("request");
    let resp = client.send(req).await.expect("send");
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const GADGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.ssa.berth.dev}
spec:
  group: ssa.berth.dev
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              ports:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    port: {type: integer}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn kube_rs_apply_merges_a_custom_resources_list_by_key() {
    let home = tempfile::tempdir().expect("temp home");
    let server = server(home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    k.apply(GADGETS);
    let client = client(&server).await;
    let resource = ApiResource {
        group: "ssa.berth.dev".into(),
        version: "v1".into(),
        api_version: "ssa.berth.dev/v1".into(),
        kind: "Gadget".into(),
        plural: "gadgets".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let config = |ports: Value| {
        json!({"apiVersion": "ssa.berth.dev/v1", "kind": "Gadget",
               "metadata": {"name": "g1"}, "spec": {"ports": ports}})
    };
    // The CRD is served a moment after it is created.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let first = api
            .patch(
                "g1",
                &PatchParams::apply("alpha"),
                &Patch::Apply(config(json!([{"name": "http", "port": 80}]))),
            )
            .await;
        match first {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("waiting for the CRD: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("apply as alpha: {e}"),
        }
    }
    api.patch(
        "g1",
        &PatchParams::apply("beta"),
        &Patch::Apply(config(json!([{"name": "metrics", "port": 9090}]))),
    )
    .await
    .expect("apply as beta");
    let g = api.get("g1").await.expect("get");
    assert_eq!(
        g.data["spec"]["ports"],
        json!([{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]),
        "the items are merged by key, not replaced"
    );
    let managed = g.metadata.managed_fields.clone().unwrap_or_default();
    let fields = |manager: &str| {
        managed
            .iter()
            .find(|e| e.manager.as_deref() == Some(manager))
            .and_then(|e| e.fields_v1.as_ref())
            .map(|f| f.0.clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        fields("beta"),
        json!({"f:spec": {"f:ports": {"k:{\"name\":\"metrics\"}": {".": {}, "f:name": {}, "f:port": {}}}}})
    );
    // beta changing alpha's port conflicts; with force it takes it over.
    let grab = config(json!([{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]));
    let err = api
        .patch(
            "g1",
            &PatchParams::apply("beta"),
            &Patch::Apply(grab.clone()),
        )
        .await
        .expect_err("conflict");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert!(
                status
                    .message
                    .contains(r#"conflict with "alpha": .spec.ports[name="http"].port"#),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 409, got {other}"),
    }
    api.patch(
        "g1",
        &PatchParams::apply("beta").force(),
        &Patch::Apply(grab),
    )
    .await
    .expect("forced apply");
    // alpha drops its item: http stays, as beta owns its port now.
    api.patch(
        "g1",
        &PatchParams::apply("alpha"),
        &Patch::Apply(config(json!([]))),
    )
    .await
    .expect("alpha applies no ports");
    let g = api.get("g1").await.expect("get");
    assert_eq!(
        g.data["spec"]["ports"],
        json!([{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}])
    );

    // Bad requests, as kube-apiserver answers them.
    let path = "/apis/ssa.berth.dev/v1/namespaces/default/gadgets/g1";
    let body = serde_json::to_string(&config(json!([]))).expect("json");
    let (code, status) = raw_patch(&client, path, "application/apply-patch+yaml", &body).await;
    assert_eq!(code, 422, "{status}");
    assert!(
        status["message"].as_str().is_some_and(
            |m| m.contains("fieldManager: Required value: is required for apply patch")
        ),
        "{status}"
    );
    let wrong_kind = body.replace("Gadget", "Widget");
    let (code, status) = raw_patch(
        &client,
        &format!("{path}?fieldManager=x"),
        "application/apply-patch+yaml",
        &wrong_kind,
    )
    .await;
    assert_eq!(code, 400, "{status}");
    let (code, status) = raw_patch(
        &client,
        &format!("{path}?force=true"),
        "application/merge-patch+json",
        "{}",
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("force: Forbidden")),
        "{status}"
    );
}

/// `/scale` as kube-apiserver serves it (`TestScaleAllResources`,
/// `TestSubresourceField`): an applied Scale conflicts with the resource's own
/// applier of `.spec.replicas` until forced, its managers are recorded with
/// `subresource: scale` and named so in conflicts, and admission sees a Scale.
#[tokio::test(flavor = "multi_thread")]
async fn the_scale_subresource_is_applied_recorded_and_admitted_as_a_scale() {
    let home = tempfile::tempdir().expect("temp home");
    let server = server(home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let client = client(&server).await;
    let (ok, out) = run(
        &k,
        &[
            "apply",
            "--server-side",
            "--field-manager=apply_test",
            "-f",
            "-",
        ],
        &deployment("d", 1, "nginx:1", ""),
    );
    assert!(ok, "{out}");
    let path = "/apis/apps/v1/namespaces/default/deployments/d/scale";
    let scale = |replicas: u32| {
        format!(
            "apiVersion: autoscaling/v1\nkind: Scale\nmetadata: {{name: d}}\nspec: {{replicas: {replicas}}}\n"
        )
    };
    let apply = "application/apply-patch+yaml";
    let (code, status) = raw_patch(
        &client,
        &format!("{path}?fieldManager=apply_scale"),
        apply,
        &scale(3),
    )
    .await;
    assert_eq!(code, 409, "{status}");
    assert_eq!(
        status["message"],
        "Apply failed with 1 conflict: conflict with \"apply_test\": .spec.replicas"
    );
    let (code, answer) = raw_patch(
        &client,
        &format!("{path}?fieldManager=apply_scale&force=true"),
        apply,
        &scale(3),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["kind"], "Scale");
    assert_eq!(answer["spec"]["replicas"], 3);
    let obj = k.json(&["get", "deployment", "d", "--show-managed-fields"]);
    let scaler = entry(&obj, "apply_scale", "Apply").expect("apply_scale's entry");
    assert_eq!(scaler["subresource"], "scale");
    assert_eq!(scaler["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    let main = entry(&obj, "apply_test", "Apply").expect("apply_test's entry");
    assert!(
        main["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
        "{main}"
    );
    // Another kind in an applied Scale, in the version-check manager's words.
    let (code, status) = raw_patch(
        &client,
        &format!("{path}?fieldManager=x"),
        apply,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 3}\n",
    )
    .await;
    assert_eq!(code, 400, "{status}");
    assert_eq!(
        status["message"],
        "invalid object type: apps/v1, Kind=Deployment"
    );

    // kubectl scale: an Update through the subresource, named so in a conflict.
    k.ok(&["scale", "deployment", "d", "--replicas=5"]);
    let obj = k.json(&["get", "deployment", "d", "--show-managed-fields"]);
    let scaled = entry(&obj, "kubectl", "Update").expect("kubectl's scale entry");
    assert_eq!(scaled["subresource"], "scale");
    let (ok, out) = run(
        &k,
        &[
            "apply",
            "--server-side",
            "--field-manager=apply_test",
            "-f",
            "-",
        ],
        &deployment("d", 1, "nginx:1", ""),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        ),
        "{out}"
    );

    // A policy on `deployments` does not see a scale; one on `deployments/scale` sees
    // the Scale, before and after.
    let policies = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: main-only}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules: [{apiGroups: [apps], apiVersions: [v1], operations: [UPDATE], resources: [deployments]}]
  validations: [{expression: "object.spec.replicas > 100", message: "the main rule fired"}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: main-only}
spec: {policyName: main-only, validationActions: [Deny]}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: scale-only}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules: [{apiGroups: [apps], apiVersions: [v1], operations: [UPDATE], resources: [deployments/scale]}]
  validations:
  - expression: "object.spec.replicas <= 6"
    messageExpression: "request.kind.group + '/' + request.kind.kind + ' ' + request.subResource + ' ' + string(oldObject.spec.replicas) + '->' + string(object.spec.replicas)"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: scale-only}
spec: {policyName: scale-only, validationActions: [Deny]}
"#;
    let (ok, out) = run(&k, &["apply", "-f", "-"], policies);
    assert!(ok, "{out}");
    let mut denied = String::new();
    for _ in 0..50 {
        k.ok(&["scale", "deployment", "d", "--replicas=6"]);
        let out = k.run(&["scale", "deployment", "d", "--replicas=7"]);
        denied = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        denied.contains("ValidatingAdmissionPolicy 'scale-only' with binding 'scale-only' denied request: autoscaling/Scale scale 6->7"),
        "{denied}"
    );
}

/// Requests kube-apiserver refuses before it reads anything, or in its field
/// manager's words; and a write that would change only managers' times writes
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn options_and_apply_bodies_are_checked_as_upstream() {
    let home = tempfile::tempdir().expect("temp home");
    let server = server(home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let client = client(&server).await;
    let cm = "/api/v1/namespaces/default/configmaps/c";
    let apply = "application/apply-patch+yaml";
    let body = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n";
    for (query, message) in [
        (
            "fieldManager=m&dryRun=Some",
            "PatchOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{\"Some\"}: supported values: \"All\"",
        ),
        (
            "fieldManager=m&fieldValidation=Loud",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldValidation: Unsupported value: \"Loud\": supported values: \"\", \"Ignore\", \"Strict\", \"Warn\"",
        ),
    ] {
        let (code, status) = raw_patch(&client, &format!("{cm}?{query}"), apply, body).await;
        assert_eq!(code, 422, "{status}");
        assert_eq!(status["message"], message);
    }
    // A non-printable character, at its byte position.
    let (code, status) = raw_patch(
        &client,
        &format!("{cm}?fieldManager=%C3%A9%E2%80%8B"),
        apply,
        body,
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("invalid character U+200B (at position 2)")),
        "{status}"
    );
    let (code, status) = raw_patch(
        &client,
        &format!("{cm}?fieldManager=m"),
        apply,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: c}\n",
    )
    .await;
    assert_eq!(
        (code, status["message"].clone()),
        (400, json!("invalid object type: /v1, Kind=Secret"))
    );
    let (code, status) = raw_patch(
        &client,
        &format!("{cm}?fieldManager=m"),
        apply,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, managedFields: [{manager: x}]}\n",
    )
    .await;
    assert_eq!(
        (code, status["message"].clone()),
        (400, json!("metadata.managedFields must be nil"))
    );
    let (code, status) = raw_patch(
        &client,
        &format!("{cm}?fieldManager=m"),
        apply,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, uid: 0b5c4a53-9a8e-4f6c-9d2e-000000000000}\n",
    )
    .await;
    assert_eq!(code, 409, "{status}");
    assert!(
        status["message"].as_str().is_some_and(|m| m.contains(
            "uid mismatch: the provided object specified uid 0b5c4a53-9a8e-4f6c-9d2e-000000000000, and no existing object was found"
        )),
        "{status}"
    );
    let (code, status) = raw_patch(
        &client,
        &format!("{cm}?fieldManager=m"),
        apply,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: other}\n",
    )
    .await;
    // Created first: the namespace of an apply that creates is checked at create.
    assert_eq!(code, 400, "{status}");

    // Managed fields a client sends are validated (ValidateManagedFields).
    k.ok(&["create", "configmap", "m", "--from-literal=a=b"]);
    let long = "x".repeat(129);
    let (code, status) = raw_patch(
        &client,
        "/api/v1/namespaces/default/configmaps/m",
        "application/merge-patch+json",
        &json!({"metadata": {"managedFields": [{"manager": long, "operation": "Update",
            "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}]}})
        .to_string(),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        status["message"].as_str().is_some_and(|m| m.contains(
            "metadata.managedFields[0].manager: Too long: may not be more than 128 bytes"
        )),
        "{status}"
    );

    // The same LimitRange (which the server fills with defaults no controller
    // touches) applied twice: the second writes nothing.
    let range = "apiVersion: v1\nkind: LimitRange\nmetadata: {name: l, namespace: default}\nspec:\n  limits: [{type: Container, max: {cpu: '1'}}]\n";
    let args = ["apply", "--server-side", "--field-manager=m2", "-f", "-"];
    let (ok, out) = run(&k, &args, range);
    assert!(ok, "{out}");
    let before = k.json(&["get", "limitrange", "l"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (ok, out) = run(&k, &args, range);
    assert!(ok, "{out}");
    let after = k.json(&["get", "limitrange", "l"]);
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
}

/// `TestClearManagedFieldsWithUpdateEmptyList`: an update carrying `managedFields: []`
/// clears them, and updates do not track an object without them until an apply.
#[test]
fn cleared_managed_fields_stay_cleared_until_an_apply() {
    let home = tempfile::tempdir().expect("temp home");
    let server = server(home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    k.ok(&["create", "configmap", "c", "--from-literal=a=b"]);
    let managed = |k: &Kubectl| {
        k.json(&["get", "configmap", "c", "--show-managed-fields"])["metadata"]["managedFields"]
            .clone()
    };
    assert!(managed(&k).as_array().is_some_and(|l| !l.is_empty()));
    k.ok(&[
        "patch",
        "configmap",
        "c",
        "--type=merge",
        "-p",
        r#"{"metadata":{"managedFields":[]}}"#,
    ]);
    assert_eq!(managed(&k), Value::Null);
    k.ok(&["label", "configmap", "c", "later=yes"]);
    assert_eq!(
        managed(&k),
        Value::Null,
        "an update does not start tracking"
    );
    let (ok, out) = run(
        &k,
        &["apply", "--server-side", "--field-manager=m", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: default}\ndata: {a: b}\n",
    );
    assert!(ok, "{out}");
    let list = managed(&k);
    let managers: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["manager"].as_str())
        .collect();
    // Apply entries first, as upstream sorts them.
    assert_eq!(managers, ["m", "before-first-apply"], "{list}");
}
