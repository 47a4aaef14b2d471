//! Weighted random draws in O(1): Vose's alias method.
//!
//! Built once per balancer: each slot `i` holds a threshold and an alias, a
//! draw picks a slot uniformly and keeps it or takes its alias by a second
//! uniform number — one 64-bit random number and two array reads, whatever
//! the endpoint count. Equal weights skip the tables. Hand-written (about 40
//! lines) because the crates that offer it (`rand_distr`'s `WeightedAliasIndex`)
//! pull in `rand` and floating-point tables, while this one is exact in
//! integers. Randomness is `fastrand`'s thread-local wyrand: no lock, no
//! syscall, not cryptographic (nothing here needs to be).

use std::num::NonZeroU32;

/// Threshold meaning "always keep the slot".
const KEEP: u64 = 1 << 32;

/// Draws indexes in proportion to their weights.
#[derive(Debug, Clone)]
pub struct Weighted {
    len: usize,
    /// Per slot: keep it when the low 32 random bits are below this
    /// (out of 2^32). Empty when weights are equal.
    keep: Box<[u64]>,
    /// Per slot: the index taken otherwise.
    alias: Box<[u32]>,
}

impl Weighted {
    /// A sampler over these weights.
    pub fn new(weights: &[NonZeroU32]) -> Self {
        let weights: Vec<u64> = weights.iter().map(|w| u64::from(w.get())).collect();
        Self::from_u64(&weights)
    }

    /// A sampler over these weights (all positive).
    pub fn from_u64(weights: &[u64]) -> Self {
        let len = weights.len();
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return Self {
                len,
                keep: Box::default(),
                alias: Box::default(),
            };
        }
        // Slot i holds weight w_i·n against a per-slot capacity of W (the
        // total); Vose's pairing moves the excess of large slots into the
        // room left by small ones. Integer arithmetic keeps it exact.
        let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
        let mut scaled: Vec<u128> = weights
            .iter()
            .map(|w| u128::from(*w) * len as u128)
            .collect();
        let mut keep = vec![KEEP; len];
        let mut alias: Vec<u32> = (0..len as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..len).partition(|i| scaled[*i] < total);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = u64::try_from(scaled[s] * u128::from(KEEP) / total).unwrap_or(KEEP);
            alias[s] = l as u32;
            scaled[l] -= total - scaled[s];
            if scaled[l] < total {
                large.pop();
                small.push(l);
            }
        }
        Self {
            len,
            keep: keep.into_boxed_slice(),
            alias: alias.into_boxed_slice(),
        }
    }

    /// Number of indexes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is nothing to draw.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A random index, or `None` when empty.
    pub fn draw(&self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        Some(self.draw_with(fastrand::u64(..)))
    }

    /// The index for the random number `r` (high half: slot, low half: coin).
    pub fn draw_with(&self, r: u64) -> usize {
        let slot = (((r >> 32) * self.len as u64) >> 32) as usize;
        if self.keep.is_empty() || (r & 0xffff_ffff) < self.keep[slot] {
            slot
        } else {
            self.alias[slot] as usize
        }
    }

    /// Two different random indexes (the second drawn among the others in
    /// proportion to their weights too), or one when there is only one.
    pub fn draw_two(&self) -> Option<(usize, Option<usize>)> {
        let first = self.draw()?;
        if self.len == 1 {
            return Some((first, None));
        }
        // A few redraws keep the second weighted; past them (a heavy
        // endpoint among light ones) any other will do.
        for _ in 0..4 {
            let second = self.draw_with(fastrand::u64(..));
            if second != first {
                return Some((first, Some(second)));
            }
        }
        let other = (first + 1 + fastrand::usize(..self.len - 1)) % self.len;
        Some((first, Some(other)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn w(weights: &[u32]) -> Vec<NonZeroU32> {
        weights
            .iter()
            .map(|w| NonZeroU32::new(*w).expect("test weights are positive"))
            .collect()
    }

    /// Exact probabilities of the alias tables, in units of 2^-32 / len.
    fn exact_shares(s: &Weighted) -> Vec<u128> {
        let mut shares = vec![0u128; s.len];
        for slot in 0..s.len {
            let keep = if s.keep.is_empty() {
                KEEP
            } else {
                s.keep[slot]
            };
            shares[slot] += u128::from(keep);
            if !s.keep.is_empty() {
                shares[s.alias[slot] as usize] += u128::from(KEEP - keep);
            }
        }
        shares
    }

    proptest! {
        /// The tables give every index its weight's share, to within the
        /// rounding of one threshold per slot.
        #[test]
        fn alias_tables_are_exact(weights in prop::collection::vec(1u32..1000, 1..40)) {
            let s = Weighted::new(&w(&weights));
            let shares = exact_shares(&s);
            let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
            let unit = u128::from(KEEP) * s.len as u128;
            for (i, weight) in weights.iter().enumerate() {
                let want = unit * u128::from(*weight) / total;
                let diff = shares[i].abs_diff(want);
                prop_assert!(diff <= s.len as u128 + 1, "index {} got {} want {}", i, shares[i], want);
            }
        }
    }

    #[test]
    fn draws_follow_weights_3_2_1() {
        let s = Weighted::new(&w(&[3, 2, 1]));
        let mut counts = [0usize; 3];
        let n = 60_000;
        for _ in 0..n {
            counts[s.draw().expect("non-empty")] += 1;
        }
        // Binomial standard deviation at n = 60,000 is under 0.21 points; 1
        // point is beyond 4.5 sigma.
        for (i, want) in [50.0, 33.33, 16.67].iter().enumerate() {
            let got = counts[i] as f64 * 100.0 / n as f64;
            assert!((got - want).abs() < 1.0, "index {i}: {got:.2}% vs {want}%");
        }
    }

    #[test]
    fn two_draws_differ_even_with_skewed_weights() {
        let s = Weighted::new(&w(&[1_000_000, 1]));
        for _ in 0..1000 {
            let (a, b) = s.draw_two().expect("non-empty");
            assert_ne!(Some(a), b);
        }
        assert_eq!(Weighted::new(&w(&[5])).draw_two(), Some((0, None)));
        assert_eq!(Weighted::new(&[]).draw_two(), None);
    }
}
