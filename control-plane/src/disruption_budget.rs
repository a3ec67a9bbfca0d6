//! What the eviction subresource, the disruption controller and scheduler preemption
//! share about PodDisruptionBudgets (policy/v1), without I/O: which pods a budget
//! selects, its arithmetic (`desiredHealthy` from minAvailable/maxUnavailable, as
//! kube-controller-manager's disruption controller computes it) and the
//! `DisruptionAllowed` condition (`k8s.io/component-helpers/apps/poddisruptionbudget`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::scheduler::labels::matches;

/// How long a pod the eviction API let go stays in `status.disruptedPods` waiting to be
/// deleted (the disruption controller's `DeletionTimeout`).
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);
/// The eviction API refuses more evictions while this many are unconfirmed.
pub const MAX_DISRUPTED_PODS: usize = 2000;
pub const CONDITION: &str = "DisruptionAllowed";
pub const SUFFICIENT_PODS: &str = "SufficientPods";
pub const INSUFFICIENT_PODS: &str = "InsufficientPods";
pub const SYNC_FAILED: &str = "SyncFailed";

/// Whether the budget covers a pod in `namespace` with `labels`. In policy/v1 an empty
/// selector selects every pod of the namespace and a missing one none.
pub fn selects(
    pdb: &PodDisruptionBudget,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    pdb.metadata.namespace.as_deref() == Some(namespace)
        && matches(pdb.spec.as_ref().and_then(|s| s.selector.as_ref()), labels)
}

/// `intstr.GetScaledValueFromIntOrPercent`: an integer as is, a percent of `total`
/// rounded up or down.
pub fn scaled(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let product = percent * i64::from(total);
            let v = if round_up {
                (product + 99).div_euclid(100)
            } else {
                product.div_euclid(100)
            };
            i32::try_from(v).map_err(|_| format!("invalid value {s:?}: out of range"))
        }
    }
}

/// Whether `expectedPods` comes from the scale of the pods' controllers (percent
/// minAvailable, or any maxUnavailable) rather than from counting the pods.
pub fn needs_scale(pdb: &PodDisruptionBudget) -> bool {
    let spec = pdb.spec.as_ref();
    spec.and_then(|s| s.max_unavailable.as_ref()).is_some()
        || matches!(
            spec.and_then(|s| s.min_available.as_ref()),
            Some(IntOrString::String(_))
        )
}

/// `(expectedPods, desiredHealthy)`: `pods` is how many pods the budget selects, `scale`
/// the sum of their controllers' scales (asked for only when [`needs_scale`]).
pub fn expected_and_desired(
    pdb: &PodDisruptionBudget,
    pods: i32,
    scale: impl FnOnce() -> Result<i32, String>,
) -> Result<(i32, i32), String> {
    let spec = pdb.spec.clone().unwrap_or_default();
    if let Some(max) = &spec.max_unavailable {
        let expected = scale()?;
        let unavailable = scaled(max, expected, true)?;
        return Ok((expected, (expected - unavailable).max(0)));
    }
    match &spec.min_available {
        Some(IntOrString::Int(n)) => Ok((pods, *n)),
        Some(min @ IntOrString::String(_)) => {
            let expected = scale()?;
            Ok((expected, scaled(min, expected, true)?))
        }
        None => Ok((0, 0)),
    }
}

/// `currentHealthy - desiredHealthy`, never negative, and 0 while no pod is expected
/// (so a budget that matches nothing yet is safe when its first pods appear).
pub fn disruptions_allowed(current: i32, desired: i32, expected: i32) -> i32 {
    if expected <= 0 {
        return 0;
    }
    (current - desired).max(0)
}

