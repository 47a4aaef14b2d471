//! The autoscaler's decisions: pure functions from a trigger's spec, the
//! time, what the pool's dataplanes measured and what happened before, to
//! a replica count with the reasons behind it. No Kubernetes I/O here; the
//! caller reads `/scale`, feeds [`decide`], patches `/scale` when the count
//! changes and then calls [`History::record_scale`].
//!
//! Layout: [`spec`] (the CRD parsed once), [`metrics`] (HPA replica
//! calculator), [`schedule`] (cron floors), [`idle`] (scale to zero and
//! activation), [`behavior`] (HPA stabilization and rate policies).

pub mod behavior;
pub mod idle;
pub mod metrics;
pub mod observe;
pub mod schedule;
pub mod spec;

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use sluice_crds::MetricType;

pub use behavior::{Behavior, BehaviorHistory, Limit, Stabilized};
pub use idle::IdleClock;
pub use metrics::{Observation, Observed, Proposal, Target};
pub use schedule::{ScheduleError, Window};
pub use spec::{Spec, SpecError};

/// Everything a trigger's decisions remember; one per trigger, kept by
/// the leader. A new leader starts from [`History::default`].
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Recommendations and scale events (HPA's per-HPA state).
    pub behavior: BehaviorHistory,
    /// When demand was last seen.
    pub idle: IdleClock,
}

impl History {
    /// Records a scale the target took; call after a successful `/scale`
    /// patch, so the rate policies count it.
    pub fn record_scale(&mut self, spec: &Spec, now: Timestamp, from: i32, to: i32) {
        self.behavior.record_scale(&spec.behavior, now, from, to);
    }
}

/// Why the decision is what it is (before limits).
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// The metric that asked for the most replicas.
    Metric(Proposal),
    /// No metric configured or none reported in the window: no change.
    NoMetrics,
    /// A schedule's window is open and its floor is above the metrics.
    Schedule {
        /// The schedule's name.
        name: String,
        /// Its floor.
        floor: i32,
    },
    /// The target had more replicas than `maxReplicas`.
    AboveMax,
    /// The target had fewer replicas than `minReplicas`.
    BelowMin,
    /// No demand for `idleAfter`: scale to zero.
    Idle(SignedDuration),
    /// Demand at zero replicas: one replica at once.
    Activation,
    /// At zero replicas with `minReplicas` above zero, the target is
    /// left alone, as HPA does: someone scaled it to zero on purpose.
    ScalingDisabled,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Metric(p) => {
                let kind = p.target.metric_type();
                match (p.observed, p.target) {
                    (
                        Observed::AverageValue(v),
                        Target::RequestsPerSecond(t) | Target::InFlightRequests(t),
                    ) => {
                        write!(f, "{kind:?} is {v:.1} per replica against a target of {t}")
                    }
                    (Observed::Value(v), Target::LatencyP99(t)) => {
                        write!(f, "{kind:?} is {v:?} against a target of {t:?}")
                    }
                    _ => write!(f, "{kind:?} ratio {:.2}", p.ratio),
                }
            }
            Self::NoMetrics => f.write_str("no metric has data"),
            Self::Schedule { name, floor } => write!(f, "schedule {name} holds a floor of {floor}"),
            Self::AboveMax => f.write_str("the current count is above maxReplicas"),
            Self::BelowMin => f.write_str("the current count is below minReplicas"),
            Self::Idle(d) => write!(f, "no requests for {}s (idleAfter)", d.as_secs()),
            Self::Activation => f.write_str("requests arrived for a pool at zero replicas"),
            Self::ScalingDisabled => {
                f.write_str("scaling is disabled since the replica count of the target is zero")
            }
        }
    }
}

/// One decision, with what status and Events need.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The count the decision started from.
    pub current: i32,
    /// The count to ask for.
    pub desired: i32,
    /// Why.
    pub reason: Reason,
    /// `AbleToScale` reason when stabilization held the count.
    pub stabilized: Option<Stabilized>,
    /// `ScalingLimited=True` reason when a policy or bound held it.
    pub limited: Option<Limit>,
    /// Every metric computed, for `status.currentMetrics`.
    pub metrics: Vec<Proposal>,
    /// Metrics without data in the window (`ScalingActive` reasons).
    pub missing: Vec<MetricType>,
}

impl Decision {
    /// Whether `/scale` needs a patch.
    pub fn changed(&self) -> bool {
        self.desired != self.current
    }

