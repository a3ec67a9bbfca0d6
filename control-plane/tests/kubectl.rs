//! The real kubectl (pinned, from `cargo xtask setup`) against a berth-server started by
//! the test: the workflow a Kubernetes user has, checked against what Kubernetes does.

use std::process::{Command, Stdio};

use berth_testkit::BerthServer;

/// A berth-server of the test's own and the real kubectl pointed at it.
struct Kubectl {
    k: berth_testkit::Kubectl,
    server: BerthServer,
    home: tempfile::TempDir,
}

impl std::ops::Deref for Kubectl {
    type Target = berth_testkit::Kubectl;
    fn deref(&self) -> &Self::Target {
        &self.k
    }
}

impl Kubectl {
    fn start() -> Option<Self> {
        let home = tempfile::tempdir().expect("temp home");
        let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
        let k = berth_testkit::Kubectl::find(&server.kubeconfig(), home.path())?;
        Some(Self { k, server, home })
    }
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports: [{containerPort: 80}]
        env: [{name: A, value: "1"}, {name: B, value: "2"}]
      - name: side
        image: busybox:1.36
---
apiVersion: v1
kind: Service
metadata: {name: web, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
"#;

#[test]
fn apply_get_patch_scale_label_and_delete() {
    let Some(k) = Kubectl::start() else { return };
    let out = k.apply(DEPLOYMENT);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    assert!(out.contains("service/web created"), "{out}");

    // Re-apply with env B removed, containers reordered, replicas changed: kubectl's
    // three-way strategic merge patch, applied by the server, gives the new manifest.
    let changed = DEPLOYMENT
        .replace(", {name: B, value: \"2\"}", "")
        .replace("replicas: 2", "replicas: 3");
    let reordered = changed.replace(
        "      - name: web\n        image: nginx:1.27\n        ports: [{containerPort: 80}]\n        env: [{name: A, value: \"1\"}]\n      - name: side\n        image: busybox:1.36\n",
        "      - name: side\n        image: busybox:1.36\n      - name: web\n        image: nginx:1.27\n        ports: [{containerPort: 80}]\n        env: [{name: A, value: \"1\"}]\n",
    );
    assert_ne!(reordered, changed, "the manifest was reordered");
    assert!(
        k.apply(&reordered)
            .contains("deployment.apps/web configured")
    );
    let d = k.json(&["get", "deployment", "web"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["generation"], 2);
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["side", "web"], "list order follows the manifest");
    assert_eq!(
        containers[1]["env"],
        serde_json::json!([{"name": "A", "value": "1"}])
    );
    // Server-side defaults, as Kubernetes sets them.
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(containers[1]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        containers[1]["terminationMessagePath"],
        "/dev/termination-log"
    );

    // get in every output format.
    let wide = k.ok(&["get", "deploy", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS") && wide.contains("side,web"),
        "{wide}"
    );
    let svc = k.ok(&["get", "svc", "web"]);
    assert!(
        svc.contains("ClusterIP") && svc.contains("80/TCP") && svc.contains("10.96."),
        "{svc}"
    );
    assert_eq!(
        k.ok(&["get", "deploy", "-o", "name"]).trim(),
        "deployment.apps/web"
    );
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );
    let yaml = k.ok(&["get", "svc", "web", "-o", "yaml"]);
    assert!(yaml.contains("sessionAffinity: None"), "{yaml}");
    let labelled = k.ok(&["get", "svc", "-l", "app=web", "-o", "name"]);
    assert_eq!(labelled.trim(), "service/web");
    let by_field = k.ok(&[
        "get",
        "svc",
        "-A",
        "--field-selector",
        "metadata.name=kubernetes",
        "-o",
        "name",
    ]);
    assert_eq!(by_field.trim(), "service/kubernetes");
    let all_ns = k.ok(&["get", "ns"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(all_ns.contains(ns), "{all_ns}");
    }
    assert!(
        k.ok(&["describe", "deploy", "web"])
            .contains("RollingUpdateStrategy:  25% max unavailable, 25% max surge")
    );

    // The three patch types, scale, label, annotate.
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.28"}]}}}}"#,
    ]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":"fe"}}}"#,
    ]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ]);
    k.ok(&["scale", "deploy", "web", "--replicas", "5"]);
    k.ok(&["label", "deploy", "web", "team=a"]);
    k.ok(&["annotate", "deploy", "web", "note=hello"]);
    let d = k.json(&["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][1]["image"],
        "nginx:1.28"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.36"
    );
    assert_eq!(d["metadata"]["labels"]["tier"], "fe");
    assert_eq!(d["metadata"]["labels"]["team"], "a");
    assert_eq!(d["metadata"]["annotations"]["note"], "hello");

    // edit through a scripted EDITOR.
    let editor = k.home.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/note: hello/note: edited/' \"$1\"\n",
    )
    .expect("editor");
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = k
        .cmd(&["edit", "deploy", "web"])
        .env("EDITOR", &editor)
        .output()
        .expect("edit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.note}"
        ]),
        "edited"
    );

    // ConfigMaps and Secrets from literals (kubectl sends these as protobuf).
    k.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
        "--from-literal=level=3",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=hunter2",
    ]);
    assert_eq!(
        k.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.mode}"]),
        "fast"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "secret",
            "creds",
            "-o",
            "jsonpath={.type} {.data.password}"
        ]),
        "Opaque aHVudGVyMg=="
    );

    // Errors read like Kubernetes'.
    let err = k.fails(&["get", "deploy", "nope"]);
    assert!(err.contains("deployments.apps \"nope\" not found"), "{err}");
    let err = k.fails(&["create", "configmap", "Bad_Name"]);
    assert!(
        err.contains("is invalid") && err.contains("metadata.name"),
        "{err}"
    );
    let err = k.fails(&["create", "configmap", "x", "-n", "missing"]);
    assert!(err.contains("namespaces \"missing\" not found"), "{err}");

    // delete: a Service, a ConfigMap with --grace-period, and --cascade.
    assert!(
        k.ok(&["delete", "svc", "web"])
            .contains("service \"web\" deleted")
    );
    k.ok(&["delete", "cm", "settings", "--grace-period=0"]);
    k.ok(&["delete", "deploy", "web", "--cascade=background"]);
    assert!(
        k.ok(&["get", "deploy,svc,cm", "-o", "name"])
            .lines()
            .all(|l| !l.contains("web") && !l.contains("settings"))
    );
}

