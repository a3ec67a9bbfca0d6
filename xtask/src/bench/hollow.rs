//! A hollow kubelet inside a bench's load process, for every node named `hollow-*`:
//! one watch on all pods (a list first, then events from its resourceVersion; a list
//! again after a 410), and for each pod bound to a hollow node the status writes a
//! kubelet makes — Running and Ready with its own IP, then, for a Job's pod,
//! Succeeded with its containers terminated (exit code 0, `finishedAt`) — and the
//! final delete (grace 0) of a pod being deleted gracefully. The status shapes are
//! those of `control-plane/tests/hollow/mod.rs`. Writes go out concurrently over a
//! few HTTP/2 connections, so the kubelet keeps up with thousands of pods a second.
//! Entry point: [`Kubelet::start`].

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use super::apiserver::{Conn, Target};

/// The name prefix of the nodes this kubelet stands in for.
pub(super) const NODE_PREFIX: &str = "hollow-";
/// Connections the status writes are spread over.
const CONNS: usize = 4;
/// Status writes in flight at once.
const IN_FLIGHT: usize = 96;

/// What the kubelet has written so far.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) running: AtomicUsize,
    pub(super) succeeded: AtomicUsize,
    pub(super) deleted: AtomicUsize,
    pub(super) errors: AtomicUsize,
}

impl Counts {
    /// Status writes and deletes done, failed ones included.
    pub(super) fn writes(&self) -> usize {
        self.running.load(Ordering::Relaxed)
            + self.succeeded.load(Ordering::Relaxed)
            + self.deleted.load(Ordering::Relaxed)
            + self.errors.load(Ordering::Relaxed)
    }
}

/// The kubelet's tasks; stopped on drop.
pub(super) struct Kubelet {
    pub(super) counts: Arc<Counts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One thing a kubelet writes for a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Step {
    Run,
    Succeed,
    Delete,
}

#[derive(Debug)]
struct Write {
    step: Step,
    ns: String,
    name: String,
    body: Bytes,
}

impl Kubelet {
    /// Lists the pods, starts the watch and the writers.
    pub(super) async fn start(target: &Target) -> Result<Self> {
        let counts = Arc::new(Counts::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let mut conns = Vec::new();
        for _ in 0..CONNS {
            conns.push(Conn::connect(target).await?);
        }
        let writer = tokio::spawn(write_all(conns, rx, counts.clone()));
        let watch_conn = Conn::connect(target).await?;
        let watcher = tokio::spawn(async move {
            if let Err(err) = watch(watch_conn, tx).await {
                eprintln!("bench: hollow kubelet: watch failed: {err:#}");
            }
        });
        Ok(Self {
            counts,
            tasks: vec![writer, watcher],
        })
    }
}

async fn write_all(conns: Vec<Conn>, mut rx: mpsc::UnboundedReceiver<Write>, counts: Arc<Counts>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut next = 0usize;
    while let Some(w) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut conn = conns[next % conns.len()].clone();
        next += 1;
        let counts = counts.clone();
        tokio::spawn(async move {
            let (method, path, media) = match w.step {
                Step::Run | Step::Succeed => (
                    Method::PATCH,
                    format!("/api/v1/namespaces/{}/pods/{}/status", w.ns, w.name),
                    "application/merge-patch+json",
                ),
                Step::Delete => (
                    Method::DELETE,
                    format!(
                        "/api/v1/namespaces/{}/pods/{}?gracePeriodSeconds=0",
                        w.ns, w.name
                    ),
                    "application/json",
                ),
            };
            let counter = match conn.call(method, &path, media, w.body).await {
                Ok(_) => match w.step {
                    Step::Run => &counts.running,
                    Step::Succeed => &counts.succeeded,
                    Step::Delete => &counts.deleted,
                },
                Err(_) => &counts.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// Lists all pods, handles them, and watches from the list's resourceVersion; lists
/// again when the watch ends with an error (410 Gone) or the stream closes.
async fn watch(mut conn: Conn, tx: mpsc::UnboundedSender<Write>) -> Result<()> {
    let mut kubelet = State::default();
    loop {
        let list = conn
            .call(
                Method::GET,
                "/api/v1/pods",
                "application/json",
                Bytes::new(),
            )
            .await?;
        let list: Value = serde_json::from_slice(&list)?;
        for pod in list["items"].as_array().into_iter().flatten() {
            kubelet.handle(pod, &tx);
        }
        let mut rv = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_owned();
        // Watches resume from the last event seen until the server says the version is gone.
        'watch: loop {
            let path = format!(
                "/api/v1/pods?watch=1&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=3600"
            );
            let req = conn.request(Method::GET, &path, "application/json", Bytes::new())?;
            conn.send.ready().await?;
            let resp = conn.send.send_request(req).await?;
            if resp.status() != StatusCode::OK {
                bail!("watch pods: {}", resp.status());
            }
            let mut body = resp.into_body();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let event: Option<Value> = serde_json::from_slice(&buf[..nl]).ok();
                    buf.drain(..=nl);
                    let Some(event) = event else { continue };
                    if event["type"] == "ERROR" {
                        break 'watch;
                    }
                    if let Some(v) = event
                        .pointer("/object/metadata/resourceVersion")
                        .and_then(Value::as_str)
                    {
                        v.clone_into(&mut rv);
                    }
                    if event["type"] == "ADDED" || event["type"] == "MODIFIED" {
                        kubelet.handle(&event["object"], &tx);
                    }
                }
            }
        }
    }
}

/// What the kubelet has already queued, so repeated events do not write twice.
#[derive(Default)]
struct State {
    queued: HashSet<(String, Step)>,
    next_ip: u32,
}

impl State {
    fn handle(&mut self, pod: &Value, tx: &mpsc::UnboundedSender<Write>) {
        let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str) else {
            return;
        };
        if !node.starts_with(NODE_PREFIX) {
            return;
        }
        let meta = &pod["metadata"];
        let (Some(ns), Some(name), Some(uid)) = (
            meta["namespace"].as_str(),
            meta["name"].as_str(),
            meta["uid"].as_str(),
        ) else {
            return;
        };
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Pending");
        let step = if !meta["deletionTimestamp"].is_null() {
            Step::Delete
        } else {
            match phase {
                "Succeeded" | "Failed" => return,
                "Running" if is_job_pod(meta) => Step::Succeed,
                "Running" => return,
                _ => Step::Run,
            }
        };
        if !self.queued.insert((uid.to_owned(), step)) {
            return;
        }
        let now = rfc3339(unix_now());
        let body = match step {
            Step::Run => {
                let n = self.next_ip;
                self.next_ip = n.wrapping_add(1);
                let ip = format!("10.{}.{}.{}", 64 + (n >> 16) % 64, (n >> 8) & 255, n & 255);
                running(pod, &ip, &now)
            }
            Step::Succeed => succeeded(pod, &now),
            Step::Delete => Value::Null,
        };
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let _ = tx.send(Write {
            step,
            ns: ns.to_owned(),
            name: name.to_owned(),
            body,
        });
    }
}

fn is_job_pod(meta: &Value) -> bool {
    meta["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["kind"] == "Job" && r["controller"] == true)
}

fn containers(pod: &Value) -> impl Iterator<Item = (&str, &str)> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default(),
                c["image"].as_str().unwrap_or_default(),
            )
        })
}

