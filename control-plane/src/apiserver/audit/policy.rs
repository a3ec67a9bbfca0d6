//! The audit policy (`audit.k8s.io/v1` `Policy`, kube-apiserver's
//! `--audit-policy-file`): which requests are recorded, at which level, and which
//! stages are left out. Rules are tried in order and the first that matches decides;
//! a request no rule matches is not audited (level `None`). Matching follows
//! kube-apiserver's `policy.Checker` selector by selector (users, userGroups, verbs,
//! resources with `*`, `pods/*`, `*/scale` and resourceNames, namespaces with `""` for
//! cluster-scoped objects, nonResourceURLs with a trailing `*`), and loading follows
//! its `LoadPolicyFromBytes` + validation: unknown fields are warned about, invalid
//! levels, stages and URLs, a wrong apiVersion or kind, or no rules at all refuse.
//!
//! Entry points: [`Policy::load`] / [`Policy::parse`], [`Policy::evaluate`].

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::apiserver::auth::UserInfo;
use crate::apiserver::authz::Attributes;

/// How much of a request is recorded (`audit.k8s.io/v1` `Level`), in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

const LEVELS: &str = r#""None", "Metadata", "Request", "RequestResponse""#;

impl Level {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "None" => Self::None,
            "Metadata" => Self::Metadata,
            "Request" => Self::Request,
            "RequestResponse" => Self::RequestResponse,
            _ => return None,
        })
    }
}

/// When in a request's handling an event is made (`audit.k8s.io/v1` `Stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Stage {
    RequestReceived,
    /// Only for long-running requests (watch, exec, logs…): the response head is sent.
    ResponseStarted,
    ResponseComplete,
    Panic,
}

const STAGES: &str = r#""RequestReceived", "ResponseStarted", "ResponseComplete", "Panic""#;

impl Stage {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RequestReceived" => Self::RequestReceived,
            "ResponseStarted" => Self::ResponseStarted,
            "ResponseComplete" => Self::ResponseComplete,
            "Panic" => Self::Panic,
            _ => return None,
        })
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of stages (the ones a rule omits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages(u8);

impl Stages {
    pub fn contains(self, stage: Stage) -> bool {
        self.0 & stage.bit() != 0
    }

    pub fn insert(&mut self, stage: Stage) {
        self.0 |= stage.bit();
    }

    fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// A policy that cannot be used; the server refuses to start with it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading the audit policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the audit policy {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// What the policy decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    pub omit_stages: Stages,
    pub omit_managed_fields: bool,
}

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    omit_stages: Stages,
    omit_managed_fields: bool,
}

