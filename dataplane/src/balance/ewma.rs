//! Peak-EWMA latency estimate of one endpoint (Finagle's and Linkerd's).
//!
//! A sample above the estimate replaces it at once (the peak); a lower one
//! pulls it down with weight `1 − e^(−Δt/τ)`, Δt being the time since the
//! last update, so the estimate forgets a peak over about `τ` whatever the
//! request rate. Read, the estimate also decays toward zero with the time
//! since its last update, as in tower's `PeakEwma`: an endpoint that got no
//! traffic for a while (because it looked slow) is tried again.
//!
//! A failure multiplies the estimate by [`FAILURE_PENALTY`], up to
//! [`MAX_PENALTY`], and each answer divides the penalty again: the
//! estimate of an endpoint that fails for ever stays finite (at most
//! [`MAX_PENALTY`] × its slowest answer or failure), still decays with time
//! when read, and an endpoint that answers well again is back at its
//! latency after two answers. (Multiplying without a bound, as this did,
//! made the estimate infinite after a few hundred failures, and infinity
//! never decays: the endpoint got no traffic again.)
//!
//! Kept in three atomics (the latency and the penalty as `f64` bits, the
//! update time in µs since a process epoch) on the `Endpoint`, so it
//! survives table updates.
//! Concurrent updates race (last writer wins): a lost sample among many
//! costs nothing, while a lock or a compare-and-swap loop would cost every
//! response.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Time constant of the decay (Linkerd's default).
pub const DECAY: Duration = Duration::from_secs(10);
/// Estimate of an endpoint before its first response (Linkerd's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// A failure counts as a response this many times slower than the current
/// estimate (or than the failure itself, when it took longer): Finagle
/// penalizes failing endpoints the same way, so that PeakEwma steers away
/// from an endpoint that refuses or resets before any health mechanism
/// reacts.
pub const FAILURE_PENALTY: f64 = 8.0;
/// Largest penalty: two failures in a row. Bounded so that the estimate
/// stays finite and decays, and small enough that two answers undo it.
pub const MAX_PENALTY: f64 = FAILURE_PENALTY * FAILURE_PENALTY;

/// [`DECAY`] in µs.
pub const DECAY_US: f64 = DECAY.as_micros() as f64;

/// Microseconds since the first call in this process: a cheap monotonic
/// clock that fits an atomic.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A peak-EWMA latency estimate.
#[derive(Debug)]
pub struct PeakEwma {
    /// Nanoseconds, as `f64` bits: the latency, without the penalty.
    estimate: AtomicU64,
    /// The failure penalty, a factor in 1 ..= [`MAX_PENALTY`], as `f64`
    /// bits.
    penalty: AtomicU64,
    /// When `estimate` was last written, µs since the process epoch.
    updated: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl PeakEwma {
    /// An estimate of [`DEFAULT_RTT`], as of now.
    pub fn new() -> Self {
        Self::starting(DEFAULT_RTT, now_us())
    }

    /// An estimate of `rtt` at time `at` (µs since the epoch).
    pub fn starting(rtt: Duration, at: u64) -> Self {
        Self {
            estimate: AtomicU64::new((rtt.as_nanos() as f64).to_bits()),
            penalty: AtomicU64::new(1.0f64.to_bits()),
            updated: AtomicU64::new(at),
        }
    }

    /// Feeds a response time.
    pub fn observe(&self, rtt: Duration) {
        self.observe_at(rtt.as_nanos() as f64, now_us());
    }

    /// Feeds a failure that took `elapsed`.
    pub fn observe_failure(&self, elapsed: Duration) {
        self.observe_failure_at(elapsed.as_nanos() as f64, now_us());
    }

    /// Feeds a failure that took `elapsed_ns`, at `now` (µs since the
    /// epoch): the latency becomes the larger of its value decayed to now
    /// and the failure's time, and the penalty grows by
    /// [`FAILURE_PENALTY`], up to [`MAX_PENALTY`].
    pub fn observe_failure_at(&self, elapsed_ns: f64, now: u64) {
        let prev = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.updated.load(Ordering::Relaxed));
        let latency = (prev * (-(elapsed as f64) / DECAY_US).exp()).max(elapsed_ns);
        let penalty = f64::from_bits(self.penalty.load(Ordering::Relaxed));
        let penalty = (penalty * FAILURE_PENALTY).min(MAX_PENALTY);
        self.estimate.store(latency.to_bits(), Ordering::Relaxed);
        self.penalty.store(penalty.to_bits(), Ordering::Relaxed);
        self.updated.store(now, Ordering::Relaxed);
    }

