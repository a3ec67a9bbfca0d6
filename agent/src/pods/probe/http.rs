//! httpGet probes as the kubelet runs them (pkg/probe/http): a GET with `User-Agent:
//! kube-probe/<version>` and `Accept: */*` unless the probe's headers set them (a `Host`
//! header sets the request's host), HTTPS without certificate verification, redirects
//! followed up to 10 times while they stay on the same host — a redirect to another host
//! is not followed and its 3xx answer counts as success, as the kubelet's does — and
//! 200–399 is success. hyper on a current-thread tokio runtime driven by the calling
//! thread, so the sockets open in whatever network namespace that thread is in.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The version the kubelet puts in its probes' User-Agent.
const USER_AGENT: &str = "kube-probe/1.34";
/// How many redirects are followed (Go's http.Client default, which the kubelet keeps).
const MAX_REDIRECTS: usize = 10;
/// How much of a body is read (the kubelet's `maxRespBodyLength`).
const MAX_BODY: usize = 10 * 1024;

/// One httpGet probe request.
#[derive(Debug, Clone)]
pub struct Request {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// What a probe saw: success, with an optional warning (a redirect not followed), or
/// the failure's message.
pub type Outcome = Result<Option<String>, String>;

/// Runs the probe on a runtime driven by this thread, bounded by `timeout` in all.
pub fn probe(req: &Request, timeout: Duration) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("probe runtime: {e}"))?;
    let url = req.url(&req.path);
    rt.block_on(async {
        match tokio::time::timeout(timeout, follow(req)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
        }
    })
}

impl Request {
    fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme(), self.authority(), path)
    }
}

/// GETs the probe's URL, following same-host redirects.
async fn follow(first: &Request) -> Outcome {
    let mut req = first.clone();
    for _ in 0..=MAX_REDIRECTS {
        let url = req.url(&req.path);
        let (status, location, body) = get(&req).await.map_err(|e| format!("Get {url:?}: {e}"))?;
        let code = status.as_u16();
        if status.is_redirection()
            && let Some(location) = location
        {
            let next = redirect(&req, &location)
                .ok_or_else(|| format!("Get {url:?}: bad redirect location {location:?}"))?;
            if next.host != first.host {
                // Not followed: the 3xx is the answer, a success with a warning.
                return Ok(Some(format!(
                    "Probe terminated redirects, Response body: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            req = next;
            continue;
        }
        return if (200..400).contains(&code) {
            Ok(None)
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        };
    }
    Err(format!(
        "Get {:?}: stopped after {MAX_REDIRECTS} redirects",
        req.url(&req.path)
    ))
}

/// The request a redirect to `location` makes (absolute, or relative to `req`'s path).
fn redirect(req: &Request, location: &str) -> Option<Request> {
    let mut next = req.clone();
    if location.contains("://") {
        let uri: Uri = location.parse().ok()?;
        next.https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        next.host = uri.host()?.trim_matches(['[', ']']).to_string();
        next.port = uri.port_u16().unwrap_or(if next.https { 443 } else { 80 });
        next.path = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.to_string());
    } else if location.starts_with('/') {
        next.path = location.to_string();
    } else {
        let base = req.path.split('?').next().unwrap_or("/");
        let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
        next.path = format!("{}{location}", if dir.is_empty() { "/" } else { dir });
    }
    Some(next)
}

/// One GET: the status, the Location header, and up to [`MAX_BODY`] of the body.
async fn get(req: &Request) -> Result<(hyper::StatusCode, Option<String>, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect((req.host.as_str(), req.port))
        .await
        .map_err(|e| format!("dial tcp {}: {e}", req.authority()))?;
    let _ = tcp.set_nodelay(true);
    let request = build(req)?;
    if req.https {
        let name = ServerName::try_from(req.host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        exchange(TokioIo::new(tls), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }
}

fn build(req: &Request) -> Result<hyper::Request<Empty<Bytes>>, String> {
    let mut r = hyper::Request::get(req.path.as_str())
        .body(Empty::new())
        .map_err(|e| format!("request {:?}: {e}", req.path))?;
    let h = r.headers_mut();
    h.insert(hyper::header::HOST, value(&req.authority())?);
    h.insert(
        hyper::header::USER_AGENT,
        HeaderValue::from_static(USER_AGENT),
    );
    h.insert(hyper::header::ACCEPT, HeaderValue::from_static("*/*"));
    h.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    let mut replaced = std::collections::HashSet::new();
    for (name, v) in &req.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("header name {name:?}: {e}"))?;
        // The probe's headers replace the defaults; repeated names all go out.
        if replaced.insert(name.clone()) {
            h.remove(&name);
        }
        h.append(name, value(v)?);
    }
    Ok(r)
}

fn value(v: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(v).map_err(|e| format!("header value {v:?}: {e}"))
}

async fn exchange<T>(
    io: TokioIo<T>,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<(hyper::StatusCode, Option<String>, Vec<u8>), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let location = resp
        .headers()
        .get(hyper::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while out.len() < MAX_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    out.extend_from_slice(data);
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => break,
        }
    }
    out.truncate(MAX_BODY);
    Ok((status, location, out))
}

/// A TLS client that accepts any server certificate: the kubelet's HTTPS probes skip
/// verification (`InsecureSkipVerify`), since pods serve self-signed certificates.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    Arc::new(
                        b.dangerous()
                            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                            .with_no_client_auth(),
                    )
                })
                .map_err(|e| format!("tls: {e}"))
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str) -> Request {
        Request {
            https: false,
            host: "10.0.0.5".into(),
            port: 8080,
            path: path.into(),
            headers: vec![],
        }
    }

    #[test]
    fn redirects_resolve_as_a_browser_would() {
        let r = redirect(&req("/a/b?x=1"), "/healthz").expect("absolute path");
        assert_eq!(
            (r.host.as_str(), r.port, r.path.as_str()),
            ("10.0.0.5", 8080, "/healthz")
        );
        let r = redirect(&req("/a/b"), "c").expect("relative");
        assert_eq!(r.path, "/a/c");
        let r = redirect(&req("/"), "https://example.com/x").expect("absolute URL");
        assert!(r.https);
        assert_eq!(
            (r.host.as_str(), r.port, r.path.as_str()),
            ("example.com", 443, "/x")
        );
        let r = redirect(&req("/"), "http://10.0.0.5:9090/y").expect("same host");
        assert_eq!((r.port, r.path.as_str()), (9090, "/y"));
        assert!(redirect(&req("/"), "ftp://x/").is_none());
    }

    #[test]
    fn probe_headers_replace_the_defaults() {
        let mut r = req("/healthz");
        r.headers = vec![
            ("User-Agent".into(), "custom".into()),
            ("X-Extra".into(), "1".into()),
            ("X-Extra".into(), "2".into()),
            ("Host".into(), "example.com".into()),
        ];
        let built = build(&r).expect("request");
        let h = built.headers();
        assert_eq!(h["user-agent"], "custom");
        assert_eq!(h["host"], "example.com");
        assert_eq!(h["accept"], "*/*");
        let extra: Vec<_> = h.get_all("x-extra").iter().collect();
        assert_eq!(extra, ["1", "2"]);
        assert!(build(&req("/x")).is_ok());
        r.headers = vec![("bad name".into(), "x".into())];
        assert!(build(&r).is_err());
    }
}