#[derive(Debug, Clone)]
struct Rule {
    level: Level,
    users: Vec<String>,
    user_groups: Vec<String>,
    verbs: Vec<String>,
    resources: Vec<GroupResources>,
    namespaces: Vec<String>,
    non_resource_urls: Vec<String>,
    /// The rule's own stages united with the policy's (as `NewChecker` does).
    omit_stages: Stages,
    omit_managed_fields: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct GroupResources {
    group: String,
    resources: Vec<String>,
    resource_names: Vec<String>,
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawPolicy {
    api_version: String,
    kind: String,
    rules: Vec<RawRule>,
    omit_stages: Vec<String>,
    omit_managed_fields: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawRule {
    level: String,
    users: Vec<String>,
    user_groups: Vec<String>,
    verbs: Vec<String>,
    resources: Vec<GroupResources>,
    namespaces: Vec<String>,
    #[serde(rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    omit_stages: Vec<String>,
    omit_managed_fields: Option<bool>,
}

const POLICY_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "rules",
    "omitStages",
    "omitManagedFields",
];
const RULE_FIELDS: &[&str] = &[
    "level",
    "users",
    "userGroups",
    "verbs",
    "resources",
    "namespaces",
    "nonResourceURLs",
    "omitStages",
    "omitManagedFields",
];
const GROUP_RESOURCE_FIELDS: &[&str] = &["group", "resources", "resourceNames"];

impl Policy {
    /// Reads and validates `path` (YAML or JSON).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|message| PolicyError::Invalid {
            path: path.into(),
            message,
        })
    }

    /// Parses and validates a policy document; the error names the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: Value =
            serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        if !doc.is_object() {
            return Err("not a Policy object".into());
        }
        for unknown in unknown_fields(&doc) {
            // kube-apiserver falls back to lenient decoding and warns.
            tracing::warn!(field = %unknown, "the audit policy has an unknown field; ignored");
        }
        let raw: RawPolicy = serde_json::from_value(doc).map_err(|e| e.to_string())?;
        match (raw.api_version.as_str(), raw.kind.as_str()) {
            ("audit.k8s.io/v1", "Policy") => {}
            ("", _) => return Err("apiVersion: Required value (want audit.k8s.io/v1)".into()),
            ("audit.k8s.io/v1", "") => return Err("kind: Required value (want Policy)".into()),
            ("audit.k8s.io/v1", kind) => {
                return Err(format!("kind: {kind:?} is not Policy"));
            }
            (version, _) => {
                return Err(format!(
                    "apiVersion: {version:?} is not supported (want audit.k8s.io/v1)"
                ));
            }
        }
        let mut errors = Vec::new();
        let omit_stages = stages(&raw.omit_stages, "omitStages", &mut errors);
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let at = format!("rules[{i}]");
            let level = match r.level.as_str() {
                "" => {
                    errors.push(format!("{at}.level: Required value"));
                    Level::None
                }
                other => Level::parse(other).unwrap_or_else(|| {
                    errors.push(format!(
                        "{at}.level: Unsupported value: {other:?}: supported values: {LEVELS}"
                    ));
                    Level::None
                }),
            };
            for (j, url) in r.non_resource_urls.iter().enumerate() {
                if url == "*" {
                    continue;
                }
                if !url.starts_with('/') {
                    errors.push(format!(
                        "{at}.nonResourceURLs[{j}]: Invalid value: {url:?}: non-resource URL rules must begin with a '/' character"
                    ));
                }
                let mut chars = url.chars();
                chars.next_back();
                if chars.as_str().contains('*') {
                    errors.push(format!(
                        "{at}.nonResourceURLs[{j}]: Invalid value: {url:?}: non-resource URL wildcards '*' must be the final character of the rule"
                    ));
                }
            }
            if !r.non_resource_urls.is_empty()
                && (!r.resources.is_empty() || !r.namespaces.is_empty())
            {
                errors.push(format!(
                    "{at}.nonResourceURLs: Invalid value: rules cannot apply to both regular resources and non-resource URLs"
                ));
            }
            for (j, gr) in r.resources.iter().enumerate() {
                if !gr.group.is_empty() && !dns_subdomain(&gr.group) {
                    errors.push(format!(
                        "{at}.resources[{j}].group: Invalid value: {:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                        gr.group
                    ));
                }
                if !gr.resource_names.is_empty() && gr.resources.is_empty() {
                    errors.push(format!(
                        "{at}.resources[{j}].resourceNames: Invalid value: using resourceNames requires at least one resource"
                    ));
                }
            }
            let own = stages(&r.omit_stages, &format!("{at}.omitStages"), &mut errors);
            rules.push(Rule {
                level,
                users: r.users,
                user_groups: r.user_groups,
                verbs: r.verbs,
                resources: r.resources,
                namespaces: r.namespaces,
                non_resource_urls: r.non_resource_urls,
                omit_stages: own.union(omit_stages),
                omit_managed_fields: r.omit_managed_fields,
            });
        }
        if !errors.is_empty() {
            return Err(errors.join(", "));
        }
        if rules.is_empty() {
            return Err("loaded illegal policy with 0 rules".into());
        }
        Ok(Self {
            rules,
            omit_stages,
            omit_managed_fields: raw.omit_managed_fields,
        })
    }

    /// The first rule matching a request by `user` (`None`: not authenticated)
    /// with the authorizer attributes `attrs` (whose own user is not looked at).
    pub fn evaluate(&self, user: Option<&UserInfo>, attrs: &Attributes) -> Decision {
        for rule in &self.rules {
            if rule.matches(user, attrs) {
                return Decision {
                    level: rule.level,
                    omit_stages: rule.omit_stages,
                    omit_managed_fields: rule
                        .omit_managed_fields
                        .unwrap_or(self.omit_managed_fields),
                };
            }
        }
        Decision {
            level: Level::None,
            omit_stages: self.omit_stages,
            omit_managed_fields: self.omit_managed_fields,
        }
    }
}

fn stages(names: &[String], at: &str, errors: &mut Vec<String>) -> Stages {
    let mut set = Stages::default();
    for (i, name) in names.iter().enumerate() {
        match Stage::parse(name) {
            Some(stage) => set.insert(stage),
            None => errors.push(format!(
                "{at}[{i}]: Unsupported value: {name:?}: supported values: {STAGES}"
            )),
        }
    }
    set
}

fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The fields of the document the Policy type does not have (`rules[0].verb`).
fn unknown_fields(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |obj: &Value, known: &[&str], at: &str| {
        if let Some(map) = obj.as_object() {
            for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
                out.push(format!("{at}{key}"));
            }
        }
    };
    check(doc, POLICY_FIELDS, "");
    for (i, rule) in doc
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        check(rule, RULE_FIELDS, &format!("rules[{i}]."));
        for (j, gr) in rule
            .get("resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            check(
                gr,
                GROUP_RESOURCE_FIELDS,
                &format!("rules[{i}].resources[{j}]."),
            );
        }
    }
    out
}

impl Rule {
    /// kube-apiserver's `ruleMatches`.
    fn matches(&self, user: Option<&UserInfo>, attrs: &Attributes) -> bool {
        if !self.users.is_empty() && !user.is_some_and(|u| self.users.contains(&u.name)) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !user.is_some_and(|u| u.groups.iter().any(|g| self.user_groups.contains(g)))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&attrs.verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(attrs);
        }
        if !self.non_resource_urls.is_empty() {
            return !attrs.resource_request
                && self
                    .non_resource_urls
                    .iter()
                    .any(|spec| path_matches(&attrs.path, spec));
        }
        true
    }

    fn matches_resource(&self, attrs: &Attributes) -> bool {
        if !attrs.resource_request {
            return false;
        }
        // Cluster-scoped requests have the namespace "".
        if !self.namespaces.is_empty() && !self.namespaces.contains(&attrs.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let (resource, sub) = (attrs.resource.as_str(), attrs.subresource.as_str());
        let combined = if sub.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}/{sub}")
        };
        self.resources
            .iter()
            .filter(|gr| gr.group == attrs.api_group)
            .any(|gr| {
                gr.resources.is_empty()
                    || gr.resources.iter().any(|res| {
                        (gr.resource_names.is_empty() || gr.resource_names.contains(&attrs.name))
                            && (*res == combined
                                || res == "*"
                                || (!sub.is_empty() && res.strip_prefix("*/") == Some(sub))
                                || res.strip_suffix("/*") == Some(resource))
                    })
            })
    }
}

