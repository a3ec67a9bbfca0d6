//! CertificateSigningRequests (certificates.k8s.io/v1) between decoding and storage,
//! as `pkg/registry/certificates` and `pkg/apis/certificates/validation` have them:
//! on create the requester's identity is written into `spec.username/uid/groups/extra`
//! and status is cleared; `spec` never changes; `/approval` writes only the conditions,
//! `/status` everything in status but the Approved/Denied conditions; validation of the
//! PEM request, signer name, usages, expiration and conditions (422 with upstream's
//! field paths); the CertificateApproval and CertificateSigning admission checks (`approve`
//! / `sign` on `signers`) and CertificateSubjectRestriction (no `system:masters`
//! through `kubernetes.io/kube-apiserver-client`).

use serde_json::{Value, json};

use crate::apiserver::auth::UserInfo;
use crate::apiserver::authz::{Attributes, Authorizer};
use crate::apiserver::status::{ApiError, Cause};

pub const GROUP: &str = "certificates.k8s.io";
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
pub const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";

/// `certificates.KeyUsage` values, sorted as upstream prints them.
const USAGES: &[&str] = &[
    "any",
    "cert sign",
    "client auth",
    "code signing",
    "content commitment",
    "crl sign",
    "data encipherment",
    "decipher only",
    "digital signature",
    "email protection",
    "encipher only",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "key agreement",
    "key encipherment",
    "microsoft sgc",
    "netscape sgc",
    "ocsp signing",
    "s/mime",
    "server auth",
    "signing",
    "timestamping",
];

/// Go's `%#v` of a `[]byte`, as field errors print a request.
fn go_bytes(b: &[u8]) -> String {
    let parts: Vec<String> = b.iter().map(|x| format!("{x:#x}")).collect();
    format!("[]byte{{{}}}", parts.join(", "))
}

/// The DER of the PEM `CERTIFICATE REQUEST` in `pem`, or upstream's reason it is not one.
pub fn request_der(pem_text: &[u8]) -> Result<Vec<u8>, String> {
    const NOT_CSR: &str = "PEM block type must be CERTIFICATE REQUEST";
    let text = std::str::from_utf8(pem_text).map_err(|_| NOT_CSR.to_owned())?;
    let block = pem_block(text, "CERTIFICATE REQUEST").ok_or_else(|| NOT_CSR.to_owned())?;
    check_request(&block)?;
    Ok(block)
}

