//! Schedules: floors on the replica count while a cron window is open.
//!
//! A window opens at each fire time of its five-field cron expression, read
//! as wall-clock time in its IANA zone, and stays open for `duration` of
//! elapsed time. Fire times come from `croner`, which walks the wall clock
//! in the zone and orders matches on the absolute time line: a wall time
//! skipped by a spring-forward jump, or repeated by a fall-back, is resolved
//! by croner rather than by us. Zones come from jiff's bundled tz database.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Why a schedule was refused; the message names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("cron {cron:?} is not a five-field cron expression: {reason}")]
    Cron {
        /// The expression.
        cron: String,
        /// croner's explanation.
        reason: String,
    },
    /// The zone is not in the tz database.
    #[error("timezone {0:?} is not an IANA time zone name (as in Europe/Madrid or UTC)")]
    TimeZone(String),
}

/// One schedule, parsed once.
#[derive(Clone, Debug)]
pub struct Window {
    /// Name, for status and Events.
    pub name: String,
    cron: Cron,
    zone: TimeZone,
    duration: SignedDuration,
    /// The floor while open.
    pub min_replicas: i32,
}

impl Window {
    /// Parses the cron expression (five fields, Vixie semantics: a day
    /// matching either restricted day field fires) and looks up the zone.
    pub fn new(
        name: &str,
        cron: &str,
        timezone: &str,
        duration: Duration,
        min_replicas: i32,
    ) -> Result<Self, ScheduleError> {
        let parsed = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(cron)
            .map_err(|e| ScheduleError::Cron {
                cron: cron.to_string(),
                reason: e.to_string(),
            })?;
        let zone =
            TimeZone::get(timezone).map_err(|_| ScheduleError::TimeZone(timezone.to_string()))?;
        Ok(Self {
            name: name.to_string(),
            cron: parsed,
            zone,
            duration: SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX),
            min_replicas,
        })
    }

    /// The fire time of the window open at `now`, if any: the most recent
    /// fire time at or before `now`, when `now` is less than `duration`
    /// after it.
    pub fn open_since(&self, now: Timestamp) -> Option<Timestamp> {
        let fired = self
            .cron
            .find_previous_occurrence(&now.to_zoned(self.zone.clone()), true)
            .ok()?
            .timestamp();
        (now.duration_since(fired) < self.duration).then_some(fired)
    }
}

