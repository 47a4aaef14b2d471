//! The per-second report a dataplane posts: its ack (or nack) of the route
//! version, and its traffic per pool.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One report, covering `window_ms` of traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The dataplane's name (its pod name in a cluster).
    pub dataplane: String,
    /// The route version the dataplane serves; 0 before any table.
    pub applied_version: u64,
    /// The last version it refused, and why.
    #[serde(default)]
    pub rejected: Option<Rejected>,
    /// Length of the window the counters cover.
    pub window_ms: u64,
    /// Sequence number of this report: a retried post repeats it, so the
    /// controller never counts one window twice.
    #[serde(default)]
    pub seq: u64,
    /// Traffic per pool, by pool name.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolReport>,
}

/// A refused route version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The version refused.
    pub version: u64,
    /// Why.
    pub error: String,
}

/// One pool's traffic in one window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolReport {
    /// Requests completed in the window.
    pub requests: u64,
    /// Of those, how many failed (5xx from the proxy or the endpoint).
    pub errors: u64,
    /// Requests in flight at the end of the window.
    pub in_flight: u64,
    /// Requests held waiting for an endpoint at the end of the window.
    pub pending: u64,
    /// Latency of the completed requests.
    pub latency: Histogram,
}

/// Upper bounds, in milliseconds, of the latency buckets.
pub const LATENCY_BOUNDS_MS: [f64; 14] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
];

/// A latency histogram: `counts[i]` observations at or below `bounds_ms[i]`
/// (and above the previous bound); the last count is everything above.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Histogram {
    /// Bucket upper bounds.
    pub bounds_ms: Vec<f64>,
    /// One count per bound, plus the overflow bucket.
    pub counts: Vec<u64>,
    /// Sum of all observations.
    pub sum_ms: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            bounds_ms: LATENCY_BOUNDS_MS.to_vec(),
            counts: vec![0; LATENCY_BOUNDS_MS.len() + 1],
            sum_ms: 0.0,
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, ms: f64) {
        let i = self
            .bounds_ms
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(self.bounds_ms.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum_ms += ms;
    }

    /// Total observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}
