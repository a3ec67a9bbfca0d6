//! ServiceAccount tokens, as kube-apiserver issues them: ES256-signed JWTs (a P-256
//! key made on first start, `pki/sa.key`) from the TokenRequest API
//! (`serviceaccounts/{name}/token`: audiences, expirationSeconds — at least 10 minutes,
//! default 1 hour — and an optional bound Pod or Secret), with Kubernetes' claims
//! (`iss`, `sub` = `system:serviceaccount:<ns>:<name>`, `aud`, `exp`/`iat`/`nbf`,
//! `jti`, and `kubernetes.io` naming the namespace, account and bound object). The same
//! issuer authenticates them: signature, issuer, time, audience, and the account (and
//! bound object) still existing with the uid the token names. The public key is served
//! as OIDC discovery (`/.well-known/openid-configuration`, `/openid/v1/jwks`).

use std::path::Path;

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use super::auth::UserInfo;

/// The issuer kube-apiserver uses by default (`--service-account-issuer`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const MIN_EXPIRATION: i64 = 600;
const DEFAULT_EXPIRATION: i64 = 3600;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub struct Issuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    /// The keys tokens are verified with: the signing key's and those of
    /// `--service-account-key-file` (key id, uncompressed P-256 point).
    verifying: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("kid", &self.kid).finish()
    }
}

impl Issuer {
    /// The signing key in `dir/sa.key`, made if missing.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        Self::load(dir, None, &[])
    }

    /// The signing key `signing` (`--service-account-signing-key-file`: a P-256 key,
    /// PKCS#8 PEM; default `dir/sa.key`, made if missing), also verifying tokens with
    /// the keys in `verifying` (`--service-account-key-file`: P-256 public keys or
    /// private keys, PEM) — so every server of a cluster, sharing the signing key,
    /// accepts every other's tokens, and a retired key can still verify.
    pub fn load(
        dir: &Path,
        signing: Option<&Path>,
        verifying: &[std::path::PathBuf],
    ) -> anyhow::Result<Self> {
        let default = dir.join("sa.key");
        let path = signing.unwrap_or(&default);
        if signing.is_none() && !path.exists() {
            let key = rcgen::KeyPair::generate()?;
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join("sa.key.tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(key.serialize_pem().as_bytes())?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
        }
        let pem = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("service account key {}: {e}", path.display()))?;
        let der = rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("service account key {}: {e}", path.display()))?
            .serialize_der();
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| anyhow::anyhow!("service account key {}: {e}", path.display()))?;
        let kid = key_id(key.public_key().as_ref());
        let mut keys = vec![(kid.clone(), key.public_key().as_ref().to_vec())];
        for file in verifying {
            let point = public_point(file)?;
            let id = key_id(&point);
            if !keys.iter().any(|(k, _)| *k == id) {
                keys.push((id, point));
            }
        }
        Ok(Issuer {
            key,
            rng,
            kid,
            verifying: keys,
        })
    }

    fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|e| format!("signing: {e}"))?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }

    /// The claims of a token for `account` (namespace, name, uid) from a TokenRequest
    /// spec; `Err` names the invalid field.
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        spec: &Value,
        bound: Option<(&str, &str, &str)>,
    ) -> Result<(String, jiff::Timestamp), String> {
        let seconds = spec
            .get("expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_EXPIRATION);
        if seconds < MIN_EXPIRATION {
            return Err("spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes".into());
        }
        if seconds > 1 << 32 {
            return Err("spec.expirationSeconds: Invalid value: may not specify a duration larger than 2^32 seconds".into());
        }
        let audiences: Vec<Value> = spec
            .get("audiences")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .cloned()
            .unwrap_or_else(|| vec![json!(ISSUER)]);
        let now = jiff::Timestamp::now();
        let exp = now + jiff::SignedDuration::from_secs(seconds);
        let mut k8s = json!({
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": uid},
        });
        if let Some((kind, obj_name, obj_uid)) = bound {
            let field = if kind == "Secret" { "secret" } else { "pod" };
            k8s[field] = json!({"name": obj_name, "uid": obj_uid});
        }
        let claims = json!({
            "aud": audiences,
            "exp": exp.as_second(),
            "iat": now.as_second(),
            "nbf": now.as_second(),
            "iss": ISSUER,
            "jti": super::object::new_uid(),
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": k8s,
        });
        Ok((self.sign(&claims)?, exp))
    }

    /// The claims of a token this issuer signed, if it is valid now for `audience`.
    pub fn verify(&self, token: &str, audience: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: Value = serde_json::from_slice(&engine.decode(h).ok()?).ok()?;
        if header.get("alg")? != "ES256" {
            return None;
        }
        let sig = engine.decode(s).ok()?;
        let signed = format!("{h}.{c}");
        self.verifying.iter().find(|(_, point)| {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(signed.as_bytes(), &sig)
                .is_ok()
        })?;
        let claims: Value = serde_json::from_slice(&engine.decode(c).ok()?).ok()?;
        let now = jiff::Timestamp::now().as_second();
        let exp = claims.get("exp")?.as_i64()?;
        let nbf = claims.get("nbf").and_then(Value::as_i64).unwrap_or(0);
        // kube-apiserver allows a minute of clock skew.
        if claims.get("iss")? != ISSUER || exp + 60 < now || nbf - 60 > now {
            return None;
        }
        let aud_ok = match claims.get("aud")? {
            Value::String(a) => a == audience,
            Value::Array(list) => list.iter().any(|a| a == audience),
            _ => false,
        };
        aud_ok.then_some(claims)
    }

    /// The public keys as a JSON Web Key Set.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .verifying
            .iter()
            .map(|(kid, point)| {
                // An uncompressed P-256 point: 0x04 || X (32 bytes) || Y (32 bytes).
                let (x, y) = point
                    .get(1..)
                    .filter(|p| p.len() == 64)
                    .map(|p| p.split_at(32))
                    .unwrap_or((&[], &[]));
                json!({"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256",
                    "alg": "ES256", "x": b64(x), "y": b64(y)})
            })
            .collect();
        json!({ "keys": keys })
    }

    /// `/.well-known/openid-configuration`.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": ISSUER,
            "jwks_uri": format!("{ISSUER}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

/// A key's id: the first 16 bytes of its public point's SHA-256, base64url.
fn key_id(point: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, point);
    b64(&digest.as_ref()[..16])
}

