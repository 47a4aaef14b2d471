//! Endpoint health verdicts: the active checks' verdict and the passive
//! outlier (ejection) state of each endpoint, their streak counting, and
//! panic mode logging. A leaf: it knows nothing of endpoints, pools or
//! requests; the checker ([`crate::checker`]) and the outlier decisions
//! ([`crate::endpoint::outlier`]) write verdicts here and rebuild the pool's
//! balancer when one changes.
//!
//! A new endpoint starts healthy. Endpoints come from EndpointSlices whose
//! readiness the kubelet already probes, so starting unhealthy would only
//! keep fresh replicas (a scale-up, a dataplane restart, an activation from
//! zero) dark for a check interval or more; a broken one is caught by
//! `unhealthyThreshold` failed checks, and sooner by outlier detection.
//! This is the choice Envoy makes unless told otherwise, and HAProxy's
//! default for servers of a running backend.
//!
//! A transition rebuilds the pool's balancer over the available endpoints
//! at once, on the task that saw it (see [`crate::table::selector`]); when none is
//! available the pool spreads traffic over all of them (panic mode, as
//! Envoy's panic threshold does) rather than failing every request.

pub mod ejection;

use std::sync::atomic::{AtomicBool, Ordering};

use sluice_protocol::HealthCheck;

use crate::metrics::HealthGauge;
use ejection::Outlier;

/// Whether an endpoint may take traffic, and why not.
#[derive(Debug)]
pub struct Health {
    /// The active checks' verdict; true when the pool has none.
    healthy: AtomicBool,
    /// Passive outlier detection.
    pub outlier: Outlier,
    gauge: HealthGauge,
}

impl Health {
    /// A new endpoint's: healthy, never ejected.
    pub fn new(gauge: HealthGauge) -> Self {
        Self {
            healthy: AtomicBool::new(true),
            outlier: Outlier::default(),
            gauge,
        }
    }

    /// Healthy and not ejected.
    pub fn is_available(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && !self.outlier.is_ejected()
    }

    /// The active checks' verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Name of the endpoint's pool (for logs).
    pub fn pool_name(&self) -> &str {
        self.gauge.pool()
    }

    /// Shows the verdict in `sluice_endpoint_healthy` (after a transition,
    /// and again at each table so a freed namesake's removal is undone).
    pub fn show(&self) {
        self.gauge.set(self.is_available());
    }

    /// Records the checks' verdict; whether it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::AcqRel) != healthy
    }
}

/// Logs a pool entering or leaving panic mode (called when its balancer is
/// rebuilt).
pub fn log_panic(pool: &str, panic: bool, endpoints: usize) {
    if panic {
        tracing::warn!(
            %pool,
            endpoints,
            "no endpoint is healthy: panic mode, traffic goes to all of them"
        );
    } else {
        tracing::info!(%pool, "endpoints available again: panic mode over");
    }
}

/// Consecutive check results of one endpoint.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    successes: u32,
    failures: u32,
}

impl Streak {
    /// Counts one result; returns the new verdict when it changes.
    pub fn observe(&mut self, ok: bool, healthy: bool, config: &HealthCheck) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (!healthy && self.successes >= config.healthy_threshold.get()).then_some(true)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (healthy && self.failures >= config.unhealthy_threshold.get()).then_some(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn config(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            healthy_threshold: NonZeroU32::new(healthy).expect("nonzero"),
            unhealthy_threshold: NonZeroU32::new(unhealthy).expect("nonzero"),
            ..HealthCheck::default()
        }
    }

    #[test]
    fn thresholds_count_consecutive_results_only() {
        let c = config(2, 3);
        let mut s = Streak::default();
        assert_eq!(s.observe(false, true, &c), None);
        assert_eq!(s.observe(false, true, &c), None);
        assert_eq!(s.observe(true, true, &c), None, "a success breaks the run");
        assert_eq!(s.observe(false, true, &c), None);
        assert_eq!(s.observe(false, true, &c), None);
        assert_eq!(s.observe(false, true, &c), Some(false));
        assert_eq!(s.observe(true, false, &c), None);
        assert_eq!(s.observe(false, false, &c), None, "still unhealthy");
        assert_eq!(s.observe(true, false, &c), None);
        assert_eq!(s.observe(true, false, &c), Some(true));
        assert_eq!(s.observe(true, true, &c), None);
    }
}
