//! `/portForward/{namespace}/{pod}`: SPDY/3.1 with the `portforward.k8s.io` protocol,
//! what `kubectl port-forward` speaks (through the apiserver's `pods/portforward`).
//! The client opens a pair of streams per connection — `streamType: error` and
//! `streamType: data`, with `port` and `requestID` headers; the agent connects to
//! that port on the pod's loopback, inside the pod's network namespace, and copies
//! bytes both ways; a failure to connect is written to the error stream.
//! Websocket upgrades are refused with 400 so kubectl falls back to SPDY.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{self, FLAG_FIN, Frame, Headers};
use crate::pods::Ctx;

const PROTOCOL: &str = "portforward.k8s.io";

/// The pod's sandbox network namespace, from its uid in the log directory name.
fn pod_netns(ctx: &Ctx, ns: &str, pod: &str) -> Option<PathBuf> {
    let prefix = format!("{ns}_{pod}_");
    let uid = std::fs::read_dir(&ctx.logs_dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .find(|n| n.starts_with(&prefix))?
        .rsplit('_')
        .next()?
        .to_owned();
    ctx.runtime.sandbox(&uid).ok().map(|s| s.netns)
}

pub async fn port_forward(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    mut req: Request,
) -> Response {
    let upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if upgrade != "spdy/3.1" {
        return (
            StatusCode::BAD_REQUEST,
            "port forwarding needs an upgrade to SPDY/3.1 (portforward.k8s.io)",
        )
            .into_response();
    }
    let ctx2 = ctx.clone();
    let (n2, p2) = (ns.clone(), pod.clone());
    let Some(netns) = tokio::task::spawn_blocking(move || pod_netns(&ctx2, &n2, &p2))
        .await
        .ok()
        .flatten()
    else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} has no sandbox on this node"),
        )
            .into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => session(hyper_util::rt::TokioIo::new(io), netns).await,
            Err(err) => tracing::debug!(%err, "port-forward upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", PROTOCOL)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Connects to `127.0.0.1:port` from inside the network namespace at `netns`.
async fn connect(netns: PathBuf, port: u16) -> Result<tokio::net::TcpStream, String> {
    let std_stream = tokio::task::spawn_blocking(move || {
        crate::netns::run_in(&netns, || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                std::time::Duration::from_secs(5),
            )
            .map_err(|e| format!("dial tcp4 127.0.0.1:{port}: {e}"))
        })
    })
    .await
    .map_err(|e| e.to_string())??;
    std_stream
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(std_stream).map_err(|e| e.to_string())
}

#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

async fn session<T>(io: T, netns: PathBuf)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut headers = Headers::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Writers into the pod's sockets, by data stream id.
    let mut sockets: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    loop {
        let frame = match spdy::read_frame(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(%err, "port-forward session ended");
                break;
            }
        };
        match frame {
            Frame::Control {
                kind: spdy::SYN_STREAM,
                data,
                ..
            } if data.len() >= 10 => {
                let stream = u32::from_be_bytes([data[0] & 0x7f, data[1], data[2], data[3]]);
                let h = match headers.decode(&data[10..]) {
                    Ok(h) => h,
                    Err(err) => {
                        tracing::debug!(%err, "bad SPDY headers");
                        break;
                    }
                };
                let block = headers.encode(&[]);
                let mut reply = stream.to_be_bytes().to_vec();
                reply.extend_from_slice(&block);
                let _ = tx
                    .send(spdy::control_frame(spdy::SYN_REPLY, 0, &reply))
                    .await;
                let id = h.get("requestid").cloned().unwrap_or_default();
                let pair = pairs.entry(id.clone()).or_default();
                pair.port = h.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
                match h.get("streamtype").map(String::as_str) {
                    Some("error") => pair.error = Some(stream),
                    Some("data") => pair.data = Some(stream),
                    _ => {}
                }
                if let (Some(error), Some(data_stream)) = (pair.error, pair.data) {
                    let port = pair.port;
                    pairs.remove(&id);
                    let (in_tx, in_rx) = mpsc::channel::<Option<Vec<u8>>>(64);
                    sockets.insert(data_stream, in_tx);
                    tokio::spawn(forward(
                        netns.clone(),
                        port,
                        data_stream,
                        error,
                        in_rx,
                        tx.clone(),
                    ));
                }
            }
            Frame::Control {
                kind: spdy::PING,
                flags,
                data,
            } => {
                let _ = tx.send(spdy::control_frame(spdy::PING, flags, &data)).await;
            }
            Frame::Control {
                kind: spdy::GOAWAY, ..
            } => break,
            Frame::Control {
                kind: spdy::RST_STREAM,
                data,
                ..
            } if data.len() >= 4 => {
                let stream = u32::from_be_bytes([data[0] & 0x7f, data[1], data[2], data[3]]);
                if let Some(s) = sockets.remove(&stream) {
                    let _ = s.send(None).await;
                }
            }
            Frame::Control { .. } => {}
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                if let Some(s) = sockets.get(&stream) {
                    if !data.is_empty() && s.send(Some(data)).await.is_err() {
                        sockets.remove(&stream);
                        continue;
                    }
                    if flags & FLAG_FIN != 0 {
                        let _ = s.send(None).await;
                        sockets.remove(&stream);
                    }
                }
            }
        }
    }
    drop(sockets);
    drop(tx);
    let _ = writer.await;
}

/// One forwarded connection: the pod's socket ↔ the data stream.
async fn forward(
    netns: PathBuf,
    port: u16,
    data: u32,
    error: u32,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let sock = match connect(netns, port).await {
        Ok(s) => s,
        Err(err) => {
            let msg = format!("error forwarding port {port} to pod: {err}");
            let _ = tx
                .send(spdy::data_frame(error, FLAG_FIN, msg.as_bytes()))
                .await;
            let _ = tx.send(spdy::data_frame(data, FLAG_FIN, &[])).await;
            return;
        }
    };
    let _ = tx.send(spdy::data_frame(error, FLAG_FIN, &[])).await;
    let (mut srd, mut swr) = sock.into_split();
    let up = tokio::spawn(async move {
        while let Some(chunk) = from_client.recv().await {
            match chunk {
                Some(bytes) => {
                    if swr.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = swr.shutdown().await;
                    return;
                }
            }
        }
        let _ = swr.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match srd.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(spdy::data_frame(data, FLAG_FIN, &[])).await;
                break;
            }
            Ok(n) => {
                if tx.send(spdy::data_frame(data, 0, &buf[..n])).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = up.await;
}
