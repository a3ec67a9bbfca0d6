//! The cluster's certificates, made on first start under `<data-dir>/pki/` (rcgen):
//! the cluster CA, the apiserver's serving certificate (for localhost, the host name, the
//! `kubernetes` Service's names and IP, and the advertised address), client
//! certificates (CN = user, O = groups), and the admin kubeconfig that embeds them.

use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

/// Writes `contents` to `path` (created with its directory), replacing it atomically;
/// `private` files are readable by their owner only.
pub fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&tmp)
            .map_err(io)?;
        f.write_all(contents.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// A new self-signed CA named `common_name`: (cert PEM, key PEM). The cluster CA, and
/// the front-proxy CA of API aggregation (`apiserver::aggregator::front_proxy`).
pub fn self_signed_ca(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// PEM files of the cluster.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert: String,
    pub ca_key: String,
    pub server_cert: String,
    pub server_key: String,
}

impl Pki {
    /// Loads the PKI in `dir`, creating what is missing.
    pub fn ensure(dir: &Path, sans: &[String]) -> Result<Self, PkiError> {
        let ca_cert_path = dir.join("ca.crt");
        let ca_key_path = dir.join("ca.key");
        if !ca_cert_path.exists() || !ca_key_path.exists() {
            let (cert, key) = self_signed_ca("berth-ca")?;
            write(&ca_key_path, &key, true)?;
            write(&ca_cert_path, &cert, false)?;
        }
        let ca_cert = read(&ca_cert_path)?;
        let ca_key = read(&ca_key_path)?;
        let mut pki = Self {
            dir: dir.into(),
            ca_cert,
            ca_key,
            server_cert: String::new(),
            server_key: String::new(),
        };
        let cert_path = dir.join("apiserver.crt");
        let key_path = dir.join("apiserver.key");
        if !cert_path.exists() || !key_path.exists() {
            let (cert, key) = pki.issue("kube-apiserver", &[], sans, true)?;
            write(&key_path, &key, true)?;
            write(&cert_path, &cert, false)?;
        }
        pki.server_cert = read(&cert_path)?;
        pki.server_key = read(&key_path)?;
        Ok(pki)
    }

    /// A certificate signed by the cluster CA: (cert PEM, key PEM).
    pub fn issue(
        &self,
        common_name: &str,
        groups: &[&str],
        sans: &[String],
        server: bool,
    ) -> Result<(String, String), PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca_key)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = if server {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes a kubeconfig for `user` (in `groups`) talking to `server`.
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        server: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<(), PkiError> {
        let (cert, key) = self.issue(user, groups, &[], false)?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: berth\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: berth\n  context:\n    cluster: berth\n    user: {user}\ncurrent-context: berth\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&self.ca_cert),
            b64(&cert),
            b64(&key)
        );
        write(path, &config, true)
    }
}
