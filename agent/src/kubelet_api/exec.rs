//! `/exec/{namespace}/{pod}/{container}?command=…&stdin=…&stdout=…&stderr=…&tty=…`
//! over a websocket with the Kubernetes channel protocols (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`): every binary message starts with a channel byte — 0 stdin,
//! 1 stdout, 2 stderr, 3 the final `Status`, 4 terminal resize, 255 (v5) close a
//! channel. The process runs through `berth-runtime exec`, as probes do; with a
//! terminal, resizes go to it through a FIFO.

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
const RESIZE: u8 = 4;
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

/// Ends a session with a normal-closure frame (kubectl reports a close without a
/// status code as an error).
pub(super) async fn close_normally(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>) {
    let frame = axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

/// The next data message from the client (binary or text, channel byte first);
/// `None` once it closes or the connection fails. Pings and pongs are skipped.
pub(super) async fn next_frame(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
) -> Option<Vec<u8>> {
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Binary(b) => return Some(b.to_vec()),
            Message::Text(t) => return Some(t.as_bytes().to_vec()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
    None
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

/// A FIFO through which terminal resizes reach `berth-runtime exec --tty`; removed on
/// drop.
struct ResizeFifo {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl ResizeFifo {
    fn new(dir: &std::path::Path, id: &str) -> Option<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::fs::create_dir_all(dir).ok()?;
        let path = dir.join(format!("{id}-{}-{n}.resize", std::process::id()));
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).ok()?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .ok()?;
        Some(Self { path, file })
    }

    /// Passes on a channel-4 message: `{"Width": w, "Height": h}`.
    fn resize(&mut self, json: &[u8]) {
        use std::io::Write;
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
            return;
        };
        let (Some(w), Some(h)) = (v["Width"].as_u64(), v["Height"].as_u64()) else {
            return;
        };
        let _ = writeln!(self.file, "{w} {h}");
    }
}

impl Drop for ResizeFifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn session(ctx: Arc<Ctx>, id: String, opts: Options, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let mut resize = if opts.tty {
        ResizeFifo::new(&ctx.pods_dir.join(".exec"), &id)
    } else {
        None
    };
    // kubectl sends the terminal's size first thing: wait briefly for it so the
    // process starts with it (input arriving meanwhile is kept for the process).
    let mut early_stdin: Vec<Vec<u8>> = Vec::new();
    if let Some(r) = resize.as_mut() {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, stream.next()).await {
            let Message::Binary(b) = msg else { continue };
            match b.split_first() {
                Some((&RESIZE, rest)) => {
                    r.resize(rest);
                    break;
                }
                Some((&STDIN, rest)) => early_stdin.push(rest.to_vec()),
                _ => {}
            }
        }
    }
    let mut cmd = tokio::process::Command::from(ctx.runtime.exec_command(
        &id,
        &opts.command,
        opts.tty,
        resize.as_ref().map(|r| r.path.as_path()),
    ));
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
    if let Some(w) = stdin.as_mut() {
        for chunk in early_stdin {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
    }
    let writer = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if sink.send(Message::Binary(chunk.into())).await.is_err() {
                return None;
            }
        }
        Some(sink)
    });
    let reader = async {
        while let Some(data) = next_frame(&mut stream).await {
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
                RESIZE => {
                    if let Some(r) = resize.as_mut() {
                        r.resize(rest);
                    }
                }
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
        close_normally(&mut sink).await;
    }
}
