//! The store the apiserver runs on: the embedded one in the data dir (the default), or
//! etcd with `--etcd-servers` ([`crate::store::etcd`]).
//!
//! An etcd that does not answer at start is retried with back-off, each failure logged
//! with the endpoints ([`EtcdStore::connect_retrying`]). Meanwhile the port already
//! answers, as kube-apiserver's does before its storage is up: `/livez` ok, `/readyz`
//! (and `/healthz`) 500 with kube-apiserver's `[-]etcd failed: reason withheld`, and
//! every other request 503 with Retry-After — so a probe finds a live server that is
//! not ready, not a closed port. Once etcd answers, the same listener serves the API.
//! While serving, `/readyz` asks the store ([`crate::store::Store::health`]) on each
//! request: a quorum read within two seconds.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::{TLS_HANDSHAKE_TIMEOUT, pki, tls_acceptor};
use crate::store::Store;
use crate::store::etcd::{EtcdStore, Options};

/// The body of a failed `/readyz` (kube-apiserver's wording, reason withheld).
pub const ETCD_NOT_READY: &str = "[-]etcd failed: reason withheld\nreadyz check failed\n";

/// `/readyz`: ok while the store answers.
pub async fn readyz(store: &dyn Store) -> Response {
    match store.health().await {
        Ok(()) => (StatusCode::OK, [("content-type", "text/plain")], "ok").into_response(),
        Err(err) => {
            tracing::warn!(%err, "readyz: the store's health check failed");
            not_ready()
        }
    }
}

fn not_ready() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [("content-type", "text/plain")],
        ETCD_NOT_READY,
    )
        .into_response()
}

/// Connects to etcd, answering on `bind` as "starting" until it does; returns the
/// store and the listener the API is then served on.
pub async fn open_etcd(
    options: &Options,
    bind: SocketAddr,
    pki: &pki::Pki,
) -> anyhow::Result<(Arc<EtcdStore>, tokio::net::TcpListener)> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let acceptor = tls_acceptor(pki)?;
    tracing::info!(endpoints = %options.endpoints_text(), prefix = %options.prefix, "connecting to etcd");
    let connect = EtcdStore::connect_retrying(options);
    tokio::pin!(connect);
    loop {
        tokio::select! {
            store = &mut connect => {
                let store = store.with_context(|| {
                    format!("the etcd store at {}", options.endpoints_text())
                })?;
                tracing::info!(endpoints = %options.endpoints_text(), "connected to etcd");
                return Ok((Arc::new(store), listener));
            }
            conn = listener.accept() => match conn {
                Ok((tcp, _)) => {
                    tokio::spawn(starting(tcp, acceptor.clone()));
                }
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves one connection while the store is not there yet.
async fn starting(tcp: tokio::net::TcpStream, acceptor: tokio_rustls::TlsAcceptor) {
    let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
    else {
        return;
    };
    let app = axum::Router::new().fallback(|uri: Uri| async move { answer(uri.path()) });
    let service = hyper_util::service::TowerToHyperService::new(app);
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let _ = builder
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await;
}

fn answer(path: &str) -> Response {
    match path.trim_end_matches('/') {
        "/livez" => (StatusCode::OK, [("content-type", "text/plain")], "ok").into_response(),
        "/readyz" | "/healthz" => not_ready(),
        _ => {
            let mut err = super::status::ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is starting: its etcd store does not answer yet",
            );
            err.retry_after = Some(1);
            err.into_response()
        }
    }
}
