//! `autoscaling/v2` behavior: stabilization windows and rate policies.
//!
//! A transcription of the HPA controller's
//! `normalizeDesiredReplicasWithBehaviors` and the functions it calls in
//! kubernetes `pkg/controller/podautoscaler/horizontal.go`
//! (`stabilizeRecommendationWithBehaviors`,
//! `convertDesiredReplicasWithBehaviorRate`,
//! `calculateScaleUpLimitWithScalingRules`,
//! `calculateScaleDownLimitWithBehaviors`, `getReplicasChangePerPeriod`,
//! `storeScaleEvent`, `maybeInitScaleDownStabilizationWindow`), with the
//! clock passed in and the per-HPA maps replaced by one [`BehaviorHistory`]
//! per trigger. Defaults are those of `pkg/apis/autoscaling/v2/defaults.go`.

use jiff::{SignedDuration, Timestamp};
use sluice_crds::{self as crd, ScalingPolicyType, SelectPolicy};

/// One rate limit, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Pods or Percent.
    pub kind: ScalingPolicyType,
    /// Replicas, or percent of the replicas at the period's start.
    pub value: i32,
    /// Length of the period the change is counted over.
    pub period_seconds: i32,
}

/// Rules for one direction with the HPA defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// How far back recommendations are remembered.
    pub stabilization_window_seconds: i32,
    /// Rate limits; never empty once defaulted.
    pub policies: Vec<Policy>,
    /// Which policy wins.
    pub select_policy: SelectPolicy,
}

/// Both directions, resolved once from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behavior {
    /// Growing.
    pub scale_up: Rules,
    /// Shrinking.
    pub scale_down: Rules,
}

impl Default for Behavior {
    fn default() -> Self {
        Self::from_spec(None)
    }
}

impl Behavior {
    /// Fills in each missing field separately, as HPA's
    /// `GenerateHPAScaleUpRules` / `GenerateHPAScaleDownRules` do:
    /// scale up 0 s window, max(100 %, 4 pods) per 15 s; scale down 300 s
    /// window, 100 % per 15 s; `selectPolicy: Max`.
    pub fn from_spec(spec: Option<&crd::Behavior>) -> Self {
        let up = spec.and_then(|b| b.scale_up.as_ref());
        let down = spec.and_then(|b| b.scale_down.as_ref());
        Self {
            scale_up: Rules::resolve(
                up,
                0,
                &[
                    Policy {
                        kind: ScalingPolicyType::Pods,
                        value: 4,
                        period_seconds: 15,
                    },
                    Policy {
                        kind: ScalingPolicyType::Percent,
                        value: 100,
                        period_seconds: 15,
                    },
                ],
            ),
            scale_down: Rules::resolve(
                down,
                300,
                &[Policy {
                    kind: ScalingPolicyType::Percent,
                    value: 100,
                    period_seconds: 15,
                }],
            ),
        }
    }
}

impl Rules {
    fn resolve(spec: Option<&crd::ScalingRules>, window: i32, policies: &[Policy]) -> Self {
        let given: Vec<Policy> = spec
            .map(|r| {
                r.policies
                    .iter()
                    .map(|p| Policy {
                        kind: p.type_,
                        value: p.value,
                        period_seconds: p.period_seconds,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            stabilization_window_seconds: spec
                .and_then(|r| r.stabilization_window_seconds)
                .unwrap_or(window)
                .max(0),
            policies: if given.is_empty() {
                policies.to_vec()
            } else {
                given
            },
            select_policy: spec
                .and_then(|r| r.select_policy)
                .unwrap_or(SelectPolicy::Max),
        }
    }

    fn longest_period(&self) -> i32 {
        self.policies
            .iter()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0)
    }
}

/// What the autoscaler remembers between decisions, as the HPA controller
/// keeps `recommendations`, `scaleUpEvents` and `scaleDownEvents` per HPA.
/// A new leader starts empty; see [`BehaviorHistory::init`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BehaviorHistory {
    recommendations: Vec<(Timestamp, i32)>,
    scale_up_events: Vec<(Timestamp, i32)>,
    scale_down_events: Vec<(Timestamp, i32)>,
    initialized: bool,
}

impl BehaviorHistory {
    /// HPA's `maybeInitScaleDownStabilizationWindow`: the first decision
    /// after a (re)start counts the current size as a recommendation, so a
    /// new leader does not scale down before a full window has passed.
    fn init(&mut self, rules: &Behavior, now: Timestamp, current: i32) {
        if !self.initialized {
            self.initialized = true;
            if rules.scale_down.stabilization_window_seconds > 0 && self.recommendations.is_empty()
            {
                self.recommendations.push((now, current));
            }
        }
    }

