//! `ScalingTrigger`: which workload a pool's traffic scales, and how.
//!
//! The controller's autoscaler acts on it (`controller/src/scaler/`, with
//! the pure decisions in `controller/src/autoscale/`). Shapes and defaults of
//! `behavior` follow `autoscaling/v2` so HPA users read it without a manual.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Scales a workload on the traffic of a BackendPool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.io",
    version = "v1alpha1",
    kind = "ScalingTrigger",
    namespaced,
    status = "ScalingTriggerStatus",
    shortname = "st",
    category = "sluice",
    derive = "PartialEq",
    doc = "Scales a workload (anything with a /scale subresource) on the traffic of a BackendPool.",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.scaleTargetRef.name"}"#,
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.poolRef.name"}"#,
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.minReplicas"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.maxReplicas"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.currentReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct ScalingTriggerSpec {
    /// The workload to scale.
    pub scale_target_ref: CrossVersionObjectReference,
    /// The BackendPool whose traffic drives the scaling.
    pub pool_ref: PoolRef,
    /// Lower bound; 0 allows scale to zero.
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Upper bound.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Averaging window of the metrics.
    #[serde(default = "thirty_seconds")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub window: String,
    /// Targets; the desired count is the maximum over them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub metrics: Vec<MetricSpec>,
    /// Floors raised during time windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub schedules: Vec<Schedule>,
    /// With minReplicas 0: no traffic for this long scales to zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub idle_after: Option<String>,
    /// Scale-up and scale-down behavior, as in autoscaling/v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<Behavior>,
}

fn one() -> i32 {
    1
}

fn thirty_seconds() -> String {
    "30s".to_string()
}

/// Names a workload with a `/scale` subresource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CrossVersionObjectReference {
    /// `apps/v1` for a Deployment.
    pub api_version: String,
    /// `Deployment`, `StatefulSet`, or a custom kind with `/scale`.
    pub kind: String,
    /// Name in the trigger's namespace.
    pub name: String,
}

/// Names a BackendPool in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PoolRef {
    /// The pool's name.
    pub name: String,
}

/// One scaling target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'LatencyP99' ? has(self.value) : has(self.averageValue)").message("LatencyP99 takes value (a duration); per-replica metrics take averageValue"))]
pub struct MetricSpec {
    /// What is measured.
    #[serde(rename = "type")]
    pub type_: MetricType,
    /// Per-replica target of RequestsPerSecond and InFlightRequests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.001))]
    pub average_value: Option<f64>,
    /// Pool-wide target of LatencyP99, a duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub value: Option<String>,
}

/// Metrics a trigger can target.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    /// Requests per second per replica.
    RequestsPerSecond,
    /// Concurrent requests per replica.
    InFlightRequests,
    /// Pool-wide 99th percentile latency.
    LatencyP99,
}

/// A floor on replicas while a cron window is open.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// Name, for status and Events.
    pub name: String,
    /// Five-field cron expression of the window's start.
    pub cron: String,
    /// IANA time zone of the cron expression.
    #[serde(default = "utc")]
    pub timezone: String,
    /// How long the window stays open.
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub duration: String,
    /// The floor while open.
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
}

fn utc() -> String {
    "UTC".to_string()
}

/// Same shape and defaults as `autoscaling/v2` HorizontalPodAutoscalerBehavior.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    /// Rules for growing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    /// Rules for shrinking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

/// Stabilization and rate limits for one direction.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Look-back window over past recommendations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<i32>,
    /// Rate limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<ScalingPolicy>,
    /// Which policy wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<SelectPolicy>,
}

/// A rate limit on scaling.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// Pods or Percent.
    #[serde(rename = "type")]
    pub type_: ScalingPolicyType,
    /// Amount of change allowed per period.
    #[schemars(range(min = 1))]
    pub value: i32,
    /// Length of the period.
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: i32,
}

/// Unit of a scaling policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalingPolicyType {
    /// Absolute number of replicas.
    Pods,
    /// Percentage of current replicas.
    Percent,
}

/// Which of several policies applies.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy allowing the largest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// What the autoscaler observed and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingTriggerStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Replicas the target had at the last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    /// Replicas last asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// When the target was last scaled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// The metrics behind the last decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_metrics: Vec<MetricStatus>,
    /// `AbleToScale`, `ScalingActive`, `ScalingLimited`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One observed metric.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    /// What was measured.
    #[serde(rename = "type")]
    pub type_: MetricType,
    /// Per-replica value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<f64>,
    /// Pool-wide value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn schema_bounds_replicas() {
        let crd = serde_json::to_string(&ScalingTrigger::crd()).expect("crd serializes");
        assert!(crd.contains("self.minReplicas <= self.maxReplicas"));
        assert!(crd.contains(r#""shortNames":["st"]"#));
    }
}
