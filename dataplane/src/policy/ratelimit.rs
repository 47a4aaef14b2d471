//! Local rate limiting of a pool (`rateLimit`): a token bucket or a sliding
//! window, per pool, per client IP or per header value. Over the limit the
//! proxy answers 429 with `Retry-After` and counts the request in
//! `sluice_ratelimited_total{pool}`. Limits are per dataplane.
//!
//! Each key's state is one `u64`, updated by a pure step function:
//! - token bucket as GCRA (the "theoretical arrival time" of the next
//!   request, in nanoseconds): equivalent to a bucket of `burst` tokens
//!   refilled at `requestsPerSecond`, with no separate refill clock;
//! - sliding window as Cloudflare's two fixed one-second windows, the
//!   previous one weighted by how much of it still overlaps the last
//!   second; packed as window number (24 bits) and the two counts (20 bits
//!   each, so the limit is at most 1,048,575 a second). `burst` plays no
//!   part.
//!
//! The pool-wide limit (and requests that lack the keyed header, which
//! share one bucket) is a single atomic updated by compare-and-swap. Keyed
//! limits live in 16 mutex-guarded shards of `hash(key) → state`, at most
//! [`MAX_KEYS`] per pool. A key is stored by a 64-bit keyed SipHash of
//! its value, not the value itself, so memory per key is fixed (two keys
//! colliding would share a bucket: odds of ~n²/2⁶⁵). A full shard first
//! drops idle keys — a key whose bucket refilled, or whose windows passed,
//! is the same as a missing one — and if still over 7/8 full, drops
//! arbitrary keys, which only lets those keys start afresh. No crate did
//! this with bounded memory and without allocating per request.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use http::HeaderMap;
use http::header::HeaderName;
use sluice_protocol::policy::{RateLimit, RateLimitAlgorithm, RateLimitKey};

/// Most keys one pool's limiter keeps (per dataplane).
pub const MAX_KEYS: usize = 100_000;
const SHARDS: usize = 16;
const SECOND: u64 = 1_000_000_000;
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const WINDOW_MASK: u64 = (1 << 24) - 1;

/// The step of one algorithm, with its constants.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// GCRA: `interval` ns between requests at the sustained rate, up to
    /// `tolerance` ns (burst × interval) ahead of the clock.
    Gcra { interval: u64, tolerance: u64 },
    /// At most `limit` requests over the last second.
    Sliding { limit: u64 },
}

impl Step {
    fn new(rl: &RateLimit) -> Self {
        let rps = u64::from(rl.requests_per_second.get());
        match rl.algorithm {
            RateLimitAlgorithm::TokenBucket => {
                let interval = (SECOND / rps).max(1);
                let burst = u64::from(rl.burst.unwrap_or(rl.requests_per_second.get())).max(1);
                Step::Gcra {
                    interval,
                    tolerance: interval.saturating_mul(burst),
                }
            }
            RateLimitAlgorithm::SlidingWindow => Step::Sliding {
                limit: rps.min(COUNT_MAX),
            },
        }
    }

    /// One request at `now` (ns since the limiter started) against
    /// `state`: the new state, or how many ns until it would pass.
    fn apply(self, state: u64, now: u64) -> Result<u64, u64> {
        match self {
            Step::Gcra {
                interval,
                tolerance,
            } => {
                let tat = state.max(now).saturating_add(interval);
                let ahead = tat - now;
                if ahead > tolerance {
                    Err(ahead - tolerance)
                } else {
                    Ok(tat)
                }
            }
            Step::Sliding { limit } => {
                let window = now / SECOND;
                let into = now % SECOND;
                let (cur, prev) = sliding_counts(state, window);
                let weighted = prev * (SECOND - into) / SECOND;
                if weighted + cur < limit {
                    return Ok(pack(window, (cur + 1).min(COUNT_MAX), prev));
                }
                let wait = if cur >= limit {
                    // Into the next window, until this one's weight fades
                    // enough: cur × (1 - t) + 1 ≤ limit.
                    let t = SECOND - (limit.saturating_sub(1)) * SECOND / cur.max(1);
                    (SECOND - into) + t
                } else {
                    // prev × (1 - e) + cur + 1 ≤ limit.
                    let e = SECOND - (limit - cur - 1) * SECOND / prev.max(1);
                    e.saturating_sub(into).max(1)
                };
                Err(wait)
            }
        }
    }

    /// Whether `state` is the same as no state at all at `now`.
    fn is_idle(self, state: u64, now: u64) -> bool {
        match self {
            Step::Gcra { .. } => state <= now,
            Step::Sliding { .. } => sliding_counts(state, now / SECOND) == (0, 0),
        }
    }
}

