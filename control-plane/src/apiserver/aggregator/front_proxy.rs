//! The aggregator's identity towards extension apiservers, as kubeadm sets up
//! kube-apiserver's `--proxy-client-cert-file` and `--requestheader-*` flags: a
//! separate front-proxy CA (`<data-dir>/pki/front-proxy-ca.{crt,key}`) signs the client
//! certificate `front-proxy-client` the proxy presents; an extension apiserver trusts
//! the `X-Remote-User`/`X-Remote-Uid`/`X-Remote-Group`/`X-Remote-Extra-*` headers of a
//! request only from a client with a certificate of that CA and that name. A separate
//! CA keeps cluster-CA client certificates (every user's) from asserting headers.
//!
//! Extension apiservers (metrics-server, any `k8s.io/apiserver` server) read that
//! configuration from `kube-system/extension-apiserver-authentication`, which
//! [`publish`] writes as kube-apiserver's ClusterAuthenticationTrust controller does:
//! `client-ca-file` (the cluster CA, for clients that talk to them directly) and the
//! `requestheader-*` keys (JSON string lists), merged with what is there (so several
//! servers' CAs are all trusted). The `extension-apiserver-authentication-reader` Role
//! of the bootstrap policy lets them read it.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::apiserver::Api;
use crate::apiserver::pki::{self, Pki, PkiError};
use crate::apiserver::rest::{self, Part};
use crate::apiserver::status::{ApiError, ApiResult};

/// The client certificate's common name (`--requestheader-allowed-names`).
pub const CLIENT_NAME: &str = "front-proxy-client";
pub const CONFIG_MAP: &str = "extension-apiserver-authentication";
pub const READER_ROLE: &str = "extension-apiserver-authentication-reader";
pub const USER_HEADER: &str = "X-Remote-User";
pub const UID_HEADER: &str = "X-Remote-Uid";
pub const GROUP_HEADER: &str = "X-Remote-Group";
pub const EXTRA_PREFIX: &str = "X-Remote-Extra-";

/// The front-proxy CA and the proxy's client certificate and key (PEM).
#[derive(Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

/// Loads the front-proxy CA and client certificate under `pki_dir`, making what is
/// missing (a new CA gets a new client certificate).
pub fn ensure(pki_dir: &Path) -> Result<Identity, PkiError> {
    let ca_cert = pki_dir.join("front-proxy-ca.crt");
    let ca_key = pki_dir.join("front-proxy-ca.key");
    let cert = pki_dir.join("front-proxy-client.crt");
    let key = pki_dir.join("front-proxy-client.key");
    let mut fresh = false;
    if !ca_cert.exists() || !ca_key.exists() {
        let (c, k) = pki::self_signed_ca("front-proxy-ca")?;
        pki::write(&ca_key, &k, true)?;
        pki::write(&ca_cert, &c, false)?;
        fresh = true;
    }
    let ca = Pki {
        dir: pki_dir.into(),
        ca_cert: read(&ca_cert)?,
        ca_key: read(&ca_key)?,
        server_cert: String::new(),
        server_key: String::new(),
    };
    if fresh || !cert.exists() || !key.exists() {
        let (c, k) = ca.issue(CLIENT_NAME, &[], &[], false)?;
        pki::write(&key, &k, true)?;
        pki::write(&cert, &c, false)?;
    }
    Ok(Identity {
        ca_pem: ca.ca_cert,
        cert_pem: read(&cert)?,
        key_pem: read(&key)?,
    })
}

/// The PEM `CERTIFICATE` blocks of a bundle, normalized.
fn pem_blocks(bundle: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = bundle;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + len + END.len()];
        let body: String = block[BEGIN.len()..block.len() - END.len()]
            .split_whitespace()
            .collect();
        let mut lines = vec![BEGIN.to_owned()];
        lines.extend(
            body.as_bytes()
                .chunks(64)
                .map(|c| String::from_utf8_lossy(c).into_owned()),
        );
        lines.push(END.to_owned());
        out.push(lines.join("\n") + "\n");
        rest = &rest[start + len + END.len()..];
    }
    out
}

/// Upstream's `combineCertLists`: the blocks of both, once each, existing first.
fn merge_bundles(existing: &str, required: &str) -> String {
    let mut blocks = pem_blocks(existing);
    for b in pem_blocks(required) {
        if !blocks.contains(&b) {
            blocks.push(b);
        }
    }
    blocks.concat()
}

/// Upstream's `combineUniqueStringSlices` of two JSON-encoded string lists.
fn merge_lists(existing: Option<&str>, required: &[&str]) -> String {
    let mut out: Vec<String> = existing
        .and_then(|e| serde_json::from_str::<Vec<String>>(e).ok())
        .unwrap_or_default();
    for r in required {
        if !out.iter().any(|o| o == r) {
            out.push((*r).to_owned());
        }
    }
    serde_json::to_string(&out).unwrap_or_else(|_| "[]".into())
}

