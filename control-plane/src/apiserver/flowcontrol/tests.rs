use serde_json::json;

use super::*;

fn messages(kind: &str, obj: &Value) -> Vec<String> {
    let mut causes = Vec::new();
    validate(kind, obj, &mut causes);
    causes
        .into_iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect()
}

#[test]
fn bootstrap_objects_are_valid_and_unchanged_by_defaults() {
    for (name, spec) in bootstrap::priority_levels() {
        let mut obj = json!({"metadata": {"name": name}, "spec": spec});
        let before = obj.clone();
        defaults("PriorityLevelConfiguration", &mut obj);
        assert_eq!(
            obj, before,
            "{name}: the defaults change nothing (as upstream checks)"
        );
        assert!(
            messages("PriorityLevelConfiguration", &obj).is_empty(),
            "{name}: {:?}",
            messages("PriorityLevelConfiguration", &obj)
        );
    }
    for (name, spec) in bootstrap::flow_schemas() {
        let mut obj = json!({"metadata": {"name": name}, "spec": spec});
        let before = obj.clone();
        defaults("FlowSchema", &mut obj);
        assert_eq!(obj, before, "{name}");
        assert!(
            messages("FlowSchema", &obj).is_empty(),
            "{name}: {:?}",
            messages("FlowSchema", &obj)
        );
    }
    let levels: Vec<&str> = bootstrap::priority_levels()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    for (name, spec) in bootstrap::flow_schemas() {
        let pl = spec["priorityLevelConfiguration"]["name"]
            .as_str()
            .unwrap_or_default();
        assert!(levels.contains(&pl), "{name} refers to {pl}");
    }
}

