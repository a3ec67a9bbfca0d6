//! Serving the driver on a unix socket, the only transport the CSI spec requires
//! ("Supervised plugins MUST listen on a UNIX domain socket"), named by a
//! `unix://` endpoint as CSI_ENDPOINT is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::stream;
use tokio::net::UnixListener;
use tokio::sync::Notify;

use crate::driver::Driver;
use crate::proto::{
    controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer,
};
use crate::service::Service;

/// How long calls in flight may take to finish once shutdown is asked for.
const GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A failure to serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The endpoint is not `unix:///path` (or a plain path).
    #[error("endpoint {0:?} is not unix:///absolute/path")]
    Endpoint(String),
    /// The socket could not be bound.
    #[error("bind {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server stopped with an error.
    #[error("serve: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The socket path of a `unix:///path` endpoint (a bare absolute path is accepted too).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(ServeError::Endpoint(endpoint.to_owned()))
    }
}

/// Serves `driver` on the socket at `path` until `shutdown` completes; a stale socket
/// file from an earlier run is replaced, and the socket is removed on the way out.
pub async fn serve(
    driver: Arc<Driver>,
    path: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if path.exists() {
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::Bind {
            path: dir.to_owned(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| ServeError::Bind {
        path: path.to_owned(),
        source,
    })?;
    let incoming = stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(s, _)| s);
        Some((conn, listener))
    });
    let service = Service::new(driver);
    tracing::info!(socket = %path.display(), "serving CSI");
    // Graceful shutdown waits for every connection to close, and a CO keeps its
    // connection open while idle; so in-flight calls get GRACE, then the driver exits.
    // (A call already running on a blocking thread still finishes: the runtime waits
    // for those, so no mount or metadata write is cut in half.)
    let stopping = Arc::new(Notify::new());
    let notify = Arc::clone(&stopping);
    let server = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(service.clone()))
        .add_service(ControllerServer::new(service.clone()))
        .add_service(NodeServer::new(service))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            notify.notify_one();
        });
    let result = tokio::select! {
        result = server => result,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(GRACE).await;
        } => {
            tracing::info!(grace = ?GRACE, "connections still open after the grace period; stopping");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(path);
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/csi.sock").expect("unix"),
            Path::new("/run/csi.sock")
        );
        assert_eq!(
            socket_path("/run/csi.sock").expect("bare"),
            Path::new("/run/csi.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path("unix://relative.sock").is_err());
    }
}
