//! The node's client identity, as the kubelet's TLS bootstrap and certificate
//! rotation (`pkg/kubelet/certificate/bootstrap`, `k8s.io/client-go/util/certificate`)
//! do it. With `--bootstrap-kubeconfig` and no usable `--kubeconfig`, the agent makes
//! an ECDSA P-256 key, files a CertificateSigningRequest for `system:node:<name>` in
//! `system:nodes` (signer `kubernetes.io/kube-apiserver-client-kubelet`) with the
//! bootstrap credentials, waits for the certificate, and writes
//! `<cert-dir>/kubelet-client-current.pem` (certificate and key) and a kubeconfig that
//! names it. [`client`] builds a kube client whose TLS client certificate is read from
//! a [`Rotating`] slot, so [`rotate`] can renew the certificate (a new key and CSR,
//! with the node's own identity, at 70–90 % of its lifetime) under a running agent.
//!
//! Entry points: [`bootstrap`], [`client`], [`rotate`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use kube::client::ConfigExt;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde_json::json;

/// The file holding the current client certificate and its key.
pub const CURRENT: &str = "kubelet-client-current.pem";
const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The file holding the kubelet API's serving certificate and its key.
pub const SERVING: &str = "kubelet-server-current.pem";
/// How long the agent waits for its request to be approved and signed.
const WAIT: Duration = Duration::from_secs(15 * 60);

