//! Dataplane metrics: the Prometheus families (names fixed by DESIGN.md) and
//! the per-pool window counters that feed the controller reports.
//!
//! The request path never looks a metric up by name. When a table is built,
//! each pool gets a [`PoolMetrics`] holding its handles (and each endpoint a
//! [`CodeCounters`]); a request touches those through one `Arc` and atomics.
//! The handles point into the shared families, so counts survive table swaps.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_protocol::report::LATENCY_BOUNDS_MS;
use sluice_protocol::{Histogram as WireHistogram, PoolReport};

/// Labels `{pool}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// Pool name.
    pub pool: String,
}

/// Labels `{pool, code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolCode {
    /// Pool name.
    pub pool: String,
    /// HTTP status code sent to the client.
    pub code: u16,
}

/// Labels `{pool, endpoint}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolEndpoint {
    /// Pool name.
    pub pool: String,
    /// Endpoint address.
    pub endpoint: String,
}

/// Labels `{pool, endpoint, code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolEndpointCode {
    /// Pool name.
    pub pool: String,
    /// Endpoint address.
    pub endpoint: String,
    /// HTTP status code from the endpoint; 0 when it gave no response
    /// (connection refused or reset, malformed response).
    pub code: u16,
}

/// A label set that differs only by status code, so one cached set of
/// counters can serve every code.
pub trait WithCode: Clone + std::hash::Hash + Eq + EncodeLabelSet + Send + Sync + 'static {
    /// The same labels with another code.
    fn with_code(&self, code: u16) -> Self;
}

impl WithCode for PoolCode {
    fn with_code(&self, code: u16) -> Self {
        Self {
            code,
            ..self.clone()
        }
    }
}

impl WithCode for PoolEndpointCode {
    fn with_code(&self, code: u16) -> Self {
        Self {
            code,
            ..self.clone()
        }
    }
}

/// Codes cached per label set; a pool or endpoint rarely answers with more.
const CODE_SLOTS: usize = 8;

/// Counters by status code for one label set. The first request with a
/// code resolves its counter in the family (a lock and a hash of the labels)
/// and caches it in a slot; later ones scan a few slots and increment an
/// atomic. A ninth distinct code goes to the family each time: correct, just
/// slower.
#[derive(Debug)]
pub struct CodeCounters<L: WithCode> {
    slots: [OnceLock<(u16, Counter)>; CODE_SLOTS],
    family: Family<L, Counter>,
    labels: L,
}

impl<L: WithCode> CodeCounters<L> {
    fn new(family: Family<L, Counter>, labels: L) -> Self {
        Self {
            slots: Default::default(),
            family,
            labels,
        }
    }

    /// Counts one request with `code`.
    pub fn inc(&self, code: u16) {
        for slot in &self.slots {
            let (cached, counter) = slot.get_or_init(|| {
                (
                    code,
                    self.family
                        .get_or_create_owned(&self.labels.with_code(code)),
                )
            });
            if *cached == code {
                counter.inc();
                return;
            }
        }
        self.family
            .get_or_create(&self.labels.with_code(code))
            .inc();
    }
}

fn duration_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The Prometheus registry and families, and the report windows.
pub struct Metrics {
    registry: Registry,
    requests: Family<PoolCode, Counter>,
    duration: Family<PoolLabel, Histogram, fn() -> Histogram>,
    upstream: Family<PoolEndpointCode, Counter>,
    inflight: Family<PoolLabel, Gauge>,
    ratelimited: Family<PoolLabel, Counter>,
    endpoint_healthy: Family<PoolEndpoint, Gauge>,
    /// `sluice_route_version`.
    pub route_version: Gauge,
    /// Per-pool counters of the current report window.
    pub windows: Windows,
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
        let ratelimited = Family::default();
        let endpoint_healthy = Family::default();
        let route_version = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by pool and status code sent to the client",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from routing a request to its response head, by pool",
            duration.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests sent to endpoints, by pool, endpoint and endpoint status code (0: no response)",
            upstream.clone(),
        );
        registry.register(
            "inflight_requests",
            "Requests in flight (until the response body ends), by pool",
            inflight.clone(),
        );
        registry.register(
            "ratelimited",
            "Requests refused with 429 by the pool's rate limit, by pool",
            ratelimited.clone(),
        );
        registry.register(
            "endpoint_healthy",
            "Whether an endpoint takes traffic: 1 when it passes its health checks and is not ejected",
            endpoint_healthy.clone(),
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
            ratelimited,
            endpoint_healthy,
            route_version,
            windows: Windows::default(),
        }
    }

    /// Prometheus text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The handles of one pool, for a table being built.
    pub fn pool(&self, pool: &str) -> PoolMetrics {
        let label = PoolLabel {
            pool: pool.to_string(),
        };
        PoolMetrics {
            requests: CodeCounters::new(
                self.requests.clone(),
                PoolCode {
                    pool: pool.to_string(),
                    code: 0,
                },
            ),
            duration: self.duration.get_or_create_owned(&label),
            inflight: self.inflight.get_or_create_owned(&label),
            ratelimited: self.ratelimited.get_or_create_owned(&label),
            window: self.windows.get(pool),
        }
    }

    /// The upstream counters of one endpoint of a pool.
    pub fn endpoint(&self, pool: &str, endpoint: SocketAddr) -> CodeCounters<PoolEndpointCode> {
        CodeCounters::new(
            self.upstream.clone(),
            PoolEndpointCode {
                pool: pool.to_string(),
                endpoint: endpoint.to_string(),
                code: 0,
            },
        )
    }
}

