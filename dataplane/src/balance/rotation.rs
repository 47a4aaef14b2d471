//! RoundRobin and WeightedRoundRobin share one mechanism: the smooth weighted
//! round robin schedule (nginx's algorithm) is unrolled into an array when the
//! table is built, and a pick is one atomic increment and an index into it.
//! Equal weights need no array: the pick is the counter modulo the endpoint
//! count. No lock and no allocation per pick.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest precomputed schedule. Weight sums above it (after dividing by the
/// weights' gcd) are scaled down proportionally; every endpoint keeps at least
/// one slot. Building costs `O(length × endpoints)`, off the request path.
pub const MAX_SCHEDULE: u64 = 1 << 16;

/// A smooth weighted rotation (a plain one when weights are equal).
#[derive(Debug)]
pub struct Rotation {
    len: usize,
    /// Indexes in smooth weighted order; empty when all weights are equal.
    schedule: Box<[u32]>,
    next: AtomicUsize,
}

impl Rotation {
    /// A rotation over endpoints of these weights. The rotation starts at a
    /// random point, so dataplanes that receive the same update together do
    /// not all send their next request to the first endpoint.
    pub fn new(weights: &[NonZeroU32]) -> Self {
        Self::starting_at(weights, RandomState::new().hash_one(weights.len()) as usize)
    }

    /// The same, starting at position `start` of the rotation: deterministic,
    /// for tests and benchmarks.
    pub fn starting_at(weights: &[NonZeroU32], start: usize) -> Self {
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        let schedule = if equal {
            Box::default()
        } else {
            smooth_schedule(weights).into_boxed_slice()
        };
        Self {
            len: weights.len(),
            schedule,
            next: AtomicUsize::new(start),
        }
    }

    /// Index of the next endpoint, or `None` when there is none.
    pub fn pick(&self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.schedule.is_empty() {
            Some(n % self.len)
        } else {
            Some(self.schedule[n % self.schedule.len()] as usize)
        }
    }

    /// Length of one full cycle of the rotation.
    pub fn cycle(&self) -> usize {
        if self.schedule.is_empty() {
            self.len
        } else {
            self.schedule.len()
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Weights reduced by their gcd and, when their sum exceeds
/// [`MAX_SCHEDULE`], scaled down to fit.
fn reduced(weights: &[NonZeroU32]) -> Vec<u64> {
    let g = weights
        .iter()
        .fold(0, |g, w| gcd(g, u64::from(w.get())))
        .max(1);
    let reduced: Vec<u64> = weights.iter().map(|w| u64::from(w.get()) / g).collect();
    let total: u64 = reduced.iter().sum();
    if total <= MAX_SCHEDULE {
        return reduced;
    }
    reduced
        .iter()
        .map(|w| (w * MAX_SCHEDULE / total).max(1))
        .collect()
}

/// nginx's smooth weighted round robin, unrolled over one full cycle: each
/// step adds every weight to its running score, picks the highest score
/// (first on ties) and takes the weight total off the winner.
fn smooth_schedule(weights: &[NonZeroU32]) -> Vec<u32> {
    let weights: Vec<i64> = reduced(weights).into_iter().map(|w| w as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut score = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            score[i] += w;
            if score[i] > score[best] {
                best = i;
            }
        }
        score[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(weights: &[u32]) -> Vec<NonZeroU32> {
        weights
            .iter()
            .map(|w| NonZeroU32::new(*w).expect("test weights are positive"))
            .collect()
    }

    fn picks(b: &Rotation, n: usize) -> Vec<usize> {
        (0..n).map(|_| b.pick().expect("has endpoints")).collect()
    }

    #[test]
    fn equal_weights_cycle_through_every_endpoint() {
        let b = Rotation::starting_at(&w(&[1, 1, 1]), 0);
        assert_eq!(picks(&b, 6), vec![0, 1, 2, 0, 1, 2]);
        // From any starting point, every window of 3 holds all three.
        let b = Rotation::new(&w(&[4, 4, 4]));
        let mut window = picks(&b, 3);
        window.sort_unstable();
        assert_eq!(window, vec![0, 1, 2]);
    }

    #[test]
    fn weights_3_2_1_give_nginx_s_smooth_order() {
        let b = Rotation::starting_at(&w(&[3, 2, 1]), 0);
        // a b a c b a: the heaviest endpoint never takes two picks in a row
        // within the cycle.
        assert_eq!(picks(&b, 6), vec![0, 1, 0, 2, 1, 0]);
        let b = Rotation::starting_at(&w(&[5, 1, 1]), 0);
        // nginx's documented sequence for 5:1:1.
        assert_eq!(picks(&b, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn a_common_factor_does_not_lengthen_the_cycle() {
        assert_eq!(Rotation::new(&w(&[300, 200, 100])).cycle(), 6);
    }

    #[test]
    fn huge_weight_sums_are_capped_and_keep_every_endpoint() {
        let b = Rotation::starting_at(&w(&[u32::MAX, 1, 7]), 0);
        assert!(b.cycle() as u64 <= MAX_SCHEDULE + 2, "{}", b.cycle());
        let seq = picks(&b, b.cycle());
        for i in 0..3 {
            assert!(seq.contains(&i), "endpoint {i} lost its slot");
        }
    }

    #[test]
    fn an_empty_pool_picks_nothing() {
        assert_eq!(Rotation::new(&[]).pick(), None);
    }

    proptest! {
        /// Over one cycle every endpoint gets exactly its share, and in any k
        /// consecutive picks (wrapping around the cycle) an endpoint of
        /// weight w gets at most ceil(w·k/total) + 1.
        #[test]
        fn shares_are_exact_and_smooth(
            weights in prop::collection::vec(1u32..12, 1..7),
            start in 0usize..1000,
        ) {
            let b = Rotation::starting_at(&w(&weights), start);
            let g = weights.iter().fold(0u64, |g, w| gcd(g, u64::from(*w)));
            let shares: Vec<u64> = weights.iter().map(|w| u64::from(*w) / g).collect();
            let total: u64 = shares.iter().sum();
            let cycle = total as usize;
            let seq = picks(&b, 2 * cycle);
            for (i, share) in shares.iter().enumerate() {
                let got = seq[..cycle].iter().filter(|p| **p == i).count() as u64;
                prop_assert_eq!(got, *share, "endpoint {} share", i);
                // prefix[j] = picks of i among seq[..j]
                let mut prefix = vec![0u64; seq.len() + 1];
                for (j, p) in seq.iter().enumerate() {
                    prefix[j + 1] = prefix[j] + u64::from(*p == i);
                }
                for s in 0..cycle {
                    for k in 1..=cycle {
                        let count = prefix[s + k] - prefix[s];
                        let bound = (share * k as u64).div_ceil(total) + 1;
                        prop_assert!(
                            count <= bound,
                            "endpoint {} (weight {}) got {} of {} picks from {}",
                            i, share, count, k, s
                        );
                    }
                }
            }
        }
    }
}