/// `notBefore` and `notAfter` (Unix seconds) of the first certificate in `pem`.
pub fn validity(pem: &[u8]) -> Option<(i64, i64)> {
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A certificate and key (PEM) as rustls signs with them.
fn certified(pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .context("the client certificate")?;
    if chain.is_empty() {
        bail!("no certificate in the client certificate file");
    }
    let key = PrivateKeyDer::from_pem_slice(pem).context("the client key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("the client key: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The client certificate the agent's connections present, replaceable while they run.
#[derive(Debug)]
pub struct Rotating {
    current: RwLock<Arc<CertifiedKey>>,
    pem: RwLock<Vec<u8>>,
}

impl Rotating {
    pub fn new(pem: &[u8]) -> anyhow::Result<Self> {
        Ok(Self {
            current: RwLock::new(Arc::new(certified(pem)?)),
            pem: RwLock::new(pem.to_vec()),
        })
    }

    /// Replaces the certificate (and key) from `pem`.
    pub fn set(&self, pem: &[u8]) -> anyhow::Result<()> {
        let key = Arc::new(certified(pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        *self.pem.write().unwrap_or_else(|p| p.into_inner()) = pem.to_vec();
        Ok(())
    }

    fn validity(&self) -> Option<(i64, i64)> {
        validity(&self.pem.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl rustls::server::ResolvesServerCert for Rotating {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

impl ResolvesClientCert for Rotating {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Where the kubeconfig's client certificate file is, when it names one
/// (`client-certificate`), as the kubeconfig [`bootstrap`] writes does.
pub fn certificate_file(kc: &kube::config::Kubeconfig) -> Option<PathBuf> {
    kc.auth_infos
        .iter()
        .find_map(|a| a.auth_info.as_ref()?.client_certificate.clone())
        .map(PathBuf::from)
}

/// A kube client for `config` presenting `identity`'s current certificate.
pub fn client(config: &kube::Config, identity: Arc<Rotating>) -> anyhow::Result<kube::Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in config.root_cert.iter().flatten() {
        roots
            .add(CertificateDer::from(der.clone()))
            .context("the cluster CA")?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_client_cert_resolver(identity);
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .layer(config.extra_headers_layer()?)
        .service(http_client);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}

/// A new key and a CSR (PEM) for `system:node:<node>` in `system:nodes`, for the
/// subject alternative names `sans` (DNS names or IP addresses).
fn new_request(node: &str, sans: &[String]) -> anyhow::Result<(rcgen::KeyPair, String)> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let mut params =
        rcgen::CertificateParams::new(sans.to_vec()).context("the subject alternative names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let csr = params.serialize_request(&key).context("the CSR")?;
    Ok((key, csr.pem().context("the CSR's PEM")?))
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    /// The node's client certificate.
    Client,
    /// The kubelet API's serving certificate.
    Serving,
}

/// Files a CSR through `client` and waits for its certificate; returns certificate and
/// key as one PEM.
async fn request_certificate(
    client: &kube::Client,
    node: &str,
    purpose: Purpose,
    sans: &[String],
) -> anyhow::Result<Vec<u8>> {
    let (key, pem) = new_request(node, sans)?;
    let (signer, usage) = match purpose {
        Purpose::Client => (SIGNER, "client auth"),
        Purpose::Serving => (SERVING_SIGNER, "server auth"),
    };
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "metadata": {"generateName": "node-csr-"},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": signer,
            "usages": ["digital signature", usage],
        },
    }))?;
    let api = Api::<CertificateSigningRequest>::all(client.clone());
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .context("filing the certificate signing request")?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(csr = %name, "waiting for the client certificate to be approved and signed");
    let issued = |obj: Option<&CertificateSigningRequest>| {
        obj.and_then(|o| o.status.as_ref()).is_some_and(|s| {
            s.certificate.as_ref().is_some_and(|c| !c.0.is_empty())
                || s.conditions
                    .iter()
                    .flatten()
                    .any(|c| matches!(c.type_.as_str(), "Denied" | "Failed") && c.status == "True")
        })
    };
    let done = tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(api.clone(), &name, issued),
    )
    .await
    .with_context(|| format!("CSR {name} was not signed within {WAIT:?}"))?
    .with_context(|| format!("watching CSR {name}"))?
    .with_context(|| format!("CSR {name} was deleted"))?;
    let status = done.status.unwrap_or_default();
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| matches!(c.type_.as_str(), "Denied" | "Failed"))
    {
        bail!(
            "CSR {name} was {}: {}",
            c.type_.to_lowercase(),
            c.message.clone().unwrap_or_default()
        );
    }
    let mut out = status.certificate.map(|c| c.0).unwrap_or_default();
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(key.serialize_pem().as_bytes());
    Ok(out)
}

/// Writes `contents` to `path` (mode 0600) through a temporary file.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Whether `kubeconfig` exists and its client certificate is valid for a while yet.
fn usable(kubeconfig: &Path) -> bool {
    let Ok(kc) = kube::config::Kubeconfig::read_from(kubeconfig) else {
        return false;
    };
    let pem = match certificate_file(&kc) {
        Some(file) => std::fs::read(file).ok(),
        None => kc
            .auth_infos
            .iter()
            .find_map(|a| a.auth_info.as_ref()?.client_certificate_data.clone())
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok()),
    };
    pem.and_then(|p| validity(&p))
        .is_some_and(|(_, not_after)| not_after > now() + 60)
}

/// TLS bootstrap: unless `kubeconfig` already holds a usable client certificate, gets
/// one for `node` with the bootstrap kubeconfig's credentials and writes `kubeconfig`
/// (the bootstrap kubeconfig's cluster, the certificate in `cert_dir`).
pub async fn bootstrap(
    bootstrap_kubeconfig: &Path,
    kubeconfig: &Path,
    cert_dir: &Path,
    node: &str,
) -> anyhow::Result<()> {
    if usable(kubeconfig) {
        tracing::info!(kubeconfig = %kubeconfig.display(), "the node's client certificate is valid; no bootstrap");
        return Ok(());
    }
    let kc = kube::config::Kubeconfig::read_from(bootstrap_kubeconfig)
        .with_context(|| format!("reading {}", bootstrap_kubeconfig.display()))?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("the bootstrap kubeconfig names no cluster")?;
    let server = cluster.server.clone().unwrap_or_default();
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => data.clone(),
        (None, Some(file)) => base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(file).with_context(|| format!("reading {file}"))?),
        (None, None) => bail!("the bootstrap kubeconfig has no cluster CA"),
    };
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("loading the bootstrap kubeconfig")?;
    crate::identify(&mut config)?;
    let boot = kube::Client::try_from(config)?;
    let pem = request_certificate(&boot, node, Purpose::Client, &[]).await?;
    let current = cert_dir.join(CURRENT);
    write_private(&current, &pem)?;
    let file = current.display();
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: default-cluster\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: default-context\n  context:\n    cluster: default-cluster\n    namespace: default\n    user: default-auth\ncurrent-context: default-context\nusers:\n- name: default-auth\n  user:\n    client-certificate: {file}\n    client-key: {file}\n"
    );
    write_private(kubeconfig, config.as_bytes())?;
    tracing::info!(node, kubeconfig = %kubeconfig.display(), "joined: client certificate issued");
    Ok(())
}

