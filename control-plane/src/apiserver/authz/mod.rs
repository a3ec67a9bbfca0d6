//! Authorization: who may do what. A request is reduced to kube-apiserver's authorizer
//! attributes ([`Attributes`], derived from the path as `RequestInfoFactory` does) and
//! asked of the configured [`Authorizer`]: `--authorization-mode=RBAC` (the default:
//! members of `system:masters` first, as kube-apiserver's privileged-group authorizer,
//! then [`rbac::Rbac`]) or `AlwaysAllow`. A denial is a 403 worded exactly as
//! kube-apiserver's `responsewriters.Forbidden`.
//!
//! Entry points: [`Attributes::from_request`], [`Authorizer::authorize`],
//! [`Attributes::forbidden`]; the RBAC objects' own checks (escalation, bind) are in
//! [`escalation`], the bootstrap policy in [`bootstrap`], impersonation in
//! [`impersonation`].

pub mod bootstrap;
pub mod escalation;
pub mod impersonation;
pub mod node;
pub mod rbac;
pub mod rules;

use std::sync::Arc;

use axum::http::Method;

use super::auth::UserInfo;
use super::request::ResourcePath;
use super::status::ApiError;
pub use rules::Rule;

/// The group every user with full power is in; it bypasses authorization and the
/// escalation checks (`user.SystemPrivilegedGroup`).
pub const MASTERS: &str = "system:masters";

/// What a request asks to do, as kube-apiserver's `authorizer.Attributes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub user: UserInfo,
    pub verb: String,
    pub resource_request: bool,
    /// The URL path (non-resource requests).
    pub path: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// The request's `fieldSelector` (the Node authorizer lets a node list and watch
    /// pods only with `spec.nodeName=<itself>`).
    pub field_selector: String,
}

/// How a request's HTTP method reads as a non-resource verb (`get`, `post`, …).
fn method_verb(method: &Method) -> String {
    method.as_str().to_ascii_lowercase()
}

impl Attributes {
    /// The attributes of an HTTP request, as kube-apiserver's `RequestInfoFactory`
    /// derives them: resource requests under `/api/v1/…` and `/apis/{g}/{v}/…` (the
    /// discovery paths `/api/v1` and `/apis/{g}/{v}` themselves are non-resource),
    /// `list`/`watch`/`deletecollection` for collections, `watch` for `?watch=true` and the
    /// `/watch/` prefix, the name of a list or watch narrowed by
    /// `fieldSelector=metadata.name=…`, and `namespaces/{name}` in its own namespace.
    pub fn from_request(
        user: UserInfo,
        method: &Method,
        path: &str,
        parsed: Option<&ResourcePath>,
        query: Option<&str>,
    ) -> Self {
        let non_resource = || Self {
            user: user.clone(),
            verb: method_verb(method),
            resource_request: false,
            path: path.to_owned(),
            ..Self::default()
        };
        let Some(p) = parsed.filter(|p| !p.resource.is_empty()) else {
            return non_resource();
        };
        let query = super::request::Query::parse(query);
        let mut name = p.name.clone().unwrap_or_default();
        let watch = p.watch_prefix || query.flag("watch");
        let verb = match *method {
            Method::GET | Method::HEAD if watch => "watch",
            Method::GET | Method::HEAD if name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => "",
        };
        let verb = if verb.is_empty() {
            method_verb(method)
        } else {
            verb.to_owned()
        };
        let field_selector = query.get("fieldSelector").unwrap_or_default().to_owned();
        if name.is_empty()
            && matches!(verb.as_str(), "list" | "watch")
            && let Some(selector) = query.get("fieldSelector")
        {
            // A list or watch of one object by name is authorized as that name.
            for term in selector.split(',') {
                if let Some(v) = term
                    .strip_prefix("metadata.name==")
                    .or_else(|| term.strip_prefix("metadata.name="))
                {
                    name = v.to_owned();
                }
            }
        }
        let namespace = match (&p.namespace, p.resource.as_str(), &p.name) {
            (Some(ns), _, _) => ns.clone(),
            // `/api/v1/namespaces/{name}`: the namespace is the object itself.
            (None, "namespaces", Some(n)) if p.group.is_empty() => n.clone(),
            _ => String::new(),
        };
        Self {
            user,
            verb,
            resource_request: true,
            path: path.to_owned(),
            api_group: p.group.clone(),
            api_version: p.version.clone(),
            namespace,
            resource: p.resource.clone(),
            subresource: p.subresource.clone().unwrap_or_default(),
            name,
            field_selector,
        }
    }

    /// A resource request's attributes (for the RBAC objects' own checks and the
    /// review APIs).
    pub fn resource(
        user: &UserInfo,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        Self {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            namespace: namespace.into(),
            resource: resource.into(),
            name: name.into(),
            ..Self::default()
        }
    }

    /// `User "alice" cannot list resource "pods" in API group "" in the namespace
    /// "default"` — kube-apiserver's `forbiddenMessage`.
    pub fn describe_denial(&self) -> String {
        let user = &self.user.name;
        if !self.resource_request {
            return format!(
                "User \"{user}\" cannot {} path \"{}\"",
                self.verb, self.path
            );
        }
        let resource = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        if self.namespace.is_empty() {
            format!(
                "User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" at the cluster scope",
                self.verb, self.api_group
            )
        } else {
            format!(
                "User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" in the namespace \"{}\"",
                self.verb, self.api_group, self.namespace
            )
        }
    }