/// `*` (everything), an exact path, or a prefix ending in `*`.
fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*"
        || spec == path
        || spec
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix.trim_end_matches('*')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..UserInfo::default()
        }
    }

    /// The attributes of `method path?query`, as the apiserver derives them.
    fn attrs(method: Method, path: &str, query: Option<&str>) -> Attributes {
        let parsed = crate::apiserver::request::parse_path(path);
        Attributes::from_request(UserInfo::default(), &method, path, parsed.as_ref(), query)
    }

    fn level(policy: &Policy, who: Option<&UserInfo>, a: &Attributes) -> Level {
        policy.evaluate(who, a).level
    }

    fn policy(rules: &str) -> Policy {
        Policy::parse(&format!(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n{rules}"
        ))
        .unwrap_or_else(|e| panic!("policy parses: {e}"))
    }

    #[test]
    fn the_first_matching_rule_wins_and_no_match_is_none() {
        let p = policy(
            "- level: None\n  resources: [{group: \"\", resources: [events]}]\n\
             - level: Metadata\n  resources: [{group: \"\", resources: [secrets, events]}]\n\
             - level: RequestResponse\n  resources: [{group: \"\", resources: [configmaps]}]\n",
        );
        let alice = user("alice", &[]);
        let get = |p: &str| attrs(Method::GET, p, None);
        assert_eq!(
            level(&p, Some(&alice), &get("/api/v1/namespaces/d/events/e")),
            Level::None
        );
        assert_eq!(
            level(&p, Some(&alice), &get("/api/v1/namespaces/d/secrets/s")),
            Level::Metadata
        );
        assert_eq!(
            level(&p, Some(&alice), &get("/api/v1/namespaces/d/configmaps")),
            Level::RequestResponse
        );
        assert_eq!(
            level(&p, Some(&alice), &get("/api/v1/namespaces/d/pods")),
            Level::None
        );
        assert_eq!(
            level(&p, Some(&alice), &get("/apis/apps/v1/deployments")),
            Level::None
        );
    }

    #[test]
    fn users_groups_and_verbs_select() {
        let p = policy(
            "- level: None\n  users: [\"system:kube-scheduler\"]\n\
             - level: Request\n  userGroups: [admins]\n  verbs: [create, delete]\n\
             - level: Metadata\n  verbs: [get]\n",
        );
        let pods = attrs(Method::GET, "/api/v1/namespaces/d/pods/p", None);
        let create = attrs(Method::POST, "/api/v1/namespaces/d/pods", None);
        let list = attrs(Method::GET, "/api/v1/namespaces/d/pods", None);
        let sched = user("system:kube-scheduler", &["admins"]);
        let admin = user("ann", &["dev", "admins"]);
        let dev = user("dev", &["dev"]);
        assert_eq!(level(&p, Some(&sched), &pods), Level::None, "users first");
        assert_eq!(level(&p, Some(&admin), &create), Level::Request);
        assert_eq!(level(&p, Some(&admin), &pods), Level::Metadata, "verb get");
        assert_eq!(level(&p, Some(&dev), &create), Level::None, "not in admins");
        assert_eq!(level(&p, Some(&dev), &list), Level::None, "list is not get");
        // An unauthenticated request matches no users/userGroups rule.
        let p = policy(
            "- level: Metadata\n  userGroups: [\"system:unauthenticated\"]\n- level: Request\n",
        );
        assert_eq!(level(&p, None, &pods), Level::Request);
        let anon = crate::apiserver::auth::anonymous();
        assert_eq!(level(&p, Some(&anon), &pods), Level::Metadata);
    }

    #[test]
    fn resources_subresources_wildcards_and_names() {
        let p = policy(
            "- level: Request\n  resources: [{group: \"\", resources: [\"pods/log\"]}]\n\
             - level: RequestResponse\n  resources: [{group: apps, resources: [\"*/scale\"]}]\n\
             - level: Metadata\n  resources: [{group: \"\", resources: [\"pods/*\"]}]\n\
             - level: None\n  resources: [{group: \"\", resources: [configmaps], resourceNames: [noisy]}]\n\
             - level: Metadata\n  resources: [{group: \"\", resources: [\"*\"]}]\n",
        );
        let a = user("a", &[]);
        let get = |p: &str| attrs(Method::GET, p, None);
        assert_eq!(
            level(&p, Some(&a), &get("/api/v1/namespaces/d/pods/x/log")),
            Level::Request
        );
        assert_eq!(
            level(
                &p,
                Some(&a),
                &get("/apis/apps/v1/namespaces/d/deployments/x/scale")
            ),
            Level::RequestResponse
        );
        assert_eq!(
            level(
                &p,
                Some(&a),
                &get("/apis/apps/v1/namespaces/d/deployments/x")
            ),
            Level::None,
            "*/scale is only the subresource; `*` is the core group's"
        );
        assert_eq!(
            level(&p, Some(&a), &get("/api/v1/namespaces/d/pods/x/exec")),
            Level::Metadata
        );
        assert_eq!(
            level(&p, Some(&a), &get("/api/v1/namespaces/d/pods/x")),
            Level::Metadata,
            "pods/* covers pods"
        );
        assert_eq!(
            level(&p, Some(&a), &get("/api/v1/namespaces/d/configmaps/noisy")),
            Level::None
        );
        assert_eq!(
            level(&p, Some(&a), &get("/api/v1/namespaces/d/configmaps/other")),
            Level::Metadata
        );
        // A list narrowed to one name by fieldSelector is that name, as upstream.
        let narrowed = attrs(
            Method::GET,
            "/api/v1/namespaces/d/configmaps",
            Some("fieldSelector=metadata.name%3Dnoisy"),
        );
        assert_eq!(level(&p, Some(&a), &narrowed), Level::None);
        // An empty resources list is every resource of the group.
        let p = policy("- level: Metadata\n  resources: [{group: apps}]\n");
        assert_eq!(
            level(&p, Some(&a), &get("/apis/apps/v1/daemonsets")),
            Level::Metadata
        );
        assert_eq!(level(&p, Some(&a), &get("/api/v1/pods")), Level::None);
    }

    #[test]
    fn namespaces_with_empty_for_cluster_scope() {
        let p = policy(
            "- level: Metadata\n  namespaces: [\"\"]\n\
             - level: Request\n  namespaces: [kube-system]\n",
        );
        let a = user("a", &[]);
        let get = |p: &str| attrs(Method::GET, p, None);
        assert_eq!(
            level(&p, Some(&a), &get("/api/v1/nodes/n1")),
            Level::Metadata
        );
        assert_eq!(
            level(&p, Some(&a), &get("/api/v1/namespaces/kube-system/pods")),
            Level::Request
        );
        assert_eq!(
            level(&p, Some(&a), &get("/api/v1/namespaces/default/pods")),
            Level::None
        );
        assert_eq!(
            level(&p, Some(&a), &get("/healthz")),
            Level::None,
            "namespaces never match a URL"
        );
    }

    #[test]
    fn non_resource_urls_exact_and_prefix() {
        let p = policy(
            "- level: None\n  nonResourceURLs: [\"/healthz*\", /version]\n\
             - level: Metadata\n  nonResourceURLs: [\"/api*\"]\n\
             - level: Request\n",
        );
        let a = user("a", &[]);
        let get = |p: &str| attrs(Method::GET, p, None);
        assert_eq!(level(&p, Some(&a), &get("/healthz")), Level::None);
        assert_eq!(level(&p, Some(&a), &get("/healthz/ping")), Level::None);
        assert_eq!(level(&p, Some(&a), &get("/version")), Level::None);
        assert_eq!(
            level(&p, Some(&a), &get("/version/x")),
            Level::Request,
            "exact only"
        );
        assert_eq!(level(&p, Some(&a), &get("/apis")), Level::Metadata);
        assert_eq!(
            level(&p, Some(&a), &get("/api/v1")),
            Level::Metadata,
            "discovery is a URL"
        );
        assert_eq!(
            level(&p, Some(&a), &get("/api/v1/pods")),
            Level::Request,
            "a resource request never matches nonResourceURLs"
        );
        assert!(path_matches("/anything", "*"));
    }

    #[test]
    fn omit_stages_unite_policy_and_rule() {
        let p = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n\
             omitManagedFields: true\nrules:\n\
             - level: Metadata\n  verbs: [watch]\n  omitStages: [ResponseStarted]\n  omitManagedFields: false\n\
             - level: Metadata\n",
        )
        .expect("parses");
        let a = user("a", &[]);
        let watch = p.evaluate(
            Some(&a),
            &attrs(Method::GET, "/api/v1/pods", Some("watch=true")),
        );
        assert!(watch.omit_stages.contains(Stage::RequestReceived));
        assert!(watch.omit_stages.contains(Stage::ResponseStarted));
        assert!(!watch.omit_stages.contains(Stage::ResponseComplete));
        assert!(!watch.omit_managed_fields, "the rule's false wins");
        let get = p.evaluate(Some(&a), &attrs(Method::GET, "/api/v1/pods/x", None));
        assert!(get.omit_stages.contains(Stage::RequestReceived));
        assert!(!get.omit_stages.contains(Stage::ResponseStarted));
        assert!(get.omit_managed_fields, "the policy's default");
    }

    #[test]
    fn bad_policies_are_refused_naming_the_problem() {
        let bad = |text: &str, want: &str| {
            let err = Policy::parse(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err} (want {want:?})");
        };
        let head = "apiVersion: audit.k8s.io/v1\nkind: Policy\n";
        bad(
            &format!("{head}rules:\n- level: Verbose\n"),
            "rules[0].level: Unsupported value: \"Verbose\"",
        );
        bad(
            &format!("{head}rules:\n- users: [a]\n"),
            "rules[0].level: Required value",
        );
        bad(&format!("{head}rules: []\n"), "0 rules");
        bad(
            &format!("{head}omitStages: [Sometimes]\nrules:\n- level: None\n"),
            "omitStages[0]: Unsupported value",
        );
        bad(
            "apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules:\n- level: None\n",
            "apiVersion: \"audit.k8s.io/v1beta1\" is not supported",
        );
        bad(
            "apiVersion: audit.k8s.io/v1\nkind: Pod\nrules:\n- level: None\n",
            "kind: \"Pod\"",
        );
        bad(
            &format!("{head}rules:\n- level: None\n  nonResourceURLs: [healthz]\n"),
            "must begin with a '/'",
        );
        bad(
            &format!("{head}rules:\n- level: None\n  nonResourceURLs: [\"/a*/b\"]\n"),
            "must be the final character",
        );
        bad(
            &format!("{head}rules:\n- level: None\n  nonResourceURLs: [\"/*é\"]\n"),
            "must be the final character",
        );
        bad(
            &format!("{head}rules:\n- level: None\n  nonResourceURLs: [/a]\n  namespaces: [x]\n"),
            "both regular resources and non-resource URLs",
        );
        bad(
            &format!(
                "{head}rules:\n- level: None\n  resources: [{{group: \"\", resourceNames: [x]}}]\n"
            ),
            "using resourceNames requires at least one resource",
        );
        bad(
            &format!("{head}rules:\n- level: None\n  verbs: get\n"),
            "invalid type",
        );
        bad("[1, 2]", "not a Policy");
        // Unknown fields are only warned about, as upstream's lenient fallback.
        Policy::parse(&format!("{head}rules:\n- level: None\n  verb: [get]\n")).expect("lenient");
    }
}