    /// Records a scale the target actually took (HPA's `storeScaleEvent`,
    /// called after a successful `/scale` update). Events older than the
    /// longest policy period of their direction are dropped.
    pub fn record_scale(&mut self, behavior: &Behavior, now: Timestamp, from: i32, to: i32) {
        let (events, rules, change) = if to > from {
            (&mut self.scale_up_events, &behavior.scale_up, to - from)
        } else if to < from {
            (&mut self.scale_down_events, &behavior.scale_down, from - to)
        } else {
            return;
        };
        let cutoff = now - SignedDuration::from_secs(i64::from(rules.longest_period()));
        events.retain(|(at, _)| *at > cutoff);
        events.push((now, change));
    }

    /// The recommendations remembered, oldest first (for tests and debug).
    pub fn recommendations(&self) -> &[(Timestamp, i32)] {
        &self.recommendations
    }
}

/// Why stabilization changed the recommendation: the `AbleToScale` reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stabilized {
    /// Recent recommendations were lower; the lowest applies.
    ScaleUpStabilized,
    /// Recent recommendations were higher; the highest applies.
    ScaleDownStabilized,
}

impl Stabilized {
    /// The condition reason, as HPA writes it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ScaleUpStabilized => "ScaleUpStabilized",
            Self::ScaleDownStabilized => "ScaleDownStabilized",
        }
    }

    /// The condition message, as HPA writes it.
    pub fn message(self) -> &'static str {
        match self {
            Self::ScaleUpStabilized => {
                "recent recommendations were lower than current one, applying the lowest recent recommendation"
            }
            Self::ScaleDownStabilized => {
                "recent recommendations were higher than current one, applying the highest recent recommendation"
            }
        }
    }
}

/// What held the count back: `ScalingLimited=True` with this reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A scale-up policy allowed less.
    ScaleUpLimit,
    /// A scale-down policy allowed less.
    ScaleDownLimit,
    /// `maxReplicas` allowed less.
    TooManyReplicas,
    /// `minReplicas` (or a schedule's floor) allowed less.
    TooFewReplicas,
}

impl Limit {
    /// Every limit, for metrics that give each reason a series.
    pub const ALL: [Self; 4] = [
        Self::ScaleUpLimit,
        Self::ScaleDownLimit,
        Self::TooManyReplicas,
        Self::TooFewReplicas,
    ];

    /// The condition reason, as HPA writes it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ScaleUpLimit => "ScaleUpLimit",
            Self::ScaleDownLimit => "ScaleDownLimit",
            Self::TooManyReplicas => "TooManyReplicas",
            Self::TooFewReplicas => "TooFewReplicas",
        }
    }

    /// The condition message, as HPA writes it.
    pub fn message(self) -> &'static str {
        match self {
            Self::ScaleUpLimit => {
                "the desired replica count is increasing faster than the maximum scale rate"
            }
            Self::ScaleDownLimit => {
                "the desired replica count is decreasing faster than the maximum scale rate"
            }
            Self::TooManyReplicas => {
                "the desired replica count is more than the maximum replica count"
            }
            Self::TooFewReplicas => {
                "the desired replica count is less than the minimum replica count"
            }
        }
    }
}

/// The outcome of [`normalize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Normalized {
    /// The count to ask for.
    pub desired: i32,
    /// Set when stabilization moved the recommendation.
    pub stabilized: Option<Stabilized>,
    /// Set when a policy or a bound moved the stabilized count.
    pub limited: Option<Limit>,
}

/// Inputs of [`normalize`] (HPA's `NormalizationArg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Replicas the target has now (`/scale` `spec.replicas`).
    pub current: i32,
    /// Lower bound of the result.
    pub min: i32,
    /// Upper bound of the result.
    pub max: i32,
}

