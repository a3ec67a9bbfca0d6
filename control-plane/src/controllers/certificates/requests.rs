//! What the signers and the approver check of a CSR, as upstream's
//! `pkg/apis/certificates/v1` helpers and `pkg/controller/certificates/signer` do:
//! the subject and SANs of node certificates and the usages each signer allows.

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::apiserver::admission::certificates::{
    KUBE_APISERVER_CLIENT, KUBELET_CLIENT, KUBELET_SERVING, pem_block,
};

/// The parts of a PKCS #10 request the checks read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    pub der: Vec<u8>,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: usize,
    pub emails: usize,
    pub uris: usize,
}

/// Parses `spec.request` (PEM).
pub fn parse(csr: &CertificateSigningRequest) -> Result<Request, String> {
    let text = std::str::from_utf8(&csr.spec.request.0)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_owned())?;
    let der = pem_block(text, "CERTIFICATE REQUEST")
        .ok_or_else(|| "PEM block type must be CERTIFICATE REQUEST".to_owned())?;
    let (_, req) = X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("unable to parse csr: {e}"))?;
    let info = &req.certification_request_info;
    let mut out = Request {
        common_name: info
            .subject
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or_default()
            .to_owned(),
        organizations: info
            .subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_owned))
            .collect(),
        ..Request::default()
    };
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => out.dns_names.push((*d).to_owned()),
                    GeneralName::IPAddress(_) => out.ip_addresses += 1,
                    GeneralName::RFC822Name(_) => out.emails += 1,
                    GeneralName::URI(_) => out.uris += 1,
                    _ => {}
                }
            }
        }
    }
    out.der = der;
    Ok(out)
}

fn usages_within(usages: &[String], required: &[&str], optional: &[&str]) -> bool {
    required.iter().all(|r| usages.iter().any(|u| u == r))
        && usages
            .iter()
            .all(|u| required.contains(&u.as_str()) || optional.contains(&u.as_str()))
}

/// `ValidateKubeletClientCSR`: a node's client certificate.
pub fn kubelet_client(req: &Request, usages: &[String]) -> Result<(), String> {
    if req.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if !req.dns_names.is_empty() {
        return Err("dnsNames are not allowed".into());
    }
    if req.emails > 0 {
        return Err("emailAddresses are not allowed".into());
    }
    if req.ip_addresses > 0 {
        return Err("ipAddresses are not allowed".into());
    }
    if req.uris > 0 {
        return Err("uris are not allowed".into());
    }
    if !req.common_name.starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    if !usages_within(
        usages,
        &["digital signature", "client auth"],
        &["key encipherment"],
    ) {
        return Err(format!(
            "usages did not match [digital signature client auth] (key encipherment optional): {usages:?}"
        ));
    }
    Ok(())
}

/// `ValidateKubeletServingCSR`: a node's serving certificate.
pub fn kubelet_serving(req: &Request, usages: &[String]) -> Result<(), String> {
    if req.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if req.dns_names.is_empty() && req.ip_addresses == 0 {
        return Err("DNS or IP subjectAltName is required".into());
    }
    if req.emails > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if req.uris > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    if !req.common_name.starts_with("system:node:") {
        return Err("Subject common name does not begin with system:node:".into());
    }
    if !usages_within(
        usages,
        &["digital signature", "server auth"],
        &["key encipherment"],
    ) {
        return Err(format!(
            "usages did not match [digital signature server auth] (key encipherment optional): {usages:?}"
        ));
    }
    Ok(())
}

/// `validAPIServerClientUsages`: any subject, client usages only.
pub fn apiserver_client(usages: &[String]) -> Result<(), String> {
    const ALLOWED: [&str; 3] = ["digital signature", "key encipherment", "client auth"];
    match usages.iter().find(|u| !ALLOWED.contains(&u.as_str())) {
        Some(u) => Err(format!("invalid usage for client certificate: {u}")),
        None => Ok(()),
    }
}

/// Whether `signer` is one berth signs for, and if so whether the request fits it.
pub fn check(signer: &str, req: &Request, usages: &[String]) -> Option<Result<(), String>> {
    match signer {
        KUBE_APISERVER_CLIENT => Some(apiserver_client(usages)),
        KUBELET_CLIENT => Some(kubelet_client(req, usages)),
        KUBELET_SERVING => Some(kubelet_serving(req, usages)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cn: &str, orgs: &[&str], dns: &[&str]) -> Request {
        Request {
            common_name: cn.into(),
            organizations: orgs.iter().map(|s| (*s).to_owned()).collect(),
            dns_names: dns.iter().map(|s| (*s).to_owned()).collect(),
            ..Request::default()
        }
    }

    fn u(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn node_certificates_need_node_subjects_and_usages() {
        let node = req("system:node:n1", &["system:nodes"], &[]);
        assert_eq!(
            kubelet_client(&node, &u(&["digital signature", "client auth"])),
            Ok(())
        );
        assert_eq!(
            kubelet_client(
                &node,
                &u(&["digital signature", "key encipherment", "client auth"])
            ),
            Ok(())
        );
        assert!(kubelet_client(&node, &u(&["client auth", "server auth"])).is_err());
        assert_eq!(
            kubelet_client(
                &req("alice", &["system:nodes"], &[]),
                &u(&["digital signature", "client auth"])
            ),
            Err("subject common name does not begin with system:node:".into())
        );
        assert_eq!(
            kubelet_client(
                &req("system:node:n1", &["system:masters"], &[]),
                &u(&["client auth"])
            ),
            Err("subject organization is not system:nodes".into())
        );
        let serving = req("system:node:n1", &["system:nodes"], &["n1"]);
        assert_eq!(
            kubelet_serving(&serving, &u(&["digital signature", "server auth"])),
            Ok(())
        );
        assert!(kubelet_serving(&node, &u(&["digital signature", "server auth"])).is_err());
        assert_eq!(
            apiserver_client(&u(&["client auth", "server auth"])),
            Err("invalid usage for client certificate: server auth".into())
        );
        assert!(check("example.com/other", &node, &u(&["client auth"])).is_none());
    }
}
