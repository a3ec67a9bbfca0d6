//! Calling a webhook: an HTTPS POST of the AdmissionReview, verified against the
//! configuration's `caBundle` (the system roots when it has none), within its
//! `timeoutSeconds` (also sent as `?timeout=Ns`, as upstream's REST client does).
//!
//! `clientConfig.url` is called as given. `clientConfig.service` resolves to a ready
//! endpoint of the Service (its EndpointSlices, else its Endpoints) for the service
//! port named, as kube-apiserver with `--enable-aggregator-routing`: berth-server runs
//! on the host, where a ClusterIP is not served (the agent's eBPF load balancer
//! translates only the sockets of the pods' cgroups). The certificate must be valid for
//! `<service>.<namespace>.svc`, as upstream checks it. An `ExternalName` Service is
//! called at its external name.
//!
//! Clients (reqwest on rustls, as the kubelet client) are kept per CA bundle and
//! resolved endpoint, so connections are reused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{ServiceReference, WebhookClientConfig};
use serde_json::Value;

use crate::apiserver::watch_cache::WatchCache;

/// The largest AdmissionReview answer read (upstream's webhook response limit is the
/// REST client's; this keeps a misbehaving webhook from exhausting memory).
const MAX_RESPONSE: usize = 16 << 20;

type ClientKey = (Vec<u8>, Option<(String, SocketAddr)>);

static CLIENTS: LazyLock<Mutex<HashMap<ClientKey, reqwest::Client>>> =
    LazyLock::new(Default::default);

/// Where to send a webhook's requests.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The URL named in errors and requested (`?timeout=` added by [`post`]).
    pub url: String,
    /// For a service: its host name `<svc>.<ns>.svc` and the endpoint it is reached at.
    pub resolve: Option<(String, SocketAddr)>,
}

fn client(
    ca_bundle: &[u8],
    resolve: Option<&(String, SocketAddr)>,
) -> Result<reqwest::Client, String> {
    let key = (ca_bundle.to_vec(), resolve.cloned());
    let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = clients.get(&key) {
        return Ok(c.clone());
    }
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(90));
    if !ca_bundle.is_empty() {
        let certs = reqwest::Certificate::from_pem_bundle(ca_bundle)
            .map_err(|e| format!("unable to load root certificates: {e}"))?;
        if certs.is_empty() {
            return Err(
                "unable to load root certificates: unable to parse bytes as PEM block".into(),
            );
        }
        builder = builder.tls_built_in_root_certs(false);
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    if let Some((host, addr)) = resolve {
        builder = builder.resolve(host, *addr);
    }
    let built = builder
        .build()
        .map_err(|e| format!("could not get REST client: {e}"))?;
    // Bounded as upstream's client cache: configurations come and go.
    if clients.len() >= 128 {
        clients.clear();
    }
    clients.insert(key, built.clone());
    Ok(built)
}

/// A stored object by key, from the watch cache.
fn cached(cache: &WatchCache, key: &str) -> Option<Value> {
    cache.get(key).map(|c| c.value())
}

fn ready(endpoint: &Value) -> bool {
    endpoint
        .pointer("/conditions/ready")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

/// A ready endpoint of `ns/name` for the service port `port`.
fn endpoint(
    cache: &WatchCache,
    svc: &Value,
    ns: &str,
    name: &str,
    port: i32,
) -> Result<SocketAddr, String> {
    let ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(svc_port) = ports
        .iter()
        .find(|p| p.get("port").and_then(Value::as_i64) == Some(i64::from(port)))
    else {
        return Err(format!(
            "no service port {port} found for service \"{name}\""
        ));
    };
    let port_name = svc_port
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut candidates: Vec<SocketAddr> = Vec::new();
    let (slices, _) = cache.list(
        &format!("/registry/discovery.k8s.io/endpointslices/{ns}/"),
        |c| c.attrs.labels.get("kubernetes.io/service-name") == Some(name),
    );
    for slice in &slices {
        let slice = slice.value();
        let Some(target) = slice
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str).unwrap_or_default() == port_name)
            .and_then(|p| p.get("port").and_then(Value::as_u64))
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in slice
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| ready(e))
        {
            for addr in ep
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(ip) = addr.as_str().and_then(|a| a.parse().ok()) {
                    candidates.push(SocketAddr::new(ip, target));
                }
            }
        }
    }
    if slices.is_empty()
        && let Some(eps) = cached(cache, &format!("/registry/core/endpoints/{ns}/{name}"))
    {
        for subset in eps
            .get("subsets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(target) = subset
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str).unwrap_or_default() == port_name)
                .and_then(|p| p.get("port").and_then(Value::as_u64))
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for addr in subset
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(ip) = addr
                    .get("ip")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse().ok())
                {
                    candidates.push(SocketAddr::new(ip, target));
                }
            }
        }
    }
    if candidates.is_empty() {
        return Err(format!("no endpoints available for service \"{name}\""));
    }
    // Spread calls over the endpoints, as upstream picks one at random.
    let pick = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize)
        % candidates.len();
    Ok(candidates[pick])
}