/// The highest floor of the windows open at `now`, and the schedule that
/// set it; `None` when no window is open.
pub fn floor(windows: &[Window], now: Timestamp) -> Option<(i32, &str)> {
    windows
        .iter()
        .filter(|w| w.open_since(now).is_some())
        .max_by_key(|w| w.min_replicas)
        .map(|w| (w.min_replicas, w.name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn office(cron: &str, tz: &str, hours: u64) -> Window {
        Window::new("office", cron, tz, Duration::from_secs(hours * 3600), 5).expect("valid")
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn is_open(w: &Window, s: &str) -> bool {
        w.open_since(at(s)).is_some()
    }

    #[test]
    fn an_ordinary_day_in_utc() {
        let w = office("0 9 * * 1-5", "UTC", 9);
        // Wednesday 2025-01-15.
        assert!(!is_open(&w, "2025-01-15T08:59:59Z"));
        assert!(is_open(&w, "2025-01-15T09:00:00Z"));
        assert!(is_open(&w, "2025-01-15T17:59:59Z"));
        assert!(!is_open(&w, "2025-01-15T18:00:00Z"));
        // Saturday: no fire, Friday's window closed long ago.
        assert!(!is_open(&w, "2025-01-18T10:00:00Z"));
    }

    /// Madrid springs forward on 2025-03-30 at 02:00 (CET, UTC+1 → CEST,
    /// UTC+2): 09:00 that day is 07:00 UTC, the day before it was 08:00.
    #[test]
    fn madrid_09_00_on_the_spring_forward_day() {
        let w = office("0 9 * * *", "Europe/Madrid", 9);
        assert!(
            is_open(&w, "2025-03-29T08:00:00Z"),
            "09:00 CET the day before"
        );
        assert!(!is_open(&w, "2025-03-29T07:59:00Z"));
        assert!(!is_open(&w, "2025-03-30T06:59:59Z"), "08:59:59 CEST");
        assert!(is_open(&w, "2025-03-30T07:00:00Z"), "09:00 CEST");
        assert_eq!(
            w.open_since(at("2025-03-30T12:00:00Z")),
            Some(at("2025-03-30T07:00:00Z"))
        );
        assert!(is_open(&w, "2025-03-30T15:59:59Z"), "17:59:59 CEST");
        assert!(
            !is_open(&w, "2025-03-30T16:00:00Z"),
            "18:00 CEST: 9 h later"
        );
    }

    /// Madrid falls back on 2025-10-26 at 03:00 (CEST → CET): 09:00 that day
    /// is 08:00 UTC, the day before it was 07:00.
    #[test]
    fn madrid_09_00_on_the_fall_back_day() {
        let w = office("0 9 * * *", "Europe/Madrid", 9);
        assert!(
            is_open(&w, "2025-10-25T07:00:00Z"),
            "09:00 CEST the day before"
        );
        assert!(!is_open(&w, "2025-10-26T07:59:59Z"), "08:59:59 CET");
        assert!(is_open(&w, "2025-10-26T08:00:00Z"), "09:00 CET");
        assert!(is_open(&w, "2025-10-26T16:59:59Z"));
        assert!(!is_open(&w, "2025-10-26T17:00:00Z"), "18:00 CET: 9 h later");
    }

    /// A window across the fall-back night lasts its duration of elapsed
    /// time, not of wall-clock time: 22:00 + 8 h is 05:00 CET, not 06:00.
    #[test]
    fn duration_is_elapsed_time_across_a_change() {
        let w = office("0 22 * * *", "Europe/Madrid", 8);
        // 2025-10-25 22:00 CEST = 20:00 UTC; + 8 h = 04:00 UTC = 05:00 CET.
        assert!(is_open(&w, "2025-10-26T03:59:59Z"));
        assert!(!is_open(&w, "2025-10-26T04:00:00Z"));
    }

    /// A start time inside the skipped hour (02:30 on 2025-03-30 does not
    /// exist in Madrid) still opens the window that day.
    #[test]
    fn a_start_in_the_skipped_hour_still_opens() {
        let w = office("30 2 * * *", "Europe/Madrid", 1);
        let fired = w.open_since(at("2025-03-30T01:45:00Z")).expect("open");
        assert!(fired <= at("2025-03-30T01:45:00Z"));
        assert!(fired >= at("2025-03-30T00:30:00Z"), "{fired}");
    }

    #[test]
    fn the_highest_open_floor_wins() {
        let windows = vec![
            Window::new("day", "0 8 * * *", "UTC", Duration::from_secs(12 * 3600), 3).expect("ok"),
            Window::new("peak", "0 12 * * *", "UTC", Duration::from_secs(3600), 8).expect("ok"),
        ];
        assert_eq!(floor(&windows, at("2025-01-15T07:00:00Z")), None);
        assert_eq!(
            floor(&windows, at("2025-01-15T09:00:00Z")),
            Some((3, "day"))
        );
        assert_eq!(
            floor(&windows, at("2025-01-15T12:30:00Z")),
            Some((8, "peak"))
        );
    }

    #[test]
    fn invalid_cron_and_zone_are_clear_errors() {
        let d = Duration::from_secs(60);
        let e = Window::new("x", "0 9 * *", "UTC", d, 1).expect_err("four fields");
        assert!(e.to_string().contains("\"0 9 * *\""), "{e}");
        let e = Window::new("x", "0 0 9 * * *", "UTC", d, 1).expect_err("seconds");
        assert!(matches!(e, ScheduleError::Cron { .. }), "{e}");
        let e = Window::new("x", "61 9 * * *", "UTC", d, 1).expect_err("minute 61");
        assert!(matches!(e, ScheduleError::Cron { .. }), "{e}");
        let e = Window::new("x", "0 9 * * *", "Europe/Madird", d, 1).expect_err("zone");
        assert_eq!(e, ScheduleError::TimeZone("Europe/Madird".into()));
        assert!(e.to_string().contains("Europe/Madird"));
    }
}
