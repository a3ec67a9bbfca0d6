//! One kube client over several berth-servers: the agent keeps working when the server
//! it talks to goes away. A highly available control plane is two or three
//! berth-servers on one etcd, any of which serves every request; the agent knows a
//! list of them — the kubeconfig's server, then `--api-servers`, then every address
//! the `default/kubernetes` Endpoints list (the live servers, kept by their master
//! leases; learned as k3s' agent load balancer learns them) — and sends each request
//! to the one that answered last. When that one refuses the connection or does not
//! connect in time, or answers 503 (a server cut off from etcd), the request goes to
//! the next; a read (GET) also moves on when the connection breaks before the
//! answer. A write is never sent twice once it may have arrived: only a connection
//! that was never made, or a 503 (the server did nothing), moves it.
//!
//! Watches need nothing more: a watch whose server dies ends, kube-runtime's watcher
//! starts it again from the last resourceVersion, and that request fails over like any
//! other — every server shares etcd's revisions, so the watch resumes where it was.
//!
//! A client-side list rather than a virtual IP: it needs nothing on the network (no
//! ARP/VRRP, no eBPF program that must itself reach a server before pods run), works
//! across L3 boundaries, and is what the agent's own connection already knows how to
//! do. kubectl users get the same with several kubeconfig contexts or a TCP load
//! balancer in front (docs/api.md, "High availability").
//!
//! Entry point: [`client`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Endpoints;
use kube::client::Body;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Makes the client of one server from the agent's config with that server's URL.
pub type Connect = Arc<dyn Fn(&kube::Config) -> anyhow::Result<kube::Client> + Send + Sync>;

/// How often the `kubernetes` Endpoints are read for servers not known yet.
const LEARN_EVERY: Duration = Duration::from_secs(30);

struct Server {
    url: String,
    client: kube::Client,
}

struct Shared {
    base: kube::Config,
    connect: Connect,
    servers: RwLock<Vec<Server>>,
    /// The server that answered last.
    current: AtomicUsize,
}

/// The servers behind the client (see the module docs); a `tower::Service`.
#[derive(Clone)]
pub struct Failover {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("servers", &self.urls())
            .finish()
    }
}

/// A client for `config`'s server and `more` (URLs, tried in that order), each made
/// by `connect`; and the [`Failover`] behind it, to learn more servers with
/// [`Failover::follow_endpoints`].
pub fn client(
    config: kube::Config,
    more: &[String],
    connect: Connect,
) -> anyhow::Result<(kube::Client, Failover)> {
    let failover = Failover {
        shared: Arc::new(Shared {
            base: config.clone(),
            connect,
            servers: RwLock::new(Vec::new()),
            current: AtomicUsize::new(0),
        }),
    };
    failover.add(&config.cluster_url.to_string())?;
    for url in more {
        failover.add(url)?;
    }
    let client = kube::Client::new(failover.clone(), config.default_namespace.clone());
    Ok((client, failover))
}

