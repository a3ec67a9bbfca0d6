//! Aggregated discovery (`apidiscovery.k8s.io/v2`) against a real berth-server: the raw
//! HTTP exchange (document, ETag, 304, a CRD appearing), kube-rs's
//! `Discovery::run_aggregated`, and the real kubectl fetching `/api` and `/apis` once
//! each instead of every group-version.

use axum::http::{Request, StatusCode, header};
use berth_testkit::BerthServer;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const V2BETA1: &str = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

fn server(dir: &std::path::Path) -> BerthServer {
    BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir)
}

async fn client(server: &BerthServer) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    kube::Client::try_from(config).expect("client")
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{name} missing in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }
}

async fn get(client: &kube::Client, path: &str, headers: &[(header::HeaderName, &str)]) -> Reply {
    let mut req = Request::get(path);
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    let resp = client
        .send(req.body(kube::client::Body::empty()).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

fn group<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    doc["items"]
        .as_array()?
        .iter()
        .find(|g| g["metadata"]["name"].as_str().unwrap_or_default() == name)
}

fn resource<'a>(group: &'a Value, version: &str, name: &str) -> Option<&'a Value> {
    group["versions"]
        .as_array()?
        .iter()
        .find(|v| v["version"] == version)?["resources"]
        .as_array()?
        .iter()
        .find(|r| r["resource"] == name)
}

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                      "shortNames": ["wd"], "categories": ["all"]},
            "versions": [
                {"name": "v1beta1", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}},
                {"name": "v1", "served": true, "storage": true,
                 "subresources": {"status": {}},
                 "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}
            ]
        }
    }))
    .expect("CRD")
}

