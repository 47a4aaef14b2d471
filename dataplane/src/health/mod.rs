//! Endpoint health: the active HTTP checker, each endpoint's availability
//! (checks + outlier ejection, see [`crate::endpoint::outlier`]), panic mode logging
//! and `/debug/pools`.
//!
//! One checker task per dataplane follows the installed tables and keeps
//! one check loop per (pool, endpoint) of every pool with a `healthCheck`:
//! it starts loops for new endpoints, stops those of endpoints that left,
//! and leaves running loops alone, so a table update never resets an
//! endpoint's verdict. A loop's first probe comes at a random point of the
//! first interval, so a pool's endpoints (and several dataplanes) are not
//! all probed at once.
//!
//! A new endpoint starts healthy. Endpoints come from EndpointSlices whose
//! readiness the kubelet already probes, so starting unhealthy would only
//! keep fresh replicas (a scale-up, a dataplane restart, an activation from
//! zero) dark for a check interval or more; a broken one is caught by
//! `unhealthyThreshold` failed checks, and sooner by outlier detection.
//! This is the choice Envoy makes unless told otherwise, and HAProxy's
//! default for servers of a running backend.
//!
//! A transition rebuilds the pool's balancer over the available endpoints
//! at once, on the task that saw it (see [`crate::selector`]); when none is
//! available the pool spreads traffic over all of them (panic mode, as
//! Envoy's panic threshold does) rather than failing every request.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{Value, json};
use sluice_protocol::{HealthCheck, PoolRoute};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::endpoint::{Endpoint, PoolState};
use crate::listener::stopped;
use crate::metrics::HealthGauge;
use crate::endpoint::outlier::Outlier;
use crate::state::State;
use crate::table::{Pool, Table};

/// `User-Agent` of health check requests.
pub const USER_AGENT_VALUE: &str = "sluice-health-check";
/// Most of a check response's body that is read (to reuse the connection).
const MAX_BODY: usize = 64 * 1024;

/// Whether an endpoint may take traffic, and why not.
#[derive(Debug)]
pub struct Health {
    /// The active checks' verdict; true when the pool has none.
    healthy: AtomicBool,
    /// Passive outlier detection.
    pub outlier: Outlier,
    gauge: HealthGauge,
}

impl Health {
    /// A new endpoint's: healthy, never ejected.
    pub fn new(gauge: HealthGauge) -> Self {
        Self {
            healthy: AtomicBool::new(true),
            outlier: Outlier::default(),
            gauge,
        }
    }

    /// Healthy and not ejected.
    pub fn is_available(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && !self.outlier.is_ejected()
    }

    /// The active checks' verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Name of the endpoint's pool (for logs).
    pub fn pool_name(&self) -> &str {
        self.gauge.pool()
    }

    /// After a transition: updates `sluice_endpoint_healthy` and rebuilds
    /// the pool's balancer.
    pub fn publish(&self, pool: &PoolState) {
        self.gauge.set(self.is_available());
        pool.availability_changed();
    }

    /// Records the checks' verdict; logs and publishes a change.
    fn set_healthy(&self, ep: &Endpoint, healthy: bool, why: &str) {
        if self.healthy.swap(healthy, Ordering::AcqRel) == healthy {
            return;
        }
        let (pool, endpoint) = (self.pool_name(), ep.addr);
        if healthy {
            tracing::info!(%pool, %endpoint, why, "endpoint healthy");
        } else {
            tracing::info!(%pool, %endpoint, why, "endpoint unhealthy");
        }
        self.publish(&ep.pool);
    }
}

/// Logs a pool entering or leaving panic mode (called when its balancer is
/// rebuilt).
pub fn log_panic(pool: &str, panic: bool, endpoints: usize) {
    if panic {
        tracing::warn!(
            %pool,
            endpoints,
            "no endpoint is healthy: panic mode, traffic goes to all of them"
        );
    } else {
        tracing::info!(%pool, "endpoints available again: panic mode over");
    }
}

/// Consecutive check results of one endpoint.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    successes: u32,
    failures: u32,
}

impl Streak {
    /// Counts one result; returns the new verdict when it changes.
    pub fn observe(&mut self, ok: bool, healthy: bool, config: &HealthCheck) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (!healthy && self.successes >= config.healthy_threshold.get()).then_some(true)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (healthy && self.failures >= config.unhealthy_threshold.get()).then_some(false)
        }
    }
}

