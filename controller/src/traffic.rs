//! The pools' traffic as the dataplanes report it, merged into per-pool
//! figures over any window the autoscaler asks for.
//!
//! Each report is one sample per pool: the counts of its window and the
//! levels at its end. Samples are kept per pool and per dataplane, so that
//! every dataplane's rate is its own count over its own reported time
//! (a dataplane that started reporting a second ago is not diluted over the
//! whole window), and the pool's rate is the sum of its dataplanes' rates. A
//! dataplane that has not reported for three of its report windows is
//! dropped, with its samples: its traffic has moved to the others, which
//! already count it. Retried reports are filtered out before they get here
//! (`Dataplanes::report` sees the repeated `seq`).
//!
//! Memory is bounded by what the autoscaler asks for: a pool driven by a
//! trigger keeps its samples for the trigger's `window` (at most
//! [`RETENTION`]); any other pool only its newest sample per dataplane.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sluice_protocol::{Histogram, Report};

/// The longest window kept (and so the longest usable trigger `window`).
pub const RETENTION: Duration = Duration::from_secs(600);

/// A dataplane is dropped after this many of its report windows without one.
pub const STALE_WINDOWS: u32 = 3;

/// Report windows shorter than this count as this long for staleness, so
/// a burst of early reports does not make a dataplane stale in milliseconds.
const MIN_REPORT_WINDOW: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    window: Duration,
    requests: u64,
    errors: u64,
    in_flight: u64,
    pending: u64,
    latency: Histogram,
}

#[derive(Debug, Default)]
struct Series {
    samples: VecDeque<Sample>,
    last_seen: Option<Instant>,
    /// The report window of the last report, for staleness.
    report_window: Duration,
}

impl Series {
    fn stale(&self, now: Instant) -> bool {
        let limit = self.report_window.max(MIN_REPORT_WINDOW) * STALE_WINDOWS;
        self.last_seen
            .is_none_or(|seen| now.saturating_duration_since(seen) > limit)
    }
}

/// What a pool's dataplanes measured over a window. `None` means no
/// dataplane reported the pool in the window (which is not the same as
/// reporting no traffic).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    /// Requests per second, whole pool.
    pub requests_per_second: Option<f64>,
    /// Failed requests per second, whole pool.
    pub errors_per_second: Option<f64>,
    /// Average concurrent requests, whole pool (time-weighted).
    pub in_flight: Option<f64>,
    /// 99th percentile latency of the window's requests; `None` without
    /// requests.
    pub latency_p99: Option<Duration>,
    /// Requests held for activation, as last reported.
    pub pending: u64,
    /// Dataplanes that reported the pool in the window.
    pub dataplanes: usize,
}

/// One pool's series, and how much of it the autoscaler needs.
#[derive(Debug, Default)]
struct PoolSeries {
    /// Samples older than this are dropped (the newest always stays, for
    /// `pending` and staleness). Zero until a trigger asks for the pool.
    keep: Duration,
    dataplanes: BTreeMap<String, Series>,
}

/// Reported traffic, shared by the report handler and the autoscaler.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Pool name (`ns/name`) → its series.
    pools: Mutex<BTreeMap<String, PoolSeries>>,
}

impl Traffic {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, PoolSeries>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a (fresh, never retried) report received at `now`. Dataplanes
    /// report every pool of their table each window, idle ones included;
    /// a pool a dataplane stops reporting has left its table and drops out
    /// with the dataplane's other stale series at the next [`Traffic::keep`].
    pub fn record(&self, report: &Report, now: Instant) {
        let window = Duration::from_millis(report.window_ms);
        let mut pools = self.lock();
        for (pool, traffic) in &report.pools {
            let entry = pools.entry(pool.clone()).or_default();
            let keep = entry.keep;
            let series = entry
                .dataplanes
                .entry(report.dataplane.clone())
                .or_default();
            series.last_seen = Some(now);
            series.report_window = window;
            series.samples.push_back(Sample {
                at: now,
                window,
                requests: traffic.requests,
                errors: traffic.errors,
                in_flight: traffic.in_flight,
                pending: traffic.pending,
                latency: traffic.latency.clone(),
            });
            while series.samples.len() > 1
                && series
                    .samples
                    .front()
                    .is_some_and(|s| now.saturating_duration_since(s.at) >= keep)
            {
                series.samples.pop_front();
            }
        }
    }

    /// Sets how long each pool's samples are kept (the longest `window` of
    /// the triggers driving it, at most [`RETENTION`]); every other pool
    /// keeps only its newest sample. Also forgets stale dataplanes and the
    /// pools left without any. The autoscaler calls it once per pass.
    pub fn keep(&self, windows: &BTreeMap<String, Duration>, now: Instant) {
        let mut pools = self.lock();
        for (name, pool) in pools.iter_mut() {
            pool.keep = windows
                .get(name)
                .map_or(Duration::ZERO, |w| (*w).min(RETENTION));
            pool.dataplanes.retain(|_, series| !series.stale(now));
        }
        pools.retain(|_, pool| !pool.dataplanes.is_empty());
        for (name, window) in windows {
            pools.entry(name.clone()).or_default().keep = (*window).min(RETENTION);
        }
    }

