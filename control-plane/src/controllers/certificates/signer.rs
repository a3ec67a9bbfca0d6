//! The CSR signer (kube-controller-manager's `csrsigning`): an approved, not yet
//! signed and not failed CertificateSigningRequest for one of the `kubernetes.io`
//! signers berth implements gets `status.certificate`, signed with the cluster CA
//! (`--cluster-signing-cert-file/--cluster-signing-key-file`), valid from 5 minutes ago
//! (clock skew, as upstream backdates) for `spec.expirationSeconds` or
//! `--cluster-signing-duration`, never past the CA's own expiry. A request the signer
//! cannot accept (wrong subject or usages) gets a `Failed` condition with reason
//! `SignerValidationFailure` and the reason as message. Requests for other signers are
//! left alone, as upstream leaves them for whoever implements the signer.
//!
//! Entry points: [`start`]; [`Ca::sign`] is the signing itself.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use rcgen::{ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::json;

use super::requests;
use crate::client::Informers;
use crate::controllers::queue::Queue;

/// The signing CA and how long certificates last by default.
#[derive(Debug, Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    /// `--cluster-signing-duration` (a year by default).
    pub duration: Duration,
}

/// Upstream's backdating of `notBefore`.
const BACKDATE: time::Duration = time::Duration::minutes(5);

impl Ca {
    /// The certificate (PEM) for the request `der` with `usages`, valid for
    /// `expiration` (or the default duration).
    pub fn sign(
        &self,
        der: &[u8],
        usages: &[String],
        expiration: Option<Duration>,
    ) -> Result<String, String> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| format!("the CA key: {e}"))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .map_err(|e| format!("the CA certificate: {e}"))?;
        let ca_not_after = ca_not_after(&self.cert_pem)?;
        let request = rustls::pki_types::CertificateSigningRequestDer::from(der.to_vec());
        let mut csr = rcgen::CertificateSigningRequestParams::from_der(&request)
            .map_err(|e| format!("unable to parse csr: {e}"))?;
        let now = time::OffsetDateTime::now_utc();
        let ttl = expiration.unwrap_or(self.duration);
        let ttl = time::Duration::try_from(ttl).map_err(|e| e.to_string())?;
        let params = &mut csr.params;
        params.not_before = now - BACKDATE;
        params.not_after = (now + ttl).min(ca_not_after);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().into());
        params.key_usages = Vec::new();
        params.extended_key_usages = Vec::new();
        for u in usages {
            match u.as_str() {
                "digital signature" | "signing" => {
                    params.key_usages.push(KeyUsagePurpose::DigitalSignature)
                }
                "key encipherment" => params.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "content commitment" => params.key_usages.push(KeyUsagePurpose::ContentCommitment),
                "key agreement" => params.key_usages.push(KeyUsagePurpose::KeyAgreement),
                "data encipherment" => params.key_usages.push(KeyUsagePurpose::DataEncipherment),
                "client auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth),
                other => return Err(format!("unsupported usage {other:?}")),
            }
        }
        let cert = csr
            .signed_by(&issuer)
            .map_err(|e| format!("signing: {e}"))?;
        Ok(cert.pem())
    }
}

fn ca_not_after(pem: &str) -> Result<time::OffsetDateTime, String> {
    let der = crate::apiserver::admission::certificates::pem_block(pem, "CERTIFICATE")
        .ok_or("the CA certificate is not PEM")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("the CA certificate: {e}"))?;
    time::OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| e.to_string())
}

/// 16 random bytes, positive (high bit clear), as upstream's 128-bit serials.
fn random_serial() -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut bytes = vec![0u8; 16];
    // The system RNG does not fail on Linux; a zero serial would still be a serial.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    if let Some(b) = bytes.first_mut() {
        *b &= 0x7f;
        *b |= 0x01;
    }
    bytes
}

fn has_condition(csr: &CertificateSigningRequest, t: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
}

