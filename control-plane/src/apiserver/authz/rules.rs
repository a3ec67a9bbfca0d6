//! RBAC policy rules and what is done with them: matching a request
//! (`rbac.RuleAllows`), one set of rules covering another (`validation.Covers`, for
//! the escalation check), and the compact form kube-apiserver names missing
//! permissions in (`BreakdownRule`, `CompactRules`, `CompactString`).

use serde::{Deserialize, Serialize};

use super::Attributes;

/// One `rbac.authorization.k8s.io/v1` PolicyRule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub verbs: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub api_groups: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub resources: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub resource_names: Vec<String>,
    #[serde(
        rename = "nonResourceURLs",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

fn has(list: &[String], item: &str) -> bool {
    list.iter().any(|s| s == item)
}

fn has_all(list: &[String], items: &[String]) -> bool {
    items.iter().all(|i| has(list, i))
}

impl Rule {
    /// `apiGroups: ["*"], resources: ["*"], verbs: ["*"]`.
    pub fn all_resources() -> Self {
        Self {
            verbs: vec!["*".into()],
            api_groups: vec!["*".into()],
            resources: vec!["*".into()],
            ..Self::default()
        }
    }

    /// `nonResourceURLs: ["*"], verbs: ["*"]`.
    pub fn all_non_resource() -> Self {
        Self {
            verbs: vec!["*".into()],
            non_resource_urls: vec!["*".into()],
            ..Self::default()
        }
    }