    /// `up` or `down` for `sluice_scale_decisions_total{direction}`.
    pub fn direction(&self) -> Option<&'static str> {
        match self.desired.cmp(&self.current) {
            std::cmp::Ordering::Greater => Some("up"),
            std::cmp::Ordering::Less => Some("down"),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// The Event text: "from 3 to 6 because …", with the limit when one
    /// applied.
    pub fn message(&self) -> String {
        let mut text = format!(
            "from {} to {} because {}",
            self.current, self.desired, self.reason
        );
        if let Some(limit) = self.limited {
            text.push_str(&format!(" ({}: {})", limit.reason(), limit.message()));
        }
        text
    }
}

/// Decides the replica count at `now`. The order:
///
/// 1. **metrics** — each metric's HPA proposal, the maximum over them; a
///    metric without data is skipped but never lets the others scale down.
///    Metrics never ask for fewer than one replica: only idleness does.
/// 2. **schedule floor** — the highest `minReplicas` of the open windows
///    raises the recommendation and acts as `minReplicas` below.
/// 3. **idle** — with `minReplicas: 0`, `idleAfter` and no open window, no
///    demand for `idleAfter` recommends zero (skipping the stabilization
///    window: the idle period is its own); at zero, demand recommends one
///    at once, bypassing behavior (activation).
/// 4. **behavior** — HPA's stabilization windows and rate policies.
/// 5. **clamp** — to `[max(minReplicas, floor), maxReplicas]`.
///
/// As in HPA's `reconcileAutoscaler`, a count outside the bounds goes to the
/// bound at once, and a target at zero with `minReplicas` above zero is left
/// alone. `history` is updated with the recommendation (HPA records every
/// one); record scales with [`History::record_scale`].
pub fn decide(spec: &Spec, now: Timestamp, obs: &Observation, history: &mut History) -> Decision {
    let current = obs.current_replicas.max(0);
    let demand = obs.has_demand();
    // Without data (no dataplane reported) nothing says the pool is idle.
    history.idle.observe(now, demand || !obs.has_data());
    let rec = if current > 0 {
        metrics::recommend(&spec.targets, obs)
    } else {
        metrics::Recommendation::default()
    };
    let max = spec.max_replicas;
    let floor =
        schedule::floor(&spec.schedules, now).map(|(f, name)| (f.min(max), name.to_string()));
    let floor_n = floor.as_ref().map_or(0, |f| f.0);
    let min = spec.min_replicas.max(floor_n);
    let schedule_reason = || match &floor {
        Some((floor, name)) => Reason::Schedule {
            name: name.clone(),
            floor: *floor,
        },
        None => Reason::BelowMin,
    };
    let done = |desired: i32, reason: Reason| Decision {
        current,
        desired,
        reason,
        stabilized: None,
        limited: None,
        metrics: rec.proposals.clone(),
        missing: rec.missing.clone(),
    };

    if current == 0 {
        if spec.min_replicas > 0 {
            return done(0, Reason::ScalingDisabled);
        }
        if floor_n > 0 {
            return done(floor_n, schedule_reason());
        }
        let desired = idle::activation(demand).min(max);
        let reason = if desired > 0 {
            Reason::Activation
        } else {
            Reason::Idle(history.idle.idle_for(now))
        };
        return done(desired, reason);
    }
    if current > max {
        return done(max, Reason::AboveMax);
    }
    if current < min {
        let reason = if floor_n > spec.min_replicas {
            schedule_reason()
        } else {
            Reason::BelowMin
        };
        return done(min, reason);
    }

    let (mut recommendation, mut reason) = match (rec.replicas, rec.driver) {
        (Some(replicas), Some(driver)) => (replicas.max(1), Reason::Metric(driver)),
        _ => (current, Reason::NoMetrics),
    };
    if recommendation < floor_n {
        recommendation = floor_n;
        reason = schedule_reason();
    }
    let idle = spec.min_replicas == 0
        && floor_n == 0
        && spec
            .idle_after
            .is_some_and(|after| history.idle.is_idle(now, after));
    if idle {
        recommendation = 0;
        reason = Reason::Idle(history.idle.idle_for(now));
    }
    let lower = if idle { 0 } else { min.max(1) };
    let n = behavior::normalize(
        &spec.behavior,
        &mut history.behavior,
        now,
        behavior::Bounds {
            current,
            min: lower,
            max,
        },
        recommendation,
        !idle,
    );
    Decision {
        desired: n.desired.clamp(lower, max),
        stabilized: n.stabilized,
        limited: n.limited,
        ..done(current, reason)
    }
}

#[cfg(test)]
mod tests;
