//! API Priority and Fairness objects (`flowcontrol.apiserver.k8s.io/v1`): FlowSchema and
//! PriorityLevelConfiguration, served with kube-apiserver's defaults
//! (`pkg/apis/flowcontrol/v1/defaults.go`), validation
//! (`pkg/apis/flowcontrol/validation`, with its messages) and printer columns, and
//! the mandatory and suggested objects kube-apiserver creates at start
//! ([`bootstrap`]).
//!
//! berth serves these objects but does not schedule requests by them: its limiter is
//! "APF-lite" — kube-apiserver's max-in-flight filter (`--max-requests-inflight`,
//! `--max-mutating-requests-inflight`, 429 with `Retry-After`, long-running requests and
//! `system:masters` exempt; see `apiserver::InFlight`). Charts and tools that create
//! or read FlowSchemas work; the objects do not change how requests are queued.
//!
//! Entry points: [`defaults`], [`validate`], [`columns`]/[`cells`], [`bootstrap::run`].

pub mod bootstrap;

use serde_json::{Value, json};

use super::admission::validation;
use super::object;
use super::status::Cause;

pub const GROUP: &str = "flowcontrol.apiserver.k8s.io";
pub const EXEMPT: &str = "exempt";
pub const CATCH_ALL: &str = "catch-all";

/// `FlowSchemaDefaultMatchingPrecedence`.
const DEFAULT_MATCHING_PRECEDENCE: i64 = 1000;
/// `FlowSchemaMaxMatchingPrecedence`.
const MAX_MATCHING_PRECEDENCE: i64 = 10000;
/// `PriorityLevelConfigurationDefault*`.
const DEFAULT_NOMINAL_CONCURRENCY_SHARES: i64 = 30;
const DEFAULT_QUEUES: i64 = 64;
const DEFAULT_HAND_SIZE: i64 = 8;
const DEFAULT_QUEUE_LENGTH_LIMIT: i64 = 50;
const MAX_QUEUES: i64 = 10_000_000;
/// `shufflesharding.MaxHashBits`.
const MAX_HASH_BITS: f64 = 60.0;

fn set_if_unset(map: &mut serde_json::Map<String, Value>, key: &str, value: i64, zero_unset: bool) {
    let unset = match map.get(key) {
        None | Some(Value::Null) => true,
        Some(v) => zero_unset && v.as_i64() == Some(0),
    };
    if unset {
        map.insert(key.into(), json!(value));
    }
}

/// The v1 defaults of `kind` (FlowSchema or PriorityLevelConfiguration).
pub fn defaults(kind: &str, obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    match kind {
        "FlowSchema" => set_if_unset(
            spec,
            "matchingPrecedence",
            DEFAULT_MATCHING_PRECEDENCE,
            true,
        ),
        "PriorityLevelConfiguration" => {
            if let Some(exempt) = spec.get_mut("exempt").and_then(Value::as_object_mut) {
                set_if_unset(exempt, "nominalConcurrencyShares", 0, false);
                set_if_unset(exempt, "lendablePercent", 0, false);
            }
            if let Some(limited) = spec.get_mut("limited").and_then(Value::as_object_mut) {
                set_if_unset(
                    limited,
                    "nominalConcurrencyShares",
                    DEFAULT_NOMINAL_CONCURRENCY_SHARES,
                    false,
                );
                set_if_unset(limited, "lendablePercent", 0, false);
                if let Some(queuing) = limited
                    .get_mut("limitResponse")
                    .and_then(|r| r.get_mut("queuing"))
                    .and_then(Value::as_object_mut)
                {
                    set_if_unset(queuing, "handSize", DEFAULT_HAND_SIZE, true);
                    set_if_unset(queuing, "queues", DEFAULT_QUEUES, true);
                    set_if_unset(
                        queuing,
                        "queueLengthLimit",
                        DEFAULT_QUEUE_LENGTH_LIMIT,
                        true,
                    );
                }
            }
        }
        _ => {}
    }
}

fn strs(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Go's `%#v` of a `[]string`, as `field.Invalid` prints one.
fn go_strings(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

fn required(field: String, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        field,
        message: format!("Required value: {detail}"),
    }
}

const SUPPORTED_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "proxy",
    "update",
    "watch",
];

/// A list that must not be empty and may hold `*` only alone.
fn wildcard_list(
    list: &[&str],
    path: &str,
    empty: &str,
    others: &str,
    causes: &mut Vec<Cause>,
) -> bool {
    if list.is_empty() {
        causes.push(required(path.to_owned(), empty));
        return false;
    }
    if list.len() > 1 && list.contains(&"*") {
        causes.push(Cause::invalid(
            path,
            format!(
                "Invalid value: {}: if '*' is present, must not specify other {others}",
                go_strings(list)
            ),
        ));
        return false;
    }
    true
}

