//! A CRD's conversion webhook, with the real kubectl against a berth-server, as
//! Kubernetes' conformance tests `CustomResourceConversionWebhook` run it: an HTTPS
//! converter started here (its own CA, given as `caBundle`) turns v1's
//! `spec.hostPort: "host:port"` into v2's `spec.host` and `spec.port` and back.
//! A custom resource written in one version is read in the other (get, list, watch,
//! patch), a list of objects stored in both versions reads whole in either, only the
//! labels and annotations a webhook sets survive from its metadata, a failing
//! webhook's message reaches the client, and the CRD's conversion settings are
//! defaulted and validated as upstream's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use berth_testkit::{BerthServer, Kubectl};
use serde_json::{Value, json};

mod common;

/// The ConversionReviews the converter received.
type Seen = Arc<Mutex<Vec<Value>>>;

/// One object to `desired`: v1's `hostPort` split into v2's `host` and `port`, or
/// joined back.
fn convert_one(obj: &Value, desired: &str) -> Result<Value, String> {
    let mut out = obj.clone();
    if obj["apiVersion"] == desired {
        return Err(format!(
            "conversion from a version to itself should not call the webhook: {desired}"
        ));
    }
    let spec = out["spec"].as_object_mut().ok_or("no spec")?;
    if desired.ends_with("/v2") {
        let host_port = spec
            .remove("hostPort")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let Some((host, port)) = host_port.split_once(':') else {
            return Err("invalid hostPort value".into());
        };
        spec.insert("host".into(), json!(host));
        spec.insert("port".into(), json!(port));
    } else {
        let host = spec.remove("host").unwrap_or(json!(""));
        let port = spec.remove("port").unwrap_or(json!(""));
        spec.insert(
            "hostPort".into(),
            json!(format!(
                "{}:{}",
                host.as_str().unwrap_or_default(),
                port.as_str().unwrap_or_default()
            )),
        );
    }
    out["apiVersion"] = json!(desired);
    // Metadata other than labels and annotations is the apiserver's: this change of
    // the generation must not survive, the label must.
    out["metadata"]["generation"] = json!(99);
    out["metadata"]["labels"]["converted"] = json!("true");
    Ok(out)
}

/// The converter: `/crdconvert` converts, `/fail` refuses, `/short` answers with no
/// objects.
async fn review(
    Path(mode): Path<String>,
    State(seen): State<Seen>,
    Json(review): Json<Value>,
) -> Json<Value> {
    seen.lock().expect("seen").push(review.clone());
    let request = &review["request"];
    let uid = request["uid"].clone();
    let desired = request["desiredAPIVersion"].as_str().unwrap_or_default();
    let failure =
        |message: &str| json!({"uid": uid, "result": {"status": "Failure", "message": message}});
    let response = match mode.as_str() {
        "fail" => failure("refusing to convert"),
        "short" => json!({"uid": uid, "result": {"status": "Success"}, "convertedObjects": []}),
        _ => {
            let converted: Result<Vec<Value>, String> = request["objects"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| convert_one(o, desired))
                .collect();
            match converted {
                Ok(objects) => json!({"uid": uid, "result": {"status": "Success"},
                    "convertedObjects": objects}),
                Err(e) => failure(&e),
            }
        }
    };
    Json(
        json!({"apiVersion": review["apiVersion"], "kind": "ConversionReview", "response": response}),
    )
}

struct Converter {
    seen: Seen,
    server: common::HttpsServer,
}

impl Converter {
    fn start() -> Self {
        let seen: Seen = Arc::default();
        let app = Router::new()
            .route("/{mode}", post(review))
            .with_state(seen.clone());
        let server = common::HttpsServer::start(app, &[]);
        Self { seen, server }
    }

    fn reviews(&self) -> Vec<Value> {
        self.seen.lock().expect("seen").clone()
    }
}

fn crd(storage: &str, conversion: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: e2etestcrds.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names: {{plural: e2etestcrds, singular: e2etestcrd, kind: E2eTestCrd, listKind: E2eTestCrdList}}
  versions:
  - name: v1
    served: true
    storage: {v1}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              hostPort: {{type: string}}
  - name: v2
    served: true
    storage: {v2}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              host: {{type: string}}
              port: {{type: string}}
{conversion}"#,
        v1 = storage == "v1",
        v2 = storage == "v2",
    )
}

fn webhook_conversion(converter: &Converter, path: &str) -> String {
    format!(
        "  conversion:\n    strategy: Webhook\n    webhook:\n      conversionReviewVersions: [v1, v1beta1]\n      clientConfig:\n        url: {}\n        caBundle: {}\n",
        converter.server.url(path),
        converter.server.ca_bundle()
    )
}