#[test]
fn discovery_explain_and_custom_resources() {
    let Some(k) = Kubectl::start() else { return };
    let resources = k.ok(&["api-resources"]);
    for line in [
        "pods ",
        "deployments ",
        "customresourcedefinitions",
        "leases ",
    ] {
        assert!(resources.contains(line), "{line} missing from\n{resources}");
    }
    assert!(
        resources.contains("po ") && resources.contains("deploy "),
        "short names"
    );
    let versions = k.ok(&["api-versions"]);
    for v in [
        "apps/v1",
        "batch/v1",
        "v1",
        "coordination.k8s.io/v1",
        "apiextensions.k8s.io/v1",
    ] {
        assert!(
            versions.lines().any(|l| l == v),
            "{v} missing from\n{versions}"
        );
    }
    let explain = k.ok(&["explain", "pod.spec.containers.ports"]);
    assert!(explain.contains("containerPort"), "{explain}");

    k.apply(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, default: blue}
"#,
    );
    // The CRD becomes Established and its resources are served.
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=20s",
    ]);
    let mut served = false;
    for _ in 0..50 {
        if k.run(&["get", "widgets"]).status.success() {
            served = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(served, "widgets are served");
    k.apply("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n");
    let w = k.json(&["get", "wd", "w1"]);
    assert_eq!(w["spec"]["color"], "blue", "schema default applied");
    let table = k.ok(&["get", "widgets"]);
    assert!(table.contains("SIZE") && table.contains("w1"), "{table}");
    let mut child = k
        .cmd(&["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            b"apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 0}\n",
        )
        .expect("write");
    let out = child.wait_with_output().expect("apply");
    assert!(!out.status.success(), "size 0 violates minimum 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.size"), "{stderr}");
    k.ok(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"size":7}}"#,
    ]);
    assert_eq!(
        k.ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.size}"]),
        "7"
    );
    k.ok(&["delete", "widget", "w1"]);
    // As Go decodes them, a null label or data value is the empty string (Helm renders
    // an empty value as null), in built-in kinds and custom resources alike.
    let out = k.run_with_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: nulls\n  labels: {team: null}\n\
         data: {a: null, b: x}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata:\n  \
         name: w3\n  labels: {team: }\nspec: {size: 1}\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cm = k.json(&["get", "configmap", "nulls"]);
    assert_eq!(cm["metadata"]["labels"]["team"], "", "{cm}");
    assert_eq!(cm["data"], serde_json::json!({"a": "", "b": "x"}), "{cm}");
    let w = k.json(&["get", "widget", "w3"]);
    assert_eq!(
        w["metadata"]["labels"],
        serde_json::json!({"team": ""}),
        "{w}"
    );
}