fn pack(window: u64, cur: u64, prev: u64) -> u64 {
    ((window & WINDOW_MASK) << (2 * COUNT_BITS)) | (cur << COUNT_BITS) | prev
}

/// The current and previous window's counts of `state` as seen in
/// `window`.
fn sliding_counts(state: u64, window: u64) -> (u64, u64) {
    let stored = state >> (2 * COUNT_BITS);
    let cur = (state >> COUNT_BITS) & COUNT_MAX;
    if stored == window & WINDOW_MASK {
        (cur, state & COUNT_MAX)
    } else if stored == window.wrapping_sub(1) & WINDOW_MASK {
        (0, cur)
    } else {
        (0, 0)
    }
}

/// The keys are SipHash values already: hashing them again is waste.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Shard = HashMap<u64, u64, BuildHasherDefault<PassThrough>>;

/// What a request was counted by.
#[derive(Clone, Debug)]
enum Key {
    Pool,
    SourceIp,
    Header(HeaderName),
}

/// One pool's limiter; kept across tables while `rateLimit` is unchanged.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimit,
    step: Step,
    key: Key,
    start: Instant,
    hasher: std::collections::hash_map::RandomState,
    /// State of the pool-wide bucket, and of requests without the header.
    shared: AtomicU64,
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
}

impl RateLimiter {
    /// A limiter for `config` keeping at most [`MAX_KEYS`] keys.
    pub fn new(config: &RateLimit) -> Self {
        Self::with_max_keys(config, MAX_KEYS)
    }

