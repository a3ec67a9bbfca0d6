//! Who may use the kubelet API, as the kubelet's `--authorization-mode=Webhook`
//! (`pkg/kubelet/server/auth.go`): the caller is the client certificate it presented
//! (CN = user, O = groups; the TLS layer already required the cluster CA), and the
//! apiserver is asked through a SubjectAccessReview whether that user may `<verb>`
//! `nodes/<subresource>` named this node — the verb from the HTTP method (`get`,
//! `create`, `update`, `patch`, `delete`), the subresource from the path (`/stats` →
//! `stats`, `/metrics` → `metrics`, `/logs` → `log`, everything else, exec, attach,
//! port-forward and container logs included, → `proxy`). Answers are cached (allowed
//! 5 minutes, denied 30 seconds, the kubelet's defaults). A refused caller gets 403
//! `Forbidden (user=…, verb=…, resource=nodes, subresource=…)`.
//!
//! Entry points: [`Caller::from_certificate`], [`Authorizer::check`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

const ALLOWED_TTL: Duration = Duration::from_secs(5 * 60);
const DENIED_TTL: Duration = Duration::from_secs(30);

/// The user a client certificate names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
}

impl Caller {
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let user = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())?
            .to_owned();
        let mut groups: Vec<String> = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_owned))
            .collect();
        groups.push("system:authenticated".into());
        Some(Self { user, groups })
    }
}

/// The verb and the `nodes` subresource a kubelet API request needs.
pub fn attributes(method: &axum::http::Method, path: &str) -> (&'static str, &'static str) {
    use axum::http::Method;
    let verb = match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    };
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    let sub = if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        "log"
    } else {
        "proxy"
    };
    (verb, sub)
}

/// A cached answer: who, verb, subresource → allowed, when asked.
type Answers = HashMap<(Caller, &'static str, &'static str), (bool, Instant)>;

/// SubjectAccessReviews through the apiserver, cached.
pub struct Authorizer {
    client: kube::Client,
    node: String,
    cache: Mutex<Answers>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    pub fn new(client: kube::Client, node: String) -> Self {
        Self {
            client,
            node,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `caller` may `verb` `nodes/<sub>` of this node; `Err` when the apiserver
    /// could not be asked (the request is refused then too).
    pub async fn check(
        &self,
        caller: &Caller,
        verb: &'static str,
        sub: &'static str,
    ) -> Result<bool, kube::Error> {
        let key = (caller.clone(), verb, sub);
        if let Some((allowed, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            let ttl = if *allowed { ALLOWED_TTL } else { DENIED_TTL };
            if at.elapsed() < ttl {
                return Ok(*allowed);
            }
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                groups: Some(caller.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    resource: Some("nodes".into()),
                    subresource: Some(sub.into()),
                    name: Some(self.node.clone()),
                    group: Some(String::new()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }
}

/// The kubelet's 403 body.
pub fn forbidden_message(caller: &Caller, verb: &str, sub: &str) -> String {
    format!(
        "Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub})",
        caller.user
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn paths_map_to_node_subresources_as_the_kubelet_maps_them() {
        assert_eq!(attributes(&Method::GET, "/stats/summary"), ("get", "stats"));
        assert_eq!(
            attributes(&Method::GET, "/metrics/resource"),
            ("get", "metrics")
        );
        assert_eq!(attributes(&Method::GET, "/metrics"), ("get", "metrics"));
        assert_eq!(attributes(&Method::GET, "/logs/"), ("get", "log"));
        assert_eq!(
            attributes(&Method::GET, "/containerLogs/ns/p/c"),
            ("get", "proxy")
        );
        assert_eq!(
            attributes(&Method::POST, "/exec/ns/p/c"),
            ("create", "proxy")
        );
        assert_eq!(attributes(&Method::GET, "/statsx"), ("get", "proxy"));
    }
}
