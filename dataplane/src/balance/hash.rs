//! Consistent hashing: a Ketama ring (RingHash) and Maglev tables.
//!
//! Both place endpoints by a hash of their address only, with xxh3 (stable
//! across processes, platforms and releases), so every dataplane builds the
//! same structure from the same endpoints and sends a key to the same
//! endpoint. Std's `DefaultHasher` is deterministic within one build but
//! its algorithm may change between Rust releases, which would split a
//! rolling upgrade's dataplanes; `RandomState` is seeded per process.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Ring points per endpoint of the smallest weight. An endpoint's share of
/// the ring deviates from its weight's by about `1/√points` of it (Ketama's
/// 160 points leave ±8 %, so a 3:2:1 pool splits anywhere from 46/35/19 to
/// 54/31/15); 4,096 points bring that to ±1.6 % for 24 KiB per endpoint.
pub const RING_POINTS: u64 = 4096;
/// Most points on a ring (6 bytes each: 1.5 MiB, reached at 64 endpoints of
/// equal weight); beyond, every endpoint's count is scaled down (keeping at
/// least one point), which costs balance, not correctness.
pub const MAX_RING: u64 = 1 << 18;
/// Maglev lookup table size: a prime, Envoy's default. Up to 65,537
/// endpoints; balance within about 1 % up to several hundred.
pub const MAGLEV_SIZE: usize = 65_537;

/// The bytes an endpoint is placed by.
fn identity(addr: &SocketAddr) -> Vec<u8> {
    addr.to_string().into_bytes()
}

