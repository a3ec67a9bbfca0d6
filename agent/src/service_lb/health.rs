//! kube-proxy's service health checks: for a LoadBalancer Service with
//! `externalTrafficPolicy: Local`, the node serves HTTP on the Service's
//! `healthCheckNodePort` and answers 200 when it has a ready endpoint of the Service
//! (503 when not), with kube-proxy's JSON body, so an external load balancer sends
//! traffic only to nodes that will not drop it. The listeners live in the pod
//! network's namespace (the node's addresses) and follow the Service watch
//! ([`HealthConsumer`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::services::{SERVICE_NAME_LABEL, ServiceConsumer};

/// One Service's health check.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    namespace: String,
    name: String,
    port: u16,
    local_endpoints: usize,
}

#[derive(Default)]
struct State {
    /// By `namespace/name`.
    checks: BTreeMap<String, Check>,
    /// The listener of each port.
    servers: BTreeMap<u16, tokio::task::JoinHandle<()>>,
}

/// The health-check listeners of a node.
pub struct HealthConsumer {
    state: Arc<Mutex<State>>,
    node: String,
    netns: Option<PathBuf>,
}

impl std::fmt::Debug for HealthConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthConsumer")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl HealthConsumer {
    /// Health checks for node `node`, listening in `netns` (the agent's own when
    /// `None`).
    pub fn new(node: &str, netns: Option<PathBuf>) -> Self {
        Self {
            state: Arc::default(),
            node: node.to_owned(),
            netns,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the listener of `port` unless it runs.
    fn listen(&self, port: u16) {
        if self.lock().servers.contains_key(&port) {
            return;
        }
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let bind = move || -> Result<std::net::TcpListener, String> {
            let l = std::net::TcpListener::bind(addr).map_err(|e| format!("{addr}: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(l)
        };
        let listener = match &self.netns {
            Some(ns) => crate::netns::run_in(ns, bind),
            None => bind(),
        };
        let listener = match listener
            .and_then(|l| tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string()))
        {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, port, "cannot serve the service health check");
                return;
            }
        };
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    // Out of descriptors or the like: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), answer(conn, &state, port))
                            .await;
                });
            }
        });
        tracing::info!(port, "serving a service health check");
        self.lock().servers.insert(port, task);
    }

    /// Stops the listeners no Service uses any more.
    fn stop_unused(&self) {
        let mut state = self.lock();
        let used: Vec<u16> = state.checks.values().map(|c| c.port).collect();
        let unused: Vec<u16> = state
            .servers
            .keys()
            .copied()
            .filter(|p| !used.contains(p))
            .collect();
        for port in unused {
            if let Some(task) = state.servers.remove(&port) {
                task.abort();
                tracing::info!(port, "service health check stopped");
            }
        }
    }
}

/// The health check a Service asks this node for, if any.
fn check_of(service: &Service, slices: &[&EndpointSlice], node: &str) -> Option<Check> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer")
        || spec.external_traffic_policy.as_deref() != Some("Local")
    {
        return None;
    }
    let port = u16::try_from(spec.health_check_node_port?)
        .ok()
        .filter(|p| *p != 0)?;
    let name = service.metadata.name.clone().unwrap_or_default();
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    // kube-proxy counts this node's ready endpoints, once per address.
    let mut local: Vec<&String> = slices
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                == Some(&name)
        })
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.node_name.as_deref() == Some(node))
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter())
        .collect();
    local.sort();
    local.dedup();
    Some(Check {
        namespace,
        name,
        port,
        local_endpoints: local.len(),
    })
}

/// kube-proxy's answer for the Service on `port`.
fn response(check: Option<&Check>) -> String {
    let (status, body, count) = match check {
        Some(c) => {
            let body = serde_json::json!({
                "service": {"namespace": c.namespace, "name": c.name},
                "localEndpoints": c.local_endpoints,
                "serviceProxyHealthy": true,
            });
            let status = if c.local_endpoints > 0 {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (
                status,
                serde_json::to_string_pretty(&body).unwrap_or_default(),
                c.local_endpoints,
            )
        }
        None => ("503 Service Unavailable", String::new(), 0),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {count}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn answer(mut conn: tokio::net::TcpStream, state: &Mutex<State>, port: u16) {
    // Read the request head (any path is answered, as kube-proxy's handler does).
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let check = state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .checks
        .values()
        .find(|c| c.port == port)
        .cloned();
    let _ = conn.write_all(response(check.as_ref()).as_bytes()).await;
    let _ = conn.shutdown().await;
}

impl ServiceConsumer for HealthConsumer {
    fn changed(
        &mut self,
        namespace: &str,
        name: &str,
        service: Option<&Service>,
        slices: &[&EndpointSlice],
    ) {
        let key = format!("{namespace}/{name}");
        let check = service.and_then(|s| check_of(s, slices, &self.node));
        match check {
            Some(check) => {
                let port = check.port;
                self.lock().checks.insert(key, check);
                self.listen(port);
            }
            None => {
                self.lock().checks.remove(&key);
            }
        }
        self.stop_unused();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn local_ready_endpoints_are_counted_and_answered_as_kube_proxy() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 31000, "ports": [{"port": 80}]}}))
        .expect("service");
        let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "default",
            "labels": {SERVICE_NAME_LABEL: "web"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.0.0.1"], "nodeName": "n1", "conditions": {"ready": true}},
            {"addresses": ["10.0.0.2"], "nodeName": "n1", "conditions": {"ready": false}},
            {"addresses": ["10.0.1.1"], "nodeName": "n2", "conditions": {"ready": true}},
        ]}))
        .expect("slice");
        let check = check_of(&svc, &[&slice], "n1").expect("a check");
        assert_eq!((check.port, check.local_endpoints), (31000, 1));
        let ok = response(Some(&check));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\"localEndpoints\": 1"), "{ok}");
        assert!(ok.contains("\"serviceProxyHealthy\": true"), "{ok}");
        let none = check_of(&svc, &[&slice], "n3").expect("a check");
        assert!(response(Some(&none)).starts_with("HTTP/1.1 503 "));
        // Cluster policy: no health check.
        let mut cluster = svc.clone();
        if let Some(s) = cluster.spec.as_mut() {
            s.external_traffic_policy = Some("Cluster".into());
        }
        assert!(check_of(&cluster, &[&slice], "n1").is_none());
    }
}
