//! How to reach etcd: kube-apiserver's `--etcd-*` flags, checked and turned into the
//! client's options (endpoints, keep-alives, TLS with a client certificate).

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::ConnectOptions;

use crate::store::{Result, StoreError};

/// How to reach etcd: kube-apiserver's `--etcd-*` flags.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--etcd-servers`: `http://host:port` or `https://host:port` URLs.
    pub endpoints: Vec<String>,
    /// `--etcd-cafile`: the CA that signed etcd's serving certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// `--etcd-certfile` and `--etcd-keyfile`: the client certificate and key (PEM).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `--etcd-prefix`: where under etcd's keyspace the objects live (`/registry`).
    pub prefix: String,
    /// Whether watches ask etcd for progress notifications, so the watch cache learns
    /// it is current when the newest writes were outside the prefix (KEP-2340). Only
    /// etcd 3.4.31+ and 3.5.13+ send a requested notification after the events it
    /// covers (etcd#15220); an older one can send it first, and the cache would then
    /// answer without them. `None` (the default) decides from every member's version
    /// at connect, as kube-apiserver does; `Some` overrides that.
    pub watch_progress: Option<bool>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            prefix: "/registry".into(),
            watch_progress: None,
        }
    }
}

impl Options {
    /// The endpoints as one string, for messages.
    pub fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }

    /// The client options: keep-alives that notice a dead member within seconds, and
    /// TLS with the client certificate for `https://` endpoints.
    pub(super) fn connect_options(&self) -> Result<ConnectOptions> {
        let bad = |why: String| StoreError::Backend(format!("--etcd-servers: {why}"));
        if self.endpoints.is_empty() {
            return Err(bad("no endpoints".into()));
        }
        let mut tls = false;
        for e in &self.endpoints {
            match e.split_once("://") {
                Some(("https", _)) => tls = true,
                Some(("http", _)) => {}
                _ => return Err(bad(format!("{e:?} is not an http:// or https:// URL"))),
            }
        }
        if tls && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(bad("mixes http:// and https:// endpoints".into()));
        }
        let mut options = ConnectOptions::new()
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            .with_connect_timeout(Duration::from_secs(3))
            // A member without a leader fails requests and watches at once, so the
            // client goes to another member instead of waiting.
            .with_require_leader(true);
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| StoreError::Backend(format!("{flag} {}: {e}", path.display())))
        };
        if tls {
            let Some(ca) = &self.ca_file else {
                return Err(bad("https:// endpoints need --etcd-cafile".into()));
            };
            let mut config = etcd_client::TlsOptions::new().ca_certificate(
                etcd_client::Certificate::from_pem(read("--etcd-cafile", ca)?),
            );
            match (&self.cert_file, &self.key_file) {
                (Some(cert), Some(key)) => {
                    config = config.identity(etcd_client::Identity::from_pem(
                        read("--etcd-certfile", cert)?,
                        read("--etcd-keyfile", key)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Backend(
                        "--etcd-certfile and --etcd-keyfile go together".into(),
                    ));
                }
            }
            options = options.with_tls(config);
        } else if self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some() {
            return Err(bad(
                "--etcd-cafile/--etcd-certfile/--etcd-keyfile need https:// endpoints".into(),
            ));
        }
        Ok(options)
    }
}