/// Hash of a request key (header value, cookie value, IP octets).
pub fn key(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// A Ketama-style hash ring: each endpoint owns points in proportion to its
/// weight; a key goes to the first point at or after its hash. An endpoint
/// that leaves takes its points with it and nothing else moves, as long as
/// the smallest weight is unchanged and the ring is under [`MAX_RING`].
#[derive(Debug)]
pub struct Ring {
    /// Point positions (the high 32 bits of their hashes), sorted.
    hashes: Box<[u32]>,
    /// Endpoint index per point.
    owners: Box<[u16]>,
    /// `index[k]`: the first point at or above `k << shift`; narrows the
    /// binary search to a few points (one entry per ~4 points).
    index: Box<[u32]>,
    shift: u32,
}

impl Ring {
    /// A ring over these endpoints (at most 65,536 of them: the rest get no
    /// point).
    pub fn new(addrs: &[SocketAddr], weights: &[NonZeroU32]) -> Self {
        let addrs = &addrs[..addrs.len().min(usize::from(u16::MAX) + 1)];
        let min = weights.iter().map(|w| w.get()).min().unwrap_or(1);
        let mut counts: Vec<u64> = weights
            .iter()
            .map(|w| (u64::from(w.get()) * RING_POINTS).div_ceil(u64::from(min)))
            .collect();
        let total: u64 = counts.iter().sum();
        if total > MAX_RING {
            for c in &mut counts {
                *c = (u128::from(*c) * u128::from(MAX_RING) / u128::from(total)).max(1) as u64;
            }
        }
        let mut points: Vec<(u32, u16)> = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        for (i, (addr, count)) in addrs.iter().zip(&counts).enumerate() {
            let id = identity(addr);
            points
                .extend((0..*count).map(|p| ((xxh3_64_with_seed(&id, p) >> 32) as u32, i as u16)));
        }
        // Ties (vanishingly rare) go to the lower address, the same on every
        // dataplane.
        points.sort_unstable_by_key(|(h, i)| (*h, addrs[*i as usize]));
        let hashes: Box<[u32]> = points.iter().map(|p| p.0).collect();
        let bits = (usize::BITS - hashes.len().leading_zeros())
            .saturating_sub(2)
            .max(1);
        let shift = 32 - bits;
        let index = (0..=1u64 << bits)
            .map(|k| {
                let start = k << shift;
                hashes.partition_point(|h| u64::from(*h) < start) as u32
            })
            .collect();
        Self {
            hashes,
            owners: points.iter().map(|p| p.1).collect(),
            index,
            shift,
        }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Index of the endpoint owning `hash`.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.hashes.is_empty() {
            return None;
        }
        let hash = (hash >> 32) as u32;
        let k = (hash >> self.shift) as usize;
        let (lo, hi) = (self.index[k] as usize, self.index[k + 1] as usize);
        let i = lo + self.hashes[lo..hi].partition_point(|h| *h < hash);
        let i = if i == self.hashes.len() { 0 } else { i };
        Some(usize::from(self.owners[i]))
    }
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016) with Envoy's
/// weighting: each endpoint walks its own permutation of the table's slots,
/// claiming the next free one in turn; an endpoint of weight `w` takes its
/// turn in `w / max_weight` of the rounds. A pick is one modulo and one
/// read. When an endpoint leaves, most keys of the others stay put.
#[derive(Debug)]
pub struct Maglev {
    /// Endpoint index per slot; empty when there is no endpoint.
    table: Box<[u16]>,
}

impl Maglev {
    /// A table over these endpoints (at most 65,536 of them: the rest get
    /// no slot).
    pub fn new(addrs: &[SocketAddr], weights: &[NonZeroU32]) -> Self {
        Self::with_size(addrs, weights, MAGLEV_SIZE)
    }

    /// The same with a table of `size` slots (a prime).
    pub fn with_size(addrs: &[SocketAddr], weights: &[NonZeroU32], size: usize) -> Self {
        let n = addrs.len().min(usize::from(u16::MAX) + 1);
        if n == 0 {
            return Self {
                table: Box::default(),
            };
        }
        struct Walk {
            offset: u64,
            skip: u64,
            next: u64,
            weight: u64,
            target: u64,
        }
        let m = size as u64;
        let mut walks: Vec<Walk> = addrs[..n]
            .iter()
            .zip(weights)
            .map(|(addr, w)| {
                let id = identity(addr);
                Walk {
                    offset: xxh3_64_with_seed(&id, 0) % m,
                    skip: xxh3_64_with_seed(&id, 1) % (m - 1) + 1,
                    next: 0,
                    weight: u64::from(w.get()),
                    target: 0,
                }
            })
            .collect();
        let max_weight = walks.iter().map(|w| w.weight).max().unwrap_or(1);
        const FREE: u16 = u16::MAX;
        let mut table = vec![FREE; size];
        // FREE doubles as endpoint 65,535's index: track filled slots apart.
        let mut filled = vec![false; size];
        let mut placed = 0usize;
        let mut round = 1u64;
        while placed < size {
            for (i, walk) in walks.iter_mut().enumerate() {
                if placed == size {
                    break;
                }
                if round * walk.weight < walk.target {
                    continue;
                }
                walk.target += max_weight;
                let mut slot = ((walk.offset + walk.skip * walk.next) % m) as usize;
                while filled[slot] {
                    walk.next += 1;
                    slot = ((walk.offset + walk.skip * walk.next) % m) as usize;
                }
                table[slot] = i as u16;
                filled[slot] = true;
                walk.next += 1;
                placed += 1;
            }
            round += 1;
        }
        Self {
            table: table.into_boxed_slice(),
        }
    }

    /// Index of the endpoint for `hash`.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(usize::from(
            self.table[(hash % self.table.len() as u64) as usize],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::random::tests::w;

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 8080)))
            .collect()
    }

    fn shares(pick: impl Fn(u64) -> Option<usize>, n: usize, keys: u64) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for k in 0..keys {
            counts[pick(key(&k.to_le_bytes())).expect("non-empty")] += 1;
        }
        counts.iter().map(|c| *c as f64 / keys as f64).collect()
    }

    /// Keys (0..keys) that change endpoint when endpoint `gone` leaves:
    /// (moved keys that were not on `gone`, keys that were on `gone`).
    fn remap(
        before: impl Fn(u64) -> Option<usize>,
        after: impl Fn(u64) -> Option<usize>,
        gone: usize,
        keys: u64,
    ) -> (usize, usize) {
        let (mut moved_others, mut on_gone) = (0, 0);
        for k in 0..keys {
            let h = key(&k.to_le_bytes());
            let b = before(h).expect("non-empty");
            // After removal, indexes above `gone` shift down by one.
            let a = after(h).map(|a| if a >= gone { a + 1 } else { a });
            if b == gone {
                on_gone += 1;
            } else if a != Some(b) {
                moved_others += 1;
            }
        }
        (moved_others, on_gone)
    }

    #[test]
    fn ring_shares_follow_weights() {
        let ring = Ring::new(&addrs(3), &w(&[3, 2, 1]));
        let s = shares(|h| ring.pick(h), 3, 60_000);
        for (got, want) in s.iter().zip([0.5, 1.0 / 3.0, 1.0 / 6.0]) {
            assert!((got - want).abs() < 0.02, "{s:?}");
        }
        let ring = Ring::new(&addrs(10), &w(&[1; 10]));
        for got in shares(|h| ring.pick(h), 10, 100_000) {
            assert!((got - 0.1).abs() < 0.01, "{got}");
        }
    }

    #[test]
    fn ring_removal_moves_only_the_removed_endpoint_s_keys() {
        let all = addrs(10);
        let before = Ring::new(&all, &w(&[1; 10]));
        let mut rest = all.clone();
        rest.remove(4);
        let after = Ring::new(&rest, &w(&[1; 9]));
        let (moved_others, on_gone) = remap(|h| before.pick(h), |h| after.pick(h), 4, 50_000);
        assert_eq!(moved_others, 0);
        assert!(on_gone < 50_000 * 13 / 100, "{on_gone}");
    }

    #[test]
    fn ring_size_is_bounded() {
        let ring = Ring::new(&addrs(3), &w(&[u32::MAX, 1, 1000]));
        assert!(ring.len() as u64 <= MAX_RING + 3, "{}", ring.len());
        let big = Ring::new(&addrs(200), &w(&[1; 200]));
        assert!(big.len() as u64 <= MAX_RING);
        for i in 0..3 {
            assert!(ring.owners.contains(&i));
        }
    }

    #[test]
    fn maglev_shares_follow_weights() {
        let table = Maglev::new(&addrs(3), &w(&[3, 2, 1]));
        let s = shares(|h| table.pick(h), 3, 60_000);
        for (got, want) in s.iter().zip([0.5, 1.0 / 3.0, 1.0 / 6.0]) {
            assert!((got - want).abs() < 0.02, "{s:?}");
        }
        let table = Maglev::new(&addrs(10), &w(&[1; 10]));
        for got in shares(|h| table.pick(h), 10, 100_000) {
            assert!((got - 0.1).abs() < 0.01, "{got}");
        }
    }

    #[test]
    fn maglev_removal_moves_few_other_keys() {
        let all = addrs(10);
        let before = Maglev::new(&all, &w(&[1; 10]));
        let mut rest = all.clone();
        rest.remove(7);
        let after = Maglev::new(&rest, &w(&[1; 9]));
        let keys = 50_000;
        let (moved_others, on_gone) = remap(|h| before.pick(h), |h| after.pick(h), 7, keys);
        assert!(on_gone < 50_000 * 11 / 100, "{on_gone}");
        // The Maglev paper measures a few percent of disruption beyond the
        // removed endpoint's own keys.
        assert!(moved_others < keys as usize * 5 / 100, "{moved_others}");
    }

    #[test]
    fn empty_structures_pick_nothing() {
        assert_eq!(Ring::new(&[], &[]).pick(1), None);
        assert_eq!(Maglev::new(&[], &[]).pick(1), None);
    }

    #[test]
    fn placement_is_the_same_on_every_build() {
        let a = Maglev::new(&addrs(5), &w(&[1; 5]));
        let b = Maglev::new(&addrs(5), &w(&[1; 5]));
        assert_eq!(a.table, b.table);
        // And pinned: a change of hash function or placement would split
        // dataplanes of different versions. XXH3-64 of "" is its published
        // test vector.
        assert_eq!(key(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(
            Ring::new(&addrs(4), &w(&[1; 4])).pick(key(b"user-42")),
            Some(2)
        );
    }
}