/// `Host` of a pool's checks: its first exact host, else the endpoint's
/// address.
pub fn check_host(route: &PoolRoute, addr: SocketAddr) -> HeaderValue {
    route
        .hosts
        .iter()
        .find(|h| !h.is_catch_all() && h.wildcard_suffix().is_none())
        .and_then(|h| HeaderValue::from_str(h.as_str()).ok())
        .or_else(|| HeaderValue::from_str(&addr.to_string()).ok())
        .unwrap_or_else(|| HeaderValue::from_static("localhost"))
}

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

fn probe_client() -> ProbeClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// One running check loop; aborted when dropped.
struct Check {
    endpoint: Weak<Endpoint>,
    config: HealthCheck,
    host: HeaderValue,
    task: JoinHandle<()>,
}

impl Drop for Check {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The checker task: reconciles the check loops with every installed table
/// until `stop`.
pub async fn run(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let client = probe_client();
    let mut checks = HashMap::new();
    let mut applied = state.subscribe();
    loop {
        reconcile(&state.table.load(), &mut checks, &client);
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { break },
            () = stopped(&mut stop) => break,
        }
    }
}

/// What a table asks of the checker.
struct Wanted {
    endpoint: Arc<Endpoint>,
    config: HealthCheck,
    host: HeaderValue,
}

fn reconcile(
    table: &Table,
    checks: &mut HashMap<(String, SocketAddr), Check>,
    client: &ProbeClient,
) {
    let mut wanted = HashMap::new();
    for pool in table.pools() {
        for ep in &pool.endpoints {
            // Also restores a series that a freed namesake removed.
            ep.health.gauge.set(ep.is_available());
        }
        let Some(config) = &pool.route.health_check else {
            continue;
        };
        for ep in &pool.endpoints {
            let want = Wanted {
                endpoint: Arc::clone(ep),
                config: config.clone(),
                host: check_host(&pool.route, ep.addr),
            };
            wanted.insert((pool.route.name.clone(), ep.addr), want);
        }
    }
    checks.retain(|key, check| {
        let want = wanted.get(key);
        let same_endpoint =
            want.is_some_and(|w| std::ptr::eq(check.endpoint.as_ptr(), Arc::as_ptr(&w.endpoint)));
        let keep =
            same_endpoint && want.is_some_and(|w| w.config == check.config && w.host == check.host);
        if !same_endpoint && let Some(ep) = check.endpoint.upgrade() {
            // Its pool no longer checks it: only outlier detection judges it.
            ep.health.set_healthy(&ep, true, "health check removed");
        }
        keep
    });
    for (key, want) in wanted {
        checks.entry(key).or_insert_with(|| Check {
            endpoint: Arc::downgrade(&want.endpoint),
            task: tokio::spawn(check_loop(
                Arc::downgrade(&want.endpoint),
                want.config.clone(),
                want.host.clone(),
                client.clone(),
            )),
            config: want.config,
            host: want.host,
        });
    }
}

/// Probes one endpoint every interval until it is freed or the loop aborted.
async fn check_loop(
    endpoint: Weak<Endpoint>,
    config: HealthCheck,
    host: HeaderValue,
    client: ProbeClient,
) {
    let Some(addr) = endpoint.upgrade().map(|e| e.addr) else {
        return;
    };
    let uri = match format!("http://{addr}{}", config.path).parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => {
            tracing::warn!(endpoint = %addr, path = %config.path, error = %e, "unusable health check path");
            return;
        }
    };
    let interval = config.interval.get();
    let jitter = RandomState::new().hash_one(addr) % interval.as_nanos().max(1) as u64;
    tokio::time::sleep(Duration::from_nanos(jitter)).await;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streak = Streak::default();
    loop {
        ticks.tick().await;
        let result = probe(&client, uri.clone(), host.clone(), config.timeout.get()).await;
        let Some(ep) = endpoint.upgrade() else {
            return;
        };
        let ok = matches!(result, Ok(s) if s.is_success());
        if let Some(healthy) = streak.observe(ok, ep.health.is_healthy(), &config) {
            let why = match &result {
                Ok(status) => format!("health check answered {}", status.as_u16()),
                Err(e) => format!("health check failed: {e}"),
            };
            ep.health.set_healthy(&ep, healthy, &why);
        }
    }
}

