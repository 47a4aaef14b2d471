//! Dataplane metrics: Prometheus families (names fixed by DESIGN.md) and the
//! per-pool window counters that feed the controller reports.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_protocol::report::LATENCY_BOUNDS_MS;
use sluice_protocol::{Histogram as WireHistogram, PoolReport};

/// `{pool}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// Pool name.
    pub pool: String,
}

/// `{pool, code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolCode {
    /// Pool name.
    pub pool: String,
    /// HTTP status code.
    pub code: u16,
}

/// `{pool, endpoint, code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolEndpointCode {
    /// Pool name.
    pub pool: String,
    /// Endpoint address.
    pub endpoint: String,
    /// HTTP status code, or 0 when the endpoint gave no response.
    pub code: u16,
}

fn duration_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The Prometheus registry and families.
pub struct Metrics {
    registry: Registry,
    /// `sluice_requests_total{pool,code}`.
    pub requests: Family<PoolCode, Counter>,
    /// `sluice_request_duration_seconds{pool}`.
    pub duration: Family<PoolLabel, Histogram, fn() -> Histogram>,
    /// `sluice_upstream_requests_total{pool,endpoint,code}`.
    pub upstream: Family<PoolEndpointCode, Counter>,
    /// `sluice_inflight_requests{pool}`.
    pub inflight: Family<PoolLabel, Gauge>,
    /// `sluice_route_version`.
    pub route_version: Gauge,
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::default();
        let duration = Family::<PoolLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let upstream = Family::default();
        let inflight = Family::default();
        let route_version = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by pool and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by pool",
            duration.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests sent to endpoints, by pool, endpoint and code",
            upstream.clone(),
        );
        registry.register(
            "inflight_requests",
            "Requests in flight, by pool",
            inflight.clone(),
        );
        registry.register(
            "route_version",
            "Version of the route table being served",
            route_version.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            upstream,
            inflight,
            route_version,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// One pool's counters for the current report window (atomics: no lock on
/// the request path). Kept by pool name across table versions.
#[derive(Debug, Default)]
pub struct PoolStats {
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicI64,
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl PoolStats {
    /// A request started.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ended with `code` after `ms` milliseconds.
    pub fn finish(&self, code: u16, ms: f64) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if code >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let i = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add((ms * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Takes the window's counters (in-flight is a level, not reset).
    pub fn drain(&self) -> PoolReport {
        let mut latency = WireHistogram::default();
        for (slot, count) in latency.counts.iter_mut().zip(&self.latency) {
            *slot = count.swap(0, Ordering::Relaxed);
        }
        latency.sum_ms = self.latency_sum_us.swap(0, Ordering::Relaxed) as f64 / 1000.0;
        PoolReport {
            requests: self.requests.swap(0, Ordering::Relaxed),
            errors: self.errors.swap(0, Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            pending: 0,
            latency,
        }
    }
}

/// Pool counters by name, outliving table swaps.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    pools: Mutex<HashMap<String, Arc<PoolStats>>>,
}

impl StatsRegistry {
    /// The counters of `pool`, created on first use.
    pub fn get(&self, pool: &str) -> Arc<PoolStats> {
        let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(pool.to_string()).or_default())
    }

    /// Drops counters of pools no longer served (after their last drain).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|name, stats| keep(name) || stats.in_flight.load(Ordering::Relaxed) > 0);
    }

    /// Drains every pool's window.
    pub fn drain(&self) -> BTreeMap<String, PoolReport> {
        let map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(name, stats)| (name.clone(), stats.drain()))
            .collect()
    }
}
