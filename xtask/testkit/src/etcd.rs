//! etcd for tests and benchmarks: Debian's `etcd-server` as one member or a cluster
//! (three members for fault tests), on loopback with free ports and data dirs of its
//! own, every member killed by PID on drop. A member can be killed (`kill -9`) and
//! started again on its data dir, so a test can take etcd away and bring it back on
//! the same endpoints. Optionally with TLS and client-certificate authentication
//! ([`EtcdTls`], whose [`EtcdTls::generate`] makes a CA and the certificates).
//!
//! Each member also serves `/health` over plain HTTP on a metrics port
//! (`--listen-metrics-urls`); that is how readiness is checked, with or without TLS.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::ChildGuard;

/// How long a member may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Certificates for an etcd that serves TLS and asks clients for certificates signed by
/// `ca` (`--client-cert-auth`). `client_*` is what `etcdctl` presents.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// A CA of its own and, signed by it, a serving certificate for 127.0.0.1 and
    /// localhost and a client certificate (CN `berth-server`), as PEM files in `dir`.
    ///
    /// # Panics
    /// If a certificate cannot be made or a file written.
    pub fn generate(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir).expect("the TLS directory");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        };
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "berth-test-etcd-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = params.self_signed(&ca_key).expect("the CA certificate");
        let ca = write("ca.crt", &ca_cert.pem());
        let issuer = Issuer::new(params, ca_key);
        let leaf = |name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("a key");
            let mut params =
                CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                    .expect("the names");
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let cert = params
                .signed_by(&key, &issuer)
                .expect("a signed certificate");
            (
                write(&format!("{name}.crt"), &cert.pem()),
                write(&format!("{name}.key"), &key.serialize_pem()),
            )
        };
        let (server_cert, server_key) = leaf(
            "etcd",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf("berth-server", &[], ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    child: Option<ChildGuard>,
}

/// An etcd cluster on loopback (see the module docs).
#[derive(Debug)]
pub struct Etcd {
    binary: PathBuf,
    dir: PathBuf,
    token: String,
    tls: Option<EtcdTls>,
    members: Vec<Member>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

impl Etcd {
    /// The `etcd` binary: `BERTH_ETCD`, else `etcd` on `PATH`.
    pub fn binary() -> Option<PathBuf> {
        std::env::var_os("BERTH_ETCD")
            .map(PathBuf::from)
            .or_else(|| find_in_path("etcd"))
    }

    /// The `etcdctl` binary: `BERTH_ETCDCTL`, else `etcdctl` on `PATH`.
    pub fn etcdctl_binary() -> Option<PathBuf> {
        std::env::var_os("BERTH_ETCDCTL")
            .map(PathBuf::from)
            .or_else(|| find_in_path("etcdctl"))
    }

    /// Whether etcd is installed; if not, records the calling test as skipped (the
    /// caller returns).
    pub fn available() -> bool {
        if Self::binary().is_some() {
            return true;
        }
        crate::skip("etcd is not installed (Debian etcd-server; cargo xtask setup)");
        false
    }

    /// One member, started and healthy.
    pub fn start(parent: &Path) -> Self {
        Self::start_with(parent, 1, None)
    }

    /// `members` members (three for fault tests), started and healthy.
    pub fn cluster(parent: &Path, members: usize) -> Self {
        Self::start_with(parent, members, None)
    }

    /// [`Etcd::prepare`], then every member started. The ports are probed free, then
    /// released for etcd to bind: when another test took one in between (a member
    /// exits with "address already in use"), every member starts again, afresh, on
    /// new ports — nothing has been handed out yet.
    pub fn start_with(parent: &Path, members: usize, tls: Option<EtcdTls>) -> Self {
        let mut etcd = Self::prepare(parent, members, tls);
        for attempt in 1.. {
            for i in 0..etcd.members.len() {
                etcd.spawn(i);
            }
            let started = (0..etcd.members.len()).try_for_each(|i| etcd.try_wait_healthy(i));
            match started {
                Ok(()) => return etcd,
                Err(why) if attempt < 4 && why.contains("address already in use") => {
                    etcd.kill_all();
                    for m in &mut etcd.members {
                        m.client_port = free_port();
                        m.peer_port = free_port();
                        m.metrics_port = free_port();
                    }
                    for i in 0..etcd.members.len() {
                        let _ = std::fs::remove_dir_all(etcd.data_dir(i));
                        let _ = std::fs::remove_file(etcd.log_path(i));
                    }
                }
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Ports and data dirs for `members` members under `parent`, none started yet (so
    /// a test can hand out the endpoints first).
    pub fn prepare(parent: &Path, members: usize, tls: Option<EtcdTls>) -> Self {
        let binary = Self::binary().expect("etcd installed (check Etcd::available first)");
        let dir = parent.join(crate::unique_name("etcd"));
        std::fs::create_dir_all(&dir).expect("create the etcd dir");
        let members = (0..members.max(1))
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                child: None,
            })
            .collect();
        Self {
            binary,
            token: crate::unique_name("berth-etcd"),
            dir,
            tls,
            members,
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The client URLs, one per member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect()
    }

    /// The client URLs comma-separated, as `--etcd-servers` takes them.
    pub fn endpoints_flag(&self) -> String {
        self.endpoints().join(",")
    }

    /// A member's data dir.
    pub fn data_dir(&self, member: usize) -> PathBuf {
        self.dir.join(format!("{}.etcd", self.members[member].name))
    }

    pub fn member_pid(&self, member: usize) -> Option<u32> {
        self.members[member].child.as_ref().map(ChildGuard::id)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Starts every member not running and waits until all are healthy.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i);
        }
    }

    /// Starts one member (again, on its data dir) and waits until it is healthy —
    /// which, in a cluster, needs a quorum of members running.
    pub fn start_member(&mut self, member: usize) {
        if self.members[member].child.is_none() {
            self.spawn(member);
        }
        self.wait_healthy(member);
    }

    /// `kill -9` of one member; its data dir stays.
    pub fn kill_member(&mut self, member: usize) {
        self.members[member].child = None;
    }

    /// `kill -9` of every member.
    pub fn kill_all(&mut self) {
        for m in &mut self.members {
            m.child = None;
        }
    }

    fn spawn(&mut self, i: usize) {
        let cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let client = format!("{}://127.0.0.1:{}", self.scheme(), m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .expect("etcd log");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", m.metrics_port))
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        // A process group of its own: a Ctrl-C meant for `cargo xtask up` (or a test)
        // must not take the store down before the servers writing to it are stopped.
        let child = std::os::unix::process::CommandExt::process_group(
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log),
            0,
        )
        .spawn()
        .expect("spawn etcd");
        self.members[i].child = Some(ChildGuard(child));
    }

    /// Whether the member answers `/health` with `"health":"true"` (it has a leader
    /// and serves reads).
    pub fn healthy(&self, member: usize) -> bool {
        let port = self.members[member].metrics_port;
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(3)));
        if conn
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    fn wait_healthy(&mut self, i: usize) {
        if let Err(why) = self.try_wait_healthy(i) {
            panic!("{why}");
        }
    }

    /// Waits until member `i` is healthy; why not, with the end of its log.
    fn try_wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(guard) = &mut self.members[i].child
                && let Ok(Some(status)) = guard.0.try_wait()
            {
                return Err(format!(
                    "etcd member {} exited with {status}: {}",
                    self.members[i].name,
                    self.log(i)
                ));
            }
            if self.healthy(i) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "etcd member {} was not healthy within {} s: {}",
            self.members[i].name,
            START_TIMEOUT.as_secs(),
            self.log(i)
        ))
    }

    fn log_path(&self, member: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.members[member].name))
    }

    /// The end of a member's log (for failure messages).
    pub fn log(&self, member: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(member)).unwrap_or_default();
        let tail = text.len().saturating_sub(4000);
        text.get(tail..).unwrap_or(&text).to_owned()
    }

    /// `etcdctl` (API v3) against this cluster, with the client certificate under TLS.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let bin = Self::etcdctl_binary().expect("etcdctl installed (Debian etcd-client)");
        let mut cmd = Command::new(bin);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints_flag()))
            .args(["--command-timeout", "10s"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        cmd.args(args).output().expect("run etcdctl")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