/// A custom resource served in two versions (the CRD's `None` conversion strategy):
/// stored in the storage version, read and written through either, each read naming
/// the version asked for, as kube-apiserver converts it.
#[test]
fn custom_resources_of_several_versions_read_and_write_through_either() {
    let Some(k) = Kubectl::start() else { return };
    k.apply(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gizmos.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gizmos, singular: gizmo, kind: Gizmo}
  versions:
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}, color: {type: string}}}
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}, color: {type: string}}}
"#,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !k
        .run(&["get", "gizmos.v1beta1.example.com"])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "gizmos are not served"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    k.apply(
        "apiVersion: example.com/v1beta1\nkind: Gizmo\nmetadata: {name: g1}\nspec: {size: 3}\n",
    );
    let v1 = k.json(&["get", "gizmos.v1.example.com", "g1"]);
    assert_eq!(v1["apiVersion"], "example.com/v1", "{v1}");
    assert_eq!(v1["spec"]["size"], 3);
    let beta = k.json(&["get", "gizmos.v1beta1.example.com", "g1"]);
    assert_eq!(beta["apiVersion"], "example.com/v1beta1", "{beta}");
    let list = k.json(&["get", "gizmos.v1beta1.example.com"]);
    assert_eq!(
        list["items"][0]["apiVersion"], "example.com/v1beta1",
        "{list}"
    );
    let list = k.json(&["get", "gizmos.v1.example.com"]);
    assert_eq!(list["items"][0]["apiVersion"], "example.com/v1", "{list}");
    // Written through the other version: a patch, and a read-modify-write replace.
    k.ok(&[
        "patch",
        "gizmos.v1.example.com",
        "g1",
        "--type=merge",
        "-p",
        r#"{"spec":{"color":"red"}}"#,
    ]);
    let mut obj = k.json(&["get", "gizmos.v1beta1.example.com", "g1"]);
    assert_eq!(obj["spec"]["color"], "red");
    obj["spec"]["size"] = serde_json::json!(5);
    let out = k.run_with_stdin(&["replace", "-f", "-"], &obj.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v1 = k.json(&["get", "gizmos.v1.example.com", "g1"]);
    assert_eq!(v1["apiVersion"], "example.com/v1");
    assert_eq!(v1["spec"]["size"], 5);
    assert_eq!(v1["spec"]["color"], "red");
    // Stored in the storage version whichever version wrote it: an update that
    // changes nothing, through either version, writes nothing.
    for version in ["v1", "v1beta1"] {
        let before = k.json(&["get", &format!("gizmos.{version}.example.com"), "g1"]);
        k.ok(&[
            "patch",
            &format!("gizmos.{version}.example.com"),
            "g1",
            "--type=merge",
            "-p",
            r#"{"spec":{"size":5}}"#,
        ]);
        let after = k.json(&["get", "gizmos.v1.example.com", "g1"]);
        assert_eq!(
            after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
            "a no-op patch through {version} wrote: {before} -> {after}"
        );
        assert_eq!(
            after["metadata"]["generation"],
            before["metadata"]["generation"]
        );
    }
}