/// `url` without a trailing slash, as servers are compared.
fn normalized(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

impl Failover {
    /// The servers' URLs, in the order they are tried after the current one.
    pub fn urls(&self) -> Vec<String> {
        self.read().iter().map(|s| s.url.clone()).collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Server>> {
        self.shared
            .servers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds the server at `url` (an `https://` URL), unless it is known.
    pub fn add(&self, url: &str) -> anyhow::Result<()> {
        let url = normalized(url);
        if self.read().iter().any(|s| s.url == url) {
            return Ok(());
        }
        let mut config = self.shared.base.clone();
        config.cluster_url = url
            .parse()
            .map_err(|e| anyhow::anyhow!("berth-server URL {url:?}: {e}"))?;
        let client = (self.shared.connect)(&config)?;
        let mut servers = self
            .shared
            .servers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !servers.iter().any(|s| s.url == url) {
            tracing::info!(server = %url, "berth-server added");
            servers.push(Server { url, client });
        }
        Ok(())
    }

    /// Learns the servers the `default/kubernetes` Endpoints list, now and every 30 s.
    pub async fn follow_endpoints(self, client: kube::Client) {
        let api: kube::Api<Endpoints> = kube::Api::namespaced(client, "default");
        loop {
            // A list, not a get: nodes may list and watch Endpoints (system:node-proxier).
            let only = kube::api::ListParams::default().fields("metadata.name=kubernetes");
            match api.list(&only).await {
                Ok(list) => {
                    for url in list.items.iter().flat_map(endpoint_urls) {
                        if let Err(error) = self.add(&url) {
                            tracing::debug!(%error, "a berth-server from the kubernetes endpoints");
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "reading the kubernetes endpoints"),
            }
            tokio::time::sleep(LEARN_EVERY).await;
        }
    }

    async fn send(self, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        let order: Vec<(usize, String, kube::Client)> = {
            let servers = self.read();
            let n = servers.len();
            let start = self.shared.current.load(Ordering::Relaxed);
            (0..n)
                .map(|i| (start + i) % n.max(1))
                .map(|i| (i, servers[i].url.clone(), servers[i].client.clone()))
                .collect()
        };
        let read = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        let mut last: Option<Result<Response<Body>, BoxError>> = None;
        for (i, url, client) in order {
            let req = Request::from_parts(parts.clone(), Body::from(body.clone()));
            match client.send(req).await {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    tracing::debug!(server = %url, "berth-server answered 503; trying the next");
                    last = Some(Ok(resp));
                }
                Ok(resp) => {
                    if self.shared.current.swap(i, Ordering::Relaxed) != i {
                        tracing::info!(server = %url, "now talking to this berth-server");
                    }
                    return Ok(resp);
                }
                Err(error) if unreachable(&error, read) => {
                    tracing::warn!(server = %url, %error, "berth-server unreachable; trying the next");
                    last = Some(Err(error.into()));
                }
                Err(error) => return Err(error.into()),
            }
        }
        last.unwrap_or_else(|| Err("no berth-server to send the request to".into()))
    }
}

impl tower::Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(self.clone().send(req))
    }
}

/// The `https://ip:port` of every address the Endpoints list.
fn endpoint_urls(endpoints: &Endpoints) -> Vec<String> {
    let mut urls = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let ports = subset.ports.iter().flatten().map(|p| p.port);
        for port in ports {
            for address in subset.addresses.iter().flatten() {
                let host = match address.ip.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
                    _ => address.ip.clone(),
                };
                urls.push(format!("https://{host}:{port}"));
            }
        }
    }
    urls
}

/// Whether the request did not reach the server — the connection was refused or not
/// made in time — or, for a `read`, the connection broke before the answer.
fn unreachable(error: &kube::Error, read: bool) -> bool {
    use std::io::ErrorKind;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                ErrorKind::ConnectionRefused
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable => return true,
                ErrorKind::TimedOut
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
                    if read =>
                {
                    return true;
                }
                _ => {}
            }
        }
        if read
            && e.downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_closed() || h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_urls() {
        let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "fd00::2"}],
                "ports": [{"name": "https", "port": 6443}]}],
        }))
        .expect("endpoints");
        assert_eq!(
            endpoint_urls(&endpoints),
            ["https://10.0.0.1:6443", "https://[fd00::2]:6443"]
        );
    }

    /// A server that refuses connections is skipped, and the one that answers is used
    /// from then on.
    #[tokio::test]
    async fn a_refused_server_fails_over_to_the_next() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let refused = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let dead = refused.local_addr().expect("addr");
        drop(refused);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = live.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = live.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let body = r#"{"major":"1","minor":"37","gitVersion":"v1.37.0"}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        let config = kube::Config::new(format!("http://{dead}").parse().expect("url"));
        let connect: Connect = Arc::new(|c: &kube::Config| Ok(kube::Client::try_from(c.clone())?));
        let (client, failover) =
            client(config, &[format!("http://{addr}")], connect).expect("client");
        let version = client
            .apiserver_version()
            .await
            .expect("the live server answers");
        assert_eq!(version.minor, "37");
        assert_eq!(failover.shared.current.load(Ordering::Relaxed), 1);
        assert_eq!(failover.urls().len(), 2);
    }
}