/// The DER prefix of a P-256 SubjectPublicKeyInfo, before its 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The public point of the P-256 key in `file`: a `PUBLIC KEY` or a private key (PEM).
fn public_point(file: &Path) -> anyhow::Result<Vec<u8>> {
    let what = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("--service-account-key-file {}: {e}", file.display())
    };
    let pem = std::fs::read_to_string(file).map_err(|e| what(&e))?;
    if let Some(body) = pem
        .split("-----BEGIN PUBLIC KEY-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END PUBLIC KEY-----").next())
    {
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.split_whitespace().collect::<String>())
            .map_err(|e| what(&e))?;
        return match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 4 => Ok(point.to_vec()),
            _ => Err(what(&"not a P-256 (ES256) public key")),
        };
    }
    let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| what(&e))?;
    if !key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
        return Err(what(&"not a P-256 (ES256) key"));
    }
    Ok(key.public_key_raw().to_vec())
}

/// The user a verified token's claims name; `lookup(key)` reads an object's uid.
pub fn user(claims: &Value, lookup: impl Fn(&str) -> Option<String>) -> Option<UserInfo> {
    let k8s = claims.get("kubernetes.io")?;
    let ns = k8s.get("namespace")?.as_str()?;
    let sa = k8s.get("serviceaccount")?;
    let name = sa.get("name")?.as_str()?;
    let uid = sa.get("uid")?.as_str()?;
    if lookup(&format!("/registry/core/serviceaccounts/{ns}/{name}")).as_deref() != Some(uid) {
        return None;
    }
    for (field, resource) in [("pod", "pods"), ("secret", "secrets")] {
        if let Some(obj) = k8s.get(field) {
            let oname = obj.get("name")?.as_str()?;
            let ouid = obj.get("uid")?.as_str()?;
            if lookup(&format!("/registry/core/{resource}/{ns}/{oname}")).as_deref() != Some(ouid) {
                return None;
            }
        }
    }
    Some(UserInfo {
        name: format!("system:serviceaccount:{ns}:{name}"),
        uid: uid.to_owned(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
        extra: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_tampering_fails() {
        let dir = std::env::temp_dir().join(format!("berth-sa-{}", std::process::id()));
        let issuer = Issuer::load_or_create(&dir).expect("issuer");
        let (token, _) = issuer
            .issue("ns", "sa", "uid-1", &json!({}), None)
            .expect("issue");
        let claims = issuer.verify(&token, ISSUER).expect("valid");
        assert_eq!(claims["sub"], "system:serviceaccount:ns:sa");
        assert!(issuer.verify(&token, "other-audience").is_none());
        let mut bad = token.clone();
        bad.push('A');
        assert!(issuer.verify(&bad, ISSUER).is_none());
        let user = user(&claims, |k| {
            (k == "/registry/core/serviceaccounts/ns/sa").then(|| "uid-1".to_owned())
        })
        .expect("user");
        assert_eq!(user.name, "system:serviceaccount:ns:sa");
        assert!(super::user(&claims, |_| Some("other".into())).is_none());
        assert!(
            issuer
                .issue("ns", "sa", "u", &json!({"expirationSeconds": 60}), None)
                .is_err()
        );
        // The same key after a restart.
        let again = Issuer::load_or_create(&dir).expect("reload");
        assert!(again.verify(&token, ISSUER).is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn given_keys_sign_and_more_keys_verify() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = rcgen::KeyPair::generate().expect("key");
        let new = rcgen::KeyPair::generate().expect("key");
        let (old_key, old_pub, new_key) = (
            dir.path().join("old.key"),
            dir.path().join("old.pub"),
            dir.path().join("new.key"),
        );
        std::fs::write(&old_key, old.serialize_pem()).expect("write");
        std::fs::write(&old_pub, old.public_key_pem()).expect("write");
        std::fs::write(&new_key, new.serialize_pem()).expect("write");
        let retired = Issuer::load(dir.path(), Some(&old_key), &[]).expect("old issuer");
        let (token, _) = retired
            .issue("ns", "sa", "uid", &json!({}), None)
            .expect("issue");
        // Another server with the same signing key accepts it.
        let peer = Issuer::load(dir.path(), Some(&old_key), &[]).expect("peer");
        assert!(peer.verify(&token, ISSUER).is_some());
        assert!(
            !dir.path().join("sa.key").exists(),
            "no key made beside given ones"
        );
        // A new signing key verifies the old one's tokens through its public key.
        let rotated = Issuer::load(dir.path(), Some(&new_key), std::slice::from_ref(&old_pub))
            .expect("rotated issuer");
        assert!(rotated.verify(&token, ISSUER).is_some());
        assert_eq!(rotated.jwks()["keys"].as_array().map(Vec::len), Some(2));
        let alone = Issuer::load(dir.path(), Some(&new_key), &[]).expect("new issuer");
        assert!(alone.verify(&token, ISSUER).is_none());
        // Not a P-256 key: refused, naming the file.
        std::fs::write(
            dir.path().join("bad.pub"),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .expect("write");
        let err = Issuer::load(dir.path(), Some(&new_key), &[dir.path().join("bad.pub")])
            .expect_err("a bad key file");
        assert!(err.to_string().contains("bad.pub"), "{err}");
    }
}