    /// The 403 kube-apiserver answers a denied request with (`apierrors.NewForbidden`
    /// over the group-resource and name): `pods is forbidden: …`, `pods "web" is
    /// forbidden: …`, `forbidden: …` for a path; `reason` (the authorizer's) follows
    /// after a colon.
    pub fn forbidden(&self, reason: &str) -> ApiError {
        let mut why = self.describe_denial();
        if !reason.is_empty() {
            why = format!("{why}: {reason}");
        }
        forbidden_error(&self.api_group, &self.resource, &self.name, &why)
    }
}

/// `apierrors.NewForbidden(groupResource, name, err)`.
pub fn forbidden_error(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
    let qualified = if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    };
    let message = match (qualified.is_empty(), name.is_empty()) {
        (true, _) => format!("forbidden: {why}"),
        (false, true) => format!("{qualified} is forbidden: {why}"),
        (false, false) => format!("{qualified} \"{name}\" is forbidden: {why}"),
    };
    let mut err = ApiError::forbidden(message);
    let mut details = serde_json::Map::new();
    if !name.is_empty() {
        details.insert("name".into(), name.into());
    }
    if !group.is_empty() {
        details.insert("group".into(), group.into());
    }
    if !resource.is_empty() {
        details.insert("kind".into(), resource.into());
    }
    err.details = Some(serde_json::Value::Object(details));
    err
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Why (`RBAC: allowed by ClusterRoleBinding …`), or what went wrong while deciding.
    pub reason: String,
}

impl Decision {
    pub fn allow(reason: impl Into<String>) -> Self {
        Self {
            allowed: true,
            reason: reason.into(),
        }
    }

    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            reason: reason.into(),
        }
    }
}

/// The rules a user holds in a namespace (SelfSubjectRulesReview), and whether the
/// list may be incomplete (a binding to a missing role).
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub errors: Vec<String>,
}

/// Authorization decisions.
pub trait Authorizer: Send + Sync + std::fmt::Debug {
    fn authorize(&self, attrs: &Attributes) -> Decision;
    /// Everything `user` may do in `namespace` (cluster-wide rules included).
    fn rules_for(&self, user: &UserInfo, namespace: &str) -> RuleSet;
}

/// `--authorization-mode=AlwaysAllow`: every request is allowed.
#[derive(Debug, Default)]
pub struct AlwaysAllow;

impl Authorizer for AlwaysAllow {
    fn authorize(&self, _attrs: &Attributes) -> Decision {
        Decision::allow("")
    }

    fn rules_for(&self, _user: &UserInfo, _namespace: &str) -> RuleSet {
        RuleSet {
            rules: vec![Rule::all_resources(), Rule::all_non_resource()],
            errors: Vec::new(),
        }
    }
}

/// `--authorization-mode=Node,RBAC` (or `RBAC`): `system:masters` may do everything
/// (kube-apiserver's privileged-group authorizer, ahead of the others); a node's
/// request is asked of the Node authorizer first; then RBAC.
#[derive(Debug)]
pub struct RbacMode(pub Arc<rbac::Rbac>, pub Option<node::NodeAuthorizer>);

impl Authorizer for RbacMode {
    fn authorize(&self, attrs: &Attributes) -> Decision {
        if is_master(&attrs.user) {
            return Decision::allow("");
        }
        let node = self.1.as_ref().and_then(|n| n.authorize(attrs));
        match node {
            Some(Ok(())) => Decision::allow(""),
            Some(Err(why)) => {
                // Upstream's union of authorizers: the reasons of both, in order.
                let mut rbac = self.0.authorize(attrs);
                if !rbac.allowed && !why.is_empty() {
                    rbac.reason = if rbac.reason.is_empty() {
                        why
                    } else {
                        format!("{why}\n{}", rbac.reason)
                    };
                }
                rbac
            }
            None => self.0.authorize(attrs),
        }
    }

    fn rules_for(&self, user: &UserInfo, namespace: &str) -> RuleSet {
        self.0.rules_for(user, namespace)
    }
}

/// Whether the user is in `system:masters`.
pub fn is_master(user: &UserInfo) -> bool {
    user.groups.iter().any(|g| g == MASTERS)
}

/// The authorization modes of `--authorization-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `Node,RBAC`, kube-apiserver's usual setting.
    #[default]
    NodeRbac,
    Rbac,
    AlwaysAllow,
}

impl Mode {
    /// Whether requests without credentials are the anonymous user (authorized like
    /// anyone) rather than refused outside the public paths.
    pub fn anonymous_is_authorized(self) -> bool {
        self != Self::AlwaysAllow
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "Node,RBAC" => Ok(Self::NodeRbac),
            "RBAC" => Ok(Self::Rbac),
            "AlwaysAllow" => Ok(Self::AlwaysAllow),
            other => Err(format!(
                "authorization mode {other:?} is not supported: want Node,RBAC, RBAC or AlwaysAllow"
            )),
        }
    }
}

#[cfg(test)]
mod tests;