#[test]
fn defaults_as_v1() {
    let mut fs = json!({"metadata": {"name": "mine"}, "spec": {"priorityLevelConfiguration": {"name": "global-default"}}});
    defaults("FlowSchema", &mut fs);
    assert_eq!(fs["spec"]["matchingPrecedence"], 1000);
    let mut pl = json!({"metadata": {"name": "mine"}, "spec": {"type": "Limited", "limited": {
        "limitResponse": {"type": "Queue", "queuing": {}}}}});
    defaults("PriorityLevelConfiguration", &mut pl);
    assert_eq!(
        pl["spec"]["limited"],
        json!({"nominalConcurrencyShares": 30, "lendablePercent": 0,
               "limitResponse": {"type": "Queue", "queuing": {"handSize": 8, "queues": 64, "queueLengthLimit": 50}}})
    );
    // An explicit zero share is kept (v1 allows it).
    let mut zero = json!({"spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 0, "limitResponse": {"type": "Reject"}}}});
    defaults("PriorityLevelConfiguration", &mut zero);
    assert_eq!(zero["spec"]["limited"]["nominalConcurrencyShares"], 0);
}

#[test]
fn flow_schema_messages() {
    let fs = json!({"metadata": {"name": "mine"}, "spec": {
        "matchingPrecedence": 1,
        "priorityLevelConfiguration": {"name": ""},
        "distinguisherMethod": {"type": "ByPod"},
        "rules": [{
            "subjects": [{"kind": "User"}, {"kind": "Robot"}],
            "resourceRules": [{"verbs": ["*", "get"], "apiGroups": [], "resources": ["pods"]}],
            "nonResourceRules": [{"verbs": ["fly"], "nonResourceURLs": ["healthz"]}],
        }, {"subjects": []}],
    }});
    assert_eq!(
        messages("FlowSchema", &fs),
        [
            "spec.matchingPrecedence: Invalid value: 1: only the schema named 'exempt' may have matchingPrecedence 1",
            "spec.distinguisherMethod.type: Unsupported value: \"ByPod\": supported values: \"ByNamespace\", \"ByUser\"",
            "spec.priorityLevelConfiguration.name: Required value: must reference a priority level",
            "spec.rules[0].subjects[0].user: Required value: user is required when subject kind is 'User'",
            "spec.rules[0].subjects[1].kind: Unsupported value: \"Robot\": supported values: \"Group\", \"ServiceAccount\", \"User\"",
            "spec.rules[0].resourceRules[0].verbs: Invalid value: []string{\"*\", \"get\"}: if '*' is present, must not specify other verbs",
            "spec.rules[0].resourceRules[0].apiGroups: Required value: resource rules must supply at least one api group",
            "spec.rules[0].resourceRules[0].namespaces: Required value: resource rules that are not cluster scoped must supply at least one namespace",
            "spec.rules[0].nonResourceRules[0].verbs: Unsupported value: []string{\"fly\"}: supported values: \"create\", \"delete\", \"deletecollection\", \"get\", \"list\", \"patch\", \"proxy\", \"update\", \"watch\"",
            "spec.rules[0].nonResourceRules[0].nonResourceURLs[0]: Invalid value: \"healthz\": must start with slash",
            "spec.rules[1].subjects: Required value: subjects must contain at least one value",
            "spec.rules[1]: Required value: at least one of resourceRules and nonResourceRules has to be non-empty",
        ]
    );
}

#[test]
fn priority_level_messages() {
    let pl = json!({"metadata": {"name": "mine"}, "spec": {"type": "Exempt", "limited": {}}});
    assert_eq!(
        messages("PriorityLevelConfiguration", &pl),
        [
            "spec.type: Invalid value: \"Exempt\": type must be 'Exempt' if and only if name is 'exempt'",
            "spec.limited: Forbidden: must be nil if the type is not Limited",
        ]
    );
    let queued = json!({"metadata": {"name": "mine"}, "spec": {"type": "Limited", "limited": {
        "nominalConcurrencyShares": -1, "lendablePercent": 101,
        "limitResponse": {"type": "Queue", "queuing": {"queues": 4, "handSize": 5, "queueLengthLimit": 0}}}}});
    assert_eq!(
        messages("PriorityLevelConfiguration", &queued),
        [
            "spec.limited.nominalConcurrencyShares: Invalid value: -1: must be a non-negative integer",
            "spec.limited.limitResponse.queuing.queueLengthLimit: Invalid value: 0: must be positive",
            "spec.limited.limitResponse.queuing.handSize: Invalid value: 5: should not be greater than queues (4)",
            "spec.limited.lendablePercent: Invalid value: 101: must be between 0 and 100, inclusive",
        ]
    );
    let entropy = json!({"metadata": {"name": "mine"}, "spec": {"type": "Limited", "limited": {
        "nominalConcurrencyShares": 1,
        "limitResponse": {"type": "Queue", "queuing": {"queues": 10000000, "handSize": 10, "queueLengthLimit": 1}}}}});
    assert!(messages("PriorityLevelConfiguration", &entropy)[0]
        .ends_with("required entropy bits of deckSize 10000000 and handSize 10 should not be greater than 60"));
}

#[test]
fn mandatory_specs_are_fixed() {
    let mut catch_all = json!({"metadata": {"name": "catch-all"}, "spec": bootstrap::mandatory_priority_level("catch-all")});
    assert!(messages("PriorityLevelConfiguration", &catch_all).is_empty());
    catch_all["spec"]["limited"]["nominalConcurrencyShares"] = json!(50);
    let got = messages("PriorityLevelConfiguration", &catch_all);
    assert!(
        got[0].ends_with("spec of 'catch-all' must equal the fixed value"),
        "{got:?}"
    );
    // The exempt level's concurrency settings may change; its type may not.
    let mut exempt = json!({"metadata": {"name": "exempt"}, "spec": bootstrap::mandatory_priority_level("exempt")});
    exempt["spec"]["exempt"]["nominalConcurrencyShares"] = json!(10);
    assert!(messages("PriorityLevelConfiguration", &exempt).is_empty());
    let mut fs =
        json!({"metadata": {"name": "exempt"}, "spec": bootstrap::mandatory_flow_schema("exempt")});
    fs["spec"]["matchingPrecedence"] = json!(2);
    assert!(
        messages("FlowSchema", &fs)[0].ends_with("spec of 'exempt' must equal the fixed value")
    );
}

#[test]
fn printer_cells() {
    let (_, spec) = bootstrap::flow_schemas()
        .into_iter()
        .find(|(n, _)| *n == "exempt")
        .expect("exempt");
    let fs = json!({"metadata": {"name": "exempt"}, "spec": spec});
    assert_eq!(
        cells("FlowSchema", &fs, "5s".into()),
        [
            json!("exempt"),
            json!(1),
            json!("<none>"),
            json!("5s"),
            json!("?")
        ]
    );
    let pl = json!({"spec": bootstrap::mandatory_priority_level("catch-all")});
    assert_eq!(
        cells("PriorityLevelConfiguration", &pl, "5s".into()),
        [
            json!("Limited"),
            json!(5),
            json!("<none>"),
            json!("<none>"),
            json!("<none>"),
            json!("5s")
        ]
    );
    assert_eq!(columns("FlowSchema").len(), 5);
}
