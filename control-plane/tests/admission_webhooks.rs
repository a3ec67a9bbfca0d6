//! Dynamic admission webhooks with the real kubectl against a berth-server: an HTTPS
//! webhook server started here (its own CA, given to the configurations as
//! `caBundle`) mutates and refuses ConfigMaps; namespace and object selectors pick
//! what it sees; a dead webhook is skipped under `failurePolicy: Ignore` and fails
//! the request under `Fail`; `timeoutSeconds` is honoured; a reinvocable webhook runs
//! again after a later one changed the object; a service reference reaches the
//! webhook through the Service's EndpointSlice; `matchConditions` (CEL) pick the
//! requests; an exec (CONNECT) is admitted with its options; the configurations get
//! upstream's defaults and validation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use berth_testkit::{BerthServer, Kubectl};
use serde_json::{Value, json};

mod common;

/// What the webhook server received: (path, AdmissionRequest).
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

struct Webhook {
    port: u16,
    seen: Seen,
    server: common::HttpsServer,
}

fn allowed(uid: &Value) -> Value {
    json!({"uid": uid, "allowed": true})
}

fn patched(uid: &Value, patch: Value, warning: Option<&str>) -> Value {
    let mut r = allowed(uid);
    r["patchType"] = json!("JSONPatch");
    r["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
    if let Some(w) = warning {
        r["warnings"] = json!([w]);
    }
    r
}

/// A JSON patch adding `key: value` to the object's labels.
fn add_label(object: &Value, key: &str, value: &str) -> Value {
    if object
        .pointer("/metadata/labels")
        .is_some_and(Value::is_object)
    {
        let escaped = key.replace('~', "~0").replace('/', "~1");
        json!([{"op": "add", "path": format!("/metadata/labels/{escaped}"), "value": value}])
    } else {
        json!([{"op": "add", "path": "/metadata/labels", "value": {key: value}}])
    }
}

/// The webhooks, by path.
async fn review(
    State(seen): State<Seen>,
    Path(hook): Path<String>,
    Json(body): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let req = body.get("request").cloned().unwrap_or(Value::Null);
    seen.lock().expect("seen").push((hook.clone(), req.clone()));
    let uid = req.get("uid").cloned().unwrap_or(Value::Null);
    let object = req.get("object").cloned().unwrap_or(Value::Null);
    let name = req.get("name").and_then(Value::as_str).unwrap_or_default();
    let response = match hook.as_str() {
        "label" => patched(
            &uid,
            add_label(&object, "webhook.berth.dev/mutated", "yes"),
            Some("mutated by the test webhook"),
        ),
        "deny" => {
            let protected =
                req.pointer("/oldObject/metadata/labels/protect") == Some(&json!("true"));
            if name.starts_with("forbidden-") {
                json!({"uid": uid, "allowed": false, "status": {
                    "message": "names starting with forbidden- are not allowed",
                    "code": 403, "reason": "Forbidden"}})
            } else if req["operation"] == "DELETE" && protected {
                json!({"uid": uid, "allowed": false, "status": {
                    "message": "protected objects cannot be deleted"}})
            } else {
                allowed(&uid)
            }
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            allowed(&uid)
        }
        "garbage" => return "this is not an AdmissionReview".into_response(),
        // Reinvocation: `first` records what it saw of `second`'s label.
        "first" => {
            let saw = object
                .pointer("/metadata/labels/second")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_owned();
            let patch = if object
                .pointer("/metadata/annotations")
                .is_some_and(Value::is_object)
            {
                json!([{"op": "add", "path": "/metadata/annotations/first-saw", "value": saw}])
            } else {
                json!([{"op": "add", "path": "/metadata/annotations", "value": {"first-saw": saw}}])
            };
            patched(&uid, patch, None)
        }
        "second" => patched(&uid, add_label(&object, "second", "done"), None),
        // On updates: an annotation the updater did not send.
        "stamp" => {
            let patch = if object
                .pointer("/metadata/annotations")
                .is_some_and(Value::is_object)
            {
                json!([{"op": "add", "path": "/metadata/annotations/webhook.berth.dev~1updated", "value": "yes"}])
            } else {
                json!([{"op": "add", "path": "/metadata/annotations", "value": {"webhook.berth.dev/updated": "yes"}}])
            };
            patched(&uid, patch, None)
        }
        "deny-all" => json!({"uid": uid, "allowed": false, "status": {
            "message": "refused by the conditional webhook", "code": 403}}),
        _ => allowed(&uid),
    };
    Json(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
    .into_response()
}

/// Starts the HTTPS webhook server on 127.0.0.1, with a certificate for that address
/// and for `hook.webhooks.svc` from a CA of its own.
fn start_webhook() -> Webhook {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/{hook}", post(review))
        .with_state(seen.clone());
    let server = common::HttpsServer::start(app, &["hook.webhooks.svc"]);
    Webhook {
        port: server.port,
        seen,
        server,
    }
}

impl Webhook {
    fn url(&self, hook: &str) -> String {
        self.server.url(hook)
    }

    fn ca_bundle(&self) -> String {
        self.server.ca_bundle()
    }

    fn requests(&self, hook: &str) -> Vec<Value> {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|(h, _)| h == hook)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn run(k: &Kubectl, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let out = match stdin {
        Some(input) => k.run_with_stdin(args, input),
        None => k.run(args),
    };
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Retries `f` until it holds (the webhook configurations reach the apiserver's watch
/// cache a moment after they are written).
fn eventually(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// ConfigMap `ns/name` as kubectl shows it with its managed fields.
fn shown_with_managed_fields(k: &Kubectl, name: &str, ns: &str) -> Value {
    let shown = k.ok(&[
        "get",
        "configmap",
        name,
        "-n",
        ns,
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    serde_json::from_str(&shown).expect("kubectl json")
}

fn configmap(name: &str, ns: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\ndata: {{k: v}}\n"
    )
}

#[test]
fn admission_webhooks_mutate_refuse_and_fail_as_configured() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let hook = start_webhook();
    k.ok(&["create", "namespace", "hooked"]);
    k.ok(&["label", "namespace", "hooked", "webhooks=on"]);
    k.ok(&["create", "namespace", "plain"]);

    // Validation, with upstream's messages.
    let bad = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {name: bad}\nwebhooks:\n- name: bad\n  clientConfig: {url: 'http://example.com/x'}\n  timeoutSeconds: 40\n";
    let (ok, out) = run(&k, &["create", "-f", "-"], Some(bad));
    assert!(!ok, "refused: {out}");
    for msg in [
        "webhooks[0].name: Invalid value: \"bad\": should be a domain with at least three segments separated by dots",
        "webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun",
        "webhooks[0].timeoutSeconds: Invalid value: 40: the timeout value must be between 1 and 30 seconds",
        "webhooks[0].clientConfig.url: Invalid value: \"http\": 'https' is the only allowed URL scheme; desired format: https://host[/path]",
        "webhooks[0].admissionReviewVersions: Required value: must specify one of v1, v1beta1",
    ] {
        assert!(out.contains(msg), "{msg}\nnot in: {out}");
    }

    // A mutating webhook labelling the ConfigMaps created in labelled namespaces.
    let mutating = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {{name: label-adder}}\nwebhooks:\n- name: label.berth.dev\n  clientConfig: {{url: '{}', caBundle: {}}}\n  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}}]\n  namespaceSelector: {{matchLabels: {{webhooks: 'on'}}}}\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
        hook.url("label"),
        hook.ca_bundle()
    );
    k.apply(&mutating);
    let cfg = k.json(&["get", "mutatingwebhookconfiguration", "label-adder"]);
    let w = &cfg["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Fail", "{cfg}");
    assert_eq!(w["matchPolicy"], "Equivalent", "{cfg}");
    assert_eq!(w["timeoutSeconds"], 10, "{cfg}");
    assert_eq!(w["reinvocationPolicy"], "Never", "{cfg}");
    assert_eq!(w["objectSelector"], json!({}), "{cfg}");
    assert_eq!(w["rules"][0]["scope"], "*", "{cfg}");
    let table = k.ok(&["get", "mutatingwebhookconfigurations"]);
    assert!(
        table.contains("WEBHOOKS") && table.contains("label-adder"),
        "{table}"
    );

    let mut n = 0;
    eventually("the mutating webhook labels new ConfigMaps", || {
        n += 1;
        let name = format!("first-{n}");
        let (ok, out) = run(
            &k,
            &["create", "-f", "-"],
            Some(&configmap(&name, "hooked", "")),
        );
        if !ok {
            return Err(out);
        }
        let cm = k.json(&["get", "configmap", &name, "-n", "hooked"]);
        if cm["metadata"]["labels"]["webhook.berth.dev/mutated"] != "yes" {
            return Err(format!("not labelled: {cm}"));
        }
        // The webhook's warning reaches kubectl.
        assert!(
            out.contains("Warning: mutated by the test webhook"),
            "{out}"
        );
        // What the webhook added is owned by no one (managed fields are recorded
        // before mutating admission, as kube-apiserver does); the data is kubectl's.
        let shown = shown_with_managed_fields(&k, &name, "hooked");
        let managed = shown["metadata"]["managedFields"].to_string();
        assert!(
            managed.contains("f:data") && !managed.contains("webhook.berth.dev/mutated"),
            "{managed}"
        );
        Ok(())
    });
    let seen = hook.requests("label");
    let req = seen.last().expect("the webhook was called");
    assert_eq!(req["operation"], "CREATE", "{req}");
    assert_eq!(
        req["kind"],
        json!({"group": "", "version": "v1", "kind": "ConfigMap"})
    );
    assert_eq!(
        req["resource"],
        json!({"group": "", "version": "v1", "resource": "configmaps"})
    );
    assert_eq!(req["requestKind"], req["kind"], "{req}");
    assert_eq!(req["namespace"], "hooked", "{req}");
    assert_eq!(req["name"], format!("first-{n}"), "{req}");
    assert_eq!(req["dryRun"], false, "{req}");
    assert_eq!(req["options"]["kind"], "CreateOptions", "{req}");
    assert_eq!(req["object"]["data"]["k"], "v", "{req}");
    assert!(req["oldObject"].is_null(), "{req}");
    assert!(
        req["userInfo"]["username"]
            .as_str()
            .is_some_and(|u| !u.is_empty()),
        "{req}"
    );
    // A dry run is sent as one, and shows the webhook's change.
    let (ok, out) = run(
        &k,
        &[
            "create",
            "configmap",
            "dry",
            "-n",
            "hooked",
            "--dry-run=server",
            "-o",
            "json",
        ],
        None,
    );
    assert!(ok, "{out}");
    assert!(out.contains("webhook.berth.dev/mutated"), "{out}");
    let seen = hook.requests("label");
    assert_eq!(seen.last().map(|r| r["dryRun"].clone()), Some(json!(true)));
    assert!(
        k.run(&["get", "configmap", "dry", "-n", "hooked"])
            .status
            .code()
            != Some(0)
    );
    // On UPDATE too, managed fields are of the change before mutating admission: the
    // patcher owns the key it added, the annotation the webhook stamped is no one's.
    let stamper = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {{name: update-stamper}}\nwebhooks:\n- name: stamp.berth.dev\n  clientConfig: {{url: '{}', caBundle: {}}}\n  rules: [{{operations: [UPDATE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}}]\n  namespaceSelector: {{matchLabels: {{webhooks: 'on'}}}}\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
        hook.url("stamp"),
        hook.ca_bundle()
    );
    k.apply(&stamper);
    let mut m = 0;
    eventually("the update webhook stamps patched ConfigMaps", || {
        m += 1;
        let key = format!("extra{m}");
        let (ok, out) = run(
            &k,
            &[
                "patch",
                "configmap",
                &format!("first-{n}"),
                "-n",
                "hooked",
                "--type",
                "merge",
                "-p",
                &format!("{{\"data\":{{\"{key}\":\"1\"}}}}"),
                "--field-manager",
                "patcher",
            ],
            None,
        );
        if !ok {
            return Err(out);
        }
        let shown = shown_with_managed_fields(&k, &format!("first-{n}"), "hooked");
        if shown["metadata"]["annotations"]["webhook.berth.dev/updated"] != "yes" {
            return Err(format!("not stamped: {shown}"));
        }
        let entries = shown["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let patcher = entries
            .iter()
            .find(|e| e["manager"] == "patcher")
            .map(|e| e["fieldsV1"].to_string())
            .unwrap_or_default();
        assert!(patcher.contains(&format!("f:{key}")), "{entries:?}");
        let all = shown["metadata"]["managedFields"].to_string();
        assert!(!all.contains("webhook.berth.dev/updated"), "{all}");
        Ok(())
    });
    assert_eq!(
        hook.requests("stamp")
            .last()
            .map(|r| r["operation"].clone()),
        Some(json!("UPDATE"))
    );
    k.ok(&["delete", "mutatingwebhookconfiguration", "update-stamper"]);

    // The namespace selector: another namespace is left alone.
    let (ok, out) = run(
        &k,
        &["create", "-f", "-"],
        Some(&configmap("other", "plain", "")),
    );
    assert!(ok, "{out}");
    let cm = k.json(&["get", "configmap", "other", "-n", "plain"]);
    assert!(
        cm["metadata"]["labels"]
            .get("webhook.berth.dev/mutated")
            .is_none(),
        "{cm}"
    );

    // A validating webhook on guarded ConfigMaps (the object selector).
    let validating = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {{name: denier}}\nwebhooks:\n- name: deny.berth.dev\n  clientConfig: {{url: '{}', caBundle: {}}}\n  rules: [{{operations: [CREATE, UPDATE, DELETE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}}]\n  objectSelector: {{matchExpressions: [{{key: guarded, operator: Exists}}]}}\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
        hook.url("deny"),
        hook.ca_bundle()
    );
    k.apply(&validating);
    let mut n = 0;
    eventually("the validating webhook refuses", || {
        n += 1;
        let (ok, out) = run(
            &k,
            &["create", "-f", "-"],
            Some(&configmap(
                &format!("forbidden-a{n}"),
                "plain",
                "guarded: 'yes'",
            )),
        );
        if ok {
            return Err(format!("created: {out}"));
        }
        let want = "admission webhook \"deny.berth.dev\" denied the request: names starting with forbidden- are not allowed";
        if !out.contains(want) {
            return Err(out);
        }
        assert!(out.contains("Forbidden"), "the webhook's reason: {out}");
        Ok(())
    });
    // Not guarded: the webhook is not asked.
    let (ok, out) = run(
        &k,
        &["create", "-f", "-"],
        Some(&configmap("forbidden-b", "plain", "")),
    );
    assert!(ok, "{out}");
    // An update that makes it guarded is: the new object matches.
    let (ok, out) = run(
        &k,
        &[
            "label",
            "configmap",
            "forbidden-b",
            "-n",
            "plain",
            "guarded=yes",
        ],
        None,
    );
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("admission webhook \"deny.berth.dev\" denied the request"),
        "{out}"
    );
    let update = hook
        .requests("deny")
        .into_iter()
        .rfind(|r| r["operation"] == "UPDATE")
        .expect("an UPDATE review");
    assert_eq!(
        update["oldObject"]["metadata"]["name"], "forbidden-b",
        "{update}"
    );
    assert_eq!(update["options"]["kind"], "PatchOptions", "{update}");
    // Deletes: the webhook sees the object being deleted as oldObject.
    let (ok, out) = run(
        &k,
        &["create", "-f", "-"],
        Some(&configmap(
            "keep",
            "plain",
            "guarded: 'yes', protect: 'true'",
        )),
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&k, &["delete", "configmap", "keep", "-n", "plain"], None);
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains(
            "admission webhook \"deny.berth.dev\" denied the request: protected objects cannot be deleted"
        ),
        "{out}"
    );
    k.ok(&["get", "configmap", "keep", "-n", "plain"]);

    // A dead webhook: skipped under Ignore…
    let dead = |policy: &str| {
        format!(
            "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {{name: dead}}\nwebhooks:\n- name: dead.berth.dev\n  clientConfig: {{url: 'https://127.0.0.1:1/', caBundle: {}}}\n  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [secrets]}}]\n  failurePolicy: {policy}\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
            hook.ca_bundle()
        )
    };
    k.apply(&dead("Ignore"));
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = run(
        &k,
        &["create", "secret", "generic", "s1", "-n", "plain"],
        None,
    );
    assert!(ok, "a dead webhook under Ignore is skipped: {out}");
    // …and fails the request under Fail.
    k.apply(&dead("Fail"));
    let mut n = 1;
    eventually("a dead webhook under Fail refuses", || {
        n += 1;
        let name = format!("s{n}");
        let (ok, out) = run(
            &k,
            &["create", "secret", "generic", &name, "-n", "plain"],
            None,
        );
        if ok {
            return Err(format!("created: {out}"));
        }
        let want = "Internal error occurred: failed calling webhook \"dead.berth.dev\": failed to call webhook: Post \"https://127.0.0.1:1/?timeout=10s\"";
        if !out.contains(want) {
            return Err(out);
        }
        Ok(())
    });
    k.ok(&["delete", "validatingwebhookconfiguration", "dead"]);

    // Every call counted in kube-apiserver's webhook metrics.
    for (series, at_least) in [
        (
            r#"apiserver_admission_webhook_request_total{code="200",name="label.berth.dev",operation="CREATE",rejected="false",type="admit"}"#,
            1.0,
        ),
        (
            r#"apiserver_admission_webhook_admission_duration_seconds_count{name="label.berth.dev",operation="CREATE",rejected="false",type="admit"}"#,
            1.0,
        ),
        (
            r#"apiserver_admission_webhook_rejection_count{error_type="no_error",name="deny.berth.dev",operation="CREATE",rejection_code="403",type="validating"}"#,
            1.0,
        ),
        (
            // A refusal without a code is a 400, counted under that code.
            r#"apiserver_admission_webhook_request_total{code="400",name="deny.berth.dev",operation="DELETE",rejected="true",type="validating"}"#,
            1.0,
        ),
        (
            r#"apiserver_admission_webhook_rejection_count{error_type="calling_webhook_error",name="dead.berth.dev",operation="CREATE",rejection_code="400",type="validating"}"#,
            1.0,
        ),
        (
            r#"apiserver_admission_webhook_fail_open_count{name="dead.berth.dev",type="validating"}"#,
            1.0,
        ),
    ] {
        let value = k.metric(series);
        assert!(value.is_some_and(|v| v >= at_least), "{series}: {value:?}");
    }

    // A webhook answering garbage under Fail, and one slower than its timeout.
    let failing = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {{name: failing}}\nwebhooks:\n- name: garbage.berth.dev\n  clientConfig: {{url: '{}', caBundle: {}}}\n  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [serviceaccounts]}}]\n  objectSelector: {{matchLabels: {{case: garbage}}}}\n  sideEffects: None\n  admissionReviewVersions: [v1]\n- name: slow.berth.dev\n  clientConfig: {{url: '{}', caBundle: {}}}\n  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [serviceaccounts]}}]\n  objectSelector: {{matchLabels: {{case: slow}}}}\n  timeoutSeconds: 1\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
        hook.url("garbage"),
        hook.ca_bundle(),
        hook.url("slow"),
        hook.ca_bundle()
    );
    k.apply(&failing);
    let sa = |name: &str, case: &str| {
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: plain, labels: {{case: {case}}}}}\n"
        )
    };
    let mut n = 0;
    eventually("a webhook answering garbage fails the request", || {
        n += 1;
        let (ok, out) = run(
            &k,
            &["create", "-f", "-"],
            Some(&sa(&format!("g{n}"), "garbage")),
        );
        if ok {
            return Err(format!("created: {out}"));
        }
        if !out.contains("failed calling webhook \"garbage.berth.dev\": failed to call webhook") {
            return Err(out);
        }
        Ok(())
    });
    let started = Instant::now();
    let (ok, out) = run(&k, &["create", "-f", "-"], Some(&sa("late", "slow")));
    let took = started.elapsed();
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("failed calling webhook \"slow.berth.dev\"")
            && out.contains("?timeout=1s\": context deadline exceeded"),
        "{out}"
    );
    assert!(
        took < Duration::from_secs(4),
        "timed out after 1s, not {took:?}"
    );
    k.ok(&["delete", "validatingwebhookconfiguration", "failing"]);

    // Reinvocation: `first` (IfNeeded) runs again after `second` changed the object.
    k.ok(&["create", "namespace", "reinvoke"]);
    k.ok(&["label", "namespace", "reinvoke", "reinvoke=on"]);
    let reinvoke = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {{name: reinvoke}}\nwebhooks:\n- name: first.berth.dev\n  clientConfig: {{url: '{}', caBundle: {}}}\n  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}}]\n  namespaceSelector: {{matchLabels: {{reinvoke: 'on'}}}}\n  reinvocationPolicy: IfNeeded\n  sideEffects: None\n  admissionReviewVersions: [v1]\n- name: second.berth.dev\n  clientConfig: {{url: '{}', caBundle: {}}}\n  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}}]\n  namespaceSelector: {{matchLabels: {{reinvoke: 'on'}}}}\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
        hook.url("first"),
        hook.ca_bundle(),
        hook.url("second"),
        hook.ca_bundle()
    );
    k.apply(&reinvoke);
    let mut n = 0;
    eventually(
        "a reinvocable webhook sees the later webhook's change",
        || {
            n += 1;
            let name = format!("again-{n}");
            let (ok, out) = run(
                &k,
                &["create", "-f", "-"],
                Some(&configmap(&name, "reinvoke", "")),
            );
            if !ok {
                return Err(out);
            }
            let cm = k.json(&["get", "configmap", &name, "-n", "reinvoke"]);
            if cm["metadata"]["labels"]["second"] != "done"
                || cm["metadata"]["annotations"]["first-saw"] != "done"
            {
                return Err(format!("{cm}"));
            }
            Ok(())
        },
    );

    // A service reference: the Service's EndpointSlice leads to the webhook server,
    // whose certificate names hook.webhooks.svc.
    k.ok(&["create", "namespace", "webhooks"]);
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: hook, namespace: webhooks}}\nspec:\n  ports: [{{name: https, port: 443, targetPort: {port}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: hook-1\n  namespace: webhooks\n  labels: {{kubernetes.io/service-name: hook}}\naddressType: IPv4\nports: [{{name: https, port: {port}, protocol: TCP}}]\nendpoints: [{{addresses: ['127.0.0.1'], conditions: {{ready: true}}}}]\n",
        port = hook.port
    );
    k.apply(&service);
    let by_service = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {{name: by-service}}\nwebhooks:\n- name: service.berth.dev\n  clientConfig:\n    service: {{namespace: webhooks, name: hook, path: /deny}}\n    caBundle: {}\n  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [podtemplates]}}]\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
        hook.ca_bundle()
    );
    k.apply(&by_service);
    let cfg = k.json(&["get", "validatingwebhookconfiguration", "by-service"]);
    assert_eq!(
        cfg["webhooks"][0]["clientConfig"]["service"]["port"], 443,
        "{cfg}"
    );
    let template = |name: &str| {
        format!(
            "apiVersion: v1\nkind: PodTemplate\nmetadata: {{name: {name}, namespace: plain}}\ntemplate:\n  spec:\n    containers: [{{name: c, image: busybox}}]\n"
        )
    };
    let mut n = 0;
    eventually("the service-referenced webhook refuses", || {
        n += 1;
        let (ok, out) = run(
            &k,
            &["create", "-f", "-"],
            Some(&template(&format!("forbidden-t{n}"))),
        );
        if ok {
            return Err(format!("created: {out}"));
        }
        if !out.contains("admission webhook \"service.berth.dev\" denied the request") {
            return Err(out);
        }
        Ok(())
    });
    let (ok, out) = run(&k, &["create", "-f", "-"], Some(&template("fine")));
    assert!(ok, "{out}");

    // matchConditions (CEL): compiled when written, evaluated per request.
    let broken = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {name: broken}\nwebhooks:\n- name: broken.berth.dev\n  clientConfig: {url: 'https://127.0.0.1:1/'}\n  matchConditions: [{name: bad, expression: 'object.metadata.name =='}]\n  sideEffects: None\n  admissionReviewVersions: [v1]\n";
    let (ok, out) = run(&k, &["create", "-f", "-"], Some(broken));
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("webhooks[0].matchConditions[0].expression: Invalid value: \"object.metadata.name ==\": compilation failed"),
        "{out}"
    );
    let conditional = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {{name: conditional}}\nwebhooks:\n- name: red.berth.dev\n  clientConfig: {{url: '{url}', caBundle: {ca}}}\n  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}}]\n  matchConditions:\n  - {{name: red, expression: \"has(object.metadata.labels) && 'color' in object.metadata.labels && object.metadata.labels.color == 'red'\"}}\n  - {{name: not-admin, expression: \"request.userInfo.username != 'nobody'\"}}\n  sideEffects: None\n  admissionReviewVersions: [v1]\n- name: erring.berth.dev\n  clientConfig: {{url: '{url}', caBundle: {ca}}}\n  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}}]\n  objectSelector: {{matchLabels: {{case: erring}}}}\n  matchConditions: [{{name: missing, expression: \"object.metadata.labels.missing == 'x'\"}}]\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
        url = hook.url("deny-all"),
        ca = hook.ca_bundle()
    );
    k.apply(&conditional);
    let mut n = 0;
    eventually("matchConditions select the red ConfigMaps", || {
        n += 1;
        let (ok, out) = run(
            &k,
            &["create", "-f", "-"],
            Some(&configmap(&format!("red-{n}"), "plain", "color: red")),
        );
        if ok {
            return Err(format!("created: {out}"));
        }
        if !out.contains("admission webhook \"red.berth.dev\" denied the request: refused by the conditional webhook") {
            return Err(out);
        }
        Ok(())
    });
    let (ok, out) = run(
        &k,
        &["create", "-f", "-"],
        Some(&configmap("blue", "plain", "color: blue")),
    );
    assert!(ok, "a false condition skips the webhook: {out}");
    let (ok, out) = run(
        &k,
        &["create", "-f", "-"],
        Some(&configmap("erring", "plain", "case: erring")),
    );
    assert!(!ok, "an evaluation error under Fail refuses: {out}");
    assert!(
        out.contains("configmaps \"erring\" is forbidden: expression 'object.metadata.labels.missing == 'x'' resulted in error: no such key: missing"),
        "{out}"
    );
    k.ok(&["delete", "validatingwebhookconfiguration", "conditional"]);

    // CONNECT: an exec is admitted with its PodExecOptions, before any connection.
    let no_exec = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {{name: no-exec}}\nwebhooks:\n- name: exec.berth.dev\n  clientConfig: {{url: '{}', caBundle: {}}}\n  rules: [{{operations: [CONNECT], apiGroups: [''], apiVersions: [v1], resources: [pods/exec]}}]\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
        hook.url("deny-all"),
        hook.ca_bundle()
    );
    k.apply(&no_exec);
    k.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: target, namespace: plain}\nspec:\n  containers: [{name: c, image: busybox}]\n");
    eventually("an exec is refused by the CONNECT webhook", || {
        let (ok, out) = run(
            &k,
            &["exec", "target", "-n", "plain", "--", "ls", "/"],
            None,
        );
        if ok {
            return Err(format!("exec ran: {out}"));
        }
        if !out.contains("admission webhook \"exec.berth.dev\" denied the request: refused by the conditional webhook") {
            return Err(out);
        }
        Ok(())
    });
    let connect = hook
        .requests("deny-all")
        .into_iter()
        .rfind(|r| r["operation"] == "CONNECT")
        .expect("a CONNECT review");
    assert_eq!(connect["kind"]["kind"], "PodExecOptions", "{connect}");
    assert_eq!(connect["subResource"], "exec", "{connect}");
    assert_eq!(
        connect["object"]["command"],
        json!(["ls", "/"]),
        "{connect}"
    );
    assert_eq!(connect["name"], "target", "{connect}");
    k.ok(&["delete", "validatingwebhookconfiguration", "no-exec"]);

    // The configurations themselves are never sent to webhooks; deleting them
    // turns the webhooks off.
    for (kind, name) in [
        ("validatingwebhookconfiguration", "denier"),
        ("validatingwebhookconfiguration", "by-service"),
        ("mutatingwebhookconfiguration", "label-adder"),
        ("mutatingwebhookconfiguration", "reinvoke"),
    ] {
        k.ok(&["delete", kind, name]);
    }
    eventually("no webhook after the configurations are gone", || {
        let (ok, out) = run(&k, &["delete", "configmap", "keep", "-n", "plain"], None);
        if ok { Ok(()) } else { Err(out) }
    });
}