    /// The pool's traffic over the `window` before `now`.
    pub fn measure(&self, pool: &str, window: Duration, now: Instant) -> Measured {
        let window = window.min(RETENTION);
        let pools = self.lock();
        let mut out = Measured::default();
        let Some(PoolSeries { dataplanes, .. }) = pools.get(pool) else {
            return out;
        };
        let mut latency = Histogram::default();
        let (mut rps, mut eps, mut in_flight) = (0.0, 0.0, 0.0);
        for series in dataplanes.values().filter(|s| !s.stale(now)) {
            let recent = series
                .samples
                .iter()
                .filter(|s| now.saturating_duration_since(s.at) < window);
            let (mut requests, mut errors, mut busy, mut seconds) = (0u64, 0u64, 0.0, 0.0);
            let mut any = false;
            for s in recent {
                any = true;
                requests += s.requests;
                errors += s.errors;
                let secs = s.window.as_secs_f64();
                seconds += secs;
                busy += s.in_flight as f64 * secs;
                add(&mut latency, &s.latency);
            }
            if !any {
                continue;
            }
            out.dataplanes += 1;
            if let Some(last) = series.samples.back() {
                out.pending += last.pending;
            }
            if seconds > 0.0 {
                rps += requests as f64 / seconds;
                eps += errors as f64 / seconds;
                in_flight += busy / seconds;
            }
        }
        if out.dataplanes > 0 {
            out.requests_per_second = Some(rps);
            out.errors_per_second = Some(eps);
            out.in_flight = Some(in_flight);
            out.latency_p99 = quantile(&latency, 0.99);
        }
        out
    }
}

fn add(into: &mut Histogram, from: &Histogram) {
    if into.bounds_ms == from.bounds_ms {
        for (a, b) in into.counts.iter_mut().zip(&from.counts) {
            *a += b;
        }
        into.sum_ms += from.sum_ms;
    }
}