/// Retries `f` until it holds (a CRD's change reaches the apiserver's registry a
/// moment after it is written).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn get(k: &Kubectl, resource: &str, name: &str) -> Result<Value, String> {
    let out = k.run(&["get", resource, name, "-o", "json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

const V1: &str = "e2etestcrds.v1.stable.example.com";
const V2: &str = "e2etestcrds.v2.stable.example.com";

#[test]
fn a_conversion_webhook_converts_custom_resources_between_versions() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let converter = Converter::start();

    // Validation: the Webhook strategy needs a client configuration and review
    // versions; None has neither. The strategy defaults to None.
    let bad = k.run_with_stdin(
        &["apply", "-f", "-"],
        &crd("v1", "  conversion: {strategy: Webhook}\n"),
    );
    let said = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(!bad.status.success(), "{said}");
    assert!(
        said.contains(
            "spec.conversion.webhookClientConfig: Required value: required when strategy is set to Webhook"
        ) && said.contains("spec.conversion.conversionReviewVersions: Required value"),
        "{said}"
    );
    let mixed = format!(
        "  conversion:\n    strategy: None\n    webhook:\n      conversionReviewVersions: [v1]\n      clientConfig: {{url: {}}}\n",
        converter.server.url("crdconvert")
    );
    let bad = k.run_with_stdin(&["apply", "-f", "-"], &crd("v1", &mixed));
    let said = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(
        said.contains("spec.conversion.webhookClientConfig: Forbidden: should not be set when strategy is not set to Webhook"),
        "{said}"
    );
    k.apply(&crd("v1", ""));
    let shown = k.json(&["get", "crd", "e2etestcrds.stable.example.com"]);
    assert_eq!(shown["spec"]["conversion"], json!({"strategy": "None"}));

    // The webhook strategy, v1 stored.
    k.apply(&crd("v1", &webhook_conversion(&converter, "crdconvert")));
    eventually("the CRD's webhook in use", || {
        let out = k.run_with_stdin(
            &["apply", "-f", "-"],
            "apiVersion: stable.example.com/v2\nkind: E2eTestCrd\nmetadata: {name: stub}\nspec: {host: a, port: '1'}\n",
        );
        let stored = get(&k, V1, "stub");
        match stored {
            Ok(stored) if out.status.success() && stored["spec"]["hostPort"] == "a:1" => Ok(()),
            other => {
                // Written before the webhook was in use: stored unconverted.
                k.ok(&["delete", V1, "stub", "--ignore-not-found"]);
                Err(format!("{other:?}"))
            }
        }
    });
    k.ok(&["delete", V2, "stub"]);

    // Written in v1, read in v2: the webhook was asked for v2.
    k.apply(
        "apiVersion: stable.example.com/v1\nkind: E2eTestCrd\nmetadata: {name: cr-instance-1}\nspec: {hostPort: 'localhost:8080'}\n",
    );
    let before = converter.reviews().len();
    let v2 = get(&k, V2, "cr-instance-1").expect("get through v2");
    assert_eq!(v2["apiVersion"], "stable.example.com/v2");
    assert_eq!(v2["spec"], json!({"host": "localhost", "port": "8080"}));
    assert_eq!(v2["metadata"]["labels"]["converted"], "true", "{v2}");
    assert_eq!(v2["metadata"]["generation"], 1, "{v2}");
    let reviews = converter.reviews();
    let asked = reviews[before..]
        .iter()
        .find(|r| r["request"]["desiredAPIVersion"] == "stable.example.com/v2")
        .expect("a review for v2");
    assert_eq!(asked["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(asked["kind"], "ConversionReview");
    assert!(
        asked["request"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    assert_eq!(
        asked["request"]["objects"][0]["apiVersion"],
        "stable.example.com/v1"
    );
    // Read in the stored version: no call.
    let before = converter.reviews().len();
    let v1 = get(&k, V1, "cr-instance-1").expect("get through v1");
    assert_eq!(v1["spec"], json!({"hostPort": "localhost:8080"}));
    assert_eq!(
        converter.reviews().len(),
        before,
        "no review for the stored version"
    );

    // A patch through v2 of an object stored in v1, watched through v2 from before it:
    // the MODIFIED event in v2's shape.
    let before_patch = v1["metadata"]["resourceVersion"]
        .as_str()
        .expect("a resourceVersion")
        .to_owned();
    k.ok(&[
        "patch",
        V2,
        "cr-instance-1",
        "--type=merge",
        "-p",
        r#"{"spec":{"port":"9090"}}"#,
    ]);
    let v1 = get(&k, V1, "cr-instance-1").expect("get through v1");
    assert_eq!(v1["spec"], json!({"hostPort": "localhost:9090"}));
    let watched = k.ok(&[
        "get",
        "--raw",
        &format!(
            "/apis/stable.example.com/v2/namespaces/default/e2etestcrds?watch=1&resourceVersion={before_patch}&timeoutSeconds=1"
        ),
    ]);
    let modified: Value = watched
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["type"] == "MODIFIED")
        .unwrap_or_else(|| panic!("no MODIFIED event: {watched}"));
    assert_eq!(
        modified["object"]["apiVersion"], "stable.example.com/v2",
        "{modified}"
    );
    assert_eq!(
        modified["object"]["spec"],
        json!({"host": "localhost", "port": "9090"}),
        "{modified}"
    );

    // A non-homogeneous list: storage moves to v2, a second object is written in v1
    // (stored in v2); lists in either version read both, converted.
    k.apply(&crd("v2", &webhook_conversion(&converter, "crdconvert")));
    eventually("the object written through v1 stored in v2", || {
        k.apply(
            "apiVersion: stable.example.com/v1\nkind: E2eTestCrd\nmetadata: {name: cr-instance-2}\nspec: {hostPort: 'example.com:443'}\n",
        );
        let last = converter.reviews();
        let stored_in_v2 = last.iter().rev().take(5).any(|r| {
            r["request"]["desiredAPIVersion"] == "stable.example.com/v2"
                && r["request"]["objects"][0]["metadata"]["name"] == "cr-instance-2"
        });
        if stored_in_v2 {
            Ok(())
        } else {
            k.ok(&["delete", V1, "cr-instance-2", "--ignore-not-found"]);
            Err("cr-instance-2 was not converted to v2 on the way in".into())
        }
    });
    let list = k.json(&["get", V1, "-o", "json"]);
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{list}");
    for item in items {
        assert_eq!(item["apiVersion"], "stable.example.com/v1", "{item}");
        assert!(item["spec"]["hostPort"].is_string(), "{item}");
        assert!(item["spec"].get("host").is_none(), "{item}");
    }
    let list = k.json(&["get", V2, "-o", "json"]);
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{list}");
    for item in items {
        assert_eq!(item["apiVersion"], "stable.example.com/v2", "{item}");
        assert!(item["spec"]["host"].is_string(), "{item}");
        assert!(item["spec"].get("hostPort").is_none(), "{item}");
    }

    // A watch through v1 from the start: every object in v1's shape.
    let watched = k.ok(&[
        "get",
        "--raw",
        "/apis/stable.example.com/v1/namespaces/default/e2etestcrds?watch=1&resourceVersion=0&timeoutSeconds=2",
    ]);
    let events: Vec<Value> = watched
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a watch event"))
        .collect();
    assert_eq!(events.len(), 2, "{watched}");
    for e in &events {
        assert_eq!(e["type"], "ADDED", "{e}");
        assert_eq!(e["object"]["apiVersion"], "stable.example.com/v1", "{e}");
        assert!(e["object"]["spec"]["hostPort"].is_string(), "{e}");
    }

    // Server-side apply through v1 of an object stored in v2: the applied fields
    // merge into the v1 view, then convert in.
    let applied = "apiVersion: stable.example.com/v1\nkind: E2eTestCrd\nmetadata: {name: cr-instance-2}\nspec: {hostPort: 'example.com:8443'}\n";
    let out = k.run_with_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        applied,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2 = get(&k, V2, "cr-instance-2").expect("get through v2");
    assert_eq!(v2["spec"], json!({"host": "example.com", "port": "8443"}));

    // A webhook that refuses: its message reaches the client, named as upstream
    // names the conversion.
    k.apply(&crd("v2", &webhook_conversion(&converter, "fail")));
    let said = eventually("the refusing webhook in use", || {
        // cr-instance-1 is stored in v1.
        let out = k.run(&["get", V2, "cr-instance-1", "-o", "json"]);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Err("still converted".into())
        } else {
            Ok(said)
        }
    });
    assert!(
        said.contains(
            "conversion webhook for stable.example.com/v1, Kind=E2eTestCrd failed: refusing to convert"
        ),
        "{said}"
    );
    // A watch whose conversion fails gets an ERROR event with the message, and ends.
    let started = Instant::now();
    let watched = k.ok(&[
        "get",
        "--raw",
        "/apis/stable.example.com/v2/namespaces/default/e2etestcrds?watch=1&resourceVersion=0&timeoutSeconds=20",
    ]);
    let last: Value = serde_json::from_str(watched.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {watched}"));
    assert_eq!(last["type"], "ERROR", "{watched}");
    assert_eq!(last["object"]["code"], 500, "{watched}");
    assert!(
        last["object"]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("failed: refusing to convert")),
        "{watched}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the watch ended"
    );

    // An answer with too few objects.
    k.apply(&crd("v2", &webhook_conversion(&converter, "short")));
    let said = eventually("the short webhook in use", || {
        let out = k.run(&["get", V1, "-o", "json"]);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        if said.contains("returned 0 objects") {
            Ok(said)
        } else {
            Err(said)
        }
    });
    assert!(
        // Only cr-instance-2 (stored in v2) is sent.
        said.contains("conversion webhook for stable.example.com/v2, Kind=E2eTestCrd returned 0 objects, expected 1"),
        "{said}"
    );
    // Reads in the stored version need no webhook.
    let v2 = get(&k, V2, "cr-instance-2").expect("get through v2");
    assert_eq!(v2["spec"], json!({"host": "example.com", "port": "8443"}));
}
