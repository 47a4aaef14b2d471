//! Per-endpoint and per-pool state that outlives table versions.
//!
//! A table update rebuilds a pool's balancer, never its state: the
//! [`Endpoint`] of an address that stays in a pool is the same `Arc` in the
//! new table, so its in-flight count, latency estimate, health and ejection
//! carry over, and the [`KeptPool`] (limits in use, retry budget, rate
//! limiter, availability epoch) is kept by pool name. [`Registry`] holds the
//! live ones weakly so that an endpoint that leaves every table is freed.

pub mod outlier;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::Authority;

use crate::balance::Load;
use crate::balance::ewma::{self, PeakEwma};
use crate::health::Health;
use crate::metrics::{CodeCounters, HealthGauge, PoolEndpointCode};
use crate::policy::breaker::Breaker;
use crate::policy::ratelimit::RateLimiter;
use crate::policy::retry::RetryBudget;
use crate::upstream::client::Upstream;
use crate::upstream::{Dialable, Idle};
use outlier::PoolOutlier;

/// One endpoint of one pool.
#[derive(Debug)]
pub struct Endpoint {
    /// Socket address.
    pub addr: SocketAddr,
    /// The same, as the upstream URI's authority (parsed once).
    pub authority: Authority,
    /// `sluice_upstream_requests_total` of this endpoint.
    pub upstream: CodeCounters<PoolEndpointCode>,
    /// The owning pool's state (its availability epoch is bumped when this
    /// endpoint's availability changes).
    pub pool: Arc<KeptPool>,
    /// Active health check verdict and passive outlier (ejection) state.
    pub health: Health,
    in_flight: AtomicU32,
    latency: PeakEwma,
    /// Idle keep-alive connections to this endpoint (the upstream side's).
    pub idle: Idle,
}

impl Dialable for Endpoint {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn idle(&self) -> &Idle {
        &self.idle
    }
}

impl Endpoint {
    /// A fresh endpoint with no history.
    pub fn new(
        addr: SocketAddr,
        upstream: CodeCounters<PoolEndpointCode>,
        healthy: HealthGauge,
        pool: Arc<KeptPool>,
    ) -> Self {
        Self {
            addr,
            // A socket address always renders as a valid authority.
            authority: Authority::try_from(addr.to_string())
                .unwrap_or_else(|_| Authority::from_static("invalid")),
            upstream,
            pool,
            health: Health::new(healthy),
            in_flight: AtomicU32::new(0),
            latency: PeakEwma::new(),
            idle: Idle::default(),
        }
    }

    /// Counts a request to this endpoint as in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Requests to this endpoint that have not finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Feeds the time to a response head into the latency estimate.
    pub fn observe_latency(&self, rtt: Duration) {
        self.latency.observe(rtt);
    }

    /// Feeds a failed exchange (connect error, reset) into the latency
    /// estimate as a penalty, so that PeakEwma steers away from it.
    pub fn observe_failure(&self, elapsed: Duration) {
        self.latency.observe_failure(elapsed);
    }

    /// The peak-EWMA latency estimate, decayed to now, in nanoseconds.
    pub fn latency_estimate_ns(&self) -> f64 {
        self.latency.estimate_ns(ewma::now_us())
    }

    /// Whether the endpoint may take traffic (healthy and not ejected).
    pub fn is_available(&self) -> bool {
        self.health.is_available()
    }

    /// Its availability changed (a check verdict, an ejection or a return):
    /// shows it in `sluice_endpoint_healthy` and rebuilds the pool's
    /// balancer on the caller's task.
    pub fn availability_changed(&self) {
        self.health.show();
        self.pool.availability_changed();
    }

    /// An attempt to this endpoint succeeded (for outlier detection).
    pub fn record_success(&self) {
        outlier::record_success(self);
    }

    /// An attempt to this endpoint failed: connect error, reset, timeout
    /// (for outlier detection; may eject it).
    pub fn record_failure(self: &Arc<Self>) {
        outlier::record_failure(self);
    }

    /// The endpoint refused a connection: ejected at once when the pool
    /// has outlier detection (see [`outlier::record_refused`]).
    pub fn record_refused(self: &Arc<Self>) {
        outlier::record_refused(self);
    }

