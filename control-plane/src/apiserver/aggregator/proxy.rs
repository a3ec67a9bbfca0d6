//! kube-aggregator's proxy handler: a request for `/apis/<group>/<version>/…` whose
//! group-version a remote APIService serves — after authentication and authorization
//! here, as upstream's handler chain does them before the aggregator — goes to a ready
//! endpoint of the APIService's Service over HTTPS ([`super::transport`]), with the
//! user in `X-Remote-User`, `X-Remote-Uid`, `X-Remote-Group` and
//! `X-Remote-Extra-<key>` (whatever the client sent in those, its `Authorization` and
//! its `Impersonate-*` headers are dropped), and the front-proxy client certificate.
//! The answer streams back as it comes (watches, logs), and a `101` splices the two
//! connections (websocket and SPDY subresources).
//!
//! An APIService that is not `Available`, or whose Service has no ready endpoint, is
//! answered `503 service unavailable` as upstream's `proxyError`; a request that cannot
//! reach the server gets `503` with the error, and its APIService is checked again at
//! once.
//!
//! Entry point: [`intercept`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;

use super::apiservice::ApiService;
use super::front_proxy::{EXTRA_PREFIX, GROUP_HEADER, UID_HEADER, USER_HEADER};
use super::transport::{self, Trust};
use crate::apiserver::Api;
use crate::apiserver::audit::RemoteAddr;
use crate::apiserver::auth::{self, UserInfo};
use crate::apiserver::status::ApiResult;

/// How long the server may take to send a response head.
const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The group and version of an `/apis/<group>/<version>[/…]` path.
pub fn group_version(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/apis/")?;
    let mut parts = rest.splitn(3, '/');
    let group = parts.next().filter(|g| !g.is_empty())?;
    let version = parts.next().filter(|v| !v.is_empty())?;
    Some((group, version))
}

/// Proxies `req` if a remote APIService serves its group-version; otherwise gives the
/// request back (`Err`) for this server to answer.
pub async fn intercept(
    api: &Arc<Api>,
    user: Option<&UserInfo>,
    req: Request<Body>,
) -> ApiResult<Result<Response<Body>, Request<Body>>> {
    let Some((group, version)) = group_version(req.uri().path()) else {
        return Ok(Err(req));
    };
    let Some(svc) = super::discovery::remote_for(api, group, version) else {
        return Ok(Err(req));
    };
    Ok(Ok(proxy(api, &svc, user, req).await))
}

/// `http.Error(w, message, 503)`.
fn unavailable(message: &str) -> Response<Body> {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{message}\n"),
    )
        .into_response()
}

async fn proxy(
    api: &Arc<Api>,
    svc: &ApiService,
    user: Option<&UserInfo>,
    mut req: Request<Body>,
) -> Response<Body> {
    let Some(service) = svc.service.as_ref() else {
        return unavailable("service unavailable");
    };
    if !svc.is_available() {
        return unavailable("service unavailable");
    }
    let addr = match super::endpoints::resolve(api, service) {
        Ok(addr) => addr,
        Err(err) => {
            tracing::warn!(apiservice = %svc.name, %err, "error resolving the aggregated API's endpoint");
            api.aggregator.recheck(&svc.name);
            return unavailable("service unavailable");
        }
    };
    let Some(identity) = api.aggregator.identity() else {
        return unavailable("service unavailable");
    };
    let trust = if svc.insecure {
        Trust::Insecure
    } else {
        Trust::Bundle(svc.ca_bundle.clone())
    };
    let config = match transport::client_config(&trust, identity) {
        Ok(c) => c,
        Err(err) => return unavailable(&err),
    };
    let anonymous = auth::anonymous();
    let user = user.unwrap_or(&anonymous);
    let upgrade = wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let forwarded_for = req.extensions().get::<RemoteAddr>().map(|r| r.0);
    let outgoing = match outgoing_request(req, addr, user, upgrade, forwarded_for) {
        Ok(r) => r,
        Err(err) => return unavailable(&err),
    };
    let resp = match transport::send(
        addr,
        &service.server_name(),
        config,
        outgoing,
        RESPONSE_HEAD_TIMEOUT,
    )
    .await
    {
        Ok(resp) => resp,
        Err(err) => {
            tracing::warn!(apiservice = %svc.name, %err, "error while proxying the request");
            api.aggregator.recheck(&svc.name);
            return unavailable(&err);
        }
    };
    respond(resp, client_upgrade)
}

/// Whether the client asks for a protocol switch (websocket, SPDY).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Headers that belong to one hop (RFC 9110 §7.6.1) and never pass a proxy.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// What of the client's headers goes on: not the hop-by-hop ones, not its
/// credentials or impersonation (spent here), not any `X-Remote-*` it made up.
fn forwarded(name: &str) -> bool {
    !hop_by_hop(name)
        && name != "authorization"
        && name != "host"
        && !name.starts_with("impersonate-")
        && !name.starts_with("x-remote-")
}

