//! Replicas each metric asks for, as the HPA replica calculator computes
//! them (kubernetes `pkg/controller/podautoscaler/replica_calculator.go`).
//!
//! The dataplanes measure pool-wide totals, so the per-replica metrics
//! (`RequestsPerSecond`, `InFlightRequests`) are HPA's *external metric with
//! an `AverageValue` target* (`GetExternalPerPodMetricReplicas`): the ratio
//! is `total / (target × replicas)` and, outside the tolerance,
//! `desired = ceil(total / target)` — the same as
//! `ceil(replicas × average / target)`. `LatencyP99` is an *object metric
//! with a `Value` target* (`GetObjectMetricReplicas` →
//! `getUsageRatioReplicaCount`): `desired = ceil(ratio × ready)`.
//! Inside the tolerance (|ratio − 1| ≤ 0.1) both keep the current count.

use std::time::Duration;

use sluice_crds::MetricType;

use super::behavior::to_i32;

/// HPA's default `--horizontal-pod-autoscaler-tolerance`.
pub const TOLERANCE: f64 = 0.1;

/// A metric target, parsed from the spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Requests per second per replica.
    RequestsPerSecond(f64),
    /// Concurrent requests per replica.
    InFlightRequests(f64),
    /// Pool-wide p99 latency.
    LatencyP99(Duration),
}

impl Target {
    /// The metric's type, for status.
    pub fn metric_type(&self) -> MetricType {
        match self {
            Self::RequestsPerSecond(_) => MetricType::RequestsPerSecond,
            Self::InFlightRequests(_) => MetricType::InFlightRequests,
            Self::LatencyP99(_) => MetricType::LatencyP99,
        }
    }
}

/// What the pool's dataplanes measured over the trigger's window, merged
/// across dataplanes, plus the target's size. A metric is `None` when no
/// dataplane reported it in the window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observation {
    /// The target's `/scale` `spec.replicas`: what the decision moves from.
    pub current_replicas: i32,
    /// Ready endpoints in the pool: the replicas the traffic was spread
    /// over (HPA divides by `status.replicas` and counts ready pods).
    pub ready_replicas: i32,
    /// Requests per second over the window, whole pool.
    pub requests_per_second: Option<f64>,
    /// Average concurrent requests over the window, whole pool.
    pub in_flight: Option<f64>,
    /// 99th percentile latency over the window, whole pool.
    pub latency_p99: Option<Duration>,
    /// Requests held for activation at the end of the window.
    pub pending: u64,
}

impl Observation {
    /// Whether any dataplane reported in the window. `None` metrics mean
    /// nobody reported; a report of no traffic is `Some(0.0)`.
    pub fn has_data(&self) -> bool {
        self.pending > 0
            || self.requests_per_second.is_some()
            || self.in_flight.is_some()
            || self.latency_p99.is_some()
    }

    /// Any sign of traffic: requests served, in flight, or held.
    pub fn has_demand(&self) -> bool {
        self.pending > 0
            || self.requests_per_second.is_some_and(|r| r > 0.0)
            || self.in_flight.is_some_and(|r| r > 0.0)
    }
}

/// The value behind one proposal, for `status.currentMetrics`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observed {
    /// Per replica (rounded up like HPA's reported `averageValue`).
    AverageValue(f64),
    /// Pool-wide.
    Value(Duration),
}

/// What one metric asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Proposal {
    /// The target it came from.
    pub target: Target,
    /// The observed value.
    pub observed: Observed,
    /// Observed / target.
    pub ratio: f64,
    /// Replicas this metric alone asks for.
    pub replicas: i32,
}

/// The maximum over metrics, as HPA's `computeReplicasForMetrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recommendation {
    /// The count to recommend; `None` when no metric could be computed
    /// (or none is configured): the count then stays where it is.
    pub replicas: Option<i32>,
    /// The metric that set the maximum.
    pub driver: Option<Proposal>,
    /// Every metric that could be computed, in spec order.
    pub proposals: Vec<Proposal>,
    /// Metrics without data in the window.
    pub missing: Vec<MetricType>,
}

