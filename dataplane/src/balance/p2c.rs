//! Load-aware picks by the power of two choices: LeastRequest and PeakEwma.
//!
//! Both draw two different endpoints at random and keep the less loaded,
//! which avoids the herd that "always the least loaded" causes across many
//! dataplanes, with two reads of per-endpoint atomics and no lock.
//!
//! How weights hold (the traffic split of DESIGN.md):
//! - LeastRequest draws both candidates in proportion to their weights and
//!   compares `in_flight ÷ weight`; the second candidate wins only when
//!   strictly less loaded, so with equal load (idle endpoints, sequential
//!   clients) the pick is the weighted first draw and the split is exact.
//!   Envoy's `(in_flight + 1) ÷ weight` would instead send nearly all of an
//!   idle pool's traffic to its heaviest endpoint (85 % at 3:2:1).
//! - PeakEwma splits first and balances second, as Linkerd does for
//!   traffic splits: endpoints of equal weight form a group (the controller
//!   gives every endpoint of one backend the same weight), a group is drawn
//!   in proportion to its total weight, and the P2C on Linkerd's cost
//!   `latency × (in_flight + 1)` runs inside the group. Comparing latencies
//!   across weights would turn latency noise (a scheduling hiccup remembered
//!   as a peak for seconds) into a broken traffic split.

use super::Load;
use super::ewma::DECAY_US;
use super::random::Weighted;
use std::num::NonZeroU32;

/// Weighted power of two choices on in-flight requests.
#[derive(Debug)]
pub struct LeastRequest {
    draw: Weighted,
    weights: Box<[u64]>,
}

impl LeastRequest {
    /// Over members of these weights.
    pub fn new(weights: &[NonZeroU32]) -> Self {
        Self {
            draw: Weighted::new(weights),
            weights: weights.iter().map(|w| u64::from(w.get())).collect(),
        }
    }

    /// Index into `members` of the pick.
    pub fn pick<L: Load>(&self, endpoints: &[L], members: &[u32]) -> Option<usize> {
        let (a, b) = self.draw.draw_two()?;
        let Some(b) = b else { return Some(a) };
        let load = |i: usize| {
            let ep = members.get(i).and_then(|m| endpoints.get(*m as usize));
            u64::from(ep.map_or(u32::MAX, |e| e.in_flight()))
        };
        // b strictly below a in in_flight ÷ weight, cross-multiplied.
        if load(b) * self.weights[a] < load(a) * self.weights[b] {
            Some(b)
        } else {
            Some(a)
        }
    }
}

/// Peak-EWMA power of two choices within groups of equal weight.
#[derive(Debug)]
pub struct PeakEwma {
    /// Draws a group in proportion to its total weight.
    groups: Weighted,
    /// Member indexes, grouped.
    order: Box<[u32]>,
    /// Per group: start and length in `order`.
    bounds: Box<[(u32, u32)]>,
}

impl PeakEwma {
    /// Over members of these weights.
    pub fn new(weights: &[NonZeroU32]) -> Self {
        let mut order: Vec<u32> = (0..weights.len() as u32).collect();
        order.sort_by_key(|i| (weights[*i as usize], *i));
        let mut bounds: Vec<(u32, u32)> = Vec::new();
        let mut totals: Vec<u64> = Vec::new();
        for (pos, i) in order.iter().enumerate() {
            let w = weights[*i as usize];
            let same = pos > 0 && weights[order[pos - 1] as usize] == w;
            if same && let (Some(b), Some(t)) = (bounds.last_mut(), totals.last_mut()) {
                b.1 += 1;
                *t += u64::from(w.get());
            } else {
                bounds.push((pos as u32, 1));
                totals.push(u64::from(w.get()));
            }
        }
        Self {
            groups: Weighted::from_u64(&totals),
            order: order.into_boxed_slice(),
            bounds: bounds.into_boxed_slice(),
        }
    }