/// One check: `GET` with the pool's host, within `timeout`.
async fn probe(
    client: &ProbeClient,
    uri: Uri,
    host: HeaderValue,
    timeout: Duration,
) -> Result<StatusCode, String> {
    let req = Request::get(uri)
        .header(HOST, host)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| crate::proxy::describe(&e))?;
        let status = resp.status();
        // Read (a bounded part of) the body so the connection can be reused.
        let _ = Limited::new(resp.into_body(), MAX_BODY).collect().await;
        Ok(status)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// `/debug/pools`: every pool's endpoints with their health, ejection and
/// load, and whether the pool is in panic mode.
pub fn pools_json(table: &Table) -> Value {
    let pools: Vec<_> = table.pools().iter().map(|p| pool_json(p)).collect();
    json!({"version": table.version, "pools": pools})
}

fn pool_json(pool: &Pool) -> Value {
    // `Pool::endpoints` are the route's ready endpoints, in route order.
    let weights = pool.route.endpoints.iter().filter(|e| e.ready);
    let endpoints: Vec<_> = pool
        .endpoints
        .iter()
        .zip(weights)
        .map(|(ep, e)| endpoint_json(ep, e.weight.get()))
        .collect();
    let panic = !pool.endpoints.is_empty() && !pool.endpoints.iter().any(|e| e.is_available());
    let in_flight: u64 = pool
        .endpoints
        .iter()
        .map(|e| u64::from(e.in_flight()))
        .sum();
    json!({
        "name": pool.route.name,
        "algorithm": pool.route.algorithm,
        "healthChecked": pool.route.health_check.is_some(),
        "panic": panic,
        "inFlight": in_flight,
        // Requests held for activation (scale from zero).
        "pending": pool.state.held.len(),
        "endpoints": endpoints,
    })
}

fn endpoint_json(ep: &Endpoint, weight: u32) -> Value {
    let o = ep.health.outlier.view();
    json!({
        "address": ep.addr.to_string(),
        "weight": weight,
        "available": ep.is_available(),
        "healthy": ep.health.is_healthy(),
        "ejected": o.ejected,
        "ejectionRemainingMs": o.remaining.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "timesEjected": o.times_ejected,
        "onTrial": o.probation,
        "consecutiveFailures": o.consecutive_failures,
        "inFlight": ep.in_flight(),
        // Peak-EWMA latency estimate, decayed to now (kept for every
        // algorithm; PeakEwma balances on it).
        "ewmaMs": (ep.latency_estimate_ns() / 1e6 * 1000.0).round() / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn config(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            healthy_threshold: NonZeroU32::new(healthy).expect("nonzero"),
            unhealthy_threshold: NonZeroU32::new(unhealthy).expect("nonzero"),
            ..HealthCheck::default()
        }
    }

    #[test]
    fn thresholds_count_consecutive_results_only() {
        let c = config(2, 3);
        let mut s = Streak::default();
        assert_eq!(s.observe(false, true, &c), None);
        assert_eq!(s.observe(false, true, &c), None);
        assert_eq!(s.observe(true, true, &c), None, "a success breaks the run");
        assert_eq!(s.observe(false, true, &c), None);
        assert_eq!(s.observe(false, true, &c), None);
        assert_eq!(s.observe(false, true, &c), Some(false));
        assert_eq!(s.observe(true, false, &c), None);
        assert_eq!(s.observe(false, false, &c), None, "still unhealthy");
        assert_eq!(s.observe(true, false, &c), None);
        assert_eq!(s.observe(true, false, &c), Some(true));
        assert_eq!(s.observe(true, true, &c), None);
    }

    #[test]
    fn checks_use_the_first_exact_host() {
        let route: PoolRoute = serde_json::from_value(json!({
            "name": "p", "hosts": ["*", "*.example.com", "api.example.com", "b.example.com"]
        }))
        .expect("route");
        let addr = SocketAddr::from(([127, 0, 0, 1], 80));
        assert_eq!(check_host(&route, addr), "api.example.com");
        let any: PoolRoute =
            serde_json::from_value(json!({"name": "p", "hosts": ["*.x.org"]})).expect("route");
        assert_eq!(check_host(&any, addr), "127.0.0.1:80");
    }
}
