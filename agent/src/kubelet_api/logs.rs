//! `/containerLogs/{namespace}/{pod}/{container}`: the CRI log files the runtime
//! writes, rendered as `kubectl logs` shows them, with `follow`, `tailLines`,
//! `sinceSeconds`, `previous`, `timestamps` and `limitBytes`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::pods::Ctx;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    tail_lines: Option<i64>,
    #[serde(default)]
    since_seconds: Option<i64>,
    #[serde(default)]
    previous: Option<String>,
    #[serde(default)]
    timestamps: Option<String>,
    #[serde(default)]
    limit_bytes: Option<u64>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | ""))
}

/// One CRI log line: (timestamp, stream, full line?, content).
fn parse_line(line: &str) -> Option<(&str, &str, bool, &str)> {
    let mut parts = line.splitn(4, ' ');
    let ts = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or("");
    Some((ts, stream, tag != "P", content))
}

/// The log files of `container` in pod `ns/name`: (latest, previous).
pub fn log_files(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    container: &str,
) -> (Option<PathBuf>, Option<PathBuf>) {
    let prefix = format!("{ns}_{name}_");
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(&ctx.logs_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .flat_map(|e| {
            std::fs::read_dir(e.path().join(container))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|e| {
            let n: u32 = e.file_name().to_str()?.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    files.sort();
    let latest = files.pop().map(|(_, p)| p);
    let previous = files.pop().map(|(_, p)| p);
    (latest, previous)
}

/// Renders CRI lines as `kubectl logs` shows them.
fn render(text: &str, q: &LogQuery, since_ns: Option<i128>) -> Vec<String> {
    let mut out = Vec::new();
    let mut partial = String::new();
    for line in text.lines() {
        let Some((ts, _stream, full, content)) = parse_line(line) else {
            continue;
        };
        if let Some(since) = since_ns {
            let t = ts
                .parse::<jiff::Timestamp>()
                .map(|t| t.as_nanosecond())
                .unwrap_or(0);
            if t < since {
                continue;
            }
        }
        if partial.is_empty() && flag(&q.timestamps) {
            partial.push_str(ts);
            partial.push(' ');
        }
        partial.push_str(content);
        if full {
            partial.push('\n');
            out.push(std::mem::take(&mut partial));
        }
    }
    if !partial.is_empty() {
        out.push(partial);
    }
    out
}

pub async fn container_logs(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let (latest, previous) = log_files(&ctx, &ns, &pod, &container);
    let file = if flag(&q.previous) { previous } else { latest };
    let Some(path) = file else {
        let msg = if flag(&q.previous) {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start or does not exist"
            )
        };
        return (StatusCode::NOT_FOUND, msg).into_response();
    };
    let since_ns = q
        .since_seconds
        .map(|s| jiff::Timestamp::now().as_nanosecond() - (s as i128) * 1_000_000_000);
    let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    let mut lines = render(&text, &q, since_ns);
    if let Some(n) = q.tail_lines
        && n >= 0
        && lines.len() > n as usize
    {
        lines.drain(..lines.len() - n as usize);
    }
    let mut body: String = lines.concat();
    if let Some(limit) = q.limit_bytes
        && body.len() as u64 > limit
    {
        let mut cut = limit as usize;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    if !flag(&q.follow) || flag(&q.previous) {
        return body.into_response();
    }
    // Follow: what is there now, then whatever is appended until the container stops.
    let offset = text.len() as u64;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    let ctx2 = ctx.clone();
    tokio::spawn(async move {
        if tx.send(Ok(bytes::Bytes::from(body))).await.is_err() {
            return;
        }
        follow(ctx2, path, offset, q, tx).await;
    });
    Body::from_stream(tokio_stream_from(rx)).into_response()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Whether the container writing `path` still runs (its id is the log's directory
/// `<pod dir>/<container>/<n>.log` → `<uid>-<container>-<n>`).
fn writer_running(ctx: &Ctx, path: &Path) -> bool {
    let n = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let container = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|s| s.to_str())
        .unwrap_or("");
    let uid = path
        .parent()
        .and_then(Path::parent)
        .and_then(|p| p.file_name())
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit('_').next())
        .unwrap_or("");
    ctx.runtime
        .status(&format!("{uid}-{container}-{n}"))
        .is_ok_and(|s| s.state == berth_runtime::pod::ContainerState::Running)
}

async fn follow(
    ctx: Arc<Ctx>,
    path: PathBuf,
    mut offset: u64,
    q: LogQuery,
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
) {
    let mut carry = String::new();
    loop {
        let p = path.clone();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut f = std::fs::File::open(&p)?;
            let len = f.metadata()?.len();
            if len < offset {
                // Rotated: start over from the new file.
                return Ok(Vec::new());
            }
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await;
        let chunk = match read {
            Ok(Ok(b)) => b,
            _ => Vec::new(),
        };
        if chunk.is_empty() {
            if tx.is_closed() {
                return;
            }
            let ctx2 = ctx.clone();
            let p = path.clone();
            let running = tokio::task::spawn_blocking(move || writer_running(&ctx2, &p))
                .await
                .unwrap_or(false);
            if !running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        offset += chunk.len() as u64;
        carry.push_str(&String::from_utf8_lossy(&chunk));
        let complete = match carry.rfind('\n') {
            Some(i) => carry.drain(..=i).collect::<String>(),
            None => continue,
        };
        let out = render(&complete, &q, None).concat();
        if !out.is_empty() && tx.send(Ok(bytes::Bytes::from(out))).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cri_lines() {
        let text = "2026-01-01T00:00:00.000000001Z stdout P hel\n2026-01-01T00:00:00.000000002Z stdout F lo\n2026-01-01T00:00:01Z stderr F second\n";
        let q = LogQuery::default();
        assert_eq!(render(text, &q, None), vec!["hello\n", "second\n"]);
        let q = LogQuery {
            timestamps: Some("true".into()),
            ..Default::default()
        };
        assert_eq!(render(text, &q, None)[1], "2026-01-01T00:00:01Z second\n");
    }
}
