//! `cargo xtask bench apiserver`: a release berth-server on a fresh data dir, driven
//! over HTTPS/2 by a lean load process — `xtask apiserver-load`, built in release so
//! the client's own cost does not crowd the server off this machine's two cores (one
//! TLS connection per client, bodies read but not decoded into typed objects):
//! - idle RSS after start;
//! - 100 watchers on a namespace, and for 30 s 16 clients looping over
//!   create / get / update (merge patch) / list-of-1000 pods: per-verb p99 latency, and
//!   watch delivery latency from the create's acknowledgement to each watcher's event;
//!   every other get is made as a token user in no group whom only RBAC lets read,
//!   with 1 000 Roles and RoleBindings in the namespace (`authz_get` beside the
//!   admin's `get`, whose `system:masters` skips RBAC);
//! - durable creates/s with 16 clients for 10 s (each create fsync'd before its answer;
//!   group commit shares an fsync among concurrent writes);
//! - RSS with 10 000 pods stored.
//!
//! Baseline in the same run: durable puts/s of an etcd member (Debian's `etcd-server`,
//! the store Kubernetes runs on) with the same clients and value size; for latencies
//! and memory the table quotes Kubernetes' published SLOs and k3s' footprint.
//!
//! The etcd columns (issue 24): the same setup, mixed and throughput phases
//! (`apiserver-load --core-only`) against a release berth-server with `--etcd-servers`
//! over a fresh 1-member etcd, then over a fresh 3-member etcd (testkit's [`Etcd`]; data
//! dirs under the bench's target dir with etcd's default fsync, as the embedded store
//! fsyncs its log): `etcd_*` / `etcd3_*` create p99, creates/s and watch delivery p99,
//! and their ratios to the embedded store's, and the CPU time per create of the server,
//! the etcd members and the load client in the throughput phase (`*_cpu_ms_per_create`:
//! where the two cores go). [`ETCD_ONLY_ENV`] runs these alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use std::path::{Path, PathBuf};

use berth_testkit::{BerthServer, Etcd};

use super::Report;
use super::disk::{DiskMonitor, Stalls};
use super::stats::{median, percentile};
use crate::util;

const CLIENTS: usize = 16;
const WATCHERS: usize = 100;
/// Watch streams multiplexed on one HTTP/2 connection.
const WATCHES_PER_CONN: usize = 10;
/// Length of one round of the mixed phase.
const MIX_SECS: u64 = 10;
/// Rounds of the mixed phase, back to back on the same server and watchers (30 s in
/// all, the same load as before rounds): each latency figure is the median over the
/// rounds of that round's percentile, so one stall of this shared machine's disk (a
/// single write held 100–560 ms by the virtual disk, seen in one run in three) does not
/// stand for the whole run.
const MIX_ROUNDS: usize = 3;
/// Requests per second each client starts in the mixed phase; the last of every
/// RATE is a list of 1000 pods, the others cycle create / get / update.
const RATE_PER_CLIENT: usize = 40;
const CREATE_SECS: u64 = 10;
const PODS_FOR_RSS: usize = 10_000;
const TOKEN: &str = "berth-test-token";
/// A token user in no group (the test token file's `alice`): allowed only through RBAC.
const AUTHZ_TOKEN: &str = "alice-token";
/// Roles and RoleBindings (to other users) in the namespace the authorized gets read.
const RBAC_OBJECTS: usize = 1000;

fn pod(name: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{"app":"bench","tier":"web"}}}},"spec":{{"containers":[{{"name":"app","image":"registry.local/testserver:1","ports":[{{"containerPort":8080}}],"resources":{{"requests":{{"cpu":"10m","memory":"16Mi"}}}}}}]}}}}"#
    ))
}

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// A length-delimited protobuf field.
fn pb_field(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
    let varint = |mut v: u64, out: &mut Vec<u8>| {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    };
    varint(u64::from(number) << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// The same pod as [`pod`], as a client-go client sends it: `k8s\0` + `runtime.Unknown`
/// around a `k8s.io.api.core.v1.Pod` (field numbers from Kubernetes' generated.proto).
fn pod_protobuf(name: &str) -> Bytes {
    let f = |n: u32, b: &[u8]| {
        let mut out = Vec::new();
        pb_field(n, b, &mut out);
        out
    };
    let label = |k: &str, v: &str| f(11, &[f(1, k.as_bytes()), f(2, v.as_bytes())].concat());
    let meta = [
        f(1, name.as_bytes()),
        label("app", "bench"),
        label("tier", "web"),
    ]
    .concat();
    let quantity =
        |k: &str, v: &str| f(2, &[f(1, k.as_bytes()), f(2, &f(1, v.as_bytes()))].concat());
    let resources = [quantity("cpu", "10m"), quantity("memory", "16Mi")].concat();
    let port = [0x18, 0x90, 0x3f]; // containerPort (3) = 8080, varint
    let container = [
        f(1, b"app"),
        f(2, b"registry.local/testserver:1"),
        f(6, &port),
        f(8, &resources),
    ]
    .concat();
    let raw = [f(1, &meta), f(2, &f(2, &container))].concat();
    let type_meta = [f(1, b"v1"), f(2, b"Pod")].concat();
    let mut body = b"k8s\0".to_vec();
    for part in [f(1, &type_meta), f(2, &raw), f(3, b""), f(4, b"")] {
        body.extend_from_slice(&part);
    }
    Bytes::from(body)
}

/// The length-delimited fields numbered `number` at the top level of `msg`.
fn pb_fields(msg: &[u8], number: u32) -> Result<Vec<&[u8]>> {
    let varint = |at: &mut usize| -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *msg.get(*at).context("truncated varint")?;
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        bail!("varint too long")
    };
    let (mut at, mut out) = (0, Vec::new());
    while at < msg.len() {
        let key = varint(&mut at)?;
        match key & 7 {
            0 => drop(varint(&mut at)?),
            2 => {
                let len = usize::try_from(varint(&mut at)?)?;
                let field = msg.get(at..at + len).context("truncated field")?;
                if key >> 3 == u64::from(number) {
                    out.push(field);
                }
                at += len;
            }
            other => bail!("wire type {other} in a Kubernetes message"),
        }
    }
    Ok(out)
}

/// The number of items of a protobuf `PodList` answer.
fn protobuf_items(body: &[u8]) -> Result<usize> {
    let unknown = body.strip_prefix(b"k8s\0").context("no k8s\\0 prefix")?;
    let raw = pb_fields(unknown, 2)?;
    let list = raw.first().context("no raw in the envelope")?;
    Ok(pb_fields(list, 2)?.len())
}

pub(super) fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (ms, user + system) process `pid` has used so far, from `/proc/<pid>/stat`
/// (`utime` and `stime`, in the kernel's USER_HZ ticks of 10 ms); `None` once it is gone.
pub(super) fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields
    // after its closing one, where field 3 (state) is the first.
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let utime: f64 = rest.nth(11)?.parse().ok()?;
    let stime: f64 = rest.next()?.parse().ok()?;
    Some((utime + stime) * 10.0)
}

/// CPU time used by a set of processes between [`Self::start`] and [`Self::per`].
struct CpuUse(Vec<(u32, f64)>);

impl CpuUse {
    fn start(pids: &[u32]) -> Self {
        Self(
            pids.iter()
                .map(|&pid| (pid, cpu_ms(pid).unwrap_or(f64::NAN)))
                .collect(),
        )
    }

    /// The processes' CPU time since [`Self::start`], all together, per `n` operations
    /// (ms, three decimals); NaN for no processes.
    fn per(&self, n: usize) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let used: f64 = self
            .0
            .iter()
            .map(|&(pid, at)| cpu_ms(pid).unwrap_or(f64::NAN) - at)
            .sum();
        (used / n.max(1) as f64 * 1000.0).round() / 1000.0
    }
}

/// Where the load goes: the server's port on 127.0.0.1 and its cluster CA.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    #[arg(long)]
    pub port: u16,
    #[arg(long)]
    pub ca: PathBuf,
    /// The server's PID, for its RSS.
    #[arg(long)]
    pub pid: u32,
    /// The server's data directory: stalls of the disk it is on are reported.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// An etcd member's client port on 127.0.0.1: the baseline for durable writes.
    #[arg(long)]
    pub etcd_port: Option<u16>,
    /// The PIDs of the etcd members the server stores in (or of the baseline's
    /// member), for the CPU time they spend per write.
    #[arg(long = "etcd-pid")]
    pub etcd_pids: Vec<u32>,
    /// Only the Secret-create phase (run against a server that encrypts Secrets).
    #[arg(long)]
    pub secrets_only: bool,
    /// Only the setup, the mixed phase and the throughput phase, reporting create
    /// latency, watch delivery and creates/s ([`core_report`]): the etcd columns,
    /// run against servers over etcd.
    #[arg(long)]
    pub core_only: bool,
}