/// HPA's `normalizeDesiredReplicasWithBehaviors`: stabilizes
/// `recommendation` against the remembered ones, records it, then applies
/// the rate policies and the bounds. With `stabilize` false the window is
/// skipped (the recommendation is still recorded): scale to zero after
/// `idleAfter`, whose idle period is already its own window.
pub fn normalize(
    behavior: &Behavior,
    history: &mut BehaviorHistory,
    now: Timestamp,
    bounds: Bounds,
    recommendation: i32,
    stabilize: bool,
) -> Normalized {
    history.init(behavior, now, bounds.current);
    let stabilized_to = stabilize_recommendation(behavior, history, now, bounds, recommendation);
    let stabilized = if !stabilize || stabilized_to == recommendation {
        None
    } else if recommendation >= bounds.current {
        Some(Stabilized::ScaleUpStabilized)
    } else {
        Some(Stabilized::ScaleDownStabilized)
    };
    let target = if stabilize {
        stabilized_to
    } else {
        recommendation
    };
    let (desired, limit) = apply_rate(behavior, history, now, bounds, target);
    Normalized {
        desired,
        stabilized,
        limited: (desired != target).then_some(limit).flatten(),
    }
}

/// HPA's `stabilizeRecommendationWithBehaviors`. A sample counts when it is
/// strictly after the cutoff; one older than both windows is overwritten
/// instead of growing the list.
fn stabilize_recommendation(
    behavior: &Behavior,
    history: &mut BehaviorHistory,
    now: Timestamp,
    bounds: Bounds,
    desired: i32,
) -> i32 {
    let up_cutoff =
        now - SignedDuration::from_secs(i64::from(behavior.scale_up.stabilization_window_seconds));
    let down_cutoff = now
        - SignedDuration::from_secs(i64::from(behavior.scale_down.stabilization_window_seconds));
    let mut up = desired;
    let mut down = desired;
    let mut old_sample = None;
    for (i, (at, rec)) in history.recommendations.iter().enumerate() {
        if *at > up_cutoff {
            up = up.min(*rec);
        }
        if *at > down_cutoff {
            down = down.max(*rec);
        }
        if *at < up_cutoff && *at < down_cutoff {
            old_sample = Some(i);
        }
    }
    let recommendation = bounds.current.max(up).min(down);
    match old_sample {
        Some(i) => history.recommendations[i] = (now, desired),
        None => history.recommendations.push((now, desired)),
    }
    recommendation
}

/// HPA's `convertDesiredReplicasWithBehaviorRate`.
fn apply_rate(
    behavior: &Behavior,
    history: &BehaviorHistory,
    now: Timestamp,
    bounds: Bounds,
    desired: i32,
) -> (i32, Option<Limit>) {
    let Bounds { current, min, max } = bounds;
    if desired > current {
        let limit = scale_up_limit(current, history, now, &behavior.scale_up).max(current);
        let (allowed, reason) = if max > limit {
            (limit, Limit::ScaleUpLimit)
        } else {
            (max, Limit::TooManyReplicas)
        };
        if desired > allowed {
            return (allowed, Some(reason));
        }
    } else if desired < current {
        let limit = scale_down_limit(current, history, now, &behavior.scale_down).min(current);
        let (allowed, reason) = if min < limit {
            (limit, Limit::ScaleDownLimit)
        } else {
            (min, Limit::TooFewReplicas)
        };
        if desired < allowed {
            return (allowed, Some(reason));
        }
    }
    (desired, None)
}

/// HPA's `getReplicasChangePerPeriod`: the change of the events strictly
/// after `now - period`.
fn change_in_period(events: &[(Timestamp, i32)], now: Timestamp, period_seconds: i32) -> i32 {
    let cutoff = now - SignedDuration::from_secs(i64::from(period_seconds));
    events
        .iter()
        .filter(|(at, _)| *at > cutoff)
        .map(|(_, change)| change)
        .sum()
}

fn period_start(current: i32, history: &BehaviorHistory, now: Timestamp, policy: &Policy) -> i32 {
    current - change_in_period(&history.scale_up_events, now, policy.period_seconds)
        + change_in_period(&history.scale_down_events, now, policy.period_seconds)
}

/// HPA's `calculateScaleUpLimitWithScalingRules`. Percent rounds up, so a
/// small target can always grow.
fn scale_up_limit(current: i32, history: &BehaviorHistory, now: Timestamp, rules: &Rules) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => i32::min,
        SelectPolicy::Max => i32::max,
    };
    let mut result = match rules.select_policy {
        SelectPolicy::Min => i32::MAX,
        _ => i32::MIN,
    };
    for policy in &rules.policies {
        let start = period_start(current, history, now, policy);
        let proposed = match policy.kind {
            ScalingPolicyType::Pods => start.saturating_add(policy.value),
            ScalingPolicyType::Percent => {
                to_i32((f64::from(start) * (1.0 + f64::from(policy.value) / 100.0)).ceil())
            }
        };
        result = pick(result, proposed);
    }
    result
}

