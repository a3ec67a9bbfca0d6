//! Pulling from an OCI distribution registry (the `/v2/` API): manifest (an index or
//! Docker manifest list resolves to linux/amd64), config and layers, each verified
//! against its digest; anonymous, basic and bearer-token auth (the `WWW-Authenticate`
//! challenge flow); plain HTTP for localhost or when asked. Layers download concurrently
//! and a layer two pulls want is fetched once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};

use base64::Engine as _;
use futures_util::StreamExt;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};

use super::archive::{normalize_reference, split_reference};
use super::store::{Image, ImageStore};
use super::{Error, sha256_digest};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Credentials and transport options for one pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullOptions {
    pub username: Option<String>,
    pub password: Option<String>,
    /// Use http:// (also the default for localhost and 127.0.0.1 when no CA is given).
    pub plain_http: bool,
    /// Extra CA certificate (PEM) to trust for HTTPS.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM files) for registries that ask for one.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate (a registry's `insecure_skip_verify`).
    pub insecure_skip_verify: bool,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

/// The parts of `registry/repo:tag` or `registry/repo@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    /// A tag or a digest.
    pub object: String,
    pub normalized: String,
}

impl Reference {
    pub fn parse(reference: &str) -> Self {
        let normalized = normalize_reference(reference);
        let (name, rest) = split_reference(&normalized);
        let (registry, repository) = name.split_once('/').unwrap_or(("docker.io", name));
        let registry = if registry == "docker.io" {
            "registry-1.docker.io".to_string()
        } else {
            registry.to_string()
        };
        Self {
            registry,
            repository: repository.to_string(),
            object: rest.trim_start_matches([':', '@']).to_string(),
            normalized: normalized.clone(),
        }
    }
}

/// Per-digest locks so concurrent pulls in this process fetch a layer once (the store's
/// file lock does the same across processes).
fn inflight(digest: &str) -> Arc<tokio::sync::Mutex<()>> {
    static MAP: OnceLock<StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let map = MAP.get_or_init(Default::default);
    let mut guard = map.lock().unwrap_or_else(|e| e.into_inner());
    guard.entry(digest.to_string()).or_default().clone()
}

struct Client {
    http: reqwest::Client,
    base: String,
    registry: String,
    repository: String,
    opts: PullOptions,
    token: tokio::sync::Mutex<Option<String>>,
}

fn reg_err(registry: &str, message: impl Into<String>) -> Error {
    Error::Registry {
        registry: registry.to_string(),
        message: message.into(),
    }
}

