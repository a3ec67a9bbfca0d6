//! A `berth-server` started for a test or a benchmark: its own data dir and port, the
//! admin kubeconfig it writes, ready when `/healthz` answers; killed by PID on drop
//! (the data dir is kept until then, so a test can restart the server on it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::ChildGuard;

#[derive(Debug)]
pub struct BerthServer {
    binary: PathBuf,
    dir: PathBuf,
    /// The loopback address it binds and advertises (`127.0.0.1` unless
    /// [`BerthServer::start_at`] says otherwise).
    address: String,
    port: u16,
    args: Vec<String>,
    child: Option<ChildGuard>,
    /// Whether the port may be changed when another process took it first.
    any_port: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl BerthServer {
    /// Starts `binary` on a fresh data dir under `parent`.
    pub fn start(binary: &Path, parent: &Path) -> Self {
        Self::start_with(binary, parent, &[])
    }

    /// [`BerthServer::start`] with more command-line flags (e.g.
    /// `--controllers=false`, `--node-monitor-grace-period=3s`).
    pub fn start_with(binary: &Path, parent: &Path, args: &[&str]) -> Self {
        let mut server = Self::prepare_at(binary, parent, "127.0.0.1", free_port(), args);
        // The port was only probed free: another test may take it first.
        server.any_port = true;
        server.restart();
        server
    }

    /// [`BerthServer::start_with`] bound to and advertising `address` (another
    /// loopback address, `127.0.0.2`, for a second server of one cluster) on `port`.
    pub fn start_at(binary: &Path, parent: &Path, address: &str, port: u16, args: &[&str]) -> Self {
        let mut server = Self::prepare_at(binary, parent, address, port, args);
        server.restart();
        server
    }

    /// [`BerthServer::start_at`] without starting it: [`BerthServer::spawn`] starts it
    /// without waiting, so several servers can start at once.
    pub fn prepare_at(
        binary: &Path,
        parent: &Path,
        address: &str,
        port: u16,
        args: &[&str],
    ) -> Self {
        let dir = parent.join(crate::unique_name("berth-server"));
        std::fs::create_dir_all(&dir).expect("create the server's data dir");
        Self {
            binary: binary.into(),
            dir,
            address: address.to_owned(),
            port,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
            any_port: false,
        }
    }

    /// A port free on 127.0.0.1 (and so, in practice, on the other loopback addresses).
    pub fn free_port() -> u16 {
        free_port()
    }

    /// Replaces the extra flags for the next (re)start (e.g. `--etcd-servers=…` on a
    /// data dir moved to etcd).
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
    }

    /// (Re)starts the process on the same data dir and port.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// (Re)starts the process without waiting for it ([`BerthServer::wait_ready`]).
    pub fn spawn(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.join("server.log")).expect("server log");
        let child = Command::new(&self.binary)
            .args(["--data-dir"])
            .arg(&self.dir)
            .args(["--bind-address", &self.address, "--secure-port"])
            .arg(self.port.to_string())
            .args(["--advertise-address", &self.address])
            .arg("--token-auth-file")
            .arg(self.token_file())
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn berth-server");
        self.child = Some(ChildGuard(child));
    }

    /// Static tokens, written before start: `berth-test-token` for user `tester` (in
    /// `system:masters`, so tests and benchmarks may do everything with it), and
    /// `<name>-token` for users `alice`, `bob`, `carol` and `dave`, who belong to no
    /// group and so hold only what RBAC bindings give them.
    pub fn token_file(&self) -> PathBuf {
        let path = self.dir.join("tokens.csv");
        if !path.exists() {
            let mut tokens =
                String::from("berth-test-token,tester,1001,\"testers,system:masters\"\n");
            for (uid, user) in ["alice", "bob", "carol", "dave"].iter().enumerate() {
                tokens.push_str(&format!("{user}-token,{user},{}\n", 2001 + uid));
            }
            std::fs::write(&path, tokens).expect("write the token file");
        }
        path
    }

    /// Waits until the server listens and has written its kubeconfig.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(guard) = &mut self.child
                && let Ok(Some(status)) = guard.0.try_wait()
            {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                if self.any_port && log.contains("in use") {
                    // Another test's server took the probed port: another one.
                    self.port = free_port();
                    let _ = std::fs::remove_file(self.kubeconfig());
                    self.spawn();
                    continue;
                }
                panic!("berth-server exited with {status}: {log}");
            }
            // Ready once its kubeconfig is written and the port is ours: a server that
            // lost the port to another test's would otherwise look ready, with that
            // server answering under another CA.
            let pid = self.child.as_ref().map(|c| c.0.id());
            if self.kubeconfig().exists()
                && std::net::TcpStream::connect((self.address.as_str(), self.port)).is_ok()
                && pid.is_some_and(|pid| listens(pid, self.port))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("berth-server did not listen on {} within 30 s", self.port);
    }

    /// Kills the process (`kill -9`), keeping the data dir.
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Stops the process cleanly (SIGTERM) and waits up to `timeout` for it to exit;
    /// whether it did (it is killed otherwise). The data dir stays.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut guard) = self.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(guard.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = guard.0.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("https://{}:{}", self.address, self.port)
    }

    /// The address it binds and advertises.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// A new bootstrap token (`berth-server token create`) in a kubeconfig for this
    /// server, with which an agent joins ([`crate::Agent::join_with`]).
    pub fn bootstrap_kubeconfig(&self) -> PathBuf {
        let out = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["token", "create", "--ttl", "1h"])
            .output()
            .expect("run berth-server token create");
        assert!(
            out.status.success(),
            "berth-server token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let path = self.dir.join(format!(
            "bootstrap-{}.kubeconfig",
            crate::unique_name("token")
        ));
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: berth\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: bootstrap\n  user:\n    token: {token}\ncontexts:\n- name: bootstrap\n  context: {{cluster: berth, user: bootstrap}}\ncurrent-context: bootstrap\n",
            self.url(),
            self.ca().display()
        );
        std::fs::write(&path, config).expect("write the bootstrap kubeconfig");
        path
    }
}

impl Drop for BerthServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether process `pid` holds a TCP socket listening on `port` (any address), from
/// its descriptors and its network namespace's socket tables.
fn listens(pid: u32, port: u16) -> bool {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let suffix = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|table| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                f.len() > 9 && f[3] == "0A" && f[1].ends_with(&suffix) && inodes.contains(f[9])
            })
    })
}
