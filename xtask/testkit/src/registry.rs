//! A real `docker-registry` on a loopback port, for pulls (Debian's
//! `docker-registry`, the CNCF distribution registry), stopped by PID when dropped,
//! and `skopeo` to push test images into it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::ChildGuard;

/// The one user of [`Registry::start_with_auth`] and its password.
pub const AUTH_USER: &str = "puller";
pub const AUTH_PASSWORD: &str = "pull-s3cret";
/// [`AUTH_PASSWORD`] as htpasswd's bcrypt (the registry takes no other scheme), cost 5
/// to keep every request cheap; made once with
/// `python3 -c "import crypt; print(crypt.crypt('pull-s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=32)))"`
/// (`htpasswd -nbB -C 5` gives the same kind of hash).
const AUTH_BCRYPT: &str = "$2b$05$XzGtFgE3A8Tx6ky1FXFs5uICdGUpBCUt4vz2FiuxMpadJBfYQj3f6";

#[derive(Debug)]
pub struct Registry {
    _child: ChildGuard,
    pub port: u16,
    /// The registry's log (every request it served).
    pub log: PathBuf,
}

impl Registry {
    /// A registry storing under `dir`, plain HTTP on `127.0.0.1:<port>`.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "")
    }

    /// `http`: extra lines under `http:` in its configuration (a `tls:` block).
    pub fn start_with(dir: &Path, http: &str) -> Self {
        Self::spawn(dir, http, "")
    }

    /// A registry that answers only [`AUTH_USER`] with [`AUTH_PASSWORD`] (HTTP basic
    /// auth from an htpasswd file; anonymous requests get 401 and a `Basic` challenge).
    pub fn start_with_auth(dir: &Path) -> Self {
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{AUTH_USER}:{AUTH_BCRYPT}\n")).expect("htpasswd");
        Self::spawn(
            dir,
            "",
            &format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                htpasswd.display()
            ),
        )
    }

    fn spawn(dir: &Path, http: &str, top: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n{top}http:\n  addr: 127.0.0.1:{port}\n{http}",
                dir.join("registry-data").display()
            ),
        )
        .expect("the registry's config");
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log).expect("the registry's log");
        let err = out.try_clone().expect("the registry's log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("docker-registry (cargo xtask setup installs it)");
        let child = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            _child: child,
            port,
            log,
        }
    }

    /// The requests the registry has served so far (its log).
    pub fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs `skopeo` with `args`, panicking with its stderr when it fails.
pub fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