impl Metrics {
    /// The `sluice_endpoint_healthy` series of one endpoint of a pool, set
    /// to 1; it leaves the family when the returned handle is dropped.
    pub fn endpoint_healthy(&self, pool: &str, endpoint: SocketAddr) -> HealthGauge {
        let labels = PoolEndpoint {
            pool: pool.to_string(),
            endpoint: endpoint.to_string(),
        };
        let gauge = HealthGauge {
            family: self.endpoint_healthy.clone(),
            labels,
        };
        gauge.set(true);
        gauge
    }
}

/// One endpoint's `sluice_endpoint_healthy` series, removed from the
/// exposition when the endpoint's state is freed (it left every table).
/// Set only on transitions, so it looks the series up each time rather than
/// caching a handle that a freed namesake may have removed from the family.
#[derive(Debug)]
pub struct HealthGauge {
    family: Family<PoolEndpoint, Gauge>,
    labels: PoolEndpoint,
}

impl HealthGauge {
    /// Sets the series: 1 available, 0 not.
    pub fn set(&self, available: bool) {
        self.family
            .get_or_create(&self.labels)
            .set(i64::from(available));
    }

    /// The pool's name.
    pub fn pool(&self) -> &str {
        &self.labels.pool
    }
}

impl Drop for HealthGauge {
    fn drop(&mut self) {
        self.family.remove(&self.labels);
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

/// Everything a request of one pool counts into.
#[derive(Debug)]
pub struct PoolMetrics {
    requests: CodeCounters<PoolCode>,
    duration: Histogram,
    inflight: Gauge,
    ratelimited: Counter,
    window: Arc<PoolWindow>,
}

impl PoolMetrics {
    /// A request was routed to this pool: it is in flight until the
    /// returned [`Exchange`] is dropped.
    pub fn begin(self: &Arc<Self>) -> Exchange {
        self.inflight.inc();
        self.window.in_flight.fetch_add(1, Ordering::Relaxed);
        Exchange {
            metrics: Arc::clone(self),
            started: Instant::now(),
        }
    }

    /// A request was refused by the pool's rate limit.
    pub fn rate_limited(&self) {
        self.ratelimited.inc();
    }
}

/// One request of a pool, in flight while this lives. It travels inside the
/// response body, so a streaming response counts until its last byte, and a
/// client that hangs up (dropping the request future) ends it as well.
#[derive(Debug)]
pub struct Exchange {
    metrics: Arc<PoolMetrics>,
    started: Instant,
}

impl Exchange {
    /// The response head went out with `code`: counts the request and its
    /// latency (time to the response head).
    pub fn respond(&self, code: u16) {
        let elapsed = self.started.elapsed();
        let m = &self.metrics;
        m.requests.inc(code);
        m.duration.observe(elapsed.as_secs_f64());
        m.window.record(code, elapsed.as_secs_f64() * 1000.0);
    }
}

impl Exchange {
    /// The request is held for activation: from in flight to pending,
    /// keeping its arrival time for the latency of its eventual answer.
    pub fn hold(self) -> Pending {
        self.metrics.window.pending.fetch_add(1, Ordering::Relaxed);
        Pending {
            metrics: Arc::clone(&self.metrics),
            started: self.started,
        }
    }

    /// When the request was routed.
    pub fn started(&self) -> Instant {
        self.started
    }
}

/// A request held for activation: counted in its pool's `pending` while
/// this lives, not in flight.
#[derive(Debug)]
pub struct Pending {
    metrics: Arc<PoolMetrics>,
    started: Instant,
}

impl Pending {
    /// The request leaves the queue and is in flight again in `pool` (the
    /// same pool's metrics, possibly of a newer table); its latency still
    /// counts from its arrival.
    pub fn resume(self, pool: &Arc<PoolMetrics>) -> Exchange {
        let mut exchange = pool.begin();
        exchange.started = self.started;
        exchange
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.metrics.window.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.metrics.inflight.dec();
        self.metrics
            .window
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One pool's counters for the current report window (atomics: no lock on
/// the request path). Kept by pool name across table versions.
#[derive(Debug, Default)]
pub struct PoolWindow {
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicI64,
    pending: AtomicI64,
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl PoolWindow {
    fn record(&self, code: u16, ms: f64) {
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

    /// Takes the window's counters; in-flight and pending are levels, read
    /// not reset.
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
            pending: self.pending.load(Ordering::Relaxed).max(0) as u64,
            latency,
        }
    }

    fn is_idle(&self) -> bool {
        self.requests.load(Ordering::Relaxed) == 0
            && self.in_flight.load(Ordering::Relaxed) <= 0
            && self.pending.load(Ordering::Relaxed) <= 0
    }
}

/// Report windows by pool name. Only table builds and the reporter take the
/// lock; requests hold their pool's `Arc<PoolWindow>` directly.
///
/// A removed pool's window stays until nothing references it (no table, no
/// in-flight request) and its last counts were drained, so the requests it
/// served in its final window still reach the controller.
#[derive(Debug, Default)]
pub struct Windows {
    pools: Mutex<HashMap<String, Arc<PoolWindow>>>,
}

impl Windows {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<PoolWindow>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The window of `pool`, created on first use.
    pub fn get(&self, pool: &str) -> Arc<PoolWindow> {
        Arc::clone(self.lock().entry(pool.to_string()).or_default())
    }

    /// Drops windows that nothing uses and that hold no undrained counts.
    pub fn prune(&self) {
        self.lock()
            .retain(|_, w| Arc::strong_count(w) > 1 || !w.is_idle());
    }

    /// Drains every pool's window (and forgets pools nothing uses anymore).
    pub fn drain(&self) -> BTreeMap<String, PoolReport> {
        let mut map = self.lock();
        let drained = map
            .iter()
            .map(|(name, w)| (name.clone(), w.drain()))
            .collect();
        map.retain(|_, w| Arc::strong_count(w) > 1 || !w.is_idle());
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_counts_once_and_stays_in_flight_until_dropped() {
        let metrics = Metrics::new();
        let pool = Arc::new(metrics.pool("web"));
        let exchange = pool.begin();
        exchange.respond(200);
        let report = metrics.windows.drain();
        assert_eq!(report["web"].requests, 1);
        assert_eq!(report["web"].in_flight, 1);
        assert_eq!(report["web"].latency.count(), 1);
        drop(exchange);
        let report = metrics.windows.drain();
        assert_eq!((report["web"].requests, report["web"].in_flight), (0, 0));
        let text = metrics.encode();
        assert!(
            text.contains("sluice_requests_total{pool=\"web\",code=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_inflight_requests{pool=\"web\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_held_request_is_pending_not_in_flight_and_keeps_its_arrival_time() {
        let metrics = Metrics::new();
        let pool = Arc::new(metrics.pool("zero"));
        let exchange = pool.begin();
        let started = exchange.started();
        let pending = exchange.hold();
        let report = metrics.windows.drain();
        assert_eq!((report["zero"].pending, report["zero"].in_flight), (1, 0));
        metrics.windows.prune();
        assert!(
            metrics.windows.drain().contains_key("zero"),
            "kept while held"
        );
        let exchange = pending.resume(&pool);
        assert_eq!(exchange.started(), started);
        exchange.respond(200);
        let report = metrics.windows.drain();
        assert_eq!((report["zero"].pending, report["zero"].in_flight), (0, 1));
        assert_eq!(report["zero"].requests, 1);
    }

    #[test]
    fn more_codes_than_slots_are_all_counted() {
        let metrics = Metrics::new();
        let ep = metrics.endpoint("web", SocketAddr::from(([127, 0, 0, 1], 80)));
        for code in 200..200 + 2 * CODE_SLOTS as u16 {
            ep.inc(code);
            ep.inc(code);
        }
        let text = metrics.encode();
        for code in 200..200 + 2 * CODE_SLOTS as u16 {
            let line = format!(
                "sluice_upstream_requests_total{{pool=\"web\",endpoint=\"127.0.0.1:80\",code=\"{code}\"}} 2"
            );
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn a_removed_pool_s_window_outlives_its_last_drain() {
        let metrics = Metrics::new();
        let pool = Arc::new(metrics.pool("gone"));
        pool.begin().respond(503);
        drop(pool);
        metrics.windows.prune();
        let report = metrics.windows.drain();
        assert_eq!(
            (report["gone"].requests, report["gone"].errors),
            (1, 1),
            "counts of the last window are kept"
        );
        assert!(!metrics.windows.drain().contains_key("gone"));
    }
}