    /// The endpoint answered with `status`: 502, 503 and 504 count as
    /// failures, anything else as a success.
    pub fn record_status(self: &Arc<Self>, status: u16) {
        if matches!(status, 502..=504) {
            self.record_failure();
        } else {
            self.record_success();
        }
    }
}

/// What the balancers read (shown in `/debug/pools` too).
impl Load for Endpoint {
    fn in_flight(&self) -> u32 {
        Endpoint::in_flight(self)
    }

    fn latency(&self) -> &PeakEwma {
        &self.latency
    }
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// The endpoint.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What is rebuilt when an endpoint of a pool becomes available or
/// unavailable: a selector over the pool's endpoints
/// ([`crate::table::selector::Selector`]), seen here only through this trait so
/// that endpoint state does not import the table.
pub trait Reselect: Send + Sync + std::fmt::Debug {
    /// Rebuilds over the endpoints available now and publishes the result.
    fn rebuild(&self);
}

/// State of one pool that survives table versions.
#[derive(Debug, Default)]
pub struct KeptPool {
    /// The selectors of the pool's live versions (the newest table's, and
    /// older ones still serving requests), rebuilt one at a time under this
    /// lock when an endpoint's availability changes.
    selectors: Mutex<Vec<Weak<dyn Reselect>>>,
    /// Circuit breaker counts (connections, pending, requests, retries).
    pub breaker: Arc<Breaker>,
    /// Requests and retries of the last seconds, for the retry budget.
    pub budget: RetryBudget,
    /// The pool's client, kept while its timeouts stay the same.
    pub upstream: Mutex<Option<Arc<Upstream>>>,
    /// The rate limiter, kept while `rateLimit` stays the same.
    pub limiter: Mutex<Option<Arc<RateLimiter>>>,
    /// Outlier detection settings and members, for ejection decisions.
    pub outlier: PoolOutlier,
    /// Requests held for activation while the pool has no endpoints.
    pub held: Arc<crate::activation::queue::Queue>,
}

impl KeptPool {
    /// An endpoint's availability changed: rebuilds every live selector of
    /// the pool now, on the caller's task (a health check loop, the outlier
    /// decision), so that no request ever builds one. The lock makes
    /// rebuilds one at a time, so the last one stored saw every change.
    pub fn availability_changed(&self) {
        let mut selectors = self.selectors.lock().unwrap_or_else(|p| p.into_inner());
        selectors.retain(|weak| match weak.upgrade() {
            Some(selector) => {
                selector.rebuild();
                true
            }
            None => false,
        });
    }

    /// Builds `selector` over the endpoints available now and keeps it up
    /// to date from then on (for as long as it lives).
    pub fn attach(&self, selector: Weak<dyn Reselect>) {
        let mut selectors = self.selectors.lock().unwrap_or_else(|p| p.into_inner());
        selectors.retain(|weak| weak.strong_count() > 0);
        if let Some(live) = selector.upgrade() {
            live.rebuild();
            selectors.push(selector);
        }
    }
}

/// The live pools' and endpoints' state, weakly held, so a table build can
/// find the state of what it keeps.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    pools: HashMap<String, Weak<KeptPool>>,
    endpoints: HashMap<(String, SocketAddr), Weak<Endpoint>>,
}

impl Registry {
    /// The state of pool `name`, kept or new.
    pub fn pool(&self, name: &str) -> Arc<KeptPool> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = inner.pools.get(name).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(KeptPool::default());
        inner.pools.insert(name.to_string(), Arc::downgrade(&state));
        state
    }

    /// The endpoint `addr` of pool `name`, kept or made by `make`.
    pub fn endpoint(
        &self,
        pool: &str,
        addr: SocketAddr,
        make: impl FnOnce() -> Endpoint,
    ) -> Arc<Endpoint> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (pool.to_string(), addr);
        if let Some(ep) = inner.endpoints.get(&key).and_then(Weak::upgrade) {
            return ep;
        }
        let ep = Arc::new(make());
        inner.endpoints.insert(key, Arc::downgrade(&ep));
        ep
    }

    /// Forgets entries whose state was freed.
    pub fn prune(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.pools.retain(|_, w| w.strong_count() > 0);
        inner.endpoints.retain(|_, w| w.strong_count() > 0);
    }

    /// Number of live endpoint entries (for tests).
    pub fn endpoints(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .endpoints
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}
