//! Registry mirrors and per-registry settings, in the shape of k3s' `registries.yaml`
//! (containerd's `hosts.toml` facts in YAML): a list of mirror endpoints per registry
//! host (`docker.io`, `registry.example:5000`, or `*` for every registry), repository
//! rewrites per mirror, and per-endpoint credentials and TLS (a CA file, a client
//! certificate, or no verification). A pull tries the mirrors in order, then the
//! registry itself; the image keeps the name the pod asked for.
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["http://127.0.0.1:5000", "https://mirror.example"]
//!     rewrite:
//!       "^library/(.*)": "hub/$1"
//! configs:
//!   "mirror.example":
//!     auth: {username: me, password: secret}
//!     tls: {ca_file: /etc/berth/mirror-ca.pem}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Error;
use super::pull::{PullOptions, Reference};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mirrors: BTreeMap<String, MirrorFile>,
    #[serde(default)]
    configs: BTreeMap<String, HostConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorFile {
    #[serde(default)]
    endpoint: Vec<String>,
    #[serde(default)]
    rewrite: BTreeMap<String, String>,
}

/// Settings of one registry host or mirror endpoint (`configs.<host>`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default)]
    pub auth: Option<Auth>,
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// Credentials for a host: `username`/`password`, or `auth` (base64 `user:password`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub auth: Option<String>,
}

/// TLS for a host: a CA to trust, a client certificate, or no verification at all.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One mirror: its endpoints in order and its repository rewrites.
#[derive(Debug, Clone)]
struct Mirror {
    endpoints: Vec<Endpoint>,
    rewrites: Vec<(regex::Regex, String)>,
}

/// A mirror endpoint: `http(s)://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    plain_http: bool,
    host: String,
}

/// The registries configuration: empty (every pull goes to its registry) by default.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    mirrors: BTreeMap<String, Mirror>,
    configs: BTreeMap<String, HostConfig>,
}

/// Where one attempt of a pull goes: the registry host, the repository there and the
/// transport and credentials for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub registry: String,
    pub repository: String,
    pub options: PullOptions,
}

