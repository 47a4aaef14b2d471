//! Endpoint selection: one pick per iteration, for every algorithm at 10
//! and 1,000 endpoints (weights 1..=4 cycling, so the weighted paths run).
//! Targets: ≤ 100 ns per pick and no allocation per pick.
//!
//! `cargo bench -p sluice-dataplane --bench select` prints criterion's lines
//! and then a table: ns/pick (criterion's median estimate is in its lines;
//! the table's figure is a plain timed loop) and allocations per pick, the
//! latter counted by this binary's global allocator.

use std::alloc::System;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use sluice_dataplane::balance::{Balancer, hash, testing};
use sluice_protocol::Algorithm;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// Counts every allocation (stats_alloc wraps the system allocator).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

struct Setup {
    endpoints: Vec<std::sync::Arc<testing::Member>>,
    members: Vec<u32>,
    balancer: Balancer,
}

fn setup(algorithm: Algorithm, n: usize) -> Setup {
    let endpoints = testing::endpoints(n);
    let addrs: Vec<_> = endpoints.iter().map(|e| e.addr).collect();
    let weights: Vec<NonZeroU32> = if algorithm == Algorithm::RoundRobin {
        vec![NonZeroU32::MIN; n]
    } else {
        (0..n)
            .map(|i| NonZeroU32::new(i as u32 % 4 + 1).unwrap_or(NonZeroU32::MIN))
            .collect()
    };
    // Some load and latency history, so the load-aware paths compare.
    for (i, e) in endpoints.iter().enumerate() {
        e.observe_latency(Duration::from_micros(200 + (i as u64 % 7) * 50));
    }
    Setup {
        endpoints,
        members: (0..n as u32).collect(),
        balancer: Balancer::new(algorithm, &addrs, &weights),
    }
}

/// Key hashes cycled through by the hashing algorithms (a request's hash is
/// computed by the proxy from its header; this measures selection only).
fn keys() -> Vec<u64> {
    (0..1024u64).map(|k| hash::key(&k.to_le_bytes())).collect()
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("pick");
    for n in [10, 1000] {
        for algorithm in Algorithm::ALL {
            let s = setup(algorithm, n);
            let mut k = 0usize;
            group.bench_function(BenchmarkId::new(format!("{algorithm:?}"), n), |b| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    black_box(s.balancer.pick(&s.endpoints, &s.members, Some(keys[k])))
                })
            });
        }
    }
    group.finish();
}

/// The table: a timed loop of picks per case, and the allocations they made.
fn table() {
    let keys = keys();
    const PICKS: u64 = 2_000_000;
    println!();
    println!(
        "{:<20} {:>10} {:>12} {:>14}",
        "algorithm", "endpoints", "ns/pick", "allocs/pick"
    );
    for n in [10, 1000] {
        for algorithm in Algorithm::ALL {
            let s = setup(algorithm, n);
            let region = Region::new(GLOBAL);
            let started = Instant::now();
            for i in 0..PICKS {
                let key = keys[(i & 1023) as usize];
                black_box(s.balancer.pick(&s.endpoints, &s.members, Some(key)));
            }
            let elapsed = started.elapsed();
            let change = region.change();
            let allocs = change.allocations + change.reallocations;
            println!(
                "{:<20} {:>10} {:>12.1} {:>14}",
                format!("{algorithm:?}"),
                n,
                elapsed.as_nanos() as f64 / PICKS as f64,
                allocs as f64 / PICKS as f64,
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    table();
}
