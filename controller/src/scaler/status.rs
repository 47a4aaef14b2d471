//! ScalingTrigger status from one pass of the autoscaler: pure, tested
//! without an API server. Conditions and reasons follow HPA's
//! (`AbleToScale`, `ScalingActive`, `ScalingLimited`) so that whoever
//! reads `kubectl describe hpa` reads these too.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use sluice_crds::{MetricStatus, ScalingTrigger, ScalingTriggerStatus};

use crate::autoscale::{Decision, Observed, Reason};
use crate::conditions::condition;

/// What one pass found for a trigger.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// The spec cannot be used (`spec.<field>: …`).
    InvalidSpec(String),
    /// The target's `/scale` could not be read.
    NoScale(String),
    /// A decision was made.
    Decided {
        /// The decision.
        decision: &'a Decision,
        /// Whether the trigger's pool exists.
        pool_found: bool,
        /// The `/scale` patch failed with this error.
        update_error: Option<String>,
    },
}

/// The status the trigger should have. `last_scale_time` is the last
/// successful patch (kept from the previous status otherwise).
pub fn desired_status(
    trigger: &ScalingTrigger,
    outcome: &Outcome<'_>,
    last_scale_time: Option<Time>,
    now: Timestamp,
) -> ScalingTriggerStatus {
    let previous = trigger.status.as_ref();
    let before = previous.map_or(&[][..], |s| &s.conditions[..]);
    let generation = trigger.metadata.generation;
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(before, type_, ok, reason, message, generation, now)
    };
    let last_scale_time =
        last_scale_time.or_else(|| previous.and_then(|s| s.last_scale_time.clone()));
    let mut status = ScalingTriggerStatus {
        observed_generation: generation,
        current_replicas: previous.and_then(|s| s.current_replicas),
        desired_replicas: previous.and_then(|s| s.desired_replicas),
        last_scale_time,
        current_metrics: vec![],
        conditions: vec![],
    };
    match outcome {
        Outcome::InvalidSpec(message) => {
            status.conditions = vec![
                cond("AbleToScale", false, "InvalidSpec", message.clone()),
                cond("ScalingActive", false, "InvalidSpec", message.clone()),
            ];
        }
        Outcome::NoScale(message) => {
            // As HPA: only AbleToScale changes; the others stay as they were.
            status.conditions = vec![cond(
                "AbleToScale",
                false,
                "FailedGetScale",
                message.clone(),
            )];
            status
                .conditions
                .extend(before.iter().filter(|c| c.type_ != "AbleToScale").cloned());
        }
        Outcome::Decided {
            decision,
            pool_found,
            update_error,
        } => {
            status.current_replicas = Some(decision.current);
            status.desired_replicas = Some(decision.desired);
            status.current_metrics = decision.metrics.iter().map(metric_status).collect();
            status.conditions = vec![
                able_to_scale(decision, update_error.as_deref(), &cond),
                scaling_active(trigger, decision, *pool_found, &cond),
                match decision.limited {
                    Some(limit) => cond(
                        "ScalingLimited",
                        true,
                        limit.reason(),
                        limit.message().into(),
                    ),
                    None => cond(
                        "ScalingLimited",
                        false,
                        "DesiredWithinRange",
                        "the desired count is within the acceptable range".into(),
                    ),
                },
            ];
        }
    }
    status
}

fn able_to_scale(
    decision: &Decision,
    update_error: Option<&str>,
    cond: &impl Fn(&str, bool, &str, String) -> Condition,
) -> Condition {
    if let Some(error) = update_error {
        return cond(
            "AbleToScale",
            false,
            "FailedUpdateScale",
            format!("the controller was unable to update the target scale: {error}"),
        );
    }
    if let Some(s) = decision.stabilized {
        return cond("AbleToScale", true, s.reason(), s.message().into());
    }
    if decision.changed() {
        return cond(
            "AbleToScale",
            true,
            "SucceededRescale",
            format!(
                "the controller was able to update the target scale to {}",
                decision.desired
            ),
        );
    }
    cond(
        "AbleToScale",
        true,
        "ReadyForNewScale",
        "recommended size matches current size".into(),
    )
}

fn scaling_active(
    trigger: &ScalingTrigger,
    decision: &Decision,
    pool_found: bool,
    cond: &impl Fn(&str, bool, &str, String) -> Condition,
) -> Condition {
    let pool = &trigger.spec.pool_ref.name;
    if decision.reason == Reason::ScalingDisabled {
        return cond(
            "ScalingActive",
            false,
            "ScalingDisabled",
            decision.reason.to_string(),
        );
    }
    if !pool_found {
        return cond(
            "ScalingActive",
            false,
            "FailedGetPool",
            format!("BackendPool {pool} does not exist in this namespace"),
        );
    }
    if decision.current == 0 && decision.desired == 0 {
        return cond(
            "ScalingActive",
            true,
            "ScaledToZero",
            format!("the target is at zero replicas; a request to BackendPool {pool} activates it"),
        );
    }
    match (decision.metrics.first(), decision.missing.first()) {
        (None, Some(_)) => cond(
            "ScalingActive",
            false,
            "FailedGetMetrics",
            format!("no dataplane reported the traffic of BackendPool {pool} in the window"),
        ),
        (None, None) => cond(
            "ScalingActive",
            true,
            "NoMetricsConfigured",
            "no metric is configured: only bounds and schedules apply".into(),
        ),
        (Some(_), _) => {
            let names: Vec<String> = decision
                .metrics
                .iter()
                .map(|p| format!("{:?}", p.target.metric_type()))
                .collect();
            cond(
                "ScalingActive",
                true,
                "ValidMetricFound",
                format!(
                    "the controller was able to compute a replica count from {}",
                    names.join(", ")
                ),
            )
        }
    }
}