    /// The same with another key cap (at least one key per shard).
    pub fn with_max_keys(config: &RateLimit, max_keys: usize) -> Self {
        let key = match (config.key, &config.header) {
            (RateLimitKey::Pool, _) => Key::Pool,
            (RateLimitKey::SourceIp, _) => Key::SourceIp,
            (RateLimitKey::Header, Some(h)) => match HeaderName::try_from(h.as_str()) {
                Ok(name) => Key::Header(name),
                Err(_) => Key::Pool,
            },
            // Validation requires `header` with key Header.
            (RateLimitKey::Header, None) => Key::Pool,
        };
        let shards = match key {
            Key::Pool => Box::default(),
            _ => (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        };
        Self {
            config: config.clone(),
            step: Step::new(config),
            key,
            start: Instant::now(),
            hasher: Default::default(),
            shared: AtomicU64::new(0),
            shards,
            shard_cap: (max_keys / SHARDS).max(1),
        }
    }

    /// The limiter to use for a pool being built: the kept one when its
    /// configuration is unchanged, so counts survive table updates.
    pub fn kept(
        slot: &Mutex<Option<Arc<RateLimiter>>>,
        config: Option<&RateLimit>,
    ) -> Option<Arc<RateLimiter>> {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        match (config, slot.as_ref()) {
            (None, _) => {
                *slot = None;
                None
            }
            (Some(c), Some(l)) if l.config == *c => Some(Arc::clone(l)),
            (Some(c), _) => {
                let l = Arc::new(RateLimiter::new(c));
                *slot = Some(Arc::clone(&l));
                Some(l)
            }
        }
    }

    /// Counts a request from `peer` with `headers`: `Ok` when it may pass,
    /// or the seconds the client should wait (`Retry-After`, at least 1).
    pub fn check(&self, headers: &HeaderMap, peer: IpAddr) -> Result<(), u64> {
        let now = self.start.elapsed().as_nanos() as u64;
        let hash = match &self.key {
            Key::Pool => None,
            Key::SourceIp => Some(self.hasher.hash_one(peer)),
            Key::Header(name) => headers
                .get(name)
                .map(|v| self.hasher.hash_one(v.as_bytes())),
        };
        let result = match hash {
            None => self.check_shared(now),
            Some(h) => self.check_key(h, now),
        };
        result.map_err(|wait_ns| wait_ns.div_ceil(SECOND).max(1))
    }

    fn check_shared(&self, now: u64) -> Result<(), u64> {
        let mut state = self.shared.load(Ordering::Acquire);
        loop {
            let next = self.step.apply(state, now)?;
            match self.shared.compare_exchange_weak(
                state,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => state = seen,
            }
        }
    }

    fn lock(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // Bits the map itself uses little: its bucket index takes the low
        // bits and its tag the top seven.
        let shard = &self.shards[(hash >> 40) as usize % self.shards.len()];
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_key(&self, hash: u64, now: u64) -> Result<(), u64> {
        let mut map = self.lock(hash);
        if let Some(state) = map.get_mut(&hash) {
            *state = self.step.apply(*state, now)?;
            return Ok(());
        }
        let state = self.step.apply(0, now)?;
        if map.len() >= self.shard_cap {
            self.make_room(&mut map, now);
        }
        map.insert(hash, state);
        Ok(())
    }

    /// Frees at least an eighth of a full shard: idle keys first, then
    /// arbitrary ones. Amortised, a few entries' work per new key.
    fn make_room(&self, map: &mut Shard, now: u64) {
        let step = self.step;
        map.retain(|_, s| !step.is_idle(*s, now));
        let keep = self.shard_cap - self.shard_cap.div_ceil(8);
        if map.len() > keep {
            let excess: Vec<u64> = map.keys().take(map.len() - keep).copied().collect();
            for k in excess {
                map.remove(&k);
            }
        }
    }

    /// Keys held (for tests and `/debug/pools`).
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// The configuration it enforces.
    pub fn config(&self) -> &RateLimit {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::num::NonZeroU32;

    fn limit(rps: u32, burst: Option<u32>, algorithm: RateLimitAlgorithm) -> RateLimit {
        RateLimit {
            requests_per_second: NonZeroU32::new(rps).expect("nonzero"),
            burst,
            algorithm,
            key: RateLimitKey::Pool,
            header: None,
        }
    }

    fn run(step: Step, times: &[u64]) -> Vec<bool> {
        let mut state = 0;
        times
            .iter()
            .map(|t| match step.apply(state, *t) {
                Ok(s) => {
                    state = s;
                    true
                }
                Err(_) => false,
            })
            .collect()
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let step = Step::new(&limit(5, Some(3), RateLimitAlgorithm::TokenBucket));
        // Three at once, then one per 200 ms.
        let at = |ms: u64| ms * 1_000_000;
        let got = run(
            step,
            &[at(0), at(0), at(0), at(0), at(100), at(200), at(210)],
        );
        assert_eq!(got, [true, true, true, false, false, true, false]);
        let Err(wait) = step.apply(3 * at(200), 0) else {
            panic!("full")
        };
        assert_eq!(wait, at(200), "one token away");
    }

    #[test]
    fn sliding_window_weights_the_previous_second() {
        let step = Step::new(&limit(10, None, RateLimitAlgorithm::SlidingWindow));
        let ms = 1_000_000;
        let mut times: Vec<u64> = vec![900 * ms; 12];
        // At 1.5 s the previous window counts half: 5 of 10 used.
        times.extend(std::iter::repeat_n(1_500 * ms, 7));
        let got = run(step, &times);
        let passed_first = got[..12].iter().filter(|p| **p).count();
        let passed_second = got[12..].iter().filter(|p| **p).count();
        assert_eq!((passed_first, passed_second), (10, 5));
        // Idle two windows later.
        let state = pack(1, 5, 10);
        assert!(!step.is_idle(state, 2 * SECOND));
        assert!(step.is_idle(state, 3 * SECOND));
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        let rl = RateLimiter::new(&limit(1, Some(1), RateLimitAlgorithm::TokenBucket));
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(rl.check(&HeaderMap::new(), ip), Ok(()));
        assert_eq!(rl.check(&HeaderMap::new(), ip), Err(1));
    }

    #[test]
    fn keys_are_bounded_in_memory() {
        let mut cfg = limit(1, Some(1), RateLimitAlgorithm::TokenBucket);
        cfg.key = RateLimitKey::SourceIp;
        let rl = RateLimiter::with_max_keys(&cfg, 1_600);
        for i in 0..20_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(rl.check(&HeaderMap::new(), ip), Ok(()), "new keys pass");
            assert!(rl.keys() <= 1_600 || i % 1000 != 0);
        }
        assert!(rl.keys() <= 1_600, "{} keys", rl.keys());
        assert!(rl.keys() >= 1_000, "recent keys are kept: {}", rl.keys());
        // A recent key is still limited.
        let last = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 19_999));
        assert_eq!(rl.check(&HeaderMap::new(), last), Err(1));
    }

    #[test]
    fn an_unchanged_config_keeps_its_limiter() {
        let slot = Mutex::new(None);
        let cfg = limit(5, None, RateLimitAlgorithm::TokenBucket);
        let a = RateLimiter::kept(&slot, Some(&cfg)).expect("limiter");
        let b = RateLimiter::kept(&slot, Some(&cfg)).expect("limiter");
        assert!(Arc::ptr_eq(&a, &b));
        let other = limit(6, None, RateLimitAlgorithm::TokenBucket);
        let c = RateLimiter::kept(&slot, Some(&other)).expect("limiter");
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(RateLimiter::kept(&slot, None).is_none());
    }
}
