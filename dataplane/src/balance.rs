//! Endpoint selection, built once per table and read lock-free per request.
//!
//! RoundRobin and WeightedRoundRobin share one mechanism: the smooth weighted
//! round robin schedule (nginx's algorithm) is computed when the table is
//! built, and a pick is one atomic increment and an index into it. Equal
//! weights reduce to a plain rotation. No lock and no allocation per pick.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::uri::Authority;
use sluice_protocol::{Algorithm, Endpoint};

/// Longest precomputed schedule; larger weight sums are scaled down.
pub const MAX_SCHEDULE: u64 = 1 << 16;

/// An endpoint ready to be dialed.
#[derive(Debug, Clone)]
pub struct Target {
    /// Socket address.
    pub addr: SocketAddr,
    /// The same, as a URI authority (built once, not per request).
    pub authority: Authority,
}

/// Picks endpoints for one pool.
#[derive(Debug)]
pub struct Balancer {
    targets: Vec<Target>,
    /// Indexes into `targets`, in smooth weighted order; empty = plain rotation.
    schedule: Vec<u32>,
    next: AtomicUsize,
}

impl Balancer {
    /// Builds the balancer for the ready endpoints of a pool.
    pub fn new(_algorithm: Algorithm, endpoints: &[Endpoint]) -> Self {
        let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
        let targets = ready
            .iter()
            .filter_map(|e| {
                let authority = e.address.to_string().parse::<Authority>().ok()?;
                Some(Target {
                    addr: e.address,
                    authority,
                })
            })
            .collect();
        let weights: Vec<u64> = ready.iter().map(|e| u64::from(e.weight.get())).collect();
        let schedule = if weights.windows(2).all(|w| w[0] == w[1]) {
            Vec::new()
        } else {
            smooth_schedule(&weights)
        };
        Self {
            targets,
            schedule,
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint, or `None` when the pool has none ready.
    pub fn pick(&self) -> Option<&Target> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.schedule.is_empty() {
            let len = self.targets.len();
            if len == 0 {
                return None;
            }
            return self.targets.get(n % len);
        }
        let i = self.schedule[n % self.schedule.len()];
        self.targets.get(i as usize)
    }

    /// Endpoints taking traffic.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// nginx's smooth weighted round robin, unrolled over one full cycle.
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let g = weights.iter().fold(0, |g, w| gcd(g, *w)).max(1);
    let mut weights: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        // Keep proportions within 1/MAX_SCHEDULE; every endpoint keeps a slot.
        weights = weights
            .iter()
            .map(|w| (w * MAX_SCHEDULE / total).max(1))
            .collect();
    }
    let total: i64 = weights.iter().map(|w| *w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::num::NonZeroU32;

    fn eps(weights: &[u32]) -> Vec<Endpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)))
                    .with_weight(NonZeroU32::new(*w).unwrap())
            })
            .collect()
    }

    fn picks(b: &Balancer, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| b.pick().unwrap().addr.port() - 9000)
            .collect()
    }

    #[test]
    fn equal_weights_rotate() {
        let b = Balancer::new(Algorithm::RoundRobin, &eps(&[1, 1, 1]));
        assert_eq!(picks(&b, 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_follow_the_smooth_schedule() {
        let b = Balancer::new(Algorithm::WeightedRoundRobin, &eps(&[5, 1, 1]));
        // nginx's documented sequence for 5:1:1.
        assert_eq!(picks(&b, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn not_ready_endpoints_and_empty_pools() {
        let mut e = eps(&[1, 1]);
        e[0].ready = false;
        let b = Balancer::new(Algorithm::RoundRobin, &e);
        assert_eq!(picks(&b, 3), vec![1, 1, 1]);
        assert!(Balancer::new(Algorithm::RoundRobin, &[]).pick().is_none());
    }

    proptest! {
        /// Over one cycle every endpoint gets exactly its share, and no
        /// endpoint runs ahead of its share by more than one pick anywhere.
        #[test]
        fn shares_are_exact_and_smooth(weights in prop::collection::vec(1u32..20, 1..8)) {
            let b = Balancer::new(Algorithm::WeightedRoundRobin, &eps(&weights));
            let g = weights.iter().fold(0u64, |g, w| gcd(g, u64::from(*w)));
            let total: u64 = weights.iter().map(|w| u64::from(*w) / g).sum();
            let seq = picks(&b, total as usize);
            for (i, w) in weights.iter().enumerate() {
                let share = u64::from(*w) / g;
                let got = seq.iter().filter(|p| **p as usize == i).count() as u64;
                prop_assert_eq!(got, share);
                let mut seen = 0u64;
                for (k, p) in seq.iter().enumerate() {
                    if *p as usize == i { seen += 1; }
                    let due = share * (k as u64 + 1) / total;
                    prop_assert!(seen <= due + 1, "endpoint {} ahead of its share", i);
                }
            }
        }
    }
}