fn verbs(rule: &Value, path: &str, causes: &mut Vec<Cause>) {
    let verbs = strs(rule.get("verbs"));
    let path = format!("{path}.verbs");
    if wildcard_list(
        &verbs,
        &path,
        "verbs must contain at least one value",
        "verbs",
        causes,
    ) && !verbs.contains(&"*")
        && verbs.iter().any(|v| !SUPPORTED_VERBS.contains(v))
    {
        let supported: Vec<String> = SUPPORTED_VERBS.iter().map(|s| format!("\"{s}\"")).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: path,
            message: format!(
                "Unsupported value: {}: supported values: {}",
                go_strings(&verbs),
                supported.join(", ")
            ),
        });
    }
}

/// `ValidateNonResourceURLPath`.
fn url_path_error(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("must not be empty");
    }
    if path == "/" {
        return None;
    }
    if !path.starts_with('/') {
        return Some("must start with slash");
    }
    if path.contains(' ') {
        return Some("must not contain white-space");
    }
    if path.contains("//") {
        return Some("must not contain double slash");
    }
    let stars = path.matches('*').count();
    if stars > 1 || (stars == 1 && !path.ends_with("/*")) {
        return Some("wildcard can only do suffix matching");
    }
    None
}

fn subject(s: &Value, path: &str, causes: &mut Vec<Cause>) {
    let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
    let present = |k: &str| s.get(k).is_some_and(|v| !v.is_null());
    let name = |k: &str| {
        s.pointer(&format!("/{k}/name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let forbid = |causes: &mut Vec<Cause>, field: &str, kind: &str| {
        if present(field) {
            causes.push(Cause::forbidden(
                format!("{path}.{field}"),
                format!("Forbidden: {field} is forbidden when subject kind is not '{kind}'"),
            ));
        }
    };
    match kind {
        "ServiceAccount" => {
            if !present("serviceAccount") {
                causes.push(required(
                    format!("{path}.serviceAccount"),
                    "serviceAccount is required when subject kind is 'ServiceAccount'",
                ));
            } else {
                let n = name("serviceAccount");
                if n.is_empty() {
                    causes.push(Cause::required(format!("{path}.serviceAccount.name")));
                } else if n != "*" && !validation::is_dns_subdomain(n) {
                    causes.push(Cause::invalid(
                        format!("{path}.serviceAccount.name"),
                        validation::dns_subdomain_msg(n),
                    ));
                }
                let ns = s
                    .pointer("/serviceAccount/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if ns.is_empty() {
                    causes.push(required(
                        format!("{path}.serviceAccount.namespace"),
                        "must specify namespace for service account",
                    ));
                } else if !validation::is_dns_label(ns) {
                    causes.push(Cause::invalid(
                        format!("{path}.serviceAccount.namespace"),
                        validation::dns_label_msg(ns),
                    ));
                }
            }
            forbid(causes, "user", "User");
            forbid(causes, "group", "Group");
        }
        "User" | "Group" => {
            let field = if kind == "User" { "user" } else { "group" };
            if !present(field) {
                causes.push(required(
                    format!("{path}.{field}"),
                    &format!("{field} is required when subject kind is '{kind}'"),
                ));
            } else if name(field).is_empty() {
                causes.push(Cause::required(format!("{path}.{field}.name")));
            }
            forbid(causes, "serviceAccount", "ServiceAccount");
            if kind == "User" {
                forbid(causes, "group", "Group");
            } else {
                forbid(causes, "user", "User");
            }
        }
        other => causes.push(validation::unsupported(
            &format!("{path}.kind"),
            other,
            &["Group", "ServiceAccount", "User"],
        )),
    }
}

fn resource_rule(rule: &Value, path: &str, causes: &mut Vec<Cause>) {
    verbs(rule, path, causes);
    wildcard_list(
        &strs(rule.get("apiGroups")),
        &format!("{path}.apiGroups"),
        "resource rules must supply at least one api group",
        "api groups",
        causes,
    );
    wildcard_list(
        &strs(rule.get("resources")),
        &format!("{path}.resources"),
        "resource rules must supply at least one resource",
        "resources",
        causes,
    );
    let namespaces = strs(rule.get("namespaces"));
    let cluster = rule["clusterScope"].as_bool().unwrap_or(false);
    if namespaces.is_empty() {
        if !cluster {
            causes.push(required(
                format!("{path}.namespaces"),
                "resource rules that are not cluster scoped must supply at least one namespace",
            ));
        }
    } else if namespaces.contains(&"*") {
        if namespaces.len() > 1 {
            causes.push(Cause::invalid(
                format!("{path}.namespaces"),
                format!(
                    "Invalid value: {}: if '*' is present, must not specify other namespaces",
                    go_strings(&namespaces)
                ),
            ));
        }
    } else {
        for (i, ns) in namespaces.iter().enumerate() {
            if !validation::is_dns_label(ns) {
                let msg = validation::dns_label_msg(ns);
                let detail = msg
                    .split_once(": ")
                    .map(|(_, d)| d)
                    .unwrap_or(&msg)
                    .to_owned();
                causes.push(Cause::invalid(
                    format!("{path}.namespaces[{i}]"),
                    format!(
                        "Invalid value: \"{ns}\": each member of this list must be '*' or a DNS-1123 label; {detail}"
                    ),
                ));
            }
        }
    }
}

fn non_resource_rule(rule: &Value, path: &str, causes: &mut Vec<Cause>) {
    verbs(rule, path, causes);
    let urls = strs(rule.get("nonResourceURLs"));
    let field = format!("{path}.nonResourceURLs");
    if urls.is_empty() {
        causes.push(required(
            field,
            "nonResourceURLs must contain at least one value",
        ));
    } else if urls.contains(&"*") {
        if urls.len() > 1 {
            causes.push(Cause::invalid(
                field,
                format!(
                    "Invalid value: {}: if '*' is present, must not specify other non-resource URLs",
                    go_strings(&urls)
                ),
            ));
        }
    } else {
        for (i, url) in urls.iter().enumerate() {
            if let Some(e) = url_path_error(url) {
                causes.push(Cause::invalid(
                    format!("{field}[{i}]"),
                    format!("Invalid value: \"{url}\": {e}"),
                ));
            }
        }
    }
}

fn flow_schema(name: &str, spec: &Value, causes: &mut Vec<Cause>) {
    let precedence = spec["matchingPrecedence"].as_i64().unwrap_or(0);
    let field = "spec.matchingPrecedence";
    if precedence <= 0 {
        causes.push(Cause::invalid(
            field,
            format!("Invalid value: {precedence}: must be a positive value"),
        ));
    }
    if precedence > MAX_MATCHING_PRECEDENCE {
        causes.push(Cause::invalid(
            field,
            format!(
                "Invalid value: {precedence}: must not be greater than {MAX_MATCHING_PRECEDENCE}"
            ),
        ));
    }
    if precedence == 1 && name != EXEMPT {
        causes.push(Cause::invalid(
            field,
            "Invalid value: 1: only the schema named 'exempt' may have matchingPrecedence 1",
        ));
    }
    if let Some(dm) = spec.get("distinguisherMethod").filter(|v| !v.is_null()) {
        let t = dm["type"].as_str().unwrap_or_default();
        if !matches!(t, "ByNamespace" | "ByUser") {
            causes.push(validation::unsupported(
                "spec.distinguisherMethod.type",
                t,
                &["ByNamespace", "ByUser"],
            ));
        }
    }
    let pl = spec
        .pointer("/priorityLevelConfiguration/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if pl.is_empty() {
        causes.push(required(
            "spec.priorityLevelConfiguration.name".into(),
            "must reference a priority level",
        ));
    } else if !validation::is_dns_subdomain(pl) {
        causes.push(Cause::invalid(
            "spec.priorityLevelConfiguration.name",
            validation::dns_subdomain_msg(pl),
        ));
    }
    let rules = spec["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        let subjects = rule["subjects"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if subjects.is_empty() {
            causes.push(required(
                format!("{path}.subjects"),
                "subjects must contain at least one value",
            ));
        }
        for (j, s) in subjects.iter().enumerate() {
            subject(s, &format!("{path}.subjects[{j}]"), causes);
        }
        let list = |k: &str| rule[k].as_array().map(Vec::as_slice).unwrap_or_default();
        let (resources, non_resources) = (list("resourceRules"), list("nonResourceRules"));
        if resources.is_empty() && non_resources.is_empty() {
            causes.push(required(
                path.clone(),
                "at least one of resourceRules and nonResourceRules has to be non-empty",
            ));
        }
        for (j, r) in resources.iter().enumerate() {
            resource_rule(r, &format!("{path}.resourceRules[{j}]"), causes);
        }
        for (j, r) in non_resources.iter().enumerate() {
            non_resource_rule(r, &format!("{path}.nonResourceRules[{j}]"), causes);
        }
    }
}

fn percent(v: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(p) = v.get("lendablePercent").and_then(Value::as_i64)
        && !(0..=100).contains(&p)
    {
        causes.push(Cause::invalid(
            format!("{field}.lendablePercent"),
            format!("Invalid value: {p}: must be between 0 and 100, inclusive"),
        ));
    }
}

fn non_negative_shares(v: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = v.get("nominalConcurrencyShares").and_then(Value::as_i64)
        && n < 0
    {
        causes.push(Cause::invalid(
            format!("{field}.nominalConcurrencyShares"),
            format!("Invalid value: {n}: must be a non-negative integer"),
        ));
    }
}

fn queuing(q: &Value, causes: &mut Vec<Cause>) {
    let field = "spec.limited.limitResponse.queuing";
    let int = |k: &str| q[k].as_i64().unwrap_or(0);
    let (limit, queues, hand) = (int("queueLengthLimit"), int("queues"), int("handSize"));
    if limit <= 0 {
        causes.push(Cause::invalid(
            format!("{field}.queueLengthLimit"),
            format!("Invalid value: {limit}: must be positive"),
        ));
    }
    if queues <= 0 {
        causes.push(Cause::invalid(
            format!("{field}.queues"),
            format!("Invalid value: {queues}: must be positive"),
        ));
    } else if queues > MAX_QUEUES {
        causes.push(Cause::invalid(
            format!("{field}.queues"),
            format!("Invalid value: {queues}: must not be greater than {MAX_QUEUES}"),
        ));
    }
    let hand_field = format!("{field}.handSize");
    if hand <= 0 {
        causes.push(Cause::invalid(
            hand_field,
            format!("Invalid value: {hand}: must be positive"),
        ));
    } else if hand > queues {
        causes.push(Cause::invalid(
            hand_field,
            format!("Invalid value: {hand}: should not be greater than queues ({queues})"),
        ));
    } else if queues > 0 && ((queues as f64).log2() * hand as f64).ceil() > MAX_HASH_BITS {
        causes.push(Cause::invalid(
            hand_field,
            format!(
                "Invalid value: {hand}: required entropy bits of deckSize {queues} and handSize {hand} should not be greater than {MAX_HASH_BITS}"
            ),
        ));
    }
}

fn priority_level(name: &str, spec: &Value, causes: &mut Vec<Cause>) {
    let t = spec["type"].as_str().unwrap_or_default();
    if (name == EXEMPT) != (t == "Exempt") {
        causes.push(Cause::invalid(
            "spec.type",
            format!(
                "Invalid value: \"{t}\": type must be 'Exempt' if and only if name is 'exempt'"
            ),
        ));
    }
    let present = |k: &str| spec.get(k).is_some_and(|v| !v.is_null());
    match t {
        "Exempt" => {
            if present("limited") {
                causes.push(Cause::forbidden(
                    "spec.limited",
                    "Forbidden: must be nil if the type is not Limited",
                ));
            }
            if let Some(exempt) = spec.get("exempt").filter(|v| !v.is_null()) {
                non_negative_shares(exempt, "spec.exempt", causes);
                percent(exempt, "spec.exempt", causes);
            }
        }
        "Limited" => {
            if present("exempt") {
                causes.push(Cause::forbidden(
                    "spec.exempt",
                    "Forbidden: must be nil if the type is Limited",
                ));
            }
            match spec.get("limited").filter(|v| !v.is_null()) {
                None => causes.push(required(
                    "spec.limited".into(),
                    "must not be empty when type is Limited",
                )),
                Some(limited) => {
                    non_negative_shares(limited, "spec.limited", causes);
                    let response = &limited["limitResponse"];
                    let q = response.get("queuing").filter(|v| !v.is_null());
                    match response["type"].as_str().unwrap_or_default() {
                        "Reject" => {
                            if q.is_some() {
                                causes.push(Cause::forbidden(
                                    "spec.limited.limitResponse.queuing",
                                    "Forbidden: must be nil if limited.limitResponse.type is not Limited",
                                ));
                            }
                        }
                        "Queue" => match q {
                            None => causes.push(required(
                                "spec.limited.limitResponse.queuing".into(),
                                "must not be empty if limited.limitResponse.type is Limited",
                            )),
                            Some(q) => queuing(q, causes),
                        },
                        other => causes.push(validation::unsupported(
                            "spec.limited.limitResponse.type",
                            other,
                            &["Queue", "Reject"],
                        )),
                    }
                    percent(limited, "spec.limited", causes);
                    if let Some(b) = limited.get("borrowingLimitPercent").and_then(Value::as_i64)
                        && b < 0
                    {
                        causes.push(Cause::invalid(
                            "spec.limited.borrowingLimitPercent",
                            format!(
                                "Invalid value: {b}: if specified, must be a non-negative integer"
                            ),
                        ));
                    }
                }
            }
        }
        other => causes.push(validation::unsupported(
            "spec.type",
            other,
            &["Exempt", "Limited"],
        )),
    }
}

/// Duplicate condition types and empty ones (`ValidateFlowSchemaStatus`,
/// `ValidatePriorityLevelConfigurationStatus`).
fn conditions(obj: &Value, causes: &mut Vec<Cause>) {
    let list = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut seen = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let t = c["type"].as_str().unwrap_or_default();
        let field = format!("status.conditions[{i}].type");
        if seen.contains(&t) {
            causes.push(Cause::duplicate(field.clone(), t));
        }
        seen.push(t);
        if t.is_empty() {
            causes.push(required(field, "must not be empty"));
        }
    }
}