impl Registries {
    /// Reads `path`; a missing file is the empty configuration.
    pub fn load(path: &Path) -> Result<Self, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|message| Error::Config {
                path: path.to_owned(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::Io {
                what: path.display().to_string(),
                source,
            }),
        }
    }

    /// Parses the YAML text; the error names the field or entry at fault.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?
        };
        let mut mirrors = BTreeMap::new();
        for (host, m) in file.mirrors {
            let endpoints = m
                .endpoint
                .iter()
                .map(|e| {
                    Endpoint::parse(e)
                        .map_err(|why| format!("mirrors.{host}.endpoint {e:?}: {why}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let rewrites = m
                .rewrite
                .into_iter()
                .map(|(pattern, to)| {
                    regex::Regex::new(&pattern)
                        .map(|re| (re, to))
                        .map_err(|e| format!("mirrors.{host}.rewrite {pattern:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            mirrors.insert(
                host,
                Mirror {
                    endpoints,
                    rewrites,
                },
            );
        }
        for (host, c) in &file.configs {
            if let Some(tls) = &c.tls
                && tls.cert_file.is_some() != tls.key_file.is_some()
            {
                return Err(format!(
                    "configs.{host}.tls: cert_file and key_file go together"
                ));
            }
            if let Some(a) = &c.auth
                && let Some(encoded) = &a.auth
                && decode_auth(encoded).is_none()
            {
                return Err(format!(
                    "configs.{host}.auth.auth: not base64 of user:password"
                ));
            }
        }
        Ok(Registries {
            mirrors,
            configs: file.configs,
        })
    }

    /// Whether anything is configured.
    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty() && self.configs.is_empty()
    }

    /// The attempts for `reference`, in order: each mirror endpoint of its registry
    /// (or of `*`), with the mirror's rewrites applied to the repository, then the
    /// registry itself. `base` holds the caller's credentials (a pod's pull secrets),
    /// used where the configuration gives none for the host.
    pub fn sources(&self, reference: &str, base: &PullOptions) -> Vec<Source> {
        let r = Reference::parse(reference);
        // The name the image was asked by: Docker Hub is `docker.io`.
        let asked = if r.registry == "registry-1.docker.io" {
            "docker.io"
        } else {
            r.registry.as_str()
        };
        let mut out = Vec::new();
        if let Some(mirror) = self.mirrors.get(asked).or_else(|| self.mirrors.get("*")) {
            let repository = mirror
                .rewrites
                .iter()
                .find(|(re, _)| re.is_match(&r.repository))
                .map(|(re, to)| re.replace(&r.repository, to.as_str()).into_owned())
                .unwrap_or_else(|| r.repository.clone());
            for e in &mirror.endpoints {
                if e.host == r.registry || e.host == asked {
                    continue;
                }
                let mut options = self.options_for(&e.host, base);
                options.plain_http = e.plain_http;
                out.push(Source {
                    registry: e.host.clone(),
                    repository: repository.clone(),
                    options,
                });
            }
        }
        let mut options = self.options_for(asked, base);
        if asked != r.registry && !self.configs.contains_key(asked) {
            options = self.options_for(&r.registry, base);
        }
        out.push(Source {
            registry: r.registry.clone(),
            repository: r.repository,
            options,
        });
        out
    }

    /// `base` with the credentials and TLS configured for `host`.
    fn options_for(&self, host: &str, base: &PullOptions) -> PullOptions {
        let mut o = base.clone();
        let Some(c) = self.configs.get(host) else {
            return o;
        };
        if let Some(a) = &c.auth {
            let (user, pass) = match (&a.username, &a.auth) {
                (Some(u), _) => (u.clone(), a.password.clone().unwrap_or_default()),
                (None, Some(encoded)) => decode_auth(encoded).unwrap_or_default(),
                (None, None) => (String::new(), String::new()),
            };
            if !user.is_empty() {
                o.username = Some(user);
                o.password = Some(pass);
            }
        }
        if let Some(t) = &c.tls {
            if t.ca_file.is_some() {
                o.ca_file = t.ca_file.clone();
            }
            if let (Some(c), Some(k)) = (&t.cert_file, &t.key_file) {
                o.client_certificate = Some((c.clone(), k.clone()));
            }
            o.insecure_skip_verify = t.insecure_skip_verify;
        }
        o
    }
}

impl Endpoint {
    fn parse(text: &str) -> Result<Self, String> {
        let (plain_http, rest) = if let Some(r) = text.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("https://") {
            (false, r)
        } else {
            return Err("an endpoint is http://host[:port] or https://host[:port]".into());
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            return Err("no host".into());
        }
        if !path.is_empty() && path != "v2" && path != "v2/" {
            return Err("a path other than /v2 is not supported".into());
        }
        Ok(Endpoint {
            plain_http,
            host: host.to_owned(),
        })
    }
}

/// `user:password` from base64.
fn decode_auth(encoded: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
mirrors:
  docker.io:
    endpoint: ["http://127.0.0.1:5000", "https://mirror.example/v2"]
    rewrite:
      "^library/(.*)": "hub/$1"
  "*":
    endpoint: ["https://catch-all.example"]
configs:
  "mirror.example":
    auth: {username: me, password: secret}
    tls: {ca_file: /etc/berth/ca.pem, insecure_skip_verify: false}
  "registry.example:5000":
    auth: {auth: "dTpw"}
    tls: {insecure_skip_verify: true}
"#;

    #[test]
    fn mirrors_come_first_with_rewrites_then_the_registry() {
        let r = Registries::parse(CONFIG).expect("parse");
        let s = r.sources("busybox:1.36", &PullOptions::default());
        let hosts: Vec<(&str, &str, bool)> = s
            .iter()
            .map(|s| {
                (
                    s.registry.as_str(),
                    s.repository.as_str(),
                    s.options.plain_http,
                )
            })
            .collect();
        assert_eq!(
            hosts,
            [
                ("127.0.0.1:5000", "hub/busybox", true),
                ("mirror.example", "hub/busybox", false),
                ("registry-1.docker.io", "library/busybox", false),
            ]
        );
        assert_eq!(s[1].options.username.as_deref(), Some("me"));
        assert_eq!(s[1].options.password.as_deref(), Some("secret"));
        assert_eq!(
            s[1].options.ca_file.as_deref(),
            Some(Path::new("/etc/berth/ca.pem"))
        );
        assert_eq!(s[0].options.username, None);
    }

    #[test]
    fn the_wildcard_mirrors_other_registries_and_configs_apply_to_the_registry() {
        let r = Registries::parse(CONFIG).expect("parse");
        let base = PullOptions {
            username: Some("pod".into()),
            password: Some("secret".into()),
            ..PullOptions::default()
        };
        let s = r.sources("registry.example:5000/team/app:v1", &base);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].registry, "catch-all.example");
        assert_eq!(s[0].repository, "team/app");
        // No config for the mirror: the pod's pull secret goes along.
        assert_eq!(s[0].options.username.as_deref(), Some("pod"));
        assert_eq!(s[1].registry, "registry.example:5000");
        assert_eq!(s[1].options.username.as_deref(), Some("u"));
        assert_eq!(s[1].options.password.as_deref(), Some("p"));
        assert!(s[1].options.insecure_skip_verify);
    }

    #[test]
    fn no_configuration_pulls_from_the_registry() {
        let r = Registries::parse("").expect("empty");
        assert!(r.is_empty());
        let s = r.sources("127.0.0.1:5000/a/b:c", &PullOptions::default());
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].registry, "127.0.0.1:5000");
        assert_eq!(s[0].repository, "a/b");
    }

    #[test]
    fn bad_configurations_name_the_field() {
        for (text, want) in [
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n",
                "mirrors.docker.io.endpoint \"ftp://x\"",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"https://x/y\"]\n",
                "a path other than /v2",
            ),
            (
                "mirrors:\n  docker.io:\n    rewrite: {\"(\": \"x\"}\n",
                "mirrors.docker.io.rewrite \"(\"",
            ),
            (
                "configs:\n  a:\n    tls: {cert_file: /c}\n",
                "configs.a.tls: cert_file and key_file go together",
            ),
            (
                "configs:\n  a:\n    auth: {auth: \"!!\"}\n",
                "configs.a.auth.auth",
            ),
            ("mirrors:\n  docker.io:\n    endpoints: []\n", "endpoints"),
        ] {
            let err = Registries::parse(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
