//! When a failed attempt is tried again: the pool's retry policy in the
//! form the request path reads, the rules for what may be retried, the
//! Linkerd-style retry budget and the backoff between tries.
//!
//! Rules (README "Retries"):
//! - a retry always goes to an endpoint this request has not tried yet;
//!   with none left, the last failure is the answer;
//! - `ConnectFailure`: the endpoint could not be reached, nothing was sent,
//!   any method is retried, at once; and an idempotent request whose
//!   connection was lost before any byte of a response (the endpoint died
//!   or closed a kept-alive connection under it) is sent again, at once,
//!   as RFC 9110 §9.2.2 allows;
//! - these two retries take no place in the retry budget nor in
//!   `maxRetries`: they cost the pool nothing (nothing was processed, or
//!   the endpoint is gone), and an endpoint dying under load makes a
//!   burst of them at once, which those limits, made against retry
//!   storms on an overloaded pool, would turn into 502s (measured before:
//!   1 to 6 requests in 300,000 failed when one of three endpoints was
//!   killed under load). They stay bounded by `attempts` and by the
//!   endpoints left;
//! - `Reset`: the connection failed before a response head; retried when
//!   the request body was not sent (empty, or never read by the client);
//! - `GatewayError`: a 502, 503 or 504 from the endpoint or a per-try
//!   timeout; retried for idempotent methods (GET, HEAD, OPTIONS, PUT,
//!   DELETE, TRACE) or bodiless requests, when the body was not sent;
//! - `Reset` and `GatewayError` retries wait a jittered backoff first
//!   (Envoy's: uniform in 0 .. 25 ms × 2^(n-1), capped at 250 ms);
//! - each retry needs room in `circuitBreaker.maxRetries` (retries in
//!   flight) and in the retry budget, else the last failure is the answer.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use sluice_protocol::policy::{Retries, RetryOn};

/// Length of the budget's window, in one-second buckets.
const WINDOW_SECS: u64 = 10;
/// Retries per second always allowed, whatever the ratio (Linkerd's
/// `minRetriesPerSecond`).
pub const MIN_RETRIES_PER_SEC: u64 = 10;
/// First backoff step (Envoy's `base_interval`).
const BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Longest backoff (Envoy's default `max_interval`, 10 × base).
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// A pool's retry policy, resolved once per table build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Timeout of each try, to the response head.
    pub per_try_timeout: Option<Duration>,
    connect_failure: bool,
    reset: bool,
    gateway_error: bool,
    budget_percent: u64,
}

impl RetryPolicy {
    /// From the route's `retries`.
    pub fn new(r: &Retries) -> Self {
        Self {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout.map(|d| d.get()),
            connect_failure: r.retry_on.contains(&RetryOn::ConnectFailure),
            reset: r.retry_on.contains(&RetryOn::Reset),
            gateway_error: r.retry_on.contains(&RetryOn::GatewayError),
            budget_percent: u64::from(r.budget_percent.get()),
        }
    }

    /// `budgetPercent`.
    pub fn budget_percent(&self) -> u64 {
        self.budget_percent
    }

    /// Whether any failure can be retried at all.
    pub fn enabled(&self) -> bool {
        self.attempts > 0 && (self.connect_failure || self.reset || self.gateway_error)
    }

    /// Whether a request may be tried again after it was sent (resets,
    /// gateway errors), which needs its head kept aside.
    pub fn resends(&self) -> bool {
        self.attempts > 0 && (self.reset || self.gateway_error)
    }

    /// Whether an attempt that failed with `failure` may be tried again,
    /// as far as the request is concerned (budget, limits and endpoints
    /// left are checked by the caller).
    pub fn allows(&self, failure: Failure, req: RequestTraits) -> bool {
        if !req.body_intact {
            return false;
        }
        match failure {
            Failure::Connect => self.connect_failure,
            Failure::Dropped => (self.connect_failure && req.idempotent) || self.reset,
            Failure::Reset => self.reset,
            Failure::Gateway | Failure::Timeout => {
                self.gateway_error && (req.idempotent || req.bodiless)
            }
            Failure::Overflow | Failure::Client => false,
        }
    }
}

/// What an attempt that did not succeed came to; the kinds `retryOn` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The endpoint could not be reached (refused, unreachable, connect
    /// timeout): nothing was sent.
    Connect,
    /// The connection was lost (closed, reset) before any byte of a
    /// response: the endpoint died or closed the connection under the
    /// request. A kind of `Reset`, retried for idempotent requests under
    /// `ConnectFailure` too.
    Dropped,
    /// The connection failed after it was made, before a response head.
    Reset,
    /// The endpoint answered 502, 503 or 504.
    Gateway,
    /// No response head within `perTryTimeout`.
    Timeout,
    /// The pool's circuit breaker refused a new connection: not retried
    /// (every endpoint of the pool shares the limit).
    Overflow,
    /// The client's request body failed (malformed, cut short): the
    /// client's fault, never retried and never counted against the
    /// endpoint.
    Client,
}

impl Failure {
    /// Whether a retry after this failure waits a backoff first. A connect
    /// failure sent nothing and a dropped connection means a dead
    /// endpoint, so the next endpoint is tried at once.
    pub fn backs_off(self) -> bool {
        !matches!(self, Self::Connect | Self::Dropped)
    }

