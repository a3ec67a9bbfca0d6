//! The kubelet API on port 10250 (HTTPS with a serving certificate from the cluster
//! CA's `kubernetes.io/kubelet-serving` signer — self-signed until it arrives; clients
//! must present a certificate of the cluster CA and be authorized through a
//! SubjectAccessReview for `nodes/<subresource>`, [`auth`]): `/healthz`, `/metrics`,
//! `/containerLogs` ([`logs`]), `/exec` and `/attach` over websockets ([`exec`],
//! [`attach`]), `/portForward`
//! over SPDY ([`portforward`], [`spdy`]), `/stats/summary`
//! and `/metrics/resource` ([`stats`]).

pub mod attach;
pub mod auth;
pub mod exec;
pub mod logs;
pub mod portforward;
pub mod spdy;
pub mod stats;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::pods::Ctx;

/// The running instance of `container` in pod `ns/name`: `<uid>-<container>-<n>` with
/// the highest n (the pod's uid read from its log directory `<ns>_<name>_<uid>`).
pub fn find_container(ctx: &Ctx, ns: &str, name: &str, container: &str) -> Option<String> {
    let prefix = format!("{ns}_{name}_");
    let uid = std::fs::read_dir(&ctx.logs_dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(&prefix))
        .filter_map(|n| n.rsplit('_').next().map(str::to_owned))
        .next()?;
    let inst = format!("{uid}-{container}-");
    ctx.runtime
        .containers()
        .into_iter()
        .filter_map(|id| {
            let n: u32 = id.strip_prefix(&inst)?.parse().ok()?;
            Some((n, id))
        })
        .max()
        .map(|(_, id)| id)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    let ctx2 = ctx.clone();
    let (sandboxes, containers) = tokio::task::spawn_blocking(move || {
        let sandboxes = ctx2.runtime.sandboxes();
        let running = ctx2
            .runtime
            .containers()
            .iter()
            .filter(|id| !sandboxes.contains(id))
            .filter(|id| {
                ctx2.runtime
                    .status(id)
                    .is_ok_and(|s| s.state == berth_runtime::pod::ContainerState::Running)
            })
            .count();
        (sandboxes.len(), running)
    })
    .await
    .unwrap_or((0, 0));
    let mut body = format!(
        "# HELP kubelet_running_pods Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods {sandboxes}\n# HELP kubelet_running_containers Number of containers currently running\n# TYPE kubelet_running_containers gauge\nkubelet_running_containers{{container_state=\"running\"}} {containers}\n"
    );
    // The load balancer's and the DNS server's families are OpenMetrics expositions
    // (prometheus-client's, each ending in `# EOF`): one body, one `# EOF`, served as
    // OpenMetrics.
    let mut add = |text: String| body.push_str(text.strip_suffix("# EOF\n").unwrap_or(&text));
    if let Some(lb) = &ctx.lb_metrics
        && let Ok(m) = lb.lock()
    {
        add(m.encode());
    }
    if let Some(dns) = &ctx.dns {
        add(dns.metrics().encode());
    }
    if let Some(netpol) = &ctx.netpol {
        add(netpol.encode_metrics());
    }
    add(ctx.start_metrics.encode());
    body.push_str("# EOF\n");
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            get(logs::container_logs),
        )
        .route(
            "/exec/{ns}/{pod}/{container}",
            get(exec::exec).post(exec::exec),
        )
        .route(
            "/attach/{ns}/{pod}/{container}",
            get(attach::attach).post(attach::attach),
        )
        .route(
            "/portForward/{ns}/{pod}",
            get(portforward::port_forward).post(portforward::port_forward),
        )
        .route("/stats/summary", get(stats::stats_summary))
        .route("/metrics/resource", get(stats::metrics_resource))
        .with_state(ctx)
}

/// A self-signed serving certificate and key (one PEM) for the node's names and
/// address: what the kubelet API serves until the cluster CA signs one.
pub fn self_signed(names: Vec<String>) -> anyhow::Result<Vec<u8>> {
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(names)?;
    let cert = params.self_signed(&key)?;
    Ok(format!("{}{}", cert.pem(), key.serialize_pem()).into_bytes())
}

/// The names the serving certificate is for: the node's name and address.
pub fn serving_names(ctx: &Ctx) -> Vec<String> {
    let mut names = vec![ctx.node.name.clone(), ctx.node.node_ip.clone()];
    names.dedup();
    names
}

/// Serves the kubelet API on `addr` until the future is dropped: TLS with the
/// certificate in `serving` (replaced as it is renewed), client certificates of
/// `client_ca_pem` only, each request authorized by `authorizer`.
pub async fn serve(
    ctx: Arc<Ctx>,
    addr: std::net::SocketAddr,
    client_ca_pem: String,
    serving: Arc<crate::certificates::Rotating>,
    authorizer: Arc<auth::Authorizer>,
) -> anyhow::Result<()> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "kubelet API serving");
    let app = router(ctx);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let authorizer = authorizer.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(err) => {
                    tracing::debug!(%err, %peer, "kubelet API TLS handshake failed");
                    return;
                }
            };
            let caller = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| auth::Caller::from_certificate(c));
            let authorized = tower::service_fn(
                move |req: axum::http::Request<hyper::body::Incoming>| {
                    let (app, authorizer, caller) =
                        (app.clone(), authorizer.clone(), caller.clone());
                    async move {
                        use tower::ServiceExt;
                        let (verb, sub) = auth::attributes(req.method(), req.uri().path());
                        let Some(caller) = caller else {
                            return Ok((axum::http::StatusCode::UNAUTHORIZED, "Unauthorized")
                                .into_response());
                        };
                        match authorizer.check(&caller, verb, sub).await {
                            Ok(true) => app.oneshot(req).await,
                            Ok(false) => Ok((
                                axum::http::StatusCode::FORBIDDEN,
                                auth::forbidden_message(&caller, verb, sub),
                            )
                                .into_response()),
                            Err(err) => {
                                tracing::warn!(%err, "authorizing a kubelet API request");
                                Ok((
                                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                                format!("Authorization error (user={}, verb={verb}, resource=nodes, subresource={sub})", caller.user),
                            )
                                .into_response())
                            }
                        }
                    }
                },
            );
            let service = hyper_util::service::TowerToHyperService::new(authorized);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}