/// HPA's `calculateScaleDownLimitWithBehaviors`. Percent truncates (the Go
/// `int32(float64)` conversion), so 50 % of 3 leaves 1.
fn scale_down_limit(current: i32, history: &BehaviorHistory, now: Timestamp, rules: &Rules) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => i32::max,
        SelectPolicy::Max => i32::min,
    };
    let mut result = match rules.select_policy {
        SelectPolicy::Min => i32::MIN,
        _ => i32::MAX,
    };
    for policy in &rules.policies {
        let start = period_start(current, history, now, policy);
        let proposed = match policy.kind {
            ScalingPolicyType::Pods => start.saturating_sub(policy.value),
            ScalingPolicyType::Percent => {
                to_i32((f64::from(start) * (1.0 - f64::from(policy.value) / 100.0)).trunc())
            }
        };
        result = pick(result, proposed);
    }
    result
}

/// Saturating float-to-int, as replica counts never leave `i32`.
pub(crate) fn to_i32(value: f64) -> i32 {
    if value.is_nan() {
        0
    } else {
        value.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("valid")
    }

    fn rules(
        window: i32,
        select: SelectPolicy,
        policies: &[(ScalingPolicyType, i32, i32)],
    ) -> Rules {
        Rules {
            stabilization_window_seconds: window,
            policies: policies
                .iter()
                .map(|&(kind, value, period_seconds)| Policy {
                    kind,
                    value,
                    period_seconds,
                })
                .collect(),
            select_policy: select,
        }
    }

    const PODS: ScalingPolicyType = ScalingPolicyType::Pods;
    const PERCENT: ScalingPolicyType = ScalingPolicyType::Percent;

    fn bounds(current: i32) -> Bounds {
        Bounds {
            current,
            min: 1,
            max: 100,
        }
    }

    #[test]
    fn defaults_are_those_of_autoscaling_v2() {
        let b = Behavior::default();
        assert_eq!(b.scale_up.stabilization_window_seconds, 0);
        assert_eq!(b.scale_down.stabilization_window_seconds, 300);
        assert_eq!(b.scale_up.select_policy, SelectPolicy::Max);
        assert_eq!(
            b.scale_up,
            rules(0, SelectPolicy::Max, &[(PODS, 4, 15), (PERCENT, 100, 15)])
        );
        assert_eq!(
            b.scale_down,
            rules(300, SelectPolicy::Max, &[(PERCENT, 100, 15)])
        );
    }

    #[test]
    fn a_partial_spec_keeps_the_other_defaults() {
        let spec = crd::Behavior {
            scale_up: None,
            scale_down: Some(crd::ScalingRules {
                stabilization_window_seconds: Some(60),
                policies: vec![],
                select_policy: None,
            }),
        };
        let b = Behavior::from_spec(Some(&spec));
        assert_eq!(
            b.scale_down,
            rules(60, SelectPolicy::Max, &[(PERCENT, 100, 15)])
        );
        assert_eq!(b.scale_up, Behavior::default().scale_up);
    }

    /// Default scale up: 100 % or 4 pods per 15 s, whichever is more.
    #[test]
    fn default_scale_up_rate_table() {
        // (current, desired, expected, limited)
        let cases = [
            (1, 10, 5, Some(Limit::ScaleUpLimit)), // 1 + 4 pods beats 2 (100 %)
            (2, 10, 6, Some(Limit::ScaleUpLimit)), // 2 + 4 beats 4
            (4, 10, 8, Some(Limit::ScaleUpLimit)), // 4 + 4 == 8 (100 %)
            (10, 50, 20, Some(Limit::ScaleUpLimit)), // 100 % beats 4 pods
            (10, 15, 15, None),
            (60, 200, 100, Some(Limit::TooManyReplicas)),
        ];
        for (current, desired, expected, limited) in cases {
            let mut h = BehaviorHistory::default();
            let n = normalize(
                &Behavior::default(),
                &mut h,
                t(0),
                bounds(current),
                desired,
                true,
            );
            assert_eq!(
                (n.desired, n.limited),
                (expected, limited),
                "{current} -> {desired}"
            );
        }
    }

    #[test]
    fn scale_events_within_the_period_count_against_the_policy() {
        let b = Behavior::default();
        let mut h = BehaviorHistory::default();
        // 2 -> 6 at t=0; at t=10 the period still starts at 2: 2 + 4 = 6 max.
        h.record_scale(&b, t(0), 2, 6);
        let n = normalize(&b, &mut h, t(10), bounds(6), 20, true);
        assert_eq!((n.desired, n.limited), (6, Some(Limit::ScaleUpLimit)));
        // Once the event leaves the 15 s period (strictly after the cutoff),
        // the next step is measured from 6.
        let n = normalize(&b, &mut h, t(15), bounds(6), 20, true);
        assert_eq!((n.desired, n.limited), (12, Some(Limit::ScaleUpLimit)));
    }

    /// Percent rounding: up rounds up (`math.Ceil`), down truncates.
    #[test]
    fn percent_rounding_like_hpa() {
        // (current, value %, up limit, down limit)
        let cases = [
            (1, 10, 2, 0), // ceil(1.1) = 2; trunc(0.9) = 0
            (3, 50, 5, 1), // ceil(4.5) = 5; trunc(1.5) = 1
            (10, 10, 11, 9),
            (7, 100, 14, 0),
            (9, 33, 12, 6), // ceil(11.97) = 12; trunc(6.03) = 6
        ];
        for (current, value, up, down) in cases {
            let r = rules(0, SelectPolicy::Max, &[(PERCENT, value, 60)]);
            let h = BehaviorHistory::default();
            assert_eq!(
                scale_up_limit(current, &h, t(0), &r),
                up,
                "{current} +{value}%"
            );
            assert_eq!(
                scale_down_limit(current, &h, t(0), &r),
                down,
                "{current} -{value}%"
            );
        }
    }

    #[test]
    fn select_policy_min_max_disabled() {
        let policies = [(PODS, 4, 60), (PERCENT, 50, 60)];
        // current 10: Pods allows 14 up / 6 down; Percent allows 15 up / 5 down.
        let cases = [
            (SelectPolicy::Max, 15, 5),
            (SelectPolicy::Min, 14, 6),
            (SelectPolicy::Disabled, 10, 10),
        ];
        for (select, up, down) in cases {
            let b = Behavior {
                scale_up: rules(0, select, &policies),
                scale_down: rules(0, select, &policies),
            };
            let mut h = BehaviorHistory::default();
            let n = normalize(&b, &mut h, t(0), bounds(10), 50, true);
            assert_eq!(n.desired, up, "{select:?} up");
            let mut h = BehaviorHistory::default();
            let n = normalize(&b, &mut h, t(0), bounds(10), 1, true);
            assert_eq!(n.desired, down, "{select:?} down");
            // Disabled returns current as the limit: HPA reports that as
            // ScaleDownLimit too.
            assert_eq!(n.limited, Some(Limit::ScaleDownLimit), "{select:?}");
        }
    }

    #[test]
    fn scale_down_stops_at_min_as_too_few_replicas() {
        let b = Behavior {
            scale_up: Behavior::default().scale_up,
            scale_down: rules(0, SelectPolicy::Max, &[(PERCENT, 100, 15)]),
        };
        let mut h = BehaviorHistory::default();
        let n = normalize(
            &b,
            &mut h,
            t(0),
            Bounds {
                current: 8,
                min: 3,
                max: 10,
            },
            1,
            true,
        );
        assert_eq!((n.desired, n.limited), (3, Some(Limit::TooFewReplicas)));
    }

    /// The HPA docs' example: with a 300 s down window, the highest
    /// recommendation of the last five minutes applies.
    #[test]
    fn scale_down_window_takes_the_highest_recent_recommendation() {
        let b = Behavior::default();
        let mut h = BehaviorHistory::default();
        // First decision: the current size (10) is remembered as well.
        let n = normalize(&b, &mut h, t(0), bounds(10), 10, true);
        assert_eq!(n.desired, 10);
        let n = normalize(&b, &mut h, t(60), bounds(10), 8, true);
        assert_eq!(
            (n.desired, n.stabilized),
            (10, Some(Stabilized::ScaleDownStabilized))
        );
        let n = normalize(&b, &mut h, t(120), bounds(10), 4, true);
        assert_eq!(n.desired, 10);
        // At 300 s the t=0 samples leave the window (strictly after cutoff).
        let n = normalize(&b, &mut h, t(300), bounds(10), 4, true);
        assert_eq!(n.desired, 8);
        let n = normalize(&b, &mut h, t(360), bounds(8), 4, true);
        assert_eq!(n.desired, 4);
    }

    #[test]
    fn scale_up_window_takes_the_lowest_recent_recommendation() {
        let b = Behavior {
            scale_up: rules(60, SelectPolicy::Max, &[(PODS, 100, 15)]),
            scale_down: rules(0, SelectPolicy::Max, &[(PERCENT, 100, 15)]),
        };
        let mut h = BehaviorHistory::default();
        assert_eq!(normalize(&b, &mut h, t(0), bounds(2), 2, true).desired, 2);
        let n = normalize(&b, &mut h, t(10), bounds(2), 9, true);
        assert_eq!(
            (n.desired, n.stabilized),
            (2, Some(Stabilized::ScaleUpStabilized))
        );
        let n = normalize(&b, &mut h, t(30), bounds(2), 7, true);
        assert_eq!(n.desired, 2);
        // t=0 (2) has left the window: the lowest left is 7.
        let n = normalize(&b, &mut h, t(60), bounds(2), 9, true);
        assert_eq!(n.desired, 7);
    }

    #[test]
    fn a_new_leader_does_not_scale_down_before_a_window() {
        let b = Behavior::default();
        let mut h = BehaviorHistory::default();
        let n = normalize(&b, &mut h, t(0), bounds(6), 2, true);
        assert_eq!(n.desired, 6);
        assert_eq!(h.recommendations().len(), 2);
    }

    #[test]
    fn history_stays_bounded() {
        let b = Behavior::default();
        let mut h = BehaviorHistory::default();
        for s in 0..5_000 {
            normalize(&b, &mut h, t(s), bounds(5), 5, true);
            h.record_scale(&b, t(s), 5, 6);
        }
        assert!(
            h.recommendations.len() <= 302,
            "{}",
            h.recommendations.len()
        );
        assert!(h.scale_up_events.len() <= 16, "{}", h.scale_up_events.len());
    }

    fn any_rules() -> impl Strategy<Value = Rules> {
        (
            0..400i32,
            prop_oneof![Just(SelectPolicy::Max), Just(SelectPolicy::Min)],
            proptest::collection::vec(
                (prop_oneof![Just(PODS), Just(PERCENT)], 1..150i32, 1..120i32),
                1..4,
            ),
        )
            .prop_map(|(w, s, p)| rules(w, s, &p))
    }

    proptest! {
        /// Over any sequence of recommendations, the replicas removed within
        /// any policy period never exceed what that policy allows, when
        /// there is a single policy.
        #[test]
        fn scale_down_never_exceeds_a_single_pods_policy(
            value in 1..10i32,
            period in 1..60i32,
            recs in proptest::collection::vec((1..10i64, 0..60i32), 1..60),
        ) {
            // No scale up in between: HPA counts the net change of a
            // period, so replicas added back could be removed again.
            let b = Behavior {
                scale_up: rules(0, SelectPolicy::Disabled, &[(PODS, 1, 15)]),
                scale_down: rules(0, SelectPolicy::Max, &[(PODS, value, period)]),
            };
            let mut h = BehaviorHistory::default();
            let mut now = 0;
            let mut current = 60;
            let mut log: Vec<(i64, i32)> = Vec::new();
            for (dt, rec) in recs {
                now += dt;
                let n = normalize(&b, &mut h, t(now), Bounds { current, min: 0, max: 60 }, rec, true);
                if n.desired < current {
                    log.push((now, current - n.desired));
                    h.record_scale(&b, t(now), current, n.desired);
                } else if n.desired > current {
                    h.record_scale(&b, t(now), current, n.desired);
                }
                current = n.desired;
                let removed: i32 = log
                    .iter()
                    .filter(|(at, _)| *at > now - i64::from(period))
                    .map(|(_, c)| c)
                    .sum();
                prop_assert!(removed <= value, "removed {removed} in {period}s, policy {value}");
            }
        }

        #[test]
        fn result_is_within_bounds_and_moves_toward_the_recommendation(
            b_up in any_rules(),
            b_down in any_rules(),
            current in 1..200i32,
            rec in 0..400i32,
            min in 1..50i32,
            span in 0..150i32,
        ) {
            let max = min + span;
            let current = current.clamp(min, max);
            let b = Behavior { scale_up: b_up, scale_down: b_down };
            let mut h = BehaviorHistory::default();
            let n = normalize(&b, &mut h, t(0), Bounds { current, min, max }, rec, true);
            prop_assert!(n.desired >= min && n.desired <= max);
            if rec >= current {
                prop_assert!(n.desired >= current);
            } else {
                prop_assert!(n.desired <= current);
            }
        }
    }
}
