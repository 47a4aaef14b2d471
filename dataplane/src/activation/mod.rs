//! Scale from zero: holding requests for a pool that has no endpoints yet.
//!
//! A pool whose route carries `activation` and lists no ready endpoint
//! (`Pool::endpoints` is empty; endpoints that are merely unhealthy or
//! ejected still take traffic in panic mode, so they never cause a hold)
//! does not answer 503 at once: the request waits in the pool's [`Queue`]
//! for a table that gives the pool endpoints, at most `maxPending` of them
//! per pool, each for at most `timeout` from its arrival. The first request
//! held in an empty queue wakes the reporter ([`Signals::demanded`]), so the
//! controller hears of the demand without waiting for the next tick.
//!
//! Release happens where tables are installed (`State::install`): every queue
//! whose pool no longer needs holding (it has endpoints, lost `activation`,
//! or left the table) hands its requests back, and each goes through the
//! proxy's normal path on the new table. They go one after another in
//! arrival order: a released request holds the [`Turn`] until it has picked
//! its endpoint and started its first attempt (dialed, or handed the request
//! to a pooled connection), then passes it to the next, so picks, circuit
//! breaker places and connection attempts follow arrival order while the
//! exchanges themselves overlap. (An endpoint may still see two neighbours
//! swapped when the second's connection is ready first.) A client that hangs
//! up drops its [`Waiter`], which takes its place out of the queue, or skips
//! its turn.
//! On shutdown the listeners stop and no table can arrive anymore, so the
//! held requests are answered at once ([`Signals::shut_down`]).
//!
//! Nothing here is on the path of a pool that has endpoints: the proxy only
//! looks at `activation` after its pick found no endpoint.

pub mod queue;

use tokio::sync::{Notify, watch};

pub use queue::{Full, Queue, Turn, Waiter, Woken, relay};

/// `x-sluice-error` of a request refused because `maxPending` requests are
/// already held for the pool.
pub const OVERFLOW_REASON: &str = "activation-overflow";
/// `x-sluice-error` of a held request whose pool got no endpoint within
/// the activation `timeout`.
pub const TIMEOUT_REASON: &str = "activation-timeout";
/// `x-sluice-error` of a held request answered because the dataplane is
/// shutting down.
pub const SHUTDOWN_REASON: &str = "activation-shutdown";

/// What the dataplane as a whole shares about held requests: the wake-up
/// of the reporter and the shutdown.
#[derive(Debug)]
pub struct Signals {
    demand: Notify,
    shutdown: watch::Sender<bool>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            demand: Notify::new(),
            shutdown: watch::channel(false).0,
        }
    }
}

impl Signals {
    /// Resolves when a pool started holding requests since the last call
    /// (several starts in between resolve it once).
    pub async fn demanded(&self) {
        self.demand.notified().await;
    }

    /// Answers every held request, and every request that would be held
    /// from now on, with 503: no table will come to release them.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Wakes the reporter: a pool started holding requests.
    pub fn demand(&self) {
        self.demand.notify_one();
    }

    /// Tells a held request when the dataplane shuts down.
    pub fn on_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Why a request was not held or not released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `x-sluice-error`.
    pub reason: &'static str,
    /// The short body saying why.
    pub body: String,
}