/// The ConfigMap's data: what is there, with this server's CAs and headers added.
pub fn config_data(existing: &Map<String, Value>, client_ca: &str, front_proxy_ca: &str) -> Value {
    let get = |k: &str| existing.get(k).and_then(Value::as_str);
    json!({
        "client-ca-file": merge_bundles(get("client-ca-file").unwrap_or_default(), client_ca),
        "requestheader-client-ca-file": merge_bundles(
            get("requestheader-client-ca-file").unwrap_or_default(),
            front_proxy_ca,
        ),
        "requestheader-allowed-names": merge_lists(get("requestheader-allowed-names"), &[CLIENT_NAME]),
        "requestheader-username-headers": merge_lists(get("requestheader-username-headers"), &[USER_HEADER]),
        "requestheader-uid-headers": merge_lists(get("requestheader-uid-headers"), &[UID_HEADER]),
        "requestheader-group-headers": merge_lists(get("requestheader-group-headers"), &[GROUP_HEADER]),
        "requestheader-extra-headers-prefix": merge_lists(get("requestheader-extra-headers-prefix"), &[EXTRA_PREFIX]),
    })
}

fn ignore_exists<T>(result: ApiResult<T>) -> ApiResult<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `kube-system/extension-apiserver-authentication` and the bootstrap Role
/// and RoleBinding that let extension apiservers (and the scheduler and controller
/// manager, as upstream) read it.
pub async fn publish(api: &Arc<Api>, client_ca: &str, identity: &Identity) -> ApiResult<()> {
    let missing = || ApiError::internal("the core and rbac groups are not served");
    let ctx =
        super::internal_ctx(api, "", "configmaps", Some("kube-system")).ok_or_else(missing)?;
    let front_proxy_ca = identity.ca_pem.as_str();
    if api.cache.get(&ctx.key(CONFIG_MAP)).is_none() {
        let data = config_data(&Map::new(), client_ca, front_proxy_ca);
        let created = rest::create_object(
            &ctx,
            json!({"metadata": {"name": CONFIG_MAP, "namespace": "kube-system"}, "data": data}),
        )
        .await;
        ignore_exists(created)?;
    }
    rest::update_live(&ctx, CONFIG_MAP, Part::Main, |live| {
        let mut next = live.clone();
        let existing = live
            .get("data")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        next["data"] = config_data(&existing, client_ca, front_proxy_ca);
        Ok(next)
    })
    .await?;
    let meta = |name: &str| {
        json!({"name": name, "namespace": "kube-system",
               "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
               "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
    };
    let rbac = "rbac.authorization.k8s.io";
    if let Some(roles) = super::internal_ctx(api, rbac, "roles", Some("kube-system"))
        && api.cache.get(&roles.key(READER_ROLE)).is_none()
    {
        let role = json!({
            "metadata": meta(READER_ROLE),
            "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                       "resourceNames": [CONFIG_MAP], "verbs": ["get", "list", "watch"]}],
        });
        ignore_exists(rest::create_object(&roles, role).await)?;
    }
    let binding = format!("system::{READER_ROLE}");
    if let Some(bindings) = super::internal_ctx(api, rbac, "rolebindings", Some("kube-system"))
        && api.cache.get(&bindings.key(&binding)).is_none()
    {
        let obj = json!({
            "metadata": meta(&binding),
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": READER_ROLE},
            "subjects": [
                {"apiGroup": rbac, "kind": "User", "name": "system:kube-controller-manager"},
                {"apiGroup": rbac, "kind": "User", "name": "system:kube-scheduler"},
            ],
        });
        ignore_exists(rest::create_object(&bindings, obj).await)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const B: &str = "-----BEGIN CERTIFICATE-----\r\nBBBB\r\n-----END CERTIFICATE-----";

    #[test]
    fn merges_as_the_trust_controller_does() {
        let existing: Map<String, Value> = serde_json::from_value(json!({
            "requestheader-allowed-names": "[\"aggregator\"]",
            "requestheader-client-ca-file": B,
        }))
        .expect("map");
        let data = config_data(&existing, A, A);
        assert_eq!(data["client-ca-file"], A);
        assert_eq!(
            data["requestheader-client-ca-file"],
            "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n".to_owned() + A
        );
        assert_eq!(
            data["requestheader-allowed-names"],
            "[\"aggregator\",\"front-proxy-client\"]"
        );
        assert_eq!(
            data["requestheader-username-headers"],
            "[\"X-Remote-User\"]"
        );
        assert_eq!(
            data["requestheader-extra-headers-prefix"],
            "[\"X-Remote-Extra-\"]"
        );
        // Idempotent: merging the result again changes nothing.
        let again = config_data(data.as_object().expect("object"), A, A);
        assert_eq!(again, data);
    }

    #[test]
    fn makes_and_reloads_the_front_proxy_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure(dir.path()).expect("ensure");
        assert!(first.ca_pem.contains("BEGIN CERTIFICATE"));
        let second = ensure(dir.path()).expect("ensure");
        assert_eq!(first.cert_pem, second.cert_pem, "kept across restarts");
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(first.cert_pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .expect("pem");
        let user = crate::apiserver::auth::from_certificate(&der).expect("subject");
        assert_eq!(user.name, CLIENT_NAME);
    }
}
