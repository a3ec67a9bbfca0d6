//! What the HPA controller remembers between syncs and how it limits a change
//! (`horizontal.go`'s normalization): without `behavior`, the highest recommendation
//! of the downscale stabilization window (5 min) and a scale-up of at most
//! max(2 × current, 4); with `behavior`, the scale-up and scale-down stabilization
//! windows and the rate policies (`Pods`/`Percent` per `periodSeconds`, combined by
//! `selectPolicy` Max/Min/Disabled) over the scale events of the longest period — then
//! min/max. The clock is an argument (`now`) so tests drive it.
//!
//! Entry point: [`History`] (`normalize`, `normalize_with_behavior`, `record_scale`).

use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

/// A condition the normalization decided: (type, status, reason, message).
pub type Condition = (&'static str, &'static str, &'static str, &'static str);

#[derive(Debug, Clone, Copy)]
struct Recommendation {
    replicas: i32,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct ScaleEvent {
    change: i32,
    at: Instant,
    outdated: bool,
}

/// One HPA's recommendations and scale events.
#[derive(Debug, Clone, Default)]
pub struct History {
    recommendations: Vec<Recommendation>,
    up: Vec<ScaleEvent>,
    down: Vec<ScaleEvent>,
}

/// The limits of one normalization.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub min: i32,
    pub max: i32,
    pub current: i32,
}

fn before(at: Instant, now: Instant, window: Duration) -> bool {
    now.checked_duration_since(at)
        .is_some_and(|age| age > window)
}

/// The changes of the events within the last `period`.
fn change_in_period(events: &[ScaleEvent], period: Duration, now: Instant) -> i32 {
    events
        .iter()
        .filter(|e| !e.outdated && !before(e.at, now, period))
        .map(|e| e.change)
        .sum()
}