/// The first PEM block of `label` in `text`, decoded.
pub fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop].split_whitespace().collect();
    // A block of another type before ours (`-----BEGIN X-----`) is not ours.
    let first = text.find("-----BEGIN ")?;
    if first + begin.len() != start {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Whether `der` is one whole PKCS #10 request.
fn check_request(der: &[u8]) -> Result<(), String> {
    use x509_parser::prelude::FromDer;
    match x509_parser::certification_request::X509CertificationRequest::from_der(der) {
        Ok(([], _)) => Ok(()),
        Ok(_) => Err("x509: trailing data after the certificate request".into()),
        Err(e) => Err(format!("x509: malformed certificate request: {e}")),
    }
}

/// The request's bytes (`spec.request` is base64 in JSON).
pub fn request_bytes(obj: &Value) -> Option<Vec<u8>> {
    use base64::Engine;
    let b64 = obj.pointer("/spec/request")?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Whether `name` is a signer name: `<domain>/<path>`, the domain a DNS subdomain.
fn signer_name_error(name: &str) -> Option<String> {
    let Some((domain, path)) = name.split_once('/') else {
        return Some(
            "must be a fully qualified domain and path of the form 'example.com/signer-name'"
                .into(),
        );
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.is_empty()
        || domain.len() > 253
        || !domain.split('.').all(label_ok)
        || !domain.contains('.')
    {
        return Some(
            "must be a fully qualified domain and path of the form 'example.com/signer-name'"
                .into(),
        );
    }
    if path.is_empty() || path.contains('/') && path.split('/').any(str::is_empty) {
        return Some("validating path: must be a fully qualified domain and path of the form 'example.com/signer-name'".into());
    }
    None
}

/// `ValidateCertificateSigningRequest{Create,Update,...}`: the spec and the conditions.
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match request_bytes(obj) {
        None if spec.get("request").is_none_or(Value::is_null) => {
            causes.push(Cause::required("spec.request"));
        }
        None => causes.push(Cause::invalid(
            "spec.request",
            "Invalid value: the request is not base64",
        )),
        Some(bytes) => {
            if let Err(why) = request_der(&bytes) {
                causes.push(Cause::invalid(
                    "spec.request",
                    format!("Invalid value: {}: {why}", go_bytes(&bytes)),
                ));
            }
        }
    }
    match spec.get("signerName").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("spec.signerName")),
        Some(LEGACY_UNKNOWN) => causes.push(Cause::invalid(
            "spec.signerName",
            format!("Invalid value: \"{LEGACY_UNKNOWN}\": the legacy signerName is not allowed via this API version"),
        )),
        Some(name) => {
            if let Some(why) = signer_name_error(name) {
                causes.push(Cause::invalid("spec.signerName", format!("Invalid value: \"{name}\": {why}")));
            }
        }
    }
    match spec.get("usages").and_then(Value::as_array) {
        None => causes.push(Cause::required("spec.usages")),
        Some(list) if list.is_empty() => causes.push(Cause::required("spec.usages")),
        Some(list) => {
            let mut seen = Vec::new();
            for (i, u) in list.iter().enumerate() {
                let u = u.as_str().unwrap_or_default();
                let field = format!("spec.usages[{i}]");
                if !USAGES.contains(&u) {
                    let supported: Vec<String> =
                        USAGES.iter().map(|s| format!("\"{s}\"")).collect();
                    causes.push(Cause {
                        reason: "FieldValueNotSupported",
                        field,
                        message: format!(
                            "Unsupported value: \"{u}\": supported values: {}",
                            supported.join(", ")
                        ),
                    });
                } else if seen.contains(&u) {
                    causes.push(Cause::duplicate(field, u));
                } else {
                    seen.push(u);
                }
            }
        }
    }
    if let Some(seconds) = spec.get("expirationSeconds").and_then(Value::as_i64)
        && seconds < 600
    {
        causes.push(Cause::invalid(
            "spec.expirationSeconds",
            format!("Invalid value: {seconds}: may not specify a duration less than 600 seconds (10 minutes)"),
        ));
    }
    let conditions = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut seen: Vec<String> = Vec::new();
    let (mut approved, mut denied) = (false, false);
    for (i, c) in conditions.iter().enumerate() {
        let t = c.get("type").and_then(Value::as_str).unwrap_or_default();
        let field = format!("status.conditions[{i}]");
        if t.is_empty() {
            causes.push(Cause::required(format!("{field}.type")));
        }
        match c.get("status").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::required(format!("{field}.status"))),
            Some("True" | "False" | "Unknown") => {}
            Some(s) => causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: format!("{field}.status"),
                message: format!(
                    "Unsupported value: \"{s}\": supported values: \"False\", \"True\", \"Unknown\""
                ),
            }),
        }
        if matches!(t, "Approved" | "Denied" | "Failed") && seen.iter().any(|s| s == t) {
            causes.push(Cause::duplicate(format!("{field}.type"), t));
        }
        seen.push(t.to_owned());
        approved |= t == "Approved";
        denied |= t == "Denied";
        if (t == "Approved" && denied) || (t == "Denied" && approved) {
            causes.push(Cause::invalid(
                format!("{field}.type"),
                format!(
                    "Invalid value: \"{t}\": Approved and Denied conditions are mutually exclusive"
                ),
            ));
        }
    }
    if let Some(cert) = obj.pointer("/status/certificate").and_then(Value::as_str)
        && !cert.is_empty()
    {
        use base64::Engine;
        let ok = base64::engine::general_purpose::STANDARD
            .decode(cert)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| pem_block(&t, "CERTIFICATE"))
            .is_some();
        if !ok {
            causes.push(Cause::invalid(
                "status.certificate",
                "Invalid value: \"<certificate data>\": must contain at least one CERTIFICATE PEM block",
            ));
        }
    }
}

/// Update checks: Approved/Denied conditions may not be removed, a certificate not
/// changed once issued.
pub fn validate_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let types = |o: &Value| -> Vec<String> {
        o.pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("type").and_then(Value::as_str).map(str::to_owned))
            .collect()
    };
    let (before, after) = (types(old), types(new));
    for t in ["Approved", "Denied", "Failed"] {
        if before.iter().any(|b| b == t) && !after.iter().any(|a| a == t) {
            causes.push(Cause::forbidden(
                "status.conditions",
                format!("Forbidden: updates may not remove a condition of type \"{t}\""),
            ));
        }
    }
    let cert = |o: &Value| {
        o.pointer("/status/certificate")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (old_cert, new_cert) = (cert(old), cert(new));
    if !old_cert.is_empty() && old_cert != new_cert {
        causes.push(Cause::forbidden(
            "status.certificate",
            "Forbidden: updates may not modify existing certificate content",
        ));
    }
}