/// Secrets created per client in the Secret-create phase.
const SECRETS_PER_CLIENT: usize = 150;
/// Clients of the Secret-create phase.
const SECRET_CLIENTS: usize = 8;
/// Secrets each client creates first, unmeasured (a fresh server's first writes grow
/// its files and fill its caches).
const SECRET_WARMUP: usize = 20;
/// The fresh servers of the encryption comparison, in order: encrypted (`true`) or not.
/// Four of each, each side's positions averaging the same (3.5), so a drift of the
/// machine's speed through the runs weighs on both alike.
const SECRET_SERVERS: [bool; 8] = [false, true, true, false, true, false, false, true];
/// Server-side applies of one Deployment in the apply phase.
const APPLIES: usize = 400;

fn secret(name: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"bench": "secrets"}},
            "type": "Opaque",
            "data": {"password": "c2VjcmV0LXBhc3N3b3JkLTAxMjM0NTY3ODk=", "user": "YWRtaW4="},
        })
        .to_string(),
    )
}

/// Latencies (ms) of Secret creates, [`SECRET_CLIENTS`] clients back to back.
async fn secret_creates(server: &Target, ns: &str) -> Result<Vec<f64>> {
    let mut admin = Conn::connect(server).await?;
    namespace(&mut admin, ns).await?;
    let mut tasks = Vec::new();
    for c in 0..SECRET_CLIENTS {
        let mut conn = Conn::connect(server).await?;
        let path = format!("/api/v1/namespaces/{ns}/secrets");
        tasks.push(tokio::spawn(async move {
            for i in 0..SECRET_WARMUP {
                conn.call(
                    Method::POST,
                    &path,
                    "application/json",
                    secret(&format!("warmup-{c}-{i}")),
                )
                .await?;
            }
            let mut out = Vec::with_capacity(SECRETS_PER_CLIENT);
            for i in 0..SECRETS_PER_CLIENT {
                let started = Instant::now();
                conn.call(
                    Method::POST,
                    &path,
                    "application/json",
                    secret(&format!("s-{c}-{i}")),
                )
                .await?;
                out.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Latencies (ms) of server-side applies that update one Deployment (replicas and
/// image change every time), after the apply that creates it.
async fn applies(server: &Target) -> Result<Vec<f64>> {
    let mut conn = Conn::connect(server).await?;
    namespace(&mut conn, "apply").await?;
    let path = "/apis/apps/v1/namespaces/apply/deployments/web?fieldManager=bench&force=true";
    let config = |i: usize| {
        Bytes::from(
            serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": 1 + i % 5,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{
                            "name": "web", "image": format!("nginx:1.{}", i % 7),
                            "ports": [{"containerPort": 80}],
                            "env": [{"name": "MODE", "value": "bench"}],
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }]},
                    },
                },
            })
            .to_string(),
        )
    };
    let media = "application/apply-patch+yaml";
    conn.call(Method::PATCH, path, media, config(0)).await?;
    let mut out = Vec::with_capacity(APPLIES);
    for i in 1..=APPLIES {
        let started = Instant::now();
        conn.call(Method::PATCH, path, media, config(i)).await?;
        out.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// Durable puts/s of an etcd member (the store Kubernetes uses) through its JSON
/// gateway (`/v3/kv/put`, HTTP/1.1), the same value size and concurrency as berth's
/// throughput phase; and how many puts that was.
async fn etcd_puts_per_s(port: u16) -> Result<(f64, usize)> {
    use base64::Engine;
    let value = base64::engine::general_purpose::STANDARD.encode(pod("etcd-baseline"));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(CREATE_SECS);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let (done, value) = (done.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while Instant::now() < deadline {
                let key = base64::engine::general_purpose::STANDARD
                    .encode(format!("/registry/pods/etcd/e-{c}-{i}"));
                let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#);
                let req = Request::builder()
                    .method(Method::POST)
                    .uri("/v3/kv/put")
                    .header("host", format!("127.0.0.1:{port}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                send.ready().await?;
                let resp = send.send_request(req).await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                if !status.is_success() {
                    bail!("etcd put: {status}");
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let done = done.load(Ordering::Relaxed);
    Ok((done as f64 / started.elapsed().as_secs_f64(), done))
}

/// One HTTP/2 connection to the server, authenticated by bearer token.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    authority: String,
}

impl Conn {
    pub(super) async fn connect(server: &Target) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(&server.ca)?;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await?;
        // client-go's HTTP/2 flow-control windows (Go's transport: 4 MiB per stream,
        // 1 GiB per connection), so a large list streams as it does to kubectl and
        // controllers instead of stalling on hyper's smaller defaults.
        let (send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(1 << 30)
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        Ok(Self {
            send,
            authority: format!("127.0.0.1:{}", server.port),
        })
    }

    pub(super) fn request(
        &self,
        method: Method,
        path: &str,
        media: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>> {
        self.request_as(method, path, media, "application/json", body)
    }

    fn request_as(
        &self,
        method: Method,
        path: &str,
        media: &str,
        accept: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>> {
        self.request_with(TOKEN, method, path, media, accept, body)
    }

    fn request_with(
        &self,
        token: &str,
        method: Method,
        path: &str,
        media: &str,
        accept: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>> {
        Ok(Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", media)
            .header("accept", accept)
            .body(Full::new(body))?)
    }

    /// Sends a request and reads the whole answer; non-2xx is an error.
    pub(super) async fn call(
        &mut self,
        method: Method,
        path: &str,
        media: &str,
        body: Bytes,
    ) -> Result<Bytes> {
        self.call_as(method, path, media, "application/json", body)
            .await
    }

    /// [`Self::call`] with an `Accept` header (protobuf, as client-go asks:
    /// `application/vnd.kubernetes.protobuf, application/json`).
    async fn call_as(
        &mut self,
        method: Method,
        path: &str,
        media: &str,
        accept: &str,
        body: Bytes,
    ) -> Result<Bytes> {
        let req = self.request_as(method.clone(), path, media, accept, body)?;
        self.send_checked(method, path, req).await
    }

    /// A GET as the non-admin [`AUTHZ_TOKEN`] user.
    async fn get_as_user(&mut self, path: &str) -> Result<Bytes> {
        let req = self.request_with(
            AUTHZ_TOKEN,
            Method::GET,
            path,
            "application/json",
            "application/json",
            Bytes::new(),
        )?;
        self.send_checked(Method::GET, path, req).await
    }

    async fn send_checked(
        &mut self,
        method: Method,
        path: &str,
        req: Request<Full<Bytes>>,
    ) -> Result<Bytes> {
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }

    async fn create(&mut self, ns: &str, name: &str) -> Result<()> {
        self.call(
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/pods"),
            "application/json",
            pod(name),
        )
        .await
        .map(drop)
    }

    /// A create in protobuf, answered in protobuf (as kubectl's typed client does).
    async fn create_protobuf(&mut self, ns: &str, name: &str) -> Result<()> {
        let body = self
            .call_as(
                Method::POST,
                &format!("/api/v1/namespaces/{ns}/pods"),
                PROTOBUF,
                "application/vnd.kubernetes.protobuf, application/json",
                pod_protobuf(name),
            )
            .await?;
        anyhow::ensure!(body.starts_with(b"k8s\0"), "create answered no protobuf");
        Ok(())
    }
}

/// [`RBAC_OBJECTS`] Roles and RoleBindings for other users in `bench`, and last (in
/// the order RBAC walks a namespace's bindings) the binding that lets the
/// [`AUTHZ_TOKEN`] user read there.
async fn rbac_objects(conn: &mut Conn) -> Result<()> {
    let base = "/apis/rbac.authorization.k8s.io/v1/namespaces/bench";
    for i in 0..RBAC_OBJECTS {
        let role = format!(
            r#"{{"metadata":{{"name":"r-{i}"}},"rules":[{{"apiGroups":[""],"resources":["configmaps"],"resourceNames":["cm-{i}"],"verbs":["get"]}}]}}"#
        );
        conn.call(
            Method::POST,
            &format!("{base}/roles"),
            "application/json",
            Bytes::from(role),
        )
        .await?;
        let binding = format!(
            r#"{{"metadata":{{"name":"rb-{i}"}},"roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"r-{i}"}},"subjects":[{{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"user-{i}"}}]}}"#
        );
        conn.call(
            Method::POST,
            &format!("{base}/rolebindings"),
            "application/json",
            Bytes::from(binding),
        )
        .await?;
    }
    // A Role of its own (the aggregated `view` needs the controllers, off in this bench).
    let reader = r#"{"metadata":{"name":"pod-reader"},"rules":[{"apiGroups":[""],"resources":["pods"],"verbs":["get","list","watch"]}]}"#;
    conn.call(
        Method::POST,
        &format!("{base}/roles"),
        "application/json",
        Bytes::from(reader),
    )
    .await?;
    let binding = r#"{"metadata":{"name":"zz-pod-readers"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"pod-reader"},"subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"alice"}]}"#;
    conn.call(
        Method::POST,
        &format!("{base}/rolebindings"),
        "application/json",
        Bytes::from(binding),
    )
    .await?;
    // The binding counts once the authorizer has seen it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while conn
        .get_as_user("/api/v1/namespaces/bench/pods/seed-0")
        .await
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the RBAC user never got read access"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Waits (up to 60 s) until the server answers `/readyz` with 200: a server over etcd
/// listens, answering 503, before its store answers.
async fn wait_ready(conn: &mut Conn) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match conn
            .call(Method::GET, "/readyz", "application/json", Bytes::new())
            .await
        {
            Ok(_) => return Ok(()),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context("the server did not get ready (/readyz) in 60 s")),
        }
    }
}

/// Creates namespace `name` and, as the ServiceAccount controller would (the benches
/// run the apiserver without controllers), its `default` ServiceAccount, which pods
/// need to pass ServiceAccount admission.
pub(super) async fn namespace(conn: &mut Conn, name: &str) -> Result<()> {
    let body = Bytes::from(format!(r#"{{"metadata":{{"name":"{name}"}}}}"#));
    conn.call(Method::POST, "/api/v1/namespaces", "application/json", body)
        .await?;
    let account = Bytes::from_static(br#"{"metadata":{"name":"default"}}"#);
    conn.call(
        Method::POST,
        &format!("/api/v1/namespaces/{name}/serviceaccounts"),
        "application/json",
        account,
    )
    .await
    .map(drop)
}

/// Creates pods `prefix-0..n` in `ns` with `CLIENTS` concurrent connections.
async fn fill(server: &Target, ns: &str, prefix: &str, n: usize) -> Result<()> {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut conn = Conn::connect(server).await?;
        let (ns, prefix) = (ns.to_owned(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(CLIENTS) {
                conn.create(&ns, &format!("{prefix}-{i}")).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The pod name in an `ADDED` watch event line (`…"metadata":{…"name":"x"…`).
///
/// This and [`pods_in`] run in the load process's tasks for every event of every
/// watcher and for every list, so they search with memchr's SIMD finders and decode
/// only the name: a byte-by-byte scan of a 2.3 MB list (`windows(12)`) took about
/// 10 ms of a worker thread, and every request that worker was driving meanwhile
/// counted that as the server's latency.
fn event_name(line: &[u8]) -> Option<&str> {
    if !line.starts_with(b"{\"type\":\"ADDED\"") {
        return None;
    }
    let meta = memchr::memmem::find(line, b"\"metadata\":{")?;
    let rest = &line[meta..];
    let start = memchr::memmem::find(rest, b"\"name\":\"")? + 8;
    let end = memchr::memchr(b'"', &rest[start..])?;
    std::str::from_utf8(&rest[start..start + end]).ok()
}

/// How many pods a JSON list body holds (its items' `"kind":"Pod"`).
fn pods_in(body: &[u8]) -> usize {
    memchr::memmem::find_iter(body, b"\"kind\":\"Pod\"").count()
}

/// Set (to anything) to run only the etcd phases, for working on them without the
/// embedded store's six minutes (`BERTH_BENCH_APISERVER_ETCD_ONLY=1 cargo xtask bench
/// apiserver`). The report then holds the etcd figures alone — no ratios to the
/// embedded store, no `etcd_puts_per_s` — and, as every run does, replaces
/// `bench/results/apiserver.*`: not for published figures.
const ETCD_ONLY_ENV: &str = "BERTH_BENCH_APISERVER_ETCD_ONLY";

/// The etcd clusters of the etcd phases: (figure prefix, members, row label).
const ETCD_RUNS: [(&str, usize, &str); 2] = [("etcd", 1, "1 member"), ("etcd3", 3, "3 members")];

/// The release build, then the embedded store's phases, then the same setup, mixed and
/// throughput phases over a 1-member and over a 3-member etcd (see the module docs).
pub fn run() -> Result<Report> {
    if Etcd::binary().is_none() {
        bail!("etcd is not installed (Debian etcd-server; cargo xtask setup installs it)");
    }
    let began = Instant::now();
    // The apiserver alone: the scheduler and controllers have their own benches.
    let (release, server) = super::release_apiserver("apiserver")?;
    let data = util::target_dir().join("bench-apiserver");
    let mut report = if std::env::var_os(ETCD_ONLY_ENV).is_some() {
        util::step(format!("{ETCD_ONLY_ENV} is set: the etcd phases only"));
        drop(server);
        Report {
            header: header(),
            ..Report::default()
        }
    } else {
        let phase = Instant::now();
        let report = embedded(&release, &data, server)?;
        util::step(format!(
            "apiserver, embedded store: {:.0} s",
            phase.elapsed().as_secs_f64()
        ));
        report
    };
    for (prefix, members, label) in ETCD_RUNS {
        let phase = Instant::now();
        let etcd = over_etcd(&release, &data, members)?;
        util::step(format!(
            "apiserver over etcd, {label}: {:.0} s",
            phase.elapsed().as_secs_f64()
        ));
        etcd_column(&mut report, &etcd, prefix, members, label);
    }
    report.notes.push(format!(
        "etcd phases: after the embedded store's, a release berth-server with `--etcd-servers` (all members' client URLs) on a fresh Debian etcd 3.4 — first 1 member, then a 3-member cluster, every member on loopback ports of this machine and sharing its two cores — runs the same setup (1 000 pods to list, 200 to get and update, {RBAC_OBJECTS} Roles and RoleBindings), the same {MIX_ROUNDS} × {MIX_SECS} s mixed phase with {WATCHERS} watchers and the same {CREATE_SECS} s throughput phase as the embedded store (`apiserver-load --core-only`; the apply, Secret and RSS phases are not repeated); `etcd_*` and `etcd3_*` are its create p99 (JSON creates of the mixed phase), watch delivery p99, durable creates/s and the throughput phase's CPU time per create (`*_cpu_ms_per_create`: the server's, its etcd members' together and the load client's); each member's data dir is under target/bench-apiserver on the same disk as the embedded store's log (not tmpfs), with etcd's default fsync (each member fdatasyncs every raft log entry, and a write is acknowledged once a quorum has), so both stores pay for durability; `*_vs_embedded` = etcd figure / embedded figure of the same run (goal with one member: p99s ≤ 1.5, creates/s ≥ 0.67)"
    ));
    util::step(format!(
        "bench apiserver took {:.0} s (release build included)",
        began.elapsed().as_secs_f64()
    ));
    Ok(report)
}

/// The table's header (also of the report `apiserver-load` prints).
fn header() -> Vec<String> {
    ["measure", "berth p50", "berth p99", "goal", "anchor"]
        .map(String::from)
        .to_vec()
}

/// The embedded store's phases: idle RSS, the full load (with the etcd puts baseline on
/// an etcd member of its own), then Secret creates on fresh servers that encrypt
/// Secrets and that do not.
fn embedded(release: &Path, data: &Path, server: BerthServer) -> Result<Report> {
    let pid = server.pid().context("server pid")?;
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_mb(pid);
    let etcd = Etcd::start(data);
    let etcd_port = etcd
        .endpoints()
        .first()
        .and_then(|url| url.rsplit(':').next()?.parse::<u16>().ok())
        .context("the etcd member's client port")?;
    let member = etcd.member_pid(0).context("the etcd member's pid")?;
    let mut report = run_load(
        release,
        &server,
        &[
            "--etcd-port",
            &etcd_port.to_string(),
            "--etcd-pid",
            &member.to_string(),
        ],
    )?;
    drop(etcd);
    report.figure("idle_rss_mb", (idle_rss * 10.0).round() / 10.0);
    drop(server);
    // Plain and encrypted alike: each on fresh servers, in the order of
    // [`SECRET_SERVERS`] (a drift of the machine's speed during the runs weighs on
    // both sides), each side's figures the median of its runs: one server's p99 of
    // 1 200 creates moves by a third from one fresh server to the next (disk and
    // scheduling), more than the 10 % this compares.
    let mut sides = [Vec::new(), Vec::new()];
    for (round, encrypted) in SECRET_SERVERS.into_iter().enumerate() {
        sides[usize::from(encrypted)].push(fresh_secret_creates(release, data, encrypted, round)?);
    }
    let middle =
        |side: &[Report], key: &str| median(side.iter().map(|r| r.value(key).unwrap_or(f64::NAN)));
    for (side, name) in sides.iter().zip([
        "secret_create_fresh_p99_ms_runs",
        "encrypted_create_p99_ms_runs",
    ]) {
        let runs: Vec<f64> = side
            .iter()
            .map(|r| r.value("secret_create_p99_ms").unwrap_or(f64::NAN))
            .collect();
        report.figure(name, serde_json::json!(runs));
    }
    // The server's CPU time per Secret create on each side (median of its runs).
    let cpu = [0, 1].map(|side| middle(&sides[side], "secret_create_cpu_ms"));
    report.figure(
        "secret_create_fresh_cpu_ms",
        (cpu[0] * 1000.0).round() / 1000.0,
    );
    report.figure(
        "encrypted_create_cpu_ms",
        (cpu[1] * 1000.0).round() / 1000.0,
    );
    report.figure(
        "encryption_overhead_cpu_pct",
        ((cpu[1] / cpu[0] - 1.0) * 1000.0).round() / 10.0,
    );
    // What encrypting itself takes in the server (its own histogram, encrypted side):
    // the bucket bound of its p99 next to a plain create's p99 is what it can add there.
    let transform = [
        middle(&sides[1], "transform_p99_us"),
        middle(&sides[1], "transform_mean_us"),
    ];
    report.figure("encryption_transform_p99_us", transform[0].round());
    report.figure(
        "encryption_transform_mean_us",
        (transform[1] * 10.0).round() / 10.0,
    );
    let round2 = |v: f64| (v * 100.0).round() / 100.0;
    let plain = round2(middle(&sides[0], "secret_create_p99_ms"));
    report.figure(
        "encryption_added_p99_pct",
        (transform[0] / 1000.0 / plain * 1000.0).round() / 10.0,
    );
    let p99 = round2(middle(&sides[1], "secret_create_p99_ms"));
    let p50 = round2(middle(&sides[1], "secret_create_p50_ms"));
    report.figure("secret_create_fresh_p99_ms", plain);
    report.figure("encrypted_create_p99_ms", p99);
    report.figure(
        "encryption_overhead_p99_pct",
        ((p99 / plain - 1.0) * 1000.0).round() / 10.0,
    );
    let at = report
        .rows
        .iter()
        .position(|r| r[0].starts_with("create a Secret"))
        .map_or(report.rows.len(), |i| i + 1);
    report.rows.insert(
        at,
        vec![
            format!(
                "create a Secret, encrypted at rest (aescbc; {} calls, {SECRET_CLIENTS} clients)",
                SECRET_CLIENTS * SECRETS_PER_CLIENT
            ),
            format!("{p50:.2} ms"),
            format!("{p99:.2} ms"),
            "p99 within 10 % of not encrypted".into(),
            format!(
                "encrypted/plain p99 = {:.2} (plain {plain:.2} ms; both on fresh servers); server CPU per create {:.3} vs {:.3} ms ({:+.1} %); encrypting a value p99 ≤ {:.0} µs (mean {:.1} µs) = {:.1} % of a plain create's p99",
                p99 / plain,
                cpu[1],
                cpu[0],
                (cpu[1] / cpu[0] - 1.0) * 100.0,
                transform[0],
                transform[1],
                transform[0] / 10.0 / plain,
            ),
        ],
    );
    report.rows.insert(
        0,
        vec![
            "idle RSS".into(),
            format!("{idle_rss:.1} MB"),
            "".into(),
            "< 40 MB".into(),
            "k3s server ≈ 1.6 GB with a workload".into(),
        ],
    );
    Ok(report)
}

/// `xtask apiserver-load` with `extra` flags against `server`; its report. On failure
/// the end of the server's log is in the error.
fn run_load(release: &Path, server: &BerthServer, extra: &[&str]) -> Result<Report> {
    let pid = server.pid().context("server pid")?;
    let out = std::process::Command::new(release.join("xtask"))
        .arg("apiserver-load")
        .args(extra)
        .args([
            "--port",
            &server.port().to_string(),
            "--pid",
            &pid.to_string(),
        ])
        .arg("--ca")
        .arg(server.ca())
        .arg("--data-dir")
        .arg(server.dir())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("run xtask apiserver-load {}", extra.join(" ")))?;
    if !out.status.success() {
        let log = std::fs::read_to_string(server.dir().join("server.log")).unwrap_or_default();
        let tail = log
            .char_indices()
            .rev()
            .nth(3000)
            .map_or(&log[..], |(i, _)| &log[i..]);
        bail!(
            "apiserver-load {} failed ({}); the server's log ends:\n{tail}",
            extra.join(" "),
            out.status
        );
    }
    Report::from_value(&serde_json::from_slice(&out.stdout).context("apiserver-load output")?)
}

/// The Secret-create phase alone against a fresh server of the same release binary,
/// which encrypts Secrets with aescbc (`--encryption-provider-config`) or does not.
fn fresh_secret_creates(
    release: &Path,
    data: &Path,
    encrypted: bool,
    round: usize,
) -> Result<Report> {
    let dir = data.join(format!("secrets-{round}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("encryption.yaml");
    std::fs::write(
        &config,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: key1\n        secret: YmVydGgtYmVuY2gtZW5jcnlwdGlvbi1rZXktMzJiISE=\n  - identity: {}\n",
    )?;
    let config_arg = config.to_string_lossy().into_owned();
    let mut flags = vec!["--scheduler=false", "--controllers=false"];
    if encrypted {
        flags.extend(["--encryption-provider-config", &config_arg]);
    }
    let server = BerthServer::start_with(&super::server_binary(), &dir.join("server"), &flags);
    let report = run_load(release, &server, &["--secrets-only"]);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    report
}

/// The setup, mixed and throughput phases (`apiserver-load --core-only`) against a
/// release berth-server over a fresh etcd of `members` members (testkit's guard: data
/// dirs under `data`, on disk, with etcd's default fsync; every member killed and its
/// data dir removed on drop).
fn over_etcd(release: &Path, data: &Path, members: usize) -> Result<Report> {
    let etcd = Etcd::cluster(data, members);
    let servers = format!("--etcd-servers={}", etcd.endpoints_flag());
    let server = BerthServer::start_with(
        &super::server_binary(),
        data,
        &["--scheduler=false", "--controllers=false", &servers],
    );
    let pids: Vec<String> = (0..members)
        .filter_map(|m| etcd.member_pid(m))
        .map(|pid| pid.to_string())
        .collect();
    let mut flags = vec!["--core-only"];
    for pid in &pids {
        flags.extend(["--etcd-pid", pid.as_str()]);
    }
    let report = run_load(release, &server, &flags);
    drop(server);
    drop(etcd);
    report
}

/// Adds one etcd run's figures (`<prefix>_create_p99_ms`, `<prefix>_creates_per_s`,
/// `<prefix>_watch_delivery_p99_ms`, and with the embedded store's figures in the same
/// report their ratios `<prefix>_*_vs_embedded`, etcd / embedded) and rows (before
/// the RSS row) to `report`.
fn etcd_column(report: &mut Report, etcd: &Report, prefix: &str, members: usize, label: &str) {
    let get = |key: &str| etcd.value(key).unwrap_or(f64::NAN);
    let count = |key: &str| etcd.value(key).unwrap_or(0.0);
    let figures = [
        ("create_p99_ms", "create_p99_ms"),
        ("creates_per_s", "creates_per_s"),
        ("watch_delivery_p99_ms", "watch_delivery_p99_ms"),
    ];
    let mut ratio = HashMap::new();
    for (key, embedded) in figures {
        let value = get(key);
        report.figure(&format!("{prefix}_{key}"), value);
        if let Some(base) = report.value(embedded) {
            let r = (value / base * 100.0).round() / 100.0;
            report.figure(&format!("{prefix}_{key}_vs_embedded"), r);
            ratio.insert(key, (r, base));
        }
    }
    for note in &etcd.notes {
        report.notes.push(format!("over etcd, {label}: {note}"));
    }
    for key in [
        "create_p99_ms_rounds",
        "watch_delivery_p99_ms_rounds",
        "disk_stall_max_ms_rounds",
        "disk_stalls_over_100ms",
        "server_cpu_ms_per_create",
        "etcd_cpu_ms_per_create",
        "client_cpu_ms_per_create",
    ] {
        if let Some(value) = etcd.raw(key) {
            report.figure(&format!("{prefix}_{key}"), value.clone());
        }
    }
    let one = members == 1;
    let versus = |key: &str, unit: &str| match ratio.get(key) {
        Some((r, base)) if unit.is_empty() => {
            format!("etcd/embedded = {r:.2} (embedded store: {base:.0})")
        }
        Some((r, base)) => format!("etcd/embedded = {r:.2} (embedded store: {base:.2}{unit})"),
        None => "embedded store not run (BERTH_BENCH_APISERVER_ETCD_ONLY)".into(),
    };
    let on = format!("over etcd, {label}, data on disk with etcd's default fsync");
    let rows = [
        vec![
            format!("create {on} ({:.0} calls)", count("create_calls")),
            format!("{:.2} ms", get("create_p50_ms")),
            format!("{:.2} ms", get("create_p99_ms")),
            if one {
                "p99 ≤ 1.5 × embedded"
            } else {
                "—"
            }
            .into(),
            versus("create_p99_ms", " ms"),
        ],
        vec![
            format!(
                "watch delivery {on} ({:.0} events to {WATCHERS} watchers)",
                count("watch_events")
            ),
            format!("{:.2} ms", get("watch_delivery_p50_ms")),
            format!("{:.2} ms", get("watch_delivery_p99_ms")),
            if one {
                "p99 ≤ 1.5 × embedded"
            } else {
                "—"
            }
            .into(),
            versus("watch_delivery_p99_ms", " ms"),
        ],
        vec![
            format!("durable creates/s {on} ({CLIENTS} clients)"),
            format!("{:.0}", get("creates_per_s")),
            "".into(),
            if one { "≥ embedded / 1.5" } else { "—" }.into(),
            format!(
                "{}; CPU per create: berth-server {:.3} ms (embedded store: {:.3} ms), etcd {} {:.3} ms, load client {:.3} ms",
                versus("creates_per_s", ""),
                get("server_cpu_ms_per_create"),
                report.value("server_cpu_ms_per_create").unwrap_or(f64::NAN),
                if one { "member" } else { "members together" },
                get("etcd_cpu_ms_per_create"),
                get("client_cpu_ms_per_create"),
            ),
        ],
    ];
    for row in rows {
        let at = report
            .rows
            .iter()
            .position(|r| r[0].starts_with("RSS with"))
            .unwrap_or(report.rows.len());
        report.rows.insert(at, row);
    }
}

/// `xtask apiserver-load` (hidden): runs [`measure`] and prints the report as JSON.
pub fn load(target: &Target) -> Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(measure(target))?;
    println!("{}", report.to_value());
    Ok(std::process::ExitCode::SUCCESS)
}

/// The throughput phase: durable creates/s and the CPU time each create took.
struct Throughput {
    creates_per_s: f64,
    /// The server's CPU time per create (ms).
    server_ms: f64,
    /// Its etcd members' together, over etcd.
    etcd_ms: Option<f64>,
    /// The load client's (this process: 16 clients' TLS, HTTP/2 and JSON).
    client_ms: f64,
}

impl Throughput {
    fn record(&self, report: &mut Report) {
        report.figure("creates_per_s", self.creates_per_s.round());
        report.figure("server_cpu_ms_per_create", self.server_ms);
        report.figure("client_cpu_ms_per_create", self.client_ms);
        if let Some(etcd) = self.etcd_ms {
            report.figure("etcd_cpu_ms_per_create", etcd);
        }
    }
}

/// The figures of the mixed and throughput phases alone (`apiserver-load --core-only`),
/// named as in the full report: JSON creates' latency in the mixed phase, watch
/// delivery to the 100 watchers, durable creates/s of the throughput phase and the CPU
/// time per create ([`Throughput`]).
fn core_report(mixed: &Mixed, cpu: &Throughput) -> Report {
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let mut report = Report::default();
    report.figure("create_p50_ms", round(mixed.percentile("create", 50.0)));
    report.figure("create_p99_ms", round(mixed.percentile("create", 99.0)));
    report.figure("create_calls", mixed.calls("create"));
    report.figure("watch_delivery_p50_ms", round(mixed.watch(50.0)));
    report.figure("watch_delivery_p99_ms", round(mixed.watch(99.0)));
    report.figure("watch_events", mixed.events());
    cpu.record(&mut report);
    mixed.record(&mut report);
    report.notes.push(mixed.note());
    report
}

/// One round of the mixed phase: [`MIX_SECS`] of traffic, paced (open loop) — each client
/// starts a request every 1/RATE s whether or not the last one is done, and latency counts
/// from the scheduled start, so a slow server cannot hide queueing by slowing the clients.
/// Each verb's latencies (ms).
async fn mixed_round(
    server: &Target,
    round: usize,
    acks: &Arc<Mutex<HashMap<String, (Instant, usize)>>>,
) -> Result<HashMap<&'static str, Vec<f64>>> {
    let lat: Arc<Mutex<HashMap<&'static str, Vec<f64>>>> = Arc::default();
    // Every client connected before the schedule starts: a connection's TLS handshake
    // is not a request's latency.
    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        conns.push(Conn::connect(server).await?);
    }
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs(MIX_SECS);
    let period = Duration::from_secs_f64(1.0 / RATE_PER_CLIENT as f64);
    let mut tasks = Vec::new();
    for (c, conn) in conns.into_iter().enumerate() {
        let (lat, acks) = (lat.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let mut inflight = Vec::new();
            let mut i = 0usize;
            loop {
                // Stagger the clients over one period.
                let at = begin + period * i as u32 + period.mul_f64(c as f64 / CLIENTS as f64);
                if at >= deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let (mut conn, lat, acks) = (conn.clone(), lat.clone(), acks.clone());
                inflight.push(tokio::spawn(async move {
                    // Every other list and create is protobuf in and out, and every
                    // other get is made as the non-admin user, through RBAC. Which of
                    // a pair a request is alternates by client too, so both take the
                    // same share of the slots right after a list of 1000 pods on the
                    // same connection (with `(i / 3) % 2` alone, every slot after a
                    // list went to the JSON create, the RBAC get or the update: at
                    // 40 requests per second per client that is a fixed pattern).
                    let pair = (i / 3 + c) % 2;
                    let verb = if i % RATE_PER_CLIENT == RATE_PER_CLIENT - 1 {
                        ["list1000", "list1000_protobuf"][(i / RATE_PER_CLIENT) % 2]
                    } else if i.is_multiple_of(3) {
                        ["create", "create_protobuf"][pair]
                    } else if i % 3 == 1 {
                        ["get", "authz_get"][pair]
                    } else {
                        "update"
                    };
                    let started = at;
                    match verb {
                        "create" | "create_protobuf" => {
                            let name = format!("mix-{round}-{c}-{i}");
                            if verb == "create" {
                                conn.create("bench", &name).await?;
                            } else {
                                conn.create_protobuf("bench", &name).await?;
                            }
                            let at = Instant::now();
                            if let Ok(mut a) = acks.lock() {
                                a.insert(name, (at, round));
                            }
                        }
                        "get" | "authz_get" => {
                            let path =
                                format!("/api/v1/namespaces/bench/pods/seed-{}", (c * 7 + i) % 200);
                            if verb == "get" {
                                conn.call(Method::GET, &path, "application/json", Bytes::new())
                                    .await?;
                            } else {
                                conn.get_as_user(&path).await?;
                            }
                        }
                        "update" => {
                            let path = format!(
                                "/api/v1/namespaces/bench/pods/seed-{}",
                                (c * 13 + i) % 200
                            );
                            let patch = Bytes::from(format!(
                                r#"{{"metadata":{{"labels":{{"round":"r{i}"}}}}}}"#
                            ));
                            conn.call(Method::PATCH, &path, "application/merge-patch+json", patch)
                                .await?;
                        }
                        "list1000_protobuf" => {
                            let body = conn
                                .call_as(
                                    Method::GET,
                                    "/api/v1/namespaces/list1000/pods",
                                    "application/json",
                                    "application/vnd.kubernetes.protobuf, application/json",
                                    Bytes::new(),
                                )
                                .await?;
                            let items = protobuf_items(&body)?;
                            anyhow::ensure!(items == 1000, "listed {items} pods (protobuf)");
                        }
                        _ => {
                            let body = conn
                                .call(
                                    Method::GET,
                                    "/api/v1/namespaces/list1000/pods",
                                    "application/json",
                                    Bytes::new(),
                                )
                                .await?;
                            let items = pods_in(&body);
                            anyhow::ensure!(items == 1000, "listed {items} pods");
                        }
                    }
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    if let Ok(mut l) = lat.lock() {
                        l.entry(verb).or_default().push(ms);
                    }
                    anyhow::Ok(())
                }));
                i += 1;
            }
            for t in inflight {
                t.await??;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(lat.lock().map(|l| l.clone()).unwrap_or_default())
}

/// The mixed phase's measurements, per round.
struct Mixed {
    rounds: Vec<HashMap<&'static str, Vec<f64>>>,
    deliveries: Vec<Vec<f64>>,
    /// The data disk's stalls in each round (`None` where it is not monitored).
    stalls: Vec<Option<Stalls>>,
}

impl Mixed {
    fn verb(&self, verb: &str) -> impl Iterator<Item = &[f64]> {
        self.rounds
            .iter()
            .map(move |r| r.get(verb).map_or(&[][..], Vec::as_slice))
    }

    /// Each round's `q`th percentile of a verb's latencies.
    fn per_round(&self, verb: &str, q: f64) -> Vec<f64> {
        self.verb(verb)
            .map(|l| percentile(l, q).unwrap_or(f64::NAN))
            .collect()
    }

    /// The median over the rounds of each round's `q`th percentile.
    fn percentile(&self, verb: &str, q: f64) -> f64 {
        median(self.per_round(verb, q))
    }

    /// The `q`th percentile of all rounds' latencies together: for the lists, whose 80
    /// calls a round would make a round's p99 its maximum.
    fn pooled(&self, verb: &str, q: f64) -> f64 {
        let all: Vec<f64> = self.verb(verb).flatten().copied().collect();
        percentile(&all, q).unwrap_or(f64::NAN)
    }

    fn calls(&self, verb: &str) -> usize {
        self.verb(verb).map(<[f64]>::len).sum()
    }

    fn watch_per_round(&self, q: f64) -> Vec<f64> {
        self.deliveries
            .iter()
            .map(|d| percentile(d, q).unwrap_or(f64::NAN))
            .collect()
    }

    fn watch(&self, q: f64) -> f64 {
        median(self.watch_per_round(q))
    }

    fn events(&self) -> usize {
        self.deliveries.iter().map(Vec::len).sum()
    }

    /// Per-round figures and the disk's stalls, in `report`'s figures.
    fn record(&self, report: &mut Report) {
        let round = |v: Vec<f64>| -> Vec<f64> {
            v.into_iter().map(|x| (x * 100.0).round() / 100.0).collect()
        };
        report.figure(
            "create_p99_ms_rounds",
            round(self.per_round("create", 99.0)),
        );
        report.figure(
            "update_p99_ms_rounds",
            round(self.per_round("update", 99.0)),
        );
        report.figure(
            "watch_delivery_p99_ms_rounds",
            round(self.watch_per_round(99.0)),
        );
        for verb in ["get", "authz_get"] {
            report.figure(
                &format!("{verb}_p99_ms_rounds"),
                round(self.per_round(verb, 99.0)),
            );
            // Over all rounds' calls together, as the lists' figures are.
            report.figure(
                &format!("{verb}_p99_ms_pooled"),
                (self.pooled(verb, 99.0) * 100.0).round() / 100.0,
            );
        }
        let stalls: Vec<Stalls> = self.stalls.iter().flatten().copied().collect();
        if stalls.len() == self.stalls.len() && !stalls.is_empty() {
            report.figure(
                "disk_stall_max_ms_rounds",
                round(stalls.iter().map(|s| s.longest_ms).collect()),
            );
            report.figure(
                "disk_stalls_over_100ms",
                stalls.iter().map(|s| s.over_threshold).sum::<usize>(),
            );
        }
    }

    /// The note saying what each round saw.
    fn note(&self) -> String {
        let list = |v: Vec<f64>| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let disk = if self.stalls.iter().all(Option::is_some) {
            format!(
                "; the data disk's longest stall (I/O in flight, none completed) {} ms",
                list(self.stalls.iter().flatten().map(|s| s.longest_ms).collect())
            )
        } else {
            "; the data disk was not monitored".into()
        };
        format!(
            "{MIX_ROUNDS} mixed rounds of {MIX_SECS} s, each latency figure the median over the rounds of that round's percentile (the lists' over all rounds' calls together, a round having 80 of each) — per round, create p99 {} ms, update p99 {} ms, watch delivery p99 {} ms{disk}",
            list(self.per_round("create", 99.0)),
            list(self.per_round("update", 99.0)),
            list(self.watch_per_round(99.0)),
        )
    }
}

/// A Prometheus histogram read from the text format: its cumulative buckets (upper
/// bound in seconds, count), sum and count.
#[derive(Debug, PartialEq)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    /// The upper bound of the bucket holding quantile `q`: no call took longer.
    fn quantile_bound(&self, q: f64) -> f64 {
        let rank = q * self.count;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= rank)
            .map_or(f64::INFINITY, |(le, _)| *le)
    }
}

/// The series of histogram `name` whose labels include `labels` (`key="value"`), from
/// `/metrics` text; `None` when it has no observations.
fn histogram(text: &str, name: &str, labels: &str) -> Option<Histogram> {
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let series = |line: &str, suffix: &str| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(suffix))
            .is_some_and(|rest| rest.starts_with('{') && rest.contains(labels))
    };
    let mut h = Histogram {
        buckets: Vec::new(),
        sum: 0.0,
        count: 0.0,
    };
    for line in text.lines() {
        if series(line, "_bucket") {
            let le = line.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            h.buckets.push((le, value(line)?));
        } else if series(line, "_sum") {
            h.sum = value(line)?;
        } else if series(line, "_count") {
            h.count = value(line)?;
        }
    }
    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (h.count > 0.0).then_some(h)
}

/// The load and its measurements (run by `xtask apiserver-load`).
pub async fn measure(server: &Target) -> Result<Report> {
    wait_ready(&mut Conn::connect(server).await?).await?;
    if server.secrets_only {
        let cpu = CpuUse::start(&[server.pid]);
        let lat = secret_creates(server, "secrets").await?;
        let mut report = Report::default();
        // What encrypting took inside the server, from its own histogram (none on a
        // server that does not encrypt).
        let metrics = Conn::connect(server)
            .await?
            .call(Method::GET, "/metrics", "application/json", Bytes::new())
            .await?;
        if let Some(t) = histogram(
            &String::from_utf8_lossy(&metrics),
            "apiserver_storage_transformation_duration_seconds",
            "transformation_type=\"to_storage\"",
        ) {
            report.figure("transform_p99_us", t.quantile_bound(0.99) * 1e6);
            report.figure("transform_mean_us", t.sum / t.count * 1e6);
        }
        // The server's CPU time per create, warm-up creates included: what encrypting
        // costs, apart from where the disk puts the tail.
        report.figure(
            "secret_create_cpu_ms",
            cpu.per(SECRET_CLIENTS * (SECRET_WARMUP + SECRETS_PER_CLIENT)),
        );
        report.figure(
            "secret_create_p99_ms",
            (percentile(&lat, 99.0).unwrap_or(f64::NAN) * 100.0).round() / 100.0,
        );
        report.figure(
            "secret_create_p50_ms",
            (percentile(&lat, 50.0).unwrap_or(f64::NAN) * 100.0).round() / 100.0,
        );
        return Ok(report);
    }
    let pid = server.pid;
    let mut admin = Conn::connect(server).await?;
    for ns in ["list1000", "bench", "throughput", "fill"] {
        namespace(&mut admin, ns).await?;
    }
    fill(server, "list1000", "l", 1000).await?;
    fill(server, "bench", "seed", 200).await?;
    rbac_objects(&mut admin).await?;
    // What one list of 1000 pods weighs in each encoding.
    let mut list_bytes = Vec::new();
    for accept in ["application/json", PROTOBUF] {
        let body = admin
            .call_as(
                Method::GET,
                "/api/v1/namespaces/list1000/pods",
                "application/json",
                accept,
                Bytes::new(),
            )
            .await?;
        list_bytes.push(body.len());
    }

    // 100 watchers from the current resourceVersion.
    let list = admin
        .call(
            Method::GET,
            "/api/v1/namespaces/bench/pods?limit=1",
            "application/json",
            Bytes::new(),
        )
        .await?;
    let list: serde_json::Value = serde_json::from_slice(&list)?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    // Each create's answer time and mixed round, and each round's deliveries.
    let acks: Arc<Mutex<HashMap<String, (Instant, usize)>>> = Arc::default();
    let deliveries: Arc<Mutex<Vec<Vec<f64>>>> = Arc::new(Mutex::new(vec![Vec::new(); MIX_ROUNDS]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    let mut conn = Conn::connect(server).await?;
    for w in 0..WATCHERS {
        if w % WATCHES_PER_CONN == 0 {
            conn = Conn::connect(server).await?;
        }
        let path = format!(
            "/api/v1/namespaces/bench/pods?watch=1&resourceVersion={rv}&timeoutSeconds={}",
            MIX_SECS * MIX_ROUNDS as u64 + 30
        );
        let req = conn.request(Method::GET, &path, "application/json", Bytes::new())?;
        conn.send.ready().await?;
        let resp = conn.send.send_request(req).await?;
        if resp.status() != StatusCode::OK {
            bail!("watch: {}", resp.status());
        }
        let (acks, deliveries, stop) = (acks.clone(), deliveries.clone(), stop.clone());
        watchers.push(tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                let now = Instant::now();
                while let Some(nl) = memchr::memchr(b'\n', &buf) {
                    if let Some(name) = event_name(&buf[..nl]) {
                        let acked = acks.lock().ok().and_then(|a| a.get(name).copied());
                        if let (Some((at, round)), Ok(mut d)) = (acked, deliveries.lock())
                            && let Some(d) = d.get_mut(round)
                        {
                            d.push(now.saturating_duration_since(at).as_secs_f64() * 1000.0);
                        }
                    }
                    buf.drain(..=nl);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let disk = server.data_dir.as_deref().and_then(DiskMonitor::start);
    let mut rounds = Vec::with_capacity(MIX_ROUNDS);
    let mut stalls = Vec::with_capacity(MIX_ROUNDS);
    for round in 0..MIX_ROUNDS {
        if let Some(disk) = &disk {
            disk.take();
        }
        rounds.push(mixed_round(server, round, &acks).await?);
        stalls.push(disk.as_ref().map(DiskMonitor::take));
    }
    drop(disk);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in watchers {
        w.abort();
    }
    drop(conn);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deliveries = deliveries.lock().map(|d| d.clone()).unwrap_or_default();
    let mixed = Mixed {
        rounds,
        deliveries,
        stalls,
    };

    // Durable creates/s, and the CPU time they take: the server's, its etcd members'
    // (over etcd) and this client's.
    let created = Arc::new(AtomicUsize::new(0));
    let server_cpu = CpuUse::start(&[server.pid]);
    let etcd_cpu = CpuUse::start(&server.etcd_pids);
    let client_cpu = CpuUse::start(&[std::process::id()]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(CREATE_SECS);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut conn = Conn::connect(server).await?;
        let created = created.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < deadline {
                conn.create("throughput", &format!("t-{c}-{i}")).await?;
                created.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let creates = created.load(Ordering::Relaxed);
    let creates_per_s = creates as f64 / started.elapsed().as_secs_f64();
    let cpu = Throughput {
        creates_per_s,
        server_ms: server_cpu.per(creates),
        etcd_ms: (server.core_only && !server.etcd_pids.is_empty()).then(|| etcd_cpu.per(creates)),
        client_ms: client_cpu.per(creates),
    };
    if server.core_only {
        return Ok(core_report(&mixed, &cpu));
    }
    let etcd = match server.etcd_port {
        Some(port) => {
            let member = CpuUse::start(&server.etcd_pids);
            let client = CpuUse::start(&[std::process::id()]);
            let (puts, n) = etcd_puts_per_s(port).await?;
            Some((puts, member.per(n), client.per(n)))
        }
        None => None,
    };

    // Server-side apply (update path) and Secret creates, each alone.
    let apply_lat = applies(server).await?;
    let secret_lat = secret_creates(server, "secrets").await?;

    // Exactly 10 000 pods stored: delete the throughput pods, top up, then RSS.
    admin
        .call(
            Method::DELETE,
            "/api/v1/namespaces/throughput/pods",
            "application/json",
            Bytes::new(),
        )
        .await?;
    let all = admin
        .call(
            Method::GET,
            "/api/v1/pods",
            "application/json",
            Bytes::new(),
        )
        .await?;
    let stored = pods_in(&all);
    if stored < PODS_FOR_RSS {
        fill(server, "fill", "f", PODS_FOR_RSS - stored).await?;
    }
    let all = admin
        .call(
            Method::GET,
            "/api/v1/pods",
            "application/json",
            Bytes::new(),
        )
        .await?;
    let total = pods_in(&all);
    drop(all);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_10k = rss_mb(pid);

    // Lists (one a second per client) pooled over the rounds, the rest per round.
    let pooled = |verb: &str| verb.starts_with("list");
    let p99 = |verb: &str| {
        if pooled(verb) {
            mixed.pooled(verb, 99.0)
        } else {
            mixed.percentile(verb, 99.0)
        }
    };
    let p50 = |verb: &str| {
        if pooled(verb) {
            mixed.pooled(verb, 50.0)
        } else {
            mixed.percentile(verb, 50.0)
        }
    };
    let calls = |verb: &str| mixed.calls(verb);
    let watch_p99 = mixed.watch(99.0);
    let watch_p50 = mixed.watch(50.0);
    let round = |x: f64| (x * 100.0).round() / 100.0;

    let mut report = Report::default();
    mixed.record(&mut report);
    report.figure("create_p99_ms", round(p99("create")));
    report.figure("get_p99_ms", round(p99("get")));
    report.figure("authz_get_p99_ms", round(p99("authz_get")));
    report.figure("update_p99_ms", round(p99("update")));
    report.figure("list1000_p99_ms", round(p99("list1000")));
    report.figure("create_p99_ms_protobuf", round(p99("create_protobuf")));
    report.figure("list1000_p99_ms_protobuf", round(p99("list1000_protobuf")));
    report.figure("list1000_bytes_json", list_bytes[0]);
    report.figure("list1000_bytes_protobuf", list_bytes[1]);
    report.figure("watch_delivery_p99_ms", round(watch_p99));
    cpu.record(&mut report);
    if let Some((puts, member_ms, client_ms)) = etcd {
        report.figure("etcd_puts_per_s", puts.round());
        report.figure("etcd_puts_cpu_ms_per_put", member_ms);
        report.figure("etcd_puts_client_cpu_ms_per_put", client_ms);
    }
    report.figure("rss_mb_10k_pods", round(rss_10k));
    report.figure(
        "ssa_p99_ms",
        round(percentile(&apply_lat, 99.0).unwrap_or(f64::NAN)),
    );
    report.figure(
        "ssa_p50_ms",
        round(percentile(&apply_lat, 50.0).unwrap_or(f64::NAN)),
    );
    report.figure(
        "secret_create_p99_ms",
        round(percentile(&secret_lat, 99.0).unwrap_or(f64::NAN)),
    );
    report.figure(
        "secret_create_p50_ms",
        round(percentile(&secret_lat, 50.0).unwrap_or(f64::NAN)),
    );
    report.figure("pods_stored", total);
    report.header = header();
    let single = "Kubernetes SLO: p99 ≤ 1 s";
    let row = |what: String, verb: &str, goal: &str, anchor: &str| {
        vec![
            what,
            format!("{:.2} ms", p50(verb)),
            format!("{:.2} ms", p99(verb)),
            goal.into(),
            anchor.into(),
        ]
    };
    report.rows = vec![
        row(
            format!("create ({} calls)", calls("create")),
            "create",
            "p99 < 10 ms",
            single,
        ),
        row(
            format!("get ({} calls)", calls("get")),
            "get",
            "p99 < 10 ms",
            single,
        ),
        row(
            format!(
                "get as a non-admin user through RBAC, {RBAC_OBJECTS} Roles and RoleBindings ({} calls)",
                calls("authz_get")
            ),
            "authz_get",
            "p99 within 10 % of get",
            "kube-apiserver: RBAC from informer caches",
        ),
        row(
            format!("update, merge patch ({} calls)", calls("update")),
            "update",
            "p99 < 10 ms",
            single,
        ),
        row(
            format!("create, protobuf ({} calls)", calls("create_protobuf")),
            "create_protobuf",
            "p99 < 10 ms",
            single,
        ),
        row(
            format!("list 1000 pods ({} calls)", calls("list1000")),
            "list1000",
            "—",
            "Kubernetes SLO: p99 ≤ 30 s",
        ),
        row(
            format!(
                "list 1000 pods, protobuf ({} calls)",
                calls("list1000_protobuf")
            ),
            "list1000_protobuf",
            "p99 ≤ ½ of JSON's",
            &format!(
                "protobuf/JSON p99 = {:.2}, p50 = {:.2}; body {} kB vs {} kB",
                p99("list1000_protobuf") / p99("list1000"),
                p50("list1000_protobuf") / p50("list1000"),
                list_bytes[1] / 1000,
                list_bytes[0] / 1000,
            ),
        ),
        vec![
            format!(
                "watch delivery ({} events to {WATCHERS} watchers)",
                mixed.events()
            ),
            format!("{watch_p50:.2} ms"),
            format!("{watch_p99:.2} ms"),
            "p99 < 10 ms".into(),
            "—".into(),
        ],
        vec![
            format!(
                "server-side apply, update of a Deployment ({} calls, one client)",
                apply_lat.len()
            ),
            format!("{:.2} ms", percentile(&apply_lat, 50.0).unwrap_or(f64::NAN)),
            format!("{:.2} ms", percentile(&apply_lat, 99.0).unwrap_or(f64::NAN)),
            "p99 < 15 ms".into(),
            format!(
                "merge-patch update in the mixed phase: p99 {:.2} ms",
                p99("update")
            ),
        ],
        vec![
            format!(
                "create a Secret, not encrypted ({} calls, {SECRET_CLIENTS} clients)",
                secret_lat.len()
            ),
            format!(
                "{:.2} ms",
                percentile(&secret_lat, 50.0).unwrap_or(f64::NAN)
            ),
            format!(
                "{:.2} ms",
                percentile(&secret_lat, 99.0).unwrap_or(f64::NAN)
            ),
            "—".into(),
            "on the loaded server (the encrypted row's baseline runs on fresh servers)".into(),
        ],
        vec![
            "durable creates/s (16 clients)".into(),
            format!("{:.0}", cpu.creates_per_s),
            "".into(),
            "≥ 5000".into(),
            match etcd {
                Some((puts, member_ms, _)) => format!(
                    "etcd 3.4 member, same run: {puts:.0} puts/s (berth/etcd = {:.2}); CPU per write: berth-server {:.3} ms, etcd {member_ms:.3} ms",
                    creates_per_s / puts,
                    cpu.server_ms
                ),
                None => "one etcd member: a few thousand puts/s".into(),
            },
        ],
        vec![
            format!("RSS with {total} pods"),
            format!("{rss_10k:.1} MB"),
            "".into(),
            "< 250 MB".into(),
            "k3s server ≈ 1.6 GB".into(),
        ],
    ];
    report.notes = vec![
        format!("mixed phase: {CLIENTS} clients (one HTTP/2 + TLS connection each, bearer token) for {MIX_ROUNDS} × {MIX_SECS} s, each starting {RATE_PER_CLIENT} requests/s on a fixed schedule (open loop): one list of 1000 pods per second, the rest cycling create / get / update (merge patch); every other list and create is protobuf in and out (`application/vnd.kubernetes.protobuf`, as client-go's typed clients send), the others JSON — {} requests/s in all, while {WATCHERS} watch streams ({WATCHES_PER_CONN} per connection) follow the namespace; clients, watchers and server share this 2-core machine", CLIENTS * RATE_PER_CLIENT),
        mixed.note(),
        "latency is from the request's scheduled start to having read the whole answer (queueing included; the client counts the items but does not decode them, in either encoding); watch delivery from the create's answer to the event's arrival at each watcher".into(),
        format!("throughput phase: {CLIENTS} clients creating pods back to back (closed loop) for {CREATE_SECS} s"),
        "every create is durable (fsync'd) before it is answered; group commit shares one fsync among concurrent writes".into(),
        format!(
            "encryption at rest: Secret creates ({SECRET_CLIENTS} clients × {SECRETS_PER_CLIENT}, after {SECRET_WARMUP} unmeasured each) on {} fresh servers of the same binary, in the order {}; each side's p99 is the median of its runs (`secret_create_fresh_p99_ms`, `encrypted_create_p99_ms`; each run's in `*_runs`)",
            SECRET_SERVERS.len(),
            SECRET_SERVERS
                .map(|e| if e { "aescbc" } else { "plain" })
                .join(", ")
        ),
        format!("CPU time per create: user + system time of the server (and of its etcd members, over etcd) from /proc/<pid>/stat over the {CREATE_SECS} s throughput phase, divided by the creates; the load client's (this process: {CLIENTS} clients' TLS, HTTP/2 and JSON) likewise"),
        "baseline: Debian's etcd 3.4 (one member, default fsync settings) in the same run, written through its JSON gateway by the same 16 clients with the same ~0.4 KB pod JSON as value — a store alone, where berth's figure includes the whole apiserver (TLS, decoding, defaults, validation, watch cache)".into(),
        format!(
            "anchors, per row: {}; the latency anchors are quoted, not run — Kubernetes' API call latency SLOs (kubernetes/community sig-scalability/slos/api_call_latency.md: p99 ≤ 1 s for single-object calls, ≤ 30 s for cluster-wide lists); \"kube-apiserver: RBAC from informer caches\" names kube-apiserver's design, not a figure; the k3s RSS is quoted from docs.k3s.io/reference/resource-profiling (K3s v1.26.5, server with a workload: 1596 M, the k3s.service cgroup incl. containerd, 95th percentile) — not run here, and not the same quantity as this process's RSS",
            if etcd.is_some() {
                "etcd puts/s ran in the same run"
            } else {
                "etcd was not installed, so its row's \"a few thousand puts/s\" is a rough quoted figure with no source and no run"
            }
        ),
    ];
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd_run() -> Report {
        let mut etcd = Report::default();
        for (key, value) in [
            ("create_p50_ms", 3.0),
            ("create_p99_ms", 30.0),
            ("create_calls", 3200.0),
            ("watch_delivery_p50_ms", 1.0),
            ("watch_delivery_p99_ms", 6.0),
            ("watch_events", 500.0),
            ("creates_per_s", 2500.0),
            ("server_cpu_ms_per_create", 0.3),
            ("etcd_cpu_ms_per_create", 0.2),
            ("client_cpu_ms_per_create", 0.07),
        ] {
            etcd.figure(key, value);
        }
        etcd
    }

    #[test]
    fn a_histogram_is_read_from_metrics_text_by_its_labels() {
        let text = "\
# TYPE x_seconds histogram
x_seconds_sum{type=\"to\",p=\"a\"} 0.001
x_seconds_count{type=\"to\",p=\"a\"} 100
x_seconds_bucket{le=\"0.00001\",type=\"to\",p=\"a\"} 90
x_seconds_bucket{le=\"0.000005\",type=\"to\",p=\"a\"} 50
x_seconds_bucket{le=\"0.00002\",type=\"to\",p=\"a\"} 99
x_seconds_bucket{le=\"+Inf\",type=\"to\",p=\"a\"} 100
x_seconds_bucket{le=\"0.000005\",type=\"from\",p=\"a\"} 7
x_seconds_count{type=\"from\",p=\"a\"} 7
x_seconds_other_count{type=\"to\"} 3
";
        let h = histogram(text, "x_seconds", "type=\"to\"").expect("the series");
        assert_eq!(h.count, 100.0);
        assert_eq!(h.sum, 0.001);
        assert_eq!(h.buckets.len(), 4);
        assert_eq!(h.quantile_bound(0.5), 0.000005);
        assert_eq!(h.quantile_bound(0.99), 0.00002);
        assert_eq!(h.quantile_bound(1.0), f64::INFINITY);
        assert!(histogram(text, "x_seconds", "type=\"none\"").is_none());
    }

    #[test]
    fn etcd_column_names_figures_ratios_and_rows_before_rss() {
        let mut report = Report {
            header: header(),
            rows: vec![vec!["create".into()], vec!["RSS with 10000 pods".into()]],
            ..Report::default()
        };
        report.figure("create_p99_ms", 20.0);
        report.figure("creates_per_s", 5000.0);
        report.figure("watch_delivery_p99_ms", 3.0);
        report.figure("server_cpu_ms_per_create", 0.25);
        etcd_column(&mut report, &etcd_run(), "etcd", 1, "1 member");
        etcd_column(&mut report, &etcd_run(), "etcd3", 3, "3 members");
        assert_eq!(report.value("etcd_etcd_cpu_ms_per_create"), Some(0.2));
        assert_eq!(report.value("etcd_create_p99_ms"), Some(30.0));
        assert_eq!(report.value("etcd_creates_per_s"), Some(2500.0));
        assert_eq!(report.value("etcd_watch_delivery_p99_ms"), Some(6.0));
        assert_eq!(report.value("etcd_create_p99_ms_vs_embedded"), Some(1.5));
        assert_eq!(report.value("etcd_creates_per_s_vs_embedded"), Some(0.5));
        assert_eq!(
            report.value("etcd3_watch_delivery_p99_ms_vs_embedded"),
            Some(2.0)
        );
        assert_eq!(report.rows.len(), 8);
        assert!(report.rows[1][0].starts_with("create over etcd, 1 member"));
        assert!(report.rows[4][0].starts_with("create over etcd, 3 members"));
        assert!(report.rows[7][0].starts_with("RSS with"));
        assert_eq!(
            report.rows[3][4],
            "etcd/embedded = 0.50 (embedded store: 5000); CPU per create: berth-server 0.300 ms (embedded store: 0.250 ms), etcd member 0.200 ms, load client 0.070 ms"
        );
        assert!(report.rows[6][4].contains("etcd members together 0.200 ms"));
        assert_eq!(report.rows[1][3], "p99 ≤ 1.5 × embedded");
        assert_eq!(report.rows[4][3], "—");
    }

    #[test]
    fn etcd_column_without_the_embedded_store_has_no_ratios() {
        let mut report = Report::default();
        etcd_column(&mut report, &etcd_run(), "etcd", 1, "1 member");
        assert_eq!(report.value("etcd_create_p99_ms"), Some(30.0));
        assert_eq!(report.value("etcd_create_p99_ms_vs_embedded"), None);
        assert_eq!(report.rows.len(), 3);
        assert!(report.rows[0][4].starts_with("embedded store not run"));
    }
}
