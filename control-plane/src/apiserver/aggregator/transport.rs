//! One HTTPS/1.1 exchange with an extension apiserver, as kube-aggregator's proxy
//! transport makes it: TCP to the endpoint's address, TLS with the front-proxy client
//! certificate and the server name `<service>.<namespace>.svc` (sent as SNI and the name
//! the serving certificate must hold), the certificate checked against the
//! APIService's `caBundle` — or not at all with `insecureSkipTLSVerify`, and for the
//! availability check, which upstream makes without verification too.
//!
//! The connection carries one request (and, after a `101`, the upgraded stream); errors
//! read like Go's (`dial tcp 10.0.0.1:443: connect: connection refused`) because they
//! end up in conditions and `503` bodies users compare with upstream's.
//!
//! Entry points: [`Trust`], [`client_config`], [`send`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::front_proxy::Identity;

/// How long dialing and the TLS handshake may take (kube-aggregator's dialer: 30 s;
/// shorter here so a dead endpoint fails a request well before clients give up).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Not at all (`insecureSkipTLSVerify`, and the availability check).
    Insecure,
    /// Against these PEM CAs (`caBundle`; empty: nothing verifies).
    Bundle(Vec<u8>),
}

/// Accepts any certificate: upstream's `Insecure: true`.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration for one APIService.
pub fn client_config(
    trust: &Trust,
    identity: &Identity,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
        Trust::Bundle(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("unable to load root certificates: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("unable to load root certificates: {e}"))?;
            }
            builder.with_root_certificates(roots)
        }
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the front-proxy client certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| format!("the front-proxy client key: {e}"))?;
    let mut config = builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the front-proxy client certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `https://10.0.0.1:443`, `https://[fd00::1]:443`.
pub fn base_url(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

/// Go's wording of a failed dial.
fn dial_error(addr: SocketAddr, err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let cause = match err.kind() {
        ErrorKind::ConnectionRefused => "connect: connection refused".to_owned(),
        ErrorKind::TimedOut => "i/o timeout".to_owned(),
        ErrorKind::HostUnreachable => "connect: no route to host".to_owned(),
        ErrorKind::NetworkUnreachable => "connect: network is unreachable".to_owned(),
        _ => err.to_string(),
    };
    format!("dial tcp {addr}: {cause}")
}

/// Sends `req` (origin-form URI, headers already set) to `addr` over TLS for
/// `server_name`, waiting at most `timeout` for the response head. The connection
/// supports upgrades: a `101`'s stream is `hyper::upgrade::on(response)`.
pub async fn send(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    req: Request<Body>,
    timeout: Duration,
) -> Result<Response<Incoming>, String> {
    let name = ServerName::try_from(server_name.to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
    let dial = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| dial_error(addr, &e))?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))
    };
    let tls = tokio::time::timeout(DIAL_TIMEOUT, dial)
        .await
        .map_err(|_| format!("dial tcp {addr}: i/o timeout"))??;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Body>(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%err, %addr, "aggregated API connection ended");
        }
    });
    tokio::time::timeout(timeout, sender.send_request(req))
        .await
        .map_err(|_| "net/http: timeout awaiting response headers".to_owned())?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_errors_read_like_go() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            dial_error(addr, &refused),
            "dial tcp 127.0.0.1:1: connect: connection refused"
        );
        let v6: SocketAddr = "[fd00::1]:443".parse().expect("addr");
        assert_eq!(base_url(v6), "https://[fd00::1]:443");
    }
}
