//! A pool's resilience policies compiled for the request path: its client
//! (connect and idle timeouts, connection counting), retry policy, request
//! timeout and rate limiter. Built with the pool; the client and the
//! limiter are taken from the pool's [`PoolState`] when their settings are
//! unchanged, so pooled connections and rate-limit counts survive table
//! updates, and the circuit breaker's limits are updated in place.

use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::PoolRoute;

use crate::endpoint::PoolState;
use crate::ratelimit::RateLimiter;
use crate::retry::RetryPolicy;
use crate::upstream::Upstream;

/// What the request path needs of a pool's policies, resolved once.
#[derive(Debug)]
pub struct Policy {
    /// The pool's client to its endpoints.
    pub upstream: Arc<Upstream>,
    /// When failed attempts are retried.
    pub retry: RetryPolicy,
    /// From a request's arrival to its response head, retries included.
    pub request_timeout: Duration,
    /// The rate limit, when the pool has one.
    pub limiter: Option<Arc<RateLimiter>>,
}

impl Policy {
    /// Compiles `route`'s policies over the pool's kept `state`.
    pub fn new(route: &PoolRoute, state: &PoolState) -> Self {
        state.breaker.configure(&route.circuit_breaker());
        let timeouts = route.timeouts();
        Self {
            upstream: Upstream::kept(&state.upstream, &timeouts, &state.breaker),
            retry: RetryPolicy::new(&route.retries()),
            request_timeout: timeouts.request.get(),
            limiter: RateLimiter::kept(&state.limiter, route.rate_limit.as_ref()),
        }
    }
}
