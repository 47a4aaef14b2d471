//! When each version of a pool's route was published, so that `Programmed`
//! can tell a dataplane that is a moment behind from one that is stuck.
//!
//! Dataplanes acknowledge in their reports (one a second), so right after
//! every route change none of them has acknowledged the newest version
//! yet. Asking for the newest version made `Programmed` False for about a
//! second on every endpoint change, and under endpoint churn it flapped.
//! Instead a dataplane serves the pool while it has applied the version
//! that was current one ack deadline ago ([`PoolVersions::required`]): the
//! newest, or one replaced less than a deadline ago.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long publication times are kept: the longest ack deadline allowed.
pub const KEEP: Duration = Duration::from_secs(60);

/// The versions a pool's route was published at, recent ones only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolVersions {
    /// `(version, published at)`, oldest first: every version published
    /// within [`KEEP`] and the last one before that.
    published: VecDeque<(u64, Instant)>,
}

impl PoolVersions {
    /// Records that `version` now carries the pool's route (a version
    /// already recorded last is not recorded again).
    pub fn record(&mut self, version: u64, at: Instant) {
        if self.published.back().is_some_and(|(v, _)| *v == version) {
            return;
        }
        self.published.push_back((version, at));
        while self
            .published
            .get(1)
            .is_some_and(|(_, t)| at.saturating_duration_since(*t) > KEEP)
        {
            self.published.pop_front();
        }
    }

    /// Forgets everything: the route was withdrawn, and the next one is
    /// new to every dataplane.
    pub fn clear(&mut self) {
        self.published.clear();
    }

    /// The oldest version a dataplane may have applied at `now` and still
    /// count as serving the pool: the version that was current `deadline`
    /// ago, or the first one recorded when the route is younger than that
    /// (a dataplane that never had the pool does not serve it). `None`
    /// without a route.
    pub fn required(&self, now: Instant, deadline: Duration) -> Option<u64> {
        let first = self.published.front()?.0;
        let Some(cutoff) = now.checked_sub(deadline) else {
            return Some(first);
        };
        Some(
            self.published
                .iter()
                .rev()
                .find(|(_, at)| *at <= cutoff)
                .map_or(first, |(v, _)| *v),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(5);

    #[test]
    fn a_version_replaced_within_the_deadline_still_counts() {
        let t0 = Instant::now();
        let mut v = PoolVersions::default();
        assert_eq!(v.required(t0, DEADLINE), None);
        v.record(10, t0);
        // A young route must be had in its first version.
        assert_eq!(v.required(t0 + Duration::from_secs(1), DEADLINE), Some(10));
        // Churn: a new version every 100 ms for 3 s.
        for i in 1..=30 {
            v.record(10 + i, t0 + Duration::from_millis(6000 + 100 * i));
        }
        let now = t0 + Duration::from_millis(9000);
        // Only what was current 5 s ago (version 10) is required.
        assert_eq!(v.required(now, DEADLINE), Some(10));
        let later = t0 + Duration::from_millis(6000 + 100 * 20) + DEADLINE;
        assert_eq!(v.required(later, DEADLINE), Some(30));
        // Long after the last change, the newest is required.
        assert_eq!(
            v.required(now + Duration::from_secs(60), DEADLINE),
            Some(40)
        );
        v.record(40, now + Duration::from_secs(60));
        assert_eq!(
            v.required(now + Duration::from_secs(61), DEADLINE),
            Some(40)
        );
        v.clear();
        assert_eq!(v.required(now, DEADLINE), None);
    }

    #[test]
    fn old_publications_are_forgotten_but_the_last_before_the_window_stays() {
        let t0 = Instant::now();
        let mut v = PoolVersions::default();
        for i in 0..100u64 {
            v.record(i, t0 + Duration::from_secs(i));
        }
        assert!(v.published.len() <= 62, "{}", v.published.len());
        let now = t0 + Duration::from_secs(99);
        assert_eq!(v.required(now, KEEP), Some(39));
    }
}