/// kube-apiserver's validation of a FlowSchema or PriorityLevelConfiguration
/// (object-meta checks are every kind's). The mandatory objects' specs are fixed, as
/// upstream: `exempt` and `catch-all` FlowSchemas and the `catch-all` priority level
/// entirely, the `exempt` priority level but for its `exempt` settings.
pub fn validate(kind: &str, obj: &Value, causes: &mut Vec<Cause>) {
    let name = object::name(obj);
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let fixed = match kind {
        "FlowSchema" => {
            flow_schema(name, &spec, causes);
            bootstrap::mandatory_flow_schema(name)
        }
        "PriorityLevelConfiguration" => {
            priority_level(name, &spec, causes);
            bootstrap::mandatory_priority_level(name)
        }
        _ => return,
    };
    if let Some(mut fixed) = fixed {
        let mut given = spec.clone();
        if kind == "PriorityLevelConfiguration" && name == EXEMPT {
            for s in [&mut fixed, &mut given] {
                if let Some(m) = s.as_object_mut() {
                    m.remove("exempt");
                }
            }
        }
        if given != fixed {
            causes.push(Cause::invalid(
                "spec",
                format!("Invalid value: {spec}: spec of '{name}' must equal the fixed value"),
            ));
        }
    }
    conditions(obj, causes);
}