fn seconds(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

fn longest_period(rules: Option<&HPAScalingRules>) -> Duration {
    rules
        .and_then(|r| r.policies.as_ref())
        .and_then(|p| p.iter().map(|p| p.period_seconds).max())
        .map(seconds)
        .unwrap_or_default()
}

impl History {
    /// `recordInitialRecommendation`: the target's size when the HPA is first seen.
    pub fn init(&mut self, current: i32, now: Instant) {
        if self.recommendations.is_empty() {
            self.recommendations.push(Recommendation {
                replicas: current,
                at: now,
            });
        }
    }

    /// Keeps `replicas` as a recommendation, over one older than every window if any.
    fn record(&mut self, replicas: i32, now: Instant, older: impl Fn(Instant) -> bool) {
        let rec = Recommendation { replicas, at: now };
        match self.recommendations.iter().position(|r| older(r.at)) {
            Some(i) => self.recommendations[i] = rec,
            None => self.recommendations.push(rec),
        }
    }

    /// `normalizeDesiredReplicas`: no `behavior` on the HPA.
    pub fn normalize(
        &mut self,
        desired: i32,
        bounds: Bounds,
        downscale_window: Duration,
        now: Instant,
    ) -> (i32, Vec<Condition>) {
        let stabilized = self
            .recommendations
            .iter()
            .filter(|r| !before(r.at, now, downscale_window))
            .map(|r| r.replicas)
            .fold(desired, i32::max);
        self.record(desired, now, |at| before(at, now, downscale_window));
        let mut conditions = vec![if stabilized != desired {
            (
                "AbleToScale",
                "True",
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        } else {
            (
                "AbleToScale",
                "True",
                "ReadyForNewScale",
                "recommended size matches current size",
            )
        }];
        // convertDesiredReplicasWithRules: at most max(2 × current, 4) in one step.
        let scale_up_limit = (2.0 * f64::from(bounds.current)).max(4.0) as i32;
        let (ceiling, ceiling_reason, ceiling_message) = if bounds.max > scale_up_limit {
            (
                scale_up_limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                bounds.max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        let (out, reason, message) = if stabilized < bounds.min {
            (
                bounds.min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        } else if stabilized > ceiling {
            (ceiling, ceiling_reason, ceiling_message)
        } else {
            (
                stabilized,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        };
        let limited = if out == stabilized { "False" } else { "True" };
        conditions.push(("ScalingLimited", limited, reason, message));
        (out, conditions)
    }

    /// `normalizeDesiredReplicasWithBehaviors`: the HPA's (defaulted) `behavior`; a
    /// scale-down window it leaves unset is `downscale_window`.
    pub fn normalize_with_behavior(
        &mut self,
        desired: i32,
        bounds: Bounds,
        behavior: &HorizontalPodAutoscalerBehavior,
        downscale_window: Duration,
        now: Instant,
    ) -> (i32, Vec<Condition>) {
        let up_rules = behavior.scale_up.clone().unwrap_or_default();
        let down_rules = behavior.scale_down.clone().unwrap_or_default();
        let up_window = seconds(up_rules.stabilization_window_seconds.unwrap_or(0));
        let down_window = down_rules
            .stabilization_window_seconds
            .map(seconds)
            .unwrap_or(downscale_window);
        // stabilizeRecommendationWithBehaviors
        let (mut up, mut down) = (desired, desired);
        for r in &self.recommendations {
            if !before(r.at, now, up_window) {
                up = up.min(r.replicas);
            }
            if !before(r.at, now, down_window) {
                down = down.max(r.replicas);
            }
        }
        let stabilized = bounds.current.max(up).min(down);
        self.record(desired, now, |at| {
            before(at, now, up_window) && before(at, now, down_window)
        });
        let mut conditions = Vec::new();
        if stabilized != desired {
            conditions.push(if desired >= bounds.current {
                ("AbleToScale", "True", "ScaleUpStabilized",
                 "recent recommendations were lower than current one, applying the lowest recent recommendation")
            } else {
                ("AbleToScale", "True", "ScaleDownStabilized",
                 "recent recommendations were higher than current one, applying the highest recent recommendation")
            });
        } else {
            conditions.push((
                "AbleToScale",
                "True",
                "ReadyForNewScale",
                "recommended size matches current size",
            ));
        }
        // convertDesiredReplicasWithBehaviorRate
        let (out, reason, message) = if stabilized > bounds.current {
            let limit = self
                .scale_up_limit(bounds.current, &up_rules, now)
                .max(bounds.current);
            let (ceiling, reason, message) = if bounds.max > limit {
                (
                    limit,
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                (
                    bounds.max,
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                )
            };
            if stabilized > ceiling {
                (ceiling, reason, message)
            } else {
                (
                    stabilized,
                    "DesiredWithinRange",
                    "the desired count is within the acceptable range",
                )
            }
        } else if stabilized < bounds.current {
            let limit = self
                .scale_down_limit(bounds.current, &down_rules, now)
                .min(bounds.current);
            let (floor, reason, message) = if bounds.min < limit {
                (
                    limit,
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                )
            } else {
                (
                    bounds.min,
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                )
            };
            if stabilized < floor {
                (floor, reason, message)
            } else {
                (
                    stabilized,
                    "DesiredWithinRange",
                    "the desired count is within the acceptable range",
                )
            }
        } else {
            (
                stabilized,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        };
        let limited = if out == stabilized { "False" } else { "True" };
        conditions.push(("ScalingLimited", limited, reason, message));
        (out, conditions)
    }

    /// `calculateScaleUpLimitWithScalingRules`.
    fn scale_up_limit(&self, current: i32, rules: &HPAScalingRules, now: Instant) -> i32 {
        let select = rules.select_policy.as_deref().unwrap_or("Max");
        if select == "Disabled" {
            return current;
        }
        let proposals = rules.policies.iter().flatten().map(|p| {
            let period = seconds(p.period_seconds);
            let start = current - change_in_period(&self.up, period, now)
                + change_in_period(&self.down, period, now);
            if p.type_ == "Pods" {
                start + p.value
            } else {
                (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
            }
        });
        if select == "Min" {
            proposals.min().unwrap_or(i32::MAX)
        } else {
            proposals.max().unwrap_or(i32::MIN)
        }
    }

    /// `calculateScaleDownLimitWithBehaviors`.
    fn scale_down_limit(&self, current: i32, rules: &HPAScalingRules, now: Instant) -> i32 {
        let select = rules.select_policy.as_deref().unwrap_or("Max");
        if select == "Disabled" {
            return current;
        }
        let proposals = rules.policies.iter().flatten().map(|p| {
            let period = seconds(p.period_seconds);
            let start = current - change_in_period(&self.up, period, now)
                + change_in_period(&self.down, period, now);
            if p.type_ == "Pods" {
                start - p.value
            } else {
                (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32
            }
        });
        if select == "Min" {
            proposals.max().unwrap_or(i32::MIN)
        } else {
            proposals.min().unwrap_or(i32::MAX)
        }
    }

    /// `storeScaleEvent`: remembers a rescale for the rate policies (only with a
    /// `behavior`, as upstream).
    pub fn record_scale(
        &mut self,
        behavior: Option<&HorizontalPodAutoscalerBehavior>,
        from: i32,
        to: i32,
        now: Instant,
    ) {
        let Some(behavior) = behavior else { return };
        let (events, period, change) = if to > from {
            (
                &mut self.up,
                longest_period(behavior.scale_up.as_ref()),
                to - from,
            )
        } else {
            (
                &mut self.down,
                longest_period(behavior.scale_down.as_ref()),
                from - to,
            )
        };
        for e in events.iter_mut() {
            if before(e.at, now, period) {
                e.outdated = true;
            }
        }
        let event = ScaleEvent {
            change,
            at: now,
            outdated: false,
        };
        match events.iter().position(|e| e.outdated) {
            Some(i) => events[i] = event,
            None => events.push(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn behavior(v: serde_json::Value) -> HorizontalPodAutoscalerBehavior {
        // Defaulted as the apiserver stores it.
        let mut obj = json!({"spec": {"behavior": v}});
        crate::apiserver::admission::autoscaling::defaults(&mut obj);
        serde_json::from_value(obj["spec"]["behavior"].clone()).expect("behavior")
    }

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn without_behavior_a_scale_down_waits_for_the_window() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.init(5, t0);
        let b = Bounds {
            min: 1,
            max: 10,
            current: 5,
        };
        let (out, conds) = h.normalize(2, b, FIVE_MIN, t0 + Duration::from_secs(60));
        assert_eq!(out, 5, "the recommendation of 5 a minute ago holds");
        assert_eq!(conds[0].2, "ScaleDownStabilized");
        let (out, conds) = h.normalize(2, b, FIVE_MIN, t0 + Duration::from_secs(400));
        assert_eq!(out, 2, "older recommendations are forgotten");
        assert_eq!(conds[0].2, "ReadyForNewScale");
        assert_eq!(
            conds[1],
            (
                "ScalingLimited",
                "False",
                "DesiredWithinRange",
                "the desired count is within the acceptable range"
            )
        );
    }

    #[test]
    fn without_behavior_a_scale_up_is_limited_to_double_or_four() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.init(1, t0);
        let (out, conds) = h.normalize(
            20,
            Bounds {
                min: 1,
                max: 30,
                current: 1,
            },
            FIVE_MIN,
            t0,
        );
        assert_eq!(out, 4);
        assert_eq!(conds[1].0, "ScalingLimited");
        assert_eq!(conds[1].1, "True");
        assert_eq!(conds[1].2, "ScaleUpLimit");
        let (out, conds) = h.normalize(
            20,
            Bounds {
                min: 1,
                max: 3,
                current: 1,
            },
            FIVE_MIN,
            t0,
        );
        assert_eq!((out, conds[1].2), (3, "TooManyReplicas"));
        let mut h = History::default();
        let (out, conds) = h.normalize(
            0,
            Bounds {
                min: 2,
                max: 3,
                current: 2,
            },
            FIVE_MIN,
            t0,
        );
        assert_eq!((out, conds[1].2), (2, "TooFewReplicas"));
    }

    #[test]
    fn a_short_scale_down_window_lets_the_size_fall_soon() {
        let t0 = Instant::now();
        let b = behavior(json!({"scaleDown": {"stabilizationWindowSeconds": 10}}));
        let mut h = History::default();
        h.init(4, t0);
        let bounds = Bounds {
            min: 1,
            max: 10,
            current: 4,
        };
        let (out, _) =
            h.normalize_with_behavior(1, bounds, &b, FIVE_MIN, t0 + Duration::from_secs(5));
        assert_eq!(out, 4, "within 10 s the old recommendation of 4 holds");
        let (out, conds) =
            h.normalize_with_behavior(1, bounds, &b, FIVE_MIN, t0 + Duration::from_secs(20));
        assert_eq!(
            out, 1,
            "after 10 s the default −100 % policy allows going to 1: {conds:?}"
        );
    }

    #[test]
    fn unset_scale_down_window_is_the_controllers_five_minutes() {
        let t0 = Instant::now();
        let b = behavior(json!({"scaleUp": {"stabilizationWindowSeconds": 0}}));
        let mut h = History::default();
        h.init(4, t0);
        let bounds = Bounds {
            min: 1,
            max: 10,
            current: 4,
        };
        let (out, conds) =
            h.normalize_with_behavior(1, bounds, &b, FIVE_MIN, t0 + Duration::from_secs(200));
        assert_eq!(out, 4);
        assert_eq!(conds[0].2, "ScaleDownStabilized");
    }

    #[test]
    fn pods_and_percent_policies_limit_the_rate_per_period() {
        let t0 = Instant::now();
        // At most +1 pod per 60 s, or +50 %: Max picks the larger, Min the smaller.
        let policies = json!([{"type": "Pods", "value": 1, "periodSeconds": 60}, {"type": "Percent", "value": 50, "periodSeconds": 60}]);
        let max = behavior(json!({"scaleUp": {"policies": policies, "selectPolicy": "Max"}}));
        let min = behavior(json!({"scaleUp": {"policies": policies, "selectPolicy": "Min"}}));
        let bounds = Bounds {
            min: 1,
            max: 100,
            current: 4,
        };
        let mut h = History::default();
        let (out, conds) = h.normalize_with_behavior(10, bounds, &max, FIVE_MIN, t0);
        assert_eq!(out, 6, "ceil(4 × 1.5) beats 4 + 1");
        assert_eq!(conds[1].2, "ScaleUpLimit");
        let mut h = History::default();
        let (out, _) = h.normalize_with_behavior(10, bounds, &min, FIVE_MIN, t0);
        assert_eq!(out, 5);
        // Having gone 4 → 6 just now, the period starts at 4 again: still at most 6.
        let mut h = History::default();
        h.record_scale(Some(&max), 4, 6, t0);
        let (out, _) = h.normalize_with_behavior(
            10,
            Bounds {
                current: 6,
                ..bounds
            },
            &max,
            FIVE_MIN,
            t0 + Duration::from_secs(30),
        );
        assert_eq!(out, 6);
        // After the period, from 6: ceil(6 × 1.5) = 9.
        let (out, _) = h.normalize_with_behavior(
            10,
            Bounds {
                current: 6,
                ..bounds
            },
            &max,
            FIVE_MIN,
            t0 + Duration::from_secs(61),
        );
        assert_eq!(out, 9);
    }

    #[test]
    fn a_disabled_direction_never_moves() {
        let t0 = Instant::now();
        let b = behavior(
            json!({"scaleDown": {"selectPolicy": "Disabled", "stabilizationWindowSeconds": 0}}),
        );
        let mut h = History::default();
        let (out, conds) = h.normalize_with_behavior(
            1,
            Bounds {
                min: 1,
                max: 10,
                current: 5,
            },
            &b,
            FIVE_MIN,
            t0,
        );
        assert_eq!(out, 5);
        assert_eq!(conds[1].2, "ScaleDownLimit");
    }
}