#[test]
fn watch_prints_changes() {
    let Some(k) = Kubectl::start() else { return };
    k.ok(&["create", "configmap", "first"]);
    let mut watcher = k
        .cmd(&[
            "get",
            "configmaps",
            "-w",
            "--request-timeout=4s",
            "-o",
            "name",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        watcher.stdout.take().expect("stdout"),
    ));
    // The list comes first; the watch starts from its resourceVersion, so what is
    // made after it is printed must come as a change.
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "configmap/first", "the initial list");
    k.ok(&["create", "configmap", "second"]);
    // Until `--request-timeout` ends the watch.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l == "configmap/second"),
        "the change: {rest:?}"
    );
    watcher.wait().expect("kubectl get -w exits");
}

#[test]
fn unauthenticated_requests_get_401_and_tokens_authenticate() {
    let Some(k) = Kubectl::start() else { return };
    let server = k.server.url();
    let ca = k.server.ca();
    let base = |extra: &[&str]| {
        let mut args = vec!["--server", &server];
        args.extend_from_slice(extra);
        let ca_arg = format!("--certificate-authority={}", ca.display());
        let mut c = Command::new(&k.bin);
        c.args(&args)
            .arg(ca_arg)
            .env("HOME", k.home.path())
            .env("KUBECONFIG", k.home.path().join("no-kubeconfig"));
        c.output().expect("kubectl")
    };
    // (kubectl prompts for a user name without any credentials; the Python client test
    // checks a request without credentials.)
    let unknown = base(&["--token", "wrong", "get", "pods"]);
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("must be logged in"), "{err}");
    let with_token = base(&["--token", "berth-test-token", "get", "ns", "-o", "name"]);
    assert!(
        with_token.status.success(),
        "{}",
        String::from_utf8_lossy(&with_token.stderr)
    );
    // The admin kubeconfig's client certificate is accepted.
    assert!(
        k.ok(&["get", "--raw", "/metrics"])
            .contains("apiserver_request_total")
    );
}

#[test]
fn restart_keeps_objects_and_resource_versions() {
    let Some(mut k) = Kubectl::start() else {
        return;
    };
    k.ok(&["create", "configmap", "keep", "--from-literal=a=1"]);
    let before = k.json(&["get", "cm", "keep"]);
    k.server.restart();
    let after = k.json(&["get", "cm", "keep"]);
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    assert_eq!(before["metadata"]["uid"], after["metadata"]["uid"]);
    assert_eq!(after["data"]["a"], "1");
    // A watch from the old resourceVersion sees what changed after it.
    let rv = before["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    k.ok(&["create", "configmap", "later"]);
    let raw = k.ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1"
        ),
    ]);
    assert!(
        raw.contains("\"ADDED\"") && raw.contains("\"later\""),
        "{raw}"
    );
    assert!(
        !raw.contains("\"keep\""),
        "nothing before the resourceVersion: {raw}"
    );
}