/// `PrepareForCreate`: the requester's identity in the spec, no status.
pub fn prepare_create(obj: &mut Value, user: Option<&UserInfo>) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for key in ["username", "uid", "groups", "extra"] {
        spec.remove(key);
    }
    if let Some(u) = user {
        spec.insert("username".into(), json!(u.name));
        if !u.uid.is_empty() {
            spec.insert("uid".into(), json!(u.uid));
        }
        if !u.groups.is_empty() {
            spec.insert("groups".into(), json!(u.groups));
        }
        if !u.extra.is_empty() {
            spec.insert("extra".into(), json!(u.extra));
        }
    }
    if let Some(m) = obj.as_object_mut() {
        m.insert("status".into(), json!({}));
    }
}

fn signer_of(obj: &Value) -> &str {
    obj.pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Whether `user` may `verb` (`approve`, `sign`) the signer of `csr`: on the signer
/// by name or on `<domain>/*` (`certificates.IsAuthorizedForSignerName`).
fn may(authz: &dyn Authorizer, user: &UserInfo, verb: &str, signer: &str) -> bool {
    let attrs = |name: &str| Attributes::resource(user, verb, GROUP, "signers", "", name);
    if authz.authorize(&attrs(signer)).allowed {
        return true;
    }
    signer
        .split_once('/')
        .is_some_and(|(domain, _)| authz.authorize(&attrs(&format!("{domain}/*"))).allowed)
}

fn forbidden(name: &str, why: &str) -> ApiError {
    crate::apiserver::authz::forbidden_error(GROUP, "certificatesigningrequests", name, why)
}

/// CertificateSubjectRestriction on create.
pub fn admit_create(obj: &Value) -> Result<(), ApiError> {
    if signer_of(obj) != KUBE_APISERVER_CLIENT {
        return Ok(());
    }
    let Some(der) = request_bytes(obj).and_then(|b| request_der(&b).ok()) else {
        return Ok(());
    };
    use x509_parser::prelude::FromDer;
    let Ok((_, csr)) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
    else {
        return Ok(());
    };
    let masters = csr
        .certification_request_info
        .subject
        .iter_organization()
        .any(|o| o.as_str().ok() == Some(crate::apiserver::authz::MASTERS));
    if masters {
        let name = crate::apiserver::object::name(obj);
        return Err(forbidden(
            name,
            &format!(
                "use of {KUBE_APISERVER_CLIENT} signer with system:masters group is not allowed"
            ),
        ));
    }
    Ok(())
}

/// CertificateApproval (on `/approval`) and CertificateSigning (on `/status`): the
/// writer needs `approve` / `sign` on the signer when the conditions or the
/// certificate change.
pub fn admit_update(
    authz: &dyn Authorizer,
    user: Option<&UserInfo>,
    subresource: &str,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let Some(user) = user else { return Ok(()) };
    let signer = signer_of(old);
    let name = crate::apiserver::object::name(old);
    match subresource {
        "approval" => {
            let conds = |o: &Value| {
                o.pointer("/status/conditions")
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            if conds(old) != conds(new) && !may(authz, user, "approve", signer) {
                return Err(forbidden(
                    name,
                    &format!("user not permitted to approve requests with signerName \"{signer}\""),
                ));
            }
        }
        "status" => {
            let cert = |o: &Value| {
                o.pointer("/status/certificate")
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            if cert(old) != cert(new) && !may(authz, user, "sign", signer) {
                return Err(forbidden(
                    name,
                    &format!("user not permitted to sign requests with signerName \"{signer}\""),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    fn csr(request: &[u8], signer: &str, usages: Value) -> Value {
        use base64::Engine;
        json!({"metadata": {"name": "c"}, "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request),
            "signerName": signer, "usages": usages}})
    }

    fn messages(obj: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate(obj, &mut causes);
        causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn requests_signers_and_usages_are_validated_as_upstream() {
        let good = csr(
            csr_pem().as_bytes(),
            KUBE_APISERVER_CLIENT,
            json!(["client auth"]),
        );
        assert!(messages(&good).is_empty(), "{:?}", messages(&good));
        let bad = csr(b"junk", "example.com/x", json!(["client auth", "flying"]));
        let m = messages(&bad);
        assert_eq!(
            m[0],
            "spec.request: Invalid value: []byte{0x6a, 0x75, 0x6e, 0x6b}: PEM block type must be CERTIFICATE REQUEST"
        );
        assert!(
            m[1].starts_with(
                "spec.usages[1]: Unsupported value: \"flying\": supported values: \"any\", "
            ),
            "{m:?}"
        );
        let m = messages(&csr(csr_pem().as_bytes(), "nodomain", json!([])));
        assert!(
            m.iter()
                .any(|s| s.starts_with("spec.signerName: Invalid value: \"nodomain\"")),
            "{m:?}"
        );
        assert!(
            m.contains(&"spec.usages: Required value".to_owned()),
            "{m:?}"
        );
        let mut both = good.clone();
        both["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]});
        assert_eq!(
            messages(&both),
            [
                "status.conditions[1].type: Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive"
            ]
        );
    }
}
