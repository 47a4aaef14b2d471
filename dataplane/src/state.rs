//! What every part of the dataplane shares: the compiled table being served,
//! the route table it came from, readiness, and the last refusal or error;
//! and the sweeper of endpoints' idle connections, which walks that table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sluice_protocol::{ApplyError, Rejected, RouteEvent, RouteTable};
use tokio::sync::watch;

use crate::activation::Signals;
use crate::endpoint::Registry;
use crate::metrics::Metrics;
use crate::table::Table;

/// Shared dataplane state.
#[derive(Debug)]
pub struct State {
    /// The compiled table; a request loads it once and keeps that version.
    pub table: ArcSwap<Table>,
    /// The source of `table`; also serializes installs.
    routes: Mutex<RouteTable>,
    installed: AtomicBool,
    applied: watch::Sender<u64>,
    listening: AtomicBool,
    draining: AtomicBool,
    last_error: Mutex<Option<String>>,
    rejected: Mutex<Option<Rejected>>,
    /// Prometheus metrics and report windows.
    pub metrics: Metrics,
    /// Endpoint and pool state carried across tables.
    pub registry: Registry,
    /// Demand and shutdown signals of requests held for activation.
    pub activation: Signals,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Releases, after `table` replaced `previous`, the held requests of the
/// pools that no longer hold requests on `table` ([`crate::activation`]).
/// Only a pool that had `activation` on `previous` can have held ones: those
/// held under an older table were released when that table was replaced.
fn release_held(previous: &Table, table: &Table) {
    let had_activation = previous
        .pools()
        .iter()
        .filter(|p| p.route.activation.is_some());
    for pool in had_activation {
        if !table.holds_requests(&pool.route.name) {
            let n = pool.state.held.release();
            if n > 0 {
                tracing::debug!(pool = %pool.route.name, released = n, "held requests released");
            }
        }
    }
}

impl State {
    /// Empty state: nothing to serve yet, not ready.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            table: ArcSwap::from_pointee(Table::default()),
            routes: Mutex::new(RouteTable::default()),
            installed: AtomicBool::new(false),
            applied: watch::channel(0).0,
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            last_error: Mutex::new(None),
            rejected: Mutex::new(None),
            metrics: Metrics::new(),
            registry: Registry::default(),
            activation: Signals::default(),
        })
    }

    /// A copy of the route table being served.
    pub fn routes(&self) -> RouteTable {
        lock(&self.routes).clone()
    }

    /// Version being served (0 before any table).
    pub fn version(&self) -> u64 {
        self.table.load().version
    }

    /// Applies a stream event on top of the current table, all or nothing.
    /// A refusal is remembered for the report; the current table stays.
    pub fn apply(&self, event: RouteEvent) -> Result<(), ApplyError> {
        let version = event.version();
        let mut routes = lock(&self.routes);
        // `RouteTable::apply` checks everything before it changes anything,
        // so a refused event leaves the table as it was: no copy needed.
        match routes.apply(event) {
            Ok(()) => {
                self.installed_locked(&routes);
                Ok(())
            }
            Err(e) => {
                self.reject(version, &e);
                Err(e)
            }
        }
    }

    /// Remembers that the event for `version` was refused, and why.
    pub fn reject(&self, version: u64, error: &dyn std::fmt::Display) {
        *lock(&self.rejected) = Some(Rejected {
            version,
            error: error.to_string(),
        });
    }

    /// Compiles `routes` and swaps the result in; clears the last error.
    pub fn install(&self, routes: RouteTable) {
        let mut current = lock(&self.routes);
        *current = routes;
        self.installed_locked(&current);
    }

    /// Compiles and serves `routes`, which the caller just stored (and
    /// still holds the lock of).
    fn installed_locked(&self, routes: &RouteTable) {
        let previous = self.table.load_full();
        let table = Arc::new(Table::build(
            routes,
            &previous,
            &self.metrics,
            &self.registry,
        ));
        self.registry.prune();
        self.table.store(Arc::clone(&table));
        // After the store: a released request routes on the new table.
        release_held(&previous, &table);
        drop(previous);
        self.metrics.windows.prune();
        self.metrics
            .route_version
            .set(i64::try_from(routes.version).unwrap_or(i64::MAX));
        let version = routes.version;
        *lock(&self.last_error) = None;
        self.installed.store(true, Ordering::Release);
        self.applied.send_replace(version);
    }

    /// Wakes on every installed table (its version), for the state-dir writer.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Records why the latest configuration was not applied (shown in
    /// `/debug/routes` as `lastError`).
    pub fn set_error(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }

    /// Forgets the last configuration error.
    pub fn clear_error(&self) {
        *lock(&self.last_error) = None;
    }

    /// The last configuration error, if the latest attempt failed.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// The last refused stream event, for the report.
    pub fn rejected(&self) -> Option<Rejected> {
        lock(&self.rejected).clone()
    }

    /// Marks the listeners as up.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// Readiness fails from now on (shutdown has begun).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Why the dataplane is not ready, if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Acquire) {
            Some("shutting down")
        } else if !self.installed.load(Ordering::Acquire) {
            Some("no route table applied yet")
        } else if !self.listening.load(Ordering::Acquire) {
            Some("listeners are not up yet")
        } else {
            None
        }
    }
}

/// Longest time between two sweeps of idle connections (shorter when a
/// pool's `timeouts.idle` is: half of the shortest).
pub const REAP_INTERVAL: Duration = Duration::from_secs(5);

/// Closes the idle connections of every endpoint in the current table that
/// have waited longer than their pool's `timeouts.idle` (and those the
/// endpoint closed), every [`REAP_INTERVAL`] at most, until `stop`. Without it an
/// endpoint that stops getting requests would keep its idle connections,
/// and their places in `maxConnections`, until the endpoint closed them.
pub async fn reap_idle(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        let every = state
            .table
            .load()
            .pools()
            .iter()
            .map(|p| p.policy.upstream.idle() / 2)
            .min()
            .unwrap_or(REAP_INTERVAL)
            .clamp(Duration::from_millis(50), REAP_INTERVAL);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        let table = state.table.load_full();
        let now = Instant::now();
        for pool in table.pools() {
            let limit = pool.policy.upstream.idle();
            for ep in &pool.endpoints {
                ep.idle.sweep(now, limit);
            }
        }
    }
}
