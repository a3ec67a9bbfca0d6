//! Which requests a policy or binding applies to: its `matchResources`
//! (`k8s.io/apiserver/pkg/admission/plugin/policy/matching`) — the namespace selector
//! (against the labels of the request's namespace, or of a Namespace being written),
//! the object selector (the new or the old object), `excludeResourceRules`, then
//! `resourceRules` (with `resourceNames`; no rules match everything) and, under
//! `matchPolicy: Equivalent`, the same resource in its other served versions. The
//! rule and selector predicates are the admission webhooks' ([`rules`]), as upstream
//! shares them.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, RuleWithOperations,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use crate::apiserver::admission::webhook::rules::{self, Operation, Target};
use crate::apiserver::status::ApiError;

/// A request as policies are matched against it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub operation: Operation,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub name: &'a str,
    /// `""` for cluster-scoped requests (and a Namespace's create).
    pub namespace: &'a str,
    pub object: Option<&'a Value>,
    pub old: Option<&'a Value>,
    /// Other served versions of the resource (`matchPolicy: Equivalent`).
    pub equivalent_versions: &'a [String],
}

impl Request<'_> {
    fn target<'s>(&'s self, version: &'s str) -> Target<'s> {
        Target {
            operation: self.operation,
            group: self.group,
            version: self.version_or(version),
            resource: self.resource,
            subresource: self.subresource,
            namespace: self.namespace,
        }
    }

    fn version_or<'s>(&'s self, version: &'s str) -> &'s str {
        if version.is_empty() {
            self.version
        } else {
            version
        }
    }

    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.resource == "namespaces"
    }
}

#[derive(Debug)]
struct NamedRule {
    rule: RuleWithOperations,
    names: Vec<String>,
}

impl NamedRule {
    fn from(r: &NamedRuleWithOperations) -> Self {
        Self {
            rule: RuleWithOperations {
                api_groups: r.api_groups.clone(),
                api_versions: r.api_versions.clone(),
                operations: r.operations.clone(),
                resources: r.resources.clone(),
                scope: r.scope.clone(),
            },
            names: r.resource_names.clone().unwrap_or_default(),
        }
    }

    fn matches(&self, req: &Request, version: &str) -> bool {
        rules::rule_matches(&self.rule, &req.target(version))
            && (self.names.is_empty() || self.names.iter().any(|n| n == req.name))
    }
}

/// A parsed `matchResources`.
#[derive(Debug)]
pub struct Constraints {
    namespace_selector: Option<LabelSelector>,
    object_selector: Option<LabelSelector>,
    resource_rules: Vec<NamedRule>,
    exclude_rules: Vec<NamedRule>,
    equivalent: bool,
}

impl Constraints {
    pub fn from(m: &MatchResources) -> Self {
        let named = |r: &Option<Vec<NamedRuleWithOperations>>| {
            r.iter().flatten().map(NamedRule::from).collect()
        };
        Self {
            namespace_selector: m.namespace_selector.clone(),
            object_selector: m.object_selector.clone(),
            resource_rules: named(&m.resource_rules),
            exclude_rules: named(&m.exclude_resource_rules),
            // Defaulted to Equivalent; only an explicit Exact turns it off.
            equivalent: m.match_policy.as_deref() != Some("Exact"),
        }
    }

    /// Whether any of `rules` matches the request, in its own version or (Equivalent)
    /// in another served version of the resource.
    fn any_rule(&self, rules: &[NamedRule], req: &Request) -> bool {
        if rules.iter().any(|r| r.matches(req, "")) {
            return true;
        }
        self.equivalent
            && req
                .equivalent_versions
                .iter()
                .any(|v| rules.iter().any(|r| r.matches(req, v)))
    }

    /// `Matcher.Matches`. `namespace_labels` is asked only when a namespace selector
    /// must be evaluated; its error (a missing namespace) counts only if everything
    /// else matches, as upstream defers it.
    pub fn matches(
        &self,
        req: &Request,
        namespace_labels: &dyn Fn() -> Result<BTreeMap<String, String>, ApiError>,
    ) -> Result<bool, ApiError> {
        let namespace = self.namespace_match(req, namespace_labels);
        if matches!(namespace, Ok(false)) {
            return Ok(false);
        }
        if !rules::object_selector_matches(self.object_selector.as_ref(), req.object, req.old) {
            return Ok(false);
        }
        if self.any_rule(&self.exclude_rules, req) {
            return Ok(false);
        }
        if !self.resource_rules.is_empty() && !self.any_rule(&self.resource_rules, req) {
            return Ok(false);
        }
        namespace
    }