/// One metric's proposal, or `None` when the window has no data for it.
/// `current_replicas` must be above zero (zero is activation's business).
pub fn propose(target: Target, obs: &Observation) -> Option<Proposal> {
    let current = obs.current_replicas;
    match target {
        Target::RequestsPerSecond(per) => obs
            .requests_per_second
            .map(|total| per_replica(target, total, per, obs)),
        Target::InFlightRequests(per) => obs
            .in_flight
            .map(|total| per_replica(target, total, per, obs)),
        Target::LatencyP99(want) => obs.latency_p99.map(|seen| {
            let ratio = seen.as_secs_f64() / want.as_secs_f64().max(f64::MIN_POSITIVE);
            let replicas = if (1.0 - ratio).abs() <= TOLERANCE {
                current
            } else {
                to_i32((ratio * f64::from(obs.ready_replicas)).ceil())
            };
            Proposal {
                target,
                observed: Observed::Value(seen),
                ratio,
                replicas,
            }
        }),
    }
}

/// `GetExternalPerPodMetricReplicas`: the ratio is against the replicas
/// that carried the traffic; zero of them with traffic is an infinite ratio.
fn per_replica(target: Target, total: f64, per: f64, obs: &Observation) -> Proposal {
    let carried = f64::from(obs.ready_replicas.max(0));
    let ratio = if total <= 0.0 {
        0.0
    } else if carried == 0.0 {
        f64::INFINITY
    } else {
        total / (per * carried)
    };
    let replicas = if (1.0 - ratio).abs() <= TOLERANCE {
        obs.current_replicas
    } else {
        to_i32((total / per).ceil())
    };
    Proposal {
        target,
        observed: Observed::AverageValue(if carried == 0.0 {
            total
        } else {
            total / carried
        }),
        ratio,
        replicas,
    }
}

