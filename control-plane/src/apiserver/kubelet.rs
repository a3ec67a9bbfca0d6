//! The apiserver's side of the kubelet API: `pods/log` and `nodes/proxy` are proxied to
//! the node's agent at its InternalIP and `daemonEndpoints.kubeletEndpoint.Port`, with
//! the apiserver's kubelet-client certificate (CN `kube-apiserver-kubelet-client`,
//! signed by the cluster CA, bound to `system:kubelet-api-admin`: the agents authorize
//! it as any other caller). As kube-apiserver with `--kubelet-certificate-authority`,
//! the agent's serving certificate (from the `kubernetes.io/kubelet-serving` signer)
//! must verify against the cluster CA for the node's address, and redirects are not
//! followed.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use futures_util::TryStreamExt;
use serde_json::Value;

use super::status::ApiError;

/// The user the apiserver's kubelet-client certificate names.
pub const CLIENT_USER: &str = "kube-apiserver-kubelet-client";

static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();

/// Builds the client from the kubelet-client certificate and key and the CA the
/// kubelets' serving certificates are checked against (PEM).
pub fn init(cert_pem: &str, key_pem: &str, ca_pem: &str) -> anyhow::Result<()> {
    let identity = reqwest::Identity::from_pem(format!("{cert_pem}\n{key_pem}").as_bytes())?;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .identity(identity)
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let _ = CLIENT.set(client);
    Ok(())
}

/// `https://<InternalIP>:<port>` of a Node object.
pub fn endpoint(node: &Value) -> Option<String> {
    let ip = node
        .pointer("/status/addresses")?
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .unwrap_or(10250);
    Some(if ip.contains(':') {
        format!("https://[{ip}]:{port}")
    } else {
        format!("https://{ip}:{port}")
    })
}

fn unavailable(message: String) -> ApiError {
    let mut err = ApiError::new(503, "ServiceUnavailable", message);
    err.retry_after = Some(5);
    err
}

/// GETs `path_and_query` from the kubelet at `base` and streams the answer back.
pub async fn get(base: &str, path_and_query: &str) -> Result<Response, ApiError> {
    let Some(client) = CLIENT.get() else {
        return Err(unavailable(
            "this berth-server has no kubelet client certificate".into(),
        ));
    };
    let url = format!("{base}{path_and_query}");
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| unavailable(format!("error dialing the kubelet at {base}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let code = status.as_u16();
        let text = resp.text().await.unwrap_or_default();
        let reason = match code {
            404 => "NotFound",
            400 => "BadRequest",
            _ => "InternalError",
        };
        return Err(ApiError::new(code, reason, text.trim().to_owned()));
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_owned();
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
}

/// GETs `path` from the kubelet at `base` and returns the body as text, within
/// `timeout` (the metrics server's scrapes).
pub async fn get_text(base: &str, path: &str, timeout: Duration) -> Result<String, String> {
    let client = CLIENT
        .get()
        .ok_or("this berth-server has no kubelet client certificate")?;
    let resp = client
        .get(format!("{base}{path}"))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("request to {base}{path} failed: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("request to {base}{path} failed, status: {status}"));
    }
    resp.text()
        .await
        .map_err(|e| format!("reading {base}{path}: {e}"))
}

/// Proxies an upgrade (websocket `exec`, SPDY `portforward`) to the kubelet: the client's request goes on
/// with its upgrade headers; once the kubelet switches protocols, the client gets the
/// kubelet's 101 and the two connections are spliced.
pub async fn upgrade(
    base: &str,
    path_and_query: &str,
    headers: &axum::http::HeaderMap,
    client: hyper::upgrade::OnUpgrade,
) -> Result<Response, ApiError> {
    let Some(http) = CLIENT.get() else {
        return Err(unavailable(
            "this berth-server has no kubelet client certificate".into(),
        ));
    };
    let kind = headers
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if kind != "websocket" && kind != "spdy/3.1" {
        return Err(ApiError::bad_request(
            "this subresource needs a connection upgrade (websocket or SPDY/3.1)",
        ));
    }
    let mut req = http.get(format!("{base}{path_and_query}"));
    for name in [
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "x-stream-protocol-version",
    ] {
        for v in headers.get_all(name) {
            req = req.header(name, v.as_bytes());
        }
    }
    let resp = req
        .send()
        .await
        .map_err(|e| unavailable(format!("error dialing the kubelet at {base}: {e}")))?;
    if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        return Err(ApiError::new(
            if code == 404 { 404 } else { 500 },
            if code == 404 {
                "NotFound"
            } else {
                "InternalError"
            },
            text.trim().to_owned(),
        ));
    }
    let mut builder = Response::builder().status(101);
    for (name, value) in resp.headers() {
        let n = name.as_str();
        if n.starts_with("sec-websocket")
            || n == "upgrade"
            || n == "connection"
            || n == "x-stream-protocol-version"
        {
            builder = builder.header(n, value.as_bytes());
        }
    }
    let kubelet_io = resp
        .upgrade()
        .await
        .map_err(|e| ApiError::new(500, "InternalError", format!("kubelet upgrade: {e}")))?;
    tokio::spawn(async move {
        let Ok(client_io) = client.await else {
            return;
        };
        let mut client_io = hyper_util::rt::TokioIo::new(client_io);
        let mut kubelet_io = kubelet_io;
        let _ = tokio::io::copy_bidirectional(&mut client_io, &mut kubelet_io).await;
    });
    builder
        .body(Body::empty())
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
}