    /// Index into `members` of the pick.
    pub fn pick<L: Load>(&self, endpoints: &[L], members: &[u32]) -> Option<usize> {
        let (start, len) = self.bounds[self.groups.draw()?];
        let (start, len) = (start as usize, len as usize);
        let group = &self.order[start..start + len];
        if len == 1 {
            return Some(group[0] as usize);
        }
        let a = fastrand::usize(..len);
        let b = (a + 1 + fastrand::usize(..len - 1)) % len;
        let (a, b) = (group[a] as usize, group[b] as usize);
        // Cost = estimate decayed to now × (in_flight + 1). Both decay by
        // e^(−(now − updated)/τ), so comparing them needs only the factor
        // e^((updated_b − updated_a)/τ) on one side: no clock read per pick.
        let state = |i: usize| {
            let ep = members.get(i).and_then(|m| endpoints.get(*m as usize));
            ep.map(|e| {
                let (estimate, updated) = e.latency().raw();
                (
                    estimate * f64::from(e.in_flight().saturating_add(1)),
                    updated,
                )
            })
        };
        let (Some((cost_a, at_a)), Some((cost_b, at_b))) = (state(a), state(b)) else {
            return Some(a);
        };
        let shift = (at_b as f64 - at_a as f64) / DECAY_US;
        if cost_b * shift.exp() < cost_a {
            Some(b)
        } else {
            Some(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::random::tests::w;
    use crate::balance::testing::endpoints;
    use std::time::Duration;

    #[test]
    fn least_request_prefers_the_less_loaded_of_two() {
        let eps = endpoints(2);
        let members = [0, 1];
        let _busy: Vec<_> = (0..3).map(|_| eps[0].begin()).collect();
        let lr = LeastRequest::new(&w(&[1, 1]));
        for _ in 0..1000 {
            assert_eq!(lr.pick(&eps, &members), Some(1));
        }
    }

    #[test]
    fn least_request_steers_away_from_load_in_proportion_to_weight() {
        let eps = endpoints(3);
        let members = [0, 1, 2];
        let lr = LeastRequest::new(&w(&[4, 1, 1]));
        // Endpoint 0 (weight 4) with 2 in flight is less loaded per weight
        // than endpoint 1 with 1: it keeps winning against it.
        let _g0: Vec<_> = (0..2).map(|_| eps[0].begin()).collect();
        let _g1 = eps[1].begin();
        let _g2 = eps[2].begin();
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[lr.pick(&eps, &members).expect("pick")] += 1;
        }
        // Every pair involving 0 goes to 0; 1 and 2 tie: first draw.
        assert!(counts[0] > 2500, "{counts:?}");
    }

    #[test]
    fn idle_least_request_follows_weights() {
        let eps = endpoints(3);
        let members = [0, 1, 2];
        let lr = LeastRequest::new(&w(&[3, 2, 1]));
        let mut counts = [0usize; 3];
        let n = 60_000;
        for _ in 0..n {
            counts[lr.pick(&eps, &members).expect("pick")] += 1;
        }
        for (i, want) in [50.0, 33.33, 16.67].iter().enumerate() {
            let got = counts[i] as f64 * 100.0 / n as f64;
            assert!((got - want).abs() < 1.0, "{i}: {got:.2}% vs {want}%");
        }
    }

    #[test]
    fn peak_ewma_avoids_the_slow_and_the_busy() {
        let eps = endpoints(3);
        let members = [0, 1, 2];
        let pe = PeakEwma::new(&w(&[1, 1, 1]));
        eps[0].observe_latency(Duration::from_millis(500));
        eps[1].observe_latency(Duration::from_millis(40));
        eps[2].observe_latency(Duration::from_millis(40));
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[pe.pick(&eps, &members).expect("pick")] += 1;
        }
        assert_eq!(counts[0], 0, "{counts:?}");
        // Now 2 is busy: 40 ms × 3 beats 40 ms × 1 no more.
        let _busy: Vec<_> = (0..2).map(|_| eps[2].begin()).collect();
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[pe.pick(&eps, &members).expect("pick")] += 1;
        }
        assert!(counts[1] > 1800 && counts[0] == 0, "{counts:?}");
    }

    #[test]
    fn peak_ewma_splits_by_weight_group_whatever_the_latency() {
        let eps = endpoints(4);
        let members = [0, 1, 2, 3];
        // Groups: {0} of total weight 3 and {1, 2, 3} of total weight 3.
        // Endpoint 0 is far slower, yet keeps its half.
        let pe = PeakEwma::new(&w(&[3, 1, 1, 1]));
        eps[0].observe_latency(Duration::from_millis(900));
        let mut counts = [0usize; 4];
        let n = 40_000;
        for _ in 0..n {
            counts[pe.pick(&eps, &members).expect("pick")] += 1;
        }
        let share0 = counts[0] as f64 / n as f64;
        assert!((share0 - 0.5).abs() < 0.015, "{counts:?}");
    }
}