/// Parses `Bearer realm="…",service="…",scope="…"`.
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let after = after.trim_start();
        let (value, remaining) = if let Some(stripped) = after.strip_prefix('"') {
            match stripped.find('"') {
                Some(end) => (&stripped[..end], &stripped[end + 1..]),
                None => (stripped, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = remaining.trim_start_matches([',', ' ']);
    }
    (scheme.to_ascii_lowercase(), params)
}

impl Client {
    fn new(registry: &str, repository: &str, opts: &PullOptions) -> Result<Self, Error> {
        let host = registry.split(':').next().unwrap_or("");
        // Loopback registries speak plain HTTP unless the caller trusts a CA for them.
        let loopback = host == "localhost" || host == "127.0.0.1" || host == "::1";
        let plain = opts.plain_http || (loopback && opts.ca_file.is_none());
        let mut builder = reqwest::Client::builder().user_agent("berth-runtime");
        if let Some(ca) = &opts.ca_file {
            let pem = std::fs::read(ca).map_err(super::io_err(format!("{}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| reg_err(registry, format!("CA file {}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some((cert, key)) = &opts.client_certificate {
            let mut pem =
                std::fs::read(cert).map_err(super::io_err(format!("{}", cert.display())))?;
            pem.extend(std::fs::read(key).map_err(super::io_err(format!("{}", key.display())))?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                reg_err(
                    registry,
                    format!("client certificate {}: {e}", cert.display()),
                )
            })?;
            builder = builder.identity(identity);
        }
        if opts.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| reg_err(registry, e.to_string()))?;
        Ok(Self {
            http,
            base: format!("{}://{}", if plain { "http" } else { "https" }, registry),
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            opts: opts.clone(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    fn basic(&self) -> Option<String> {
        let user = self.opts.username.as_deref()?;
        let pass = self.opts.password.as_deref().unwrap_or("");
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ))
    }

    /// GET with the auth dance: on 401, answer the challenge once and retry.
    async fn get(&self, path: &str, accept: Option<&str>) -> Result<reqwest::Response, Error> {
        let url = format!("{}/v2/{}/{}", self.base, self.repository, path);
        for attempt in 0..2 {
            let mut headers = HeaderMap::new();
            if let Some(a) = accept
                && let Ok(v) = a.parse()
            {
                headers.insert(ACCEPT, v);
            }
            if let Some(auth) = self.token.lock().await.clone()
                && let Ok(v) = auth.parse()
            {
                headers.insert(AUTHORIZATION, v);
            }
            let resp = self
                .http
                .get(&url)
                .headers(headers)
                .send()
                .await
                .map_err(|e| {
                    reg_err(
                        &self.registry,
                        format!("GET {url}: {}", crate::error_chain(&e)),
                    )
                })?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                if !resp.status().is_success() {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    return Err(reg_err(
                        &self.registry,
                        format!("GET {url}: {status}: {}", body.trim()),
                    ));
                }
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let (scheme, params) = parse_challenge(&challenge);
            let auth = match scheme.as_str() {
                "basic" => self.basic().ok_or_else(|| {
                    reg_err(
                        &self.registry,
                        "the registry wants credentials (basic auth)",
                    )
                })?,
                "bearer" => format!("Bearer {}", self.fetch_token(&params).await?),
                other => {
                    return Err(reg_err(
                        &self.registry,
                        format!("unsupported auth scheme {other:?}"),
                    ));
                }
            };
            *self.token.lock().await = Some(auth);
        }
        Err(reg_err(&self.registry, "unauthorized"))
    }

    async fn fetch_token(&self, params: &HashMap<String, String>) -> Result<String, Error> {
        let realm = params
            .get("realm")
            .ok_or_else(|| reg_err(&self.registry, "bearer challenge without realm"))?;
        let mut req = self.http.get(realm);
        let mut query = Vec::new();
        if let Some(s) = params.get("service") {
            query.push(("service", s.clone()));
        }
        query.push((
            "scope",
            params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", self.repository)),
        ));
        req = req.query(&query);
        if let Some(b) = self.basic()
            && let Ok(v) = b.parse::<reqwest::header::HeaderValue>()
        {
            req = req.header(AUTHORIZATION, v);
        }
        let resp = req.send().await.map_err(|e| {
            reg_err(
                &self.registry,
                format!("token {realm}: {}", crate::error_chain(&e)),
            )
        })?;
        if !resp.status().is_success() {
            return Err(reg_err(
                &self.registry,
                format!("token {realm}: {}", resp.status()),
            ));
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| reg_err(&self.registry, format!("token {realm}: {e}")))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| reg_err(&self.registry, "token response has no token"))
    }

    async fn manifest(&self, object: &str) -> Result<(Vec<u8>, String), Error> {
        let resp = self
            .get(&format!("manifests/{object}"), Some(MANIFEST_TYPES))
            .await?;
        let media = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| reg_err(&self.registry, format!("manifest {object}: {e}")))?;
        if object.starts_with("sha256:") {
            let actual = sha256_digest(&bytes);
            if actual != object {
                return Err(Error::DigestMismatch {
                    expected: object.to_string(),
                    actual,
                });
            }
        }
        Ok((bytes.to_vec(), media))
    }

    async fn blob(
        &self,
        store: &ImageStore,
        desc: &Descriptor,
        bar: Option<indicatif::ProgressBar>,
    ) -> Result<(), Error> {
        let digest = desc.digest().to_string();
        let gate = inflight(&digest);
        let _held = gate.lock().await;
        let Some(mut writer) = store.begin_blob(&digest, Some(desc.size()))? else {
            if let Some(b) = bar {
                b.finish_with_message("already present");
            }
            return Ok(());
        };
        let resp = self.get(&format!("blobs/{digest}"), None).await?;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| reg_err(&self.registry, format!("blob {digest}: {e}")))?;
            writer.write(&chunk)?;
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
        }
        writer.commit()?;
        if let Some(b) = bar {
            b.finish_with_message("done");
        }
        Ok(())
    }
}

/// Pulls `reference` into the store and returns the image.
pub async fn pull(store: &ImageStore, reference: &str, opts: &PullOptions) -> Result<Image, Error> {
    let r = Reference::parse(reference);
    let client = Client::new(&r.registry, &r.repository, opts)?;
    pull_with(store, reference, &client).await
}

/// Pulls `reference` from each of `sources` in turn (mirrors, then the registry: see
/// [`super::registries::Registries::sources`]) until one has it; the image keeps the
/// name `reference`. The error names every attempt.
pub async fn pull_from(
    store: &ImageStore,
    reference: &str,
    sources: &[super::registries::Source],
) -> Result<Image, Error> {
    let mut failures = Vec::new();
    for s in sources {
        let attempt = match Client::new(&s.registry, &s.repository, &s.options) {
            Ok(client) => pull_with(store, reference, &client).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(image) => return Ok(image),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let registry = Reference::parse(reference).registry;
    Err(match failures.len() {
        0 => reg_err(&registry, "no registry to pull from"),
        1 => reg_err(&registry, failures.remove(0)),
        _ => reg_err(
            &registry,
            format!(
                "every mirror and the registry failed: {}",
                failures.join("; ")
            ),
        ),
    })
}

async fn pull_with(store: &ImageStore, reference: &str, client: &Client) -> Result<Image, Error> {
    let r = Reference::parse(reference);
    let opts = &client.opts;
    let (mut bytes, mut media) = client.manifest(&r.object).await?;
    let is_index = |media: &str, bytes: &[u8]| {
        media.contains("index") || media.contains("manifest.list") || {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| v.get("manifests").cloned())
                .is_some()
        }
    };
    if is_index(&media, &bytes) {
        let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: format!("index of {reference}"),
            source,
        })?;
        let desc = ImageStore::select_manifest(&index, reference)?;
        (bytes, media) = client.manifest(desc.digest().as_ref()).await?;
    }
    let _ = media;
    let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: format!("manifest of {reference}"),
        source,
    })?;
    let manifest_digest = sha256_digest(&bytes);
    store.put_bytes(&manifest_digest, &bytes)?;

    let bars = opts.progress.then(indicatif::MultiProgress::new);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:.bold} {bar:30} {bytes}/{total_bytes} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let mut wanted: Vec<&Descriptor> = vec![manifest.config()];
    wanted.extend(manifest.layers());
    let jobs = wanted.into_iter().map(|desc| {
        let bar = bars.as_ref().map(|m| {
            let b = m.add(indicatif::ProgressBar::new(desc.size()));
            b.set_style(style.clone());
            let d = desc.digest().to_string();
            b.set_prefix(d.chars().skip(7).take(12).collect::<String>());
            b
        });
        client.blob(store, desc, bar)
    });
    for result in futures_util::future::join_all(jobs).await {
        result?;
    }
    let store = store.clone();
    let name = r.normalized.clone();
    tokio::task::spawn_blocking(move || store.register(&name, &manifest_digest))
        .await
        .map_err(|e| Error::Unsupported(format!("unpack task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_registry_repository_object() {
        let r = Reference::parse("127.0.0.1:5000/berth/busybox:v1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "berth/busybox");
        assert_eq!(r.object, "v1");
        let r = Reference::parse("busybox");
        assert_eq!(r.registry, "registry-1.docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.object, "latest");
    }

    #[test]
    fn bearer_challenges_parse() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
    }
}
