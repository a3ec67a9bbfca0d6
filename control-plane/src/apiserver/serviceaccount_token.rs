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
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("kid", &self.kid).finish()
    }
}

impl Issuer {
    /// The signing key in `dir/sa.key`, made if missing.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("sa.key");
        if !path.exists() {
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
            std::fs::rename(&tmp, &path)?;
        }
        let pem = std::fs::read_to_string(&path)?;
        let der = rcgen::KeyPair::from_pem(&pem)?.serialize_der();
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| anyhow::anyhow!("service account key {}: {e}", path.display()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = b64(&digest.as_ref()[..16]);
        Ok(Issuer { key, rng, kid })
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
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .ok()?;
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

    /// The public key as a JSON Web Key Set.
    pub fn jwks(&self) -> Value {
        // An uncompressed P-256 point: 0x04 || X (32 bytes) || Y (32 bytes).
        let point = self.key.public_key().as_ref();
        let (x, y) = point.get(1..).map(|p| p.split_at(32)).unwrap_or((&[], &[]));
        json!({"keys": [{"use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256",
            "alg": "ES256", "x": b64(x), "y": b64(y)}]})
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
}
