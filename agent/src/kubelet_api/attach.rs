//! `/attach/{namespace}/{pod}/{container}`: the running container's own output and,
//! for a container with `stdin: true`, its input — over the same websocket channel
//! protocols as exec. Output is what the monitor writes to the container's CRI log
//! from the moment of attaching (stdout on channel 1, stderr on 2); input goes into
//! the stdin FIFO the monitor holds open. The session ends when the container stops
//! or the client leaves.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::exec::{self, CLOSE, PROTOCOLS, STDERR, STDIN, STDOUT};
use crate::pods::Ctx;

pub async fn attach(
    ws: WebSocketUpgrade,
    State(ctx): State<Arc<Ctx>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let opts = exec::options(query.as_deref());
    let ctx2 = ctx.clone();
    let (n2, p2, c2) = (ns.clone(), pod.clone(), container.clone());
    let found = tokio::task::spawn_blocking(move || {
        let id = super::find_container(&ctx2, &n2, &p2, &c2)?;
        let st = ctx2.runtime.status(&id).ok()?;
        (st.state == berth_runtime::pod::ContainerState::Running).then(|| {
            let stdin = ctx2.runtime.stdin_path(&id);
            (id, st.log_path, stdin.exists().then_some(stdin))
        })
    })
    .await
    .ok()
    .flatten();
    let Some((id, log_path, stdin)) = found else {
        return (
            StatusCode::NOT_FOUND,
            format!("container {container} is not running in pod {ns}/{pod}"),
        )
            .into_response();
    };
    if opts.stdin && stdin.is_none() {
        return (
            StatusCode::BAD_REQUEST,
            format!("container {container} in pod {ns}/{pod} was not created with stdin: true"),
        )
            .into_response();
    }
    let stdin = if opts.stdin { stdin } else { None };
    ws.protocols(PROTOCOLS)
        .on_upgrade(move |socket| session(ctx, id, log_path, stdin, opts.tty, socket))
}

async fn session(
    ctx: Arc<Ctx>,
    id: String,
    log_path: std::path::PathBuf,
    stdin: Option<std::path::PathBuf>,
    tty: bool,
    socket: WebSocket,
) {
    let (mut sink, mut stream) = socket.split();
    let mut fifo = match &stdin {
        Some(p) => tokio::fs::OpenOptions::new().write(true).open(p).await.ok(),
        None => None,
    };
    let input = async {
        while let Some(data) = super::exec::next_frame(&mut stream).await {
            match data.split_first() {
                Some((&STDIN, rest)) => {
                    if let Some(f) = fifo.as_mut()
                        && f.write_all(rest).await.is_err()
                    {
                        fifo = None;
                    }
                }
                Some((&CLOSE, rest)) if rest.first() == Some(&STDIN) => fifo = None,
                _ => {}
            }
        }
    };
    let output = async {
        let mut offset = tokio::fs::metadata(&log_path).await.map_or(0, |m| m.len());
        let mut carry = String::new();
        loop {
            let mut chunk = Vec::new();
            if let Ok(mut f) = tokio::fs::File::open(&log_path).await
                && f.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
            {
                let _ = f.read_to_end(&mut chunk).await;
            }
            if chunk.is_empty() {
                let ctx2 = ctx.clone();
                let id2 = id.clone();
                let running = tokio::task::spawn_blocking(move || {
                    ctx2.runtime
                        .status(&id2)
                        .is_ok_and(|s| s.state == berth_runtime::pod::ContainerState::Running)
                })
                .await
                .unwrap_or(false);
                if !running {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            offset += chunk.len() as u64;
            carry.push_str(&String::from_utf8_lossy(&chunk));
            let Some(end) = carry.rfind('\n') else {
                continue;
            };
            let complete: String = carry.drain(..=end).collect();
            for line in complete.lines() {
                // `<time> <stream> <P|F> <content>`
                let mut parts = line.splitn(4, ' ');
                let (_, Some(s), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                let mut bytes = parts.next().unwrap_or("").as_bytes().to_vec();
                if tag == "F" {
                    bytes.push(b'\n');
                }
                let channel = if s == "stderr" && !tty {
                    STDERR
                } else {
                    STDOUT
                };
                let mut frame = vec![channel];
                frame.extend(bytes);
                if sink.send(Message::Binary(frame.into())).await.is_err() {
                    return false;
                }
            }
        }
    };
    let ended = tokio::select! {
        ended = output => ended,
        () = input => false,
    };
    if ended {
        let _ = sink
            .send(Message::Binary(exec::status_message(Some(0)).into()))
            .await;
    }
    exec::close_normally(&mut sink).await;
}