    fn namespace_match(
        &self,
        req: &Request,
        namespace_labels: &dyn Fn() -> Result<BTreeMap<String, String>, ApiError>,
    ) -> Result<bool, ApiError> {
        // Cluster-scoped resources other than namespaces are never exempted.
        if req.namespace.is_empty() && !req.is_namespace() {
            return Ok(true);
        }
        let Some(selector) = self
            .namespace_selector
            .as_ref()
            .filter(|s| !rules::selector_is_empty(Some(s)))
        else {
            return Ok(true);
        };
        Ok(rules::selector_matches(selector, &namespace_labels()?))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn constraints(m: Value) -> Constraints {
        Constraints::from(&serde_json::from_value(m).expect("matchResources"))
    }

    fn request<'a>(op: Operation, resource: &'a str, ns: &'a str, obj: &'a Value) -> Request<'a> {
        Request {
            operation: op,
            group: "apps",
            version: "v1",
            resource,
            subresource: "",
            name: "web",
            namespace: ns,
            object: Some(obj),
            old: None,
            equivalent_versions: &[],
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn rules_exclusions_names_and_selectors() {
        let obj = json!({"metadata": {"name": "web", "labels": {"tier": "front"}}});
        let c = constraints(json!({
            "resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}],
            "excludeResourceRules": [{"apiGroups": ["apps"], "apiVersions": ["*"],
                "operations": ["*"], "resources": ["deployments"], "resourceNames": ["legacy"]}],
            "namespaceSelector": {"matchLabels": {"env": "prod"}},
            "objectSelector": {},
        }));
        let prod = || Ok(labels(&[("env", "prod")]));
        let dev = || Ok(labels(&[("env", "dev")]));
        let req = request(Operation::Create, "deployments", "team", &obj);
        assert!(c.matches(&req, &prod).expect("match"));
        assert!(!c.matches(&req, &dev).expect("no match"));
        assert!(
            !c.matches(
                &request(Operation::Delete, "deployments", "team", &obj),
                &prod
            )
            .expect("op")
        );
        assert!(
            !c.matches(
                &request(Operation::Create, "replicasets", "team", &obj),
                &prod
            )
            .expect("resource")
        );
        let legacy = Request {
            name: "legacy",
            ..req
        };
        assert!(!c.matches(&legacy, &prod).expect("excluded by name"));
        // A namespace that cannot be read fails only a request that otherwise matches.
        let missing = || Err(ApiError::not_found("", "namespaces", "team"));
        assert!(c.matches(&req, &missing).is_err());
        assert!(
            !c.matches(
                &request(Operation::Create, "replicasets", "team", &obj),
                &missing
            )
            .expect("no rule")
        );
    }

    #[test]
    fn object_selector_and_empty_rules() {
        let obj = json!({"metadata": {"labels": {"tier": "front"}}});
        let other = json!({"metadata": {"labels": {"tier": "back"}}});
        let c = constraints(json!({"objectSelector": {"matchLabels": {"tier": "front"}}}));
        let none = || Ok(BTreeMap::new());
        assert!(
            c.matches(&request(Operation::Update, "anything", "ns", &obj), &none)
                .expect("front")
        );
        assert!(
            !c.matches(&request(Operation::Update, "anything", "ns", &other), &none)
                .expect("back")
        );
        let old_front = Request {
            old: Some(&obj),
            ..request(Operation::Update, "x", "ns", &other)
        };
        assert!(
            c.matches(&old_front, &none)
                .expect("old object's labels count")
        );
    }

    #[test]
    fn equivalent_versions() {
        let obj = json!({});
        let rule = |policy: &str| {
            constraints(
                json!({"matchPolicy": policy, "resourceRules": [{"apiGroups": ["apps"],
                "apiVersions": ["v1beta1"], "operations": ["*"], "resources": ["deployments"]}]}),
            )
        };
        let versions = ["v1beta1".to_owned()];
        let req = Request {
            equivalent_versions: &versions,
            ..request(Operation::Create, "deployments", "ns", &obj)
        };
        let none = || Ok(BTreeMap::new());
        assert!(rule("Equivalent").matches(&req, &none).expect("equivalent"));
        assert!(!rule("Exact").matches(&req, &none).expect("exact"));
    }
}
