//! The controller's Prometheus metrics (names fixed by DESIGN.md).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of `sluice_reconcile_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind of object whose change triggered the work.
    pub kind: String,
}

/// Labels of `sluice_scale_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    /// `namespace/name` of the ScalingTrigger.
    pub trigger: String,
    /// `up` or `down`.
    pub direction: String,
}

/// Labels of `sluice_scaling_limited`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `namespace/name` of the ScalingTrigger.
    pub trigger: String,
    /// The `ScalingLimited` reason: `TooManyReplicas`, `TooFewReplicas`,
    /// `ScaleUpLimit` or `ScaleDownLimit`.
    pub reason: String,
}

/// Label of `sluice_desired_replicas`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabel {
    /// `namespace/name` of the ScalingTrigger.
    pub trigger: String,
}

fn reconcile_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Every controller metric, registered once.
pub struct Metrics {
    registry: Registry,
    /// Time to turn a batch of watch events into published routes.
    pub reconcile_duration: Family<KindLabel, Histogram, fn() -> Histogram>,
    /// Current route-table version.
    pub route_version: Gauge,
    /// Dataplanes present (stream open or reporting).
    pub dataplanes_connected: Gauge,
    /// 1 while this replica holds the lease (always, without election).
    pub leader: Gauge,
    /// Scale patches made, by trigger and direction.
    pub scale_decisions: Family<ScaleLabels, Counter>,
    /// The replica count each trigger last decided.
    pub desired_replicas: Family<TriggerLabel, Gauge>,
    /// 1 for the reason that held each trigger's last decision back (the
    /// `ScalingLimited` condition), 0 for the others: an alert can tell a
    /// trigger pinned at `maxReplicas` from one idling at `minReplicas`.
    pub scaling_limited: Family<LimitLabels, Gauge>,
}

impl Metrics {
    /// Registers the metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let reconcile_duration =
            Family::<KindLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                reconcile_histogram,
            );
        let route_version = Gauge::default();
        let dataplanes_connected = Gauge::default();
        let leader = Gauge::default();
        registry.register(
            "reconcile_duration_seconds",
            "Time to turn a batch of watch events into published routes",
            reconcile_duration.clone(),
        );
        registry.register(
            "route_version",
            "Current route-table version",
            route_version.clone(),
        );
        registry.register(
            "dataplanes_connected",
            "Dataplanes holding a stream open or reporting",
            dataplanes_connected.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader (serves streams, writes status)",
            leader.clone(),
        );
        let scale_decisions = Family::<ScaleLabels, Counter>::default();
        registry.register(
            "scale_decisions",
            "Scale patches made by the autoscaler, by trigger and direction",
            scale_decisions.clone(),
        );
        let desired_replicas = Family::<TriggerLabel, Gauge>::default();
        registry.register(
            "desired_replicas",
            "The replica count each ScalingTrigger last decided",
            desired_replicas.clone(),
        );
        let scaling_limited = Family::<LimitLabels, Gauge>::default();
        registry.register(
            "scaling_limited",
            "1 for the reason (maxReplicas, minReplicas, a behavior policy) that held a ScalingTrigger's last decision back, 0 for the others",
            scaling_limited.clone(),
        );
        Self {
            registry,
            reconcile_duration,
            route_version,
            dataplanes_connected,
            leader,
            scale_decisions,
            desired_replicas,
            scaling_limited,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}
