//! What a request asks for: the resource path parsed like Kubernetes'
//! `RequestInfoFactory` (`/api/v1/namespaces/{ns}/{resource}/{name}/{subresource}`,
//! `/apis/{group}/{version}/…`, the legacy `/watch/` prefix), its query parameters and
//! its body (JSON or YAML, size-limited).

use std::collections::HashMap;

use axum::body::Body;
use axum::http::HeaderMap;
use serde_json::Value;

use super::status::{ApiError, ApiResult};

/// A parsed resource path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    /// Empty for `/api/v1` and `/apis/{g}/{v}` themselves (discovery).
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// Extra path after the subresource (`nodes/x/proxy/metrics`).
    pub rest: Vec<String>,
    /// The legacy `/watch/` prefix.
    pub watch_prefix: bool,
}

/// Parses `/api/...` and `/apis/...` resource paths; `None` for anything else
/// (or the group-only paths `/apis/{group}`).
pub fn parse_path(path: &str) -> Option<ResourcePath> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let mut p = ResourcePath {
        group: group.into(),
        version: version.into(),
        ..Default::default()
    };
    let mut rest: Vec<&str> = rest.iter().copied().filter(|s| !s.is_empty()).collect();
    if rest.first() == Some(&"watch") {
        p.watch_prefix = true;
        rest.remove(0);
    }
    match rest.as_slice() {
        [] => {}
        // A namespace's own subresources (status, finalize) vs. a namespaced collection.
        ["namespaces", ns, sub] if matches!(*sub, "status" | "finalize") => {
            p.resource = "namespaces".into();
            p.name = Some((*ns).into());
            p.subresource = Some((*sub).into());
        }
        ["namespaces", ns, resource, tail @ ..] => {
            p.namespace = Some((*ns).into());
            p.resource = (*resource).into();
            if let [name, tail @ ..] = tail {
                p.name = Some((*name).into());
                if let [sub, more @ ..] = tail {
                    p.subresource = Some((*sub).into());
                    p.rest = more.iter().map(|s| (*s).to_owned()).collect();
                }
            }
        }
        [resource, tail @ ..] => {
            p.resource = (*resource).into();
            if let [name, tail @ ..] = tail {
                p.name = Some((*name).into());
                if let [sub, more @ ..] = tail {
                    p.subresource = Some((*sub).into());
                    p.rest = more.iter().map(|s| (*s).to_owned()).collect();
                }
            }
        }
    }
    Some(p)
}

/// Query parameters (last value wins, as Go's `url.Values.Get`… returns the first;
/// clients send each once).
#[derive(Debug, Clone, Default)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let map = raw
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Self(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    pub fn int(&self, key: &str) -> ApiResult<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value for {key}: {v:?} is not an integer"))
            }),
        }
    }

    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "unsupported dryRun value {other:?}: only \"All\" is supported"
            ))),
        }
    }

    /// `fieldValidation`: Strict rejects unknown fields, Ignore/Warn drop them.
    pub fn strict(&self) -> ApiResult<bool> {
        match self.get("fieldValidation") {
            None | Some("Ignore" | "Warn") => Ok(false),
            Some("Strict") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, Strict, not {other:?}"
            ))),
        }
    }
}

/// Reads the body, up to `limit` bytes (413 beyond). An oversized body is still read
/// (and discarded, up to 16× the limit) so the client sees the 413 rather than a reset
/// connection while it is still sending.
pub async fn read_body(body: Body, limit: usize) -> ApiResult<bytes::Bytes> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > limit.saturating_mul(16) {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError::too_large(format!(
            "the request body of {seen} bytes is larger than the {limit} bytes allowed"
        )));
    }
    Ok(buf.freeze())
}

/// The media type without parameters.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_lowercase()
        })
        .unwrap_or_default()
}

/// Decodes a JSON or YAML document.
pub fn decode(bytes: &[u8], media: &str) -> ApiResult<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match media {
        "application/yaml" | "application/x-yaml" | "text/yaml" | "application/apply-patch+yaml" => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| ApiError::bad_request(format!("the YAML body is not UTF-8: {e}")))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))
        }
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(bytes),
        _ => serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml: {e}"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_kubernetes() {
        let p = parse_path("/api/v1/namespaces/default/pods/web/log").expect("path");
        assert_eq!(p.namespace.as_deref(), Some("default"));
        assert_eq!(p.resource, "pods");
        assert_eq!(p.name.as_deref(), Some("web"));
        assert_eq!(p.subresource.as_deref(), Some("log"));
        let p = parse_path("/apis/apps/v1/deployments").expect("path");
        assert_eq!(
            (p.group.as_str(), p.resource.as_str()),
            ("apps", "deployments")
        );
        assert_eq!(p.namespace, None);
        let p = parse_path("/api/v1/namespaces/kube-system").expect("path");
        assert_eq!(
            (p.resource.as_str(), p.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let p = parse_path("/api/v1/namespaces/x/finalize").expect("path");
        assert_eq!(p.subresource.as_deref(), Some("finalize"));
        let p = parse_path("/api/v1/watch/namespaces/x/pods").expect("path");
        assert!(p.watch_prefix);
        assert_eq!(p.namespace.as_deref(), Some("x"));
        let p = parse_path("/api/v1/nodes/n1/proxy/stats/summary").expect("path");
        assert_eq!(p.rest, vec!["stats", "summary"]);
        assert!(parse_path("/apis/apps").is_none());
        assert!(parse_path("/healthz").is_none());
    }
}