/// Sets the `DisruptionAllowed` condition the way `apimeta.SetStatusCondition` does:
/// the transition time moves only when the status flips. `reason` None derives it from
/// `disruptionsAllowed` (`UpdateDisruptionAllowedCondition`).
pub fn set_condition(
    status: &mut PodDisruptionBudgetStatus,
    failed: Option<&str>,
    now: jiff::Timestamp,
) {
    let (value, reason, message) = match failed {
        Some(message) => ("False", SYNC_FAILED, message.to_owned()),
        None if status.disruptions_allowed.unwrap_or(0) > 0 => {
            ("True", SUFFICIENT_PODS, String::new())
        }
        None => ("False", INSUFFICIENT_PODS, String::new()),
    };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let observed = status.observed_generation;
    match conditions.iter_mut().find(|c| c.type_ == CONDITION) {
        Some(c) => {
            if c.status != value {
                c.status = value.into();
                c.last_transition_time = Time(now);
            }
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = observed;
        }
        None => conditions.push(Condition {
            type_: CONDITION.into(),
            status: value.into(),
            reason: reason.into(),
            message,
            observed_generation: observed,
            last_transition_time: Time(now),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pdb(spec: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec}))
            .expect("pdb")
    }

    #[test]
    fn percents_round_up() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled(&pct("50%"), 3, true), Ok(2));
        assert_eq!(scaled(&pct("50%"), 3, false), Ok(1));
        assert_eq!(scaled(&pct("34%"), 3, true), Ok(2));
        assert_eq!(scaled(&pct("0%"), 7, true), Ok(0));
        assert_eq!(scaled(&IntOrString::Int(4), 3, true), Ok(4));
        assert!(scaled(&pct("half"), 3, true).is_err());
    }

    #[test]
    fn expected_and_desired_follow_the_spec() {
        let no_scale = || Err::<i32, String>("no scale asked for".into());
        // Integer minAvailable: the pods are counted, the scale is not asked for.
        let p = pdb(json!({"minAvailable": 2, "selector": {}}));
        assert!(!needs_scale(&p));
        assert_eq!(expected_and_desired(&p, 3, no_scale), Ok((3, 2)));
        // Percent minAvailable: of the controllers' scale, rounded up.
        let p = pdb(json!({"minAvailable": "50%"}));
        assert_eq!(expected_and_desired(&p, 2, || Ok(5)), Ok((5, 3)));
        // maxUnavailable: scale minus the (rounded up) unavailable, at least 0.
        let p = pdb(json!({"maxUnavailable": "25%"}));
        assert_eq!(expected_and_desired(&p, 4, || Ok(4)), Ok((4, 3)));
        assert_eq!(expected_and_desired(&p, 5, || Ok(5)), Ok((5, 3)));
        let p = pdb(json!({"maxUnavailable": 9}));
        assert_eq!(expected_and_desired(&p, 3, || Ok(3)), Ok((3, 0)));
        // A missing controller fails the computation.
        assert!(expected_and_desired(&p, 3, no_scale).is_err());
        assert_eq!(disruptions_allowed(3, 2, 3), 1);
        assert_eq!(disruptions_allowed(1, 2, 3), 0);
        assert_eq!(disruptions_allowed(3, 0, 0), 0);
    }

    #[test]
    fn selectors_and_the_condition() {
        let labels: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        assert!(selects(&pdb(json!({"selector": {}})), "ns", &labels));
        assert!(!selects(&pdb(json!({})), "ns", &labels));
        assert!(!selects(&pdb(json!({"selector": {}})), "other", &labels));
        let t0 = jiff::Timestamp::UNIX_EPOCH;
        let t1 = t0 + jiff::SignedDuration::from_secs(5);
        let mut status = PodDisruptionBudgetStatus {
            disruptions_allowed: Some(1),
            ..Default::default()
        };
        set_condition(&mut status, None, t0);
        status.disruptions_allowed = Some(2);
        set_condition(&mut status, None, t1);
        let c = &status.conditions.as_ref().expect("conditions")[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", SUFFICIENT_PODS)
        );
        assert_eq!(
            c.last_transition_time.0, t0,
            "no flip, no new transition time"
        );
        set_condition(&mut status, Some("found no controllers"), t1);
        let c = &status.conditions.as_ref().expect("conditions")[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", SYNC_FAILED)
        );
        assert_eq!(c.last_transition_time.0, t1);
    }
}
