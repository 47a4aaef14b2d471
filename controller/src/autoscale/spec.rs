//! The ScalingTrigger spec parsed once into the types the decision uses;
//! errors name the field and the value (they become a condition).

use std::time::Duration;

use jiff::SignedDuration;
use sluice_crds::{MetricType, ScalingTriggerSpec};

use super::behavior::Behavior;
use super::metrics::Target;
use super::schedule::Window;

/// A validated trigger spec.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Lower bound; 0 allows scale to zero.
    pub min_replicas: i32,
    /// Upper bound.
    pub max_replicas: i32,
    /// Metrics averaging window (used by the report aggregation).
    pub window: Duration,
    /// Metric targets, in spec order.
    pub targets: Vec<Target>,
    /// Schedule floors.
    pub schedules: Vec<Window>,
    /// With `min_replicas` 0: quiet time before scaling to zero.
    pub idle_after: Option<SignedDuration>,
    /// Behavior with HPA defaults filled in.
    pub behavior: Behavior,
}

/// A spec field that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct SpecError {
    /// Path of the field, as in `schedules[0].timezone`.
    pub field: String,
    /// What is wrong with its value.
    pub message: String,
}

fn error(field: impl Into<String>, message: impl ToString) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.to_string(),
    }
}

fn duration(field: &str, value: &str) -> Result<Duration, SpecError> {
    value
        .parse::<sluice_protocol::Duration>()
        .map(|d| d.get())
        .map_err(|e| error(field, e))
}

impl Spec {
    /// Parses and checks `spec`; the first unusable field is the error.
    pub fn from_crd(spec: &ScalingTriggerSpec) -> Result<Self, SpecError> {
        if spec.min_replicas < 0 {
            return Err(error(
                "minReplicas",
                format!("{} is negative", spec.min_replicas),
            ));
        }
        if spec.max_replicas < 1 || spec.max_replicas < spec.min_replicas {
            return Err(error(
                "maxReplicas",
                format!(
                    "{} must be at least 1 and at least minReplicas ({})",
                    spec.max_replicas, spec.min_replicas
                ),
            ));
        }
        let mut targets = Vec::with_capacity(spec.metrics.len());
        for (i, m) in spec.metrics.iter().enumerate() {
            let target = match m.type_ {
                MetricType::LatencyP99 => {
                    let field = format!("metrics[{i}].value");
                    let value = m
                        .value
                        .as_deref()
                        .ok_or_else(|| error(&field, "LatencyP99 needs a value (a duration)"))?;
                    let d = duration(&field, value)?;
                    if d.is_zero() {
                        return Err(error(field, "must be above zero"));
                    }
                    Target::LatencyP99(d)
                }
                kind => {
                    let field = format!("metrics[{i}].averageValue");
                    let per = m
                        .average_value
                        .filter(|v| v.is_finite() && *v > 0.0)
                        .ok_or_else(|| {
                            error(&field, format!("{kind:?} needs an averageValue above zero"))
                        })?;
                    if kind == MetricType::RequestsPerSecond {
                        Target::RequestsPerSecond(per)
                    } else {
                        Target::InFlightRequests(per)
                    }
                }
            };
            targets.push(target);
        }
        let mut schedules = Vec::with_capacity(spec.schedules.len());
        for (i, s) in spec.schedules.iter().enumerate() {
            let field = format!("schedules[{i}]");
            let d = duration(&format!("{field}.duration"), &s.duration)?;
            let window = Window::new(&s.name, &s.cron, &s.timezone, d, s.min_replicas).map_err(
                |e| match e {
                    super::schedule::ScheduleError::Cron { .. } => {
                        error(format!("{field}.cron"), e)
                    }
                    super::schedule::ScheduleError::TimeZone(_) => {
                        error(format!("{field}.timezone"), e)
                    }
                },
            )?;
            schedules.push(window);
        }
        let idle_after = spec
            .idle_after
            .as_deref()
            .map(|v| {
                duration("idleAfter", v)
                    .map(|d| SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
            })
            .transpose()?;
        let window = duration("window", &spec.window)?;
        if window.is_zero() || window > crate::traffic::RETENTION {
            return Err(error(
                "window",
                format!(
                    "{} must be above zero and at most {}s",
                    spec.window,
                    crate::traffic::RETENTION.as_secs()
                ),
            ));
        }
        Ok(Self {
            min_replicas: spec.min_replicas,
            max_replicas: spec.max_replicas,
            window,
            targets,
            schedules,
            idle_after,
            behavior: Behavior::from_spec(spec.behavior.as_ref()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> ScalingTriggerSpec {
        serde_json::from_str(json).expect("spec")
    }

    const BASE: &str = r#"{"scaleTargetRef":{"apiVersion":"apps/v1","kind":"Deployment","name":"web"},
        "poolRef":{"name":"web"},"minReplicas":1,"maxReplicas":20"#;

    #[test]
    fn the_design_example_parses() {
        let spec = parse(&format!(
            r#"{BASE},"window":"30s","idleAfter":"5m",
            "metrics":[{{"type":"RequestsPerSecond","averageValue":100}},
                       {{"type":"InFlightRequests","averageValue":20}},
                       {{"type":"LatencyP99","value":"250ms"}}],
            "schedules":[{{"name":"office","cron":"0 9 * * 1-5","timezone":"Europe/Madrid","duration":"9h","minReplicas":5}}]}}"#
        ));
        let s = Spec::from_crd(&spec).expect("valid");
        assert_eq!(
            s.targets,
            vec![
                Target::RequestsPerSecond(100.0),
                Target::InFlightRequests(20.0),
                Target::LatencyP99(Duration::from_millis(250)),
            ]
        );
        assert_eq!(s.idle_after, Some(SignedDuration::from_secs(300)));
        assert_eq!(s.window, Duration::from_secs(30));
        assert_eq!(s.behavior, Behavior::default());
        assert_eq!(s.schedules.len(), 1);
    }

    #[test]
    fn errors_name_the_field_and_the_value() {
        let cases = [
            (
                r#","schedules":[{"name":"a","cron":"0 9 * *","duration":"1h","minReplicas":2}]"#,
                "spec.schedules[0].cron",
            ),
            (
                r#","schedules":[{"name":"a","cron":"0 9 * * *","timezone":"Mars/Olympus","duration":"1h","minReplicas":2}]"#,
                "spec.schedules[0].timezone",
            ),
            (
                r#","metrics":[{"type":"LatencyP99","value":"fast"}]"#,
                "spec.metrics[0].value",
            ),
            (
                r#","metrics":[{"type":"RequestsPerSecond"}]"#,
                "spec.metrics[0].averageValue",
            ),
            (r#","idleAfter":"soon""#, "spec.idleAfter"),
            (r#","window":"1h""#, "spec.window"),
        ];
        for (extra, field) in cases {
            let e = Spec::from_crd(&parse(&format!("{BASE}{extra}}}"))).expect_err(extra);
            let text = e.to_string();
            assert!(text.starts_with(field), "{text}");
        }
    }
}