    /// Feeds a sample of `rtt_ns` taken at `now` (µs since the epoch); an
    /// answer also divides the penalty by [`FAILURE_PENALTY`].
    pub fn observe_at(&self, rtt_ns: f64, now: u64) {
        let penalty = f64::from_bits(self.penalty.load(Ordering::Relaxed));
        if penalty > 1.0 {
            let penalty = (penalty / FAILURE_PENALTY).max(1.0);
            self.penalty.store(penalty.to_bits(), Ordering::Relaxed);
        }
        let prev = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let next = if rtt_ns >= prev {
            rtt_ns
        } else {
            let elapsed = now.saturating_sub(self.updated.load(Ordering::Relaxed));
            let decay = (-(elapsed as f64) / DECAY_US).exp();
            prev * decay + rtt_ns * (1.0 - decay)
        };
        self.estimate.store(next.to_bits(), Ordering::Relaxed);
        self.updated.store(now, Ordering::Relaxed);
    }

    /// The estimate (ns) and when it was last updated (µs since the epoch),
    /// undecayed: comparing two endpoints' decayed estimates needs only the
    /// difference of their update times, not the clock.
    pub fn raw(&self) -> (f64, u64) {
        let estimate = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let penalty = f64::from_bits(self.penalty.load(Ordering::Relaxed));
        (estimate * penalty, self.updated.load(Ordering::Relaxed))
    }

    /// The estimate at `now` (µs since the epoch), decayed toward zero since
    /// the last sample, in nanoseconds.
    pub fn estimate_ns(&self, now: u64) -> f64 {
        let (estimate, updated) = self.raw();
        let elapsed = now.saturating_sub(updated);
        if elapsed == 0 {
            estimate
        } else {
            estimate * (-(elapsed as f64) / DECAY_US).exp()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    #[test]
    fn a_peak_is_taken_at_once() {
        let e = PeakEwma::starting(Duration::from_millis(1), 0);
        e.observe_at(50.0 * MS, 10);
        assert_eq!(e.estimate_ns(10), 50.0 * MS);
    }

    #[test]
    fn lower_samples_pull_the_estimate_down_over_the_decay_time() {
        let e = PeakEwma::starting(Duration::from_millis(50), 0);
        // 1 ms later a 1 ms sample barely moves it.
        e.observe_at(MS, 1_000);
        let early = e.estimate_ns(1_000);
        assert!(early > 49.9 * MS && early < 50.0 * MS, "{early}");
        // After one decay time of steady 1 ms samples it is down by ~e.
        let step = 10_000; // 10 ms between samples
        let mut t = 1_000;
        while t < 1_000 + DECAY.as_micros() as u64 {
            t += step;
            e.observe_at(MS, t);
        }
        let after = e.estimate_ns(t);
        let expected = MS + 49.0 * MS / std::f64::consts::E;
        assert!((after - expected).abs() < 0.5 * MS, "{after} vs {expected}");
        // Much later it has converged on the samples.
        for _ in 0..10_000 {
            t += step;
            e.observe_at(MS, t);
        }
        assert!((e.estimate_ns(t) - MS).abs() < 0.01 * MS);
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero_when_read() {
        let e = PeakEwma::starting(Duration::from_millis(30), 0);
        let tau = DECAY.as_micros() as u64;
        let read = e.estimate_ns(tau);
        assert!((read - 30.0 * MS / std::f64::consts::E).abs() < 0.01 * MS);
        assert!(e.estimate_ns(10 * tau) < 0.01 * MS);
    }

    #[test]
    fn endless_failures_leave_a_finite_estimate_that_decays_and_two_answers_undo() {
        let e = PeakEwma::starting(Duration::from_millis(1), 0);
        let mut t = 0;
        for _ in 0..1_000 {
            t += 1_000;
            e.observe_failure_at(0.05 * MS, t);
        }
        let failed = e.estimate_ns(t);
        assert!(failed.is_finite() && failed <= MAX_PENALTY * MS, "{failed}");
        assert!(
            failed > 0.9 * FAILURE_PENALTY * MS,
            "still steered away from"
        );
        // Read later, it has decayed like any estimate.
        let tau = DECAY.as_micros() as u64;
        assert!(
            e.estimate_ns(t + 5 * tau) < MS,
            "{}",
            e.estimate_ns(t + 5 * tau)
        );
        // Answering well again at 1 ms: within two answers it is back.
        e.observe_at(MS, t + 1_000);
        e.observe_at(MS, t + 2_000);
        let back = e.estimate_ns(t + 2_000);
        assert!(back < 1.01 * MS, "{back}");
    }

    #[test]
    fn a_failure_costs_a_multiple_of_the_estimate() {
        let e = PeakEwma::new();
        let before = e.estimate_ns(now_us());
        e.observe_failure(Duration::from_micros(10));
        let after = e.estimate_ns(now_us());
        assert!(
            after > before * (FAILURE_PENALTY - 0.5),
            "{before} → {after}"
        );
    }
}