#[test]
fn service_account_tokens_from_kubectl_create_token_authenticate() {
    use base64::Engine;
    let Some(k) = Kubectl::start() else { return };
    let server = k.server.url();
    let ca = format!("--certificate-authority={}", k.server.ca().display());
    let as_token = |token: &str, args: &[&str]| {
        Command::new(&k.bin)
            .args(["--server", &server, &ca, "--token", token])
            .args(args)
            .env("HOME", k.home.path())
            .env("KUBECONFIG", k.home.path().join("no-kubeconfig"))
            .output()
            .expect("kubectl")
    };
    // The ServiceAccount controller makes `default` in every namespace.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !k
        .run(&["get", "serviceaccount", "default"])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no default ServiceAccount"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let token = k
        .ok(&["create", "token", "default", "--duration=2h"])
        .trim()
        .to_owned();
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("claims");
    assert_eq!(claims["sub"], "system:serviceaccount:default:default");
    assert_eq!(
        claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0),
        7200
    );
    // Authenticated as the account (what it may do is RBAC's: nothing yet, as in
    // Kubernetes, but every authenticated user may ask who it is).
    let ok = as_token(&token, &["auth", "whoami"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("system:serviceaccount:default:default"));
    let denied = as_token(&token, &["get", "configmaps"]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains(
        "User \"system:serviceaccount:default:default\" cannot list resource \"configmaps\""
    ));
    // A forged signature is refused.
    let mut forged = token.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    assert!(!as_token(&forged, &["auth", "whoami"]).status.success());
    // Too short a duration is refused as Kubernetes refuses it.
    let err = k.fails(&["create", "token", "default", "--duration=1m"]);
    assert!(err.contains("less than 10 minutes"), "{err}");
    // A token bound to a pod dies with the pod.
    k.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: holder}\nspec: {containers: [{name: c, image: busybox}]}\n");
    let bound = k
        .ok(&[
            "create",
            "token",
            "default",
            "--bound-object-kind=Pod",
            "--bound-object-name=holder",
        ])
        .trim()
        .to_owned();
    assert!(as_token(&bound, &["auth", "whoami"]).status.success());
    k.ok(&["delete", "pod", "holder", "--wait=true"]);
    assert!(!as_token(&bound, &["auth", "whoami"]).status.success());
    // The issuer's keys are published for OIDC discovery.
    let jwks: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/openid/v1/jwks"])).expect("jwks");
    assert_eq!(jwks["keys"][0]["crv"], "P-256");
    // Deleting the account revokes its tokens.
    k.ok(&["delete", "serviceaccount", "default"]);
    assert!(!as_token(&token, &["auth", "whoami"]).status.success());
}

#[test]
fn server_side_apply_on_the_wire_dry_run_writes_nothing_and_eviction_deletes() {
    let Some(k) = Kubectl::start() else { return };
    let manifest = k.home.path().join("ssa.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: b}\n",
    )
    .expect("manifest");
    let manifest = manifest.to_string_lossy().into_owned();

    // Server-side apply on the wire: a PATCH that creates (201); CBOR apply bodies are
    // not served: 415 with a Failure Status, as kube-apiserver without CBOR.
    let curl = |media: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(k.server.ca())
            .args([
                "-H",
                "Authorization: Bearer berth-test-token",
                "-H",
                &format!("Content-Type: {media}"),
                "-X",
                "PATCH",
                "--data-binary",
                &format!("@{manifest}"),
                "-w",
                "\n%{http_code}",
                &format!(
                    "{}/api/v1/namespaces/default/configmaps/ssa?fieldManager=curl",
                    k.server.url()
                ),
            ])
            .output()
            .expect("curl");
        let answer = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = answer.rsplit_once('\n').expect("a body and a status code");
        let value: serde_json::Value = serde_json::from_str(body).expect("JSON");
        (code.to_owned(), value)
    };
    let (code, status) = curl("application/apply-patch+cbor");
    assert_eq!(code, "415", "{status}");
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "UnsupportedMediaType", "{status}");
    assert_eq!(status["code"], 415, "{status}");
    let err = k.fails(&["get", "cm", "ssa"]);
    assert!(err.contains("not found"), "{err}");
    let (code, created) = curl("application/apply-patch+yaml");
    assert_eq!(code, "201", "{created}");
    assert_eq!(created["metadata"]["managedFields"][0]["manager"], "curl");
    assert_eq!(
        created["metadata"]["managedFields"][0]["operation"],
        "Apply"
    );
    let (code, _) = curl("application/apply-patch+yaml");
    assert_eq!(code, "200");
    // Client-side apply of the same file works too.
    k.ok(&["apply", "-f", &manifest]);
    assert_eq!(k.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]), "b");

    // dryRun=All: the answer is the object as it would be stored, and nothing is stored.
    let out = k.ok(&[
        "create",
        "configmap",
        "dry",
        "--from-literal=x=y",
        "--dry-run=server",
        "-o",
        "jsonpath={.metadata.name} {.data.x}",
    ]);
    assert_eq!(out, "dry y");
    assert!(k.fails(&["get", "cm", "dry"]).contains("not found"));
    k.ok(&["delete", "cm", "ssa", "--dry-run=server"]);
    k.ok(&["get", "cm", "ssa"]);

    // pods/eviction: an Eviction posted for an unscheduled pod deletes it.
    k.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: victim}\nspec:\n  containers: [{name: c, image: busybox:1.36}]\n",
    );
    let eviction = k.home.path().join("eviction.json");
    std::fs::write(
        &eviction,
        r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"victim","namespace":"default"}}"#,
    )
    .expect("eviction");
    k.ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/victim/eviction",
        "-f",
        &eviction.to_string_lossy(),
    ]);
    let err = k.fails(&["get", "pod", "victim"]);
    assert!(err.contains("not found"), "{err}");
}

