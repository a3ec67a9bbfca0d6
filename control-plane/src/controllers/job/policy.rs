//! A Job's `podFailurePolicy` (which rule, if any, a failed pod matches) and
//! `successPolicy` (whether the succeeded indexes meet a rule).

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::{PodFailurePolicy, PodFailurePolicyRule, SuccessPolicy};
use k8s_openapi::api::core::v1::Pod;

use super::indexes;

/// What a matching rule asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fail the whole Job at once, with this message.
    FailJob(String),
    /// Fail the pod's index at once (Indexed Jobs with `backoffLimitPerIndex`).
    FailIndex,
    /// The failure does not count against the back-off limits.
    Ignore,
    /// The failure counts (also what happens when no rule matches).
    Count,
}

/// The action of the first rule `pod` (in phase Failed) matches.
pub fn failure_action(policy: Option<&PodFailurePolicy>, pod: &Pod) -> Action {
    let Some(policy) = policy else {
        return Action::Count;
    };
    for (i, rule) in policy.rules.iter().enumerate() {
        if let Some(why) = matches(rule, pod) {
            return match rule.action.as_str() {
                "FailJob" => Action::FailJob(format!("{why} matching FailJob rule at index {i}")),
                "FailIndex" => Action::FailIndex,
                "Ignore" => Action::Ignore,
                _ => Action::Count,
            };
        }
    }
    Action::Count
}

/// Why `pod` matches `rule` (the start of upstream's message), if it does.
fn matches(rule: &PodFailurePolicyRule, pod: &Pod) -> Option<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref()?;
    if let Some(req) = &rule.on_exit_codes {
        let containers = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for c in containers {
            if req.container_name.as_ref().is_some_and(|n| *n != c.name) {
                continue;
            }
            let Some(code) = c
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code)
            else {
                continue;
            };
            // Only failures (non-zero exit codes) are matched, for both operators.
            if code == 0 {
                continue;
            }
            let listed = req.values.contains(&code);
            let hit = match req.operator.as_str() {
                "In" => listed,
                "NotIn" => !listed,
                _ => false,
            };
            if hit {
                return Some(format!(
                    "Container {} for pod {ns}/{name} failed with exit code {code}",
                    c.name
                ));
            }
        }
        return None;
    }
    for pattern in rule.on_pod_conditions.iter().flatten() {
        let want = pattern.status.as_deref().unwrap_or("True");
        let hit = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == pattern.type_ && c.status == want);
        if hit {
            return Some(format!("Pod {ns}/{name} has condition {}", pattern.type_));
        }
    }
    None
}

/// The index of the first success-policy rule the succeeded pods meet.
pub fn success_rule(
    policy: Option<&SuccessPolicy>,
    succeeded: &BTreeSet<i32>,
    completions: i32,
) -> Option<usize> {
    policy?
        .rules
        .iter()
        .position(|rule| match &rule.succeeded_indexes {
            Some(text) => match indexes::parse(text, completions) {
                Ok(wanted) => {
                    let done = wanted.intersection(succeeded).count();
                    match rule.succeeded_count {
                        Some(n) => done >= usize::try_from(n).unwrap_or(usize::MAX),
                        None => !wanted.is_empty() && done == wanted.len(),
                    }
                }
                Err(_) => false,
            },
            None => rule
                .succeeded_count
                .is_some_and(|n| succeeded.len() >= usize::try_from(n).unwrap_or(usize::MAX)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn failed(code: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": "Failed",
                "conditions": [{"type": "DisruptionTarget", "status": "True"}],
                "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"terminated": {"exitCode": code}}}]},
        }))
        .expect("pod")
    }

    fn policy(rules: serde_json::Value) -> PodFailurePolicy {
        serde_json::from_value(json!({ "rules": rules })).expect("policy")
    }

    #[test]
    fn exit_codes_and_conditions_pick_the_first_matching_rule() {
        let p = policy(json!([
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [1]}},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]));
        assert_eq!(failure_action(Some(&p), &failed(1)), Action::Ignore);
        assert_eq!(
            failure_action(Some(&p), &failed(42)),
            Action::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
                    .into()
            )
        );
        assert_eq!(failure_action(Some(&p), &failed(3)), Action::Count);
        let not_in = policy(json!([
            {"action": "FailIndex", "onExitCodes": {"operator": "NotIn", "values": [5]}},
        ]));
        assert_eq!(failure_action(Some(&not_in), &failed(6)), Action::FailIndex);
        assert_eq!(failure_action(Some(&not_in), &failed(5)), Action::Count);
        let cond = policy(json!([
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]));
        assert_eq!(
            failure_action(Some(&cond), &failed(5)),
            Action::FailJob(
                "Pod ns/p has condition DisruptionTarget matching FailJob rule at index 0".into()
            )
        );
    }

    #[test]
    fn success_rules_by_indexes_and_count() {
        let p: SuccessPolicy = serde_json::from_value(json!({"rules": [
            {"succeededIndexes": "0-2", "succeededCount": 2},
            {"succeededIndexes": "4"},
        ]}))
        .expect("policy");
        assert_eq!(success_rule(Some(&p), &[0].into(), 5), None);
        assert_eq!(success_rule(Some(&p), &[0, 2].into(), 5), Some(0));
        assert_eq!(success_rule(Some(&p), &[4].into(), 5), Some(1));
    }
}