    /// Whether a retry after this failure is taken without a place in the
    /// retry budget or in `maxRetries` (see the module's rules).
    pub fn retries_free(self) -> bool {
        matches!(self, Self::Connect | Self::Dropped)
    }
}

/// What a retry decision needs to know of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTraits {
    /// GET, HEAD, OPTIONS, PUT, DELETE or TRACE.
    pub idempotent: bool,
    /// The request had no body at all.
    pub bodiless: bool,
    /// The body can be sent again: bodiless, or not read by any attempt.
    pub body_intact: bool,
}

/// Whether `method` is idempotent (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether an endpoint's status is a gateway error (`GatewayError`).
pub fn gateway_error(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// Wait before retry number `n` (1-based): uniform in 0 ..
/// min(25 ms × 2^(n-1), 250 ms), Envoy's full-jitter backoff.
pub fn backoff(n: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    ceiling.mul_f64((r % 1024) as f64 / 1024.0)
}

/// One second of the budget's window.
#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// Linkerd's retry budget: retries over the last 10 s may be at most
/// `budgetPercent` of the requests in that time, or 10 per second,
/// whichever is more. A ring of one-second buckets of atomics: a request
/// adds to the current bucket, a retry sums the ring. Written here because
/// tower's `TpsBudget` would bring tower in for ~60 lines, and its
/// reserve is added to the ratio where ours is a floor.
///
/// A bucket is recycled by the first request of a new second (a CAS on its
/// second); a count racing with that reset may be lost, which only makes
/// the budget off by a request.
#[derive(Debug)]
pub struct RetryBudget {
    start: Instant,
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            buckets: Default::default(),
        }
    }
}

impl RetryBudget {
    /// The current second, counted from 1 (0 marks an unused bucket).
    fn now(&self) -> u64 {
        self.start.elapsed().as_secs() + 1
    }

    fn bucket(&self, second: u64) -> &Bucket {
        let b = &self.buckets[(second % WINDOW_SECS) as usize];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Release);
            b.retries.store(0, Ordering::Release);
        }
        b
    }

    /// Counts a request (first tries only).
    pub fn deposit(&self) {
        let now = self.now();
        self.bucket(now).requests.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes one retry from the budget, or says it is spent.
    pub fn withdraw(&self, percent: u64) -> bool {
        let now = self.now();
        let current = self.bucket(now);
        current.retries.fetch_add(1, Ordering::AcqRel);
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let s = b.second.load(Ordering::Acquire);
            if s != 0 && s + WINDOW_SECS > now {
                requests += u64::from(b.requests.load(Ordering::Acquire));
                retries += u64::from(b.retries.load(Ordering::Acquire));
            }
        }
        let allowed = (requests * percent / 100).max(MIN_RETRIES_PER_SEC * WINDOW_SECS);
        if retries > allowed {
            current.retries.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::policy::Percent;

    fn policy(retry_on: Vec<RetryOn>) -> RetryPolicy {
        RetryPolicy::new(&Retries {
            attempts: 2,
            per_try_timeout: None,
            retry_on,
            budget_percent: Percent::try_from(20).expect("percent"),
        })
    }

    #[test]
    fn what_may_be_retried() {
        let all = policy(vec![
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::GatewayError,
        ]);
        let get = RequestTraits {
            idempotent: true,
            bodiless: true,
            body_intact: true,
        };
        let post_unread = RequestTraits {
            idempotent: false,
            bodiless: false,
            body_intact: true,
        };
        let post_sent = RequestTraits {
            body_intact: false,
            ..post_unread
        };
        for f in [
            Failure::Connect,
            Failure::Reset,
            Failure::Gateway,
            Failure::Timeout,
        ] {
            assert!(all.allows(f, get), "{f:?}");
            assert!(!all.allows(f, post_sent), "{f:?}");
        }
        assert!(all.allows(Failure::Connect, post_unread));
        assert!(!all.allows(Failure::Client, get), "a client's fault");
        let defaults = RetryPolicy::new(&Retries::default());
        assert!(defaults.allows(Failure::Dropped, get));
        assert!(!defaults.allows(Failure::Dropped, post_unread));
        assert!(!defaults.allows(
            Failure::Dropped,
            RequestTraits {
                body_intact: false,
                ..get
            }
        ));
        assert!(!defaults.allows(Failure::Reset, get));
        assert!(all.allows(Failure::Reset, post_unread));
        assert!(!all.allows(Failure::Gateway, post_unread));
        assert!(!all.allows(Failure::Overflow, get));
        let connect_only = policy(vec![RetryOn::ConnectFailure]);
        assert!(!connect_only.allows(Failure::Gateway, get));
        assert!(connect_only.enabled());
        assert!(!policy(vec![]).enabled());
    }

    #[test]
    fn the_budget_has_a_floor_and_a_ratio() {
        let budget = RetryBudget::default();
        let floor = (MIN_RETRIES_PER_SEC * WINDOW_SECS) as usize;
        let granted = (0..2 * floor).filter(|_| budget.withdraw(20)).count();
        assert_eq!(granted, floor, "without requests, the floor");
        for _ in 0..5_000 {
            budget.deposit();
        }
        let more = (0..5_000).filter(|_| budget.withdraw(20)).count();
        assert_eq!(more, 1_000 - floor, "20 % of 5,000 requests in all");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for n in 1..20 {
            assert!(backoff(n) <= BACKOFF_MAX);
        }
        assert!(backoff(1) <= BACKOFF_BASE);
    }
}