    /// The rules of an object's `rules` array (a Role's or ClusterRole's); entries
    /// that are not rules are skipped (validation rejects them on write).
    pub fn list(value: Option<&serde_json::Value>) -> Vec<Rule> {
        value
            .and_then(serde_json::Value::as_array)
            .map(|rules| {
                rules
                    .iter()
                    .filter_map(|r| serde_json::from_value(r.clone()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    /// Whether this rule allows the request (`rbac.RuleAllows`).
    pub fn allows(&self, attrs: &Attributes) -> bool {
        if !self.verb_matches(&attrs.verb) {
            return false;
        }
        if !attrs.resource_request {
            return self.non_resource_url_matches(&attrs.path);
        }
        self.api_groups
            .iter()
            .any(|g| g == "*" || *g == attrs.api_group)
            && self.resource_matches(&attrs.resource, &attrs.subresource)
            && (self.resource_names.is_empty() || has(&self.resource_names, &attrs.name))
    }

    /// `pods`, `pods/log`, `*`, and `*/scale` for any resource's scale subresource.
    fn resource_matches(&self, resource: &str, subresource: &str) -> bool {
        self.resources.iter().any(|r| {
            if r == "*" {
                return true;
            }
            if subresource.is_empty() {
                return r == resource;
            }
            r.strip_prefix(resource)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|s| s == subresource)
                || r.strip_prefix("*/").is_some_and(|s| s == subresource)
        })
    }

    /// An exact path, `*`, or a prefix ending in `*`.
    fn non_resource_url_matches(&self, path: &str) -> bool {
        self.non_resource_urls.iter().any(|u| {
            u == "*"
                || u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        })
    }

    /// Whether this (owner's) rule covers all of `sub` (`validation.ruleCovers`).
    fn covers(&self, sub: &Rule) -> bool {
        let verbs = has(&self.verbs, "*") || has_all(&self.verbs, &sub.verbs);
        let groups = has(&self.api_groups, "*") || has_all(&self.api_groups, &sub.api_groups);
        let resources = resources_cover(&self.resources, &sub.resources);
        let urls = sub
            .non_resource_urls
            .iter()
            .all(|u| self.non_resource_urls.iter().any(|o| url_covers(o, u)));
        let names = if sub.resource_names.is_empty() {
            self.resource_names.is_empty()
        } else {
            self.resource_names.is_empty() || has_all(&self.resource_names, &sub.resource_names)
        };
        verbs && groups && resources && urls && names
    }

    /// One rule per (group, resource, verb[, name]) and per (URL, verb)
    /// (`validation.BreakdownRule`).
    fn breakdown(&self) -> Vec<Rule> {
        let mut out = Vec::new();
        for group in &self.api_groups {
            for resource in &self.resources {
                for verb in &self.verbs {
                    let one = |names: Vec<String>| Rule {
                        verbs: vec![verb.clone()],
                        api_groups: vec![group.clone()],
                        resources: vec![resource.clone()],
                        resource_names: names,
                        non_resource_urls: Vec::new(),
                    };
                    if self.resource_names.is_empty() {
                        out.push(one(Vec::new()));
                    } else {
                        out.extend(self.resource_names.iter().map(|n| one(vec![n.clone()])));
                    }
                }
            }
        }
        for url in &self.non_resource_urls {
            for verb in &self.verbs {
                out.push(Rule {
                    verbs: vec![verb.clone()],
                    non_resource_urls: vec![url.clone()],
                    ..Rule::default()
                });
            }
        }
        out
    }

    /// `{APIGroups:[""], Resources:["pods"], Verbs:["get" "list"]}` — Go's `%q` of each
    /// non-empty list (`rbacv1helpers.CompactString`).
    pub fn compact_string(&self) -> String {
        let q = |list: &[String]| {
            let items: Vec<String> = list.iter().map(|s| go_quote(s)).collect();
            format!("[{}]", items.join(" "))
        };
        let mut parts = Vec::new();
        for (label, list) in [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.non_resource_urls),
            ("ResourceNames", &self.resource_names),
            ("Verbs", &self.verbs),
        ] {
            if !list.is_empty() {
                parts.push(format!("{label}:{}", q(list)));
            }
        }
        format!("{{{}}}", parts.join(", "))
    }
}

/// Go's `%q` of a string (the names RBAC deals in are printable ASCII; anything else
/// is escaped as JSON would, which agrees with Go for the common escapes).
pub fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// `validation.resourceCoversAll`: `*`, exact names, and `*/sub` for any `x/sub`.
fn resources_cover(owner: &[String], wanted: &[String]) -> bool {
    if has(owner, "*") {
        return true;
    }
    wanted.iter().all(|w| {
        has(owner, w)
            || w.split_once('/')
                .is_some_and(|(_, sub)| has(owner, &format!("*/{sub}")))
    })
}

/// `validation.nonResourceURLCovers`.
fn url_covers(owner: &str, wanted: &str) -> bool {
    owner == wanted
        || owner
            .strip_suffix('*')
            .is_some_and(|prefix| wanted.starts_with(prefix))
}

/// The parts of `wanted` no rule of `owner` covers, compacted and in kube-apiserver's
/// order (sorted compact strings); empty when `owner` covers everything.
pub fn uncovered(owner: &[Rule], wanted: &[Rule]) -> Vec<String> {
    let missing: Vec<Rule> = wanted
        .iter()
        .flat_map(Rule::breakdown)
        .filter(|sub| !owner.iter().any(|o| o.covers(sub)))
        .collect();
    let mut lines: Vec<String> = compact(missing).iter().map(Rule::compact_string).collect();
    lines.sort();
    lines.dedup();
    lines
}

/// Merges rules for the same (group, resource[, name]) into one with all their verbs
/// (`validation.CompactRules`).
fn compact(rules: Vec<Rule>) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    let mut index: std::collections::HashMap<(String, String, Option<String>), usize> =
        std::collections::HashMap::new();
    for rule in rules {
        let simple = rule.non_resource_urls.is_empty()
            && rule.resource_names.len() <= 1
            && rule.api_groups.len() == 1
            && rule.resources.len() == 1;
        if !simple {
            out.push(rule);
            continue;
        }
        let key = (
            rule.api_groups[0].clone(),
            rule.resources[0].clone(),
            rule.resource_names.first().cloned(),
        );
        match index.get(&key) {
            Some(&i) => out[i].verbs.extend(rule.verbs),
            None => {
                index.insert(key, out.len());
                out.push(rule);
            }
        }
    }
    out
}
