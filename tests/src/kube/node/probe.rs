//! httpGet probes on a schedule, counted against their thresholds, as the
//! kubelet runs readiness and liveness probes.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};

use super::container;

/// A probe's schedule and counts.
pub struct ProbeState {
    probe: Probe,
    next: Instant,
    successes: i32,
    failures: i32,
}

impl ProbeState {
    pub fn new(probe: &Option<Probe>, started: Instant) -> Option<ProbeState> {
        let probe = probe.clone()?;
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
        Some(ProbeState {
            probe,
            next: started + Duration::from_secs(delay),
            successes: 0,
            failures: 0,
        })
    }

    /// Runs the probe if due; `Some(passed by its thresholds)` when it ran.
    pub async fn run(&mut self, ip: Ipv4Addr, c: &Container, was: bool) -> Option<bool> {
        if Instant::now() < self.next {
            return None;
        }
        let p = &self.probe;
        self.next =
            Instant::now() + Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
        let ok = match &p.http_get {
            Some(action) => container::http_get(ip, c, action, timeout).await,
            None => false,
        };
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        Some(if was {
            self.failures < p.failure_threshold.unwrap_or(3)
        } else {
            self.successes >= p.success_threshold.unwrap_or(1)
        })
    }
}
