//! API aggregation against a real berth-server with the real kubectl: a tiny HTTPS
//! extension apiserver started here (its own self-signed CA; client certificates
//! required and checked against the `requestheader-client-ca-file` berth publishes in
//! `kube-system/extension-apiserver-authentication`, as a `k8s.io/apiserver` server
//! does) serves `test.berth.dev/v1` behind a selectorless Service and hand-written
//! Endpoints on 127.0.0.1. Registering an APIService with its caBundle makes it
//! Available; kubectl then reads it through berth (discovery, lists, a watch), the
//! user arrives in `X-Remote-User`/`X-Remote-Group`, authorization happens in berth
//! first, and stopping the server turns the APIService `False (FailedDiscoveryCheck)`
//! and requests into 503s. Also: the local APIServices berth registers for its own
//! group-versions, the APF bootstrap objects, and the built-in metrics.k8s.io.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use berth_testkit::{BerthServer, Kubectl};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

const GROUP: &str = "test.berth.dev";
const SERVICE: &str = "test-apiserver";

type Reply = hyper::Response<BoxBody<Bytes, Infallible>>;

/// What the extension apiserver saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    client: String,
    user: Option<String>,
    groups: Vec<String>,
    authorization: bool,
}

struct ExtensionServer {
    port: u16,
    ca_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

fn json_reply(code: u16, body: &Value) -> Reply {
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

fn widget(name: &str, user: &str) -> Value {
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": "Widget",
           "metadata": {"name": name, "namespace": "default", "annotations": {"seen-user": user}}})
}

fn handle(req: &hyper::Request<hyper::body::Incoming>, seen: &Seen) -> Reply {
    let path = req.uri().path();
    let user = seen.user.clone().unwrap_or_default();
    let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
    match path {
        "/apis/test.berth.dev/v1" => json_reply(
            200,
            &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/v1"),
                    "resources": [{"name": "widgets", "singularName": "widget", "namespaced": true,
                                   "kind": "Widget", "verbs": ["get", "list", "watch"], "shortNames": ["wdg"]}]}),
        ),
        "/apis/test.berth.dev/v1/namespaces/default/widgets"
        | "/apis/test.berth.dev/v1/widgets"
            if watch =>
        {
            // Two events, a moment apart, then the end of the stream.
            let events = futures_util::stream::unfold(0, move |n| {
                let user = user.clone();
                async move {
                    if n == 2 {
                        return None;
                    }
                    if n == 1 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let line = json!({"type": "ADDED", "object": widget(&format!("w{n}"), &user)})
                        .to_string()
                        + "\n";
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line))), n + 1))
                }
            });
            hyper::Response::builder()
                .header("content-type", "application/json")
                .body(StreamBody::new(events).boxed())
                .expect("response")
        }
        "/apis/test.berth.dev/v1/namespaces/default/widgets"
        | "/apis/test.berth.dev/v1/widgets" => json_reply(
            200,
            &json!({"apiVersion": format!("{GROUP}/v1"), "kind": "WidgetList", "metadata": {"resourceVersion": "1"},
                    "items": [widget("w0", &user)]}),
        ),
        _ => json_reply(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                    "message": format!("the server could not find the requested resource ({path})")}),
        ),
    }
}

