//! `/exec/{namespace}/{pod}/{container}?command=…&stdin=…&stdout=…&stderr=…&tty=…`
//! over a websocket with the Kubernetes channel protocols (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`): every binary message starts with a channel byte — 0 stdin,
//! 1 stdout, 2 stderr, 3 the final `Status`, 4 terminal resize, 255 (v5) close a
//! channel. The process runs through `berth-runtime exec`, as probes do.

use std::process::Stdio;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pods::Ctx;

pub(super) const STDIN: u8 = 0;
pub(super) const STDOUT: u8 = 1;
pub(super) const STDERR: u8 = 2;
const ERROR: u8 = 3;
pub(super) const CLOSE: u8 = 255;
/// The channel protocols served, newest first.
pub(super) const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

#[derive(Debug, Default)]
pub(super) struct Options {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

pub(super) fn options(query: Option<&str>) -> Options {
    let mut o = Options::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let on = matches!(v.as_ref(), "true" | "1");
        match k.as_ref() {
            "command" => o.command.push(v.into_owned()),
            "input" | "stdin" => o.stdin = on,
            "output" | "stdout" => o.stdout = on,
            "error" | "stderr" => o.stderr = on,
            "tty" => o.tty = on,
            _ => {}
        }
    }
    o
}

pub async fn exec(
    ws: WebSocketUpgrade,
    State(ctx): State<Arc<Ctx>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let opts = options(query.as_deref());
    if opts.command.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "you must specify at least one command",
        )
            .into_response();
    }
    let ctx2 = ctx.clone();
    let (n2, p2, c2) = (ns.clone(), pod.clone(), container.clone());
    let id = tokio::task::spawn_blocking(move || super::find_container(&ctx2, &n2, &p2, &c2))
        .await
        .ok()
        .flatten();
    let running = match &id {
        Some(id) => {
            let ctx2 = ctx.clone();
            let id = id.clone();
            tokio::task::spawn_blocking(move || {
                ctx2.runtime
                    .status(&id)
                    .is_ok_and(|s| s.state == berth_runtime::pod::ContainerState::Running)
            })
            .await
            .unwrap_or(false)
        }
        None => false,
    };
    let Some(id) = id.filter(|_| running) else {
        return (
            StatusCode::NOT_FOUND,
            format!("container {container} is not running in pod {ns}/{pod}"),
        )
            .into_response();
    };
    ws.protocols(PROTOCOLS)
        .on_upgrade(move |socket| session(ctx, id, opts, socket))
}

pub(super) fn status_message(code: Option<i32>) -> Vec<u8> {
    let status = match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(c) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {c}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]},
        }),
        None => json!({
            "metadata": {},
            "status": "Failure",
            "message": "the command was killed",
            "reason": "InternalError",
        }),
    };
    let mut out = vec![ERROR];
    out.extend(status.to_string().into_bytes());
    out
}

async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    channel: u8,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf[0] = channel;
                if tx.send(buf[..=n].to_vec()).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn session(ctx: Arc<Ctx>, id: String, opts: Options, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let mut cmd =
        tokio::process::Command::from(ctx.runtime.exec_command(&id, &opts.command, opts.tty));
    cmd.stdin(if opts.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let mut msg = vec![STDERR];
            msg.extend(format!("exec: {e}\n").into_bytes());
            let _ = sink.send(Message::Binary(msg.into())).await;
            let _ = sink
                .send(Message::Binary(status_message(Some(126)).into()))
                .await;
            return;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(32);
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, STDOUT, tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        // With a terminal, stderr is the terminal too; the runtime's own errors still
        // come here.
        pumps.push(tokio::spawn(pump(err, STDERR, tx.clone())));
    }
    drop(tx);
    let mut stdin = child.stdin.take();
    let writer = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if sink.send(Message::Binary(chunk.into())).await.is_err() {
                return None;
            }
        }
        Some(sink)
    });
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, rest)) = data.split_first() else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(w) = stdin.as_mut()
                        && w.write_all(rest).await.is_err()
                    {
                        stdin = None;
                    }
                }
                CLOSE if rest.first() == Some(&STDIN) => stdin = None,
                _ => {}
            }
        }
    };
    let status = tokio::select! {
        s = child.wait() => s.ok(),
        () = reader => {
            // The client went away: stop the process.
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    };
    for p in pumps {
        let _ = p.await;
    }
    let code = status.and_then(|s| s.code());
    if let Ok(Some(mut sink)) = writer.await {
        let _ = sink
            .send(Message::Binary(status_message(code).into()))
            .await;
        let _ = sink
            .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                code: axum::extract::ws::close_code::NORMAL,
                reason: "".into(),
            })))
            .await;
    }
}