/// The columns after NAME (`pkg/printers/internalversion`).
pub fn columns(kind: &str) -> Vec<(&'static str, &'static str, u8)> {
    match kind {
        "FlowSchema" => vec![
            ("PriorityLevel", "string", 0),
            ("MatchingPrecedence", "string", 0),
            ("DistinguisherMethod", "string", 0),
            ("Age", "string", 0),
            ("MissingPL", "string", 0),
        ],
        _ => vec![
            ("Type", "string", 0),
            ("NominalConcurrencyShares", "string", 0),
            ("Queues", "string", 0),
            ("HandSize", "string", 0),
            ("QueueLengthLimit", "string", 0),
            ("Age", "string", 0),
        ],
    }
}

/// `printFlowSchema` / `printPriorityLevelConfiguration`.
pub fn cells(kind: &str, o: &Value, age: String) -> Vec<Value> {
    let none = || json!("<none>");
    match kind {
        "FlowSchema" => {
            let dangling = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Dangling"))
                .and_then(|c| c["status"].as_str())
                .unwrap_or("?");
            vec![
                json!(
                    o.pointer("/spec/priorityLevelConfiguration/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
                json!(
                    o.pointer("/spec/matchingPrecedence")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                ),
                o.pointer("/spec/distinguisherMethod/type")
                    .and_then(Value::as_str)
                    .map_or_else(none, |t| json!(t)),
                json!(age),
                json!(dangling),
            ]
        }
        _ => {
            let limited = o.pointer("/spec/limited").filter(|v| !v.is_null());
            let q = |k: &str| {
                limited
                    .and_then(|l| l.pointer(&format!("/limitResponse/queuing/{k}")))
                    .cloned()
                    .filter(|v| !v.is_null())
                    .unwrap_or_else(none)
            };
            vec![
                json!(
                    o.pointer("/spec/type")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
                limited
                    .and_then(|l| l.get("nominalConcurrencyShares"))
                    .cloned()
                    .filter(|v| !v.is_null())
                    .unwrap_or_else(none),
                q("queues"),
                q("handSize"),
                q("queueLengthLimit"),
                json!(age),
            ]
        }
    }
}

#[cfg(test)]
mod tests;