/// A check of an object read back.
type Check = Box<dyn Fn(&serde_json::Value)>;

/// Every `kubectl create` subcommand whose typed client sends a protobuf body (and
/// reads a protobuf answer): the object is created and reads back with what kubectl set.
#[test]
fn create_subcommands_send_protobuf_for_every_kind() {
    let Some(k) = Kubectl::start() else { return };
    let cert = rcgen::generate_simple_self_signed(vec!["web.example".to_owned()])
        .expect("a self-signed certificate");
    let cert_path = k.home.path().join("tls.crt");
    let key_path = k.home.path().join("tls.key");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let (cert_arg, key_arg) = (
        format!("--cert={}", cert_path.display()),
        format!("--key={}", key_path.display()),
    );
    let cases: Vec<(Vec<&str>, &str, Check)> = vec![
        (
            vec!["service", "clusterip", "web", "--tcp=80:8080"],
            "service/web",
            Box::new(|o| {
                assert_eq!(o["spec"]["ports"][0]["port"], 80, "{o}");
                assert_eq!(o["spec"]["ports"][0]["targetPort"], 8080, "{o}");
                assert_eq!(o["spec"]["type"], "ClusterIP", "{o}");
            }),
        ),
        (
            vec!["service", "nodeport", "np", "--tcp=80:8080"],
            "service/np",
            Box::new(|o| assert_eq!(o["spec"]["type"], "NodePort", "{o}")),
        ),
        (
            vec!["service", "loadbalancer", "lb", "--tcp=443:8443"],
            "service/lb",
            Box::new(|o| assert_eq!(o["spec"]["ports"][0]["port"], 443, "{o}")),
        ),
        (
            vec![
                "service",
                "externalname",
                "ext",
                "--external-name=db.example.com",
            ],
            "service/ext",
            Box::new(|o| assert_eq!(o["spec"]["externalName"], "db.example.com", "{o}")),
        ),
        (
            vec!["job", "j", "--image=busybox:1.36", "--", "echo", "hi"],
            "job/j",
            Box::new(|o| {
                let c = &o["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(c["image"], "busybox:1.36", "{o}");
                assert_eq!(c["command"], serde_json::json!(["echo", "hi"]), "{o}");
                // Go's zero values on the wire are not in the JSON, as upstream's:
                // omitempty booleans and counters, and no manualSelector.
                for absent in ["stdin", "stdinOnce", "tty"] {
                    assert!(c.get(absent).is_none(), "{absent}: {o}");
                }
                let template = &o["spec"]["template"];
                assert!(template["metadata"].get("generation").is_none(), "{o}");
                assert!(template["spec"].get("hostNetwork").is_none(), "{o}");
                assert!(o["spec"].get("manualSelector").is_none(), "{o}");
            }),
        ),
        (
            vec![
                "cronjob",
                "cj",
                "--image=busybox:1.36",
                "--schedule=*/5 * * * *",
            ],
            "cronjob/cj",
            Box::new(|o| assert_eq!(o["spec"]["schedule"], "*/5 * * * *", "{o}")),
        ),
        (
            vec!["role", "r", "--verb=get,list", "--resource=pods"],
            "role/r",
            Box::new(|o| {
                assert_eq!(
                    o["rules"][0]["verbs"],
                    serde_json::json!(["get", "list"]),
                    "{o}"
                )
            }),
        ),
        (
            vec!["rolebinding", "rb", "--role=r", "--user=alice"],
            "rolebinding/rb",
            Box::new(|o| {
                assert_eq!(o["roleRef"]["name"], "r", "{o}");
                assert_eq!(o["subjects"][0]["name"], "alice", "{o}");
            }),
        ),
        (
            vec!["clusterrole", "cr", "--verb=get", "--resource=nodes"],
            "clusterrole/cr",
            Box::new(|o| {
                assert_eq!(
                    o["rules"][0]["resources"],
                    serde_json::json!(["nodes"]),
                    "{o}"
                )
            }),
        ),
        (
            vec![
                "clusterrolebinding",
                "crb",
                "--clusterrole=cr",
                "--user=alice",
            ],
            "clusterrolebinding/crb",
            Box::new(|o| assert_eq!(o["roleRef"]["kind"], "ClusterRole", "{o}")),
        ),
        (
            vec!["ingress", "ing", "--rule=foo.com/bar=svc1:8080"],
            "ingress/ing",
            Box::new(|o| {
                let rule = &o["spec"]["rules"][0];
                assert_eq!(rule["host"], "foo.com", "{o}");
                let backend = &rule["http"]["paths"][0]["backend"]["service"];
                assert_eq!(backend["port"]["number"], 8080, "{o}");
            }),
        ),
        (
            vec![
                "poddisruptionbudget",
                "pdb",
                "--selector=app=web",
                "--min-available=50%",
            ],
            "poddisruptionbudget/pdb",
            Box::new(|o| assert_eq!(o["spec"]["minAvailable"], "50%", "{o}")),
        ),
        (
            vec![
                "priorityclass",
                "high",
                "--value=1000",
                "--description=important",
            ],
            "priorityclass/high",
            Box::new(|o| assert_eq!(o["value"], 1000, "{o}")),
        ),
        (
            vec!["quota", "q", "--hard=cpu=1,pods=2"],
            "resourcequota/q",
            Box::new(|o| assert_eq!(o["spec"]["hard"]["pods"], "2", "{o}")),
        ),
        (
            vec!["configmap", "cm", "--from-literal=a=b"],
            "configmap/cm",
            Box::new(|o| assert_eq!(o["data"]["a"], "b", "{o}")),
        ),
        (
            vec!["secret", "generic", "s", "--from-literal=k=v"],
            "secret/s",
            Box::new(|o| assert_eq!(o["data"]["k"], "dg==", "{o}")),
        ),
        (
            vec!["secret", "tls", "tls", &cert_arg, &key_arg],
            "secret/tls",
            Box::new(|o| assert_eq!(o["type"], "kubernetes.io/tls", "{o}")),
        ),
        (
            vec![
                "secret",
                "docker-registry",
                "reg",
                "--docker-server=r.example",
                "--docker-username=u",
                "--docker-password=p",
            ],
            "secret/reg",
            Box::new(|o| assert_eq!(o["type"], "kubernetes.io/dockerconfigjson", "{o}")),
        ),
        (
            vec!["serviceaccount", "sa"],
            "serviceaccount/sa",
            Box::new(|o| assert_eq!(o["metadata"]["name"], "sa", "{o}")),
        ),
        (
            vec!["namespace", "ns1"],
            "namespace/ns1",
            Box::new(|o| assert_eq!(o["metadata"]["name"], "ns1", "{o}")),
        ),
        (
            vec![
                "deployment",
                "d",
                "--image=nginx:1.27",
                "--replicas=2",
                "--port=80",
            ],
            "deployment/d",
            Box::new(|o| {
                assert_eq!(o["spec"]["replicas"], 2, "{o}");
                let c = &o["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(c["ports"][0]["containerPort"], 80, "{o}");
            }),
        ),
    ];
    let mut compared = 0;
    for (args, object, check) in &cases {
        // -v=10: client-go logs each request body whole, binary ones as a hex dump.
        let mut create = vec!["-v=10", "create"];
        create.extend(args.iter().copied());
        let out = k.run(&create);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && stdout.contains("created"),
            "kubectl {create:?}: {stdout}{stderr}"
        );
        let o = k.json(&["get", object]);
        check(&o);
        // kubectl's own protobuf body (Go's marshaler) is the fixture: berth decodes
        // it and encodes the object back to the same bytes.
        for body in hex_dumps(&stderr)
            .into_iter()
            .filter(|b| b.starts_with(b"k8s\0"))
        {
            assert_byte_exact(&body, &create);
            // Seeds for the protobuf fuzzer (control-plane/fuzz), when asked for.
            if let Some(dir) = std::env::var_os("BERTH_PROTOBUF_SEEDS") {
                let path = std::path::Path::new(&dir).join(format!("kubectl-{compared}"));
                std::fs::write(path, &body).expect("write a seed");
            }
            compared += 1;
        }
    }
    // Every create subcommand sends protobuf (client-go logs each body twice).
    assert!(
        compared >= cases.len(),
        "only {compared} protobuf bodies captured for {} subcommands",
        cases.len()
    );
    let token = k.ok(&["create", "token", "sa"]);
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
}

/// The hex dumps (Go's `hex.Dump`: `00000000  6b 38 73 00 …  |k8s.|`) in kubectl's
/// `-v=10` log, one per body.
fn hex_dumps(log: &str) -> Vec<Vec<u8>> {
    let mut dumps = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in log.lines() {
        let line = line.trim_start();
        let is_dump = line.len() > 10
            && line.as_bytes()[..8].iter().all(u8::is_ascii_hexdigit)
            && line[8..].starts_with("  ");
        if !is_dump {
            if let Some(d) = current.take() {
                dumps.push(d);
            }
            continue;
        }
        let hex = line[10..].split('|').next().unwrap_or_default();
        let bytes = current.get_or_insert_with(Vec::new);
        for pair in hex.split_whitespace().take(16) {
            match u8::from_str_radix(pair, 16) {
                Ok(b) if pair.len() == 2 => bytes.push(b),
                _ => break,
            }
        }
    }
    dumps.extend(current);
    dumps
}

/// Asserts that berth's encoding of what it decoded from `body` is byte for byte what
/// Go's marshaler wrote: the same fields in the same order, Go's zero values for
/// non-pointer fields included (the `go-fields.txt` facts), map keys sorted.
fn assert_byte_exact(body: &[u8], what: &[&str]) {
    use berth_control_plane::apiserver::protobuf;
    let json = protobuf::decode(body).unwrap_or_else(|e| panic!("{what:?}: decode: {e:?}"));
    let ours = protobuf::encode(&json)
        .expect("a message")
        .unwrap_or_else(|e| panic!("{what:?}: encode: {e:?}"));
    if ours != body {
        let at = ours
            .iter()
            .zip(body)
            .position(|(a, b)| a != b)
            .unwrap_or(ours.len().min(body.len()));
        let around = |b: &[u8]| b[at.saturating_sub(8)..(at + 24).min(b.len())].to_vec();
        panic!(
            "{what:?}: berth re-encodes kubectl's body differently from byte {at} (kubectl {} bytes, berth {}):\nkubectl {:02x?}\nberth   {:02x?}\nas JSON: {json}",
            body.len(),
            ours.len(),
            around(body),
            around(&ours),
        );
    }
}

#[test]
fn changing_a_service_type_allocates_and_releases_node_ports() {
    let Some(k) = Kubectl::start() else { return };
    k.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let node_port =
        |k: &Kubectl| k.json(&["get", "service", "web"])["spec"]["ports"][0]["nodePort"].as_u64();
    assert_eq!(node_port(&k), None);
    // As a new user tries it: the type patched alone gets a node port.
    k.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ]);
    let port = node_port(&k).expect("a node port after the change to NodePort");
    assert!((30000..=32767).contains(&port), "{port}");
    // Another change keeps it.
    k.ok(&["label", "service", "web", "tier=front"]);
    assert_eq!(node_port(&k), Some(port));
    // Back to ClusterIP: it is gone, and free for another Service.
    k.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    assert_eq!(node_port(&k), None);
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "other",
        "--tcp=80:8080",
        &format!("--node-port={port}"),
    ]);
    assert_eq!(
        k.json(&["get", "service", "other"])["spec"]["ports"][0]["nodePort"].as_u64(),
        Some(port)
    );
}