impl ExtensionServer {
    /// Serves on 127.0.0.1 with a certificate for `<service>.default.svc`, requiring a
    /// client certificate of `client_ca` (the front-proxy CA).
    async fn start(client_ca: &str) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test-extension-ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).expect("issuer");
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec![format!("{SERVICE}.default.svc")]).expect("params");
        let cert = params.signed_by(&key, &issuer).expect("cert");

        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(client_ca.as_bytes()) {
            roots.add(c.expect("client CA")).expect("add client CA");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let chain = vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).expect("chain")];
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| berth_control_plane::apiserver::auth::from_certificate(c))
                        .map(|u| u.name)
                        .unwrap_or_default();
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let header = |n: &str| {
                                req.headers()
                                    .get_all(n)
                                    .iter()
                                    .filter_map(|v| v.to_str().ok().map(str::to_owned))
                                    .collect::<Vec<_>>()
                            };
                            let entry = Seen {
                                path: req.uri().path().to_owned(),
                                client: client.clone(),
                                user: header("x-remote-user").into_iter().next(),
                                groups: header("x-remote-group"),
                                authorization: req.headers().contains_key("authorization"),
                            };
                            // As a k8s.io/apiserver server: headers count only from the
                            // allowed front proxy.
                            let reply = if entry.client == "front-proxy-client"
                                && entry.user.is_some()
                            {
                                handle(&req, &entry)
                            } else {
                                json_reply(
                                    401,
                                    &json!({"kind": "Status", "code": 401, "reason": "Unauthorized"}),
                                )
                            };
                            log.lock().expect("log").push(entry);
                            async move { Ok::<_, Infallible>(reply) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            port,
            ca_pem: ca_cert.pem(),
            seen,
            task,
        }
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("log")
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(done) = f() {
            return done;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn available(k: &Kubectl, name: &str) -> Option<Value> {
    let out = k.run(&["get", "apiservice", name, "-o", "json"]);
    let obj: Value = serde_json::from_slice(&out.stdout).ok()?;
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Available")
        .cloned()
}

fn apply(k: &Kubectl, manifest: &str) {
    let out = k.run_with_stdin(&["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "kubectl apply: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn extension_apiserver_behind_an_apiservice() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // The local APIServices of the built-in group-versions, Available.
    let listing = wait_for("local APIServices", Duration::from_secs(30), || {
        let out = k.ok(&["get", "apiservices"]);
        let ready = [
            "v1. ",
            "v1.apps ",
            "v2.autoscaling ",
            "v1.apiregistration.k8s.io ",
            "v1.flowcontrol.apiserver.k8s.io ",
        ]
        .iter()
        .all(|name| {
            out.lines()
                .any(|l| l.starts_with(name) && l.contains(" Local ") && l.contains(" True "))
        });
        ready.then_some(out)
    });
    assert!(
        listing.starts_with("NAME")
            && listing.lines().next().is_some_and(|h| h.contains("SERVICE")
                && h.contains("AVAILABLE")
                && h.contains("AGE")),
        "{listing}"
    );
    assert!(
        !listing.contains("metrics.k8s.io"),
        "the built-in metrics server has no APIService: {listing}"
    );
    let core = k.json(&["get", "apiservice", "v1."]);
    assert_eq!(
        core["metadata"]["labels"]["kube-aggregator.kubernetes.io/automanaged"], "onstart",
        "{core}"
    );
    assert_eq!(core["spec"]["groupPriorityMinimum"], 18000, "{core}");
    let cond = available(&k, "v1.").expect("condition");
    assert_eq!(cond["reason"], "Local", "{cond}");
    assert_eq!(
        cond["message"], "Local APIServices are always available",
        "{cond}"
    );

    // Validation with kube-aggregator's messages.
    let bad = k.run_with_stdin(
        &["create", "-f", "-"],
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: wrong}\nspec: {group: x.io, version: v1, groupPriorityMinimum: 100, versionPriority: 100, service: {namespace: default, name: x}}\n",
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("metadata.name: Invalid value: \"wrong\": must be `spec.version+\".\"+spec.group`: \"v1.x.io\""),
        "{err}"
    );

    // The APF bootstrap objects.
    let apf = wait_for("APF bootstrap objects", Duration::from_secs(30), || {
        let out = k.ok(&["get", "flowschemas,prioritylevelconfigurations"]);
        [
            "flowschema.flowcontrol.apiserver.k8s.io/exempt ",
            "flowschema.flowcontrol.apiserver.k8s.io/catch-all ",
            "flowschema.flowcontrol.apiserver.k8s.io/global-default ",
            "prioritylevelconfiguration.flowcontrol.apiserver.k8s.io/exempt ",
            "prioritylevelconfiguration.flowcontrol.apiserver.k8s.io/catch-all ",
        ]
        .iter()
        .all(|n| out.contains(n))
        .then_some(out)
    });
    assert!(
        apf.contains("MATCHINGPRECEDENCE") && apf.contains("NOMINALCONCURRENCYSHARES"),
        "{apf}"
    );
    let exempt = wait_for("the Dangling condition", Duration::from_secs(20), || {
        let out = k.ok(&["get", "flowschema", "exempt"]);
        out.lines()
            .nth(1)
            .is_some_and(|l| l.trim_end().ends_with("False"))
            .then_some(out)
    });
    assert!(
        exempt.contains("exempt") && exempt.contains("<none>"),
        "{exempt}"
    );

    // What an extension apiserver reads to trust the proxy.
    let auth = k.json(&[
        "get",
        "configmap",
        "-n",
        "kube-system",
        "extension-apiserver-authentication",
    ]);
    let data = &auth["data"];
    assert_eq!(
        data["requestheader-allowed-names"], "[\"front-proxy-client\"]",
        "{auth}"
    );
    assert_eq!(
        data["requestheader-username-headers"], "[\"X-Remote-User\"]",
        "{auth}"
    );
    assert_eq!(
        data["requestheader-group-headers"], "[\"X-Remote-Group\"]",
        "{auth}"
    );
    assert_eq!(
        data["requestheader-extra-headers-prefix"], "[\"X-Remote-Extra-\"]",
        "{auth}"
    );
    let client_ca = std::fs::read_to_string(server.ca()).expect("cluster CA");
    assert_eq!(
        data["client-ca-file"].as_str().map(str::trim),
        Some(client_ca.trim()),
        "{auth}"
    );
    let front_proxy_ca = data["requestheader-client-ca-file"]
        .as_str()
        .expect("front-proxy CA")
        .to_owned();
    assert_ne!(front_proxy_ca.trim(), client_ca.trim(), "a CA of its own");

    // The extension apiserver, its Service and Endpoints, and the APIService.
    let ext = rt.block_on(ExtensionServer::start(&front_proxy_ca));
    apply(
        &k,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {SERVICE}, namespace: default}}\nspec:\n  ports: [{{name: https, port: 443, targetPort: {port}}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: {SERVICE}, namespace: default}}\nsubsets:\n- addresses: [{{ip: 127.0.0.1}}]\n  ports: [{{name: https, port: {port}}}]\n",
            port = ext.port
        ),
    );
    let bundle = base64::engine::general_purpose::STANDARD.encode(&ext.ca_pem);
    apply(
        &k,
        &format!(
            "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {{name: v1.{GROUP}}}\nspec:\n  group: {GROUP}\n  version: v1\n  groupPriorityMinimum: 1000\n  versionPriority: 15\n  caBundle: {bundle}\n  service: {{namespace: default, name: {SERVICE}}}\n"
        ),
    );
    let svc = k.json(&["get", "apiservice", &format!("v1.{GROUP}")]);
    assert_eq!(svc["spec"]["service"]["port"], 443, "defaulted: {svc}");
    let cond = wait_for("Available=True", Duration::from_secs(30), || {
        available(&k, &format!("v1.{GROUP}"))
            .filter(|c| c["status"] == "True")
            .map(|c| c.to_string())
    });
    assert!(
        cond.contains("\"reason\":\"Passed\"") && cond.contains("all checks passed"),
        "{cond}"
    );
    let row = k.ok(&["get", "apiservice", &format!("v1.{GROUP}")]);
    assert!(
        row.contains(&format!("default/{SERVICE}")) && row.contains("True"),
        "{row}"
    );

    // Through berth: discovery, a list, the user passed on.
    let raw: Value = serde_json::from_str(&k.ok(&[
        "get",
        "--raw",
        "/apis/test.berth.dev/v1/namespaces/default/widgets",
    ]))
    .expect("json");
    assert_eq!(raw["kind"], "WidgetList", "{raw}");
    assert_eq!(
        raw["items"][0]["metadata"]["annotations"]["seen-user"], "kubernetes-admin",
        "{raw}"
    );
    let seen = ext.seen("/apis/test.berth.dev/v1/namespaces/default/widgets");
    let last = seen.last().expect("the request reached the server");
    assert_eq!(last.client, "front-proxy-client");
    assert_eq!(last.user.as_deref(), Some("kubernetes-admin"));
    assert!(
        last.groups.iter().any(|g| g == "system:masters"),
        "{last:?}"
    );
    assert!(
        last.groups.iter().any(|g| g == "system:authenticated"),
        "{last:?}"
    );
    assert!(!last.authorization, "credentials stay with berth");
    let checks = ext.seen("/apis/test.berth.dev/v1");
    assert!(
        checks
            .iter()
            .any(|s| s.user.as_deref() == Some("system:kube-aggregator")),
        "the availability check as upstream makes it: {checks:?}"
    );

    // A watch streams through.
    let watched = k.ok(&[
        "get",
        "--raw",
        "/apis/test.berth.dev/v1/namespaces/default/widgets?watch=true",
    ]);
    let events: Vec<Value> = watched
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    assert_eq!(events.len(), 2, "{watched}");
    assert_eq!(events[1]["object"]["metadata"]["name"], "w1");

    // Discovery: legacy and aggregated, and kubectl using it.
    let apis: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/apis"])).expect("json");
    let names: Vec<&str> = apis["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert!(names.contains(&GROUP), "{names:?}");
    assert_eq!(
        names.first(),
        Some(&"apiregistration.k8s.io"),
        "upstream's order: {names:?}"
    );
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap_or(usize::MAX);
    assert!(
        pos("apps") < pos(GROUP) && pos(GROUP) < pos("metrics.k8s.io"),
        "{names:?}"
    );
    let group: Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/apis/test.berth.dev"])).expect("json");
    assert_eq!(
        group["preferredVersion"]["groupVersion"], "test.berth.dev/v1",
        "{group}"
    );
    let resources = k.ok(&["api-resources", "--api-group", GROUP]);
    assert!(
        resources.contains("widgets") && resources.contains("wdg") && resources.contains("Widget"),
        "{resources}"
    );
    let list = k.json(&["get", "widgets", "-n", "default"]);
    assert_eq!(list["items"][0]["metadata"]["name"], "w0", "{list}");

    // Authorization is berth's, before anything is proxied.
    let alice = home.path().join("alice.kubeconfig");
    std::fs::write(
        &alice,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: berth\n  cluster: {{server: '{}', certificate-authority: '{}'}}\nusers:\n- name: alice\n  user: {{token: alice-token}}\ncontexts:\n- name: alice\n  context: {{cluster: berth, user: alice}}\ncurrent-context: alice\n",
            server.url(),
            server.ca().display()
        ),
    )
    .expect("write kubeconfig");
    let before = ext.seen.lock().expect("log").len();
    let denied = Kubectl::find(&alice, home.path()).expect("kubectl").run(&[
        "get",
        "--raw",
        "/apis/test.berth.dev/v1/namespaces/default/widgets",
    ]);
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success(), "alice may not list widgets");
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
    assert_eq!(
        ext.seen.lock().expect("log").len(),
        before,
        "nothing reached the extension server"
    );

    // The built-in metrics server still answers its group.
    let metrics: Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"]))
            .expect("json");
    assert_eq!(metrics["kind"], "NodeMetricsList", "{metrics}");

    // The server goes away: requests fail (503) and the APIService turns False.
    ext.task.abort();
    let _ = rt.block_on(ext.task);
    let failed = k.run(&[
        "get",
        "--raw",
        "/apis/test.berth.dev/v1/namespaces/default/widgets",
    ]);
    assert!(!failed.status.success());
    let cond = wait_for("FailedDiscoveryCheck", Duration::from_secs(40), || {
        available(&k, &format!("v1.{GROUP}"))
            .filter(|c| c["status"] == "False" && c["reason"] == "FailedDiscoveryCheck")
            .map(|c| c.to_string())
    });
    assert!(
        cond.contains(&format!(
            "failing or missing response from https://127.0.0.1:{port}/apis/test.berth.dev/v1: Get \\\"https://127.0.0.1:{port}/apis/test.berth.dev/v1\\\": dial tcp 127.0.0.1:{port}: connect: connection refused",
            port = ext.port
        )),
        "{cond}"
    );
    let row = k.ok(&["get", "apiservice", &format!("v1.{GROUP}")]);
    assert!(row.contains("False (FailedDiscoveryCheck)"), "{row}");
    let unavailable = k.run(&[
        "get",
        "--raw",
        "/apis/test.berth.dev/v1/namespaces/default/widgets",
    ]);
    let err = String::from_utf8_lossy(&unavailable.stderr);
    assert!(
        err.contains("ServiceUnavailable")
            || err.contains("the server is currently unable to handle the request"),
        "{err}"
    );

    // Without its Service: ServiceNotFound.
    k.ok(&["delete", "service", SERVICE, "-n", "default"]);
    let cond = wait_for("ServiceNotFound", Duration::from_secs(30), || {
        available(&k, &format!("v1.{GROUP}"))
            .filter(|c| c["reason"] == "ServiceNotFound")
            .map(|c| c.to_string())
    });
    assert!(
        cond.contains(&format!(
            "service/{SERVICE} in \\\"default\\\" is not present"
        )),
        "{cond}"
    );

    // Deleted, the group is gone from discovery.
    k.ok(&["delete", "apiservice", &format!("v1.{GROUP}")]);
    let apis = k.ok(&["get", "--raw", "/apis"]);
    assert!(!apis.contains(GROUP), "{apis}");
}