/// The status of a started pod: Running, Ready, its IP and running containers.
fn running(pod: &Value, ip: &str, now: &str) -> Value {
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    let statuses: Vec<Value> = containers(pod)
        .map(|(name, image)| {
            json!({"name": name, "image": image, "imageID": "", "ready": true, "started": true,
                "restartCount": 0, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
        "startTime": now,
        "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
        "containerStatuses": statuses,
    }})
}

/// The status of a pod whose containers all exited 0.
fn succeeded(pod: &Value, now: &str) -> Value {
    let started = pod
        .pointer("/status/startTime")
        .and_then(Value::as_str)
        .unwrap_or(now);
    let statuses: Vec<Value> = containers(pod)
        .map(|(name, image)| {
            json!({"name": name, "image": image, "imageID": "", "ready": false,
                "started": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                    "startedAt": started, "finishedAt": now}}})
        })
        .collect();
    let not = |t: &str| json!({"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": now});
    json!({"status": {
        "phase": "Succeeded",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            not("ContainersReady"), not("Ready")],
        "containerStatuses": statuses,
    }})
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// `secs` since the epoch as an RFC 3339 UTC time (`metav1.Time`'s wire format), by
/// Howard Hinnant's days-to-civil algorithm.
fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    fn pod(node: &str, phase: Option<&str>, owner: Option<&str>) -> Value {
        let mut p = json!({
            "metadata": {"namespace": "ns", "name": "p", "uid": "u1"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
        });
        if let Some(phase) = phase {
            p["status"] = json!({"phase": phase, "startTime": "2026-01-01T00:00:00Z"});
        }
        if let Some(kind) = owner {
            p["metadata"]["ownerReferences"] =
                json!([{"kind": kind, "name": "o", "controller": true}]);
        }
        p
    }

    fn steps(pods: &[Value]) -> Vec<Step> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut state = State::default();
        for p in pods {
            state.handle(p, &tx);
        }
        drop(tx);
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|w| w.step)
            .collect()
    }

    #[test]
    fn bound_pods_run_once_and_job_pods_then_succeed() {
        let pending = pod("hollow-1", None, Some("Job"));
        let running = pod("hollow-1", Some("Running"), Some("Job"));
        let done = pod("hollow-1", Some("Succeeded"), Some("Job"));
        assert_eq!(
            steps(&[pending.clone(), pending, running.clone(), running, done]),
            [Step::Run, Step::Succeed]
        );
        let sts = pod("hollow-1", Some("Running"), Some("StatefulSet"));
        assert!(steps(&[sts]).is_empty(), "a service pod keeps running");
        assert!(steps(&[pod("real-node", None, None)]).is_empty());
        assert!(steps(&[json!({"metadata": {"name": "unbound"}})]).is_empty());
    }

    #[test]
    fn statuses_carry_what_controllers_read() {
        let p = pod("hollow-1", Some("Running"), Some("Job"));
        let run = running(&p, "10.64.0.1", "2026-01-01T00:00:01Z");
        assert_eq!(run["status"]["conditions"][3]["type"], "Ready");
        assert_eq!(run["status"]["podIP"], "10.64.0.1");
        let end = succeeded(&p, "2026-01-01T00:00:02Z");
        let term = &end["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(term["exitCode"], 0);
        assert_eq!(term["finishedAt"], "2026-01-01T00:00:02Z");
        assert_eq!(term["startedAt"], "2026-01-01T00:00:00Z");
    }
}