/// Where a service reference is called.
fn service_destination(
    cache: &WatchCache,
    svc_ref: &ServiceReference,
) -> Result<Destination, String> {
    let (ns, name) = (&svc_ref.namespace, &svc_ref.name);
    let port = svc_ref.port.unwrap_or(443);
    let path = svc_ref.path.as_deref().unwrap_or_default();
    let Some(svc) = cached(cache, &format!("/registry/core/services/{ns}/{name}")) else {
        return Err(format!("service \"{name}\" not found"));
    };
    if svc.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        let host = svc
            .pointer("/spec/externalName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Ok(Destination {
            url: format!("https://{host}:{port}{path}"),
            resolve: None,
        });
    }
    let addr = endpoint(cache, &svc, ns, name, port)?;
    let host = format!("{name}.{ns}.svc");
    // No port in the URL: the resolved endpoint's (target) port is the one dialed.
    Ok(Destination {
        url: format!("https://{host}{path}"),
        resolve: Some((host, addr)),
    })
}

/// Where a webhook is called.
pub fn destination(cache: &WatchCache, cc: &WebhookClientConfig) -> Result<Destination, String> {
    match (&cc.url, &cc.service) {
        (Some(url), _) => Ok(Destination {
            url: url.clone(),
            resolve: None,
        }),
        (None, Some(svc)) => service_destination(cache, svc),
        (None, None) => Err("neither url nor service is set".into()),
    }
}

/// An error and its causes, `: `-joined, as Go wraps them (reqwest's own top line,
/// which only repeats the URL, left out).
fn chain(err: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        let text = e.to_string();
        // hyper-util's wrapper ("client error (Connect)") says nothing its cause does not.
        if !text.starts_with("client error (") {
            parts.push(text);
        }
        source = e.source();
    }
    if parts.is_empty() {
        parts.push(err.to_string());
    }
    parts.dedup();
    parts.join(": ")
}

/// A call that gave no answer: upstream's words, and the HTTP status the webhook
/// answered with (0 when it did not answer).
#[derive(Debug)]
pub struct CallError {
    pub message: String,
    pub code: u16,
}

impl From<String> for CallError {
    fn from(message: String) -> Self {
        Self { message, code: 0 }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// POSTs `body` to the webhook and returns its decoded answer, or why the call failed
/// (the `Reason` of upstream's `ErrCallingWebhook`).
pub async fn post(
    cc: &WebhookClientConfig,
    dest: &Destination,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Value, CallError> {
    let ca = cc
        .ca_bundle
        .as_ref()
        .map(|b| b.0.as_slice())
        .unwrap_or_default();
    let client = client(ca, dest.resolve.as_ref())?;
    let url = format!("{}?timeout={}s", dest.url, timeout.as_secs());
    let call = async {
        let resp = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, */*")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("failed to call webhook: Post \"{url}\": {}", chain(&e)))?;
        let status = resp.status();
        let mut resp = resp;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("failed to call webhook: Post \"{url}\": {}", chain(&e)))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE {
                return Err(format!(
                    "failed to call webhook: the response from {url} is larger than {MAX_RESPONSE} bytes"
                )
                .into());
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim();
            let message = if text.is_empty() {
                format!(
                    "failed to call webhook: the server responded with the status code {} but did not return more information",
                    status.as_u16()
                )
            } else {
                format!(
                    "failed to call webhook: an error on the server (\"{text}\") has prevented the request from succeeding"
                )
            };
            return Err(CallError {
                message,
                code: status.as_u16(),
            });
        }
        serde_json::from_slice::<Value>(&bytes).map_err(|e| {
            CallError::from(format!(
                "failed to call webhook: couldn't get version/kind; json parse error: {e}"
            ))
        })
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(CallError::from(format!(
            "failed to call webhook: Post \"{url}\": context deadline exceeded"
        ))),
    }
}
