//! Bootstrap tokens (`plugin/pkg/auth/authenticator/token/bootstrap`): a bearer token
//! `<id>.<secret>` (6 and 16 characters of `[a-z0-9]`) is user `system:bootstrap:<id>`
//! in `system:bootstrappers` (and the Secret's `auth-extra-groups`) while the Secret
//! `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token` holds the
//! same id and secret, allows `usage-bootstrap-authentication`, is not being deleted and
//! has not passed its `expiration`. New nodes join with one (`berth-server token
//! create` makes them). Entry points: [`authenticate`], [`new_secret`].

use base64::Engine;
use serde_json::{Value, json};

use super::auth::UserInfo;
use super::watch_cache::WatchCache;

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const GROUP: &str = "system:bootstrappers";
pub const SECRET_PREFIX: &str = "bootstrap-token-";
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `<id>.<secret>` split, when `token` has the bootstrap token form.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| ALPHABET.contains(&b));
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn data(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret.get("data")?.get(key)?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// Equal without an early exit on the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The user a valid bootstrap token names, as of `now` (seconds).
pub fn user_for(secret: &Value, token: &str, now: i64) -> Option<UserInfo> {
    let (id, token_secret) = parse(token)?;
    if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE)
        || secret.pointer("/metadata/deletionTimestamp").is_some()
    {
        return None;
    }
    if data(secret, "token-id").as_deref() != Some(id)
        || !same(&data(secret, "token-secret")?, token_secret)
        || data(secret, "usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return None;
    }
    if let Some(expiration) = data(secret, "expiration") {
        let at = expiration.parse::<jiff::Timestamp>().ok()?;
        if at.as_second() <= now {
            return None;
        }
    }
    let mut groups = vec![GROUP.to_owned()];
    for g in data(secret, "auth-extra-groups")
        .unwrap_or_default()
        .split(',')
    {
        let g = g.trim();
        // Upstream accepts only `system:bootstrappers:*` extra groups.
        if g.starts_with("system:bootstrappers:") && !groups.iter().any(|x| x == g) {
            groups.push(g.to_owned());
        }
    }
    groups.push("system:authenticated".into());
    Some(UserInfo {
        name: format!("system:bootstrap:{id}"),
        groups,
        ..UserInfo::default()
    })
}

/// The user of `token` if it is a valid bootstrap token in `cache`.
pub fn authenticate(cache: &WatchCache, token: &str) -> Option<UserInfo> {
    let (id, _) = parse(token)?;
    let key = format!("/registry/core/secrets/kube-system/{SECRET_PREFIX}{id}");
    let secret = cache.get(&key)?.value();
    user_for(&secret, token, jiff::Timestamp::now().as_second())
}

/// A new random token, `<6>.<16>`.
pub fn generate() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 22];
    // The system RNG does not fail on Linux.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    let chars: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{}.{}", &chars[..6], &chars[6..])
}

/// The Secret that makes `token` valid until `expiration` (RFC 3339, or none), for
/// authentication (and signing, as kubeadm's tokens).
pub fn new_secret(token: &str, expiration: Option<&str>, description: &str) -> Option<Value> {
    let (id, secret) = parse(token)?;
    let mut string_data = json!({
        "token-id": id,
        "token-secret": secret,
        "usage-bootstrap-authentication": "true",
        "usage-bootstrap-signing": "true",
        "description": description,
    });
    if let Some(at) = expiration {
        string_data["expiration"] = json!(at);
    }
    Some(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("{SECRET_PREFIX}{id}"), "namespace": "kube-system"},
        "type": SECRET_TYPE,
        "stringData": string_data,
    }))
}

/// Makes a new token valid for `ttl` (none: forever) through `client` and returns it
/// (`berth-server token create`).
pub async fn create(
    client: kube::Client,
    ttl: Option<std::time::Duration>,
    description: &str,
) -> Result<String, kube::Error> {
    use k8s_openapi::api::core::v1::Secret;
    let token = generate();
    let expiration = ttl
        .map(|t| {
            jiff::Timestamp::now()
                + jiff::SignedDuration::from_secs(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
        })
        .map(|at| at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let obj = new_secret(&token, expiration.as_deref(), description)
        .ok_or_else(|| kube::Error::Service("a generated token did not parse".into()))?;
    let secret: Secret = serde_json::from_value(obj).map_err(kube::Error::SerdeError)?;
    kube::Api::<Secret>::namespaced(client, "kube-system")
        .create(&kube::api::PostParams::default(), &secret)
        .await?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(token: &str, expiration: Option<&str>) -> Value {
        let mut s = new_secret(token, expiration, "test").expect("a secret");
        let data: serde_json::Map<String, Value> = s["stringData"]
            .as_object()
            .expect("stringData")
            .iter()
            .map(|(k, v)| {
                let text = v.as_str().unwrap_or_default();
                (
                    k.clone(),
                    json!(base64::engine::general_purpose::STANDARD.encode(text)),
                )
            })
            .collect();
        s["data"] = Value::Object(data);
        s
    }

    #[test]
    fn tokens_authenticate_until_they_expire() {
        let token = generate();
        assert!(parse(&token).is_some(), "{token}");
        assert!(parse("ABCDEF.0123456789abcdef").is_none());
        assert!(parse("abcdef.0123456789abcde").is_none());
        let now = jiff::Timestamp::now().as_second();
        let s = stored(&token, Some("2099-01-01T00:00:00Z"));
        let user = user_for(&s, &token, now).expect("valid");
        let (id, _) = parse(&token).expect("parses");
        assert_eq!(user.name, format!("system:bootstrap:{id}"));
        assert_eq!(
            user.groups,
            ["system:bootstrappers", "system:authenticated"]
        );
        let expired = stored(&token, Some("2020-01-01T00:00:00Z"));
        assert!(user_for(&expired, &token, now).is_none());
        let other = format!("{id}.0000000000000000");
        assert!(user_for(&s, &other, now).is_none(), "a wrong secret");
    }
}