/// The aggregated `/apis` document once it lists both versions of `example.com` (CRDs
/// are served a moment after they are created).
async fn apis_with_widgets(client: &kube::Client) -> Reply {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let reply = get(client, "/apis", &[(header::ACCEPT, V2)]).await;
        // Both versions: the server registers a CRD's versions one at a time (and
        // re-registers them on each CRD update), so a group can be seen half-made.
        let doc = reply.json();
        let versions = group(&doc, "example.com")
            .and_then(|g| g["versions"].as_array().map(Vec::len))
            .unwrap_or(0);
        // And the v1 resource itself (a re-registration can leave it out briefly).
        let widgets = group(&doc, "example.com")
            .and_then(|g| resource(g, "v1", "widgets"))
            .is_some();
        if versions == 2 && widgets {
            return reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "example.com never appeared in aggregated /apis"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn raw_aggregated_documents_etags_and_crds() {
    let home = tempfile::tempdir().expect("temp dir");
    let server = server(home.path());
    let client = client(&server).await;

    // /api: the core group alone, named "".
    let core = get(&client, "/api", &[(header::ACCEPT, V2)]).await;
    assert_eq!(core.status, StatusCode::OK);
    assert_eq!(core.header(header::CONTENT_TYPE), V2);
    assert_eq!(core.header(header::VARY), "Accept");
    let doc = core.json();
    assert_eq!(doc["kind"], "APIGroupDiscoveryList");
    assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2");
    assert_eq!(doc["items"].as_array().map(Vec::len), Some(1), "{doc}");
    let core_group = group(&doc, "").expect("core group");
    let pods = resource(core_group, "v1", "pods").expect("pods");
    assert_eq!(pods["scope"], "Namespaced");
    assert_eq!(pods["responseKind"]["kind"], "Pod");
    let subs: Vec<&str> = pods["subresources"]
        .as_array()
        .expect("pod subresources")
        .iter()
        .filter_map(|s| s["subresource"].as_str())
        .collect();
    for sub in ["status", "log", "exec", "eviction", "binding"] {
        assert!(subs.contains(&sub), "pods/{sub} in {subs:?}");
    }

    // ETag and 304.
    let tag = core.header(header::ETAG).to_owned();
    assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
    let again = get(
        &client,
        "/api",
        &[(header::ACCEPT, V2), (header::IF_NONE_MATCH, &tag)],
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header(header::ETAG), tag);

    // v2beta1, and a multi-type Accept with q-values as client-go writes them.
    let beta = get(&client, "/api", &[(header::ACCEPT, V2BETA1)]).await;
    assert_eq!(beta.header(header::CONTENT_TYPE), V2BETA1);
    assert_eq!(beta.json()["apiVersion"], "apidiscovery.k8s.io/v2beta1");
    let mixed = format!("{V2BETA1};q=0.8,{V2},application/json;q=0.5");
    let picked = get(&client, "/apis", &[(header::ACCEPT, &mixed)]).await;
    assert_eq!(picked.header(header::CONTENT_TYPE), V2, "the higher q wins");

    // Without the aggregated type: the legacy documents, unchanged.
    let legacy = get(&client, "/apis", &[(header::ACCEPT, "application/json")]).await;
    assert_eq!(legacy.json()["kind"], "APIGroupList");
    let legacy_core = get(&client, "/api", &[]).await;
    assert_eq!(legacy_core.json()["kind"], "APIVersions");

    // /apis: named groups; deployments/scale answers autoscaling/v1 Scale.
    let apis = get(&client, "/apis", &[(header::ACCEPT, V2)]).await;
    let doc = apis.json();
    assert!(group(&doc, "").is_none(), "core is only in /api");
    let deployments =
        resource(group(&doc, "apps").expect("apps"), "v1", "deployments").expect("deployments");
    let scale = deployments["subresources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["subresource"] == "scale"))
        .expect("deployments/scale");
    assert_eq!(
        scale["responseKind"],
        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
    );
    let before = apis.header(header::ETAG).to_owned();

    // A CRD: its group appears, preferred (storage-independent, Kubernetes-ordered)
    // version first, and the old ETag no longer matches.
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &widget_crd())
        .await
        .expect("create CRD");
    let with = apis_with_widgets(&client).await;
    let doc = with.json();
    let widgets_group = group(&doc, "example.com").expect("example.com");
    let versions: Vec<&str> = widgets_group["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    assert_eq!(versions, ["v1", "v1beta1"]);
    let widgets = resource(widgets_group, "v1", "widgets").expect("widgets");
    assert_eq!(widgets["singularResource"], "widget");
    assert_eq!(widgets["shortNames"], json!(["wd"]));
    assert_eq!(widgets["categories"], json!(["all"]));
    assert_eq!(widgets["responseKind"]["kind"], "Widget");
    assert_eq!(widgets["subresources"][0]["subresource"], "status");
    assert_ne!(with.header(header::ETAG), before);
    let stale = get(
        &client,
        "/apis",
        &[(header::ACCEPT, V2), (header::IF_NONE_MATCH, &before)],
    )
    .await;
    assert_eq!(
        stale.status,
        StatusCode::OK,
        "a changed document is sent again"
    );
    // The legacy group agrees on the preferred version.
    let legacy_group = get(&client, "/apis/example.com", &[]).await.json();
    assert_eq!(legacy_group["preferredVersion"]["version"], "v1");
}

#[tokio::test]
async fn kube_rs_run_aggregated_finds_builtins_and_crds() {
    let home = tempfile::tempdir().expect("temp dir");
    let server = server(home.path());
    let client = client(&server).await;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &widget_crd())
        .await
        .expect("create CRD");
    apis_with_widgets(&client).await;

    let discovery = kube::discovery::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .expect("aggregated discovery");
    let find = |group: &str, kind: &str| {
        discovery
            .get(group)
            .and_then(|g| g.recommended_kind(kind))
            .unwrap_or_else(|| panic!("{group:?} {kind} not discovered"))
    };
    let (pods, caps) = find("", "Pod");
    assert_eq!(pods.plural, "pods");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(
        caps.subresources
            .iter()
            .any(|(r, _)| r.plural == "pods/log" || r.plural == "log")
    );
    let (deployments, _) = find("apps", "Deployment");
    assert_eq!(deployments.api_version, "apps/v1");
    let (widgets, caps) = find("example.com", "Widget");
    assert_eq!(widgets.api_version, "example.com/v1", "preferred version");
    assert_eq!(widgets.plural, "widgets");
    assert!(caps.supports_operation(kube::discovery::verbs::LIST));
    let (nodes, caps) = find("", "Node");
    assert_eq!(nodes.plural, "nodes");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
}

#[test]
fn kubectl_fetches_api_and_apis_once() {
    let home = tempfile::tempdir().expect("temp dir");
    let server = server(home.path());
    let Some(k) = berth_testkit::Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    // A fresh cache: HOME is the test's own, nothing in ~/.kube/cache yet.
    assert!(!home.path().join(".kube/cache").exists());
    let out = k.run(&["api-resources", "-v=6"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    for line in [
        "pods ",
        "deployments ",
        "customresourcedefinitions",
        "leases ",
    ] {
        assert!(stdout.contains(line), "{line} missing from\n{stdout}");
    }
    // kubectl logs each request as `"Response" verb="GET" url="https://…/api?timeout=32s"
    // status="200 OK"`; with aggregated discovery that is /api and /apis once each,
    // and no /api/v1 or /apis/<group>/<version> document.
    let urls: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("verb=\"GET\""))
        .filter_map(|l| l.split("url=\"").nth(1)?.split('"').next())
        .map(|u| u.split("://").nth(1).unwrap_or(u))
        .map(|u| u.find('/').map_or(u, |i| &u[i..]))
        .map(|u| u.split('?').next().unwrap_or(u))
        .collect();
    assert_eq!(
        urls.iter().filter(|u| **u == "/api").count(),
        1,
        "one GET /api in {urls:?}\n{stderr}"
    );
    assert_eq!(
        urls.iter().filter(|u| **u == "/apis").count(),
        1,
        "one GET /apis in {urls:?}"
    );
    assert!(
        urls.iter()
            .all(|u| *u == "/api" || *u == "/apis" || u.starts_with("/openapi")),
        "no per-group-version discovery: {urls:?}"
    );

    // Legacy discovery is still there for whoever asks for plain JSON.
    let raw: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/apis"])).expect("json");
    assert_eq!(raw["kind"], "APIGroupList");
    assert!(
        raw["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["name"] == "apps")
    );
    let core: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/api"])).expect("json");
    assert_eq!(core["kind"], "APIVersions");
}