/// The kubelet API's serving certificate and key (one PEM) for `names` (the node's
/// name and address), from the `kubernetes.io/kubelet-serving` signer: the one in
/// `cert_dir` while it is valid for another day, else a new one (requested with the
/// node's identity and approved by berth-server's approver).
pub async fn serving(
    client: &kube::Client,
    node: &str,
    names: &[String],
    cert_dir: &Path,
) -> anyhow::Result<Vec<u8>> {
    let path = cert_dir.join(SERVING);
    if let Ok(pem) = std::fs::read(&path)
        && validity(&pem).is_some_and(|(_, not_after)| not_after > now() + 86_400)
    {
        return Ok(pem);
    }
    let pem = request_certificate(client, node, Purpose::Serving, names).await?;
    write_private(&path, &pem)?;
    Ok(pem)
}

/// Gets the serving certificate ([`serving`]) into `identity` (which the kubelet API
/// serves with), and a new one a day before it expires, for as long as the agent runs.
pub async fn keep_serving(
    client: kube::Client,
    identity: Arc<Rotating>,
    node: String,
    names: Vec<String>,
    cert_dir: PathBuf,
) {
    loop {
        match serving(&client, &node, &names, &cert_dir).await {
            Ok(pem) => match identity.set(&pem) {
                Ok(()) => {
                    tracing::info!(node, "kubelet API serving certificate from the cluster CA");
                    let until = validity(&pem).map_or(0, |(_, not_after)| not_after - 86_400);
                    let wait = (until - now()).max(60);
                    tokio::time::sleep(Duration::from_secs(wait.unsigned_abs())).await;
                }
                Err(err) => {
                    tracing::error!(%err, "the serving certificate");
                    return;
                }
            },
            Err(err) => {
                tracing::warn!(%err, "no serving certificate from the cluster CA yet (serving a self-signed one); retrying in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: at a random
/// point between 70 % and 90 % of its lifetime (client-go's jittered deadline).
fn renew_at(not_before: i64, not_after: i64) -> i64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    let fraction = 0.7 + 0.2 * f64::from(b[0]) / 255.0;
    let life = (not_after - not_before) as f64;
    not_before + (life * fraction) as i64
}

/// Renews the client certificate in `cert_dir` before it expires, for as long as the
/// agent runs: a new key and CSR filed with the node's own identity
/// (`selfnodeclient`), the new certificate swapped into `identity` and the file.
pub async fn rotate(
    client: kube::Client,
    identity: Arc<Rotating>,
    node: String,
    cert_dir: PathBuf,
) {
    // At least a minute between renewals, whatever the lifetimes (a signer's 5-minute
    // backdating puts a very short certificate's renewal point in the past).
    let mut floor = 0;
    loop {
        let Some((not_before, not_after)) = identity.validity() else {
            tracing::error!("the client certificate cannot be read; not rotating it");
            return;
        };
        let wait = (renew_at(not_before, not_after) - now()).max(floor);
        floor = 60;
        tokio::time::sleep(Duration::from_secs(wait.unsigned_abs())).await;
        match request_certificate(&client, &node, Purpose::Client, &[]).await {
            Ok(pem) => {
                let stored = write_private(&cert_dir.join(CURRENT), &pem);
                match stored.and_then(|()| identity.set(&pem)) {
                    Ok(()) => tracing::info!(node, "client certificate renewed"),
                    Err(err) => tracing::error!(%err, "storing the renewed client certificate"),
                }
            }
            Err(err) => {
                tracing::warn!(%err, "renewing the client certificate; retrying in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_in_the_last_third_of_the_lifetime() {
        for _ in 0..50 {
            let at = renew_at(1000, 2000);
            assert!((1700..=1900).contains(&at), "{at}");
        }
    }

    #[test]
    fn requests_name_the_node() {
        let (_, pem) = new_request("n1", &["n1".into(), "10.0.0.1".into()]).expect("a request");
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
            "{pem}"
        );
    }
}
