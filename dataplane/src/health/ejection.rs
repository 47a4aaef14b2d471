//! An endpoint's ejection state and the arithmetic of ejections: how long
//! the next one lasts, how the count decays, how many of a pool may be out.
//! A leaf of pure data and functions; the decisions that write it, on the
//! attempts' outcomes, are [`crate::endpoint::outlier`]'s.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest ejection, unless the base time is longer (Envoy's
/// `max_ejection_time` default).
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long the `times`-th ejection in a row lasts.
pub fn ejection_time(base: Duration, times: u32) -> Duration {
    base.saturating_mul(times.max(1))
        .min(base.max(MAX_EJECTION_TIME))
}

/// Most ejections counted: the first count whose ejection lasts
/// [`MAX_EJECTION_TIME`]. Counting on would lengthen no ejection and only
/// make an endpoint that misbehaved for long take longer to be forgiven
/// (its count decays by one per `base` in service).
pub fn max_times(base: Duration) -> u32 {
    let periods = MAX_EJECTION_TIME
        .as_nanos()
        .div_ceil(base.as_nanos().max(1));
    u32::try_from(periods).unwrap_or(u32::MAX).max(1)
}

/// The ejection count after `clean` time back in service: one less per
/// `base` elapsed.
pub fn decayed(times: u32, clean: Duration, base: Duration) -> u32 {
    let periods = clean.as_nanos() / base.as_nanos().max(1);
    times.saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX))
}

/// Whether one more endpoint may be ejected when `ejected` of `total` are:
/// the share after ejecting must stay within `max_percent`, except that one
/// endpoint may always be ejected (Envoy's rule).
pub fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    ejected == 0 || (ejected + 1) * 100 <= total * max_percent as usize
}

/// Outlier state of one endpoint.
#[derive(Debug, Default)]
pub struct Outlier {
    pub(crate) failures: AtomicU32,
    pub(crate) ejected: AtomicBool,
    /// Back from an ejection, awaiting its first result.
    pub(crate) probation: AtomicBool,
    pub(crate) history: Mutex<History>,
}

#[derive(Debug, Default)]
pub(crate) struct History {
    pub(crate) times_ejected: u32,
    pub(crate) until: Option<Instant>,
    pub(crate) returned_at: Option<Instant>,
}

/// What `/debug/pools` shows of an endpoint's outlier state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierView {
    /// Ejected now.
    pub ejected: bool,
    /// Time left of the current ejection.
    pub remaining: Option<Duration>,
    /// Ejections counted towards the next one's length (decays over time).
    pub times_ejected: u32,
    /// Failures in a row so far.
    pub consecutive_failures: u32,
    /// Back from an ejection and awaiting its first result.
    pub probation: bool,
}

impl Outlier {
    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// A snapshot for debugging.
    pub fn view(&self) -> OutlierView {
        let history = lock(&self.history);
        let ejected = self.is_ejected();
        OutlierView {
            ejected,
            remaining: history
                .until
                .filter(|_| ejected)
                .map(|u| u.saturating_duration_since(Instant::now())),
            times_ejected: history.times_ejected,
            consecutive_failures: self.failures.load(Ordering::Relaxed),
            probation: self.probation.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
        assert_eq!(ejection_time(30 * S, 0), 30 * S);
        assert_eq!(ejection_time(30 * S, 1), 30 * S);
        assert_eq!(ejection_time(30 * S, 3), 90 * S);
        assert_eq!(ejection_time(30 * S, 10), 300 * S);
        assert_eq!(ejection_time(30 * S, u32::MAX), 300 * S);
        // A base above the cap is used as it is.
        assert_eq!(ejection_time(600 * S, 4), 600 * S);
        assert_eq!(
            ejection_time(Duration::from_millis(200), 2),
            2 * Duration::from_millis(200)
        );
    }

    #[test]
    fn the_ejection_count_decays_one_per_base_time_in_service() {
        assert_eq!(decayed(3, Duration::ZERO, 30 * S), 3);
        assert_eq!(decayed(3, 29 * S, 30 * S), 3);
        assert_eq!(decayed(3, 30 * S, 30 * S), 2);
        assert_eq!(decayed(3, 95 * S, 30 * S), 0);
        assert_eq!(decayed(3, Duration::MAX, Duration::from_nanos(1)), 0);
        assert_eq!(decayed(0, 95 * S, 30 * S), 0);
    }

    #[test]
    fn the_ejection_count_stops_where_the_ejection_stops_growing() {
        assert_eq!(max_times(30 * S), 10);
        assert_eq!(ejection_time(30 * S, max_times(30 * S)), MAX_EJECTION_TIME);
        assert_eq!(max_times(Duration::from_secs(7)), 43);
        assert_eq!(max_times(600 * S), 1);
        assert_eq!(max_times(Duration::ZERO), u32::MAX);
    }

    #[test]
    fn the_percentage_cap_always_allows_one_ejection() {
        assert!(may_eject(0, 2, 50));
        assert!(!may_eject(1, 2, 50));
        assert!(may_eject(1, 4, 50));
        assert!(!may_eject(2, 4, 50));
        assert!(may_eject(0, 10, 0));
        assert!(!may_eject(1, 10, 10));
        assert!(may_eject(9, 10, 100));
        assert!(may_eject(0, 1, 50));
    }
}