fn metric_status(p: &crate::autoscale::Proposal) -> MetricStatus {
    let type_ = p.target.metric_type();
    match p.observed {
        // Milli-units, as HPA's quantities: readable, and not a new
        // value for every last digit of a float.
        Observed::AverageValue(v) => MetricStatus {
            type_,
            average_value: Some((v * 1000.0).round() / 1000.0),
            value: None,
        },
        Observed::Value(d) => MetricStatus {
            type_,
            average_value: None,
            value: Some(format!("{}ms", d.as_millis())),
        },
    }
}

/// Whether two statuses differ in anything but `currentMetrics` (which
/// moves with every report and is refreshed less often).
pub fn differs_beyond_metrics(a: &ScalingTriggerStatus, b: &ScalingTriggerStatus) -> bool {
    let strip = |s: &ScalingTriggerStatus| ScalingTriggerStatus {
        current_metrics: vec![],
        ..s.clone()
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::{Limit, Proposal, Stabilized, Target};
    use kube::api::ObjectMeta;

    fn trigger() -> ScalingTrigger {
        let spec = serde_json::from_value(serde_json::json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "poolRef": {"name": "web"}, "minReplicas": 1, "maxReplicas": 10,
            "metrics": [{"type": "RequestsPerSecond", "averageValue": 100}],
        }))
        .expect("spec");
        ScalingTrigger {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }

    fn decision(current: i32, desired: i32) -> Decision {
        let proposal = Proposal {
            target: Target::RequestsPerSecond(100.0),
            observed: Observed::AverageValue(161.0004),
            ratio: 1.61,
            replicas: desired,
        };
        Decision {
            current,
            desired,
            reason: Reason::Metric(proposal),
            stabilized: None,
            limited: None,
            metrics: vec![proposal],
            missing: vec![],
        }
    }

    fn reasons(s: &ScalingTriggerStatus) -> Vec<(&str, &str, &str)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("valid")
    }

    #[test]
    fn a_scale_up_reports_the_numbers_and_hpa_reasons() {
        let d = decision(3, 5);
        let outcome = Outcome::Decided {
            decision: &d,
            pool_found: true,
            update_error: None,
        };
        let s = desired_status(&trigger(), &outcome, Some(Time(now())), now());
        assert_eq!((s.current_replicas, s.desired_replicas), (Some(3), Some(5)));
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.current_metrics[0].average_value, Some(161.0));
        assert_eq!(
            reasons(&s),
            vec![
                ("AbleToScale", "True", "SucceededRescale"),
                ("ScalingActive", "True", "ValidMetricFound"),
                ("ScalingLimited", "False", "DesiredWithinRange"),
            ]
        );
    }

    #[test]
    fn limits_stabilization_and_failures_become_conditions() {
        let mut d = decision(3, 3);
        d.stabilized = Some(Stabilized::ScaleDownStabilized);
        d.limited = Some(Limit::TooManyReplicas);
        let outcome = Outcome::Decided {
            decision: &d,
            pool_found: false,
            update_error: None,
        };
        let s = desired_status(&trigger(), &outcome, None, now());
        assert_eq!(
            reasons(&s),
            vec![
                ("AbleToScale", "True", "ScaleDownStabilized"),
                ("ScalingActive", "False", "FailedGetPool"),
                ("ScalingLimited", "True", "TooManyReplicas"),
            ]
        );
        let d = decision(3, 6);
        let failed = Outcome::Decided {
            decision: &d,
            pool_found: true,
            update_error: Some("forbidden".into()),
        };
        let s = desired_status(&trigger(), &failed, None, now());
        assert_eq!(s.conditions[0].reason, "FailedUpdateScale");
        assert!(s.conditions[0].message.contains("forbidden"));
        let s = desired_status(
            &trigger(),
            &Outcome::NoScale("deployments.apps \"web\" not found".into()),
            None,
            now(),
        );
        assert_eq!(
            reasons(&s),
            vec![("AbleToScale", "False", "FailedGetScale")]
        );
    }

    #[test]
    fn transition_times_survive_an_unchanged_condition() {
        let d = decision(3, 3);
        let outcome = Outcome::Decided {
            decision: &d,
            pool_found: true,
            update_error: None,
        };
        let mut t = trigger();
        let first = desired_status(&t, &outcome, None, now());
        t.status = Some(first.clone());
        let later = Timestamp::from_second(1_800_000_100).expect("valid");
        let second = desired_status(&t, &outcome, None, later);
        assert_eq!(first, second);
        let mut moved = second.clone();
        moved.current_metrics.clear();
        assert!(!differs_beyond_metrics(&second, &moved));
        moved.desired_replicas = Some(4);
        assert!(differs_beyond_metrics(&second, &moved));
    }
}
