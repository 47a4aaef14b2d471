//! A pool's resilience policies, each a leaf the table compiles a pool's
//! route into ([`crate::table::Policy`]): the circuit breaker's counts and
//! limits ([`breaker`]), the rate limiter ([`ratelimit`]), and when a failed
//! attempt is retried ([`retry`]).

pub mod breaker;
pub mod ratelimit;
pub mod retry;
