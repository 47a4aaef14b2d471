//! What every part of the dataplane shares: the table being served, the
//! route table it came from, readiness, and the last error.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use sluice_protocol::{Rejected, RouteEvent, RouteTable, Snapshot};

use crate::metrics::{Metrics, StatsRegistry};
use crate::table::Table;

/// File name of the persisted table under `--state-dir`.
pub const STATE_FILE: &str = "routes.json";

/// Shared dataplane state.
#[derive(Debug)]
pub struct State {
    /// The compiled table; requests load it once.
    pub table: ArcSwap<Table>,
    routes: Mutex<RouteTable>,
    applied: AtomicBool,
    listening: AtomicBool,
    draining: AtomicBool,
    last_error: Mutex<Option<String>>,
    rejected: Mutex<Option<Rejected>>,
    /// Window counters per pool.
    pub stats: StatsRegistry,
    /// Prometheus metrics.
    pub metrics: Metrics,
    state_dir: Option<PathBuf>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// Empty state; `state_dir` is where applied tables are persisted.
    pub fn new(state_dir: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            table: ArcSwap::from_pointee(Table::default()),
            routes: Mutex::new(RouteTable::default()),
            applied: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            last_error: Mutex::new(None),
            rejected: Mutex::new(None),
            stats: StatsRegistry::default(),
            metrics: Metrics::new(),
            state_dir,
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

    /// Applies a stream event on top of the current table: all or nothing.
    pub fn apply(&self, event: RouteEvent) -> Result<(), sluice_protocol::ApplyError> {
        let mut next = self.routes();
        let version = event.version();
        match next.apply(event) {
            Ok(()) => {
                self.install(next);
                Ok(())
            }
            Err(e) => {
                *lock(&self.rejected) = Some(Rejected {
                    version,
                    error: e.to_string(),
                });
                Err(e)
            }
        }
    }

    /// Builds and swaps in the table for `routes`, and persists it.
    pub fn install(&self, routes: RouteTable) {
        let table = Table::build(&routes, |name| self.stats.get(name));
        self.stats.retain(|name| routes.pools.contains_key(name));
        self.metrics
            .route_version
            .set(i64::try_from(routes.version).unwrap_or(i64::MAX));
        self.table.store(Arc::new(table));
        if let Some(dir) = &self.state_dir {
            persist(dir, &routes.snapshot());
        }
        *lock(&self.routes) = routes;
        self.applied.store(true, Ordering::Release);
        *lock(&self.last_error) = None;
    }

    /// Loads the table persisted under `--state-dir`, if any.
    pub fn restore(&self) -> bool {
        let Some(path) = self.state_dir.as_ref().map(|d| d.join(STATE_FILE)) else {
            return false;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return false;
        };
        match RouteEvent::from_sse(sluice_protocol::EVENT_SNAPSHOT, &text) {
            Ok(RouteEvent::Snapshot(s)) => {
                let mut routes = RouteTable::default();
                if routes.apply(RouteEvent::Snapshot(s)).is_ok() {
                    tracing::info!(version = routes.version, path = %path.display(), "serving the persisted table until the controller answers");
                    self.install(routes);
                    return true;
                }
                false
            }
            _ => {
                tracing::warn!(path = %path.display(), "ignoring an unreadable persisted table");
                false
            }
        }
    }

    /// Records a configuration error (shown in `/debug/routes`).
    pub fn set_error(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }

    /// The last configuration error, if the last attempt failed.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// The last refused version, for the report.
    pub fn rejected(&self) -> Option<Rejected> {
        lock(&self.rejected).clone()
    }

    /// Marks the listeners as up.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// Readiness fails from now on (SIGTERM).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Why the dataplane is not ready, if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Acquire) {
            Some("draining")
        } else if !self.applied.load(Ordering::Acquire) {
            Some("no route table applied yet")
        } else if !self.listening.load(Ordering::Acquire) {
            Some("listeners not up")
        } else {
            None
        }
    }
}

/// Writes the snapshot atomically (temp file + rename).
fn persist(dir: &std::path::Path, snapshot: &Snapshot) {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let result = serde_json::to_vec(snapshot)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, dir.join(STATE_FILE)));
    if let Err(e) = result {
        tracing::warn!(dir = %dir.display(), error = %e, "could not persist the route table");
    }
}
