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

/// Where the cluster CA and the serving certificate come from when not made in the
/// PKI dir: what `--client-ca-file`/`--client-ca-key-file` and
/// `--tls-cert-file`/`--tls-private-key-file` name. Servers of one cluster share the
/// CA (and the service-account keys); each has a serving certificate of its own.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The cluster CA's certificate and key.
    pub ca: Option<(PathBuf, PathBuf)>,
    /// The serving certificate and key.
    pub serving: Option<(PathBuf, PathBuf)>,
}

impl Pki {
    /// Loads the PKI in `dir`, creating what is missing.
    pub fn ensure(dir: &Path, sans: &[String]) -> Result<Self, PkiError> {
        Self::ensure_from(dir, sans, &Sources::default())
    }

    /// Loads the PKI: the CA from `sources` (copied into `dir`, where the controllers
    /// and tools look for it) or from `dir` (made if missing); the serving certificate
    /// from `sources`, or from `dir` — made, or made again when it is not one of this
    /// CA's for every name in `sans` (another CA given, another advertised address).
    pub fn ensure_from(dir: &Path, sans: &[String], sources: &Sources) -> Result<Self, PkiError> {
        let ca_cert_path = dir.join("ca.crt");
        let ca_key_path = dir.join("ca.key");
        if let Some((cert, key)) = &sources.ca {
            let (cert, key) = (read(cert)?, read(key)?);
            KeyPair::from_pem(&key)?;
            if read(&ca_cert_path).ok().as_deref() != Some(cert.as_str())
                || read(&ca_key_path).ok().as_deref() != Some(key.as_str())
            {
                write(&ca_key_path, &key, true)?;
                write(&ca_cert_path, &cert, false)?;
            }
        } else if !ca_cert_path.exists() || !ca_key_path.exists() {
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
        let (cert_path, key_path) = match &sources.serving {
            Some((cert, key)) => (cert.clone(), key.clone()),
            None => {
                let cert_path = dir.join("apiserver.crt");
                let key_path = dir.join("apiserver.key");
                let current = read(&cert_path).ok();
                if !key_path.exists()
                    || current.is_none_or(|cert| !covers(&pki.ca_cert, &cert, sans))
                {
                    let (cert, key) = pki.issue("kube-apiserver", &[], sans, true)?;
                    write(&key_path, &key, true)?;
                    write(&cert_path, &cert, false)?;
                }
                (cert_path, key_path)
            }
        };
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

/// Whether `cert_pem` is a serving certificate of CA `ca_pem`, valid now for every name
/// and address in `sans` (each checked as a TLS client would).
pub fn covers(ca_pem: &str, cert_pem: &str, sans: &[String]) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        if roots.add(cert).is_err() {
            return false;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let Ok(verifier) =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider).build()
    else {
        return false;
    };
    let Ok(chain) = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
    else {
        return false;
    };
    let Some((leaf, rest)) = chain.split_first() else {
        return false;
    };
    let now = UnixTime::now();
    sans.iter()
        .all(|san| match ServerName::try_from(san.as_str()) {
            Ok(name) => verifier
                .verify_server_cert(leaf, rest, &name, &[], now)
                .is_ok(),
            // A name a TLS client cannot ask for (a host name with `_`): nothing to check.
            Err(_) => true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_certificate_is_made_again_for_another_ca_or_address() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = Pki::ensure(dir.path(), &sans).expect("pki");
        assert!(covers(&first.ca_cert, &first.server_cert, &sans));
        let again = Pki::ensure(dir.path(), &sans).expect("pki again");
        assert_eq!(again.server_cert, first.server_cert, "kept while it fits");
        let more = vec!["127.0.0.2".to_owned()];
        assert!(!covers(&first.ca_cert, &first.server_cert, &more));
        let other = Pki::ensure(dir.path(), &more).expect("another address");
        assert!(covers(&other.ca_cert, &other.server_cert, &more));

        // Another server's CA, given as files: copied in, and the certificate re-issued.
        let shared = tempfile::tempdir().expect("shared dir");
        let theirs = Pki::ensure(shared.path(), &sans).expect("their pki");
        let sources = Sources {
            ca: Some((shared.path().join("ca.crt"), shared.path().join("ca.key"))),
            serving: None,
        };
        let joined = Pki::ensure_from(dir.path(), &sans, &sources).expect("shared CA");
        assert_eq!(joined.ca_cert, theirs.ca_cert);
        assert!(covers(&theirs.ca_cert, &joined.server_cert, &sans));
        assert!(!covers(&first.ca_cert, &joined.server_cert, &sans));
    }
}
