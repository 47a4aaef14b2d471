//! A pool's resilience policies compiled for the request path: its client
//! (connect and idle timeouts, connection counting), retry policy, request
//! timeout and rate limiter. Built with the pool; the client and the
//! limiter are taken from the pool's [`KeptPool`] when their settings are
//! unchanged, so pooled connections and rate-limit counts survive table
//! updates, and the circuit breaker's limits are updated in place.

pub mod breaker;
pub mod ratelimit;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::PoolRoute;

use crate::endpoint::KeptPool;
use crate::policy::ratelimit::RateLimiter;
use crate::policy::retry::RetryPolicy;
use crate::upstream::client::Upstream;

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
    pub fn new(route: &PoolRoute, state: &KeptPool) -> Self {
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use crate::table::PickRequest;

    use sluice_protocol::{RouteFile, RouteTable};

    use crate::endpoint::Registry;
    use crate::metrics::Metrics;
    use crate::table::Table;

    fn routes(version: u64, yaml: &str) -> RouteTable {
        let file = RouteFile::from_yaml(yaml).expect("valid");
        RouteTable::from_pools(version, file.pools)
    }

    #[test]
    fn client_and_limiter_survive_updates_that_keep_their_settings() {
        let (metrics, registry) = (Metrics::new(), Registry::default());
        let v1 = routes(
            1,
            "pools:\n  - {name: a, rateLimit: {requestsPerSecond: 5}, endpoints: [{address: 127.0.0.1:1}]}\n",
        );
        let t1 = Table::build(&v1, &Table::default(), &metrics, &registry);
        let v2 = routes(
            2,
            "pools:\n  - {name: a, rateLimit: {requestsPerSecond: 5}, endpoints: [{address: 127.0.0.1:2}]}\n",
        );
        let t2 = Table::build(&v2, &t1, &metrics, &registry);
        let (p1, p2) = (t1.pool("a").expect("a"), t2.pool("a").expect("a"));
        assert!(!std::sync::Arc::ptr_eq(p1, p2), "the pool was rebuilt");
        let (l1, l2) = (p1.policy.limiter.as_ref(), p2.policy.limiter.as_ref());
        assert!(std::sync::Arc::ptr_eq(l1.expect("l1"), l2.expect("l2")));
        assert!(std::sync::Arc::ptr_eq(
            &p1.policy.upstream,
            &p2.policy.upstream
        ));

        let v3 = routes(
            3,
            "pools:\n  - {name: a, rateLimit: {requestsPerSecond: 6}, timeouts: {connect: 1s}, endpoints: [{address: 127.0.0.1:2}]}\n",
        );
        let t3 = Table::build(&v3, &t2, &metrics, &registry);
        let p3 = t3.pool("a").expect("a");
        assert!(!std::sync::Arc::ptr_eq(
            p2.policy.limiter.as_ref().expect("l2"),
            p3.policy.limiter.as_ref().expect("l3")
        ));
        assert!(!std::sync::Arc::ptr_eq(
            &p2.policy.upstream,
            &p3.policy.upstream
        ));
    }

    #[test]
    fn a_retry_goes_to_an_endpoint_not_tried() {
        let (metrics, registry) = (Metrics::new(), Registry::default());
        let v1 = routes(
            1,
            "pools:\n  - {name: a, endpoints: [{address: 127.0.0.1:1}, {address: 127.0.0.1:2}, {address: 127.0.0.1:3}]}\n",
        );
        let t = Table::build(&v1, &Table::default(), &metrics, &registry);
        let pool = t.pool("a").expect("a");
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        for _ in 0..10 {
            let next = pool
                .pick_excluding(&PickRequest::default(), &[addr(1), addr(3)])
                .expect("one left");
            assert_eq!(next.addr, addr(2));
        }
        assert!(
            pool.pick_excluding(&PickRequest::default(), &[addr(1), addr(2), addr(3)])
                .is_none()
        );
    }
}