/// The `q` quantile, interpolated linearly inside its bucket as Prometheus's
/// `histogram_quantile` does; an answer in the overflow bucket is its lower
/// bound (the largest finite bound). `None` without observations.
pub fn quantile(h: &Histogram, q: f64) -> Option<Duration> {
    let total = h.count();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &count) in h.counts.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let Some(&upper) = h.bounds_ms.get(i) else {
                let last = h.bounds_ms.last().copied().unwrap_or(0.0);
                return Some(Duration::from_secs_f64(last / 1000.0));
            };
            let lower = if i == 0 { 0.0 } else { h.bounds_ms[i - 1] };
            let into = (rank - below as f64) / count as f64;
            let ms = lower + (upper - lower) * into;
            return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
        }
        below += count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::PoolReport;

    fn report(dataplane: &str, pool: &str, requests: u64, in_flight: u64) -> Report {
        Report {
            dataplane: dataplane.into(),
            window_ms: 1000,
            pools: [(
                pool.to_string(),
                PoolReport {
                    requests,
                    in_flight,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    const WEB: &str = "shop/web";

    #[test]
    fn rates_add_up_across_dataplanes_and_average_over_the_window() {
        let traffic = Traffic::default();
        let t0 = Instant::now();
        traffic.keep(&[(WEB.to_string(), Duration::from_secs(30))].into(), t0);
        for i in 0..10u64 {
            let at = t0 + Duration::from_secs(i);
            traffic.record(&report("a", WEB, 100, 4), at);
            traffic.record(&report("b", WEB, 50 + 10 * (i % 2), 2), at);
        }
        let now = t0 + Duration::from_secs(9);
        let m = traffic.measure(WEB, Duration::from_secs(30), now);
        assert_eq!(m.dataplanes, 2);
        assert_eq!(m.requests_per_second, Some(155.0));
        assert_eq!(m.in_flight, Some(6.0));
        // A short window sees only the last samples.
        let m = traffic.measure(WEB, Duration::from_secs(1), now);
        assert_eq!(m.requests_per_second, Some(160.0));
    }

    #[test]
    fn a_dataplane_that_just_started_is_not_diluted_over_the_window() {
        let traffic = Traffic::default();
        let t0 = Instant::now();
        traffic.record(&report("a", WEB, 300, 0), t0);
        let m = traffic.measure(WEB, Duration::from_secs(30), t0);
        assert_eq!(m.requests_per_second, Some(300.0));
    }

    #[test]
    fn a_silent_dataplane_drops_out_after_three_windows() {
        let traffic = Traffic::default();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        traffic.keep(&[(WEB.to_string(), Duration::from_secs(30))].into(), t0);
        traffic.record(&report("a", WEB, 100, 0), t0);
        for i in 0..=5u64 {
            traffic.record(&report("b", WEB, 100, 0), at(i));
            let m = traffic.measure(WEB, Duration::from_secs(30), at(i));
            // `a` counts for three of its one-second windows, then not.
            let expected = if i <= 3 {
                (2, Some(200.0))
            } else {
                (1, Some(100.0))
            };
            assert_eq!((m.dataplanes, m.requests_per_second), expected, "at {i}s");
        }
    }

    #[test]
    fn no_report_is_none_and_a_quiet_pool_is_zero() {
        let traffic = Traffic::default();
        let t0 = Instant::now();
        assert_eq!(
            traffic.measure(WEB, Duration::from_secs(30), t0),
            Measured::default()
        );
        traffic.record(&report("a", WEB, 0, 0), t0);
        let m = traffic.measure(WEB, Duration::from_secs(30), t0);
        assert_eq!(m.requests_per_second, Some(0.0));
        assert_eq!(m.latency_p99, None, "no request, no latency");
        // Samples leave the window.
        let m = traffic.measure(WEB, Duration::from_secs(1), t0 + Duration::from_secs(2));
        assert_eq!(m.requests_per_second, None);
    }

    #[test]
    fn a_pool_the_dataplane_stops_reporting_drops_out_and_is_forgotten() {
        let traffic = Traffic::default();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        traffic.record(&report("a", WEB, 100, 0), t0);
        // The pool left the dataplane's table: its reports name other pools.
        for i in 1..=10u64 {
            traffic.record(&report("a", "shop/other", 1, 0), at(i));
        }
        let m = traffic.measure(WEB, Duration::from_secs(30), at(10));
        assert_eq!((m.dataplanes, m.requests_per_second), (0, None));
        traffic.keep(&BTreeMap::new(), at(10));
        assert_eq!(traffic.lock().len(), 1, "only shop/other is kept");
    }

    #[test]
    fn only_a_watched_pool_keeps_more_than_its_newest_sample() {
        let traffic = Traffic::default();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        for i in 0..5u64 {
            traffic.record(&report("a", WEB, 100 * (i + 1), 0), at(i));
        }
        // Nobody asked for the pool: the newest sample is all there is.
        let m = traffic.measure(WEB, Duration::from_secs(30), at(4));
        assert_eq!(m.requests_per_second, Some(500.0));
        traffic.keep(&[(WEB.to_string(), Duration::from_secs(3))].into(), at(4));
        for i in 5..10u64 {
            traffic.record(&report("a", WEB, 100, 0), at(i));
        }
        let series = traffic.lock()[WEB].dataplanes["a"].samples.len();
        assert_eq!(series, 3, "samples within the 3 s the trigger needs");
        let m = traffic.measure(WEB, Duration::from_secs(3), at(9));
        assert_eq!(m.requests_per_second, Some(100.0));
    }

    #[test]
    fn pending_is_the_last_level_summed_over_dataplanes() {
        let traffic = Traffic::default();
        let t0 = Instant::now();
        let mut held = report("a", WEB, 0, 0);
        if let Some(p) = held.pools.get_mut(WEB) {
            p.pending = 3;
        }
        traffic.record(&held, t0);
        let mut other = report("b", WEB, 0, 0);
        if let Some(p) = other.pools.get_mut(WEB) {
            p.pending = 2;
        }
        traffic.record(&other, t0);
        assert_eq!(traffic.measure(WEB, Duration::from_secs(30), t0).pending, 5);
    }

    #[test]
    fn p99_interpolates_inside_its_bucket_like_histogram_quantile() {
        let mut h = Histogram::default();
        for _ in 0..98 {
            h.observe(3.0); // (2.5, 5]
        }
        for _ in 0..2 {
            h.observe(400.0); // (250, 500]
        }
        // rank 99 of 100: the first of the two in (250, 500].
        assert_eq!(quantile(&h, 0.99), Some(Duration::from_millis(375)));
        assert_eq!(quantile(&Histogram::default(), 0.99), None);
        let mut slow = Histogram::default();
        slow.observe(60_000.0);
        assert_eq!(quantile(&slow, 0.99), Some(Duration::from_secs(30)));
    }

    #[test]
    fn latency_merges_across_dataplanes() {
        let traffic = Traffic::default();
        let t0 = Instant::now();
        let mut fast = report("a", WEB, 100, 0);
        let mut slow = report("b", WEB, 100, 0);
        for _ in 0..100 {
            if let Some(p) = fast.pools.get_mut(WEB) {
                p.latency.observe(1.0);
            }
            if let Some(p) = slow.pools.get_mut(WEB) {
                p.latency.observe(800.0);
            }
        }
        traffic.record(&fast, t0);
        traffic.record(&slow, t0);
        let p99 = traffic
            .measure(WEB, Duration::from_secs(30), t0)
            .latency_p99
            .expect("requests were reported");
        assert!(p99 > Duration::from_millis(500), "{p99:?}");
    }
}
