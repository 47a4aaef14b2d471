//! Circuit breaker thresholds of a pool (Envoy's `circuit_breakers`): how
//! many requests, retries, pending connects and open connections a pool may
//! have at once on this dataplane. Over a limit the request fails at once
//! with 503, `x-sluice-error: overflow` and `x-sluice-overflow` naming the
//! limit, instead of queueing behind an endpoint that is already drowning.
//!
//! The counts live in the pool's [`KeptPool`](crate::endpoint::KeptPool),
//! so they survive table updates; the limits are atomics set when a table
//! is built, so a changed limit applies to requests already counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use sluice_protocol::policy::CircuitBreaker;

/// Header naming the limit an overflow hit.
pub const OVERFLOW_HEADER: &str = "x-sluice-overflow";

/// Which limit a request ran into. The names (kebab-case of the
/// `circuitBreaker` fields) are what `x-sluice-overflow` carries; they are
/// part of the outside contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// `maxConnections`: a new connection was needed and the pool has that
    /// many open.
    MaxConnections,
    /// `maxPendingRequests`: that many requests wait for a connection.
    MaxPendingRequests,
    /// `maxRequests`: that many requests are in flight to the pool.
    MaxRequests,
    /// `maxRetries`: that many retries are in flight (only refuses a retry;
    /// the request then gets its last failure, not an overflow).
    MaxRetries,
}

impl Overflow {
    /// Value of `x-sluice-overflow`.
    pub fn header(self) -> &'static str {
        match self {
            Self::MaxConnections => "max-connections",
            Self::MaxPendingRequests => "max-pending-requests",
            Self::MaxRequests => "max-requests",
            Self::MaxRetries => "max-retries",
        }
    }

    /// The field of `circuitBreaker`, for messages.
    pub fn field(self) -> &'static str {
        match self {
            Self::MaxConnections => "maxConnections",
            Self::MaxPendingRequests => "maxPendingRequests",
            Self::MaxRequests => "maxRequests",
            Self::MaxRetries => "maxRetries",
        }
    }
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "circuit breaker {} reached", self.field())
    }
}

impl std::error::Error for Overflow {}

/// One counter and its limit.
#[derive(Debug)]
struct Gauge {
    count: AtomicU32,
    limit: AtomicU32,
}

impl Gauge {
    fn new(limit: u32) -> Self {
        Self {
            count: AtomicU32::new(0),
            limit: AtomicU32::new(limit),
        }
    }

    /// Counts one more unless at the limit. Increment first, undo when
    /// over: one atomic in the common case, and never more than the limit
    /// counted at once.
    fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        if self.count.fetch_add(1, Ordering::AcqRel) >= limit {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The four counters of a pool, with their current limits.
#[derive(Debug)]
pub struct Breaker {
    connections: Gauge,
    pending: Gauge,
    requests: Gauge,
    retries: Gauge,
}

impl Default for Breaker {
    fn default() -> Self {
        let d = CircuitBreaker::default();
        let b = Self {
            connections: Gauge::new(0),
            pending: Gauge::new(0),
            requests: Gauge::new(0),
            retries: Gauge::new(0),
        };
        b.configure(&d);
        b
    }
}

/// What a [`Breaker`] counts; a [`Held`] gives its count back when dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Connection,
    Pending,
    Request,
    Retry,
}

impl Breaker {
    /// Sets the limits (a table was built).
    pub fn configure(&self, cb: &CircuitBreaker) {
        let set = |g: &Gauge, v: u32| g.limit.store(v, Ordering::Relaxed);
        set(&self.connections, cb.max_connections.get());
        set(&self.pending, cb.max_pending_requests.get());
        set(&self.requests, cb.max_requests.get());
        set(&self.retries, cb.max_retries);
    }

    fn gauge(&self, kind: Kind) -> &Gauge {
        match kind {
            Kind::Connection => &self.connections,
            Kind::Pending => &self.pending,
            Kind::Request => &self.requests,
            Kind::Retry => &self.retries,
        }
    }

    fn acquire(self: &Arc<Self>, kind: Kind, over: Overflow) -> Result<Held, Overflow> {
        if self.gauge(kind).try_acquire() {
            Ok(Held {
                breaker: Arc::clone(self),
                kind,
            })
        } else {
            Err(over)
        }
    }

    /// Admits a request to the pool (`maxRequests`); it counts until the
    /// guard drops, at the end of the response body.
    pub fn request(self: &Arc<Self>) -> Result<Held, Overflow> {
        self.acquire(Kind::Request, Overflow::MaxRequests)
    }

    /// Admits a retry (`maxRetries`) for as long as the guard lives.
    pub fn retry(self: &Arc<Self>) -> Result<Held, Overflow> {
        self.acquire(Kind::Retry, Overflow::MaxRetries)
    }

    /// Admits a connect in progress (`maxPendingRequests`).
    pub fn pending(self: &Arc<Self>) -> Result<Held, Overflow> {
        self.acquire(Kind::Pending, Overflow::MaxPendingRequests)
    }

    /// Admits a new open connection (`maxConnections`), held by the
    /// connection until it closes.
    pub fn connection(self: &Arc<Self>) -> Result<Held, Overflow> {
        self.acquire(Kind::Connection, Overflow::MaxConnections)
    }

    /// Open upstream connections of the pool.
    pub fn connections(&self) -> u32 {
        self.connections.count.load(Ordering::Relaxed)
    }

    /// Requests waiting for a connection.
    pub fn pending_requests(&self) -> u32 {
        self.pending.count.load(Ordering::Relaxed)
    }

    /// Requests in flight to the pool.
    pub fn requests(&self) -> u32 {
        self.requests.count.load(Ordering::Relaxed)
    }
}

/// One unit of a [`Breaker`] count, given back on drop.
#[derive(Debug)]
pub struct Held {
    breaker: Arc<Breaker>,
    kind: Kind,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.breaker.gauge(self.kind).release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn limits_hold_and_guards_give_back() {
        let b = Arc::new(Breaker::default());
        let two = NonZeroU32::new(2).expect("nonzero");
        b.configure(&CircuitBreaker {
            max_requests: two,
            max_retries: 0,
            ..CircuitBreaker::default()
        });
        let first = b.request().expect("first");
        let _second = b.request().expect("second");
        assert_eq!(b.request().err(), Some(Overflow::MaxRequests));
        assert_eq!(b.requests(), 2);
        drop(first);
        assert!(b.request().is_ok());
        assert_eq!(b.retry().err(), Some(Overflow::MaxRetries));
        assert_eq!(b.requests(), 1, "the refused ones were not counted");
    }
}
