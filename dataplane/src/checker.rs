//! The active HTTP health checker: a task above the table that writes
//! its verdicts into each endpoint's [`crate::health`].
//!
//! One checker task per dataplane follows the installed tables and keeps
//! one check loop per (pool, endpoint) of every pool with a `healthCheck`:
//! it starts loops for new endpoints, stops those of endpoints that left,
//! and leaves running loops alone, so a table update never resets an
//! endpoint's verdict. A loop's first probe comes at a random point of the
//! first interval, so a pool's endpoints (and several dataplanes) are not
//! all probed at once. A verdict that changes rebuilds the pool's balancer
//! on the loop's task (see [`crate::table::selector`]).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sluice_protocol::{HealthCheck, PoolRoute};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::endpoint::Endpoint;
use crate::front::listener::stopped;
use crate::health::Streak;
use crate::state::State;
use crate::table::Table;

/// `User-Agent` of health check requests.
pub const USER_AGENT_VALUE: &str = "sluice-health-check";
/// Most of a check response's body that is read (to reuse the connection).
const MAX_BODY: usize = 64 * 1024;

/// Records the checks' verdict; logs and publishes a change.
fn set_healthy(ep: &Endpoint, healthy: bool, why: &str) {
    if !ep.health.set_healthy(healthy) {
        return;
    }
    let (pool, endpoint) = (ep.health.pool_name(), ep.addr);
    if healthy {
        tracing::info!(%pool, %endpoint, why, "endpoint healthy");
    } else {
        tracing::info!(%pool, %endpoint, why, "endpoint unhealthy");
    }
    ep.availability_changed();
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
            ep.health.show();
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
            set_healthy(&ep, true, "health check removed");
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
            set_healthy(&ep, healthy, &why);
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
    let answered = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| crate::upstream::describe(&e))?;
        let status = resp.status();
        // Read (a bounded part of) the body so the connection can be reused.
        let _ = Limited::new(resp.into_body(), MAX_BODY).collect().await;
        Ok(status)
    };
    tokio::time::timeout(timeout, answered)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