/// Go's `headerKeyEscape`: bytes not legal in a header name, and `%`, as `%XX`.
pub fn escape_extra_key(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        let legal = b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b);
        if legal {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `X-Remote-*` headers for `user` (`transport.SetAuthProxyHeaders`).
pub fn identity_headers(user: &UserInfo) -> Vec<(String, String)> {
    let mut out = vec![(USER_HEADER.to_owned(), user.name.clone())];
    if !user.uid.is_empty() {
        out.push((UID_HEADER.to_owned(), user.uid.clone()));
    }
    for g in &user.groups {
        out.push((GROUP_HEADER.to_owned(), g.clone()));
    }
    for (key, values) in &user.extra {
        for v in values {
            out.push((
                format!("{EXTRA_PREFIX}{}", escape_extra_key(key)),
                v.clone(),
            ));
        }
    }
    out
}

fn outgoing_request(
    req: Request<Body>,
    addr: SocketAddr,
    user: &UserInfo,
    upgrade: bool,
    forwarded_for: Option<SocketAddr>,
) -> Result<Request<Body>, String> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let mut builder = Request::builder()
        .method(parts.method)
        .uri(path)
        .header(header::HOST, addr.to_string());
    for (name, value) in &parts.headers {
        // X-Forwarded-For is written below, the client's folded in.
        if forwarded(name.as_str()) && (forwarded_for.is_none() || name != "x-forwarded-for") {
            builder = builder.header(name, value);
        }
    }
    if upgrade {
        for name in [header::CONNECTION, header::UPGRADE] {
            for value in parts.headers.get_all(&name) {
                builder = builder.header(&name, value);
            }
        }
    }
    if let Some(peer) = forwarded_for {
        let prior = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let value = match prior {
            Some(p) => format!("{p}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        builder = builder.header("x-forwarded-for", value);
    }
    let mut out = builder.body(body).map_err(|e| e.to_string())?;
    for (name, value) in identity_headers(user) {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
        out.headers_mut().append(name, value);
    }
    Ok(out)
}

/// The server's answer for the client; after a `101`, the two streams are spliced.
fn respond(
    resp: Response<hyper::body::Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let mut builder = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        let n = name.as_str();
        if !hop_by_hop(n) || (switching && (n == "connection" || n == "upgrade")) {
            builder = builder.header(name, value);
        }
    }
    if switching {
        let Some(client) = client_upgrade else {
            return unavailable("the aggregated API switched protocols unasked");
        };
        let mut resp = resp;
        let server = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client), Ok(server)) = (client.await, server.await) else {
                return;
            };
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut server = hyper_util::rt::TokioIo::new(server);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
        return builder
            .body(Body::empty())
            .unwrap_or_else(|e| unavailable(&e.to_string()));
    }
    builder
        .body(Body::new(resp.into_body()))
        .unwrap_or_else(|e| unavailable(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_group_version_paths() {
        assert_eq!(
            group_version("/apis/metrics.k8s.io/v1beta1/nodes"),
            Some(("metrics.k8s.io", "v1beta1"))
        );
        assert_eq!(
            group_version("/apis/test.berth.dev/v1"),
            Some(("test.berth.dev", "v1"))
        );
        assert_eq!(group_version("/apis/test.berth.dev"), None);
        assert_eq!(group_version("/apis/test.berth.dev/"), None);
        assert_eq!(group_version("/api/v1/pods"), None);
        assert_eq!(group_version("/apis"), None);
    }

    #[test]
    fn identity_headers_as_set_auth_proxy_headers() {
        let mut user = UserInfo {
            name: "alice".into(),
            uid: "42".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            ..UserInfo::default()
        };
        user.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec!["X509SHA256=ab".into()],
        );
        assert_eq!(
            identity_headers(&user),
            [
                ("X-Remote-User".to_owned(), "alice".to_owned()),
                ("X-Remote-Uid".to_owned(), "42".to_owned()),
                ("X-Remote-Group".to_owned(), "dev".to_owned()),
                (
                    "X-Remote-Group".to_owned(),
                    "system:authenticated".to_owned()
                ),
                (
                    "X-Remote-Extra-authentication.kubernetes.io%2Fcredential-id".to_owned(),
                    "X509SHA256=ab".to_owned()
                ),
            ]
        );
        assert_eq!(escape_extra_key("a%b c"), "a%25b%20c");
    }

    #[test]
    fn credentials_and_forged_identity_headers_stay_here() {
        let req = Request::builder()
            .uri("/apis/test.berth.dev/v1/things?watch=true")
            .header("authorization", "Bearer secret")
            .header("impersonate-user", "bob")
            .header("x-remote-user", "mallory")
            .header("x-remote-group", "system:masters")
            .header("accept", "application/json")
            .header("connection", "keep-alive")
            .body(Body::empty())
            .expect("request");
        let user = UserInfo {
            name: "alice".into(),
            groups: vec!["system:authenticated".into()],
            ..UserInfo::default()
        };
        let addr: SocketAddr = "127.0.0.1:8443".parse().expect("addr");
        let peer: SocketAddr = "10.1.2.3:5555".parse().expect("addr");
        let out = outgoing_request(req, addr, &user, false, Some(peer)).expect("request");
        let h = out.headers();
        assert_eq!(out.uri(), "/apis/test.berth.dev/v1/things?watch=true");
        assert!(h.get("authorization").is_none());
        assert!(h.get("impersonate-user").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["host"], "127.0.0.1:8443");
        assert_eq!(h["accept"], "application/json");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        let users: Vec<_> = h.get_all("x-remote-user").iter().collect();
        assert_eq!(users, ["alice"]);
        let groups: Vec<_> = h.get_all("x-remote-group").iter().collect();
        assert_eq!(groups, ["system:authenticated"]);
    }
}