pub fn start(
    client: Client,
    ca: Ca,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let csrs = informers.add(Api::<CertificateSigningRequest>::all(client.clone()), {
        let q = queue.clone();
        move |csr: &CertificateSigningRequest| q.add(csr.name_any())
    });
    async move {
        let _ = csrs.wait_until_ready().await;
        let ctl = Arc::new((client, csrs, ca));
        queue
            .work("csrsigning", move |name| {
                let ctl = ctl.clone();
                async move { sync(&ctl.0, &ctl.1, &ctl.2, &name).await }
            })
            .await;
    }
}

async fn sync(
    client: &Client,
    csrs: &Store<CertificateSigningRequest>,
    ca: &Ca,
    name: &str,
) -> Result<Option<Duration>, kube::Error> {
    let Some(csr) = csrs.get(&ObjectRef::new(name)) else {
        return Ok(None);
    };
    let signed = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if signed || !has_condition(&csr, "Approved") || has_condition(&csr, "Failed") {
        return Ok(None);
    }
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let checked = requests::parse(&csr).map(|req| {
        let verdict = requests::check(&csr.spec.signer_name, &req, &usages);
        (req, verdict)
    });
    let outcome = match checked {
        // Not a signer of ours.
        Ok((_, None)) => return Ok(None),
        Ok((req, Some(Ok(())))) => {
            let expiration = csr
                .spec
                .expiration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs);
            ca.sign(&req.der, &usages, expiration)
        }
        Ok((_, Some(Err(why)))) => Err(why),
        Err(why) => Err(why),
    };
    let mut status = serde_json::to_value(csr.status.clone().unwrap_or_default())
        .map_err(kube::Error::SerdeError)?;
    match outcome {
        Ok(pem) => {
            use base64::Engine;
            status["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(pem));
        }
        Err(why) => {
            tracing::info!(csr = name, %why, "refusing to sign");
            let mut conditions = status["conditions"].as_array().cloned().unwrap_or_default();
            conditions.push(json!({
                "type": "Failed", "status": "True", "reason": "SignerValidationFailure",
                "message": why, "lastUpdateTime": crate::apiserver::object::now(),
                "lastTransitionTime": crate::apiserver::object::now(),
            }));
            status["conditions"] = json!(conditions);
        }
    }
    let mut obj = serde_json::to_value(&*csr).map_err(kube::Error::SerdeError)?;
    obj["status"] = status;
    let body: CertificateSigningRequest =
        serde_json::from_value(obj).map_err(kube::Error::SerdeError)?;
    match Api::<CertificateSigningRequest>::all(client.clone())
        .replace_status(name, &PostParams::default(), &body)
        .await
    {
        Ok(_) => Ok(None),
        // Changed meanwhile (the cache will bring it back) or gone.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_with_the_requested_lifetime_and_usages() {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test-ca");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let ca = Ca {
            cert_pem: ca_cert.pem(),
            key_pem: ca_key.serialize_pem(),
            duration: Duration::from_secs(365 * 86400),
        };
        let key = KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:n1");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        let request = params.serialize_request(&key).expect("csr");
        let usages = vec!["digital signature".to_owned(), "client auth".to_owned()];
        let pem = ca
            .sign(request.der(), &usages, Some(Duration::from_secs(3600)))
            .expect("signed");
        let der = crate::apiserver::admission::certificates::pem_block(&pem, "CERTIFICATE")
            .expect("a certificate");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parses");
        let v = cert.validity();
        let life = v.not_after.timestamp() - v.not_before.timestamp();
        assert_eq!(life, 3600 + 300, "an hour, backdated 5 minutes");
        let user = crate::apiserver::auth::from_certificate(&der).expect("a user");
        assert_eq!(user.name, "system:node:n1");
        assert_eq!(user.groups[0], "system:nodes");
        let eku = cert
            .extended_key_usage()
            .expect("ext")
            .expect("an extended key usage");
        assert!(eku.value.client_auth && !eku.value.server_auth);
    }
}
