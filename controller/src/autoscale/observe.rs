//! From measured traffic to the [`Observation`] a decision reads.
//!
//! Two windows are measured: the trigger's `window` (stable) and a burst
//! window a tenth as long (at least [`MIN_BURST`]). The per-replica metrics
//! use the stable figure unless the burst figure alone would at least
//! double the replicas ([`BURST_RATIO`]); then the burst figure is used, so
//! a sudden step scales up within a report or two instead of waiting for
//! the average to climb. This is Knative's panic mode (stable window 60 s,
//! panic window 6 s, threshold 200 %), applied to scale-up only: a burst
//! figure is only taken when it is higher, and scale-down always waits for
//! the stable window and then for behavior's stabilization window.
//! `LatencyP99` always uses the stable window (a p99 over a few seconds is
//! noise).

use std::time::Duration;

use super::metrics::{Observation, Target};
use crate::traffic::Measured;

/// Shortest burst window.
pub const MIN_BURST: Duration = Duration::from_secs(2);

/// The burst figure is used when it asks for at least this many times the
/// current replicas.
pub const BURST_RATIO: f64 = 2.0;

/// The burst window for a trigger's `window`.
pub fn burst_window(window: Duration) -> Duration {
    (window / 10).max(MIN_BURST).min(window)
}

/// Builds the observation. `current` is the target's replica count, `ready`
/// the pool's ready endpoints.
pub fn observation(
    targets: &[Target],
    current: i32,
    ready: i32,
    stable: &Measured,
    burst: &Measured,
) -> Observation {
    let replicas = f64::from(current.max(1));
    let pick = |stable: Option<f64>, burst: Option<f64>, per_replica: Option<f64>| match (
        stable,
        burst,
        per_replica,
    ) {
        (s, Some(b), Some(target)) if s.is_none_or(|s| b > s) => {
            if b / (target * replicas) >= BURST_RATIO {
                Some(b)
            } else {
                s
            }
        }
        (s, _, _) => s,
    };
    let rps_target = targets.iter().find_map(|t| match t {
        Target::RequestsPerSecond(v) => Some(*v),
        _ => None,
    });
    let in_flight_target = targets.iter().find_map(|t| match t {
        Target::InFlightRequests(v) => Some(*v),
        _ => None,
    });
    Observation {
        current_replicas: current,
        ready_replicas: ready,
        requests_per_second: pick(
            stable.requests_per_second,
            burst.requests_per_second,
            rps_target,
        ),
        in_flight: pick(stable.in_flight, burst.in_flight, in_flight_target),
        latency_p99: stable.latency_p99,
        pending: burst.pending.max(stable.pending),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rps: f64) -> Measured {
        Measured {
            requests_per_second: Some(rps),
            in_flight: Some(0.0),
            dataplanes: 1,
            ..Default::default()
        }
    }

    const RPS: [Target; 1] = [Target::RequestsPerSecond(100.0)];

    #[test]
    fn the_burst_window_is_a_tenth_with_a_floor() {
        assert_eq!(
            burst_window(Duration::from_secs(30)),
            Duration::from_secs(3)
        );
        assert_eq!(burst_window(Duration::from_secs(5)), Duration::from_secs(2));
        assert_eq!(burst_window(Duration::from_secs(1)), Duration::from_secs(1));
    }

    #[test]
    fn a_step_that_doubles_the_replicas_uses_the_burst_figure() {
        // Idle for the window, then 1,000 rps for a second: the 30 s average
        // says 33 rps, the 3 s one 333 rps, over 100 per replica.
        let obs = observation(&RPS, 1, 1, &measured(33.0), &measured(333.0));
        assert_eq!(obs.requests_per_second, Some(333.0));
    }

    #[test]
    fn a_small_rise_waits_for_the_stable_window() {
        let obs = observation(&RPS, 4, 4, &measured(400.0), &measured(700.0));
        assert_eq!(obs.requests_per_second, Some(400.0));
    }

    #[test]
    fn a_drop_never_uses_the_burst_figure() {
        let obs = observation(&RPS, 4, 4, &measured(400.0), &measured(0.0));
        assert_eq!(obs.requests_per_second, Some(400.0));
    }

    #[test]
    fn without_a_per_replica_target_the_stable_figure_is_used() {
        let latency = [Target::LatencyP99(Duration::from_millis(100))];
        let obs = observation(&latency, 1, 1, &measured(10.0), &measured(1000.0));
        assert_eq!(obs.requests_per_second, Some(10.0));
    }

    #[test]
    fn pending_comes_through() {
        let mut burst = measured(0.0);
        burst.pending = 3;
        let obs = observation(&RPS, 0, 0, &measured(0.0), &burst);
        assert_eq!(obs.pending, 3);
        assert!(obs.has_demand());
    }
}
