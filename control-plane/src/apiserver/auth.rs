//! Authentication: who is asking. Users are identified by a client certificate signed
//! by the cluster CA (CN = user name, O = groups) or a bearer token from the static
//! token file (`token,user,uid,"group1,group2"`, kube-apiserver's `--token-auth-file`
//! format); ServiceAccount tokens are in `serviceaccount_token`. A request with no
//! credentials is the anonymous user ([`anonymous`]); what anyone may do is
//! authorization's business (`authz`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Who is asking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// Extra attributes (`user.Info.GetExtra`), e.g. from `Impersonate-Extra-*`.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The user of a request without credentials (kube-apiserver's `--anonymous-auth`).
pub fn anonymous() -> UserInfo {
    UserInfo {
        name: "system:anonymous".into(),
        groups: vec!["system:unauthenticated".into()],
        ..UserInfo::default()
    }
}

/// The identity a TLS client certificate proved, set on each request of the connection.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Option<UserInfo>);

/// Parses a client certificate's subject.
pub fn from_certificate(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_owned();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    groups.push("system:authenticated".into());
    Some(UserInfo {
        name,
        groups,
        ..UserInfo::default()
    })
}

/// The static token file.
#[derive(Debug, Default, Clone)]
pub struct Tokens(HashMap<String, UserInfo>);

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading token file {}: {e}", path.display()))?;
        let mut map = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            if fields.len() < 3 {
                return Err(format!(
                    "{}:{}: want token,user,uid[,\"groups\"]",
                    path.display(),
                    n + 1
                ));
            }
            let mut groups: Vec<String> = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            groups.push("system:authenticated".into());
            map.insert(
                fields[0].clone(),
                UserInfo {
                    name: fields[1].clone(),
                    uid: fields[2].clone(),
                    groups,
                    extra: BTreeMap::new(),
                },
            );
        }
        Ok(Self(map))
    }

    pub fn get(&self, token: &str) -> Option<&UserInfo> {
        self.0.get(token)
    }
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is matched
/// case-insensitively, as kube-apiserver's bearer token authenticator does (the Python
/// client's in-cluster config sends `bearer`).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Paths anonymous clients may read under `--authorization-mode=AlwaysAllow`
/// (under RBAC, `system:public-info-viewer` decides).
pub fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
    }

    #[test]
    fn token_file_lines() {
        let dir = std::env::temp_dir().join(format!("berth-tokens-{}", std::process::id()));
        std::fs::write(&dir, "# comment\nsecret,alice,1,\"dev,ops\"\nt2,bob,2\n").expect("write");
        let tokens = Tokens::load(&dir).expect("load");
        let alice = tokens.get("secret").expect("alice");
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, vec!["dev", "ops", "system:authenticated"]);
        assert!(tokens.get("t2").is_some());
        assert!(tokens.get("nope").is_none());
        std::fs::remove_file(&dir).expect("cleanup");
    }
}
