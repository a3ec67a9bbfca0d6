//! A Node's `spec.podCIDR` and `spec.podCIDRs`: defaulted into each other (the v1
//! conversion keeps `podCIDR` = `podCIDRs[0]`), validated as upstream's ValidateNode
//! (valid CIDRs, at most one per family) and ValidateNodeUpdate (set once: "node
//! updates may not change podCIDR except from \"\" to valid"), and — berth's rule for
//! multi-node clusters, which Kubernetes leaves to the network plugin — refused when
//! they overlap another Node's: two nodes with one pod range would each answer for
//! the other's pods. The overlap check reads the other Nodes from the watch cache, so
//! two racing writes can both pass it; the node IPAM controller catches that case
//! (`controllers::node_ipam`). Entry points: [`default`], [`validate`],
//! [`validate_update`], [`admit_overlap`].

use serde_json::{Value, json};

use super::super::status::Cause;
use crate::apiserver::watch_cache::WatchCache;
use crate::cidr::Cidr;

fn list(obj: &Value) -> Vec<&str> {
    obj.pointer("/spec/podCIDRs")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn single(obj: &Value) -> &str {
    obj.pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `podCIDRs` from `podCIDR` when only that is given, and `podCIDR` from the list's
/// first entry when only the list is.
pub fn default(node: &mut Value) {
    let (one, many) = (
        single(node).to_owned(),
        list(node).first().map(|s| s.to_string()),
    );
    let Some(spec) = node.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    match (one.is_empty(), many) {
        (false, None) => {
            spec.insert("podCIDRs".into(), json!([one]));
        }
        (true, Some(first)) => {
            spec.insert("podCIDR".into(), json!(first));
        }
        _ => {}
    }
}

/// ValidateNode's podCIDR rules.
pub fn validate(node: &Value, causes: &mut Vec<Cause>) {
    let cidrs = list(node);
    let mut parsed = Vec::new();
    for (i, text) in cidrs.iter().enumerate() {
        match text.parse::<Cidr>() {
            Ok(c) => parsed.push(c),
            Err(_) => causes.push(Cause::invalid(
                format!("spec.podCIDRs[{i}]"),
                format!("Invalid value: \"{text}\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"),
            )),
        }
    }
    if cidrs.len() > 1
        && (cidrs.len() > 2 || (parsed.len() == 2 && parsed[0].is_ipv6() == parsed[1].is_ipv6()))
    {
        causes.push(Cause::invalid(
            "spec.podCIDRs",
            format!(
                "Invalid value: {}: may specify no more than one CIDR for each IP family",
                json!(cidrs)
            ),
        ));
    }
    let one = single(node);
    if !one.is_empty() && cidrs.first().is_some_and(|first| *first != one) {
        causes.push(Cause::invalid(
            "spec.podCIDR",
            format!("Invalid value: \"{one}\": must match spec.podCIDRs[0]"),
        ));
    }
}

/// ValidateNodeUpdate: podCIDRs are set once.
pub fn validate_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let before = list(old);
    if !before.is_empty() && before != list(new) {
        causes.push(Cause::forbidden(
            "spec.podCIDRs",
            "Forbidden: node updates may not change podCIDR except from \"\" to valid",
        ));
    }
}

/// The causes to refuse `node` for: its podCIDRs overlapping those of another Node
/// under `prefix` in `cache`. Only asked when the podCIDRs are new (a create, or an
/// update from none).
pub fn admit_overlap(cache: &WatchCache, prefix: &str, node: &Value) -> Vec<Cause> {
    let mine: Vec<Cidr> = list(node).iter().filter_map(|s| s.parse().ok()).collect();
    if mine.is_empty() {
        return Vec::new();
    }
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (others, _) = cache.list(prefix, |_| true);
    let mut causes = Vec::new();
    for other in &others {
        let other = other.value();
        let other_name = other
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if other_name == name {
            continue;
        }
        for theirs in list(&other).iter().filter_map(|s| s.parse::<Cidr>().ok()) {
            for (i, m) in mine.iter().enumerate() {
                if m.overlaps(&theirs) {
                    causes.push(Cause::invalid(
                        format!("spec.podCIDRs[{i}]"),
                        format!(
                            "Invalid value: \"{m}\": overlaps podCIDR {theirs} of node {other_name}"
                        ),
                    ));
                }
            }
        }
    }
    causes
}

/// Whether the update gives the Node podCIDRs it did not have.
pub fn newly_set(old: &Value, new: &Value) -> bool {
    list(old).is_empty() && !list(new).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(spec: Value) -> Value {
        json!({"metadata": {"name": "n1"}, "spec": spec})
    }

    fn messages(causes: &[Cause]) -> Vec<String> {
        causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn the_two_fields_default_from_each_other() {
        let mut one = node(json!({"podCIDR": "10.244.1.0/24"}));
        default(&mut one);
        assert_eq!(one["spec"]["podCIDRs"], json!(["10.244.1.0/24"]));
        let mut many = node(json!({"podCIDRs": ["10.244.2.0/24", "fd00::/64"]}));
        default(&mut many);
        assert_eq!(many["spec"]["podCIDR"], "10.244.2.0/24");
        let mut none = node(json!({}));
        default(&mut none);
        assert_eq!(none["spec"], json!({}));
    }

    #[test]
    fn podcidrs_are_valid_cidrs_one_per_family_led_by_podcidr() {
        let check = |spec: Value| {
            let mut causes = Vec::new();
            validate(&node(spec), &mut causes);
            messages(&causes)
        };
        assert!(check(json!({"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24"]})).is_empty());
        assert!(check(json!({"podCIDRs": ["10.1.0.0/24", "fd00::/64"]})).is_empty());
        assert_eq!(
            check(json!({"podCIDRs": ["10.1.0.0/33"]})),
            [
                "spec.podCIDRs[0]: Invalid value: \"10.1.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
            ]
        );
        assert_eq!(
            check(json!({"podCIDRs": ["10.1.0.0/24", "10.2.0.0/24"]})),
            [
                "spec.podCIDRs: Invalid value: [\"10.1.0.0/24\",\"10.2.0.0/24\"]: may specify no more than one CIDR for each IP family"
            ]
        );
        assert_eq!(
            check(json!({"podCIDR": "10.9.0.0/24", "podCIDRs": ["10.1.0.0/24"]})),
            ["spec.podCIDR: Invalid value: \"10.9.0.0/24\": must match spec.podCIDRs[0]"]
        );
    }

    #[test]
    fn podcidrs_are_set_once() {
        let check = |old: Value, new: Value| {
            let mut causes = Vec::new();
            validate_update(&node(old), &node(new), &mut causes);
            messages(&causes)
        };
        assert!(check(json!({}), json!({"podCIDRs": ["10.1.0.0/24"]})).is_empty());
        assert!(
            check(
                json!({"podCIDRs": ["10.1.0.0/24"]}),
                json!({"podCIDRs": ["10.1.0.0/24"]})
            )
            .is_empty()
        );
        let forbidden = [
            "spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid",
        ];
        assert_eq!(
            check(
                json!({"podCIDRs": ["10.1.0.0/24"]}),
                json!({"podCIDRs": ["10.2.0.0/24"]})
            ),
            forbidden
        );
        assert_eq!(
            check(json!({"podCIDRs": ["10.1.0.0/24"]}), json!({})),
            forbidden
        );
        assert!(newly_set(
            &node(json!({})),
            &node(json!({"podCIDRs": ["10.1.0.0/24"]}))
        ));
    }
}
