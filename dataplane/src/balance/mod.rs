//! Endpoint selection, built once per pool version and availability change
//! (see [`crate::table::selector`]) and read lock-free per request.
//!
//! One file per family, as pingora's `selection` does: [`rotation`]
//! (RoundRobin, WeightedRoundRobin), [`random`] (weighted draws),
//! [`p2c`] (LeastRequest, PeakEwma), [`hash`] (RingHash, Maglev), plus the
//! per-endpoint latency estimate ([`ewma`]), the request's inputs
//! ([`key`]) and cookie affinity ([`affinity`]).
//!
//! A balancer is built over the pool's available endpoints ("members") and
//! returns an index into them; it borrows the endpoints at pick time for the
//! per-endpoint state the load-aware algorithms read (in-flight counts,
//! latency), which lives on the endpoint and so survives table updates. It
//! sees an endpoint only through [`Load`] (as linkerd's balancer sees only
//! `tower::load::Load`), so this folder imports nothing of the request path.
//! No pick allocates or locks; randomness is `fastrand`'s thread-local
//! wyrand.

pub mod affinity;
pub mod ewma;
pub mod hash;
pub mod key;
pub mod p2c;
pub mod random;
pub mod rotation;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use sluice_protocol::Algorithm;

pub use key::{KeySource, PickRequest};
pub use rotation::{MAX_SCHEDULE, Rotation};

/// What the load-aware algorithms read of an endpoint.
pub trait Load {
    /// Requests sent to it that have not finished.
    fn in_flight(&self) -> u32;
    /// Its peak-EWMA latency estimate.
    fn latency(&self) -> &ewma::PeakEwma;
}

impl<T: Load + ?Sized> Load for Arc<T> {
    fn in_flight(&self) -> u32 {
        (**self).in_flight()
    }

    fn latency(&self) -> &ewma::PeakEwma {
        (**self).latency()
    }
}

/// Picks among the available endpoints of one pool.
#[derive(Debug)]
pub enum Balancer {
    /// RoundRobin and WeightedRoundRobin.
    Rotation(Rotation),
    /// Random, weighted.
    Random(random::Weighted),
    /// LeastRequest: weighted power of two choices on in-flight requests.
    LeastRequest(p2c::LeastRequest),
    /// PeakEwma: power of two choices on latency × load.
    PeakEwma(p2c::PeakEwma),
    /// RingHash.
    Ring(hash::Ring),
    /// Maglev.
    Maglev(hash::Maglev),
}

impl Balancer {
    /// The balancer of `algorithm` over members with these addresses and
    /// weights (same length).
    pub fn new(algorithm: Algorithm, addrs: &[SocketAddr], weights: &[NonZeroU32]) -> Self {
        match algorithm {
            Algorithm::RoundRobin | Algorithm::WeightedRoundRobin => {
                Self::Rotation(Rotation::new(weights))
            }
            Algorithm::Random => Self::Random(random::Weighted::new(weights)),
            Algorithm::LeastRequest => Self::LeastRequest(p2c::LeastRequest::new(weights)),
            Algorithm::PeakEwma => Self::PeakEwma(p2c::PeakEwma::new(weights)),
            Algorithm::RingHash => Self::Ring(hash::Ring::new(addrs, weights)),
            Algorithm::Maglev => Self::Maglev(hash::Maglev::new(addrs, weights)),
        }
    }

    /// Index into `members` of the pick, or `None` when there is none.
    /// `members` are indexes into `endpoints`, in the order the balancer was
    /// built with; `hash` is the request's key hash (hashing algorithms
    /// pick at random without one, and the others ignore it).
    pub fn pick<L: Load>(
        &self,
        endpoints: &[L],
        members: &[u32],
        hash: Option<u64>,
    ) -> Option<usize> {
        match self {
            Self::Rotation(r) => r.pick(),
            Self::Random(w) => w.draw(),
            Self::LeastRequest(p) => p.pick(endpoints, members),
            Self::PeakEwma(p) => p.pick(endpoints, members),
            Self::Ring(r) => r.pick(hash.unwrap_or_else(|| fastrand::u64(..))),
            Self::Maglev(m) => m.pick(hash.unwrap_or_else(|| fastrand::u64(..))),
        }
    }
}