/// The maximum over `targets`. As in HPA's `computeReplicasForMetrics`, a
/// missing metric never lets the others scale down: with some missing, the
/// recommendation is at least the current count.
pub fn recommend(targets: &[Target], obs: &Observation) -> Recommendation {
    let mut rec = Recommendation::default();
    for &target in targets {
        match propose(target, obs) {
            Some(p) => {
                if rec.driver.is_none_or(|d| p.replicas > d.replicas) {
                    rec.driver = Some(p);
                }
                rec.proposals.push(p);
            }
            None => rec.missing.push(target.metric_type()),
        }
    }
    rec.replicas = rec.driver.map(|d| {
        if rec.missing.is_empty() {
            d.replicas
        } else {
            d.replicas.max(obs.current_replicas)
        }
    });
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn obs(
        current: i32,
        rps: Option<f64>,
        inflight: Option<f64>,
        p99_ms: Option<u64>,
    ) -> Observation {
        Observation {
            current_replicas: current,
            ready_replicas: current,
            requests_per_second: rps,
            in_flight: inflight,
            latency_p99: p99_ms.map(Duration::from_millis),
            pending: 0,
        }
    }

    /// Per-replica targets: ceil(total / target), around the tolerance band.
    /// Right at |ratio − 1| = 0.1 the float rounding decides, as in HPA's
    /// identical float64 computation: 1 − 1.1 is −0.10000000000000009, so a
    /// ratio of exactly 1.1 scales.
    #[test]
    fn per_replica_table() {
        // (current, total rps, target per replica, expected)
        let cases = [
            (3, 300.0, 100.0, 3),    // ratio 1.0
            (10, 1090.0, 100.0, 10), // ratio 1.09: inside the band
            (3, 330.0, 100.0, 4),    // ratio 1.1000000000000001: outside
            (3, 331.0, 100.0, 4),    // ratio 1.103: ceil(3.31)
            (10, 910.0, 100.0, 10),  // ratio 0.91: inside the band
            (3, 269.0, 100.0, 3),    // ratio 0.897: ceil(2.69) = 3
            (10, 899.0, 100.0, 9),   // ratio 0.899
            (2, 1000.0, 100.0, 10),
            (4, 0.0, 100.0, 0), // no traffic: zero (bounded later)
            (5, 161.0, 20.0, 9),
        ];
        for (current, total, per, expected) in cases {
            let p = propose(
                Target::RequestsPerSecond(per),
                &obs(current, Some(total), None, None),
            )
            .expect("has data");
            assert_eq!(p.replicas, expected, "{total} rps over {current} at {per}");
        }
    }

    /// The HPA docs' example: 200m observed against 100m is ratio 2, so the
    /// count doubles; 50m halves it.
    #[test]
    fn hpa_docs_ratio_example() {
        let p = propose(
            Target::InFlightRequests(100.0),
            &obs(4, Some(0.0), Some(800.0), None),
        );
        assert_eq!(p.map(|p| p.replicas), Some(8));
        let p = propose(
            Target::InFlightRequests(100.0),
            &obs(4, None, Some(200.0), None),
        );
        assert_eq!(p.map(|p| p.replicas), Some(2));
    }

    #[test]
    fn latency_is_a_pool_wide_value_times_ready_replicas() {
        let target = Target::LatencyP99(Duration::from_millis(250));
        let mut o = obs(4, None, None, Some(500));
        o.ready_replicas = 3;
        assert_eq!(propose(target, &o).map(|p| p.replicas), Some(6));
        let o = obs(4, None, None, Some(270));
        assert_eq!(
            propose(target, &o).map(|p| p.replicas),
            Some(4),
            "ratio 1.1"
        );
        let o = obs(4, None, None, Some(100));
        assert_eq!(
            propose(target, &o).map(|p| p.replicas),
            Some(2),
            "ceil(0.4 × 4)"
        );
    }

    #[test]
    fn the_maximum_over_metrics_wins() {
        let targets = [
            Target::RequestsPerSecond(100.0),
            Target::InFlightRequests(20.0),
            Target::LatencyP99(Duration::from_millis(250)),
        ];
        let rec = recommend(&targets, &obs(4, Some(400.0), Some(160.0), Some(100)));
        assert_eq!(rec.replicas, Some(8));
        assert_eq!(
            rec.driver.map(|d| d.target.metric_type()),
            Some(MetricType::InFlightRequests)
        );
        assert_eq!(rec.proposals.len(), 3);
    }

    #[test]
    fn missing_metrics_are_skipped_but_never_scale_down() {
        let targets = [
            Target::RequestsPerSecond(100.0),
            Target::InFlightRequests(20.0),
        ];
        let rec = recommend(&targets, &obs(4, Some(100.0), None, None));
        assert_eq!(rec.missing, vec![MetricType::InFlightRequests]);
        assert_eq!(rec.replicas, Some(4), "would be 1 with all metrics present");
        let rec = recommend(&targets, &obs(4, Some(1000.0), None, None));
        assert_eq!(
            rec.replicas,
            Some(10),
            "scale up on the metrics that are there"
        );
        let rec = recommend(&targets, &obs(4, None, None, None));
        assert_eq!(rec.replicas, None);
    }

    #[test]
    fn traffic_on_no_ready_replica_asks_for_enough() {
        let mut o = obs(2, Some(450.0), None, None);
        o.ready_replicas = 0;
        let p = propose(Target::RequestsPerSecond(100.0), &o).expect("data");
        assert_eq!(p.replicas, 5);
        assert!(p.ratio.is_infinite());
    }

    proptest! {
        /// Inside the tolerance band the count never changes.
        #[test]
        fn no_change_inside_tolerance(current in 1..500i32, per in 1.0..1000.0f64, ratio in 0.9..=1.1f64) {
            let total = ratio * per * f64::from(current);
            let p = propose(Target::RequestsPerSecond(per), &obs(current, Some(total), None, None)).expect("data");
            // The float product can land a hair outside the band at the edges.
            if (1.0 - p.ratio).abs() <= TOLERANCE {
                prop_assert_eq!(p.replicas, current);
            }
        }

        /// Outside it, the new count carries the load at or below target.
        #[test]
        fn outside_tolerance_the_count_fits_the_load(current in 1..500i32, per in 1.0..1000.0f64, total in 0.0..1e6f64) {
            let p = propose(Target::RequestsPerSecond(per), &obs(current, Some(total), None, None)).expect("data");
            if (1.0 - p.ratio).abs() > TOLERANCE {
                prop_assert!(f64::from(p.replicas) * per >= total - 1e-6);
                prop_assert!(f64::from(p.replicas - 1) * per < total + 1e-6);
            }
        }
    }
}
