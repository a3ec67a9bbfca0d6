//! JSON as kube-apiserver writes it, over HTTP against a real berth-server: objects,
//! lists, watch events and Status errors start `{"kind":…,"apiVersion":…,"metadata":`
//! (Go struct order), a created Service has `status.loadBalancer: {}`, and DELETE
//! answers with the object or a `Status` per resource as upstream's registries do.

use axum::http::{Method, Request, StatusCode};
use berth_testkit::BerthServer;
use serde_json::{Value, json};

async fn client(server: &BerthServer) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// One request; the status and the body as text.
async fn call(
    client: &kube::Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("content-type", "application/json");
    let body = match body {
        Some(v) => kube::client::Body::from(serde_json::to_vec(&v).expect("encode")),
        None => kube::client::Body::empty(),
    };
    let resp = client
        .send(req.body(body).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn position(body: &str, needle: &str) -> usize {
    body.find(needle)
        .unwrap_or_else(|| panic!("{needle} not in {body}"))
}

#[tokio::test]
async fn responses_are_in_upstream_field_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir.path());
    let c = client(&server).await;
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"b": "1", "a": "2"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}});
    let (s, created) = call(&c, Method::POST, pods, Some(pod)).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert!(
        created.starts_with(
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"default","uid":""#
        ),
        "{created}"
    );
    let (s, got) = call(&c, Method::GET, &format!("{pods}/p"), None).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert!(got.starts_with(r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"default","uid":""#), "{got}");
    assert!(
        position(&got, r#""uid":"#) < position(&got, r#""resourceVersion":"#),
        "{got}"
    );
    assert!(
        position(&got, r#""resourceVersion":"#) < position(&got, r#""creationTimestamp":"#),
        "{got}"
    );
    assert!(
        position(&got, r#""spec":"#) < position(&got, r#""status":"#),
        "{got}"
    );

    let (s, list) = call(&c, Method::GET, pods, None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert!(
        list.starts_with(r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"#),
        "{list}"
    );
    assert!(
        list.contains(r#""items":[{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","#),
        "{list}"
    );
    let (s, page) = call(&c, Method::GET, &format!("{pods}?limit=1"), None).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(
        page.starts_with(r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"#),
        "{page}"
    );

    let (s, missing) = call(&c, Method::GET, &format!("{pods}/nope"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{missing}");
    assert!(
        missing.starts_with(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"nope\" not found","reason":"NotFound","details":"#
        ),
        "{missing}"
    );
    assert!(missing.ends_with(r#""code":404}"#), "{missing}");

    let rv = parse(&list)["metadata"]["resourceVersion"]
        .as_str()
        .expect("list resourceVersion")
        .to_owned();
    let cms = "/api/v1/namespaces/default/configmaps";
    let cm = json!({"metadata": {"name": "w"}, "data": {"k": "v"}});
    let (s, body) = call(&c, Method::POST, cms, Some(cm)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, events) = call(
        &c,
        Method::GET,
        &format!("{cms}?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{events}");
    assert!(
        events.starts_with(
            r#"{"type":"ADDED","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"w","namespace":"default","uid":""#
        ),
        "{events}"
    );
}

#[tokio::test]
async fn services_have_a_load_balancer_status_and_deletes_answer_as_upstream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir.path());
    let c = client(&server).await;
    let svcs = "/api/v1/namespaces/default/services";
    let svc = json!({"metadata": {"name": "s"}, "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}});
    let (s, created) = call(&c, Method::POST, svcs, Some(svc)).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(
        parse(&created)["status"],
        json!({"loadBalancer": {}}),
        "{created}"
    );
    let (_, got) = call(&c, Method::GET, &format!("{svcs}/s"), None).await;
    assert_eq!(parse(&got)["status"]["loadBalancer"], json!({}), "{got}");

    // services: ReturnDeletedObject — the Service itself.
    let (s, deleted) = call(&c, Method::DELETE, &format!("{svcs}/s"), None).await;
    assert_eq!(s, StatusCode::OK, "{deleted}");
    assert!(
        deleted.starts_with(r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"s","#),
        "{deleted}"
    );

    // configmaps: the generic store's Status Success with details.
    let cms = "/api/v1/namespaces/default/configmaps";
    let (s, body) = call(
        &c,
        Method::POST,
        cms,
        Some(json!({"metadata": {"name": "c"}})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let uid = parse(&body)["metadata"]["uid"].clone();
    let (s, deleted) = call(&c, Method::DELETE, &format!("{cms}/c"), None).await;
    assert_eq!(s, StatusCode::OK, "{deleted}");
    assert!(
        deleted.starts_with(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","details":"#
        ),
        "{deleted}"
    );
    let d = parse(&deleted);
    assert_eq!(d["details"]["kind"], "configmaps", "{deleted}");
    assert_eq!(d["details"]["uid"], uid, "{deleted}");

    // A Deployment reads back with `status: {}`; its delete is a Status too.
    let deploys = "/apis/apps/v1/namespaces/default/deployments";
    let deploy = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "d"}},
        "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
    let (s, created) = call(&c, Method::POST, deploys, Some(deploy)).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert!(parse(&created)["status"].is_object(), "{created}");
    let (s, deleted) = call(&c, Method::DELETE, &format!("{deploys}/d"), None).await;
    assert_eq!(s, StatusCode::OK, "{deleted}");
    assert_eq!(parse(&deleted)["kind"], "Status", "{deleted}");
}