/// Endpoints for unit tests and benchmarks.
#[doc(hidden)]
pub mod testing {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    /// An endpoint as a balancer sees it: an address and its load.
    #[derive(Debug)]
    pub struct Member {
        /// Socket address.
        pub addr: SocketAddr,
        in_flight: AtomicU32,
        latency: ewma::PeakEwma,
    }

    /// One request in flight to a [`Member`] until dropped.
    #[derive(Debug)]
    pub struct Busy<'a>(&'a Member);

    impl Drop for Busy<'_> {
        fn drop(&mut self) {
            self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    impl Member {
        /// Counts one more request in flight until the guard drops.
        pub fn begin(&self) -> Busy<'_> {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            Busy(self)
        }

        /// Feeds a latency sample.
        pub fn observe_latency(&self, rtt: Duration) {
            self.latency.observe(rtt);
        }
    }

    impl Load for Member {
        fn in_flight(&self) -> u32 {
            self.in_flight.load(Ordering::Relaxed)
        }

        fn latency(&self) -> &ewma::PeakEwma {
            &self.latency
        }
    }

    /// `n` fresh members, on 10.x.y.z:8080.
    pub fn endpoints(n: usize) -> Vec<Arc<Member>> {
        addrs(n)
            .into_iter()
            .map(|addr| {
                Arc::new(Member {
                    addr,
                    in_flight: AtomicU32::new(0),
                    latency: ewma::PeakEwma::new(),
                })
            })
            .collect()
    }

    /// `n` distinct addresses.
    pub fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| {
                let b = (i as u32).to_be_bytes();
                SocketAddr::from(([10, b[1], b[2], b[3]], 8080))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use random::tests::w;

    #[test]
    fn every_algorithm_follows_weights_3_2_1() {
        let eps = testing::endpoints(3);
        let addrs: Vec<_> = eps.iter().map(|e| e.addr).collect();
        let members = [0, 1, 2];
        for algorithm in Algorithm::ALL {
            let b = Balancer::new(algorithm, &addrs, &w(&[3, 2, 1]));
            let mut counts = [0usize; 3];
            let n = 60_000u64;
            for k in 0..n {
                let hash = Some(hash::key(&k.to_le_bytes()));
                counts[b.pick(&eps, &members, hash).expect("pick")] += 1;
            }
            // Ketama's 160 points per weight unit leave a few points of
            // imbalance; the others are within sampling noise.
            let margin = if algorithm == Algorithm::RingHash {
                4.0
            } else {
                1.0
            };
            for (i, want) in [50.0, 33.33, 16.67].iter().enumerate() {
                let got = counts[i] as f64 * 100.0 / n as f64;
                assert!(
                    (got - want).abs() < margin,
                    "{algorithm:?} endpoint {i}: {got:.2}% vs {want}%"
                );
            }
        }
    }

    #[test]
    fn every_algorithm_picks_nothing_from_nothing_and_the_one_from_one() {
        let eps = testing::endpoints(1);
        for algorithm in Algorithm::ALL {
            let empty = Balancer::new(algorithm, &[], &[]);
            assert_eq!(empty.pick(&eps, &[], None), None, "{algorithm:?}");
            let one = Balancer::new(algorithm, &[eps[0].addr], &w(&[7]));
            assert_eq!(one.pick(&eps, &[0], None), Some(0), "{algorithm:?}");
        }
    }

    #[test]
    fn hashing_algorithms_send_a_key_to_one_endpoint() {
        let eps = testing::endpoints(10);
        let addrs: Vec<_> = eps.iter().map(|e| e.addr).collect();
        let members: Vec<u32> = (0..10).collect();
        for algorithm in [Algorithm::RingHash, Algorithm::Maglev] {
            let b = Balancer::new(algorithm, &addrs, &w(&[1; 10]));
            for k in 0..100u64 {
                let h = Some(hash::key(&k.to_le_bytes()));
                let first = b.pick(&eps, &members, h);
                assert!((0..5).all(|_| b.pick(&eps, &members, h) == first));
            }
        }
    }
}
