//! A pool's endpoint selection over the endpoints available now, rebuilt by
//! whoever changes what it is built from, never by a request.
//!
//! Building a balancer can be costly (a Maglev table has 65,537 entries), so
//! it is done when a table is built ([`Selector::new`]) and when an
//! endpoint's availability changes: the health check loop or the outlier
//! decision that flips it calls [`crate::endpoint::KeptPool::availability_changed`],
//! which rebuilds, one at a time, every selector over that pool's endpoints
//! (the newest table's and those of older tables still serving requests) and
//! publishes each with an `ArcSwap`. A request only loads the current
//! [`Picker`]. This is pingora's `LoadBalancer::update` and linkerd's
//! discovery-fed pool: the task that sees the change pays for it, once.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::{ArcSwap, Guard};
use sluice_protocol::Algorithm;

use crate::balance::Balancer;
use crate::endpoint::{Endpoint, KeptPool, Reselect};

/// The endpoints of one pool version and the balancer over the available
/// ones.
#[derive(Debug)]
pub struct Selector {
    /// The pool's name (for the panic-mode log).
    pool: String,
    algorithm: Algorithm,
    /// The pool's ready endpoints, in route order (as `Pool::endpoints`).
    endpoints: Vec<Arc<Endpoint>>,
    weights: Vec<NonZeroU32>,
    picker: ArcSwap<Picker>,
    /// Balancers built so far: one at the start, one per availability change.
    builds: AtomicU64,
}

/// A balancer over the endpoints available at one moment.
#[derive(Debug)]
pub struct Picker {
    /// Indexes into the pool's endpoints of those the balancer picks from,
    /// ascending.
    pub members: Box<[u32]>,
    /// The algorithm's state over `members`.
    pub balancer: Balancer,
    /// No endpoint was available: the balancer spans them all.
    pub panic: bool,
}

impl Selector {
    /// The selector of a new pool version, built over the endpoints
    /// available now and kept up to date by `state` (the pool state all of
    /// `endpoints` report their availability changes to) from then on.
    pub fn new(
        state: &KeptPool,
        pool: &str,
        algorithm: Algorithm,
        endpoints: Vec<Arc<Endpoint>>,
        weights: Vec<NonZeroU32>,
    ) -> Arc<Self> {
        let selector = Arc::new(Self {
            pool: pool.to_string(),
            algorithm,
            endpoints,
            weights,
            picker: ArcSwap::from_pointee(Picker {
                members: Box::default(),
                balancer: Balancer::new(algorithm, &[], &[]),
                panic: false,
            }),
            builds: AtomicU64::new(0),
        });
        let weak: Weak<Self> = Arc::downgrade(&selector);
        state.attach(weak);
        selector
    }

    /// The balancer of the endpoints available now.
    pub fn picker(&self) -> Guard<Arc<Picker>> {
        self.picker.load()
    }

    /// Balancers built over this pool version so far (one when it was
    /// built, one more per availability change): what a maintainer checks
    /// to see that requests build none.
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }
}

impl Reselect for Selector {
    /// Rebuilds the balancer over the endpoints available now, or over all
    /// of them when none is (panic mode).
    fn rebuild(&self) {
        let n = self.endpoints.len() as u32;
        let mut members: Vec<u32> = (0..n)
            .filter(|i| self.endpoints[*i as usize].is_available())
            .collect();
        let panic = members.is_empty() && n > 0;
        if panic {
            members = (0..n).collect();
        }
        let weights: Vec<_> = members.iter().map(|i| self.weights[*i as usize]).collect();
        let addrs: Vec<SocketAddr> = members
            .iter()
            .map(|i| self.endpoints[*i as usize].addr)
            .collect();
        if panic != self.picker.load().panic {
            crate::health::log_panic(&self.pool, panic, self.endpoints.len());
        }
        self.picker.store(Arc::new(Picker {
            members: members.into_boxed_slice(),
            balancer: Balancer::new(self.algorithm, &addrs, &weights),
            panic,
        }));
        self.builds.fetch_add(1, Ordering::Relaxed);
    }
}
