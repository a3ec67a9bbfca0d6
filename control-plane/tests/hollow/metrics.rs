//! A hollow node's kubelet resource-metrics endpoint: `/metrics/resource` over HTTPS
//! (a serving certificate of the cluster CA, as the kubelet-serving signer gives), in the kubelet's Prometheus
//! format, for every running pod bound to the node. Each pod's container `c` burns
//! the CPU the test sets ([`MetricsKubelet::set_load`], in cores) and holds 20 MiB,
//! so berth-server's built-in metrics server and the HPA see a load the test controls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

struct Load {
    cores: f64,
    /// Pod → (last scrape, cumulative CPU seconds).
    counters: HashMap<String, (Instant, f64)>,
    node_cpu: f64,
    node_at: Option<Instant>,
}

#[derive(Clone)]
struct Shared {
    client: kube::Client,
    node: String,
    load: Arc<Mutex<Load>>,
}

/// The fake endpoint; stopped on drop.
pub struct MetricsKubelet {
    pub port: u16,
    load: Arc<Mutex<Load>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn metrics_resource(State(s): State<Shared>) -> String {
    let pods: Api<Pod> = Api::all(s.client.clone());
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", s.node)))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let now = Instant::now();
    let ms = jiff::Timestamp::now().as_millisecond();
    let mut load = s.load.lock().expect("lock");
    let cores = load.cores;
    let mut out = String::new();
    let mut lines = Vec::new();
    for p in &list {
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if !running || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let entry = load
            .counters
            .entry(format!("{ns}/{name}"))
            .or_insert((now, 0.0));
        entry.1 += cores * now.duration_since(entry.0).as_secs_f64();
        entry.0 = now;
        lines.push((ns, name, entry.1));
    }
    let node_delta = load
        .node_at
        .map(|t| now.duration_since(t).as_secs_f64())
        .unwrap_or(0.0);
    load.node_cpu += node_delta * (0.05 + cores * lines.len() as f64);
    load.node_at = Some(now);
    out.push_str(&format!(
        "node_cpu_usage_seconds_total {} {ms}\n",
        load.node_cpu
    ));
    out.push_str(&format!(
        "node_memory_working_set_bytes {} {ms}\n",
        512u64 << 20
    ));
    for (ns, name, cpu) in &lines {
        out.push_str(&format!(
            "container_cpu_usage_seconds_total{{container=\"c\",namespace=\"{ns}\",pod=\"{name}\"}} {cpu} {ms}\n"
        ));
        out.push_str(&format!(
            "container_memory_working_set_bytes{{container=\"c\",namespace=\"{ns}\",pod=\"{name}\"}} {} {ms}\n",
            20u64 << 20
        ));
    }
    out
}

impl MetricsKubelet {
    /// Serves `node`'s pods' metrics on a free port of 127.0.0.1, with a serving
    /// certificate of the cluster CA in `pki_dir` (the apiserver verifies kubelets').
    pub async fn start(client: kube::Client, node: &str, pki_dir: &std::path::Path) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let pki = berth_control_plane::apiserver::pki::Pki::ensure(pki_dir, &[])
            .expect("the cluster's PKI");
        let (cert, key) = pki
            .issue(
                &format!("system:node:{node}"),
                &["system:nodes"],
                &["127.0.0.1".to_owned()],
                true,
            )
            .expect("a serving certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert PEM")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM"),
            )
            .expect("TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let load = Arc::new(Mutex::new(Load {
            cores: 0.0,
            counters: HashMap::new(),
            node_cpu: 0.0,
            node_at: None,
        }));
        let app = axum::Router::new()
            .route("/metrics/resource", axum::routing::get(metrics_resource))
            .with_state(Shared {
                client,
                node: node.to_owned(),
                load: load.clone(),
            });
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Self { port, load, task }
    }

    /// Each running pod's container now burns `cores`.
    pub fn set_load(&self, cores: f64) {
        self.load.lock().expect("lock").cores = cores;
    }
}
