//! Scale to zero and back.
//!
//! HPA has no equivalent (its `minReplicas: 0` is alpha and metric-driven);
//! this follows KEDA and Knative: with `minReplicas: 0` and `idleAfter`, a
//! target that saw no demand for `idleAfter` goes to zero, and any demand
//! at zero asks for one replica at once. The idle clock starts at the first
//! observation after a (re)start, so a new leader never scales a target to
//! zero on the strength of a history it did not see.

use jiff::{SignedDuration, Timestamp};

/// When demand was last seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdleClock {
    last_demand: Option<Timestamp>,
}

impl IdleClock {
    /// Notes an observation at `now`; the first one starts the clock.
    pub fn observe(&mut self, now: Timestamp, demand: bool) {
        if demand || self.last_demand.is_none() {
            self.last_demand = Some(now);
        }
    }

    /// How long there has been no demand, as of `now`.
    pub fn idle_for(&self, now: Timestamp) -> SignedDuration {
        self.last_demand
            .map_or(SignedDuration::ZERO, |at| now.duration_since(at))
    }

    /// Whether the target may go to zero: idle for at least `idle_after`.
    pub fn is_idle(&self, now: Timestamp, idle_after: SignedDuration) -> bool {
        self.idle_for(now) >= idle_after
    }
}

/// What to do at zero replicas with scale to zero allowed: one replica
/// as soon as there is demand (held requests, or traffic measured anyway),
/// else stay at zero.
pub fn activation(demand: bool) -> i32 {
    i32::from(demand)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("valid")
    }

    #[test]
    fn idle_after_a_quiet_period_and_not_before() {
        let five_minutes = SignedDuration::from_secs(300);
        let mut clock = IdleClock::default();
        clock.observe(t(0), true);
        clock.observe(t(100), false);
        assert!(!clock.is_idle(t(299), five_minutes));
        assert!(clock.is_idle(t(300), five_minutes));
        // Any demand restarts the clock.
        clock.observe(t(310), true);
        assert!(!clock.is_idle(t(600), five_minutes));
        assert!(clock.is_idle(t(610), five_minutes));
    }

    #[test]
    fn the_clock_starts_at_the_first_observation() {
        let mut clock = IdleClock::default();
        assert_eq!(clock.idle_for(t(50)), SignedDuration::ZERO);
        clock.observe(t(100), false);
        assert_eq!(clock.idle_for(t(160)), SignedDuration::from_secs(60));
        clock.observe(t(200), false);
        assert_eq!(clock.idle_for(t(260)), SignedDuration::from_secs(160));
    }

    #[test]
    fn demand_at_zero_activates_one_replica() {
        assert_eq!(activation(true), 1);
        assert_eq!(activation(false), 0);
    }
}
