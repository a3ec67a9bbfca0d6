//! `GET /snapshot`: the store, copied while the server serves, for `berth-server
//! snapshot save`. The copy is made from one read transaction of the embedded store
//! ([`crate::store::redb::snapshot`]) and streamed as it is produced; the file ends
//! with a SHA-256 the client checks before it keeps the file, so a copy cut short (a
//! failed read, a dropped connection) is never taken for a whole one.
//!
//! Why an endpoint rather than reading the store's file from another process: redb
//! opens a file in one process at a time (a second open is refused while the server has
//! it), and the file alone is not the store — the writes of the last half minute are in
//! the write-ahead log until the next checkpoint. Only the server sees both.
//!
//! It is a non-resource URL, so RBAC decides who may read it: `cluster-admin` (and
//! `system:masters`) hold `nonResourceURLs: ["*"]`; no other bootstrap role names it.
//! A snapshot holds every Secret, so this is as it should be.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use super::Api;
use super::status::{ApiError, ApiResult};
use crate::store::redb::snapshot::{self, Status};

/// Where the running server serves its snapshot.
pub const PATH: &str = "/snapshot";

type Chunk = Result<Bytes, std::io::Error>;

/// The snapshot's bytes into the response body, as the store writes them.
struct ChannelWriter(mpsc::Sender<Chunk>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Called on the store's blocking thread: waiting for the client is fine there.
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams a snapshot of the store. A store that cannot make one (a backend without
/// it) is answered with an error status before any byte is sent; a failure later cuts
/// the body short.
pub(super) async fn respond(api: &Arc<Api>) -> ApiResult<Response> {
    let (tx, mut rx) = mpsc::channel::<Chunk>(8);
    let failed = tx.clone();
    let store = api.store.clone();
    tokio::spawn(async move {
        match store.snapshot(Box::new(ChannelWriter(tx))).await {
            Ok(revision) => tracing::info!(revision, "store snapshot sent"),
            Err(err) => {
                tracing::warn!(%err, "store snapshot failed");
                let _ = failed
                    .send(Err(std::io::Error::other(err.to_string())))
                    .await;
            }
        }
    });
    let first = match rx.recv().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(err)) => return Err(ApiError::internal(format!("snapshot: {err}"))),
        None => return Err(ApiError::internal("snapshot: the store sent nothing")),
    };
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let body = futures_util::StreamExt::chain(
        futures_util::stream::once(std::future::ready(Ok(first))),
        rest,
    );
    Ok((
        [("content-type", "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response())
}

/// `berth-server snapshot save`: fetches the snapshot of the server `client` talks to
/// into `file` — written beside it first, checked, then renamed into place, so `file`
/// is either a whole, verified snapshot or untouched.
pub async fn save(client: kube::Client, file: &Path) -> anyhow::Result<Status> {
    let request = axum::http::Request::get(PATH).body(kube::client::Body::from(Vec::new()))?;
    let response = client
        .send(request)
        .await
        .context("requesting the snapshot")?;
    let code = response.status();
    let mut body = response.into_body();
    if !code.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        anyhow::bail!("the server refused the snapshot ({code}): {message}");
    }
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    let partial = std::path::PathBuf::from(name);
    let result = async {
        let mut out = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the snapshot from the server")?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)
                    .await
                    .with_context(|| format!("writing {}", partial.display()))?;
            }
        }
        out.sync_all()
            .await
            .with_context(|| format!("writing {}", partial.display()))?;
        let check = partial.clone();
        tokio::task::spawn_blocking(move || snapshot::status(&check))
            .await?
            .context("the snapshot the server sent does not verify")
    }
    .await;
    match result {
        Ok(status) => {
            tokio::fs::rename(&partial, file)
                .await
                .with_context(|| format!("renaming {} to {}", partial.display(), file.display()))?;
            Ok(status)
        }
        Err(err) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(err)
        }
    }
}
